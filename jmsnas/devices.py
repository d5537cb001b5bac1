"""Where jmsnas's own training loops run: a torch device from the experiment's ``trainer`` section.

Lightning Trainers take ``trainer.accelerator`` as it is; the hand-written loops of the deploy
stage (exit heads, decision units, compressors) take the ``torch.device`` that ``torch_device``
derives from it. Each loop accepts ``device=None`` (train where the modules already are, the old
behaviour) or a device: ``on_device`` moves its modules there for the loop and back where they were
afterwards, so what it returns is where the rest of the pipeline (export, numpy) expects it, and
``to_device`` moves each batch. On the CPU both are no-ops: the same tensors, the same numbers.

This module imports torch, so the config modules (``trainer_config``) must not import it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from jmsnas.errors import ConfigError

if TYPE_CHECKING:
    from jmsnas.trainer_config import TrainerConfig

__all__ = ["DeviceLike", "as_device", "module_device", "on_device", "to_device", "torch_device"]

DeviceLike = torch.device | str | None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def torch_device(trainer: TrainerConfig) -> torch.device:
    """The device of ``trainer.accelerator``: cpu; gpu / cuda -> cuda; mps; auto -> cuda, else mps, else cpu.

    Raises:
        ConfigError: gpu / cuda without CUDA, or mps without MPS, naming ``trainer.accelerator`` and what is
            valid on this machine.
    """
    accel = trainer.accelerator
    cuda, mps = torch.cuda.is_available(), _mps_available()
    if accel == "cpu":
        return torch.device("cpu")
    if accel == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if accel in ("gpu", "cuda") and cuda:
        return torch.device("cuda")
    if accel == "mps" and mps:
        return torch.device("mps")
    valid = ", ".join(["cpu", "auto", *(["gpu", "cuda"] if cuda else []), *(["mps"] if mps else [])])
    what = "CUDA" if accel in ("gpu", "cuda") else "MPS"
    raise ConfigError(f"{accel!r} needs {what}, but torch sees no {what} device here; valid on this machine: {valid}",
                      field="trainer.accelerator")


def as_device(device: DeviceLike) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None: keep modules and tensors where they are)."""
    return None if device is None else torch.device(device)


def module_device(module: nn.Module) -> torch.device | None:
    """The device of ``module``'s first parameter or buffer (None when it has neither)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return None if first is None else first.device


@contextmanager
def on_device(device: DeviceLike, *modules: nn.Module) -> Iterator[torch.device | None]:
    """``modules`` moved to ``device`` for the block, each back on the device it was on afterwards.

    Yields the device (None: nothing moves). Modules that share parameters may both be given.
    """
    dev = as_device(device)
    if dev is None:
        yield None
        return
    homes = [(m, module_device(m)) for m in modules]
    for m in modules:
        m.to(dev)
    try:
        yield dev
    finally:
        for m, home in homes:
            if home is not None:
                m.to(home)


def to_device(value: Any, device: DeviceLike) -> Any:
    """A tensor, or a tuple / list of them (nested), moved to ``device`` (None: unchanged; other values pass)."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):  # non_blocking only towards an accelerator: a copy to the CPU must be done
        return value.to(device, non_blocking=torch.device(device).type != "cpu")
    if isinstance(value, tuple | list):
        return type(value)(to_device(v, device) for v in value)
    return value
