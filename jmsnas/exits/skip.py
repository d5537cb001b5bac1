"""Algorithm 1 of paper 004: exits the Exit Predictor says to skip are not computed; their costs, eqs. (3)/(4).

Two forms of the same rule:

- ``route``: vectorised over samples from precomputed per-exit confidences (every exit computed for
  every sample, as in the threshold searches): which exits each sample computes, where it leaves and
  what its on-device work costs. Costs are per-part numbers in any unit (MACs for eqs. (3)/(4), device
  milliseconds for eq. (11)).
- ``SkippingCascade``: the cascade that runs for real, batched with per-sample masks. The predictor runs
  first on the raw input; exit n's head runs only on the samples still running whose score
  ``s_n >= gamma_n``; those whose confidence then reaches ``lambda_n`` leave. ``MacCounter`` around its
  forward counts what eq. (4) predicts (``tests/exits/test_skip.py``).

Three rules share the code (``mode``):

- ``ee``: every exit computed for a running sample (eq. (3); no predictor).
- ``ep``: exit n computed where ``s_n >= gamma_n`` (eq. (4); the predictor's cost is paid by every sample).
- ``oracle``: exit n computed only where it will be confident (``s_n := 1[c_n >= lambda_n]``,
  ``gamma_n := 0.5``, paper 004 §V-C), with no predictor cost: the bound the predictor aims at.

On-device means the N-1 early exits and the backbone up to the last of them (paper 004 §II-A: the
partition point is the last early exit); the final segment is the server's and is not counted.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from jmsnas.exits.cascade import EarlyExitNet, _scatter
from jmsnas.exits.decision import exit_score

MODES = ("ee", "ep", "oracle")

__all__ = ["MODES", "ExitParts", "Routing", "route", "choose_gamma", "SkippingCascade"]


@dataclass(frozen=True)
class ExitParts:
    """Per-sample costs of the on-device parts: backbone segments l_1..l_K, exit heads e_1..e_K, predictor."""

    segments: Sequence[float]
    heads: Sequence[float]
    predictor: float = 0.0

    def __post_init__(self) -> None:
        if len(self.segments) != len(self.heads):
            raise ValueError(f"one segment before each of the {len(self.heads)} exits, got {len(self.segments)}")


@dataclass(frozen=True)
class Routing:
    """What each sample did: ``alive`` [B, K] reached exit n, ``computed`` [B, K] ran its head, ``exit_index``
    [B] (K: the final classifier, reached over the link)."""

    alive: np.ndarray
    computed: np.ndarray
    exit_index: np.ndarray
    uses_predictor: bool

    @property
    def num_exits(self) -> int:
        return self.alive.shape[1]

    @property
    def reaches_final(self) -> np.ndarray:
        return self.exit_index == self.num_exits

    def device_cost(self, parts: ExitParts) -> np.ndarray:
        """Per-sample on-device cost: the integrand of eq. (3) (``ee``) or eq. (4) (``ep``, ``oracle``)."""
        seg = np.asarray(parts.segments, dtype=np.float64)
        head = np.asarray(parts.heads, dtype=np.float64)
        cost = self.alive @ seg + self.computed @ head
        return cost + (parts.predictor if self.uses_predictor else 0.0)

    def accuracy(self, correct: np.ndarray) -> float:
        """Share right, given ``correct`` [B, K + 1] per exit (the final classifier last)."""
        return float(np.mean(correct[np.arange(len(self.exit_index)), self.exit_index]))

    def skip_fraction(self) -> np.ndarray:
        """Per exit, the share of all samples that reached it and did not compute it."""
        return np.mean(self.alive & ~self.computed, axis=0)


def route(confidences: np.ndarray, thresholds: Sequence[float], *, mode: str = "ee",
          scores: np.ndarray | None = None, gammas: Sequence[float] | None = None) -> Routing:
    """Algorithm 1 on precomputed confidences ``c`` [B, K] (and predictor scores ``s`` [B, K] for ``ep``)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    c = np.asarray(confidences, dtype=np.float64)
    lam = np.asarray(thresholds, dtype=np.float64)
    confident = c >= lam
    if mode == "ee":
        wants = np.ones_like(confident)
    elif mode == "oracle":
        wants = confident
    else:
        if scores is None or gammas is None:
            raise ValueError("mode 'ep' needs the predictor's scores and the gammas")
        wants = np.asarray(scores, dtype=np.float64) >= np.asarray(gammas, dtype=np.float64)
    batch, k = c.shape
    alive = np.ones((batch, k), dtype=bool)
    computed = np.zeros((batch, k), dtype=bool)
    running = np.ones(batch, dtype=bool)
    exit_index = np.full(batch, k, dtype=np.int64)
    for n in range(k):
        alive[:, n] = running
        computed[:, n] = running & wants[:, n]
        leave = computed[:, n] & confident[:, n]
        exit_index[leave] = n
        running &= ~leave
    return Routing(alive, computed, exit_index, uses_predictor=mode == "ep")


