"""How well do jmsnas's latency predictions match measurements? (issue: per-device latency models)

(a) Held-out op rows: fit the regressor on a random 80 % of a profile's rows, predict the other
    20 %: share within ±10 % of measured.
(b) Whole networks: sample random architectures from each search space the profile covers,
    predict their latency as the sum of their ops (measured rows where the op and shape were
    profiled, the regressor elsewhere; with the profile's whole-network calibration, fitted on
    other random networks) and measure them end to end on this machine under the profile's
    thread count, timed as the profile's ops are (`jmsnas.latency.timing`: round-robin blocks,
    median of block minima), because these machines are noisy. Reported: median and
    95th-percentile absolute relative error, share within ±10 % (nn-Meter's measure); also
    without the calibration, to show what it corrects.

Usage (the profiles must exist, measured on this machine)::

    python benchmarks/latency_fidelity.py --device-name cpu-1t --device-name cpu-2t

writes ``benchmarks/results/latency_fidelity.{md,json}``; the first device named is the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import numpy as np  # noqa: E402

from jmsnas.config import DEFAULT_PROFILES_DIR  # noqa: E402
from jmsnas.latency.model import (
    ProfiledLatencyModel,  # noqa: E402
    row_descriptor,  # noqa: E402
)
from jmsnas.latency.ops import build_module, example_input  # noqa: E402
from jmsnas.latency.profiler import measurement_conditions, read_rows, time_network_and_parts  # noqa: E402
from jmsnas.latency.timing import time_interleaved  # noqa: E402
from jmsnas.space.arch import ArchSpec  # noqa: E402
from jmsnas.space.macs import arch_descriptors  # noqa: E402
from jmsnas.space.spec import load_search_space  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    rel = np.abs(pred - meas) / meas
    return {"within_10pct": float(np.mean(rel <= 0.10)), "median_abs_rel_err": float(np.median(rel)),
            "p95_abs_rel_err": float(np.percentile(rel, 95)),
            "mean_signed_rel_err": float(np.mean((pred - meas) / meas))}


def held_out_ops(rows: list[dict[str, str]], name: str, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    test = rng.random(len(rows)) < 0.2
    model = ProfiledLatencyModel(name, [r for r, t in zip(rows, test, strict=True) if not t])
    test_rows = [r for r, t in zip(rows, test, strict=True) if t]
    pred = np.array([model.predict([row_descriptor(r)], int(r["batch_size"]), use_measured=False,
                                   calibrated=False)[0] for r in test_rows])
    meas = np.array([float(r["latency_ms"]) for r in test_rows])
    return {"n_ops": len(test_rows), **_errors(pred, meas)}


def sample_specs(space, n: int, seed: int) -> list[ArchSpec]:
    rng = random.Random(seed)
    return [ArchSpec.from_choices(space, [rng.choice(s.candidates) for s in space.layers()], 10) for _ in range(n)]


def measure_nets(specs: list[ArchSpec], meta: dict, chunk: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Whole-network times, and the sums of their layers' times measured together with them."""
    pairs = [p for i in range(0, len(specs), chunk) for p in time_network_and_parts(specs[i:i + chunk], meta)]
    return np.array([w for w, _ in pairs]), np.array([p for _, p in pairs])


def drift(rows: list[dict[str, str]], meta: dict, n: int, seed: int) -> dict[str, float]:
    """Re-time a sample of the profile's op rows now: how far has the machine moved since profiling?"""
    sample = [rows[i] for i in np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)]
    descs = [row_descriptor(r) for r in sample]
    now = time_interleaved([build_module(d) for d in descs], [example_input(d) for d in descs],
                           blocks=meta["blocks"], block_size=meta["block_size"], warmup=meta["warmup"],
                           threads=meta["threads"])
    ratio = np.array([t for t, _ in now]) / np.array([float(r["latency_ms"]) for r in sample])
    return {"n_ops": len(sample), "median_ratio_now_vs_profile": float(np.median(ratio)),
            "within_10pct": float(np.mean(np.abs(ratio - 1) <= 0.10))}


def bench_device(name: str, n_nets: int, seed: int) -> dict:
    csv_path = DEFAULT_PROFILES_DIR / f"{name}.csv"
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    rows = read_rows(csv_path)
    model = ProfiledLatencyModel.from_csv(csv_path)
    out: dict = {"device": name, "threads": meta["threads"], "profile_rows": len(rows),
                 "ops": held_out_ops(rows, name, seed), "spaces": {}}
    all_pred, all_meas, all_reg = [], [], []
    for space_name in meta["search_spaces"]:
        space = load_search_space(REPO / "search_spaces" / f"{space_name}.yaml")
        specs = sample_specs(space, n_nets, seed)
        pred = np.array([model.predict(arch_descriptors(s)).sum() for s in specs])
        reg = np.array([model.predict(arch_descriptors(s), calibrated=False).sum() for s in specs])
        meas, parts = measure_nets(specs, meta)
        again, _ = measure_nets(specs, meta)  # the same networks re-timed: the noise floor of the measure itself
        n_layers = np.array([len(s.blocks) + 2 for s in specs])
        out["spaces"][space_name] = {"n_nets": len(specs), **_errors(pred, meas),
                                     "uncalibrated": _errors(reg, meas),
                                     "additivity_same_time": _errors(model.scale * parts + model.overhead_ms * n_layers,
                                                                     meas),
                                     "additivity_same_time_uncalibrated": _errors(parts, meas),
                                     "retest": _errors(again, meas),
                                     "measured_ms_median": float(np.median(meas))}
        all_pred.append(pred)
        all_meas.append(meas)
        all_reg.append(reg)
    pred, meas, reg = (np.concatenate(a) for a in (all_pred, all_meas, all_reg))
    nets = _errors(pred, meas)
    out.update({"ops_within_10pct": out["ops"]["within_10pct"], "nets_within_10pct": nets["within_10pct"],
                "nets_median_abs_rel_err": nets["median_abs_rel_err"], "nets_p95_abs_rel_err": nets["p95_abs_rel_err"],
                "n_nets": len(meas), "nets_uncalibrated": _errors(reg, meas),
                "calibration": {"scale": model.scale, "overhead_ms_per_op": model.overhead_ms},
                "drift": drift(rows, meta, 64, seed)})
    return out


