"""Early exits that run for real: per-sample masks, exited samples stop computing.

``EarlyExitNet`` runs the backbone segment by segment. After each segment its exit head classifies
the samples still running; those whose confidence (top-1 softmax, in float64) reaches the exit's
threshold keep these logits and are removed from the batch, so the next segment computes only on
the others. Nothing is computed for a sample after it leaves, which ``MacCounter`` measures: it
counts the MACs of the convolutions and linear layers actually executed (forward hooks on the
real batches), to be compared with ``predicted_macs`` (paper 004 eq. (3) per sample).

In eval mode every sample is computed independently (BatchNorm uses running statistics), so a
sample's logits do not depend on which other samples share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from jmsnas.exits.decision import DecisionUnit, exit_score
from jmsnas.exits.graph import BlockGraph
from jmsnas.space.macs import MacCounter

__all__ = ["EarlyExitNet", "MacCounter"]


class EarlyExitNet(nn.Module):
    """A backbone cut at its exits, one head and threshold per exit.

    Args:
        segments: K + 1 modules in the ``partition.split`` calling convention (one tensor in,
            a one-tensor tuple out); segment k ends at exit k, the last one in the classifier.
        heads: K exit heads.
        thresholds: K confidence thresholds.
        locations: the exits' unit indices (recorded, for reports and export).
        segment_macs: per-sample MACs of each segment (for ``predicted_macs``).
        head_macs: per-sample MACs of each head.
        decision_units: per exit, a decision unit (paper 000) whose certainty is compared with the
            threshold instead of the top-1 probability, or None (all None: today's rule).
    """

    def __init__(self, segments: Sequence[nn.Module], heads: Sequence[nn.Module], thresholds: Sequence[float],
                 locations: Sequence[int] = (), segment_macs: Sequence[int] = (),
                 head_macs: Sequence[int] = (), decision_units: Sequence[DecisionUnit | None] = ()) -> None:
        super().__init__()
        if len(segments) != len(heads) + 1 or len(thresholds) != len(heads):
            raise ValueError(f"need K + 1 segments and K thresholds for K heads, got {len(segments)} segments, "
                             f"{len(heads)} heads, {len(thresholds)} thresholds")
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(heads)
        self.thresholds = [float(t) for t in thresholds]
        self.locations = [int(v) for v in locations]
        self.segment_macs = [int(v) for v in segment_macs]
        self.head_macs = [int(v) for v in head_macs]
        self.decision_units = list(decision_units) or [None] * len(heads)
        if len(self.decision_units) != len(heads):
            raise ValueError(f"need one decision unit (or None) per head, got {len(self.decision_units)}")

    @classmethod
    def build(cls, graph: BlockGraph, locations: Sequence[int], heads: Sequence[nn.Module],
              thresholds: Sequence[float], decision_units: Sequence[DecisionUnit | None] = ()) -> EarlyExitNet:
        """The cascade of ``graph``'s model with exits at ``locations`` (sharing the model's parameters)."""
        cuts = [0, *locations, graph.num_units]
        seg_macs = [graph.macs_between(lo, hi) for lo, hi in zip(cuts, cuts[1:], strict=False)]
        head_macs = [getattr(h, "macs", 0) for h in heads]
        return cls(graph.segments(cuts), heads, thresholds, locations, seg_macs, head_macs, decision_units).eval()

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def exit_costs(self) -> list[int]:
        """Per-sample MACs of a sample that leaves at each exit, the final classifier last (paper 004 eq. (3))."""
        costs, total = [], 0
        for k in range(self.num_exits):
            total += self.segment_macs[k] + self.head_macs[k]
            costs.append(total)
        return [*costs, total + self.segment_macs[-1]]

    def predicted_macs(self, exit_index: torch.Tensor) -> int:
        """MACs the cascade should have executed for samples that left at ``exit_index``."""
        costs = torch.tensor(self.exit_costs(), dtype=torch.long)
        return int(costs[exit_index.long()].sum())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logits [B, P], exit index [B])``; index K is the final classifier."""
        batch = x.shape[0]
        active = torch.arange(batch, device=x.device)
        exit_index = torch.full((batch,), self.num_exits, dtype=torch.long, device=x.device)
        out: torch.Tensor | None = None
        h = x
        for k, head in enumerate(self.heads):
            h = self.segments[k](h)[0]
            logits = head(h)
            leave = exit_score(logits, self.decision_units[k]) >= self.thresholds[k]
            out = _scatter(out, batch, active[leave], logits[leave])
            exit_index[active[leave]] = k
            h, active = h[~leave], active[~leave]
            if active.numel() == 0:
                assert out is not None
                return out, exit_index
        final = self.segments[-1](h)[0]
        return _scatter(out, batch, active, final), exit_index

    def all_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit (the final classifier last) for every sample, without leaving early."""
        outs, h = [], x
        for k, head in enumerate(self.heads):
            h = self.segments[k](h)[0]
            outs.append(head(h))
        return [*outs, self.segments[-1](h)[0]]


def _scatter(out: torch.Tensor | None, batch: int, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    if out is None:
        out = values.new_zeros((batch, values.shape[-1]))
    out[rows] = values
    return out
