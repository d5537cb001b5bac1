"""A mixed operation with binary gates: one searchable layer of the supernet (paper 003 §IV-A).

Each layer holds its R candidate modules and R architecture logits ``alpha``; ``p = softmax(alpha)``
is the probability of picking each candidate (paper 003, "Evaluation Strategy"). The gates
``g`` are one-hot: the layer's output is ``sum_i g_i o_i(x)`` with ``g_i = 1`` for the chosen path.

There is no global mode flag (unlike ProxylessNAS's ``MixedEdge.MODE``): the caller says in every
``forward`` call which path(s) to run.

Weight step (paper 003 Fig. 4(b), weights): ``i = sample_one()`` draws one path from ``p``;
``forward(x, i)`` runs only that candidate, so training costs one path of memory.

Architecture step (Lemma 1, eq. (5)), in ProxylessNAS's two-path form:

1. ``pair = sample_two()``: two distinct paths drawn from ``p`` without replacement, then the
   *active* one drawn from ``p~``, ``p`` renormalised over the pair; ``pair = (active, inactive)``.
2. ``forward(x, pair)`` (= ``arch_forward``): computes only those two candidates and returns
   ``g_a o_a(x) + g_b o_b(x)`` with ``g = (1, 0)`` held in a leaf tensor that requires grad, so the
   value equals the active path's output and ``backward`` yields ``dL/dg_j`` for both paths.
3. ``set_alpha_grad(pair)``: eq. (5) restricted to the pair (the other paths are masked as if
   they did not exist): ``dL/dalpha_i += sum_j dL/dg_j p~_j (delta_ij - p~_i)``, i, j in the pair.
4. The optimizer steps ``alpha``; then ``rescale_alpha(pair, old_alpha)`` shifts the two updated
   logits by one offset so that their total probability mass (hence every unsampled path's
   probability) is what it was before the step.

Step 4 assumes the optimizer leaves entries with zero gradient untouched: plain SGD, or Adam with
``betas=(0, 0.999)`` as ProxylessNAS uses. Other loss terms (the expected latency of §IV-B) may
give every logit a gradient; those changes are kept, only the pair is shifted.

How the pair estimator relates to the full eq. (5) estimator (all R gates, one path active) is
worked out and checked in ``tests/space/test_space_mixed.py``: it is not equal, and in general not
proportional, to it. At uniform ``p`` and for a loss linear in ``g`` both point the same way and
differ by the factor ``R / (2 (R - 1))``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from jmsnas.space.entangled import EntangledCandidate


class MixedOp(nn.Module):
    """One searchable layer: R candidate modules, their logits ``alpha`` and binary gates.

    Args:
        candidates: the R candidate modules; all map the same input shape to the same output shape.
        shared: weights the candidates share (`jmsnas.space.entangled.SharedMBConv`), registered here once.

    Attributes:
        candidates: the candidate modules, in order.
        shared: the shared weights, or None.
        alpha: architecture logits, shape ``[R]``, initialised to 0 (uniform ``p``).
        gates: the gate tensor of the last ``arch_forward`` (``None`` before one, or after
            ``set_alpha_grad`` consumed it); entry k belongs to ``gate_paths[k]``.
        gate_paths: the paths of the last ``arch_forward``, active path first.
    """

    def __init__(self, candidates: Sequence[nn.Module], shared: nn.Module | None = None) -> None:
        super().__init__()
        if not candidates:
            raise ValueError("a MixedOp needs at least one candidate")
        self.candidates = nn.ModuleList(candidates)
        self.shared = shared
        self.alpha = nn.Parameter(torch.zeros(len(candidates)))
        self.gates: torch.Tensor | None = None
        self.gate_paths: tuple[int, ...] | None = None

    @property
    def num_candidates(self) -> int:
        """R, the number of candidates."""
        return len(self.candidates)

    def probs(self) -> torch.Tensor:
        """``p = softmax(alpha)``, differentiable in ``alpha``."""
        return torch.softmax(self.alpha, dim=0)

    def entropy(self) -> torch.Tensor:
        """Entropy ``-sum_i p_i log p_i`` of the path distribution (nats), differentiable."""
        log_p = torch.log_softmax(self.alpha, dim=0)
        return -(log_p.exp() * log_p).sum()

    def export_candidate(self, i: int) -> nn.Module:
        """A standalone copy of candidate ``i`` with its weights (an entangled one: its slices), no shared storage."""
        cand = self.candidates[int(i)]
        return cand.export() if isinstance(cand, EntangledCandidate) else copy.deepcopy(cand)

    def argmax(self) -> int:
        """Index of the most probable candidate (the first one on ties)."""
        return int(torch.argmax(self.alpha.detach()).item())

    def sample_one(self, generator: torch.Generator | None = None) -> int:
        """Draw one path ``i ~ p`` (weight step).

        Args:
            generator: a CPU random generator; ``None`` uses torch's global one.
        """
        p = self.probs().detach().cpu()
        return int(torch.multinomial(p, 1, generator=generator).item())

    def sample_two(self, generator: torch.Generator | None = None) -> tuple[int, ...]:
        """Draw the ``(active, inactive)`` pair of an architecture step (ProxylessNAS).

        Two distinct paths are drawn from ``p`` without replacement; the active one is then drawn
        from ``p`` renormalised over the two. With a single candidate the result is ``(0,)``.

        Args:
            generator: a CPU random generator; ``None`` uses torch's global one.
        """
        p = self.probs().detach().cpu()
        if len(p) == 1:
            return (0,)
        pair = torch.multinomial(p, 2, replacement=False, generator=generator)
        first = int(torch.multinomial(p[pair], 1, generator=generator).item())
        return int(pair[first]), int(pair[1 - first])

    def forward(self, x: torch.Tensor, active: Sequence[int] | int) -> torch.Tensor:
        """Run the layer.

        Args:
            x: the input.
            active: an ``int`` runs that single path (weight step, no gates); a sequence runs
                ``arch_forward(x, active)`` (architecture step, first entry is the active path).
        """
        if isinstance(active, Sequence):
            return self.arch_forward(x, active)
        return self.candidates[int(active)](x)

    def arch_forward(self, x: torch.Tensor, pair: Sequence[int]) -> torch.Tensor:
        """Gated forward over the sampled paths only; stores the gates for ``set_alpha_grad``.

        The gates are a fresh leaf tensor ``g = (1, 0, ...)`` that requires grad; the output
        ``sum_k g_k o_{pair[k]}(x)`` equals the active path's output, and after ``backward``
        ``gates.grad[k] = dL/dg_{pair[k]}``. Only the listed candidates are computed.

        Args:
            x: the input.
            pair: distinct path indices, the active one first (usually from ``sample_two``).
        """
        paths = self._check_paths(pair)
        gates = torch.zeros(len(paths), dtype=x.dtype, device=x.device)
        gates[0] = 1.0
        gates.requires_grad_(True)
        self.gates, self.gate_paths = gates, paths
        out = gates[0] * self.candidates[paths[0]](x)
        for k in range(1, len(paths)):
            out = out + gates[k] * self.candidates[paths[k]](x)
        return out

    def set_alpha_grad(self, pair: Sequence[int]) -> None:
        """Accumulate eq. (5), restricted to ``pair``, into ``alpha.grad`` (after ``backward``).

        With ``p~`` the softmax of ``alpha`` over the pair and ``h_j = dL/dg_j``:
        ``dL/dalpha_i += sum_j h_j p~_j (delta_ij - p~_i) = p~_i (h_i - sum_j p~_j h_j)`` for i in
        the pair; the other logits get nothing. Consumes the stored gates.

        Args:
            pair: the paths passed to the last ``arch_forward``, in the same order.

        Raises:
            RuntimeError: no ``arch_forward`` with this pair, or no ``backward`` since.
        """
        paths = self._check_paths(pair)
        if self.gates is None or self.gate_paths != paths:
            raise RuntimeError(f"set_alpha_grad({list(paths)}) needs a previous arch_forward with the same paths")
        if self.gates.grad is None:
            raise RuntimeError("set_alpha_grad needs backward() through the arch_forward output first")
        idx = torch.tensor(paths, device=self.alpha.device)
        p_sub = torch.softmax(self.alpha.detach()[idx], dim=0)
        h = self.gates.grad.detach().to(p_sub)
        grad = p_sub * (h - (p_sub * h).sum())
        if self.alpha.grad is None:
            self.alpha.grad = torch.zeros_like(self.alpha)
        self.alpha.grad[idx] += grad
        self.gates, self.gate_paths = None, None

    @torch.no_grad()
    def rescale_alpha(self, pair: Sequence[int], old_alpha: torch.Tensor) -> None:
        """Shift the pair's logits after the optimizer step so unsampled probabilities stay put.

        ``offset = log sum_{i in pair} exp(alpha_i) - log sum_{i in pair} exp(old_alpha_i)`` is
        subtracted from both logits of the pair: their total ``exp`` mass, hence the softmax
        normaliser and every other path's probability, is as before the step (ProxylessNAS's
        ``rescale_updated_arch_param``), while the ratio within the pair keeps the update.

        Args:
            pair: the sampled paths.
            old_alpha: a copy of ``alpha`` taken before the optimizer step (shape ``[R]``).
        """
        paths = self._check_paths(pair)
        idx = torch.tensor(paths, device=self.alpha.device)
        old = old_alpha.detach().to(self.alpha)[idx]
        offset = torch.logsumexp(self.alpha[idx], dim=0) - torch.logsumexp(old, dim=0)
        self.alpha[idx] -= offset

    def _check_paths(self, pair: Sequence[int]) -> tuple[int, ...]:
        paths = tuple(int(i) for i in pair)
        if not paths or len(set(paths)) != len(paths) or not all(0 <= i < len(self.candidates) for i in paths):
            raise ValueError(f"paths must be distinct indices in [0, {len(self.candidates)}), got {list(paths)}")
        return paths