def to_markdown(results: list[dict], env: dict, command: str) -> str:
    lines = ["# Latency fidelity", "", f"Command: `{command}`", "",
             f"Hardware: {env['processor']}, {env['cpu_count']} cores; torch {env['torch']}; {env['date']}.", "",
             "| device | ops within ±10 % (held-out rows) | nets within ±10 % | median abs. rel. err. | "
             "p95 abs. rel. err. | nets |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['device']} | {r['ops_within_10pct']:.1%} ({r['ops']['n_ops']} rows) | "
                     f"{r['nets_within_10pct']:.1%} | {r['nets_median_abs_rel_err']:.1%} | "
                     f"{r['nets_p95_abs_rel_err']:.1%} | {r['n_nets']} |")
    lines += ["", "Per search space (prediction = sum of calibrated per-op predictions; *uncalibrated* is the plain "
              "sum of per-op times):", "", "| device | space | nets within ±10 % | median err. | p95 err. | "
              "mean signed err. | uncalibrated: within ±10 % / mean signed err. | median measured ms |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for space, s in r["spaces"].items():
            lines.append(f"| {r['device']} | {space} | {s['within_10pct']:.1%} | {s['median_abs_rel_err']:.1%} | "
                         f"{s['p95_abs_rel_err']:.1%} | {s['mean_signed_rel_err']:+.1%} | "
                         f"{s['uncalibrated']['within_10pct']:.1%} / {s['uncalibrated']['mean_signed_rel_err']:+.1%} | "
                         f"{s['measured_ms_median']:.3f} |")
    lines += ["", "Additivity measured at one time (each network timed together with its own layers, so drift "
              "cancels): share of networks whose calibrated sum of layer times is within ±10 % of the whole, and "
              "the same for the plain sum:", "", "| device | space | calibrated sum within ±10 % | plain sum within "
              "±10 % / mean signed err. |", "| --- | --- | --- | --- |"]
    for r in results:
        for space, s in r["spaces"].items():
            a, u = s["additivity_same_time"], s["additivity_same_time_uncalibrated"]
            lines.append(f"| {r['device']} | {space} | {a['within_10pct']:.1%} | {u['within_10pct']:.1%} / "
                         f"{u['mean_signed_rel_err']:+.1%} |")
    lines += ["", "Noise floor: the same networks timed a second time in this run, share within ±10 % of the first: "
              + "; ".join(f"{r['device']} {sp}: {s['retest']['within_10pct']:.0%}" for r in results
                          for sp, s in r["spaces"].items())]
    lines += ["", "Drift: a sample of the profile's op rows re-timed during this run (ratio now / profile): "
              + "; ".join(f"{r['device']}: median ratio {r['drift']['median_ratio_now_vs_profile']:.2f}, "
                          f"{r['drift']['within_10pct']:.0%} within ±10 %" for r in results)]
    lines += ["", "Calibration (network ≈ scale · Σ op + overhead · #ops, fitted on the profile's random networks): "
              + "; ".join(f"{r['device']}: scale {r['calibration']['scale']:.3f}, "
                          f"{r['calibration']['overhead_ms_per_op'] * 1e3:+.1f} µs per op" for r in results)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device-name", action="append", required=True)
    parser.add_argument("--n-nets", type=int, default=50, help="random networks per search space")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out split and the sampled nets")
    parser.add_argument("--smoke", action="store_true", help="3 nets per space: check the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.n_nets = 3
    start = time.time()
    results = [bench_device(n, args.n_nets, args.seed) for n in args.device_name]
    env = {**measurement_conditions(1, "cpu"), "date": time.strftime("%Y-%m-%d")}
    command = "python benchmarks/latency_fidelity.py " + " ".join(sys.argv[1:])
    head = results[0]
    payload = {**{k: head[k] for k in ("device", "ops_within_10pct", "nets_within_10pct", "nets_median_abs_rel_err",
                                       "nets_p95_abs_rel_err", "n_nets")},
               "by_device": results, "environment": env, "command": command, "wall_s": time.time() - start,
               "smoke": args.smoke}
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latency_fidelity.json").write_text(json.dumps(payload, indent=2) + "\n")
        (RESULTS / "latency_fidelity.md").write_text(to_markdown(results, env, command))
    print(to_markdown(results, env, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
