"""The supernet: the full-tree search space of paper 003 Fig. 4(a) as one module.

``Supernet`` = fixed ``stem`` -> one ``MixedOp`` per searchable layer -> fixed ``head``. Its verbs
(Once-for-All style) are few and explicit: ``sample_paths`` draws one path (weight step) or an
``(active, inactive)`` pair (architecture step) per layer, ``forward(x, paths)`` runs them,
``derive`` / ``to_arch_spec`` read off the most probable network, and ``export_subnet`` returns a
standalone ``ArchNet`` carrying the supernet's trained weights (``preserve_weight=True``).

``expected_layer_latency`` is paper 003 §IV-B: ``E[tau_n^m] = sum_i p_i U_n^m(v_i)``, the
expected execution latency of layer n on device m, differentiable in ``alpha``; it replaces
``tau_n^m`` in eq. (1) / (2) to give the latency term of eq. (4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from jmsnas.space.arch import ArchNet, ArchSpec, build_model
from jmsnas.space.mixed import MixedOp
from jmsnas.space.ops import Head, Stem, build_op
from jmsnas.space.spec import LayerSlot, SearchSpace

Paths = Sequence[int | Sequence[int]]
"""Per searchable layer, one path index (weight step) or an active-first pair (architecture step)."""


class Supernet(nn.Module):
    """All candidate networks of a search space, sharing weights.

    Args:
        space: the search space.
        num_classes: classifier outputs.
        input_shape: input shape without batch; default: the search space's.

    Attributes:
        stem: the fixed first layer.
        layers: one ``MixedOp`` per searchable layer, candidates in ``slots[n].candidates`` order.
        head: the fixed last layer.
        slots: the search space's layers (shapes and candidate names).
    """

    def __init__(self, space: SearchSpace, num_classes: int, input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        cfg = space.config
        self.space = space
        self.num_classes = num_classes
        self.input_shape = space.resolve_input_shape(input_shape)
        self.slots: list[LayerSlot] = space.layers(self.input_shape)
        self.stem = Stem(self.input_shape[0], cfg.stem.channels, cfg.stem.kernel_size, cfg.stem.stride, cfg.dims)
        self.layers = nn.ModuleList(
            MixedOp([build_op(name, s.in_channels, s.out_channels, s.stride, cfg.dims) for name in s.candidates])
            for s in self.slots
        )
        self.head = Head(self.slots[-1].out_channels, cfg.head.channels, num_classes, cfg.head.dropout, cfg.dims)

    def forward(self, x: torch.Tensor, paths: Paths) -> torch.Tensor:
        """Run the chosen path(s) of every searchable layer (see ``MixedOp.forward``).

        Args:
            x: input batch.
            paths: per layer an ``int`` (single path) or a sequence (gated paths, active first).
        """
        if len(paths) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} path entries (one per searchable layer), got {len(paths)}")
        x = self.stem(x)
        for layer, active in zip(self.layers, paths, strict=True):
            x = layer(x, active)
        return self.head(x)

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

    def to_arch_spec(self, num_classes: int | None = None, paths: Sequence[int] | None = None) -> ArchSpec:
        """The ``ArchSpec`` of ``paths`` (default: the derived, most probable network).

        Args:
            num_classes: classifier outputs; default: the supernet's.
            paths: one path index per layer; default: ``argmax`` of every layer.
        """
        choices = self.derive() if paths is None else self.choices(paths)
        n_cls = self.num_classes if num_classes is None else num_classes
        return ArchSpec.from_choices(self.space, choices, n_cls, self.input_shape)

    def export_subnet(self, paths: Sequence[int] | None = None) -> ArchNet:
        """A standalone ``ArchNet`` for ``paths`` holding copies of the supernet's weights.

        Stem, chosen candidates and head (parameters and BatchNorm buffers) are copied, so the
        result computes exactly ``self(x, paths)`` (Once-for-All ``get_active_subnet(preserve_weight=True)``).

        Args:
            paths: one path index per layer; default: ``argmax`` of every layer.
        """
        paths = [layer.argmax() for layer in self.layers] if paths is None else [int(i) for i in paths]
        net = build_model(self.to_arch_spec(paths=paths))
        net.stem.load_state_dict(self.stem.state_dict())
        for block, layer, i in zip(net.blocks, self.layers, paths, strict=True):
            block.load_state_dict(layer.candidates[i].state_dict())
        net.head.load_state_dict(self.head.state_dict())
        ref = next(self.parameters())
        return net.to(device=ref.device, dtype=ref.dtype).train(self.training)

    def expected_layer_latency(self, latency_tables: Sequence[torch.Tensor]) -> torch.Tensor:
        """``E[tau_n^m] = sum_i p_i U_n[i, m]`` for every layer n and device m (paper 003 §IV-B).

        Args:
            latency_tables: per layer a constant ``U_n`` of shape ``[R_n, M]``: the latency (ms) of
                each candidate of layer n on each of the M devices.

        Returns:
            Tensor ``[N, M]``, differentiable in every layer's ``alpha``.
        """
        if len(latency_tables) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} latency tables (one per layer), got {len(latency_tables)}")
        rows = []
        for n, (layer, table) in enumerate(zip(self.layers, latency_tables, strict=True)):
            p = layer.probs()
            u = torch.as_tensor(table).to(p)
            if u.dim() != 2 or u.shape[0] != layer.num_candidates:
                raise ValueError(f"layer {n}: latency table must be [{layer.num_candidates}, M], got {list(u.shape)}")
            rows.append(p @ u)
        return torch.stack(rows)
