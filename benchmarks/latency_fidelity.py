"""How well do jmsnas's latency predictions match measurements? (issue: per-device latency models)

(a) Held-out op rows: fit the regressor on a random 80 % of a profile's rows, predict the other
    20 %: share within ±10 % of measured.
(b) Whole networks: sample random architectures from each search space the profile covers,
    predict their latency as the sum of their ops (measured rows where the op and shape were
    profiled, the regressor elsewhere; with the profile's whole-network calibration, fitted on
    other random networks) and measure them end to end on this machine under the profile's
    thread count, timed as the profile's ops are (`jmsnas.latency.timing`: round-robin blocks,
    median of block minima), because these machines are noisy. Reported: median and
    95th-percentile absolute relative error, shares within ±10 % (nn-Meter's measure) and ±5 %,
    Spearman's rank correlation; also without the calibration, to show what it corrects.
(c) The noise floor first: every network is timed twice; the share of networks whose two timings
    agree within ±10 % is ``retest.within_10pct``. A run whose noise floor is below 95 % is marked
    ``valid: false``: the machine could not support a fidelity figure then (something else ran).
    Every timing runs under the contention guard (`jmsnas.latency.guard`).
(d) Spread networks (``spread`` per space): as many again, drawn from each space's smallest to its
    largest (`jmsnas.space.sampling.spread_specs`), each timed twice too. Uniform choices average out to
    networks of nearly one size, so their Spearman ρ is capped by the timing noise alone.

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
from jmsnas.latency.guard import ContentionError, ContentionGuard, machine_load  # noqa: E402
from jmsnas.latency.model import (
    ProfiledLatencyModel,  # noqa: E402
    row_descriptor,  # noqa: E402
)
from jmsnas.latency.profiler import (  # noqa: E402
    measurement_conditions,
    read_rows,
    time_network_and_parts,
)
from jmsnas.latency.verify import verify_profile  # noqa: E402
from jmsnas.space.arch import ArchSpec  # noqa: E402
from jmsnas.space.macs import arch_descriptors  # noqa: E402
from jmsnas.space.sampling import spread_specs  # noqa: E402
from jmsnas.space.spec import load_search_space  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


#: A run is valid when the same networks timed twice agree within ±10 % for at least this share.
NOISE_FLOOR_MIN = 0.95


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    rel = np.abs(pred - meas) / meas
    rho = float(spearmanr(pred, meas).statistic) if len(meas) > 2 else float("nan")
    return {"within_10pct": float(np.mean(rel <= 0.10)), "within_5pct": float(np.mean(rel <= 0.05)),
            "spearman": rho, "median_abs_rel_err": float(np.median(rel)),
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


def measure_nets(specs: list[ArchSpec], meta: dict, guard: ContentionGuard) -> tuple[np.ndarray, np.ndarray]:
    """Whole-network times, and the sums of their ops (built alone) timed together with them (guarded), in the
    profile's rounds (all chunks once, then all again; each network keeps its fastest round)."""
    pairs = time_network_and_parts(specs, meta, guard)
    return np.array([w for w, _ in pairs]), np.array([p for _, p in pairs])


def drift(csv_path: Path, n: int, seed: int) -> dict[str, float]:
    """Re-time a sample of the profile's op rows now (``python -m jmsnas.profile --verify``'s measure)."""
    report = verify_profile(csv_path, n_ops=n, seed=seed, progress=False)
    return {"n_ops": report.n_ops, "median_ratio_now_vs_profile": report.median_ratio,
            "within_10pct": report.within_10pct, "holds": report.holds,
            "speed_index_profile_ms": report.speed_index_profile_ms, "speed_index_now_ms": report.speed_index_now_ms}


