"""Does the search beat latency-constrained random search? (issue 14)

Two parts, on one task (default: the quickstart, MNIST-1D on the M0+ / M4F / phone chain):

1. **Can the task tell searches apart?** Per T_const level, ``--spread-nets`` networks drawn within
   the budget (the random strategy's sampler: uniform per layer, priced on the topology) are each
   trained ``--spread-epochs`` from scratch and tested. ``spread_pp`` is the range of their test
   accuracies (max - min, in pp; the sd is stored too). Under 3 pp the task cannot separate a good
   search from a random draw, and the report says so: pick a harder task (``--task``) rather than read
   the comparison.
2. **Three strategies, three levels, ``--seeds`` seeds**: proxyless (``quickstart.yaml``), morphism
   (``quickstart_morphism.yaml``) and random (``quickstart_random.yaml``) at the same T_const; random
   gets the same wall clock as the proxyless search of the same level and seed (``time_budget_s``).
   Reported per strategy and level: mean ± sd test accuracy after retraining, predicted latency,
   search wall time.

Goal (issue 14): proxyless (and morphism) >= random + 1 pp mean test accuracy at >= 2 of 3 levels, or
equal accuracy (within 0.5 pp) at >= 15 % lower predicted latency; ``goal_met`` per strategy says
whether it was reached. Runs go one at a time at one thread; wall times are only comparable when
nothing else runs on the machine.

Usage::

    python benchmarks/search_vs_random.py              # writes benchmarks/results/search_vs_random.{md,json}
    python benchmarks/search_vs_random.py --smoke      # one level, one seed, 1-epoch runs: nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
EXPERIMENTS = {"proxyless": "quickstart.yaml", "morphism": "quickstart_morphism.yaml",
               "random": "quickstart_random.yaml"}
LEVELS = (14.0, 18.0, 22.0)


def _experiment(strategy: str):
    from jmsnas.config import load_experiment

    return load_experiment(REPO / "experiments" / EXPERIMENTS[strategy])


def spread(t_const: float, n: int, epochs: int, seed: int) -> dict:
    """Test accuracies of ``n`` random networks within ``t_const``, each trained ``epochs`` from scratch."""
    from jmsnas.data import JmsnasDataModule
    from jmsnas.space.arch import ArchSpec, build_model
    from jmsnas.strategies.arch_latency import ArchLatencyModel
    from jmsnas.strategies.children import ChildData, fit
    from jmsnas.strategies.random_search import sample_within

    exp = _experiment("random")
    dm = JmsnasDataModule(exp.config.dataset, seed=exp.config.seed)
    dm.setup()
    info = dm.info()
    sample = sample_within(exp.search_space, info.num_classes, info.input_shape, ArchLatencyModel.for_experiment(exp),
                           t_const, n, 10_000, random.Random(f"spread/{seed}/{t_const}"))
    s = exp.config.strategy
    data = ChildData(train=dm.train_set, val=dm.val_set, batch_size=exp.config.dataset.batch_size, epochs=epochs,
                     lr=s.sample_lr, weight_decay=s.lambda1, temperature=1.0, kd_weight=0.0,
                     use_kd=False)
    accs = []
    for k, (spec, _) in enumerate(sample.drawn):
        torch.manual_seed(seed + k)
        net = build_model(ArchSpec.from_dict(spec.to_dict()))
        fit(net, data, seed + k)
        accs.append(_test_acc(net, dm))
    return {"t_const_ms": t_const, "n": len(accs), "test_acc": accs, "spread_pp": 100 * (max(accs) - min(accs)),
            "sd_pp": 100 * statistics.pstdev(accs)}


def _test_acc(net: torch.nn.Module, dm) -> float:
    net.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            right += int((net(x).argmax(-1) == y).sum())
            total += len(y)
    return right / total


def one_run(strategy: str, t_const: float, seed: int, root: Path, smoke: bool, budget_s: float | None) -> dict:
    from jmsnas.strategies.morphism import run_morphism
    from jmsnas.strategies.random_search import run_random
    from jmsnas.strategies.run import run_proxyless

    exp = _experiment(strategy)
    cfg = exp.config.strategy
    update: dict = {"t_const_ms": t_const}
    if smoke:
        short = cfg.retrain.model_copy(update={"epochs": 1})
        update.update({"proxyless": {"epochs": 1, "warmup_epochs": 0, "retrain": short},
                       "morphism": {"iterations": 1, "child_epochs": 1, "retrain": short},
                       "random": {"num_candidates": 2, "sample_epochs": 1, "retrain": short}}[strategy])
    if strategy == "random" and budget_s is not None:
        update["time_budget_s"] = budget_s
    run = {"proxyless": run_proxyless, "morphism": run_morphism, "random": run_random}[strategy]
    start = time.perf_counter()
    outcome = asdict(run(exp, cfg.model_copy(update=update), seed, root / f"{strategy}_t{t_const:g}_s{seed}",
                         progress=False))
    outcome["wall_s"] = time.perf_counter() - start
    return outcome


def summarise(runs: list[dict], levels: list[float]) -> dict:
    out: dict = {}
    for strategy in EXPERIMENTS:
        rows = [[r for r in runs if r["strategy"] == strategy and r["t_const_ms"] == t] for t in levels]
        accs = [[r["test_acc"] for r in row] for row in rows]
        out[strategy] = {
            "test_acc_mean": [statistics.fmean(a) if a else None for a in accs],
            "test_acc_sd": [statistics.pstdev(a) if len(a) > 1 else 0.0 for a in accs],
            "predicted_latency_ms": [statistics.fmean(r["predicted_latency_ms"] for r in row) if row else None
                                     for row in rows],
            "wall_s": [statistics.fmean(r["wall_s"] for r in row) if row else None for row in rows],
        }
    rand = out["random"]
    for strategy in ("proxyless", "morphism"):
        s = out[strategy]
        wins = sum(1 for i in range(len(levels))
                   if s["test_acc_mean"][i] is not None and rand["test_acc_mean"][i] is not None and (
                       s["test_acc_mean"][i] >= rand["test_acc_mean"][i] + 0.01
                       or (abs(s["test_acc_mean"][i] - rand["test_acc_mean"][i]) <= 0.005
                           and s["predicted_latency_ms"][i] <= 0.85 * rand["predicted_latency_ms"][i])))
        s["levels_won"] = wins
        s["goal_met"] = wins >= min(2, len(levels))
    return out


def to_markdown(payload: dict) -> str:
    lines = ["# Search vs latency-constrained random search", "", f"Command: `{payload['command']}`", "",
             f"Hardware: {payload['hardware']}. Task: {payload['task']}. Seeds {payload['seeds']}.", "",
             "Spread of random networks within each budget (can the task tell searches apart?):", "",
             "| T_const (ms) | networks | test acc. range (pp) | sd (pp) | verdict |",
             "| --- | --- | --- | --- | --- |"]
    for t, sp in zip(payload["t_const_ms"], payload["spread"], strict=True):
        verdict = "can separate" if sp["spread_pp"] >= 3 else "**under 3 pp: cannot tell searches apart**"
        lines.append(f"| {t:g} | {sp['n']} | {sp['spread_pp']:.2f} | {sp['sd_pp']:.2f} | {verdict} |")
    lines += ["", "| strategy | T_const (ms) | test acc. (mean ± sd) | predicted latency (ms) | wall (s) |",
              "| --- | --- | --- | --- | --- |"]
    for strategy in EXPERIMENTS:
        s = payload[strategy]
        for i, t in enumerate(payload["t_const_ms"]):
            if s["test_acc_mean"][i] is None:
                continue
            lines.append(f"| {strategy} | {t:g} | {100 * s['test_acc_mean'][i]:.2f} ± {100 * s['test_acc_sd'][i]:.2f} "
                         f"| {s['predicted_latency_ms'][i]:.2f} | {s['wall_s'][i]:.0f} |")
    lines += [""] + [f"- {st}: beats random (+1 pp, or equal at -15 % latency) at {payload[st]['levels_won']} of "
                     f"{len(payload['t_const_ms'])} levels: goal {'met' if payload[st]['goal_met'] else 'NOT met'}"
                     for st in ("proxyless", "morphism")]
    from jmsnas.latency.watch import contention_markdown

    lines += ["", contention_markdown(payload.get("contention"))]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    parser.add_argument("--spread-nets", type=int, default=30)
    parser.add_argument("--spread-epochs", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="one level, one seed, 1-epoch runs; nothing written")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.levels, args.spread_nets, args.spread_epochs = 1, args.levels[1:2], 3, 1
    torch.set_num_threads(1)
    from jmsnas.latency.profiler import processor_name

    start = time.time()
    from jmsnas.latency.watch import ContentionWatch

    watch = ContentionWatch()  # wall times are void if anything else ran meanwhile
    spreads = [spread(t, args.spread_nets, args.spread_epochs, 0) for t in args.levels]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.levels:
            for seed in range(args.seeds):
                for strategy in EXPERIMENTS:
                    budget = next((r["wall_s"] for r in runs if r["strategy"] == "proxyless" and r["t_const_ms"] == t
                                   and r["seed"] == seed), None)
                    outcome = one_run(strategy, t, seed, Path(tmp), args.smoke, budget)
                    watch.checkpoint(f"{strategy} T={t:g} seed {seed}")
                    runs.append({**outcome, "strategy": strategy, "t_const_ms": t})
                    print(f"{strategy} T={t:g} seed {seed}: test acc {outcome['test_acc']:.4f}, "
                          f"{outcome['predicted_latency_ms']:.2f} ms, {outcome['wall_s']:.0f} s", flush=True)
    payload = {"task": "MNIST-1D quickstart (experiments/quickstart*.yaml)", "t_const_ms": args.levels,
               "spread_pp": [s["spread_pp"] for s in spreads], "spread": spreads, **summarise(runs, args.levels),
               "runs": [{k: r[k] for k in ("strategy", "t_const_ms", "seed", "test_acc", "predicted_latency_ms",
                                           "wall_s", "compact")} for r in runs],
               "seeds": list(range(args.seeds)), "hardware": f"{processor_name()}, {os.cpu_count()} cores, one thread",
               "command": "python benchmarks/search_vs_random.py " + " ".join(sys.argv[1:]),
               "wall_s": time.time() - start, "smoke": args.smoke, "contention": watch.summary()}
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "search_vs_random.json").write_text(json.dumps(payload, indent=2) + "\n")
        (RESULTS / "search_vs_random.md").write_text(to_markdown(payload))
    print(to_markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
