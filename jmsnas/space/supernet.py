"""The supernet: the full-tree search space of paper 003 Fig. 4(a) as one module.

``Supernet`` = fixed ``stem`` -> one ``MixedOp`` per searchable layer -> fixed ``head``. Its verbs
(Once-for-All style) are few and explicit: ``sample_paths`` draws one path (weight step) or an
``(active, inactive)`` pair (architecture step) per layer, ``forward(x, paths)`` runs them,
``derive`` / ``to_arch_spec`` read off the most probable network, and ``export_subnet`` returns a
standalone ``ArchNet`` carrying the supernet's trained weights (``preserve_weight=True``).

``recalibrate_bn`` re-estimates the BatchNorm statistics of one path before it is evaluated (SPOS,
Once-for-All): weight sharing leaves each BatchNorm with running statistics averaged over every path
that ran through it, which are not the evaluated path's (`jmsnas.strategies.proxyless` has the numbers).

The expected latency of layer n on device m, ``E[tau_n^m] = sum_i p_i U_n^m(v_i)`` (paper 003
§IV-B), is computed from ``probs()`` by ``jmsnas.strategies.expected_latency.ExpectedLatency``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from jmsnas.space.arch import ArchNet, ArchSpec, build_model
from jmsnas.space.branched import BranchedArchSpec, BranchedNet, build_branched, merge_outputs
from jmsnas.space.entangled import entangled_candidates
from jmsnas.space.mixed import MixedOp
from jmsnas.space.ops import Head, Stem, build_op
from jmsnas.space.spec import LayerSlot, SearchSpace

Paths = Sequence[int | Sequence[int]]
"""Per searchable layer, one path index (weight step) or an active-first pair (architecture step)."""


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, n: int) -> int:
    """Re-estimate every BatchNorm's running statistics of ``model`` on ``n`` batches; nothing else changes.

    The running statistics are reset and then accumulated with cumulative averaging (``momentum=None``):
    afterwards ``running_mean`` is the mean of the ``n`` batch means and ``running_var`` the mean of the
    ``n`` unbiased batch variances of each BatchNorm's input, ``num_batches_tracked`` is ``n``. During
    the ``n`` forward passes only the BatchNorm layers are in training mode (dropout is off, as at
    inference); no gradient is taken, so parameters are untouched. Every module's training flag and
    every BatchNorm's momentum are restored afterwards.

    Args:
        model: the network, called as ``model(x)`` (e.g. ``Supernet.export_subnet(paths)``).
        batches: ``(x, ...)`` tuples or input tensors, e.g. a training ``DataLoader``.
        n: how many batches to use (fewer when ``batches`` runs out).

    Returns:
        The number of batches used.

    Raises:
        ValueError: ``n`` < 1 (the statistics would be reset to their defaults).
    """
    if n < 1:
        raise ValueError(f"recalibrate_bn needs at least one batch, got n={n}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    device = next(model.parameters()).device
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        for batch in batches:
            if used >= n:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            used += 1
    finally:
        for m, flag in flags.items():
            m.train(flag)
        for m, momentum in momenta.items():
            m.momentum = momentum
    return used


class Supernet(nn.Module):
    """All candidate networks of a search space, sharing weights.

    Args:
        space: the search space.
        num_classes: classifier outputs.
        input_shape: input shape without batch; default: the search space's.
        weight_sharing: ``entangled`` (default): the MBConv candidates of a layer are slices of one
            shared MBConv (`jmsnas.space.entangled`, which says why); ``separate``: one module each.

    Attributes:
        stem: the fixed first layer.
        layers: one ``MixedOp`` per searchable layer, candidates in ``slots[n].candidates`` order.
        head: the fixed last layer.
        slots: the search space's layers (shapes and candidate names).
    """

    def __init__(self, space: SearchSpace, num_classes: int, input_shape: tuple[int, ...] | None = None,
                 weight_sharing: Literal["entangled", "separate"] = "entangled") -> None:
        super().__init__()
        cfg = space.config
        self.space = space
        self.num_classes = num_classes
        self.input_shape = space.resolve_input_shape(input_shape)
        self.slots: list[LayerSlot] = space.layers(self.input_shape)
        self.stem = Stem(self.input_shape[0], cfg.stem.channels, cfg.stem.kernel_size, cfg.stem.stride, cfg.dims)
        self.layers = nn.ModuleList(self._layer(s, cfg.dims, weight_sharing) for s in self.slots)
        head_in = space.head_input_shape(self.input_shape)[0]
        self.head = Head(head_in, cfg.head.channels, num_classes, cfg.head.dropout, cfg.dims)
        # which layers run where: sequential spaces have one group; branched ones pre, branches, post
        self.groups = {part: [s.index for s in self.slots if s.part == part] for part in dict.fromkeys(
            [s.part for s in self.slots])}

    @staticmethod
    def _layer(slot: LayerSlot, dims: int, weight_sharing: str) -> MixedOp:
        if weight_sharing == "entangled":
            return MixedOp(*entangled_candidates(list(slot.candidates), slot.in_channels, slot.out_channels,
                                                 slot.stride, dims))
        if weight_sharing != "separate":
            raise ValueError(f"weight_sharing must be 'entangled' or 'separate', got {weight_sharing!r}")
        return MixedOp([build_op(n, slot.in_channels, slot.out_channels, slot.stride, dims) for n in slot.candidates])

    def forward(self, x: torch.Tensor, paths: Paths) -> torch.Tensor:
        """Run the chosen path(s) of every searchable layer (see ``MixedOp.forward``).

        Args:
            x: input batch.
            paths: per layer an ``int`` (single path) or a sequence (gated paths, active first).
        """
        if len(paths) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} path entries (one per searchable layer), got {len(paths)}")

        def run(h: torch.Tensor, part: str) -> torch.Tensor:
            for n in self.groups.get(part, ()):
                h = self.layers[n](h, paths[n])
            return h

        x = self.stem(x)
        if not self.space.is_branched:
            return self.head(run(x, "main"))
        x = run(x, "pre")
        x = merge_outputs([run(x, f"branch{b}") for b in range(self.space.num_branches)], self.space.config.merge)
        return self.head(run(x, "post"))

    def sample_paths(self, generator: torch.Generator | None = None, two: bool = False) -> list:
        """Draw paths for every layer.

        Args:
            generator: a CPU random generator; ``None`` uses torch's global one.
            two: False: one path per layer (``list[int]``, weight step); True: an ``(active,
                inactive)`` tuple per layer (``list[tuple[int, ...]]``, architecture step).
        """
        if two:
            return [layer.sample_two(generator) for layer in self.layers]
        return [layer.sample_one(generator) for layer in self.layers]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The logits ``alpha`` of every layer, in layer order."""
        return [layer.alpha for layer in self.layers]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture logit (stem, candidates, head)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def probs(self) -> list[torch.Tensor]:
        """Per layer ``softmax(alpha)``, differentiable."""
        return [layer.probs() for layer in self.layers]

    def set_alpha_grads(self, paths: Sequence[Sequence[int]]) -> None:
        """``MixedOp.set_alpha_grad`` on every layer, after ``backward`` of an architecture step."""
        for layer, pair in zip(self.layers, paths, strict=True):
            layer.set_alpha_grad(pair)

    def rescale_alphas(self, paths: Sequence[Sequence[int]], old_alphas: Sequence[torch.Tensor]) -> None:
        """``MixedOp.rescale_alpha`` on every layer, after the optimizer step.

        Args:
            paths: the pairs of the architecture step.
            old_alphas: copies of ``arch_parameters()`` taken before the optimizer step.
        """
        for layer, pair, old in zip(self.layers, paths, old_alphas, strict=True):
            layer.rescale_alpha(pair, old)

    def derive(self) -> list[str]:
        """The most probable candidate's name on every layer."""
        return [slot.candidates[layer.argmax()] for slot, layer in zip(self.slots, self.layers, strict=True)]

    def choices(self, paths: Sequence[int]) -> list[str]:
        """Candidate names of single-path indices ``paths``."""
        if len(paths) != len(self.slots):
            raise ValueError(f"expected {len(self.slots)} path indices, got {len(paths)}")
        return [slot.candidates[int(i)] for slot, i in zip(self.slots, paths, strict=True)]

    def to_arch_spec(self, num_classes: int | None = None,
                     paths: Sequence[int] | None = None) -> ArchSpec | BranchedArchSpec:
        """The ``ArchSpec`` (a ``BranchedArchSpec`` for a branched space) of ``paths`` (default: the derived network).

        Args:
            num_classes: classifier outputs; default: the supernet's.
            paths: one path index per layer; default: ``argmax`` of every layer.
        """
        choices = self.derive() if paths is None else self.choices(paths)
        n_cls = self.num_classes if num_classes is None else num_classes
        cls = BranchedArchSpec if self.space.is_branched else ArchSpec
        return cls.from_choices(self.space, choices, n_cls, self.input_shape)

    def export_subnet(self, paths: Sequence[int] | None = None) -> ArchNet | BranchedNet:
        """A standalone ``ArchNet`` (``BranchedNet`` if branched) for ``paths``, with copies of the supernet's weights.

        Stem, chosen candidates and head (parameters and BatchNorm buffers) are copied, so the
        result computes exactly ``self(x, paths)`` (Once-for-All ``get_active_subnet(preserve_weight=True)``).

        Args:
            paths: one path index per layer; default: ``argmax`` of every layer.
        """
        paths = [layer.argmax() for layer in self.layers] if paths is None else [int(i) for i in paths]
        spec = self.to_arch_spec(paths=paths)
        if isinstance(spec, BranchedArchSpec):
            net = build_branched(spec)
            stem, head = net.pre[0], net.post[-1]
            blocks = [*net.pre[1:], *(b for branch in net.branches for b in branch), *net.post[:-1]]
        else:
            net = build_model(spec)
            stem, head, blocks = net.stem, net.head, list(net.blocks)
        stem.load_state_dict(self.stem.state_dict())
        for block, layer, i in zip(blocks, self.layers, paths, strict=True):
            block.load_state_dict(layer.export_candidate(i).state_dict())
        head.load_state_dict(self.head.state_dict())
        ref = next(self.parameters())
        return net.to(device=ref.device, dtype=ref.dtype).train(self.training)
