"""The check of the morphism search's teacher that ``--check`` runs: no torch, no Lightning.

`jmsnas.strategies.teacher` builds and trains the teacher; this only says whether the experiment's
``strategy.teacher`` can be one (timm and torchvision are imported only for a library model).
"""

from __future__ import annotations

from jmsnas.config import Experiment, MorphismConfig
from jmsnas.errors import ConfigError

FIELD = "strategy.teacher.model"


def library_of(name: str) -> str | None:
    """``"timm"`` or ``"torchvision"`` when that library knows model ``name``, else None."""
    import timm
    import torchvision

    if timm.is_model(name):
        return "timm"
    if name in torchvision.models.list_models():
        return "torchvision"
    return None


def check_teacher(exp: Experiment, strategy: MorphismConfig) -> None:
    """Fail now, naming the field, on a teacher this experiment's morphism ``strategy`` cannot have.

    Raises:
        ConfigError: a timm/torchvision teacher for 1-D inputs, an unknown model, a missing checkpoint.
    """
    cfg = strategy.teacher
    if cfg.model != "wide":
        if exp.search_space.dims != 2:
            raise ConfigError(f"{cfg.model!r} is a timm/torchvision model: images only; this search space has "
                              f"{exp.search_space.dims}-D inputs, use 'wide'", file=exp.path, field=FIELD)
        if library_of(cfg.model) is None:
            raise ConfigError(f"no timm or torchvision model is called {cfg.model!r}; use 'wide' or a name from "
                              "timm.list_models() / torchvision.models.list_models()", file=exp.path, field=FIELD)
    if cfg.checkpoint is not None and not cfg.checkpoint.is_file():
        raise ConfigError(f"teacher checkpoint {cfg.checkpoint} not found", file=exp.path,
                          field="strategy.teacher.checkpoint")
