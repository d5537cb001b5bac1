"""The one place that turns an ``Experiment`` into the objects the library packages take.

The packages below the stages (``plan``, ``compress``, ``export``, ``runtime``, ``exits``, ``space``,
``latency``) never see the experiment: they take latency models, compressors, a data module and
their own config section. The stages (``tune``, ``strategies``, ``stages``) build those here.
"""

from __future__ import annotations

from typing import Any

from jmsnas.compress.quantize import Compressor
from jmsnas.config import Experiment
from jmsnas.data import JmsnasDataModule
from jmsnas.latency.model import LatencyModel
from jmsnas.latency.model import latency_models as _latency_models
from jmsnas.runtime.measure import profile_meta


def latency_models(exp: Experiment) -> dict[str, LatencyModel]:
    """The latency model of every device of the experiment (its measured profile, or analytic)."""
    return _latency_models(exp.topology, exp.config.profiles_dir)


def cut_compressors(exp: Experiment, dims: int) -> list[Compressor]:
    """The experiment's ``partition.compressors`` as ``Compressor``s, one per cut in path order.

    Args:
        dims: 1 or 2, the spatial dimensions of the network (a learned compressor's estimated code
            keeps ``1 / 2**dims`` of the positions).
    """
    part = exp.config.partition
    if part is None:
        return []
    return [Compressor(c.kind, c.bits, c.channel_fraction, 1.0 / 2**dims) for c in part.compressors]


def datamodule(exp: Experiment) -> JmsnasDataModule:
    """The experiment's data module, set up (splits made)."""
    dm = JmsnasDataModule(exp.config.dataset, seed=exp.config.seed)
    dm.setup()
    return dm


def profile_metas(exp: Experiment) -> dict[str, dict[str, Any] | None]:
    """Per device, what its measured profile's ``NAME.json`` says (None for an analytic device)."""
    return {d.name: profile_meta(d, exp.config.profiles_dir) for d in exp.topology.devices}
