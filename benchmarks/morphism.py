"""KD-guided vs plain network-morphism search (paper 000 Table II) on MNIST-1D, next to the supernet strategy.

Experiment: ``experiments/quickstart_morphism.yaml`` (the quickstart's data and device chain). For
every seed, two searches at the same T_const: the KD search (children trained on the teacher's
softened labels, scored by the softened validation loss) and the plain one (``use_kd: false``:
hard labels, hard validation loss). Each found network is retrained from scratch on hard labels
and tested. Reported: test accuracy, parameters, predicted latency on the chain and the search's
wall time (the climb; the teacher is trained once for all KD runs and reported apart). Paper 000
reports 82 % (KD-NAS) vs 80 % (NAS) on ISIC 2019.

The supernet strategy's result at the same T_const is read from ``benchmarks/results/supernet_search.json``
(``python benchmarks/supernet_search.py``), or run here with ``--supernet`` (about 15 minutes more
on a 2-core machine).

Usage::

    python benchmarks/morphism.py            # writes benchmarks/results/morphism.{md,json}
    python benchmarks/morphism.py --smoke    # one short run of each, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
EXPERIMENT = REPO / "experiments" / "quickstart_morphism.yaml"
SUPERNET_EXPERIMENT = REPO / "experiments" / "quickstart.yaml"
SUPERNET_RESULTS = RESULTS / "supernet_search.json"


def _strategy(t_const: float, use_kd: bool, smoke: bool):
    from jmsnas.config import load_experiment

    exp = load_experiment(EXPERIMENT)
    s = exp.config.strategy
    update: dict = {"t_const_ms": t_const, "use_kd": use_kd}
    if smoke:
        update.update(iterations=1, children=2, child_epochs=1, teacher=s.teacher.model_copy(update={"epochs": 1}),
                      retrain=s.retrain.model_copy(update={"epochs": 1}))
    return exp, s.model_copy(update=update)


def train_teacher(t_const: float, smoke: bool, root: str) -> dict:
    torch.set_num_threads(1)  # two jobs side by side on two cores
    from jmsnas.data import JmsnasDataModule
    from jmsnas.strategies.teacher import load_or_train_teacher

    exp, strategy = _strategy(t_const, True, smoke)
    _, record = load_or_train_teacher(exp, strategy, JmsnasDataModule(exp.config.dataset, seed=exp.config.seed),
                                      Path(root) / "teacher", seed=exp.config.seed)
    return {k: v for k, v in record.items() if k != "key"}


def one_morphism(t_const: float, seed: int, use_kd: bool, smoke: bool, root: str) -> dict:
    torch.set_num_threads(1)
    from jmsnas.space.arch import ArchSpec, build_model
    from jmsnas.strategies.morphism import run_morphism

    exp, strategy = _strategy(t_const, use_kd, smoke)
    run_dir = Path(root) / f"{'kd' if use_kd else 'plain'}_s{seed}"
    outcome = asdict(run_morphism(exp, strategy, seed, run_dir, progress=False, teacher_dir=Path(root) / "teacher"))
    climb = json.loads((run_dir / "climb.json").read_text())
    steps = climb["history"][1:]
    outcome.update(
        params=sum(p.numel() for p in build_model(ArchSpec.from_dict(outcome["arch"])).parameters()),
        accepted=sum(h["accepted"] is not None for h in steps),
        children_trained=sum(len(h["children"]) for h in steps),
        children_dropped=sum(sum(h["dropped"].values()) for h in steps),
        morphs=[h["children"][h["accepted"]]["morphs"] for h in steps if h["accepted"] is not None])
    return outcome


def one_supernet(t_const: float, seed: int, smoke: bool, root: str) -> dict:
    torch.set_num_threads(1)
    from jmsnas.config import load_experiment
    from jmsnas.space.arch import ArchSpec, build_model
    from jmsnas.strategies.run import run_proxyless

    exp = load_experiment(SUPERNET_EXPERIMENT)
    update: dict = {"t_const_ms": t_const}
    if smoke:
        update.update(epochs=1, warmup_epochs=0, retrain=exp.config.strategy.retrain.model_copy(update={"epochs": 1}))
    outcome = asdict(run_proxyless(exp, exp.config.strategy.model_copy(update=update), seed,
                                   Path(root) / f"supernet_s{seed}", progress=False))
    outcome["params"] = sum(p.numel() for p in build_model(ArchSpec.from_dict(outcome["arch"])).parameters())
    return outcome


def supernet_from_results(t_const: float) -> list[dict]:
    """The runs of ``supernet_search.json`` at ``t_const`` (with their parameter counts)."""
    from jmsnas.space.arch import ArchSpec, build_model

    data = json.loads(SUPERNET_RESULTS.read_text())
    level = next((lv for lv in data["levels"] if lv["t_const_ms"] == t_const), None)
    if level is None:
        raise SystemExit(f"{SUPERNET_RESULTS} has no level at {t_const:g} ms (it has {data['t_const_ms']}); "
                         "run with --supernet")
    runs = level["runs"]
    for r in runs:
        r["params"] = sum(p.numel() for p in build_model(ArchSpec.from_dict(r["arch"])).parameters())
    return runs


def summarise(runs: list[dict]) -> dict:
    def col(key: str) -> list[float]:
        return [float(r[key]) for r in runs]

    return {"test_acc": statistics.mean(col("test_acc")), "test_acc_median": statistics.median(col("test_acc")),
            "params": statistics.mean(col("params")),
            "predicted_latency_ms": statistics.mean(col("predicted_latency_ms")),
            "feasible_share": statistics.mean(float(r["feasible"]) for r in runs),
            "search_wall_s": statistics.median(col("search_wall_s")),
            "retrain_wall_s": statistics.median(col("retrain_wall_s")),
            "per_seed": {k: col(k) for k in ("test_acc", "params", "predicted_latency_ms", "search_wall_s")},
            "archs": [r["compact"] for r in runs], "seeds": [r["seed"] for r in runs], "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t-const", type=float, default=18.0, help="latency constraint (ms); default 18")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--supernet", action="store_true", help="run the supernet here instead of reading its results")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    seeds = [0] if args.smoke else list(range(args.seeds))
    t = args.t_const
    start = time.time()
    from jmsnas.latency.watch import ContentionWatch

    watch = ContentionWatch()  # wall times are void if anything else ran meanwhile
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.workers) as pool:
        # The teacher first: KD runs wait on its lock (runs/<name>/teacher) and then load it.
        teacher = pool.submit(train_teacher, t, args.smoke, root)
        jobs = {(kd, s): pool.submit(one_morphism, t, s, kd, args.smoke, root) for kd in (False, True) for s in seeds}
        supernet_jobs = [pool.submit(one_supernet, t, s, args.smoke, root) for s in seeds] if args.supernet else []
        teacher_record = teacher.result()
        runs = {k: f.result() for k, f in jobs.items()}
        supernet_runs = [f.result() for f in supernet_jobs]
    if not args.supernet:
        supernet_runs = supernet_from_results(t)
    kd = summarise([runs[(True, s)] for s in seeds])
    plain = summarise([runs[(False, s)] for s in seeds])
    supernet = summarise(supernet_runs)
    from jmsnas.machine import processor_name
    from jmsnas.report import run_info

    result = {
        "t_const_ms": t, "seeds": seeds,
        "kd_test_acc": kd["test_acc"], "plain_test_acc": plain["test_acc"], "supernet_test_acc": supernet["test_acc"],
        "kd": kd, "plain": plain, "supernet": supernet, "teacher": teacher_record,
        "supernet_source": "run here" if args.supernet else f"read from {SUPERNET_RESULTS.relative_to(REPO)}",
        "wall_s": time.time() - start,
        **{k: v for k, v in run_info(0).items() if k in ("versions", "git_commit", "git_dirty")},
        "hardware": f"{processor_name()}, {os.cpu_count()} cores, {args.workers} runs side by side at 1 thread",
        "command": "python benchmarks/morphism.py " + " ".join(sys.argv[1:]), "smoke": args.smoke,
    }
    watch.checkpoint("the whole run")
    result["contention"] = watch.summary()
    md = to_markdown(result) + "\n" + watch.markdown() + "\n"
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "morphism.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "morphism.md").write_text(md)
    print(md)
    return 0


def _row(name: str, s: dict) -> str:
    accs = ", ".join(f"{a:.1%}" for a in s["per_seed"]["test_acc"])
    return (f"| {name} | {s['test_acc']:.2%} ({accs}) | {s['test_acc_median']:.2%} | {s['params']:,.0f} | "
            f"{s['predicted_latency_ms']:.2f} | {s['feasible_share']:.0%} | {s['search_wall_s']:.0f} | "
            f"{s['retrain_wall_s']:.0f} |")


def to_markdown(r: dict) -> str:
    te = r["teacher"]
    lines = ["# KD-guided vs plain network-morphism search, next to the supernet (MNIST-1D)", "",
             f"Command: `{r['command']}` ({r['wall_s'] / 60:.0f} min)", "",
             f"Hardware: {r['hardware']}. Seeds {r['seeds']}; T_const {r['t_const_ms']:g} ms on the quickstart "
             "chain (M0+ / M4F / phone over a BLE-class link). Accuracy: mean (per seed), median.", "",
             "| strategy | test acc. mean (per seed) | median | parameters (mean) | predicted latency (ms, mean) | "
             "meets T_const | search wall (s, median) | retrain wall (s, median) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             _row("morphism, KD (paper 000)", r["kd"]), _row("morphism, plain", r["plain"]),
             _row("supernet (paper 003)", r["supernet"]), "",
             f"Teacher (`{te.get('model')}`, trained once for all KD runs, not in the search wall times): "
             f"{te.get('params', 0):,} parameters, test acc. {te.get('test_acc', float('nan')):.2%}, "
             f"trained in {te.get('train_wall_s', float('nan')):.0f} s.", "",
             f"Supernet row: {r['supernet_source']} (same data, devices and T_const; its own retraining: 40 epochs, "
             "weights inherited from the supernet; the morphism networks are retrained from scratch for 40 epochs).",
             "", "Networks found:", ""]
    for name in ("kd", "plain", "supernet"):
        for run in r[name]["runs"]:
            lines.append(f"- {name}, seed {run['seed']}: `{run['compact']}` ({run['params']:,} parameters, "
                         f"{run['predicted_latency_ms']:.2f} ms, test {run['test_acc']:.2%})")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
