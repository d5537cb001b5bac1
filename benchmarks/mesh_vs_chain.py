"""Paper 003 Fig. 5's question on this machine: does a mesh with parallel branches beat a chain at the same budget?

The same task (MNIST-1D) and devices (``experiments/quickstart_mesh.yaml``: a UE, a small base
station as the root, three macro base stations, an aggregator, all analytic) searched three ways,
at three T_const levels and several seeds, each by the supernet strategy (search, derive,
retrain, test), two runs side by side at one thread:

- ``mesh``: the branched space (``mbconv13_1d_mesh.yaml``) on the mesh, E[T] by eq. (2);
- ``chain``: the sequential space (``mbconv13_1d.yaml``) on the chain UE -> SBS -> MBS1 -> aggregator
  (the same devices and links, one macro base station);
- ``mesh_sequential``: the sequential space on the mesh, placed on its best path (what jmsnas did on a
  mesh before branched spaces): the best sequential network for comparison.

Reported per topology and level: the handed-on network's predicted latency, test accuracy after
retraining (mean, sd, per seed), and the search-time validation accuracy curve (mean over seeds,
per epoch, from the search's ``metrics.csv``). Paper 003's shape to check: the mesh reaches equal
or higher accuracy than the chain at the same budget, and a looser budget gives higher accuracy.

Usage::

    python benchmarks/mesh_vs_chain.py            # writes benchmarks/results/mesh_vs_chain.{md,json}
    python benchmarks/mesh_vs_chain.py --smoke    # one-epoch runs at one level, nothing written
    python benchmarks/mesh_vs_chain.py --set dataset.train_split=0.3 --set dataset.val_fraction=0.2 \
        --out mesh_vs_chain_hard                  # a harder task (fewer training samples)
"""

from __future__ import annotations

import argparse
import csv
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
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
EXPERIMENT = REPO / "experiments" / "quickstart_mesh.yaml"
SEQUENTIAL = str(REPO / "search_spaces" / "mbconv13_1d.yaml")
TOPOLOGIES = ("mesh", "chain", "mesh_sequential")


def experiment_data(topology: str) -> dict:
    """The quickstart mesh experiment, as the mesh, the chain through its first MBS, or with a sequential space."""
    data = yaml.safe_load(EXPERIMENT.read_text())
    data["search_space"] = str(REPO / "search_spaces" / "mbconv13_1d_mesh.yaml")
    data.pop("export", None)  # the deploy stage is not what this measures
    if topology == "mesh":
        return data
    data["search_space"] = SEQUENTIAL
    if topology == "chain":
        keep = ("ue", "sbs", "mbs1", "agg")
        topo = data["topology"]
        topo["kind"] = "chain"
        topo["devices"] = [d for d in topo["devices"] if d["name"] in keep]
        topo["links"] = [lk for lk in topo["links"] if lk["src"] in keep and lk["dst"] in keep]
    return data


def val_curve(run_dir: Path) -> list[float]:
    """The search's validation accuracy per epoch (Lightning's CSV log)."""
    rows = list(csv.DictReader((run_dir / "search" / "metrics.csv").open()))
    by_epoch: dict[int, float] = {}
    for row in rows:
        if row.get("val_acc"):
            by_epoch[int(row["epoch"])] = float(row["val_acc"])
    return [by_epoch[e] for e in sorted(by_epoch)]


def _sets() -> list[str]:
    """The ``--set`` changes every experiment gets (through the environment: worker processes inherit it)."""
    return json.loads(os.environ.get("JMSNAS_BENCH_SETS", "[]"))


def one_run(topology: str, t_const: float, seed: int, smoke: bool, root: str) -> dict:
    torch.set_num_threads(1)  # two runs side by side on two cores
    from jmsnas.config import load_experiment
    from jmsnas.strategies.run import run_proxyless

    exp = load_experiment(experiment_data(topology), base_dir=EXPERIMENT.parent, overrides=_sets())
    update: dict = {"t_const_ms": t_const}
    if smoke:
        update.update(epochs=1, warmup_epochs=0, derive_candidates=2,
                      retrain=exp.config.strategy.retrain.model_copy(update={"epochs": 1}))
    strategy = exp.config.strategy.model_copy(update=update)
    run_dir = Path(root) / f"{topology}_t{t_const:g}_s{seed}"
    outcome = asdict(run_proxyless(exp, strategy, seed, run_dir, progress=False))
    return {**outcome, "topology": topology, "val_curve": val_curve(run_dir)}


def summarise(runs: dict, levels: list[float], seeds: dict[str, list[int]]) -> dict:
    out: dict = {}
    for topo in TOPOLOGIES:
        per = [[runs[(topo, t, s)] for s in seeds[topo]] for t in levels]
        curves = [[statistics.mean(c) for c in zip(*(r["val_curve"] for r in rs), strict=False)] for rs in per]
        out[topo] = {
            "predicted_latency_ms": [statistics.mean(r["predicted_latency_ms"] for r in rs) for rs in per],
            "test_acc": [statistics.mean(r["test_acc"] for r in rs) for rs in per],
            "test_acc_sd": [statistics.pstdev(r["test_acc"] for r in rs) for rs in per],
            "test_acc_per_seed": [[r["test_acc"] for r in rs] for rs in per],
            "feasible_share": [statistics.mean(float(r["feasible"]) for r in rs) for rs in per],
            "search_val_acc_curve": curves,
            "archs": [[r["compact"] for r in rs] for rs in per],
            "paths": [[r["split"]["path"] for r in rs] for rs in per],
            "search_wall_s": [statistics.median(r["search_wall_s"] for r in rs) for rs in per],
            "seeds": seeds[topo],
        }
    return out


