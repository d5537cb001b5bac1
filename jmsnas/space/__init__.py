"""The search space: candidate ops, search-space files, discrete architectures and MAC counts.

- ``candidates``: the 13 candidates of JMSNAS (paper 003, Sec. III-A) and where each is allowed (no torch).
- ``ops``: their modules, stem and head.
- ``spec``: search-space YAML files (``load_search_space``) and their searchable layers.
- ``arch``: ``ArchSpec`` (one candidate per layer, JSON round trip) and ``build_model``.
- ``macs``: analytic MAC / parameter counts and ``OpDescriptor`` features for latency models.
- ``morph``: function-preserving network morphisms on an ``ArchSpec`` and its weights (paper 000).
"""

from __future__ import annotations

_WHERE = {  # name -> module: imported on first use, so reading a search space imports no torch
    "ArchNet": "jmsnas.space.arch",
    "ArchSpec": "jmsnas.space.arch",
    "BlockSpec": "jmsnas.space.arch",
    "CANDIDATES": "jmsnas.space.candidates",
    "CandidateOp": "jmsnas.space.candidates",
    "Head": "jmsnas.space.ops",
    "HeadSpec": "jmsnas.space.arch",
    "Identity": "jmsnas.space.ops",
    "LayerSlot": "jmsnas.space.spec",
    "MBConv": "jmsnas.space.ops",
    "MergeBlock": "jmsnas.space.ops",
    "OpDescriptor": "jmsnas.space.macs",
    "SearchSpace": "jmsnas.space.spec",
    "SearchSpaceConfig": "jmsnas.space.spec",
    "SkipProjection": "jmsnas.space.ops",
    "Stem": "jmsnas.space.ops",
    "StemSpec": "jmsnas.space.arch",
    "allowed": "jmsnas.space.candidates",
    "arch_descriptors": "jmsnas.space.macs",
    "arch_macs": "jmsnas.space.macs",
    "build_model": "jmsnas.space.arch",
    "build_op": "jmsnas.space.ops",
    "count_macs": "jmsnas.space.macs",
    "describe_block": "jmsnas.space.macs",
    "describe_head": "jmsnas.space.macs",
    "describe_op": "jmsnas.space.macs",
    "describe_stem": "jmsnas.space.macs",
    "load_search_space": "jmsnas.space.spec",
    "op_macs": "jmsnas.space.macs",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
