"""``COMPRESSORS``: every compressor kind jmsnas knows, by the name ``partition.compressors[k].kind`` uses.

A plain dict, as the design asks: the planner, the deploy stage and export look a kind up here
instead of comparing strings. An entry says what the kind is (learned or calibrated, lossless or not,
where it may sit) and, for learned kinds, how it is fitted at a cut (``fit``). This module imports no
other compressor module at import time, so any of them may read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CompressorKind:
    """One compressor kind.

    Attributes:
        name: the kind, as ``plan.json`` and the experiment name it.
        learned: it has trained weights (its codec modules come from ``fit``, not from parameters).
        lossless: what arrives equals what was sent.
        first_cut_only: it replaces the sending device's layers, so only the first device may send it.
        fit: learned kinds: ``fit(segments, k, plan, input_shape, config, model, train_x, epochs, device=None)``
            -> ``(segments, (encoder, decoder), params, note | None)`` (``compress.fit``; ``device``: where it
            trains, None: where the segments are).
    """

    name: str
    learned: bool
    lossless: bool
    first_cut_only: bool = False
    fit: Callable[..., tuple[Any, ...]] | None = None


def _fit_autoencoder(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    from jmsnas.compress.fit import fit_autoencoder_cut

    return fit_autoencoder_cut(*args, **kwargs)


def _fit_distilled(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    from jmsnas.compress.fit import fit_distilled_cut

    return fit_distilled_cut(*args, **kwargs)


COMPRESSORS: dict[str, CompressorKind] = {
    "none": CompressorKind("none", learned=False, lossless=True),
    "quantize": CompressorKind("quantize", learned=False, lossless=False),
    "autoencoder": CompressorKind("autoencoder", learned=True, lossless=False, fit=_fit_autoencoder),
    "distilled_bottleneck": CompressorKind("distilled_bottleneck", learned=True, lossless=False, first_cut_only=True,
                                           fit=_fit_distilled),
}

#: The learned kinds, in registry order.
LEARNED: tuple[str, ...] = tuple(k for k, v in COMPRESSORS.items() if v.learned)
