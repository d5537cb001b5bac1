"""Measure a device: time every op of a search space and write ``NAME.csv`` + ``NAME.json``.

The CSV has one row per op and input shape (features, ``latency_ms``, ``spread_ms``, ``repeats``);
ops are timed round-robin in chunks with `jmsnas.latency.timing.time_interleaved` (the median of
block minima, robust to the bursts of interference of shared machines). ``NAME.networks.csv`` holds
random whole networks of each space, each timed together with its ops built alone, as the op rows are
(``latency_ms`` and ``ops_ms``, the sum of those ops' times at the same moment): the latency model uses
them to calibrate how per-op times add up to a network's, free of the machine's drift between the op
rows and the networks (see `jmsnas.latency.model`). The JSON says how it was measured (torch
version, threads, processor or GPU, date, search spaces). Rows are appended and flushed chunk by
chunk, so an interrupted run resumes where it stopped: rows already in the CSV are not measured
again. A run that would mix measurement conditions (other threads, device, torch) into an existing
profile is refused.

Every chunk is measured under a `jmsnas.latency.guard.ContentionGuard`: a reference workload is
timed around it, a chunk measured while the reference ran more than ``tolerance`` slower than at the
start is measured again, and a run that gets no quiet window stops with `ContentionError` (the
profile stays marked ``complete: false``; the latency model refuses an incomplete profile). The
reference's speed at the start is the profile's ``speed_index_ms`` in ``NAME.json``; a resumed run
keeps it as its yardstick, so rows measured on different days are held to the same speed.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import platform
import random
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from jmsnas.errors import JmsnasError
from jmsnas.io import write_json
from jmsnas.latency.guard import DEFAULT_PHASE, ContentionGuard, machine_load
from jmsnas.latency.ops import (
    PROFILE_NUM_CLASSES,
    build_module,
    descriptor_key,
    example_input,
    grid_descriptors,
    space_descriptors,
)
from jmsnas.latency.timing import best_of_rounds, time_interleaved
from jmsnas.machine import processor_name
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.space.macs import OpDescriptor, arch_descriptors
from jmsnas.space.sampling import spread_specs
from jmsnas.space.spec import SearchSpace

CSV_COLUMNS = (
    "key", "op", "kind", "dims", "in_channels", "out_channels", "hidden_channels", "kernel_size", "expansion",
    "shortcut", "stride", "in_size", "out_size", "macs", "params", "input_numel", "output_numel", "batch_size",
    "exact", "latency_ms", "spread_ms", "repeats",
)
NETWORK_COLUMNS = ("key", "space", "arch", "latency_ms", "ops_ms", "repeats")
#: Calibration networks timed together (each with its layers).
NETWORK_CHUNK = 4
#: Ops timed together round-robin: their blocks interleave over a few seconds.
CHUNK = 16
#: Chunks measured in rounds together (`jmsnas.latency.timing.best_of_rounds`): one chunk's rounds lie this many
#: chunks apart (seconds), longer than most of this VM's slow spells.
ROUND_GROUP = 4
#: Rounds per measurement by default (the fastest is kept); see `jmsnas.latency.timing`.
DEFAULT_ROUNDS = 3
#: Seed of the calibration networks (benchmarks sample theirs with other seeds).
CALIBRATION_SEED = 12345
#: Conditions that must match for rows to share one profile.
_CONDITION_KEYS = ("device", "threads", "torch", "processor", "gpu")

log = logging.getLogger("jmsnas.profile")


def measurement_conditions(threads: int, device: str) -> dict[str, object]:
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    return {"device": device, "threads": threads, "torch": torch.__version__, "processor": processor_name(),
            "gpu": gpu, "cpu_count": os.cpu_count(), "python": platform.python_version()}


def _row(desc: OpDescriptor, batch_size: int, exact: bool, median: float, spread: float, repeats: int) -> dict:
    d = asdict(desc)
    d["in_size"] = "x".join(map(str, desc.in_size))
    d["out_size"] = "x".join(map(str, desc.out_size))
    d["shortcut"] = int(desc.shortcut)
    return {"key": descriptor_key(desc, batch_size), **d, "batch_size": batch_size, "exact": int(exact),
            "latency_ms": f"{median:.6g}", "spread_ms": f"{spread:.6g}", "repeats": repeats}


def read_rows(csv_path: Path, columns: Sequence[str] = CSV_COLUMNS) -> list[dict[str, str]]:
    """Complete rows of a profile CSV (a line cut off by an interruption is dropped)."""
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    needed = ("key", "latency_ms", "repeats")
    return [r for r in rows if None not in r and all(r.get(c) not in (None, "") for c in needed)]


def _open_profile(csv_path: Path, json_path: Path, conditions: dict, space_names: list[str],
                  guard: ContentionGuard | None) -> list[dict]:
    """Check an existing profile can be resumed under these conditions; rewrite its CSV without a torn line.

    With a guard, the profile's stored speed indices become the guard's yardstick: a machine that now runs
    the reference faster or slower than when the stored rows were measured gets no quiet window.
    """
    rows = read_rows(csv_path)
    if json_path.is_file():
        meta = json.loads(json_path.read_text())
        clash = {k: (meta.get(k), conditions[k]) for k in _CONDITION_KEYS if meta.get(k) != conditions[k]}
        if rows and clash:
            detail = ", ".join(f"{k}: profile has {a!r}, this run {b!r}" for k, (a, b) in clash.items())
            raise JmsnasError(f"cannot add rows measured under other conditions ({detail}); use another "
                              "--device-name or --overwrite", file=json_path)
        space_names = sorted(set(meta.get("search_spaces", [])) | set(space_names))
        if rows and guard is not None and meta.get("speed_index_ms"):  # rows of one profile: one yardstick
            guard.speed_index.update({k: float(v) for k, v in meta.get("speed_index_by_phase", {}).items()})
            guard.speed_index_ms = float(meta["speed_index_ms"])
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    _write_json(json_path, {**conditions, "search_spaces": space_names, "complete": False, "rows": len(rows),
                            "guarded": guard is not None})
    return rows


def _write_json(path: Path, meta: dict) -> None:
    """Write a profile's ``NAME.json`` (atomically), dated now."""
    write_json(path, {**meta, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})


