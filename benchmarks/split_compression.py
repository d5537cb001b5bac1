"""Compression at the first cut: payload as a share of the input, and what it costs in accuracy.

Networks, each trained here, then cut early (after the first unit whose output has at most a
quarter of the input's resolution per axis, where paper 002 places its split):

- ``digits32``: scikit-learn's digits resized to 32x32, the MobileNetV2-style network of the
  ``mbconv13`` space (``baselines.mobilenet_v2_spec``) with a 1-channel input. The input counts as
  8-bit pixels (1024 bytes), as a camera delivers them. Target: <= 2 % of the input at <= 1 pp.
- ``mnist1d``: the quickstart's searched network (T_const 18 ms) on MNIST-1D. Its input is 40
  float32 values (160 bytes); no target.
- ``synthetic224``: the same MobileNetV2-style network on a 3x224x224 input (150 528 bytes at
  8 bits): payload only, no training (the payload of every compressor depends only on shapes).

Compressors at the cut: ``none`` (float32), ``quantize`` at 8 and 4 bits, ``autoencoder`` (1/4 of the
channels, stride 2, 8 bits; paper 004's two training steps), ``distilled_bottleneck`` (paper 002)
at a few code sizes. Accuracy change = test accuracy of the split pipeline minus the unsplit model's.

Then the gain of the plan over a range of data rates (paper 002 Fig. 3): a mobile device and an
edge server (analytic: 0.5 and 50 G MAC/s, latency = MACs / rate for every part, the student
included, so all parts are costed alike), one link of 0.1-200 Mbit/s, the result wanted on the
server. Gain = T(baseline) / T(plan) with cloud-only (send the 8-bit input) and device-only
baselines; the plan is the best of the exact split with 8-bit quantisation (``plan_sequential``) and
the distilled-bottleneck split that meets the accuracy target. The distilled split alone is shown
too ("mimic w/ B" in paper 002), which can lose to cloud-only on fast links.

Usage::

    python benchmarks/split_compression.py           # writes benchmarks/results/split_compression.{md,json,png}
    python benchmarks/split_compression.py --smoke   # tiny epochs, nothing written
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from jmsnas.compress.autoencoder import fit_autoencoder, make_autoencoder  # noqa: E402
from jmsnas.compress.distilled import fit_student_head, make_student_head  # noqa: E402
from jmsnas.compress.quantize import build_codec, calibrate, packed_bytes  # noqa: E402
from jmsnas.config import DigitsDataset, Mnist1dDataset  # noqa: E402
from jmsnas.data import JmsnasDataModule  # noqa: E402
from jmsnas.export.split import run_segments, split_archnet  # noqa: E402
from jmsnas.plan.baselines import mobilenet_v2_spec  # noqa: E402
from jmsnas.plan.planners import plan_sequential  # noqa: E402
from jmsnas.space.arch import ArchSpec, build_model  # noqa: E402
from jmsnas.space.macs import count_macs  # noqa: E402
from jmsnas.space.spec import load_search_space  # noqa: E402
from jmsnas.topology import Device, Link, build_topology  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
#: a quickstart choice at T_const 18 ms from an earlier run (fixed here; later quickstart runs chose others)
MNIST1D_CHOICES = ["mb_k7_e3", "mb_k5_e3", "mb_k5_e3_sc", "mb_k5_e3", "identity", "mb_k7_e3"]
MOBILE_MACS_PER_S, EDGE_MACS_PER_S = 0.5e9, 50e9
RATES_MBPS = [float(v) for v in np.geomspace(0.1, 200, 25)]


def train(model: nn.Module, dm: JmsnasDataModule, epochs: int, lr: float = 0.05) -> None:
    """SGD with momentum and a cosine schedule, as stage 2 of the search retrains."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5, nesterov=True)
    steps = epochs * len(dm.train_dataloader())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    model.train()
    for _ in range(epochs):
        for x, y in dm.train_dataloader():
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def accuracy(fn, loader) -> float:
    hits = total = 0
    with torch.no_grad():
        for x, y in loader:
            hits += int((fn(x).argmax(1) == y).sum())
            total += len(y)
    return hits / total