def bench_device(name: str, n_nets: int, seed: int, profiles_dir: Path = DEFAULT_PROFILES_DIR,
                 rounds: int | None = None) -> dict:
    csv_path = profiles_dir / f"{name}.csv"
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    meta["rounds"] = int(meta.get("rounds", 1)) if rounds is None else rounds  # how the networks here are timed
    rows = read_rows(csv_path)
    model = ProfiledLatencyModel.from_csv(csv_path)
    drift_start = drift(csv_path, 64, seed)  # and again at the end: did the machine change speed during the run?
    guard = ContentionGuard()
    out: dict = {"device": name, "threads": meta["threads"], "rounds": meta["rounds"], "profile_rows": len(rows),
                 "profile": str(csv_path),
                 "profile_date": meta.get("date"),
                 "ops": held_out_ops(rows, name, seed), "spaces": {}}
    all_pred, all_meas, all_reg = [], [], []
    for space_name in meta["search_spaces"]:
        space = load_search_space(REPO / "search_spaces" / f"{space_name}.yaml")
        specs = sample_specs(space, n_nets, seed)
        pred = np.array([model.predict(arch_descriptors(s)).sum() for s in specs])
        reg = np.array([model.predict(arch_descriptors(s), calibrated=False).sum() for s in specs])
        cal = np.array([model.predict(arch_descriptors(s), calibrated=True).sum() for s in specs])
        meas, parts = measure_nets(specs, meta, guard)
        again, _ = measure_nets(specs, meta, guard)  # the same networks re-timed: the noise floor of the measure
        n_layers = np.array([len(s.blocks) + 2 for s in specs])
        spread = spread_specs(space, n_nets, seed, 10)  # from the smallest to the largest: the ranking a search needs
        spread_pred = np.array([model.predict(arch_descriptors(s)).sum() for s in spread])
        spread_meas, _ = measure_nets(spread, meta, guard)
        spread_again, _ = measure_nets(spread, meta, guard)
        scale, overhead = model.calibration_for(space.dims)
        out["spaces"][space_name] = {"n_nets": len(specs), **_errors(pred, meas),
                                     "uncalibrated": _errors(reg, meas), "calibrated": _errors(cal, meas),
                                     "additivity_same_time": _errors(scale * parts + overhead * n_layers, meas),
                                     "additivity_same_time_uncalibrated": _errors(parts, meas),
                                     "retest": _errors(again, meas),
                                     "spread": {**_errors(spread_pred, spread_meas),
                                                "retest": _errors(spread_again, spread_meas),
                                                "measured_ms_range": [float(spread_meas.min()),
                                                                      float(spread_meas.max())]},
                                     "measured_ms_range": [float(meas.min()), float(meas.max())],
                                     "measured_ms_median": float(np.median(meas))}
        all_pred.append(pred)
        all_meas.append(meas)
        all_reg.append(reg)
    pred, meas, reg = (np.concatenate(a) for a in (all_pred, all_meas, all_reg))
    nets = _errors(pred, meas)
    retest = min(sp["retest"]["within_10pct"] for sp in out["spaces"].values())
    out.update({**{k: nets[k] for k in ("within_10pct", "within_5pct", "spearman")},
                "retest": {"within_10pct": retest}, "valid": retest >= NOISE_FLOOR_MIN,
                "guard": guard.stats.to_dict(), "speed_index_ms": guard.speed_index.get("networks"),
                "ops_within_10pct": out["ops"]["within_10pct"], "nets_within_10pct": nets["within_10pct"],
                "nets_median_abs_rel_err": nets["median_abs_rel_err"], "nets_p95_abs_rel_err": nets["p95_abs_rel_err"],
                "n_nets": len(meas), "nets_uncalibrated": _errors(reg, meas),
                "calibration": {"scale": model.scale, "overhead_ms_per_op": model.overhead_ms,
                                "by_dims": {str(d): {"scale": sc, "overhead_ms_per_op": ov}
                                            for d, (sc, ov) in model.calibration.items()}},
                "drift_start": drift_start, "drift": drift(csv_path, 64, seed)})
    return out


def bench_device_or_refusal(name: str, n_nets: int, seed: int, profiles_dir: Path = DEFAULT_PROFILES_DIR,
                            rounds: int | None = None) -> dict:
    """`bench_device`, or, when the contention guard found no quiet window, an invalid entry saying so."""
    try:
        return bench_device(name, n_nets, seed, profiles_dir, rounds)
    except ContentionError as exc:
        # None, not NaN: the JSON stays valid for strict parsers
        return {"device": name, "valid": False, "refused": exc.message, "retest": {"within_10pct": None},
                **dict.fromkeys(("within_10pct", "within_5pct", "spearman", "ops_within_10pct", "nets_within_10pct",
                                 "nets_median_abs_rel_err", "nets_p95_abs_rel_err"), None), "n_nets": 0, "spaces": {}}


