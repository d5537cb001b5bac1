"""``jmsnas search EXPERIMENT [--check] [--set K=V] [--output-dir D] [--resume] [--address RAY] [--smoke]``.

Also ``python -m jmsnas.search``.

``--check`` validates an experiment and prints a summary. Without it the search runs through Ray
Tune (`jmsnas.tune`): one trial per grid point, each searching, retraining and testing a network,
then the choice per T_const and the report under ``runs/<name>/``. Stages an experiment enables
but jmsnas does not implement yet are rejected at ``--check`` time, never faked.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from jmsnas.checks import check_partition, check_stages
from jmsnas.config import Experiment, load_experiment
from jmsnas.errors import ConfigError, JmsnasError
from jmsnas.resources import experiment_file
from jmsnas.rundir import check_search

__all__ = ["check_stages", "deploy_after_search", "main", "summary"]

log = logging.getLogger(__name__)


def _bytes_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _device_text(exp: Experiment, name: str) -> str:
    d = exp.topology.device(name)
    if d.analytic is not None:
        a = d.analytic
        return f"analytic: {a.macs_per_s / 1e6:g} M MAC/s, {_bytes_text(a.memory_bytes)} memory"
    mem = f", {_bytes_text(d.memory_bytes)} memory" if d.memory_bytes else ""
    return f"profile: {d.profile}{mem}"


def _strategy_text(strategy) -> str:
    if strategy.name == "random":
        budget = f", at most {strategy.time_budget_s:g} s" if strategy.time_budget_s is not None else ""
        return (f"random ({strategy.num_candidates} networks within T_const x {strategy.sample_epochs} epochs"
                f"{budget})")
    if strategy.name != "morphism":
        return strategy.name
    guide = (f"KD at T={strategy.temperature:g} from teacher {strategy.teacher.model!r}" if strategy.use_kd
             else "plain, hard labels")
    return (f"morphism ({guide}; {strategy.iterations} iterations x {strategy.children} children, "
            f"{strategy.parallel_children} at once)")


def _branches_text(exp: Experiment) -> str:
    space = exp.search_space
    if not space.is_branched:
        return ""
    return f", {space.num_branches} parallel branches merged by {space.config.merge}: E[T] by eq. (2)"


def summary(exp: Experiment) -> str:
    """A readable summary of a validated experiment (what ``--check`` prints)."""
    from jmsnas.dataset_info import describe
    from jmsnas.rundir import expected_trials

    cfg = exp.config
    info = describe(cfg.dataset)
    if info is None:  # its sizes depend on its files: load it (imports torch)
        from jmsnas.data import DatasetSplits

        info = DatasetSplits(cfg.dataset, seed=cfg.seed).info()
    topo = exp.topology
    lines = [
        f"experiment  {cfg.name}  ({exp.path})",
        f"seed        {cfg.seed}",
        f"dataset     {info.name}: input {tuple(info.input_shape)}, {info.num_classes} classes; "
        f"train {info.train_size} / val {info.val_size} / test {info.test_size}",
        f"space       {exp.search_space.config.name} ({exp.search_space.config.dims}-D, "
        f"{exp.search_space.num_layers} searchable layers{_branches_text(exp)}) from {cfg.search_space}",
        f"strategy    {_strategy_text(cfg.strategy)}, T_const {cfg.strategy.t_const_ms:g} ms",
        f"topology    {topo.kind}, {len(topo.devices)} devices, {len(topo.links)} links; source {topo.source}, "
        f"sink {topo.sink}",
    ]
    if topo.kind == "mesh":
        lines.append(f"            chain part {list(topo.chain_devices)}, tree root {topo.root}, "
                     f"branches {list(topo.branches)}")
    lines += [f"  device    {d.name:<12} {_device_text(exp, d.name)}" for d in topo.devices]
    lines += [f"  link      {lk.src} -> {lk.dst}: {lk.bandwidth_mbps:g} Mbit/s, rtt {lk.rtt_ms:g} ms"
              for lk in topo.links]
    lines.append(f"output      {exp.run_dir}")
    stages = [f"search ({cfg.strategy.name}, {expected_trials(cfg)} trial(s), scheduler {cfg.tune.scheduler})"]
    if cfg.exits is not None:
        stages.append(f"exits ({cfg.exits.objective}, {cfg.exits.thresholds_per_exit} thresholds per exit)")
    if cfg.partition is not None or cfg.export is not None:
        kinds = [c.kind for c in cfg.partition.compressors] if cfg.partition is not None else []
        stages.append(f"partition (compressors {kinds or 'none'})")
    if cfg.export is not None:
        stages.append("export (bundle/: TorchScript + ONNX per device)")
    lines.append(f"stages      {', '.join(stages)}")
    return "\n".join(lines)


def deploy_after_search(exp: Experiment, *, smoke: bool) -> None:
    """Partition, compress and export every feasible choice of the finished search (`jmsnas.pipeline`)."""

    from jmsnas import tune
    from jmsnas.report import Summary
    from jmsnas.stages import deploy as pipeline

    config = tune.smoke_config(exp.config) if smoke else exp.config
    if smoke and config.partition is not None:
        config = config.model_copy(update={"partition": config.partition.model_copy(
            update={"train_epochs": 1, "finetune_epochs": 1})})
    if smoke and config.exits is not None:
        config = config.model_copy(update={"exits": config.exits.model_copy(update={"head_epochs": 1,
                                                                                    "joint_epochs": 1})})
    run = Experiment(config, exp.path, exp.topology, exp.search_space)
    run_dir = run.run_dir.resolve()
    for d in pipeline.deploy_run(run, run_dir, Summary.load(run_dir / "summary.json")):
        log.info(f"deployed    {d['dir']}: {d['predicted_latency_ms']:.4g} ms on {' -> '.join(d['devices'])}, "
                 f"test acc {100 * d['test_acc_split']:.2f} % ({d['acc_change_pp']:+.2f} pp)"
                 + (f", bundle {run_dir / d['dir'] / 'bundle'}" if "bundle" in d else ""))
        if pipeline.exits_line(d) is not None:
            log.info(f"  exits     {pipeline.exits_line(d)}")


EXAMPLES = """examples:
  jmsnas search experiments/quickstart.yaml --check      validate, print the summary, stop
  jmsnas search experiments/quickstart.yaml              search, then deploy the choices (runs/quickstart/)
  jmsnas search quickstart --smoke                       the shipped quickstart, one epoch, into runs/quickstart-smoke
  jmsnas search exp.yaml --set tune.num_samples=2 --set strategy.epochs=5 --output-dir /tmp/runs
  jmsnas search exp.yaml --print-config                  the experiment as validated, defaults filled
  jmsnas search exp.yaml --resume                        continue an interrupted search