def verdict(result: dict) -> list[str]:
    mesh, chain = result["mesh"], result["chain"]
    lines = []
    for k, t in enumerate(result["t_const_ms"]):
        gap = 100 * (mesh["test_acc"][k] - chain["test_acc"][k])
        lines.append(f"- {t:g} ms: mesh {100 * mesh['test_acc'][k]:.2f} % vs chain {100 * chain['test_acc'][k]:.2f} % "
                     f"({gap:+.2f} pp; sd {100 * mesh['test_acc_sd'][k]:.2f} / {100 * chain['test_acc_sd'][k]:.2f} pp)")
    wins = sum(m >= c for m, c in zip(mesh["test_acc"], chain["test_acc"], strict=True))
    looser = all(b >= a for a, b in zip(mesh["test_acc"], mesh["test_acc"][1:], strict=False))
    lines.append(f"- Fig. 5's shape: the mesh is at least as accurate as the chain at {wins} of "
                 f"{len(result['t_const_ms'])} levels; a looser budget gives the mesh higher accuracy: "
                 f"{'yes' if looser else 'no'}")
    return lines


def to_markdown(r: dict) -> str:
    lines = ["# Mesh (parallel branches, eq. (2)) vs chain on the same devices (MNIST-1D)", "",
             f"Command: `{r['command']}` ({r['wall_s'] / 60:.0f} min)"
             + (f"; every experiment changed by `--set {' --set '.join(r['sets'])}`" if r.get("sets") else ""), "",
             f"Hardware: {r['hardware']}. Seeds {r['seeds']} (mesh_sequential: {r['mesh_sequential']['seeds']}: "
             "on this mesh its best path is the chain's, so it is the chain's search again). Devices and links: "
             "`experiments/quickstart_mesh.yaml` (analytic devices); the chain is UE -> SBS -> MBS1 -> aggregator "
             "over the same links.", "",
             "| topology | T_const (ms) | predicted latency (ms, mean) | feasible | test acc. (mean ± sd) | per seed | "
             "search wall (s, median) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for topo in TOPOLOGIES:
        p = r[topo]
        for k, t in enumerate(r["t_const_ms"]):
            seeds = ", ".join(f"{100 * a:.1f}" for a in p["test_acc_per_seed"][k])
            lines.append(f"| {topo} | {t:g} | {p['predicted_latency_ms'][k]:.2f} | {p['feasible_share'][k]:.0%} | "
                         f"{100 * p['test_acc'][k]:.2f} ± {100 * p['test_acc_sd'][k]:.2f} % | {seeds} | "
                         f"{p['search_wall_s'][k]:.0f} |")
    lines += ["", "Search-time validation accuracy of the supernet's handed-on network, per epoch (mean over seeds; "
              "the first epochs are the warm-up):", ""]
    for topo in TOPOLOGIES:
        for k, t in enumerate(r["t_const_ms"]):
            curve = " ".join(f"{100 * v:.0f}" for v in r[topo]["search_val_acc_curve"][k])
            lines.append(f"- {topo} at {t:g} ms: {curve}")
    lines += ["", "Networks handed on (seed 0):", ""]
    for topo in TOPOLOGIES:
        for k, t in enumerate(r["t_const_ms"]):
            lines.append(f"- {topo} at {t:g} ms: `{r[topo]['archs'][k][0]}` on {' -> '.join(r[topo]['paths'][k][0])}")
    lines += ["", *verdict(r), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t-const", type=float, action="append", help="levels (ms); default 6, 7, 8")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sequential-seeds", type=int, default=1, help="seeds of mesh_sequential (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="a change to every experiment (as jmsnas search --set), e.g. dataset.train_split=0.3")
    parser.add_argument("--out", default="mesh_vs_chain", help="results file stem in benchmarks/results/")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    os.environ["JMSNAS_BENCH_SETS"] = json.dumps(args.set)
    levels = args.t_const or ([7.0] if args.smoke else [6.0, 7.0, 8.0])
    n = 1 if args.smoke else args.seeds
    seeds = {"mesh": list(range(n)), "chain": list(range(n)),
             "mesh_sequential": list(range(1 if args.smoke else args.sequential_seeds))}
    start = time.time()
    from jmsnas.latency.watch import ContentionWatch

    watch = ContentionWatch()  # wall times are void if anything else ran meanwhile
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.workers) as pool:
        futures = {(topo, t, s): pool.submit(one_run, topo, t, s, args.smoke, root)
                   for topo in TOPOLOGIES for t in levels for s in seeds[topo]}
        runs = {k: f.result() for k, f in futures.items()}
    watch.checkpoint("the whole run")
    from jmsnas.machine import processor_name

    result = {"t_const_ms": levels, **summarise(runs, levels, seeds), "seeds": seeds["mesh"],
              "wall_s": time.time() - start,
              "hardware": f"{processor_name()}, {os.cpu_count()} cores, {args.workers} runs side by side at 1 thread",
              "command": "python benchmarks/mesh_vs_chain.py " + " ".join(sys.argv[1:]), "smoke": args.smoke,
              "sets": args.set,
              "contention": watch.summary()}
    md = to_markdown(result) + "\n" + watch.markdown() + "\n"
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{args.out}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
