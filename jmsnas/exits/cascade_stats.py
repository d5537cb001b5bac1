"""What a threshold search works on and returns: a cascade's calibration statistics, the objective, the result.

``CascadeStats`` holds, per calibration sample, every exit's confidence (``confidence``: the top-1
softmax probability, paper 004 eq. (5)) and whether it is right; ``Objective`` is the user's
trade-off; ``CascadeMetrics`` one threshold setting's figures; ``ThresholdSearch`` a whole search
(``thresholds.search_thresholds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 softmax probability of each row, computed in float64 (paper 004 eq. (2))."""
    return torch.softmax(logits.detach().double(), dim=-1).amax(dim=-1)


@dataclass(frozen=True)
class Objective:
    """What the threshold search optimises (see the module docstring)."""

    kind: Literal["weighted", "accuracy_budget"] = "weighted"
    efficiency_weight: float = 0.9
    accuracy_weight: float = 0.1
    accuracy_budget_pp: float = 0.5
    accuracy_z: float = 0.0


@dataclass(frozen=True)
class CascadeStats:
    """Calibration outputs of a cascade with K early exits.

    Args:
        confidence: ``[K, N]`` top-1 probability of each early exit on each sample.
        correct: ``[K, N]`` whether each early exit's prediction is right.
        final_correct: ``[N]`` whether the final classifier is right.
        exit_cost: ``[K]`` cost of a sample that leaves at exit k (backbone up to k, heads up to k).
        final_cost: cost of a sample that reaches the final classifier (every head included).
        reference_cost: cost of the original network.
        reference_correct: ``[N]`` whether the original network is right (defaults to ``final_correct``).
    """

    confidence: np.ndarray
    correct: np.ndarray
    final_correct: np.ndarray
    exit_cost: np.ndarray
    final_cost: float
    reference_cost: float
    reference_correct: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("confidence", "correct", "final_correct", "exit_cost"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        ref = self.final_correct if self.reference_correct is None else self.reference_correct
        object.__setattr__(self, "reference_correct", np.asarray(ref, dtype=np.float64))
        if self.confidence.ndim != 2 or self.correct.shape != self.confidence.shape:
            raise ValueError(f"confidence and correct must both be [K, N], got {self.confidence.shape}, "
                             f"{self.correct.shape}")
        if self.final_correct.shape != (self.confidence.shape[1],) or self.exit_cost.shape != (self.num_exits,):
            raise ValueError("final_correct must be [N] and exit_cost [K]")

    @property
    def num_exits(self) -> int:
        return int(self.confidence.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.final_correct.shape[0])

    @property
    def reference_accuracy(self) -> float:
        return float(np.mean(self.reference_correct))

    def disagreements(self) -> tuple[np.ndarray, np.ndarray]:
        """``([K, N], [N])``: whether each exit / the final classifier and the original differ in being right."""
        ref = self.reference_correct
        return np.abs(self.correct - ref[None, :]), np.abs(self.final_correct - ref)


@dataclass(frozen=True)
class CascadeMetrics:
    """One threshold configuration, evaluated exactly on the calibration samples.

    ``termination`` and ``exit_accuracy`` have K + 1 entries (the final classifier last);
    ``exit_accuracy`` is the accuracy of the samples that leave there (nan if none does);
    ``loss_bound_pp`` is the loss plus ``accuracy_z`` standard errors (what the budget checks).
    """

    thresholds: tuple[float, ...]
    indices: tuple[int, ...]
    accuracy: float
    mean_cost: float
    termination: tuple[float, ...]
    exit_accuracy: tuple[float, ...]
    gain: float
    loss_pp: float
    loss_bound_pp: float
    objective: float
    feasible: bool


@dataclass
class ThresholdSearch:
    """The result of ``search_thresholds``: the chosen configuration and how it was found."""

    best: CascadeMetrics
    method: Literal["exhaustive", "bellman_ford"]
    bellman_ford: CascadeMetrics | None
    exhaustive: CascadeMetrics | None
    grids: list[np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """Objective of Bellman-Ford's choice minus the exhaustive optimum's (>= 0; None without both)."""
        if self.exhaustive is None or self.bellman_ford is None:
            return None
        return self.bellman_ford.objective - self.exhaustive.objective

    @property
    def gain_gap_pp(self) -> float | None:
        """Exhaustive optimum's cost reduction minus Bellman-Ford's, in percentage points."""
        if self.exhaustive is None or self.bellman_ford is None:
            return None
        return 100.0 * (self.exhaustive.gain - self.bellman_ford.gain)