def to_markdown(results: list[dict], env: dict, command: str) -> str:
    valid = all(r["valid"] for r in results)
    floor = " / ".join(f"{r['device']} {r['retest']['within_10pct']:.0%}" if "refused" not in r
                       else f"{r['device']} refused" for r in results)
    lines = ["# Latency fidelity", "", f"Command: `{command}`", "",
             f"Hardware: {env['processor']}, {env['cpu_count']} cores; torch {env['torch']}; {env['date']}.", "",
             f"Run **{'valid' if valid else 'INVALID'}**: the noise floor (the same networks timed twice, share "
             f"within ±10 % of each other) is {floor} "
             f"(needs ≥ {NOISE_FLOOR_MIN:.0%}).", "",
             "Profiles: " + "; ".join(f"{r['device']}: `{r['profile']}`, measured {r['profile_date']}; networks "
                                      f"timed in {r['rounds']} rounds, the fastest kept"
                                      for r in results if "refused" not in r) + ".", "",
             "| device | ops within ±10 % (held-out rows) | nets within ±10 % | within ±5 % | Spearman ρ | "
             "median abs. rel. err. | p95 abs. rel. err. | nets |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "refused" in r:
            lines.append(f"| {r['device']} | refused: {r['refused']} | | | | | | |")
            continue
        lines.append(f"| {r['device']} | {r['ops_within_10pct']:.1%} ({r['ops']['n_ops']} rows) | "
                     f"{r['nets_within_10pct']:.1%} | {r['within_5pct']:.1%} | {r['spearman']:.3f} | "
                     f"{r['nets_median_abs_rel_err']:.1%} | {r['nets_p95_abs_rel_err']:.1%} | {r['n_nets']} |")
    lines += ["", "Per search space (prediction = what the latency model predicts by default: the sum of per-op "
              "predictions with the profile's whole-network calibration for the space's dimensionality applied, see "
              "`jmsnas.latency.model`; *plain sum*: without it):",
              "", "| device | space | nets within ±10 % | within ±5 % | Spearman ρ | "
              "median err. | p95 err. | mean signed err. | plain sum: within ±10 % / mean signed err. | "
              "median measured ms |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for space, s in r["spaces"].items():
            lines.append(f"| {r['device']} | {space} | {s['within_10pct']:.1%} | {s['within_5pct']:.1%} | "
                         f"{s['spearman']:.3f} | {s['median_abs_rel_err']:.1%} | "
                         f"{s['p95_abs_rel_err']:.1%} | {s['mean_signed_rel_err']:+.1%} | "
                         f"{s['uncalibrated']['within_10pct']:.1%} / {s['uncalibrated']['mean_signed_rel_err']:+.1%} | "
                         f"{s['measured_ms_median']:.3f} |")
    lines += ["", "Additivity measured at one time (each network timed together with its ops built alone, so drift "
              "cancels): share of networks whose calibrated sum of those op times is within ±10 % of the whole, and "
              "the same for the plain sum:", "", "| device | space | calibrated sum within ±10 % | plain sum within "
              "±10 % / mean signed err. |", "| --- | --- | --- | --- |"]
    for r in results:
        for space, s in r["spaces"].items():
            a, u = s["additivity_same_time"], s["additivity_same_time_uncalibrated"]
            lines.append(f"| {r['device']} | {space} | {a['within_10pct']:.1%} | {u['within_10pct']:.1%} / "
                         f"{u['mean_signed_rel_err']:+.1%} |")
    lines += ["", "Noise floor: the same networks timed a second time in this run against the first, share within "
              "±10 % / within ±5 % / Spearman ρ (what the machine itself supports for each target): "
              + "; ".join(f"{r['device']} {sp}: {s['retest']['within_10pct']:.0%} / {s['retest']['within_5pct']:.0%} / "
                          f"{s['retest']['spearman']:.3f}" for r in results for sp, s in r["spaces"].items())]
    lines += ["", "Spread networks (`jmsnas.space.sampling.spread_specs`: from each space's smallest networks to "
              "its largest, the range a search picks from; uniform choices average out to nearly one size): "
              "within ±10 % / within ±5 % / Spearman ρ against the prediction, then the same networks re-timed "
              "(their noise floor), and the measured range:", "",
              "| device | space | nets within ±10 % | within ±5 % | Spearman ρ | noise floor ±10 % / ±5 % / ρ | "
              "measured ms (spread) | measured ms (uniform) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for space, s in r["spaces"].items():
            sp, rt = s["spread"], s["spread"]["retest"]
            lines.append(f"| {r['device']} | {space} | {sp['within_10pct']:.1%} | {sp['within_5pct']:.1%} | "
                         f"{sp['spearman']:.3f} | {rt['within_10pct']:.0%} / {rt['within_5pct']:.0%} / "
                         f"{rt['spearman']:.3f} | {sp['measured_ms_range'][0]:.3f}-{sp['measured_ms_range'][1]:.3f} | "
                         f"{s['measured_ms_range'][0]:.3f}-{s['measured_ms_range'][1]:.3f} |")
    results = [r for r in results if "refused" not in r]
    lines += ["", "Contention guard (reference workload timed with every block; see `jmsnas.latency.guard`): "
              + "; ".join(f"{r['device']}: speed index (networks) {r['speed_index_ms']:.4f} ms, "
                          f"{r['guard']['checks']} checks, "
                          f"{r['guard']['remeasured_blocks']} blocks re-measured, worst reference ratio "
                          f"{r['guard']['worst_reference_ratio']:.3f}" for r in results)]
    lines += ["", "Drift: a sample of the profile's op rows re-timed at the start and at the end of this run (median "
              "ratio now / profile, share within ±10 %): "
              + "; ".join(f"{r['device']}: start {r['drift_start']['median_ratio_now_vs_profile']:.2f} "
                          f"({r['drift_start']['within_10pct']:.0%}), "
                          f"end {r['drift']['median_ratio_now_vs_profile']:.2f} ({r['drift']['within_10pct']:.0%})"
                          for r in results)]
    lines += ["", "Calibration (network ≈ scale · Σ op + overhead · #ops, fitted per dimensionality on the profile's "
              "random networks): "
              + "; ".join(f"{r['device']}: " + ", ".join(
                  f"{d}-D scale {c['scale']:.3f}, {c['overhead_ms_per_op'] * 1e3:+.1f} µs per op"
                  for d, c in r["calibration"]["by_dims"].items()) for r in results)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device-name", action="append", required=True)
    parser.add_argument("--n-nets", type=int, default=50, help="random networks per search space")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out split and the sampled nets")
    parser.add_argument("--smoke", action="store_true", help="3 nets per space: check the script runs")
    parser.add_argument("--profiles-dir", type=Path, default=DEFAULT_PROFILES_DIR,
                        help="where NAME.csv is read (default: the shipped latency_profiles/)")
    parser.add_argument("--rounds", type=int,
                        help="rounds each network is timed in, the fastest kept (default: the profile's own)")
    parser.add_argument("--out", default="latency_fidelity",
                        help="results name: benchmarks/results/OUT.{json,md} (default latency_fidelity)")
    args = parser.parse_args()
    if args.smoke:
        args.n_nets = 3
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    start = time.time()
    from jmsnas.latency.watch import ContentionWatch

    watch = ContentionWatch()  # beside the per-block guard: did anything else run during the whole benchmark?
    load = machine_load()
    if load is not None and load.warning():
        print(load.warning(), file=sys.stderr)
    results = []
    for name in args.device_name:
        results.append(bench_device_or_refusal(name, args.n_nets, args.seed, args.profiles_dir, args.rounds))
        watch.checkpoint(name)
    env = {**measurement_conditions(1, "cpu"), "date": time.strftime("%Y-%m-%d")}
    command = "python benchmarks/latency_fidelity.py " + " ".join(sys.argv[1:])
    head = results[0]
    payload = {**{k: head[k] for k in ("device", "ops_within_10pct", "nets_within_10pct", "nets_median_abs_rel_err",
                                       "nets_p95_abs_rel_err", "n_nets")},
               "valid": all(r["valid"] for r in results),
               "by_device": results, "environment": env, "command": command, "wall_s": time.time() - start,
               "smoke": args.smoke, "contention": watch.summary()}
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (RESULTS / f"{args.out}.md").write_text(to_markdown(results, env, command) + "\n" + watch.markdown()
                                                     + "\n")
    print(to_markdown(results, env, command) + "\n" + watch.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