def cut_index(spec: ArchSpec) -> int:
    """Units ``[0, k)`` go before the cut: the first unit whose output has <= 1/4 of the input's size per axis."""
    size = spec.input_shape[1:]
    model = build_model(spec).eval()
    x = torch.zeros(1, *spec.input_shape)
    for k, unit in enumerate(model.layers()[:-1]):
        x = unit(x)
        if all(s * 4 <= i for s, i in zip(x.shape[2:], size, strict=True)):
            return k + 1
    raise ValueError("no unit reduces the input enough")


def compressors(epochs: int, student_epochs: int = 30) -> list[dict]:
    ae, ft = (2, 1) if epochs < 5 else (20, 5)
    st, sft = (2, 1) if epochs < 5 else (student_epochs, 10)
    return [
        {"name": "none", "kind": "none"},
        {"name": "quantize-8", "kind": "quantize", "bits": 8},
        {"name": "quantize-4", "kind": "quantize", "bits": 4},
        {"name": "autoencoder-r4-8", "kind": "autoencoder", "bits": 8, "reduction": 4, "epochs": ae, "finetune": ft},
        *({"name": f"distilled-c{c}-{b}", "kind": "distilled_bottleneck", "bits": b, "code_channels": c,
           "epochs": st, "finetune": sft} for c, b in ((4, 8), (2, 8), (2, 4), (4, 2), (1, 8))),
    ]


def run_compressor(c: dict, segments: list[nn.Module], cut_shape: tuple[int, ...], input_shape: tuple[int, ...],
                   train_x: list[torch.Tensor], model: nn.Module) -> tuple[callable, int, int]:
    """``(pipeline, payload bytes per sample, sender MACs per sample)`` of compressor ``c`` at the cut."""
    front, back = segments[0], segments[1]
    head_macs = count_macs(front, input_shape)
    with torch.no_grad():
        feats = [run_segments([front], x) for x in train_x[:8]]
    numel = math.prod(cut_shape)
    nonnegative = all(bool((f[0] >= 0).all()) for f in feats)  # e.g. after a ReLU; an MBConv's output is signed
    if c["kind"] == "none":
        return (lambda x: run_segments([back], *run_segments([front], x))[0]), numel * 4, head_macs
    if c["kind"] == "quantize":
        enc, dec = build_codec("quantize", calibrate("quantize", feats, bits=c["bits"]))
        return (lambda x: run_segments([back], *dec(enc(run_segments([front], x))))[0],
                packed_bytes(numel, c["bits"]), head_macs)
    if c["kind"] == "autoencoder":
        encoder, decoder = make_autoencoder(cut_shape, reduction=c["reduction"], nonnegative=nonnegative)
        fit = fit_autoencoder(encoder, decoder, [front], [back], model, train_x, epochs=c["epochs"],
                              finetune_epochs=c["finetune"], bits=c["bits"], reduction=c["reduction"])
        code = fit.encoder.first(feats[0])[0]
        payload = packed_bytes(code[0].numel(), c["bits"])
        macs = head_macs + count_macs(fit.encoder.first.conv, cut_shape)
        return (lambda x: run_segments(fit.back, *fit.decoder(fit.encoder(run_segments([front], x))))[0],
                payload, macs)
    encoder, decoder = make_student_head(input_shape, cut_shape, channel_fraction=c["code_channels"] / cut_shape[0],
                                         nonnegative=nonnegative)
    fit = fit_student_head(encoder, decoder, [front], train_x, epochs=c["epochs"], finetune_epochs=c["finetune"],
                           bits=c["bits"])
    quantize, decode = fit.codec
    return ((lambda x: run_segments([back], *decode(quantize(encoder(x))))[0]), fit.payload_bytes,
            count_macs(encoder, input_shape))


