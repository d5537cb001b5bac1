"""The candidate table of the JMSNAS search space (paper 003, Sec. III-A, "Search Space"), without torch.

Every searchable layer picks one of 13 candidates: a MobileNetV2 inverted residual (MBConv) with
kernel 3, 5 or 7 and expansion ratio 3 or 6, each with or without a shortcut connection, or the
identity (which lets the search shorten the network).

Candidate name grammar (the only place it is written down)::

    mb_k{K}_e{E}[_sc]   MBConv, depthwise kernel K (3, 5, 7), expansion ratio E (3, 6);
                        the ``_sc`` suffix adds the residual shortcut ``y = x + f(x)``
    identity            ``y = x``

``identity`` and the ``_sc`` variants need an unchanged tensor shape, so they are only
``allowed`` on layers with ``in_channels == out_channels`` and ``stride == 1``.

The modules (`jmsnas.space.ops`) work on 1-D signals (``dims=1``: Conv1d / BatchNorm1d, tensors ``[N, C, L]``) and
2-D images (``dims=2``: Conv2d / BatchNorm2d, tensors ``[N, C, H, W]``). Convolutions use
``padding = kernel_size // 2`` and no bias (a BatchNorm follows each one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dims = Literal[1, 2]
OpKind = Literal["mbconv", "identity"]

KERNEL_SIZES: tuple[int, ...] = (3, 5, 7)
EXPANSIONS: tuple[int, ...] = (3, 6)


def conv_output_size(in_size: tuple[int, ...], kernel_size: int, stride: int) -> tuple[int, ...]:
    """Spatial size after a convolution with ``padding = kernel_size // 2``.

    Args:
        in_size: input spatial size, ``(L,)`` or ``(H, W)``.
        kernel_size: kernel size (the same along every axis).
        stride: stride (the same along every axis).
    """
    pad = kernel_size // 2
    return tuple((s + 2 * pad - kernel_size) // stride + 1 for s in in_size)


@dataclass(frozen=True)
class CandidateOp:
    """One entry of the candidate registry.

    Args:
        name: the candidate name (see the module docstring for the grammar).
        kind: ``"mbconv"`` or ``"identity"``.
        kernel_size: depthwise kernel size; ``None`` for the identity.
        expansion: expansion ratio; ``None`` for the identity.
        shortcut: whether the op adds its input to its output.
    """

    name: str
    kind: OpKind
    kernel_size: int | None = None
    expansion: int | None = None
    shortcut: bool = False

    @property
    def needs_same_shape(self) -> bool:
        """True when the op only works where input and output shapes are equal."""
        return self.kind == "identity" or self.shortcut


def _make_candidates() -> dict[str, CandidateOp]:
    ops: dict[str, CandidateOp] = {}
    for k in KERNEL_SIZES:
        for e in EXPANSIONS:
            for sc in (False, True):
                name = f"mb_k{k}_e{e}" + ("_sc" if sc else "")
                ops[name] = CandidateOp(name, "mbconv", kernel_size=k, expansion=e, shortcut=sc)
    ops["identity"] = CandidateOp("identity", "identity")
    return ops


CANDIDATES: dict[str, CandidateOp] = _make_candidates()
"""All 13 candidates of paper 003, in a fixed order (kernel, expansion, shortcut, then identity)."""


def allowed(name: str, in_channels: int, out_channels: int, stride: int) -> bool:
    """Whether candidate ``name`` can be placed on a layer of this shape.

    Args:
        name: a key of ``CANDIDATES``.
        in_channels: channels entering the layer.
        out_channels: channels leaving the layer.
        stride: the layer's stride.

    Returns:
        False for ``identity`` and ``_sc`` candidates on layers that change the shape, else True.

    Raises:
        KeyError: ``name`` is not a candidate.
    """
    op = CANDIDATES[name]
    return not op.needs_same_shape or (in_channels == out_channels and stride == 1)