exit status: 0 done (--check: valid), 1 some trial failed, 2 bad input (one 'error:' line names the file
and field), 130 interrupted (the resume command is printed)"""


def _parser(prog: str) -> argparse.ArgumentParser:
    from jmsnas.cli import add_verbosity

    parser = argparse.ArgumentParser(prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Search a network and its split across devices for an experiment.")
    parser.add_argument("experiment", help="an experiment YAML file, or the name of a shipped one (quickstart, "
                        "quickstart_random, quickstart_morphism, quickstart_mesh, jmsnas_chain, jmsnas_mesh)")
    parser.add_argument("--check", action="store_true", help="validate the experiment, print a summary, and stop")
    parser.add_argument("--print-config", action="store_true",
                        help="print the experiment as validated (defaults filled, paths resolved) as YAML, and stop")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="change one field before validation; VALUE is YAML (repeatable), e.g. "
                        "tune.num_samples=2, tune.grid.t_const_ms=[14,18], topology.devices[0].name=mcu")
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="write the run to DIR/<name> (default: the experiment's output_dir, else ./runs)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted search in the run directory (finished trials are not rerun)")
    parser.add_argument("--address", metavar="RAY_ADDRESS",
                        help="join this running Ray cluster (default: RAY_ADDRESS, else start a fresh local Ray)")
    parser.add_argument("--num-cpus", type=int, metavar="N",
                        help="CPUs of the local Ray jmsnas starts (default: Ray's own detection, container limits "
                        "included)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the set-up in about a minute: one epoch, first grid point, into <name>-smoke")
    add_verbosity(parser)
    return parser


def load(args: argparse.Namespace) -> Experiment:
    """The experiment of the command line: the file (or shipped name), ``--set`` and ``--output-dir`` applied."""
    exp = load_experiment(experiment_file(args.experiment), overrides=args.overrides)
    if args.output_dir is not None:
        exp.config = exp.config.model_copy(update={"output_dir": args.output_dir.expanduser().resolve()})
    log.debug(f"loaded      {exp.path}" + (f" with --set {' '.join(args.overrides)}" if args.overrides else ""))
    log.debug(f"profiles    {exp.config.profiles_dir}")
    log.debug(f"trainer     {exp.config.trainer.model_dump(mode='json')}")
    return exp


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m jmsnas.search") -> int:
    """Run ``jmsnas search``; returns the exit status (see ``EXAMPLES``)."""
    from jmsnas.cli import setup_logging

    args = _parser(prog).parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        if args.num_cpus is not None and args.num_cpus < 1:
            raise ConfigError(f"--num-cpus must be >= 1, got {args.num_cpus}", field="--num-cpus")
        exp = load(args)
        if args.print_config:
            print(yaml.safe_dump(exp.config.model_dump(mode="json"), sort_keys=False), end="")
            return 0
        check_stages(exp)
        check_partition(exp)
        check_search(exp)
        print(summary(exp))
        if args.check:
            print("check       OK")
            return 0
        from jmsnas import tune  # imports Ray: only once the experiment is known to be valid

        status = tune.run_search(exp, resume=args.resume, address=args.address, smoke=args.smoke,
                                 extra_args=_resume_args(args), num_cpus=args.num_cpus)
        if status == 0 and any(getattr(exp.config, s) is not None for s in ("exits", "partition", "export")):
            deploy_after_search(exp, smoke=args.smoke)
        return status
    except JmsnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _resume_args(args: argparse.Namespace) -> list[str]:
    """The options a resume command must repeat to name the same run."""
    out = [a for o in args.overrides for a in ("--set", o)]
    return out + (["--output-dir", str(args.output_dir)] if args.output_dir is not None else [])


if __name__ == "__main__":
    sys.exit(main())