def _profile_paths(out_dir: Path, device_name: str, overwrite: bool) -> tuple[Path, Path]:
    """``NAME.csv`` and ``NAME.json`` in ``out_dir`` (created); ``overwrite``: the old profile's files removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f"{device_name}.csv", out_dir / f"{device_name}.json"
    if overwrite:
        for path in (csv_path, json_path, networks_path(csv_path)):
            path.unlink(missing_ok=True)
    return csv_path, json_path


def _pending(spaces: Sequence[SearchSpace], batch_sizes: Sequence[int], grid: bool,
             done: set[str]) -> list[tuple[OpDescriptor, int, bool]]:
    """``(op, batch size, exact)`` of every row still to measure, once each, in the spaces' order."""
    todo: list[tuple[OpDescriptor, int, bool]] = []
    for space in spaces:
        exact = space_descriptors(space)
        exact_keys = {descriptor_key(d) for d in exact}
        descs = grid_descriptors(exact) if grid else exact
        todo += [(d, bs, descriptor_key(d) in exact_keys) for d in descs for bs in batch_sizes]
    return list({descriptor_key(d, bs): (d, bs, e) for d, bs, e in todo if descriptor_key(d, bs) not in done}.values())


def _close_profile(csv_path: Path, json_path: Path, timing: dict, guard: ContentionGuard | None,
                   extra: dict) -> None:
    """Rewrite ``NAME.json`` after a run, also a stopped one: rows, timing, the guard's figures and ``extra``.

    The speed index is kept even when the run stops, so that a resumed run keeps the yardstick.
    """
    meta = json.loads(json_path.read_text())
    guard_info: dict[str, object] = {}
    if guard is not None:
        guard_info["guard"] = {**guard.stats.to_dict(), "tolerance": guard.tolerance}
        if guard.speed_index_ms is not None:
            guard_info["speed_index_ms"] = guard.speed_index_ms
        guard_info["speed_index_by_phase"] = guard.speed_index
    _write_json(json_path, {**meta, **timing, "rows": len(read_rows(csv_path)), **guard_info, **extra})


