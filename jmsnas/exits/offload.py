"""Offloading what the client is unsure of, paper 000 (ESAI) eqs. (6) and (7), as counts.

One client exit, eq. (6)::

    acc = (T_N + S_P) / S_T
    T_N = # kept on the client (certainty > s) and right there,   S_P = # sent and right at the server

Two client exits, eq. (7)::

    acc = (T_N1 + T_N2 + S_P) / S_T
    T_N1 = # answered at exit 1 (u1 > s1) and right,   T_N2 = # answered at exit 2 (u1 <= s1, u2 > s2) and right

The paper's "true negative" wording does not matter: these are counts. "The server" is whatever
classifies a sent sample: a separate model on the raw input (ESAI), or the rest of the split network
(jmsnas's chain); only its per-sample correctness enters. The sweep is exact: every distinct
operating point of ``keep = certainty > s`` is one of ``s in {0} U {certainties}``, so the search
sees all of them, and its counts come from cumulative sums over the samples sorted by certainty.

The threshold is chosen on validation by an objective: the best overall accuracy, optionally with
at most a given share sent or a mean latency cap (``client_ms`` for every sample plus
``offload_ms`` for each one sent). Ties go to the smaller share sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

__all__ = ["OffloadPoint", "OffloadSweep", "choose_threshold", "offload_sweep", "overall_accuracy",
           "two_exit_accuracy", "two_exit_grid"]


@dataclass(frozen=True)
class OffloadPoint:
    """Eq. (6) at one ``du_threshold``: counts, fractions and the subset accuracies."""

    du_threshold: float
    total: int
    kept: int
    kept_correct: int
    sent: int
    sent_correct: int

    @property
    def overall_acc(self) -> float:
        return (self.kept_correct + self.sent_correct) / self.total

    @property
    def offload_fraction(self) -> float:
        return self.sent / self.total

    @property
    def client_acc_kept(self) -> float:
        return self.kept_correct / self.kept if self.kept else float("nan")

    @property
    def server_acc_sent(self) -> float:
        return self.sent_correct / self.sent if self.sent else float("nan")

    def mean_latency_ms(self, client_ms: float, offload_ms: float) -> float:
        return client_ms + self.offload_fraction * offload_ms

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self) | {"overall_acc": self.overall_acc, "offload_fraction": self.offload_fraction,
                               "client_acc_kept": self.client_acc_kept, "server_acc_sent": self.server_acc_sent}


def _arrays(certainty, client_correct, server_correct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = np.asarray(certainty, dtype=np.float64)
    c = np.asarray(client_correct, dtype=bool)
    s = np.asarray(server_correct, dtype=bool)
    if not (u.ndim == c.ndim == s.ndim == 1 and len(u) == len(c) == len(s) and len(u) > 0):
        raise ValueError(f"need three 1-D arrays of one non-zero length, got {u.shape}, {c.shape}, {s.shape}")
    return u, c, s


def overall_accuracy(certainty, client_correct, server_correct, du_threshold: float) -> OffloadPoint:
    """Eq. (6) at one threshold: keep where ``certainty > du_threshold``, send the rest."""
    u, c, s = _arrays(certainty, client_correct, server_correct)
    keep = u > du_threshold
    return OffloadPoint(float(du_threshold), len(u), int(keep.sum()), int((keep & c).sum()), int((~keep).sum()),
                        int((~keep & s).sum()))


@dataclass(frozen=True)
class OffloadSweep:
    """Eq. (6) at every threshold in ``thresholds`` (ascending): integer counts per threshold."""

    thresholds: np.ndarray
    total: int
    kept: np.ndarray
    kept_correct: np.ndarray
    sent_correct: np.ndarray

    def point(self, i: int) -> OffloadPoint:
        return OffloadPoint(float(self.thresholds[i]), self.total, int(self.kept[i]), int(self.kept_correct[i]),
                            int(self.total - self.kept[i]), int(self.sent_correct[i]))

    @property
    def overall_acc(self) -> np.ndarray:
        return (self.kept_correct + self.sent_correct) / self.total

    @property
    def offload_fraction(self) -> np.ndarray:
        return (self.total - self.kept) / self.total


def offload_sweep(certainty, client_correct, server_correct, thresholds=None) -> OffloadSweep:
    """Eq. (6) for every threshold (default: 0, every distinct certainty, and 1: all operating points)."""
    u, c, s = _arrays(certainty, client_correct, server_correct)
    grid = np.unique(np.concatenate([[0.0, 1.0], u])) if thresholds is None else np.sort(np.asarray(thresholds, float))
    order = np.argsort(u, kind="stable")
    us, cs, ss = u[order], c[order], s[order]
    sent = np.searchsorted(us, grid, side="right")  # samples with certainty <= s are sent
    c_cum = np.concatenate([[0], np.cumsum(cs)])
    s_cum = np.concatenate([[0], np.cumsum(ss)])
    return OffloadSweep(grid, len(u), len(u) - sent, c_cum[-1] - c_cum[sent], s_cum[sent])


def choose_threshold(certainty, client_correct, server_correct, *,
                     objective: Literal["max_accuracy", "max_offload", "max_latency"] = "max_accuracy",
                     max_offload_fraction: float = 1.0, max_mean_latency_ms: float | None = None,
                     client_ms: float = 0.0, offload_ms: float = 0.0) -> OffloadPoint:
    """The validation operating point the objective picks (ties: the smaller share sent, then the lower s).

    ``max_accuracy``: the best eq. (6) accuracy. ``max_offload``: the best with at most
    ``max_offload_fraction`` sent. ``max_latency``: the best whose mean latency (``client_ms`` +
    share sent x ``offload_ms``) is at most ``max_mean_latency_ms``. With no feasible point the one
    sending the least is returned (s = 0, everything kept, is always the least).
    """
    sweep = offload_sweep(certainty, client_correct, server_correct)
    frac = sweep.offload_fraction
    ok = np.ones(len(frac), dtype=bool)
    if objective == "max_offload":
        ok = frac <= max_offload_fraction + 1e-12
    elif objective == "max_latency":
        if max_mean_latency_ms is None:
            raise ValueError("objective 'max_latency' needs max_mean_latency_ms")
        ok = client_ms + frac * offload_ms <= max_mean_latency_ms + 1e-12
    if not ok.any():
        return sweep.point(int(np.argmin(frac)))
    score = np.where(ok, sweep.kept_correct + sweep.sent_correct, -1)
    best = np.flatnonzero(score == score.max())
    return sweep.point(int(best[np.argmin(frac[best])]))


@dataclass(frozen=True)
class TwoExitPoint:
    """Eq. (7) at ``(s1, s2)``: counts per exit and at the server."""

    s1: float
    s2: float
    total: int
    exit1: int
    exit1_correct: int
    exit2: int
    exit2_correct: int
    sent: int
    sent_correct: int

    @property
    def overall_acc(self) -> float:
        return (self.exit1_correct + self.exit2_correct + self.sent_correct) / self.total


def two_exit_accuracy(u1, c1, u2, c2, server_correct, s1: float, s2: float) -> TwoExitPoint:
    """Eq. (7) at one ``(s1, s2)``: exit 1 answers where ``u1 > s1``, exit 2 where not and ``u2 > s2``."""
    u1, c1, sc = _arrays(u1, c1, server_correct)
    u2, c2, _ = _arrays(u2, c2, server_correct)
    a1 = u1 > s1
    a2 = ~a1 & (u2 > s2)
    sent = ~a1 & ~a2
    return TwoExitPoint(float(s1), float(s2), len(u1), int(a1.sum()), int((a1 & c1).sum()), int(a2.sum()),
                        int((a2 & c2).sum()), int(sent.sum()), int((sent & sc).sum()))


def two_exit_grid(u1, c1, u2, c2, server_correct, s1_grid, s2_grid) -> dict[str, np.ndarray]:
    """Eq. (7) over the grid ``s1_grid x s2_grid``: ``overall_acc``, ``f_exit1``, ``f_exit2``, ``f_server``
    (each ``[len(s1_grid), len(s2_grid)]``) and the counts behind them."""
    u1, c1, sc = _arrays(u1, c1, server_correct)
    u2, c2, _ = _arrays(u2, c2, server_correct)
    s1 = np.asarray(s1_grid, dtype=np.float64)[:, None, None]
    s2 = np.asarray(s2_grid, dtype=np.float64)[None, :, None]
    a1 = u1[None, None, :] > s1                      # [G1, 1, N]
    a2 = ~a1 & (u2[None, None, :] > s2)              # [G1, G2, N]
    sent = ~a1 & ~a2
    a1 = np.broadcast_to(a1, a2.shape)
    counts = {"exit1": a1.sum(-1), "exit1_correct": (a1 & c1).sum(-1), "exit2": a2.sum(-1),
              "exit2_correct": (a2 & c2).sum(-1), "sent": sent.sum(-1), "sent_correct": (sent & sc).sum(-1)}
    n = len(u1)
    return counts | {"overall_acc": (counts["exit1_correct"] + counts["exit2_correct"] + counts["sent_correct"]) / n,
                     "f_exit1": counts["exit1"] / n, "f_exit2": counts["exit2"] / n, "f_server": counts["sent"] / n}
