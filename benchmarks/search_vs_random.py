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
   gets the wall clock of the proxyless search of the same level and seed (``time_budget_s``, with no
   limit on the number of candidates). The morphism teacher is trained once (its time is
   ``teacher_wall_s``) and shared by every morphism run. Reported per strategy and level: mean ± sd test
   accuracy after retraining, predicted latency, search wall time and wall time with retraining.

Levels 16 / 18 / 22 ms: at the quickstart's 14 ms no uniformly drawn network fits (the fastest of 2000
draws takes 14.9 ms), so random search has nothing to train there.

Jobs (the teacher, one spread per level, one (level, seed) with its three runs) go ``--workers`` side by
side, one thread each; each finished job is kept under ``--work-dir`` and a rerun resumes.

Goal (issue 14): proxyless (and morphism) >= random + 1 pp mean test accuracy at >= 2 of 3 levels, or
equal accuracy (within 0.5 pp) at >= 15 % lower predicted latency; ``goal_met`` per strategy says
whether it was reached. Wall times are only comparable when nothing else runs on the machine.

Usage::

    python benchmarks/search_vs_random.py              # writes benchmarks/results/search_vs_random.{md,json}
    python benchmarks/search_vs_random.py --smoke      # one level, one seed, 1-epoch runs: nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
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
LEVELS = (16.0, 18.0, 22.0)  # 14 ms: no uniformly drawn network fits (fastest of 2000: 14.9 ms)


def _sets() -> list[str]:
    """The ``--set`` changes every experiment gets (through the environment: worker processes inherit it)."""
    return json.loads(os.environ.get("JMSNAS_BENCH_SETS", "[]"))


def _experiment(strategy: str):
    from jmsnas.config import load_experiment

    return load_experiment(REPO / "experiments" / EXPERIMENTS[strategy], overrides=_sets())


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


def _teacher(root: Path) -> float:
    """Train (or load) the morphism strategy's teacher once for every morphism run; its wall time."""
    import fcntl

    from jmsnas.data import JmsnasDataModule
    from jmsnas.strategies.teacher import load_or_train_teacher

    exp = _experiment("morphism")
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(root / "teacher.lock", "w") as lock:  # two workers: one trains, the other waits for the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        dm = JmsnasDataModule(exp.config.dataset, seed=exp.config.seed)
        dm.setup()
        load_or_train_teacher(exp, exp.config.strategy, dm, root / "teacher", seed=exp.config.seed)
    return time.perf_counter() - start


def one_run(strategy: str, t_const: float, seed: int, root: Path, smoke: bool, budget_s: float | None) -> dict:
    """One search + retraining; random gets ``budget_s`` seconds of candidate training and no count limit."""
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
        # equal wall clock: as many candidates as the proxyless search's time allows
        update.update({"time_budget_s": budget_s, "max_rejections": 100_000})
        if not smoke:
            update["num_candidates"] = 100  # more than the budget trains (about 40)
    run_dir = root / f"{strategy}_t{t_const:g}_s{seed}"
    start = time.perf_counter()
    if strategy == "morphism":
        found = run_morphism(exp, cfg.model_copy(update=update), seed, run_dir, progress=False,
                             teacher_dir=root / "teacher")
    else:
        run = {"proxyless": run_proxyless, "random": run_random}[strategy]
        found = run(exp, cfg.model_copy(update=update), seed, run_dir, progress=False)
    outcome = asdict(found)
    outcome["wall_s"] = time.perf_counter() - start
    return outcome


