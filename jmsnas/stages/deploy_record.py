"""The ``deploy.json`` artifact: what the deploy stage did to one chosen network, typed.

``DeployRecord`` is what ``stages.deploy.deploy_choice`` returns and writes, and what a resumed run,
``python -m jmsnas.deploy`` and the report read back (``DeployRecord.load``, which names the file and
the field of anything it cannot take).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from jmsnas.io import load_artifact, write_json

#: Sections present only when their stage ran (absent from ``deploy.json`` otherwise, never null).
_OPTIONAL = ("exits", "verify", "latency_measured", "bundle", "payload_sweep")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CutRecord(_Record):
    """One cut of the deployed plan: who sends, what compressor, the bytes sent and their link time."""

    src: str
    dst: str
    compressor: str
    payload_bytes: float
    link_ms: float


class ExitsSummary(_Record):
    """The early exits of the deployed network (``exits/result.json`` has everything else)."""

    dir: str
    units: list[int]
    thresholds: list[float]
    devices: list[str]
    test_acc: float
    acc_change_pp: float
    mac_reduction: float
    mean_latency_ms: float
    worst_latency_ms: float
    termination: list[float]


class DeployRecord(_Record):
    """``deploy.json``: the plan, the accuracy split vs unsplit, baselines, exits, verification, measurements.

    ``verify`` (``runtime.verify``), ``latency_measured`` (``runtime.measure``) and ``baselines``
    (``plan.baselines``) are the dictionaries their modules produce.
    """

    arch: str
    plan: str
    predicted_latency_ms: float
    devices: list[str]
    boundaries: list[int]
    cuts: list[CutRecord]
    mean_latency_ms: float | None
    input_bytes: float
    test_acc_unsplit: float
    test_acc_split: float
    acc_change_pp: float
    notes: list[str]
    baselines: list[dict[str, Any]]
    exits: ExitsSummary | None = None
    verify: dict[str, Any] | None = None
    latency_measured: dict[str, Any] | None = None
    bundle: str | None = None
    payload_sweep: list[dict[str, Any]] | None = None  # ``stages.payload_sweep``: bytes vs test accuracy per cut
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        """What ``deploy.json`` holds (sections of stages that did not run left out)."""
        return self.model_dump(exclude={k for k in _OPTIONAL if getattr(self, k) is None})

    def save(self, path: str | Path) -> None:
        """Write ``deploy.json`` atomically."""
        write_json(Path(path), self.to_dict(), newline=True)

    @classmethod
    def load(cls, path: str | Path) -> DeployRecord:
        """Read a ``deploy.json``.

        Raises:
            ArtifactError: a missing or unreadable file, or a field that is unknown or of the wrong type
                (named with the file).
        """
        return load_artifact(path, cls.model_validate)