def profile_search_spaces(spaces: Sequence[SearchSpace], device_name: str, out_dir: Path, *, threads: int = 1,
                          device: str = "cpu", batch_sizes: Sequence[int] = (1,), warmup: int = 5, blocks: int = 10,
                          block_size: int = 10, rounds: int = DEFAULT_ROUNDS, calibration_nets: int = 20,
                          grid: bool = True,
                          overwrite: bool = False, progress: bool = True,
                          guard: ContentionGuard | None = None) -> Path:
    """Time every op of ``spaces`` (exact shapes, plus the grid) and write ``out_dir/device_name.csv``.

    Args:
        spaces: search spaces whose ops to measure (at each space's ``input_shape``).
        device_name: the profile's name (``NAME.csv``), as experiments refer to it.
        out_dir: folder of the profile files (``latency_profiles/``).
        threads: torch CPU threads while timing (fixed for the whole profile).
        device: ``cpu`` or ``cuda`` (timed with CUDA synchronisation).
        batch_sizes: batch sizes to time each op at.
        warmup: untimed runs before timing each op.
        blocks: timing blocks per op; the median of the block minima is stored, with their IQR.
        block_size: timed runs per block.
        rounds: measurements of each chunk, spread over the run; each op keeps its fastest (`best_of_rounds`).
        calibration_nets: random whole networks per space timed for the additivity calibration.
        grid: also time scaled variants around each exact shape.
        overwrite: start the profile afresh instead of resuming it.
        progress: show a progress bar.
        guard: the contention guard every chunk is measured under (None: unguarded, marked so in the JSON).

    Returns:
        The CSV path.

    Raises:
        ContentionError: no quiet window came for a chunk (the rows measured before are kept).
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise JmsnasError("--device cuda was asked for but torch sees no CUDA device", field="--device")
    csv_path, json_path = _profile_paths(out_dir, device_name, overwrite)
    conditions = measurement_conditions(threads, device)
    load = machine_load() if guard is not None else None
    if load is not None and load.warning():
        log.warning(load.warning())
    opened = _open_profile(csv_path, json_path, conditions, [s.config.name for s in spaces], guard)
    done = {r["key"] for r in opened}
    todo = _pending(spaces, batch_sizes, grid, done)
    timing = {"device": device, "threads": threads, "warmup": warmup, "blocks": blocks, "block_size": block_size,
              "rounds": rounds}
    complete = False
    try:
        _measure(todo, csv_path, timing, progress, skipped=len(done), guard=guard)
        if calibration_nets:
            measure_networks(spaces, calibration_nets, networks_path(csv_path), timing, progress, guard=guard)
        complete = True
    finally:
        extra = {"complete": True, "batch_sizes": list(batch_sizes),
                 "calibration_nets_per_space": calibration_nets} if complete else {}
        _close_profile(csv_path, json_path, timing, guard, extra)
    return csv_path


def progress_bar(progress: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, disable=not progress)


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def time_guarded(modules: list, inputs: list, timing: dict, guard: ContentionGuard | None = None,
                 what: str = "a block", phase: str = DEFAULT_PHASE) -> list[tuple[float, float]]:
    """Time ``modules`` round-robin; with a guard, its reference workload is timed with them (see `guard`)."""
    kw = {k: timing[k] for k in ("blocks", "block_size", "warmup", "threads")}
    if guard is None:
        return time_interleaved(modules, inputs, **kw)

    def block(reference) -> tuple[list[tuple[float, float]], float]:
        times = time_interleaved(modules, inputs, extra=[reference], **kw)
        return times[:-1], times[-1][0]

    return guard.measure(block, what, phase)


def _measure(todo: list[tuple[OpDescriptor, int, bool]], csv_path: Path, timing: dict, progress: bool,
             skipped: int, guard: ContentionGuard | None = None) -> None:
    rounds = timing.get("rounds", 1)
    repeats = timing["blocks"] * timing["block_size"] * rounds
    with csv_path.open("a", newline="") as fh, progress_bar(progress) as bar:
        task = bar.add_task(f"profiling ops ({csv_path.stem})", total=len(todo) + skipped, completed=skipped)
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        for group in chunks(todo, CHUNK * (ROUND_GROUP if rounds > 1 else 1)):  # written group by group
            measures = []
            for chunk in chunks(group, CHUNK):
                modules = [build_module(d).to(timing["device"]) for d, _, _ in chunk]
                inputs = [example_input(d, bs, timing["device"]) for d, bs, _ in chunk]
                measures.append(partial(time_guarded, modules, inputs, timing, guard, f"ops {chunk[0][0].op}..."))
            times = [t for chunk_times in best_of_rounds(measures, rounds) for t in chunk_times]
            for (desc, bs, exact), (median, spread) in zip(group, times, strict=True):
                writer.writerow(_row(desc, bs, exact, median, spread, repeats))
            fh.flush()
            bar.advance(task, len(group))


def networks_path(csv_path: Path) -> Path:
    return csv_path.with_name(f"{csv_path.stem}.networks.csv")


def calibration_specs(space: SearchSpace, n: int, seed: int = CALIBRATION_SEED) -> list[ArchSpec]:
    """Networks of a space (seeded apart from any benchmark's) for the additivity calibration: half drawn uniformly,
    half spread from the space's smallest to its largest (`jmsnas.space.sampling.spread_specs`), so that the
    fit's two terms (scale of the op sum, overhead per op) are not fitted on networks of one size."""
    rng = random.Random(f"{space.config.name}-{seed}")
    uniform = [ArchSpec.from_choices(space, [rng.choice(s.candidates) for s in space.layers()], PROFILE_NUM_CLASSES)
               for _ in range(n - n // 2)]
    spread = spread_specs(space, n // 2, rng.randrange(2**31), PROFILE_NUM_CLASSES) if n // 2 else []
    return uniform + spread


def time_network_and_parts(specs: Sequence[ArchSpec], timing: dict,
                           guard: ContentionGuard | None = None) -> list[tuple[float, float]]:
    """Per network: its whole-forward time and the sum of its ops' times, all timed together.

    Each op is built alone and fed a random input of its shape (`build_module`, `example_input`), exactly as
    a profile row is measured, and runs round-robin with its network (`NETWORK_CHUNK` networks and their ops in
    one `time_interleaved` call): the ratio of the two is free of the machine's drift, and the sum is what the
    op rows would say at that moment. The chunks are measured in ``timing["rounds"]`` rounds (`best_of_rounds`).
    """
    device = timing["device"]
    measures, owners = [], []
    for start in range(0, len(specs), NETWORK_CHUNK):
        modules, inputs, owned = [], [], []
        for i, spec in enumerate(specs[start:start + NETWORK_CHUNK], start):
            modules.append(build_model(spec).to(device).eval())
            inputs.append(torch.randn(1, *spec.input_shape, device=device))
            owned.append(-1)
            for desc in arch_descriptors(spec):
                modules.append(build_module(desc).to(device))
                inputs.append(example_input(desc, 1, device))
                owned.append(i)
        measures.append(partial(time_guarded, modules, inputs, timing, guard, "whole networks", "networks"))
        owners.append(owned)
    whole: list[float] = []
    parts: dict[int, float] = {}
    for owned, times in zip(owners, best_of_rounds(measures, timing.get("rounds", 1)), strict=True):
        for owner, (t, _) in zip(owned, times, strict=True):
            if owner == -1:
                whole.append(t)
            else:
                parts[owner] = parts.get(owner, 0.0) + t
    return [(w, parts.get(i, 0.0)) for i, w in enumerate(whole)]


def measure_networks(spaces: Sequence[SearchSpace], n: int, path: Path, timing: dict, progress: bool,
                     guard: ContentionGuard | None = None) -> None:
    """Time ``n`` random whole networks per space, and their ops with them, into ``path`` (resumable)."""
    _drop_old_networks(path)
    done = {r["key"] for r in read_rows(path, NETWORK_COLUMNS)}
    specs = [(s.config.name, spec) for s in spaces for spec in calibration_specs(s, n)]
    todo = [(name, spec) for name, spec in specs if f"{name}|{spec.compact()}" not in done]
    new = not path.is_file()
    with path.open("a", newline="") as fh, progress_bar(progress) as bar:
        writer = csv.DictWriter(fh, fieldnames=NETWORK_COLUMNS)
        if new:
            writer.writeheader()
        task = bar.add_task(f"profiling networks ({path.stem})", total=len(specs), completed=len(specs) - len(todo))
        for chunk in chunks(todo, NETWORK_CHUNK * (ROUND_GROUP if timing.get("rounds", 1) > 1 else 1)):
            pairs = time_network_and_parts([s for _, s in chunk], timing, guard)
            for (name, spec), (whole, parts) in zip(chunk, pairs, strict=True):
                writer.writerow({"key": f"{name}|{spec.compact()}", "space": name, "arch": json.dumps(spec.to_dict()),
                                 "latency_ms": f"{whole:.6g}", "ops_ms": f"{parts:.6g}",
                                 "repeats": timing["blocks"] * timing["block_size"] * timing.get("rounds", 1)})
            fh.flush()
            bar.advance(task, len(chunk))


def _drop_old_networks(path: Path) -> None:
    """Remove a networks file of an older layout (no ``ops_ms``): its networks are measured again."""
    if path.is_file():
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), [])
        if tuple(header) != NETWORK_COLUMNS:
            log.warning("%s has an older layout (columns %s); its calibration networks are measured again",
                        path, ", ".join(header))
            path.unlink()
