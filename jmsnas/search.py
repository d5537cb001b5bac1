"""``python -m jmsnas.search [--check] EXPERIMENT.yaml``: the command users run.

For now the search stage itself is not built: ``--check`` validates an experiment and prints a
summary, and running without ``--check`` says so and exits 2. Stages an experiment enables but
jmsnas does not implement yet are rejected at ``--check`` time, never faked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jmsnas.config import Experiment, load_experiment
from jmsnas.errors import JmsnasError, StageNotBuiltError

#: Pipeline stages that exist in this version, by the experiment section that enables them.
BUILT_STAGES: dict[str, bool] = {"strategy": False, "exits": False, "partition": False, "export": False}


def unbuilt_sections(exp: Experiment) -> list[str]:
    """Optional sections the experiment declares whose stage is not built yet."""
    return [s for s in ("exits", "partition", "export") if getattr(exp.config, s) is not None and not BUILT_STAGES[s]]


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


def summary(exp: Experiment) -> str:
    """A readable summary of a validated experiment (what ``--check`` prints)."""
    from jmsnas.data import JmsnasDataModule

    cfg = exp.config
    info = JmsnasDataModule(cfg.dataset, seed=cfg.seed).info()
    topo = exp.topology
    lines = [
        f"experiment  {cfg.name}  ({exp.path})",
        f"seed        {cfg.seed}",
        f"dataset     {info.name}: input {tuple(info.input_shape)}, {info.num_classes} classes; "
        f"train {info.train_size} / val {info.val_size} / test {info.test_size}",
        f"space       {exp.search_space.config.name} ({exp.search_space.config.dims}-D, "
        f"{exp.search_space.num_layers} searchable layers) from {cfg.search_space}",
        f"strategy    {cfg.strategy.name}, T_const {cfg.strategy.t_const_ms:g} ms",
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
    stages = ["search" + ("" if BUILT_STAGES["strategy"] else " (not built yet: only --check runs)")]
    lines.append(f"stages      {', '.join(stages)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jmsnas.search",
                                     description="Search a network and its split across devices for an experiment.")
    parser.add_argument("experiment", help="path to an experiment YAML file (see experiments/)")
    parser.add_argument("--check", action="store_true", help="validate the experiment, print a summary, and stop")
    args = parser.parse_args(argv)
    try:
        exp = load_experiment(args.experiment)
        missing = unbuilt_sections(exp)
        if missing:
            raise StageNotBuiltError(f"the experiment enables stage(s) {missing} that this version of jmsnas does "
                                     "not implement yet; remove the section(s)", file=exp.path, field=missing[0])
        print(summary(exp))
        if args.check:
            print("check       OK")
            return 0
        if not BUILT_STAGES["strategy"]:
            raise StageNotBuiltError("the search stage is not built in this version of jmsnas; "
                                     "run with --check to validate the experiment", file=exp.path, field="strategy")
        return 0
    except JmsnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