def bench_dataset(name: str, spec: ArchSpec, dm: JmsnasDataModule, input_bytes: int, epochs: int, seed: int,
                  student_epochs: int = 30) -> dict:
    torch.manual_seed(seed)
    model = build_model(spec)
    start = time.perf_counter()
    train(model, dm, epochs)
    train_s = time.perf_counter() - start
    test = dm.test_dataloader()
    base = accuracy(model, test)
    k = cut_index(spec)
    segments = split_archnet(model, [0, k, len(model.layers())])
    with torch.no_grad():
        cut_shape = tuple(run_segments(segments[:1], torch.zeros(1, *spec.input_shape))[0].shape[1:])
    train_x = [x for x, _ in dm.train_dataloader()]
    rows = []
    for c in compressors(epochs, student_epochs):
        torch.manual_seed(seed)
        start = time.perf_counter()
        pipeline, payload, sender_macs = run_compressor(c, segments, cut_shape, spec.input_shape, train_x, model)
        fit_s = time.perf_counter() - start
        acc = accuracy(pipeline, test)
        rows.append({"compressor": c["name"], "kind": c["kind"], "bits": c.get("bits", 32), "payload_bytes": payload,
                     "payload_fraction": payload / input_bytes, "test_acc": acc, "acc_change_pp": 100 * (acc - base),
                     "sender_macs": sender_macs, "fit_s": fit_s})
        print(f"{name:<8} {c['name']:<22} payload {payload:>6} B ({100 * payload / input_bytes:6.2f} %)  "
              f"acc {100 * acc:5.1f} % ({100 * (acc - base):+.1f} pp)", flush=True)
    return {"dataset": name, "arch": spec.compact(), "input_shape": list(spec.input_shape), "input_bytes": input_bytes,
            "cut_after_unit": k, "cut_shape": list(cut_shape), "unsplit_test_acc": base, "train_s": train_s,
            "total_macs": count_macs(model, spec.input_shape), "head_macs": count_macs(segments[0], spec.input_shape),
            "model": model, "segments": segments, "compressors": rows}


def synthetic_payloads(spec: ArchSpec, input_bytes: int) -> dict:
    """Payload of every compressor at the cut of a 3x224x224 network: shapes only, nothing trained."""
    k = cut_index(spec)
    model = build_model(spec).eval()
    segments = split_archnet(model, [0, k, len(model.layers())])
    with torch.no_grad():
        cut_shape = tuple(run_segments(segments[:1], torch.zeros(1, *spec.input_shape))[0].shape[1:])
        rows = []
        for c in compressors(10):
            numel = math.prod(cut_shape)
            if c["kind"] == "none":
                payload = numel * 4
            elif c["kind"] == "quantize":
                payload = packed_bytes(numel, c["bits"])
            elif c["kind"] == "autoencoder":
                encoder, _ = make_autoencoder(cut_shape, reduction=c["reduction"])
                payload = packed_bytes(encoder((torch.zeros(1, *cut_shape),))[0].numel(), c["bits"])
            else:
                encoder, _ = make_student_head(spec.input_shape, cut_shape, c["code_channels"] / cut_shape[0])
                payload = packed_bytes(encoder.eval()(torch.zeros(1, *spec.input_shape))[0].numel(), c["bits"])
            rows.append({"compressor": c["name"], "kind": c["kind"], "payload_bytes": payload,
                         "payload_fraction": payload / input_bytes})
    return {"dataset": "synthetic224", "arch": spec.compact(), "input_shape": list(spec.input_shape),
            "input_bytes": input_bytes, "cut_after_unit": k, "cut_shape": list(cut_shape), "compressors": rows}


def gain_sweep(result: dict, spec: ArchSpec, chosen: dict) -> dict:
    """Paper 002 Fig. 3: gain of the plan over cloud-only and device-only across data rates."""
    model = result["model"]
    unit_macs = []
    x = torch.zeros(1, *spec.input_shape)
    for unit in model.layers():
        unit_macs.append(count_macs(unit, tuple(x.shape[1:])))
        with torch.no_grad():
            x = unit(x)
    out_bytes = [float(v) for v in _unit_output_bytes(model, spec)]
    lat = {"mobile": [1e3 * m / MOBILE_MACS_PER_S for m in unit_macs],
           "edge": [1e3 * m / EDGE_MACS_PER_S for m in unit_macs]}
    total = sum(unit_macs)
    student_ms = 1e3 * chosen["sender_macs"] / MOBILE_MACS_PER_S
    tail_ms = 1e3 * (total - result["head_macs"]) / EDGE_MACS_PER_S  # the decoder's own MACs are left out: tiny
    rows = []
    for rate in RATES_MBPS:
        topo = build_topology("chain", [Device("mobile"), Device("edge")], [Link("mobile", "edge", rate, 0.0)])
        link = topo.link("mobile", "edge")
        plan = plan_sequential(lat, out_bytes, float(result["input_bytes"]), topo,
                               compressors={"mobile": "quantize"})
        cloud = link.latency_ms(result["input_bytes"]) + sum(lat["edge"])
        device = sum(lat["mobile"]) + link.latency_ms(out_bytes[-1])
        mimic = student_ms + link.latency_ms(chosen["payload_bytes"]) + tail_ms
        best = min(plan.total_latency_ms, mimic)
        rows.append({"rate_mbps": rate, "cloud_only_ms": cloud, "device_only_ms": device,
                     "quantized_split_ms": plan.total_latency_ms, "quantized_split": plan.boundaries(),
                     "distilled_split_ms": mimic, "plan_ms": best,
                     "gain_vs_cloud": cloud / best, "gain_vs_device": device / best,
                     "distilled_gain_vs_cloud": cloud / mimic, "distilled_gain_vs_device": device / mimic})
    return {"mobile_macs_per_s": MOBILE_MACS_PER_S, "edge_macs_per_s": EDGE_MACS_PER_S,
            "distilled_compressor": chosen["compressor"], "rows": rows}


