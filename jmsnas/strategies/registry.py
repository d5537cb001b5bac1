"""``STRATEGIES``: the search strategies by name, and what the orchestration needs to know of each.

A plain dict ``name -> StrategyKind`` (the design's registry): the strategy config's ``name`` is the
key, so code above the strategies (`jmsnas.tune`, `jmsnas.rundir`, `jmsnas.search`) asks
``STRATEGIES[strategy.name]`` instead of switching on the config's class. Importing this module
imports no Ray and none of the strategies' training code: each ``run_trial`` imports its strategy
when it is called.

- ``proxyless`` (`jmsnas.strategies.run.run_proxyless`): one report per search epoch, resumed from
  the Lightning checkpoint Tune keeps.
- ``morphism`` (`jmsnas.strategies.morphism.run_morphism`): one report for the start network and one
  per hill-climbing iteration; its children train as Ray tasks, ``parallel_children`` at once, inside
  the trial's placement group; its teacher is checked before the search (`check_teacher`).
- ``random`` (`jmsnas.strategies.random_search.run_random`): one report per trained candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jmsnas.config import Experiment, MorphismConfig, ProxylessConfig, RandomConfig
from jmsnas.errors import ConfigError

if TYPE_CHECKING:
    from jmsnas.strategies.run import SearchOutcome


@dataclass(frozen=True)
class TrialContext:
    """What the orchestration hands one trial's search (`jmsnas.tune` builds it; no Ray type in it).

    Attributes:
        teacher_dir: where the run's shared teacher is cached (``runs/<name>/teacher``).
        report: called with a trial's metrics after each step of its search.
        runner: ``runner(fn, shared, items)``: how a morphism trial trains its children (Ray tasks).
        callbacks: extra Lightning callbacks of a supernet search (the per-epoch report).
        ckpt_path: a supernet search checkpoint to continue from (an interrupted trial), or None.
    """

    teacher_dir: Path
    report: Callable[[dict], None]
    runner: Callable[[Callable[[Any, Any], Any], Any, Sequence[Any]], list] | None = None
    callbacks: list = field(default_factory=list)
    ckpt_path: str | None = None


@dataclass(frozen=True)
class StrategyKind:
    """One search strategy as the orchestration sees it.

    Attributes:
        name: the ``strategy.name`` of the experiment file.
        config: the strategy's config class (`jmsnas.config`).
        run_trial: ``run_trial(exp, strategy, seed, run_dir, context)``: search, retrain and test one
            network, writing under ``run_dir``; returns its ``SearchOutcome``.
        smoke: the strategy fields ``--smoke`` shortens, from the strategy (besides ``retrain.epochs``).
        length_field: the strategy field that counts a trial's reports (epochs, iterations, candidates).
        extra_reports: reports besides one per ``length_field`` step (the last one; a start network).
        parallel_field: the strategy field of how many Ray tasks a trial runs at once inside its
            placement group, or None when a trial is one plain Ray actor.
        check: fails, naming the field, on what this strategy cannot run in the experiment (or None).
    """

    name: str
    config: type[Any]
    run_trial: Callable[[Experiment, Any, int, Path, TrialContext], SearchOutcome]
    smoke: Callable[[Any], dict[str, Any]]
    length_field: str
    extra_reports: int = 1
    parallel_field: str | None = None
    check: Callable[[Experiment, Any], None] | None = None

    def max_reports(self, strategy: Any, grid: dict[str, list[Any]]) -> int:
        """Reports of the longest trial of ``grid`` (its ``length_field`` values and the strategy's)."""
        return max([getattr(strategy, self.length_field), *grid.get(self.length_field, [])]) + self.extra_reports

    def workers(self, strategy: Any, grid: dict[str, list[Any]]) -> int | None:
        """Ray tasks the widest trial of ``grid`` runs at once, or None (see ``parallel_field``)."""
        if self.parallel_field is None:
            return None
        return max([getattr(strategy, self.parallel_field), *grid.get(self.parallel_field, [])])


def kind_of(strategy: Any) -> StrategyKind:
    """The registry entry of a strategy config."""
    return STRATEGIES[strategy.name]


# --- proxyless -----------------------------------------------------------------------------------


def _run_proxyless(exp: Experiment, strategy: ProxylessConfig, seed: int, run_dir: Path,
                   ctx: TrialContext) -> SearchOutcome:
    from jmsnas.strategies.run import run_proxyless  # here: `--check` need not import the latency models

    return run_proxyless(exp, strategy, seed, run_dir, callbacks=list(ctx.callbacks), ckpt_path=ctx.ckpt_path,
                         progress=False)


def _smoke_proxyless(strategy: ProxylessConfig) -> dict[str, Any]:
    """One epoch of search without warm-up."""
    return {"epochs": 1, "warmup_epochs": 0}


def _check_proxyless(exp: Experiment, strategy: ProxylessConfig) -> None:
    """A pinned split needs one layer count per device of the topology (a mesh path uses its devices' counts)."""
    counts, devices = strategy.max_layers_per_device, [d.name for d in exp.topology.devices]
    if strategy.split == "pinned" and counts is not None and len(counts) != len(devices):
        raise ConfigError(f"{len(counts)} layer counts given for {len(devices)} devices; give one per device, in "
                          f"the order of topology.devices ({', '.join(devices)})", file=exp.path,
                          field="strategy.max_layers_per_device")


# --- morphism ------------------------------------------------------------------------------------


def _run_morphism(exp: Experiment, strategy: MorphismConfig, seed: int, run_dir: Path,
                  ctx: TrialContext) -> SearchOutcome:
    from jmsnas.strategies.morphism import run_morphism

    return run_morphism(exp, strategy, seed, run_dir, progress=False, teacher_dir=ctx.teacher_dir,
                        runner=ctx.runner, report=ctx.report)


def _smoke_morphism(strategy: MorphismConfig) -> dict[str, Any]:
    """One iteration of at most two one-epoch children, a one-epoch teacher."""
    return {"iterations": 1, "children": min(strategy.children, 2), "child_epochs": 1,
            "teacher": strategy.teacher.model_copy(update={"epochs": 1})}


def _check_morphism(exp: Experiment, strategy: MorphismConfig) -> None:
    from jmsnas.strategies.teacher_check import check_teacher

    check_teacher(exp, strategy)


# --- random --------------------------------------------------------------------------------------


def _run_random(exp: Experiment, strategy: RandomConfig, seed: int, run_dir: Path,
                ctx: TrialContext) -> SearchOutcome:
    from jmsnas.strategies.random_search import run_random

    return run_random(exp, strategy, seed, run_dir, progress=False, report=ctx.report)


def _smoke_random(strategy: RandomConfig) -> dict[str, Any]:
    """At most two one-epoch candidates."""
    return {"num_candidates": min(strategy.num_candidates, 2), "sample_epochs": 1}


#: Every search strategy by ``strategy.name``, in the order the docs list them.
STRATEGIES: dict[str, StrategyKind] = {
    "proxyless": StrategyKind("proxyless", ProxylessConfig, _run_proxyless, _smoke_proxyless,
                              length_field="epochs", check=_check_proxyless),
    "morphism": StrategyKind("morphism", MorphismConfig, _run_morphism, _smoke_morphism, length_field="iterations",
                             extra_reports=2, parallel_field="parallel_children", check=_check_morphism),
    "random": StrategyKind("random", RandomConfig, _run_random, _smoke_random, length_field="num_candidates"),
}
