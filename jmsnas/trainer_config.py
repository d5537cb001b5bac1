"""The experiment's ``trainer`` section: the accelerator, device count and precision of every Lightning Trainer."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from jmsnas.validation import FieldValueError, Strict


def tensorboard_available() -> bool:
    """Lightning's TensorBoardLogger can write here (``tensorboard`` or ``tensorboardX`` is installed)."""
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


class TrainerConfig(Strict):
    """Where and how every Lightning Trainer of a search trains (search, children, candidates, teacher, retraining).

    Passed to ``pl.Trainer(accelerator=, devices=, precision=)``. Under Ray Tune a trial sees only the
    GPUs its ``tune.resources_per_trial.gpu`` reserves, so the two must agree (checked at load). The
    deploy stage's own loops (exit heads, decision units, learned compressors) train on the one torch
    device ``jmsnas.devices.torch_device`` derives from ``accelerator`` (``devices`` and ``precision``
    are Lightning's only).
    """

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = Field(
        "cpu", description="Lightning's accelerator; 'gpu'/'cuda' needs tune.resources_per_trial.gpu > 0")
    devices: PositiveInt = Field(1, description="devices per Trainer (one process; no distributed training)")
    precision: Literal["32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "64-true"] = Field(
        "32", description="Lightning's precision: 32 (float32), 16-mixed / bf16-mixed (automatic mixed precision), ...")

    logger: Literal["csv", "tensorboard"] = Field(
        "csv", description="csv: metrics.csv per stage; tensorboard: also TensorBoard event files in "
        "<stage>/tensorboard/ (needs the tensorboard or tensorboardX package)")

    @model_validator(mode="after")
    def _tensorboard_installed(self) -> TrainerConfig:
        if self.logger == "tensorboard" and not tensorboard_available():
            raise FieldValueError("logger 'tensorboard' needs the tensorboard (or tensorboardX) package: "
                                  "pip install tensorboard, or use 'csv'", "logger")
        return self

    @model_validator(mode="before")
    @classmethod
    def _precision_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("precision"), int):  # YAML `precision: 32`
            data = {**data, "precision": str(data["precision"])}
        return data

    def kwargs(self) -> dict[str, Any]:
        """The ``pl.Trainer`` arguments."""
        return {"accelerator": self.accelerator, "devices": self.devices, "precision": self.precision}
