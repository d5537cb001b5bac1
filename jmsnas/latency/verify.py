"""``jmsnas profile --verify NAME``: re-time a sample of a profile's rows on this machine and say whether it holds."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from jmsnas.errors import JmsnasError
from jmsnas.latency.guard import DEFAULT_TOLERANCE, ContentionGuard
from jmsnas.latency.ops import build_module, example_input
from jmsnas.latency.profiler import CHUNK, chunks, progress_bar, read_rows, time_guarded
from jmsnas.latency.timing import best_of_rounds

#: The fewest rounds ``--verify`` re-times in by default.
VERIFY_ROUNDS = 5


@dataclass(frozen=True)
class DriftReport:
    """How a profile's rows compare with the same ops re-timed now (ratio now / profile)."""

    n_ops: int
    median_ratio: float
    within_10pct: float
    holds: bool
    speed_index_profile_ms: float | None = None
    speed_index_now_ms: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def drift_report(rows: Sequence[dict[str, str]], now_ms: Sequence[float], *, tolerance: float = 0.10,
                 min_within: float = 0.8, speed_index_profile_ms: float | None = None,
                 speed_index_now_ms: float | None = None) -> DriftReport:
    """Compare profile rows with their re-timed latencies.

    The profile *holds* when the median ratio is within ``tolerance`` of 1 and at least ``min_within``
    of the rows are within ``tolerance`` each (a quiet machine of the profile's kind re-times ~98 % of
    rows within ±10 %).
    """
    if not rows or len(rows) != len(now_ms):
        raise ValueError(f"need as many re-timed values as rows, at least one; got {len(now_ms)} for {len(rows)}")
    ratio = np.asarray(now_ms, dtype=float) / np.array([float(r["latency_ms"]) for r in rows])
    median = float(np.median(ratio))
    within = float(np.mean(np.abs(ratio - 1.0) <= tolerance))
    return DriftReport(len(rows), median, within, abs(median - 1.0) <= tolerance and within >= min_within,
                       speed_index_profile_ms, speed_index_now_ms)


def verify_profile(csv_path: Path, n_ops: int = 64, seed: int = 0, tolerance: float | None = DEFAULT_TOLERANCE,
                   progress: bool = True, rounds: int | None = None) -> DriftReport:
    """Re-time a random sample of a profile's rows here, under its thread count and timing; report the drift.

    ``rounds``: measurements of each chunk, the fastest kept (`best_of_rounds`); default: the profile's own, at least
    `VERIFY_ROUNDS`. The sample's four chunks make rounds only ~1.5 s apart, shorter than a slow spell: on
    2026-12-04 a 3-round check at the start of a fidelity run re-timed a profile's rows at 1.54x (0 % within ±10 %),
    while 5-round checks before and after gave 1.00-1.03x.

    Raises:
        JmsnasError: the profile is missing or was measured on another device kind.
    """
    from jmsnas.latency.model import row_descriptor

    rows = [r for r in read_rows(csv_path) if r["batch_size"] == "1"]
    json_path = csv_path.with_suffix(".json")
    if not rows or not json_path.is_file():
        raise JmsnasError("no profile to verify (need NAME.csv with rows and NAME.json)", file=csv_path)
    meta = json.loads(json_path.read_text())
    if meta.get("device", "cpu") != "cpu" and not torch.cuda.is_available():
        raise JmsnasError(f"the profile was measured on {meta['device']!r}, which this machine lacks", file=json_path)
    sample = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), min(n_ops, len(rows))))]
    timing = {"device": meta.get("device", "cpu"), "threads": int(meta.get("threads", 1)),
              "warmup": int(meta.get("warmup", 5)), "blocks": int(meta.get("blocks", 10)),
              "block_size": int(meta.get("block_size", 10))}
    rounds = max(int(meta.get("rounds", 1)), VERIFY_ROUNDS) if rounds is None else rounds
    # a fresh guard: its speed index is the machine's *now*, which the report compares with the profile's
    guard = ContentionGuard(tolerance=tolerance) if tolerance is not None else None
    measures = []
    for chunk in chunks(sample, CHUNK):
        descs = [row_descriptor(r) for r in chunk]
        modules = [build_module(d).to(timing["device"]) for d in descs]
        inputs = [example_input(d, 1, timing["device"]) for d in descs]
        measures.append(partial(time_guarded, modules, inputs, timing, guard, "re-timed rows"))
    with progress_bar(progress) as bar:
        task = bar.add_task(f"re-timing {csv_path.stem}", total=len(measures) * rounds)

        def advancing(measure):
            def run():
                result = measure()
                bar.advance(task)
                return result
            return run

        best = best_of_rounds([advancing(m) for m in measures], rounds)
    now = [t for chunk_times in best for t, _ in chunk_times]
    stored = meta.get("speed_index_ms")
    return drift_report(sample, now, speed_index_profile_ms=float(stored) if stored else None,
                        speed_index_now_ms=guard.speed_index_ms if guard is not None else None)
