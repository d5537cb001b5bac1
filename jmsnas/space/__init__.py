"""The search space: candidate ops, search-space files, discrete architectures and MAC counts.

- ``ops``: the 13 candidates of JMSNAS (paper 003, Sec. III-A), stem and head modules.
- ``spec``: search-space YAML files (``load_search_space``) and their searchable layers.
- ``arch``: ``ArchSpec`` (one candidate per layer, JSON round trip) and ``build_model``.
- ``macs``: analytic MAC / parameter counts and ``OpDescriptor`` features for latency models.
- ``morph``: function-preserving network morphisms on an ``ArchSpec`` and its weights (paper 000).
"""

from __future__ import annotations

from jmsnas.space.arch import ArchNet, ArchSpec, BlockSpec, HeadSpec, StemSpec, build_model
from jmsnas.space.macs import (
    OpDescriptor,
    arch_descriptors,
    arch_macs,
    count_macs,
    describe_block,
    describe_head,
    describe_op,
    describe_stem,
    op_macs,
)
from jmsnas.space.ops import (
    CANDIDATES,
    CandidateOp,
    Head,
    Identity,
    MBConv,
    MergeBlock,
    SkipProjection,
    Stem,
    allowed,
    build_op,
)
from jmsnas.space.spec import LayerSlot, SearchSpace, SearchSpaceConfig, load_search_space

__all__ = [
    "CANDIDATES",
    "ArchNet",
    "ArchSpec",
    "BlockSpec",
    "CandidateOp",
    "Head",
    "HeadSpec",
    "Identity",
    "LayerSlot",
    "MBConv",
    "MergeBlock",
    "OpDescriptor",
    "SearchSpace",
    "SearchSpaceConfig",
    "SkipProjection",
    "Stem",
    "StemSpec",
    "allowed",
    "arch_descriptors",
    "arch_macs",
    "build_model",
    "build_op",
    "count_macs",
    "describe_block",
    "describe_head",
    "describe_op",
    "describe_stem",
    "load_search_space",
    "op_macs",
]