def _unit_output_bytes(model: nn.Module, spec: ArchSpec) -> list[int]:
    out, x = [], torch.zeros(1, *spec.input_shape)
    with torch.no_grad():
        for unit in model.layers():
            x = unit(x)
            out.append(4 * x.numel())
    return out


def plot(path: Path, sweep: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["rate_mbps"] for r in sweep["rows"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(rates, [r["gain_vs_cloud"] for r in sweep["rows"]], "b-", label="plan vs cloud-only")
    ax.plot(rates, [r["gain_vs_device"] for r in sweep["rows"]], "r-", label="plan vs device-only")
    ax.plot(rates, [r["distilled_gain_vs_cloud"] for r in sweep["rows"]], "b--", label="distilled split vs cloud-only")
    ax.plot(rates, [r["distilled_gain_vs_device"] for r in sweep["rows"]], "r--",
            label="distilled split vs device-only")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("data rate [Mbit/s]")
    ax.set_ylabel("gain (baseline time / plan time)")
    ax.set_title("digits-32: mobile 0.5 G MAC/s, edge 50 G MAC/s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_within(rows: list[dict], budget_pp: float = 1.0) -> dict | None:
    """The smallest-payload compressor whose accuracy change is within ``budget_pp``."""
    ok = [r for r in rows if r["acc_change_pp"] >= -budget_pp]
    return min(ok, key=lambda r: r["payload_bytes"]) if ok else None


def to_markdown(r: dict) -> str:
    lines = ["# split_compression", "",
             f"Command: `{r['command']}`; hardware: {r['hardware']}; wall time {r['wall_s']:.0f} s; "
             f"seed {r['seed']}; one training run per network (accuracy figures are single runs).", "",
             "Payload at the first cut as a share of the input, and the test-accuracy change of the split pipeline "
             "against the unsplit network (pp). Negative = worse.", ""]
    for d in r["datasets"]:
        lines += [f"## {d['dataset']}", "",
                  f"Network `{d['arch']}`, input {tuple(d['input_shape'])} = {d['input_bytes']} bytes; cut after "
                  f"unit {d['cut_after_unit']}, cut tensor {tuple(d['cut_shape'])}."]
        if "unsplit_test_acc" in d:
            lines.append(f"Unsplit test accuracy {100 * d['unsplit_test_acc']:.2f} % (trained {d['train_s']:.0f} s); "
                         f"head {d['head_macs']:,} of {d['total_macs']:,} MACs.")
        lines += ["", "| compressor | bits | payload [B] | payload / input | acc change [pp] | sender MACs |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in d["compressors"]:
            acc = f"{c['acc_change_pp']:+.2f}" if "acc_change_pp" in c else "–"
            macs = f"{c['sender_macs']:,}" if "sender_macs" in c else "–"
            lines.append(f"| {c['compressor']} | {c.get('bits', '–')} | {c['payload_bytes']} | "
                         f"{100 * c['payload_fraction']:.2f} % | {acc} | {macs} |")
        if d.get("best_within_1pp"):
            b = d["best_within_1pp"]
            lines.append(f"\nSmallest payload within 1 pp: **{b['compressor']}**, {100 * b['payload_fraction']:.2f} % "
                         f"of the input at {b['acc_change_pp']:+.2f} pp.")
        lines.append("")
    s = r["gain_sweep"]
    lines += ["## Gain over data rates (digits-32; paper 002 Fig. 3)", "",
              f"Mobile {s['mobile_macs_per_s'] / 1e9:g} G MAC/s, edge {s['edge_macs_per_s'] / 1e9:g} G MAC/s "
              f"(analytic), rtt 0, result wanted on the edge. Distilled split: {s['distilled_compressor']}. "
              "Plot: `split_compression.png`.", "",
              "| Mbit/s | cloud-only [ms] | device-only [ms] | 8-bit split [ms] | distilled split [ms] | "
              "gain vs cloud | gain vs device |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in s["rows"][::3]:
        lines.append(f"| {row['rate_mbps']:.3g} | {row['cloud_only_ms']:.2f} | {row['device_only_ms']:.2f} | "
                     f"{row['quantized_split_ms']:.2f} | {row['distilled_split_ms']:.2f} | "
                     f"{row['gain_vs_cloud']:.2f} | {row['gain_vs_device']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of each network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student-epochs", type=int, default=30, help="distilled bottleneck: SSE epochs")
    parser.add_argument("--smoke", action="store_true", help="2 epochs everywhere, nothing written")
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = 2 if args.smoke else args.epochs
    start = time.time()
    from jmsnas.latency.watch import ContentionWatch

    watch = ContentionWatch()  # wall times are void if anything else ran meanwhile
    space2d = load_search_space(REPO / "search_spaces" / "mbconv13.yaml")
    space1d = load_search_space(REPO / "search_spaces" / "mbconv13_1d.yaml")
    digits_dm = JmsnasDataModule(DigitsDataset(name="digits", image_size=32, batch_size=64), seed=args.seed)
    digits_dm.setup()
    digits_spec = mobilenet_v2_spec(space2d, 10, (1, 32, 32))
    digits = bench_dataset("digits32", digits_spec, digits_dm, 32 * 32, epochs, args.seed, args.student_epochs)
    m1d_dm = JmsnasDataModule(Mnist1dDataset(name="mnist1d", batch_size=64), seed=args.seed)
    m1d_dm.setup()
    m1d_spec = ArchSpec.from_choices(space1d, MNIST1D_CHOICES, 10, (1, 40))
    mnist1d = bench_dataset("mnist1d", m1d_spec, m1d_dm, 40 * 4, 2 * epochs, args.seed, args.student_epochs)
    synthetic = synthetic_payloads(mobilenet_v2_spec(space2d, 1000, (3, 224, 224)), 3 * 224 * 224)
    for d in (digits, mnist1d):
        d["best_within_1pp"] = best_within(d["compressors"])
    distilled = [c for c in digits["compressors"] if c["kind"] == "distilled_bottleneck"]
    chosen = best_within(distilled) or min(distilled, key=lambda c: -c["acc_change_pp"])
    sweep = gain_sweep(digits, digits_spec, chosen)
    from jmsnas.machine import processor_name

    datasets = []
    for d in (digits, mnist1d, synthetic):
        datasets.append({k: v for k, v in d.items() if k not in ("model", "segments")})
    result = {
        "payload_fraction": {d["dataset"]: {c["compressor"]: c["payload_fraction"] for c in d["compressors"]}
                             for d in datasets},
        "acc_change_pp": {d["dataset"]: {c["compressor"]: c["acc_change_pp"] for c in d["compressors"]}
                          for d in datasets if d["dataset"] != "synthetic224"},
        "digits32_best_within_1pp": digits["best_within_1pp"],
        "target_met": bool(digits["best_within_1pp"] and digits["best_within_1pp"]["payload_fraction"] <= 0.02),
        "datasets": datasets, "gain_sweep": sweep, "seed": args.seed, "epochs": epochs,
        "student_epochs": args.student_epochs,
        "wall_s": time.time() - start,
        "hardware": f"{processor_name()}, {os.cpu_count()} cores, 1 thread",
        "command": "python benchmarks/split_compression.py " + " ".join(sys.argv[1:]),
    }
    watch.checkpoint("the whole run")
    result["contention"] = watch.summary()
    md = to_markdown(result) + "\n" + watch.markdown() + "\n"
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "split_compression.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "split_compression.md").write_text(md)
        plot(RESULTS / "split_compression.png", sweep)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
