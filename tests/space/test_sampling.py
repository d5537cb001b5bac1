"""spread_specs: architectures from a space's smallest to its largest, against brute-force MAC counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy.stats import spearmanr

from jmsnas.space.arch import ArchSpec
from jmsnas.space.macs import arch_macs
from jmsnas.space.sampling import ranked_candidates, spread_specs
from jmsnas.space.spec import load_search_space

SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "mbconv13_1d.yaml"


def _total(space, choices) -> int:
    return sum(arch_macs(ArchSpec.from_choices(space, list(choices), 10)))


def test_ranked_candidates_order_each_layer_by_its_own_macs() -> None:
    space = load_search_space(SPACE)
    slots = space.layers()
    base = [slot.candidates[-1] for slot in slots]  # another base than the ranking's: the order must not depend on it
    for k, names in enumerate(ranked_candidates(space)):
        assert sorted(names) == sorted(slots[k].candidates)
        macs = [_total(space, [*base[:k], n, *base[k + 1:]]) for n in names]
        assert macs == sorted(macs)


def test_spread_specs_span_the_space_and_grow_with_their_index() -> None:
    space = load_search_space(SPACE)
    slots = space.layers()
    # the extremes: the all-min and all-max networks, each layer's smallest / largest candidate found on its own
    lo = [min(s.candidates, key=lambda n, k=k: _total(space, [*[c.candidates[0] for c in slots[:k]], n,
                                                                *[c.candidates[0] for c in slots[k + 1:]]]))
          for k, s in enumerate(slots)]
    hi = [max(s.candidates, key=lambda n, k=k: _total(space, [*[c.candidates[0] for c in slots[:k]], n,
                                                                *[c.candidates[0] for c in slots[k + 1:]]]))
          for k, s in enumerate(slots)]
    smallest, largest = _total(space, lo), _total(space, hi)
    specs = spread_specs(space, 40, seed=3, num_classes=10)
    macs = [sum(arch_macs(s)) for s in specs]
    span = largest - smallest
    assert min(macs) <= smallest + 0.25 * span and max(macs) >= largest - 0.25 * span
    assert spearmanr(range(len(macs)), macs).statistic > 0.8
    assert [s.blocks for s in spread_specs(space, 40, seed=3, num_classes=10)] == [s.blocks for s in specs]


def test_spread_specs_without_jitter_are_the_rank_quantiles() -> None:
    space = load_search_space(SPACE)
    ranked = ranked_candidates(space)
    specs = spread_specs(space, 3, seed=0, num_classes=10, jitter=0.0)
    for i, spec in enumerate(specs):
        q = (i + 0.5) / 3
        expected = ArchSpec.from_choices(space, [names[round(q * (len(names) - 1))] for names in ranked], 10)
        assert spec.blocks == expected.blocks
    with pytest.raises(ValueError, match="n >= 1"):
        spread_specs(space, 0, seed=0, num_classes=10)


def test_profiler_calibration_networks_are_half_uniform_half_spread() -> None:
    from jmsnas.latency.profiler import calibration_specs

    space = load_search_space(SPACE)
    specs = calibration_specs(space, 20)
    assert len(specs) == 20 and [s.blocks for s in calibration_specs(space, 20)] == [s.blocks for s in specs]
    ranked = ranked_candidates(space)
    smallest = _total(space, [names[0] for names in ranked])
    largest = _total(space, [names[-1] for names in ranked])
    spread = [sum(arch_macs(s)) for s in specs[10:]]
    # the spread half reaches both ends of the space's range (uniform draws stay near its middle)
    assert min(spread) <= smallest + 0.3 * (largest - smallest) and max(spread) >= largest - 0.3 * (largest - smallest)
    assert len(calibration_specs(space, 1)) == 1 and calibration_specs(space, 0) == []
