"""Splitting a network over devices: which device runs which contiguous run of layers.

- ``chain``: the exact split on a chain of devices (paper 003 eq. (1)) by dynamic programming,
  ``best_chain_split``, and ``chain_latency``, eq. (1) for given boundaries with gradients.
"""

from __future__ import annotations

from jmsnas.partition.chain import ChainSplit, best_chain_split, chain_latency, sent_bytes

__all__ = ["ChainSplit", "best_chain_split", "chain_latency", "sent_bytes"]
