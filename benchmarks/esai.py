"""ESAI (paper 000, issue 16): decision units on softmax meta-information and offloading, on MNIST-1D.

An accuracy benchmark (nothing is timed). Per seed, on MNIST-1D (``--samples`` train + test, 80/20;
20 % of train held out as the validation split the decision units and thresholds are fitted on):

- **Client**: a small 1-D CNN (``--client-widths``: one setting each), trained on hard labels;
  **two-exit** by an ESAI-like exit head at the middle (conv3 valid -> BN -> ReLU -> maxpool2 ->
  flatten -> linear, paper 000 Fig. 8, as many filters as the node has channels) trained on the
  **frozen** client (spec A.6: the backbone is unchanged by adding the exit).
- **Server**: a separate residual 1-D CNN of another shape (dilated convolutions), receiving the raw
  input (ESAI's set-up; no features are split). Settings pair a client width with a server width:
  a light client and a strong server (4:48, the paper's set-up, where the server dominates), a
  stronger client (16:48), and a client and server of comparable accuracy (8:8).
- **Decision units** DU1 (exit 1) and DU2 (the client's output): ``fit_decision_unit`` on validation
  meta-features, MLP (4 hidden layers) and GBM; Table III metrics on test.
- **Single exit, eq. (6)**: the test sweep of the DU's threshold (Fig. 4 analogue): its best overall
  accuracy and offload fraction; the plain max-softmax rule ``MP > t`` at no more offload
  (``mp_threshold_best_overall_acc``); and the operating point chosen on validation applied to test.
- **Two exits, eq. (7)**: the 21 x 21 (s1, s2) grid (Figs. 5/6 analogue) with the server after exit 2.
- **Offload to the rest of the split network**: exit 1's DU sends to the client's own final output.

Usage::

    nice -n 10 python benchmarks/esai.py            # writes benchmarks/results/esai.{md,json,png}
    python benchmarks/esai.py --smoke               # tiny, nothing written
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from jmsnas.exits.decision import du_metrics, fit_decision_unit  # noqa: E402
from jmsnas.exits.meta import meta_features, softmax64  # noqa: E402
from jmsnas.exits.offload import choose_threshold, offload_sweep, two_exit_grid  # noqa: E402

GRID = np.linspace(0.0, 1.0, 21)
OFFLOAD_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _cbr(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm1d(cout), nn.ReLU())


class Client(nn.Module):
    """Small 1-D CNN; ``front`` ends at the dividing node (after the second stride-2 stage)."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        c1, c2, c3 = width, (3 * width) // 2, 2 * width
        self.front = nn.Sequential(_cbr(1, c1, 5), _cbr(c1, c2, 3, 2), nn.MaxPool1d(2))      # [B, c2, 10]
        self.back = nn.Sequential(_cbr(c2, c3, 3), _cbr(c3, c3, 3, 2), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                  nn.Linear(c3, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.back(self.front(x))


class ExitHead(nn.Module):
    """Paper 000 Fig. 8 in 1-D: conv3 (valid) -> BN -> ReLU -> maxpool2 -> flatten -> linear.

    The paper's head has 32 filters on a 512-channel node; here it has as many filters as the node has
    channels, so that it stays smaller than the rest of the client (32 filters on a 6-channel node
    would make exit 1 a bigger network than the client it is added to).
    """

    def __init__(self, cin: int, length: int, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(cin, cin, 3), nn.BatchNorm1d(cin), nn.ReLU(), nn.MaxPool1d(2),
                                  nn.Flatten())
        self.fc = nn.Linear(cin * ((length - 2) // 2), classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(h))


class Residual(nn.Module):
    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c, 3, dilation=dilation), nn.Conv1d(c, c, 3, padding=dilation,
                                                                              dilation=dilation, bias=False),
                                  nn.BatchNorm1d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class Server(nn.Module):
    """Larger residual 1-D CNN with dilations (a different family from the client)."""

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        w2 = 2 * width
        self.net = nn.Sequential(_cbr(1, width, 5), Residual(width, 1), Residual(width, 2), _cbr(width, w2, 3, 2),
                                 Residual(w2, 2), Residual(w2, 4), nn.AdaptiveMaxPool1d(1), nn.Flatten(),
                                 nn.Dropout(0.1), nn.Linear(w2, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
           features: nn.Module | None = None) -> None:
    """Adam + cosine, batch 128; ``features`` (frozen, eval) maps inputs before ``model`` when given."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    if features is not None:
        with torch.no_grad():
            x = features.eval()(x)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def _probs(fn, x: torch.Tensor) -> np.ndarray:
    return softmax64(torch.cat([fn(b) for b in x.split(1024)]))


def _data(samples: int, seed: int, **knobs: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train / val / test tensors of MNIST-1D; ``knobs``: the generator's difficulty settings (``Mnist1dDataset``)."""
    from jmsnas.config import Mnist1dDataset
    from jmsnas.data import JmsnasDataModule

    dm = JmsnasDataModule(Mnist1dDataset(name="mnist1d", num_samples=samples, batch_size=128, val_fraction=0.2,
                                         **knobs), seed=seed)
    dm.setup()

    def stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*[ds[i] for i in range(len(ds))], strict=True)
        return torch.stack(xs), torch.stack(ys)

    return {"train": stack(dm.train_set), "val": stack(dm.val_set), "test": stack(dm.test_set)}


def _models(data: dict, args: argparse.Namespace, seed: int) -> tuple[Client, ExitHead, Server, float]:
    start = time.process_time()
    x, y = data["train"]
    torch.manual_seed(seed)
    client = Client(width=args.client_width)
    _train(client, x, y, args.client_epochs, 5e-3, seed)
    with torch.no_grad():
        c, length = client.front.eval()(x[:1]).shape[1:]
    torch.manual_seed(seed + 100)
    head = ExitHead(c, length)
    for p in client.parameters():
        p.requires_grad_(False)
    _train(head, x, y, args.head_epochs, 5e-3, seed, features=client.front)
    torch.manual_seed(seed + 200)
    server = Server(width=args.server_width)
    _train(server, x, y, args.server_epochs, 3e-3, seed)
    return client, head, server, time.process_time() - start


def _outputs(client: Client, head: ExitHead, server: Server, data: dict) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for split in ("val", "test"):
        x, y = data[split]
        yy = y.numpy()
        p1 = _probs(lambda b: head(client.front(b)), x)
        p2 = _probs(client, x)
        ps = _probs(server, x)
        out[split] = {"p1": p1, "p2": p2, "ps": ps, "c1": p1.argmax(1) == yy, "c2": p2.argmax(1) == yy,
                      "cs": ps.argmax(1) == yy}
    return out


def _best_at_most(acc: np.ndarray, frac: np.ndarray, cap: float) -> float:
    ok = frac <= cap + 1e-12
    return float(acc[ok].max())


def _min_offload_to_reach(acc: np.ndarray, frac: np.ndarray, target: float) -> float:
    ok = acc >= target - 1e-12
    return float(frac[ok].min()) if ok.any() else float("nan")


def _single_exit(du, mp_val, mp_test, o: dict, client_key: str, correct_key: str, server_key: str) -> dict:
    """Eq. (6) sweeps on test for the DU and for MP > t; validation-chosen points applied to test."""
    v, t = o["val"], o["test"]
    u_val, u_test = du.certainty(v[client_key]), du.certainty(t[client_key])
    sweep = offload_sweep(u_test, t[correct_key], t[server_key])
    mp_sweep = offload_sweep(mp_test, t[correct_key], t[server_key])
    i = int(np.argmax(sweep.overall_acc))
    best = sweep.point(i)
    chosen_val = choose_threshold(u_val, v[correct_key], v[server_key])
    chosen = offload_sweep(u_test, t[correct_key], t[server_key], [chosen_val.du_threshold]).point(0)
    mp_val_pt = choose_threshold(mp_val, v[correct_key], v[server_key])
    mp_chosen = offload_sweep(mp_test, t[correct_key], t[server_key], [mp_val_pt.du_threshold]).point(0)
    return {
        "best_overall_acc": best.overall_acc, "offload_fraction_at_best": best.offload_fraction,
        "du_threshold_at_best": best.du_threshold, "client_acc_kept_at_best": best.client_acc_kept,
        "server_acc_sent_at_best": best.server_acc_sent,
        "mp_threshold_best_overall_acc": _best_at_most(mp_sweep.overall_acc, mp_sweep.offload_fraction,
                                                       best.offload_fraction),
        "mp_best_overall_acc_any_offload": float(mp_sweep.overall_acc.max()),
        "min_offload_server_level": _min_offload_to_reach(sweep.overall_acc, sweep.offload_fraction,
                                                          float(t[server_key].mean()) - 0.005),
        "mp_min_offload_server_level": _min_offload_to_reach(mp_sweep.overall_acc, mp_sweep.offload_fraction,
                                                             float(t[server_key].mean()) - 0.005),
        "chosen_on_val_overall_acc": chosen.overall_acc, "chosen_on_val_offload_fraction": chosen.offload_fraction,
        "mp_chosen_on_val_overall_acc": mp_chosen.overall_acc,
        "mp_chosen_on_val_offload_fraction": mp_chosen.offload_fraction,
        "acc_at_offload": {str(f): _best_at_most(sweep.overall_acc, sweep.offload_fraction, f)
                           for f in OFFLOAD_LEVELS},
        "mp_acc_at_offload": {str(f): _best_at_most(mp_sweep.overall_acc, mp_sweep.offload_fraction, f)
                              for f in OFFLOAD_LEVELS},
        "curve": {"offload_fraction": sweep.offload_fraction.tolist(), "overall_acc": sweep.overall_acc.tolist()},
        "mp_curve": {"offload_fraction": mp_sweep.offload_fraction.tolist(),
                     "overall_acc": mp_sweep.overall_acc.tolist()},
    }


def _two_exit(du1, du2, o: dict) -> dict:
    t = o["test"]
    g = two_exit_grid(du1.certainty(t["p1"]), t["c1"], du2.certainty(t["p2"]), t["c2"], t["cs"], GRID, GRID)
    i, j = np.unravel_index(int(np.argmax(g["overall_acc"])), g["overall_acc"].shape)
    client_answered = g["exit1"][i, j] + g["exit2"][i, j]
    return {"best_overall_acc_two_exit": float(g["overall_acc"][i, j]), "s1_at_best": float(GRID[i]),
            "s2_at_best": float(GRID[j]), "f_exit1_at_best": float(g["f_exit1"][i, j]),
            "f_exit2_at_best": float(g["f_exit2"][i, j]), "f_server_at_best": float(g["f_server"][i, j]),
            "exit1_share_of_client_answered": float(g["exit1"][i, j] / client_answered) if client_answered else 0.0,
            "all_at_exit1": float(g["overall_acc"][0, -1]), "all_at_exit2": float(g["overall_acc"][-1, 0]),
            "all_at_server": float(g["overall_acc"][-1, -1]), "grid_overall_acc": g["overall_acc"].tolist()}


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = _data(args.samples, seed)
    client, head, server, cpu_s = _models(data, args, seed)
    o = _outputs(client, head, server, data)
    v, t = o["val"], o["test"]
    du_kw = {"epochs": args.du_epochs, "seed": seed}
    dus = {m: (fit_decision_unit(v["p1"], v["c1"], model=m, **du_kw), fit_decision_unit(v["p2"], v["c2"], model=m,
                                                                                       **du_kw))
           for m in ("mlp", "gbm")}
    mp_val, mp_test = meta_features(v["p2"])[:, 0], meta_features(t["p2"])[:, 0]
    row: dict[str, Any] = {
        "seed": seed, "train_cpu_s": cpu_s, "client_acc": float(t["c2"].mean()), "exit1_acc": float(t["c1"].mean()),
        "server_acc": float(t["cs"].mean()), "client_params": _params(client), "exit1_head_params": _params(head),
        "server_params": _params(server), "test_samples": len(t["c2"]), "val_samples": len(v["c2"]),
        "server_right_where_client_wrong": float(t["cs"][~t["c2"]].mean()),
        "client_right_where_server_wrong": float(t["c2"][~t["cs"]].mean()),
    }
    for m, (du1, du2) in dus.items():
        met = du_metrics(du2.certainty(t["p2"]), t["c2"])
        row[m] = {"du_table3_exit2": met, "du_table3_exit1": du_metrics(du1.certainty(t["p1"]), t["c1"]),
                  "single_exit": _single_exit(du2, mp_val, mp_test, o, "p2", "c2", "cs"),
                  "two_exit": _two_exit(du1, du2, o),
                  "exit1_to_rest_of_network": _single_exit(du1, meta_features(v["p1"])[:, 0],
                                                           meta_features(t["p1"])[:, 0], o, "p1", "c1", "c2")}
    for m in ("mlp", "gbm"):
        for k in ("curve", "mp_curve"):
            row[m]["exit1_to_rest_of_network"].pop(k)
    row |= {"du_auc": row["mlp"]["du_table3_exit2"]["auc"], **{k: row["mlp"]["single_exit"][k] for k in (
        "best_overall_acc", "offload_fraction_at_best", "mp_threshold_best_overall_acc")},
        "best_overall_acc_two_exit": row["mlp"]["two_exit"]["best_overall_acc_two_exit"]}
    print(f"seed {seed}: client {row['client_acc']:.4f} exit1 {row['exit1_acc']:.4f} server {row['server_acc']:.4f} "
          f"best {row['best_overall_acc']:.4f} at {row['offload_fraction_at_best']:.3f} sent, MP "
          f"{row['mp_threshold_best_overall_acc']:.4f}, AUC {row['du_auc']:.3f}, two-exit "
          f"{row['best_overall_acc_two_exit']:.4f} ({cpu_s:.0f} CPU s)", flush=True)
    return row


def _ms(values: list[float]) -> dict[str, Any]:
    """Mean and sd over the seeds where the value is defined (a NaN: e.g. server level never reached)."""
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(ok) if ok else float("nan"),
            "sd": statistics.stdev(ok) if len(ok) > 1 else 0.0, "per_seed": values, "defined": len(ok)}


KEYS = ("client_acc", "exit1_acc", "server_acc", "best_overall_acc", "offload_fraction_at_best", "du_auc",
        "mp_threshold_best_overall_acc", "best_overall_acc_two_exit")


def summarise(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {k: _ms([r[k] for r in rows]) for k in KEYS}
    for m in ("mlp", "gbm"):
        for part in ("single_exit", "exit1_to_rest_of_network"):
            sub = [r[m][part] for r in rows]
            out[f"{m}.{part}"] = {k: _ms([s[k] for s in sub]) for k in sub[0]
                                  if isinstance(sub[0][k], float)}
            out[f"{m}.{part}"]["acc_at_offload"] = {f: _ms([s["acc_at_offload"][f] for s in sub])
                                                    for f in sub[0]["acc_at_offload"]}
            out[f"{m}.{part}"]["mp_acc_at_offload"] = {f: _ms([s["mp_acc_at_offload"][f] for s in sub])
                                                       for f in sub[0]["mp_acc_at_offload"]}
        two = [r[m]["two_exit"] for r in rows]
        out[f"{m}.two_exit"] = {k: _ms([s[k] for s in two]) for k in two[0] if isinstance(two[0][k], float)}
        for which in ("du_table3_exit2", "du_table3_exit1"):
            out[f"{m}.{which}"] = {k: _ms([r[m][which][k] for r in rows]) for k in rows[0][m][which]}
    for k in ("server_right_where_client_wrong", "client_right_where_server_wrong"):
        out[k] = _ms([r[k] for r in rows])
    return out


def plot(path: Path, settings: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(len(rows) for rows in settings.values())
    fig, axes = plt.subplots(len(settings), n_cols, figsize=(5 * n_cols, 4 * len(settings)), squeeze=False)
    for row_axes, (name, rows) in zip(axes, settings.items(), strict=True):
        for ax, r in zip(row_axes, rows, strict=False):
            _panel(ax, r, name)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(ax: Any, r: dict, name: str) -> None:
    for m, style in (("mlp", "-"), ("gbm", "--")):
        cur = r[m]["single_exit"]["curve"]
        ax.plot(cur["offload_fraction"], cur["overall_acc"], style, label=f"DU ({m}) > s")
    mp = r["mlp"]["single_exit"]["mp_curve"]
    ax.plot(mp["offload_fraction"], mp["overall_acc"], ":", color="k", label="max-softmax > t")
    ax.axhline(r["client_acc"], color="tab:red", lw=0.8, label="client alone")
    ax.axhline(r["server_acc"], color="tab:green", lw=0.8, label="server alone")
    ax.set(xlabel="fraction sent to the server", ylabel="overall accuracy, eq. (6)",
           title=f"{name}, seed {r['seed']}")
    lo = min(r["client_acc"], r["server_acc"]) - 0.02
    ax.set_ylim(lo, max(r["best_overall_acc"], r["server_acc"]) + 0.005)
    ax.grid(alpha=0.3)


def _pm(s: dict, scale: float = 100.0, digits: int = 2) -> str:
    return f"{s['mean'] * scale:.{digits}f} ± {s['sd'] * scale:.{digits}f}"


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = ["# ESAI (paper 000): decision units and offloading on MNIST-1D", "",
             f"`nice -n 10 python benchmarks/esai.py`; {cfg['samples']} samples, seeds {cfg['seeds']}; "
             f"epochs client/head/server/DU {cfg['client_epochs']}/{cfg['head_epochs']}/{cfg['server_epochs']}/"
             f"{cfg['du_epochs']}; settings (client width : server width) {cfg['settings']} (one "
             "section each; the JSON's top-level keys are the first's means). Accuracies in %, mean ± sd over "
             "seeds, on the test split. Best = peak of the test sweep (paper 000 Fig. 4); chosen = threshold "
             "picked on validation (max eq. (6) accuracy) applied to test.", ""]
    for name, setting in result["settings"].items():
        lines += _setting_markdown(name, setting["summary"], setting["seeds"][0])
    lines += ["Plot: `esai.png` (overall accuracy vs fraction sent; one row per setting, one panel per seed).", ""]
    return "\n".join(lines)


def _setting_markdown(name: str, s: dict, first: dict) -> list[str]:
    lines = [f"## {name}: client {first['client_params']} parameters (exit-1 head {first['exit1_head_params']}), "
             f"server {first['server_params']}", "", "| quantity | value |", "| --- | --- |"]
    for k in KEYS:
        lines.append(f"| `{k}` | {_pm(s[k], 1.0 if k == 'du_auc' else 100.0, 3 if k == 'du_auc' else 2)} |")
    for m in ("mlp", "gbm"):
        se = s[f"{m}.single_exit"]
        lines += [f"| {m}: best / offload / MP at no more offload | {_pm(se['best_overall_acc'])} / "
                  f"{_pm(se['offload_fraction_at_best'])} / {_pm(se['mp_threshold_best_overall_acc'])} |",
                  f"| {m}: chosen on val: acc / offload (MP rule: acc / offload) | "
                  f"{_pm(se['chosen_on_val_overall_acc'])} / {_pm(se['chosen_on_val_offload_fraction'])} "
                  f"({_pm(se['mp_chosen_on_val_overall_acc'])} / {_pm(se['mp_chosen_on_val_offload_fraction'])}) |",
                  f"| {m}: server acc on sent / client acc on kept at best | {_pm(se['server_acc_sent_at_best'])} / "
                  f"{_pm(se['client_acc_kept_at_best'])} |",
                  f"| {m}: least share sent for server-level accuracy (within 0.5 pp), DU / MP | "
                  f"{_pm(se['min_offload_server_level'])} / {_pm(se['mp_min_offload_server_level'])} |"]
        t3 = s[f"{m}.du_table3_exit2"]
        lines.append(f"| {m}: DU2 Table III acc / AUC / sens / spec | {_pm(t3['accuracy'])} / "
                     f"{_pm(t3['auc'], 1, 3)} / {_pm(t3['sensitivity'])} / {_pm(t3['specificity'])} |")
    lines += ["", "Best eq. (6) accuracy with at most a given fraction sent (test sweep), DU (MLP) vs max-softmax:", "",
              "| sent ≤ | DU mlp | DU gbm | max-softmax |", "| --- | --- | --- | --- |"]
    for f in s["mlp.single_exit"]["acc_at_offload"]:
        lines.append(f"| {f} | {_pm(s['mlp.single_exit']['acc_at_offload'][f])} | "
                     f"{_pm(s['gbm.single_exit']['acc_at_offload'][f])} | "
                     f"{_pm(s['mlp.single_exit']['mp_acc_at_offload'][f])} |")
    te = s["mlp.two_exit"]
    lines += ["", "Two exits, eq. (7), 21 x 21 grid (MLP DUs): "
              f"best {_pm(te['best_overall_acc_two_exit'])} with exit 1 / exit 2 / server "
              f"{_pm(te['f_exit1_at_best'])} / {_pm(te['f_exit2_at_best'])} / {_pm(te['f_server_at_best'])} %; "
              f"exit 1's share of client-answered {_pm(te['exit1_share_of_client_answered'])} %; all at exit 1 / "
              f"exit 2 / server {_pm(te['all_at_exit1'])} / {_pm(te['all_at_exit2'])} / {_pm(te['all_at_server'])}.",
              "", "Exit 1 offloading to the rest of the client (the chain's case), MLP DU1: best "
              f"{_pm(s['mlp.exit1_to_rest_of_network']['best_overall_acc'])} at "
              f"{_pm(s['mlp.exit1_to_rest_of_network']['offload_fraction_at_best'])} % sent; max-softmax at no more "
              f"sent {_pm(s['mlp.exit1_to_rest_of_network']['mp_threshold_best_overall_acc'])}.", "",
              f"Server right where the client is wrong: {_pm(s['server_right_where_client_wrong'])} %; client right "
              f"where the server is wrong: {_pm(s['client_right_where_server_wrong'])} %.", ""]
    return lines


def _thin(row: dict, points: int = 201) -> dict:
    """The sweep curves cut to ``points`` evenly spaced operating points plus each curve's maximum (the
    full sweep has one point per test sample; the figures above are computed from the full one)."""
    for m in ("mlp", "gbm"):
        for key in ("curve", "mp_curve"):
            cur = row[m]["single_exit"][key]
            n = len(cur["overall_acc"])
            if n <= points:
                continue
            keep = sorted(set(np.linspace(0, n - 1, points).round().astype(int).tolist())
                          | {int(np.argmax(cur["overall_acc"]))})
            row[m]["single_exit"][key] = {k: [v[i] for i in keep] for k, v in cur.items()}
    return row


def _finite(value: Any) -> Any:
    """NaN as null (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--client-epochs", type=int, default=20)
    ap.add_argument("--head-epochs", type=int, default=10)
    ap.add_argument("--server-epochs", type=int, default=20)
    ap.add_argument("--settings", nargs="+", default=["4:48", "16:48", "8:8"],
                    help="CLIENT_WIDTH:SERVER_WIDTH per setting (the first gives the top-level keys)")
    ap.add_argument("--du-epochs", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="tiny run, nothing written")
    ap.add_argument("--render", type=Path, help="summarise the per-seed rows of this file (a run's esai.rows.json)")
    args = ap.parse_args()
    if args.smoke:
        args.samples, args.seeds, args.client_epochs, args.head_epochs = 2000, [0], 2, 1
        args.server_epochs, args.du_epochs, args.settings = 2, 20, ["4:16"]
    torch.set_num_threads(1)
    settings: dict[str, list[dict]] = json.loads(args.render.read_text()) if args.render else {}
    for setting in [] if args.render else args.settings:
        args.client_width, args.server_width = (int(v) for v in setting.split(":"))
        settings[f"client {args.client_width} / server {args.server_width}"] = [run_seed(s, args) for s in args.seeds]
    settings = {name: [_thin(r) for r in rows] for name, rows in settings.items()}
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "esai.rows.json").write_text(json.dumps(settings) + "\n")  # before anything can fail
    config = {k: v for k, v in vars(args).items() if k not in ("smoke", "client_width", "server_width", "render")}
    result: dict[str, Any] = {"config": config, "settings": {
        name: {"summary": summarise(rows), "seeds": rows} for name, rows in settings.items()}}
    first = next(iter(result["settings"].values()))
    result = {**{k: first["summary"][k]["mean"] for k in KEYS}, "top_level_from": next(iter(settings)), **result}
    text = markdown(result)
    if args.smoke:
        print(text)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    # the summary keys one per line, the per-seed rows (curves, grids) compact
    head = {k: v for k, v in result.items() if k != "settings"}
    body = ",\n".join(f" {json.dumps(name)}: {json.dumps(_finite(s), allow_nan=False)}"
                      for name, s in result["settings"].items())
    text_json = json.dumps(_finite(head), indent=1, allow_nan=False)[:-2] + ',\n "settings": {\n' + body + "\n }\n}\n"
    (RESULTS / "esai.json").write_text(text_json)
    (RESULTS / "esai.md").write_text(text)
    plot(RESULTS / "esai.png", settings)
    (RESULTS / "esai.rows.json").unlink(missing_ok=True)  # kept only while a run can still fail
    print(text)


if __name__ == "__main__":
    main()
