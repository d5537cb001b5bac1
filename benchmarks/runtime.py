"""The served runtime (issue 15) on the quickstart's bundles: measured against the plan, under load, under a fault.

For every choice of a quickstart run (``runs/quickstart/best/t*ms/bundle``), ``python -m jmsnas.serve
--local`` is run three times through its Python API (``jmsnas.runtime.local.serve_local``), one
process per device on this machine, links emulated from the experiment's topology (bandwidth,
round trip) and the analytic devices emulated (they run on this CPU, then wait out their predicted
time):

0. **the runtime's own cost** on this machine (``jmsnas.runtime.overhead.measure_overhead``: pass-through
   chains of 2-4 devices, not these bundles, each served three times), or the fit in ``--overhead FILE``;
1. **closed loop**: one sample at a time (after a warm-up), ``--repeats`` times (the median run is
   reported, the spread beside it) — per-sample end-to-end latency against the plan's prediction for
   where it was answered, and against the plan plus the runtime's own cost; per device and per link;
2. **load**: open loop at ``--load-factor`` times the pipeline's predicted bottleneck rate —
   throughput and p50 / p95 / p99;
3. **fault**: the middle device killed a third of the way in and restarted a second later — how
   many samples were answered, where, how many fell back, and ``lost`` (must be 0).

Inputs are random normal tensors of the bundle's input shape (exits, where a bundle has them, then
leave at rates unlike the test split's; the per-hop comparison does not depend on it).
Timing figures: run it alone on a quiet machine.

Usage::

    python benchmarks/runtime.py                    # writes benchmarks/results/runtime.{md,json,png}
    python benchmarks/runtime.py --run runs/quickstart --samples 200 [--overhead runtime_overhead.json]
    python benchmarks/runtime.py --smoke            # a tiny bundle, a few samples, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _tiny_bundle(out: Path) -> Path:
    """A three-device bundle of the tiny 2-D ArchNet (no experiment: links derived from the plan)."""
    import torch

    from jmsnas.export.split import split_archnet
    from jmsnas.export.writer import export_bundle
    from jmsnas.plan.planners import plan_sequential
    from jmsnas.space.arch import ArchSpec, BlockSpec, HeadSpec, StemSpec, build_model
    from jmsnas.space.macs import arch_descriptors
    from jmsnas.topology import Device, Link, build_topology

    torch.manual_seed(0)
    spec = ArchSpec(dims=2, input_shape=(3, 16, 16), num_classes=5, stem=StemSpec(channels=4, kernel_size=3, stride=1),
                    blocks=(BlockSpec.of("mb_k3_e3", 4, 8, 2), BlockSpec.of("mb_k3_e3_sc", 8, 8, 1)),
                    head=HeadSpec(channels=8))
    model = build_model(spec).eval()
    names = ["d0", "d1", "d2"]
    links = [Link("d0", "d1", 10.0, 2.0), Link("d1", "d2", 10.0, 2.0)]
    topo = build_topology("chain", [Device(n) for n in names], links)
    fast = {"d0": [1.0, 1.0, 90.0, 90.0], "d1": [90.0, 90.0, 1.0, 90.0], "d2": [90.0, 90.0, 90.0, 1.0]}
    plan = plan_sequential(fast, [4.0 * d.output_numel for d in arch_descriptors(spec)], 4.0 * 3 * 16 * 16, topo)
    export_bundle(split_archnet(model, plan.boundaries()), plan, torch.randn(2, 3, 16, 16), out)
    return out


def _topology(run_dir: Path | None) -> tuple[dict, frozenset[str]]:
    if run_dir is None or not (run_dir / "experiment.yaml").is_file():
        return {}, frozenset({"d1"})
    from jmsnas.config import load_experiment
    from jmsnas.runtime.links import LinkSpec

    topo = load_experiment(run_dir / "experiment.yaml", check_data=False).topology
    links = {(ln.src, ln.dst): LinkSpec(ln.bandwidth_mbps, ln.rtt_ms) for ln in topo.links}
    return links, frozenset(d.name for d in topo.devices if d.analytic is not None)


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    e = r["end_to_end"]
    return {"predicted_mean_ms": e["predicted_mean_ms"], "measured_mean_ms": e["measured_mean_ms"],
            "measured_p50_ms": e["measured_p50_ms"], "measured_p95_ms": e["measured_p95_ms"],
            "measured_p99_ms": e["measured_p99_ms"], "throughput_sps": e["throughput_sps"],
            "measured_over_predicted": e["measured_over_predicted"], "plan_worst_ms": e["plan_worst_ms"],
            "predicted_with_overhead_mean_ms": e.get("predicted_with_overhead_mean_ms"),
            "measured_over_predicted_with_overhead": e.get("measured_over_predicted_with_overhead"),
            "per_device": [{k: d[k] for k in ("device", "label", "predicted_ms", "measured_mean_ms",
                                              "measured_over_predicted", "breakdown_ms")} for d in r["devices"]],
            "per_link": [{k: ln[k] for k in ("src", "dst", "source", "bandwidth_mbps", "rtt_ms", "predicted_ms",
                                             "measured_wire_mean_ms", "measured_over_predicted")} for ln in r["links"]],
            "answered_at": r["answered_at"]}


def bench_choice(bundle: Path, run_dir: Path | None, samples: int, warmup: int, load_factor: float,
                 logs: Path, overhead: Any = None, repeats: int = 1) -> dict[str, Any]:
    """The three runs of one bundle."""
    from jmsnas.runtime.bundle import read_manifest
    from jmsnas.runtime.links import plan_links
    from jmsnas.runtime.local import Kill, LocalRun, serve_local
    from jmsnas.runtime.plan_times import predicted_times

    spec = read_manifest(bundle)
    topo, emulated = _topology(run_dir)
    links = tuple(plan_links(spec.plan, topo))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(spec.parts[0].inputs[0].example_shape[1:]).astype(np.float32)
              for _ in range(samples)]
    base = {"links": links, "emulated": emulated, "warmup": warmup, "log_dir": logs}
    runs = sorted((serve_local(bundle, inputs, LocalRun(overhead=overhead, **base)) for _ in range(max(1, repeats))),
                  key=lambda r: r["end_to_end"]["measured_mean_ms"])
    closed = runs[len(runs) // 2]  # the median run
    pred = predicted_times(spec)
    bottleneck = max([*pred.device_ms, *(ln.latency_ms(c.payload_bytes) for ln, c in zip(links, spec.plan.cuts,
                                                                                         strict=True))])
    rate = load_factor * 1e3 / max(bottleneck, 0.1)
    loaded = serve_local(bundle, inputs, LocalRun(rate=rate, **base))
    middle = spec.devices[len(spec.devices) // 2]
    kill = Kill(middle, samples // 3, restart_after_s=1.0)
    fault = serve_local(bundle, inputs, LocalRun(kill=(kill,), timeout_ms=300, attempts=2, **base))
    return {"bundle": str(bundle.relative_to(REPO) if bundle.is_relative_to(REPO) else bundle),
            "devices": spec.devices, "emulated": sorted(emulated), "samples": samples, "warmup": warmup,
            "closed_loop": _summary(closed),
            "closed_loop_repeats": [{k: r["end_to_end"][k] for k in ("measured_mean_ms", "measured_over_predicted",
                                                                     "measured_over_predicted_with_overhead")}
                                    for r in runs],
            "load": {"rate_sps": rate, **_summary(loaded)},
            "fault": {"killed": middle, "before_sample": kill.before_sample, "restart_after_s": kill.restart_after_s,
                      **{k: fault[k] for k in ("samples", "answered", "lost", "fell_back", "failed", "refed",
                                               "duplicates", "answered_at", "restarts")}}}


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _hop_ratio(predicted: float | None, ratio: float | None) -> str:
    """A hop priced at (about) nothing has no meaningful ratio: its measured time is all runtime cost."""
    return "- (priced ~0)" if predicted is not None and predicted < 0.01 else _fmt(ratio)


def _spread(c: dict[str, Any], key: str) -> str:
    vals = [r[key] for r in c.get("closed_loop_repeats", []) if r.get(key) is not None]
    return f"{min(vals):.3f}-{max(vals):.3f}" if vals else "-"


def render(results: dict[str, Any]) -> str:
    oh, env = results.get("overhead"), results.get("environment", {})
    lines = ["# Runtime: served bundles measured against their plans (issue 15)", "",
             f"Command: `{results['command']}`. One process per device on this machine ({env.get('processor', '?')}, "
             f"{env.get('cpus', '?')} CPUs), links emulated from the topology (token bucket), analytic devices "
             "**emulated** (run here, then wait out their prediction).", ""]
    if oh is not None:
        lines += [f"The runtime's own cost on this machine ({oh.get('source', 'measured')}: pass-through chains of "
                  "2-4 devices, not these bundles): "
                  f"**{oh['base_ms']:.3f} ms per sample + {oh['device_ms']:.3f} ms per device + "
                  f"{oh['timed_link_ms']:.3f} ms per timed link** (fit RMS {oh['residual_ms']:.3f} ms). "
                  "'+ runtime' adds it to each sample's plan prediction.", ""]
    lines += [f"Target: measured/predicted end to end within ±10 %. Plan alone: "
              f"{results['targets']['plan_within_10pct']}; plan + runtime's own cost: "
              f"{results['targets']['with_overhead_within_10pct']}.", "",
              "| choice | plan mean ms | + runtime ms | measured mean ms | p50 | p95 | p99 | measured/plan | "
              f"measured/(plan + runtime) | spread over {results.get('repeats', 1)} runs | load rate /s | "
              "load throughput /s | load p99 ms | fault: answered | lost | fell back | failed |",
              "| --- | " + " | ".join(["---"] * 16) + " |"]
    for c in results["choices"]:
        cl, ld, ft = c["closed_loop"], c["load"], c["fault"]
        lines.append(f"| {c['bundle']} | {_fmt(cl['predicted_mean_ms'])} | "
                     f"{_fmt(cl.get('predicted_with_overhead_mean_ms'))} | {_fmt(cl['measured_mean_ms'])} | "
                     f"{_fmt(cl['measured_p50_ms'])} | {_fmt(cl['measured_p95_ms'])} | {_fmt(cl['measured_p99_ms'])} | "
                     f"{_fmt(cl['measured_over_predicted'])} | "
                     f"{_fmt(cl.get('measured_over_predicted_with_overhead'))} | "
                     f"{_spread(c, 'measured_over_predicted_with_overhead')} | {ld['rate_sps']:.1f} | "
                     f"{ld['throughput_sps']:.1f} | {_fmt(ld['measured_p99_ms'])} | {ft['answered']}/{ft['samples']} | "
                     f"{ft['lost']} | {ft['fell_back']} | {ft['failed']} |")
    lines += ["", "Per hop (closed loop, the median run): predicted (the plan's) vs measured ms.", "",
              "| choice | hop | kind | predicted | measured | measured/predicted |",
              "| --- | --- | --- | --- | --- | --- |"]
    for c in results["choices"]:
        for d in c["closed_loop"]["per_device"]:
            lines.append(f"| {c['bundle']} | {d['device']} | {d['label']} | {_fmt(d['predicted_ms'])} | "
                         f"{_fmt(d['measured_mean_ms'])} | "
                         f"{_hop_ratio(d['predicted_ms'], d['measured_over_predicted'])} |")
        for ln in c["closed_loop"]["per_link"]:
            lines.append(f"| {c['bundle']} | {ln['src']} -> {ln['dst']} | link ({ln['source']}, "
                         f"{ln['bandwidth_mbps']:g} Mbit/s, {ln['rtt_ms']:g} ms) | {_fmt(ln['predicted_ms'])} | "
                         f"{_fmt(ln['measured_wire_mean_ms'])} | "
                         f"{_hop_ratio(ln['predicted_ms'], ln['measured_over_predicted'])} |")
    if "contention" in results:
        from jmsnas.latency.watch import contention_markdown

        lines += ["", contention_markdown(results["contention"])]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hop_ax, e2e_ax) = plt.subplots(1, 2, figsize=(10, 4.8))
    top, e2e_top = 1.0, 1.0
    for n, c in enumerate(results["choices"]):
        cl, colour, name = c["closed_loop"], f"C{n}", Path(c["bundle"]).parent.name or c["bundle"]
        hops = [(d["predicted_ms"], d["measured_mean_ms"]) for d in cl["per_device"]]
        hops += [(ln["predicted_ms"], ln["measured_wire_mean_ms"]) for ln in cl["per_link"]]
        pts = [(p, m) for p, m in hops if p is not None and m is not None]
        top = max([top, *(v for pt in pts for v in pt)])
        hop_ax.scatter([p for p, _ in pts], [m for _, m in pts], color=colour, label=name)
        measured = cl["measured_mean_ms"]
        e2e_ax.scatter([cl["predicted_mean_ms"]], [measured], color=colour, marker="o", label=f"{name}: plan")
        if cl.get("predicted_with_overhead_mean_ms") is not None:
            e2e_ax.scatter([cl["predicted_with_overhead_mean_ms"]], [measured], color=colour, marker="^",
                           label=f"{name}: plan + runtime")
        e2e_top = max(e2e_top, measured, cl.get("predicted_with_overhead_mean_ms") or 0.0)
    hop_ax.plot([0, top * 1.05], [0, top * 1.05], "k--", lw=0.8, label="measured = predicted")
    hop_ax.set(xlabel="predicted ms per hop (the plan's)", ylabel="measured ms per hop (mean)",
               title="Per hop: devices and links, closed loop")
    edge = e2e_top * 1.1
    e2e_ax.plot([0, edge], [0, edge], "k--", lw=0.8, label="measured = predicted")
    e2e_ax.fill_between([0, edge], [0, 0.9 * edge], [0, 1.1 * edge], color="0.88", zorder=0, label="±10 %")
    e2e_ax.set(xlabel="predicted mean ms", ylabel="measured mean ms", xlim=(0, edge), ylim=(0, edge),
               title="End to end: plan vs plan + runtime's own cost")
    hop_ax.legend(fontsize=7)
    e2e_ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=REPO / "runs" / "quickstart", help="a quickstart run directory")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--load-factor", type=float, default=0.8, help="load rate / the predicted bottleneck rate")
    p.add_argument("--repeats", type=int, default=3, help="closed-loop runs per bundle (the median is reported)")
    p.add_argument("--overhead", type=Path, default=None,
                   help="a runtime_overhead.json to use (default: measure it first, here)")
    p.add_argument("--smoke", action="store_true", help="a tiny bundle, a few samples, nothing written")
    args = p.parse_args(argv)
    from jmsnas.latency.watch import ContentionWatch
    from jmsnas.machine import processor_name
    from jmsnas.runtime.overhead import RuntimeOverhead, measure_overhead

    watch = ContentionWatch()  # the device processes are this tree's: anything else running voids the figures
    if args.overhead is not None:
        overhead, source = RuntimeOverhead.load(args.overhead), f"from {args.overhead}"
    else:
        n = 12 if args.smoke else 60
        overhead = measure_overhead(n, 3 if args.smoke else 10, progress=print, repeats=1 if args.smoke else 3)
        source = "measured in this run"
        watch.checkpoint("runtime overhead calibration")
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            bundles, run_dir, samples, warmup = [_tiny_bundle(Path(tmp) / "bundle")], None, 9, 2
        else:
            bundles = sorted(args.run.glob("best/*/bundle"))
            if not bundles:
                print(f"error: no bundles under {args.run}/best/*/bundle: run `make quickstart` first", file=sys.stderr)
                return 2
            run_dir, samples, warmup = args.run, args.samples, args.warmup
        repeats = 1 if args.smoke else args.repeats
        choices = []
        for b in bundles:
            choices.append(bench_choice(b, run_dir, samples, warmup, args.load_factor, Path(tmp) / "logs", overhead,
                                        repeats))
            watch.checkpoint(str(b))

    def within(key: str) -> bool:
        return all(c["closed_loop"][key] is not None and abs(c["closed_loop"][key] - 1.0) <= 0.10 for c in choices)

    command = "python benchmarks/runtime.py" + (" --smoke" if args.smoke else f" --run {args.run} --samples "
                                                f"{samples} --repeats {repeats}")
    results = {"command": command + (f" --overhead {args.overhead}" if args.overhead else ""),
               "environment": {"processor": processor_name(), "cpus": os.cpu_count()}, "repeats": repeats,
               "overhead": {**overhead.to_dict(), "source": source},
               "targets": {"plan_within_10pct": within("measured_over_predicted"),
                           "with_overhead_within_10pct": within("measured_over_predicted_with_overhead")},
               "choices": choices, "contention": watch.summary()}
    text = render(results)
    if args.smoke:
        print(text)
        assert all(c["fault"]["lost"] == 0 for c in choices), "the fault run lost samples"
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtime.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "runtime.md").write_text(text)
    plot(results, RESULTS / "runtime.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
