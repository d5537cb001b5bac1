"""The checks ``jmsnas search --check`` runs on a loaded experiment beyond its schema.

They need neither Ray nor Lightning (``--check`` stays fast): the strategy is one this version
builds, the compressors fit the topology's cuts and the exits.

`check_partition` is also what ``python -m jmsnas.deploy`` runs before the deploy stage
(``jmsnas.stages.deploy`` re-exports it).
"""

from __future__ import annotations

from jmsnas.compress.registry import COMPRESSORS
from jmsnas.config import Experiment
from jmsnas.errors import ConfigError
from jmsnas.strategies.registry import STRATEGIES


def check_stages(exp: Experiment) -> None:
    """Reject a strategy that this version does not implement, naming the field."""
    name = exp.config.strategy.name
    if name not in STRATEGIES:
        raise ConfigError(f"strategy {name!r} is not built in this version of jmsnas; use one of "
                          f"{', '.join(STRATEGIES)}", file=exp.path, field="strategy.name")
    check_branched(exp)


def check_branched(exp: Experiment) -> None:
    """A branched search space (``branches:``) needs a mesh with one branch device per branch, and what is built for it.

    Built: the supernet search (E[T] by eq. (2)), retraining, planning with ``plan_branched`` and export.
    Not yet: the morphism and random searches, a pinned split, learned or quantising compressors at the
    cuts and early exits on branched networks.
    """
    space, topo, cfg = exp.search_space, exp.topology, exp.config
    if not space.is_branched:
        return
    branches = list(topo.branches) if topo.kind == "mesh" else []
    if len(branches) != space.num_branches:
        raise ConfigError(f"search space {space.config.name!r} has {space.num_branches} parallel branches, one per "
                          f"branch device of a mesh; this {topo.kind} has {len(branches)} "
                          f"({', '.join(branches) or '-'})"
                          "; use a mesh with as many branch devices or a sequential search space",
                          file=exp.path, field="search_space")
    if cfg.strategy.name != "proxyless":
        raise ConfigError(f"a branched search space is searched by 'proxyless' only; the {cfg.strategy.name} search "
                          "grows or samples sequential networks", file=exp.path, field="strategy.name")
    if getattr(cfg.strategy, "split", "searched") != "searched":
        raise ConfigError("a pinned split is for sequential networks; on a branched space the split of the chain "
                          "parts is searched (use split: searched)", file=exp.path, field="strategy.split")
    if cfg.exits is not None:
        raise ConfigError("early exits are not built for networks with parallel branches; remove the exits section",
                          file=exp.path, field="exits")
    part = cfg.partition
    for i, c in enumerate(part.compressors if part is not None else ()):
        if c.kind != "none":
            raise ConfigError(f"{c.kind!r} at a cut of a branched network is not built yet (the search prices float32 "
                              "payloads); use 'none'", file=exp.path, field=f"partition.compressors[{i}].kind")


def check_partition(exp: Experiment) -> None:
    """Fail now, naming the field, on compressors the topology has no cut for (or the exits cannot take)."""
    part = exp.config.partition
    if part is None:
        return
    longest = max(len(p) for p in exp.topology.paths()) - 1
    if len(part.compressors) > longest:
        raise ConfigError(f"{len(part.compressors)} compressors given but a plan on this topology has at most "
                          f"{longest} cut(s); give one per cut in chain order", file=exp.path,
                          field="partition.compressors")
    if exp.config.exits is not None:
        for i, c in enumerate(part.compressors):
            if COMPRESSORS[c.kind].learned:
                raise ConfigError(f"{c.kind!r} cannot be combined with early exits yet: training it changes the "
                                  "layers around the cut, which the exit heads and thresholds were calibrated on; "
                                  "use 'quantize' or 'none' here, or remove the exits section",
                                  file=exp.path, field=f"partition.compressors[{i}].kind")
    for i, c in enumerate(part.compressors[1:], start=1):
        if COMPRESSORS[c.kind].first_cut_only:
            raise ConfigError(f"{c.kind} replaces the first device's layers with a student head "
                              "(paper 002), so it can only be the first cut's compressor; use 'autoencoder' here",
                              file=exp.path, field=f"partition.compressors[{i}].kind")