def choose_gamma(confidences: np.ndarray, scores: np.ndarray, thresholds: Sequence[float], parts: ExitParts, *,
                 grid: Sequence[float] = tuple(np.round(np.linspace(0.0, 0.95, 20), 4)),
                 max_extra_final: float = 0.02) -> tuple[list[float], float]:
    """Paper 004's γ criterion (Fig. 7): the lowest mean eq. (4) cost with less than ``max_extra_final``
    (absolute share of samples) more reaching the final exit than the same-λ network without the
    predictor. On a validation split. Returns the γs and their mean cost."""
    base = route(confidences, thresholds).reaches_final.mean()
    best: tuple[float, list[float]] | None = None
    for gammas in itertools.product(grid, repeat=np.asarray(confidences).shape[1]):
        r = route(confidences, thresholds, mode="ep", scores=scores, gammas=gammas)
        if r.reaches_final.mean() - base >= max_extra_final:
            continue
        cost = float(r.device_cost(parts).mean())
        if best is None or cost < best[0] - 1e-12:
            best = (cost, [float(g) for g in gammas])
    assert best is not None  # gamma = 0 everywhere reproduces the network without the predictor
    return best[1], best[0]


class SkippingCascade(nn.Module):
    """``EarlyExitNet`` run by Algorithm 1: the predictor first, then only the exits it lets through.

    Args:
        net: the early-exit network (its thresholds are the λs; its decision units, if any, give c_n).
        predictor: the Exit Predictor (logits; scores are their sigmoid).
        gammas: one per early exit.
    """

    def __init__(self, net: EarlyExitNet, predictor: nn.Module, gammas: Sequence[float]) -> None:
        super().__init__()
        if len(gammas) != net.num_exits:
            raise ValueError(f"need one gamma per early exit ({net.num_exits}), got {len(gammas)}")
        self.net = net
        self.predictor = predictor
        self.gammas = [float(g) for g in gammas]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(logits [B, P], exit index [B], computed [B, K])``; index K is the final classifier."""
        net, batch = self.net, x.shape[0]
        scores = torch.sigmoid(self.predictor(x))
        active = torch.arange(batch, device=x.device)
        exit_index = torch.full((batch,), net.num_exits, dtype=torch.long, device=x.device)
        computed = torch.zeros((batch, net.num_exits), dtype=torch.bool, device=x.device)
        out: torch.Tensor | None = None
        h = x
        for k, head in enumerate(net.heads):
            h = net.segments[k](h)[0]
            run = scores[active, k] >= self.gammas[k]
            rows = active[run]
            computed[rows, k] = True
            if rows.numel():
                logits = head(h[run])
                leave = exit_score(logits, net.decision_units[k]) >= net.thresholds[k]
                out = _scatter(out, batch, rows[leave], logits[leave])
                exit_index[rows[leave]] = k
                stay = torch.ones_like(run)
                stay[run.nonzero().squeeze(1)[leave]] = False
                h, active = h[stay], active[stay]
            if active.numel() == 0:
                assert out is not None
                return out, exit_index, computed
        final = net.segments[-1](h)[0]
        return _scatter(out, batch, active, final), exit_index, computed

