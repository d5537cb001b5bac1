"""The tiny 2-D ArchSpec the partition tests split, compress and export."""

from __future__ import annotations

from jmsnas.space.arch import ArchSpec, BlockSpec, HeadSpec, StemSpec


def tiny_arch_spec() -> ArchSpec:
    """Stem 3->4, a stride-2 MBConv 4->8 and a shortcut MBConv 8->8, head 8 -> 5 classes, on 3x16x16."""
    return ArchSpec(
        dims=2,
        input_shape=(3, 16, 16),
        num_classes=5,
        stem=StemSpec(channels=4, kernel_size=3, stride=1),
        blocks=(BlockSpec.of("mb_k3_e3", 4, 8, 2), BlockSpec.of("mb_k3_e3_sc", 8, 8, 1)),
        head=HeadSpec(channels=8),
    )
