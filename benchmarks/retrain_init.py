"""Retraining init decided by measurement (issue 14 item 2): inherit the supernet's weights, or start afresh?

For each seed, the quickstart's proxyless search at one T_const is run twice, identical but for
``retrain.init`` (the search is seeded, so both runs derive the same network): once continuing from
the supernet's weights (``inherit``), once from fresh weights (``scratch``), each retrained for the
experiment's epochs. Reported: test accuracy per seed and init, mean ± sd, and whether the derived
networks agree. Two runs side by side at one thread each (accuracy only; wall times are not compared).

Usage::

    python benchmarks/retrain_init.py [--t-const 18] [--seeds 3]   # writes benchmarks/results/retrain_init.{md,json}
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

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def one_run(t_const: float, seed: int, init: str, root: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from jmsnas.config import load_experiment
    from jmsnas.strategies.run import run_proxyless

    exp = load_experiment(REPO / "experiments" / "quickstart.yaml")
    s = exp.config.strategy
    strategy = s.model_copy(update={"t_const_ms": t_const, "retrain": s.retrain.model_copy(update={"init": init})})
    out = asdict(run_proxyless(exp, strategy, seed, Path(root) / f"{init}_s{seed}", progress=False))
    return {"seed": seed, "init": init, "test_acc": out["test_acc"], "search_val_acc": out["search_val_acc"],
            "compact": out["compact"], "retrain_epochs": s.retrain.epochs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t-const", type=float, default=18.0)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    start = time.time()
    from jmsnas.latency.watch import ContentionWatch

    watch = ContentionWatch()  # wall times are void if anything else ran meanwhile
    jobs = [(args.t_const, seed, init) for seed in range(args.seeds) for init in ("inherit", "scratch")]
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(2) as pool:
        runs = list(pool.map(one_run, *zip(*jobs, strict=True), [tmp] * len(jobs)))
    summary = {}
    for init in ("inherit", "scratch"):
        accs = [r["test_acc"] for r in runs if r["init"] == init]
        summary[init] = {"test_acc": accs, "mean": statistics.fmean(accs), "sd": statistics.pstdev(accs)}
    same_arch = all(len({r["compact"] for r in runs if r["seed"] == s}) == 1 for s in range(args.seeds))
    better = max(summary, key=lambda k: summary[k]["mean"])
    payload = {"t_const_ms": args.t_const, "seeds": list(range(args.seeds)), "runs": runs, **summary,
               "same_arch_per_seed": same_arch, "better": better, "wall_s": time.time() - start,
               "command": "python benchmarks/retrain_init.py " + " ".join(sys.argv[1:])}
    watch.checkpoint("the whole run")
    payload["contention"] = watch.summary()
    lines = ["# Retraining init: inherit vs scratch", "", f"Command: `{payload['command']}`; quickstart, "
             f"T_const {args.t_const:g} ms, {runs[0]['retrain_epochs']} retraining epochs; two runs side by side "
             "at one thread on this project's 2-core VM.", "", "| init | test acc. per seed | mean ± sd |",
             "| --- | --- | --- |"]
    for init in ("inherit", "scratch"):
        s = summary[init]
        lines.append(f"| {init} | {', '.join(f'{100 * a:.2f}' for a in s['test_acc'])} | "
                     f"{100 * s['mean']:.2f} ± {100 * s['sd']:.2f} |")
    lines += ["", f"Same derived network for both inits of a seed: {same_arch}. Better on this run: **{better}**.", "",
              watch.markdown()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrain_init.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / "retrain_init.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
