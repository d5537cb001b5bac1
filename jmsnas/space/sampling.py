"""Architectures drawn across a search space's whole range of sizes.

Drawing every layer's candidate uniformly at random gives networks of nearly one size: over 13 or so
layers the big and small choices average out (on ``mbconv13_1d`` the cpu-1t model put 50 such nets at
0.45-0.68 ms, most within 3 % of 0.66 ms). A latency model that ranks those correctly only has to get
a few per cent right, and timing noise of 1 % already caps the rank correlation a measurement can show
(Spearman ρ 0.84 between two timings of the same 50 nets that agreed within ±5 %). A search, though,
picks among networks from the smallest to the largest the space holds. `spread_specs` draws those:
network i of n leans towards each layer's larger candidates with strength (i + 0.5) / n, ranked by the
candidate's MACs, with some randomness per layer so that the networks are not all alike.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from jmsnas.space.arch import ArchSpec
from jmsnas.space.macs import arch_macs

if TYPE_CHECKING:
    from jmsnas.space.spec import SearchSpace

__all__ = ["ranked_candidates", "spread_specs"]


def ranked_candidates(space: SearchSpace, input_shape: tuple[int, ...] | None = None) -> list[list[str]]:
    """Per searchable layer, its candidates from the fewest MACs to the most (ties by name).

    A candidate's MACs are those of the network with it on that layer and every other layer at its first
    candidate: the other layers' shapes do not depend on the choice, so this ranks the candidate itself.
    """
    slots = space.layers(input_shape)
    base = [slot.candidates[0] for slot in slots]
    ranked = []
    for k, slot in enumerate(slots):
        def total(name: str, k: int = k) -> int:
            choices = [*base[:k], name, *base[k + 1:]]
            return sum(arch_macs(ArchSpec.from_choices(space, choices, 10, input_shape)))

        ranked.append(sorted(slot.candidates, key=lambda name: (total(name), name)))
    return ranked


def spread_specs(space: SearchSpace, n: int, seed: int, num_classes: int,
                 input_shape: tuple[int, ...] | None = None, jitter: float = 0.15) -> list[ArchSpec]:
    """``n`` architectures from the smallest towards the largest of ``space``.

    Network i picks, on each layer, the candidate at rank ``q (m - 1) + e`` of the layer's m candidates
    ranked by MACs, with ``q = (i + 0.5) / n`` and ``e`` Gaussian with standard deviation ``jitter * m``
    (rounded, clipped to the ranks). Deterministic in ``seed``.
    """
    if n < 1:
        raise ValueError(f"need n >= 1 networks, got {n}")
    rng = random.Random(seed)
    ranked = ranked_candidates(space, input_shape)
    specs = []
    for i in range(n):
        q = (i + 0.5) / n
        choices = []
        for names in ranked:
            rank = round(q * (len(names) - 1) + rng.gauss(0.0, jitter * len(names)))
            choices.append(names[min(max(rank, 0), len(names) - 1)])
        specs.append(ArchSpec.from_choices(space, choices, num_classes, input_shape))
    return specs