def job(kind: str, args: tuple, root: str, smoke: bool) -> dict:
    """One unit of work in a worker process at one thread: ``spread``, ``teacher`` or ``level`` (three strategies)."""
    torch.set_num_threads(1)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if kind == "spread":
        return spread(*args)
    if kind == "teacher":
        return {"teacher_wall_s": _teacher(Path(root))}
    t_const, seed = args
    rows: list[dict] = []
    for strategy in EXPERIMENTS:  # proxyless first: random is given its search time
        budget = next((r["search_wall_s"] for r in rows if r["strategy"] == "proxyless"), None)
        if strategy == "morphism":
            _teacher(Path(root))  # cached by the teacher job; waits if that job is still training it
        outcome = one_run(strategy, t_const, seed, Path(root), smoke, budget)
        rows.append({**outcome, "strategy": strategy, "t_const_ms": t_const})
        print(f"{strategy} T={t_const:g} seed {seed}: test acc {outcome['test_acc']:.4f}, "
              f"{outcome['predicted_latency_ms']:.2f} ms, search {outcome['search_wall_s']:.0f} s, "
              f"total {outcome['wall_s']:.0f} s", flush=True)
    return {"runs": rows}


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
            "search_wall_s": [statistics.fmean(r["search_wall_s"] for r in row) if row else None for row in rows],
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
    lines += ["", "| strategy | T_const (ms) | test acc. (mean ± sd) | predicted latency (ms) | search (s) | with "
              "retraining (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for strategy in EXPERIMENTS:
        s = payload[strategy]
        for i, t in enumerate(payload["t_const_ms"]):
            if s["test_acc_mean"][i] is None:
                continue
            lines.append(f"| {strategy} | {t:g} | {100 * s['test_acc_mean'][i]:.2f} ± {100 * s['test_acc_sd'][i]:.2f} "
                         f"| {s['predicted_latency_ms'][i]:.2f} | {s['search_wall_s'][i]:.0f} | {s['wall_s'][i]:.0f} |")
    lines += ["", "Paired by seed (same level and seed; pp, test accuracy minus random's):", ""]
    for st in ("proxyless", "morphism"):
        for t in payload["t_const_ms"]:
            acc = {(r["strategy"], r["seed"]): r["test_acc"] for r in payload["runs"] if r["t_const_ms"] == t}
            diffs = [100 * (acc[(st, k)] - acc[("random", k)]) for k in payload["seeds"]
                     if (st, k) in acc and ("random", k) in acc]
            lines.append(f"- {st} at {t:g} ms: " + ", ".join(f"{d:+.2f}" for d in diffs))
    lines += [""] + [f"- {st}: beats random (+1 pp, or equal at -15 % latency) at {payload[st]['levels_won']} of "
                     f"{len(payload['t_const_ms'])} levels: goal {'met' if payload[st]['goal_met'] else 'NOT met'}"
                     for st in ("proxyless", "morphism")]
    from jmsnas.latency.watch import contention_markdown

    lines += ["", contention_markdown(payload.get("contention"))]
    return "\n".join(lines) + "\n"


def _run_jobs(jobs: list[tuple[str, tuple]], root: Path, smoke: bool, workers: int, watch) -> dict:
    """Run ``jobs`` on ``workers`` processes; each finished job is kept in ``root/done/`` (a rerun resumes)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    done_dir = root / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    sets = done_dir / "sets.json"  # finished jobs are only reused under the same changes
    if sets.exists() and json.loads(sets.read_text()) != _sets():
        raise SystemExit(f"{root} holds jobs run with --set {json.loads(sets.read_text())}; give another "
                         "--work-dir or delete it")
    sets.write_text(json.dumps(_sets()) + "\n")
    results: dict = {}
    todo = []
    for kind, args in jobs:
        key = kind + "_" + "_".join(f"{a:g}" if isinstance(a, float) else str(a) for a in args)
        if (done_dir / f"{key}.json").exists():
            results[key] = json.loads((done_dir / f"{key}.json").read_text())
            print(f"{key}: kept from an earlier run ({done_dir})", flush=True)
        else:
            todo.append((key, kind, args))
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        def stop(signum: int, frame: object) -> None:  # killed: take the workers along, keep what finished
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        futures = {pool.submit(job, kind, args, str(root), smoke): key for key, kind, args in todo}
        for future in cf.as_completed(futures):
            key = futures[future]
            results[key] = future.result()
            (done_dir / f"{key}.json").write_text(json.dumps(results[key]) + "\n")
            watch.checkpoint(key)
            print(f"{key}: done ({len(results)} of {len(jobs)})", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    parser.add_argument("--spread-nets", type=int, default=30)
    parser.add_argument("--spread-epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="jobs side by side, one thread each")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_search_vs_random",
                        help="runs and finished jobs; a rerun with the same arguments resumes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="a change to all three experiments (as jmsnas search --set), e.g. dataset.train_split=0.3")
    parser.add_argument("--smoke", action="store_true", help="one level, one seed, 1-epoch runs; nothing written")
    args = parser.parse_args()
    os.environ["JMSNAS_BENCH_SETS"] = json.dumps(args.set)
    if args.smoke:
        args.seeds, args.levels, args.spread_nets, args.spread_epochs = 1, args.levels[1:2], 3, 1
    from jmsnas.latency.watch import ContentionWatch
    from jmsnas.machine import processor_name

    start = time.time()
    watch = ContentionWatch()  # wall times are void if anything else ran meanwhile
    jobs = [("teacher", ()), *[("spread", (t, args.spread_nets, args.spread_epochs, 0)) for t in args.levels],
            *[("level", (t, seed)) for t in args.levels for seed in range(args.seeds)]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) if args.smoke else args.work_dir
        results = _run_jobs(jobs, root, args.smoke, args.workers, watch)
    spreads = [results[f"spread_{t:g}_{args.spread_nets}_{args.spread_epochs}_0"] for t in args.levels]
    runs = [r for t in args.levels for seed in range(args.seeds) for r in results[f"level_{t:g}_{seed}"]["runs"]]
    task = "MNIST-1D quickstart (experiments/quickstart*.yaml)" + (f" with {', '.join(args.set)}" if args.set else "")
    payload = {"task": task, "sets": args.set, "t_const_ms": args.levels,
               "spread_pp": [s["spread_pp"] for s in spreads], "spread": spreads, **summarise(runs, args.levels),
               "teacher_wall_s": results["teacher_"]["teacher_wall_s"],
               "runs": [{k: r[k] for k in ("strategy", "t_const_ms", "seed", "test_acc", "predicted_latency_ms",
                                           "search_wall_s", "wall_s", "compact")} for r in runs],
               "seeds": list(range(args.seeds)),
               "hardware": f"{processor_name()}, {os.cpu_count()} cores, "
                           f"{args.workers} jobs side by side at one thread",
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
