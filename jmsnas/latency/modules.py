"""Per-module latency of any ``nn.Module`` with ``torch.profiler`` and ``record_function`` hooks.

``profile_modules`` times chosen modules of a whole model in place (a searched ``ArchNet``, a
torchvision or timm model): a forward-pre-hook opens ``record_function("jmsnas::<name>")`` and a
forward hook closes it, so every call of a module is one profiler event whose CPU span (or, on
CUDA, the device time of the kernels it launched) is its latency. Each profiled forward is wrapped
in a ``jmsnas:forward`` event, which lets a module called several times per forward be summed per
forward before the median over repeats is taken.

``time_forward`` times the whole forward with ``time.perf_counter_ns`` and no profiler: it is the
end-to-end reference that the per-module figures (which carry the profiler's overhead per op) are
compared against.

MACs count Conv1d/2d/3d and Linear only, per sample, as ``jmsnas.space.macs.count_macs`` does;
each leaf's MACs go to every selected module active when it runs, so nested selections work.

Tried and rejected: the ``key_averages()`` table gives only totals and averages per name, not the
per-occurrence times a median needs; ``torchprof`` is deprecated (see DESIGN.md).
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

PREFIX = "jmsnas::"
FORWARD_EVENT = "jmsnas:forward"  # one colon: cannot collide with a module event
_MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)  # never called themselves: transparent to ``depth``

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ModuleTiming:
    """Measured cost of one module inside a model.

    Attributes:
        name: dotted name from ``model.named_modules()`` (``""`` for the model itself).
        type: the module's class name.
        macs: Conv/Linear MACs per sample, summed over the calls in one forward.
        params: number of parameter elements of the module (children included).
        output_shape: shape of the output of its last call, batch included; a tuple of shapes when
            the output holds several tensors; ``()`` when it was never called.
        output_bytes: bytes of all tensors in the output of its last call.
        time_ms_median: median over repeats of its time per forward (all its calls summed).
        time_ms_mean: mean over repeats of the same.
        calls: times it is called in one forward.
    """

    name: str
    type: str
    macs: int
    params: int
    output_shape: tuple[Any, ...]
    output_bytes: int
    time_ms_median: float
    time_ms_mean: float
    calls: int


@dataclass
class _Static:
    """What one untimed forward tells about a selected module."""

    order: int = -1
    calls: int = 0
    macs: int = 0
    output_shape: tuple[Any, ...] = ()
    output_bytes: int = 0
    active: int = field(default=0, repr=False)  # call depth (re-entrant modules)


def select_modules(model: nn.Module, depth: int | None = 1, module_names: Sequence[str] | None = None) -> list[str]:
    """Names of the modules ``profile_modules`` would time.

    Args:
        model: the model.
        depth: cut the module tree at this depth (1 = direct children, 0 = the model itself), taking
            leaves found above it too, so that the selection covers the model. ``ModuleList`` and
            ``ModuleDict`` are not levels (they are never called): on an ``ArchNet`` depth 1 gives
            ``stem, blocks.0, ..., head``. ``None``: every leaf module.
        module_names: explicit dotted names; when given, ``depth`` is ignored.

    Raises:
        ValueError: an unknown name, or a negative depth.
    """
    if module_names is not None:
        known = dict(model.named_modules())
        unknown = [n for n in module_names if n not in known]
        if unknown:
            raise ValueError(f"unknown module names {unknown}; e.g. {list(known)[1:8]}")
        return list(dict.fromkeys(module_names))
    if depth is not None and depth < 0:
        raise ValueError(f"depth must be >= 0 or None, got {depth}")
    return list(_cut(model, "", depth))


def _cut(module: nn.Module, name: str, depth: int | None) -> Iterator[str]:
    children = list(module.named_children())
    if depth == 0 or not children:
        yield name
        return
    for child_name, child in children:
        full = f"{name}.{child_name}" if name else child_name
        yield from _cut(child, full, depth if (depth is None or isinstance(child, _CONTAINERS)) else depth - 1)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _shape_and_bytes(output: Any) -> tuple[tuple[Any, ...], int]:
    tensors = list(_tensors(output))
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    if isinstance(output, torch.Tensor):
        return tuple(output.shape), nbytes
    return tuple(tuple(t.shape) for t in tensors), nbytes


def _leaf_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one Conv/Linear call over the whole batch (the formula of ``count_macs``)."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def _as_args(example_input: Inputs) -> tuple[torch.Tensor, ...]:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _measure_static(model: nn.Module, args: tuple[torch.Tensor, ...], names: list[str]) -> dict[str, _Static]:
    """One forward with hooks: call order, calls, MACs, output shape and bytes of each selected module."""
    modules = dict(model.named_modules())
    stats = {n: _Static() for n in names}
    seen: list[str] = []

    def on_leaf(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        macs = _leaf_macs(mod, out)
        for st in stats.values():
            if st.active:
                st.macs += macs

    def pre(name: str) -> Any:
        def hook(_mod: nn.Module, _inp: Any) -> None:
            st = stats[name]
            if st.order < 0:
                st.order = len(seen)
                seen.append(name)
            st.calls += 1
            st.active += 1

        return hook

    def post(name: str) -> Any:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            st = stats[name]
            st.active -= 1
            st.output_shape, st.output_bytes = _shape_and_bytes(out)

        return hook

    # leaf hooks first: on a selected leaf they must run before its own post hook deactivates it
    handles = [m.register_forward_hook(on_leaf) for m in model.modules() if isinstance(m, _MAC_LAYERS)]
    for n in names:
        handles.append(modules[n].register_forward_pre_hook(pre(n)))
        handles.append(modules[n].register_forward_hook(post(n), always_call=True))
    try:
        model(*args)
    finally:
        for h in handles:
            h.remove()
    batch = args[0].shape[0] if args and args[0].dim() > 0 else 1
    for st in stats.values():
        st.macs //= batch
    return stats


@contextmanager
def _record_hooks(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Open ``record_function(PREFIX + name)`` around every call of each named module."""
    modules = dict(model.named_modules())
    stacks: dict[str, list[record_function]] = {n: [] for n in names}

    def pre(name: str) -> Any:
        def hook(_mod: nn.Module, _inp: Any) -> None:
            rf = record_function(PREFIX + name)
            rf.__enter__()
            stacks[name].append(rf)

        return hook

    def post(name: str) -> Any:
        def hook(_mod: nn.Module, _inp: Any, _out: Any) -> None:
            if stacks[name]:
                stacks[name].pop().__exit__(None, None, None)

        return hook

    handles = []
    for n in names:
        handles.append(modules[n].register_forward_pre_hook(pre(n)))
        handles.append(modules[n].register_forward_hook(post(n), always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for stack in stacks.values():  # only left open if a hook itself failed
            while stack:
                stack.pop().__exit__(None, None, None)


@contextmanager
def _inference_setup(model: nn.Module, threads: int | None) -> Iterator[None]:
    """Eval mode, ``inference_mode`` and a fixed thread count, all restored afterwards."""
    was_training = model.training
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.eval()
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)


def _sync(args: tuple[torch.Tensor, ...]) -> None:
    if any(a.is_cuda for a in args):
        torch.cuda.synchronize()


def _event_ms(event: Any, on_device: bool) -> float:
    return (event.device_time_total if on_device else event.time_range.elapsed_us()) / 1000.0


def _per_forward_ms(events: list[Any], names: list[str], repeats: int, on_device: bool) -> dict[str, list[float]]:
    """Time of each named module in each profiled forward (its calls summed), in ms."""
    forwards = sorted((e for e in events if e.name == FORWARD_EVENT), key=lambda e: e.time_range.start)
    if len(forwards) != repeats:
        raise RuntimeError(f"expected {repeats} profiled forwards, the profiler recorded {len(forwards)}")
    starts = [f.time_range.start for f in forwards]
    times = {n: [0.0] * repeats for n in names}
    for e in events:
        if not e.name.startswith(PREFIX) or e.name[len(PREFIX) :] not in times:
            continue
        r = bisect.bisect_right(starts, e.time_range.start) - 1
        if r >= 0 and e.time_range.end <= forwards[r].time_range.end:
            times[e.name[len(PREFIX) :]][r] += _event_ms(e, on_device)
    return times


def _profile(
    model: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], warmup: int, repeats: int
) -> dict[str, list[float]]:
    on_cuda = any(a.is_cuda for a in args)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with _record_hooks(model, names):
        for _ in range(warmup):
            model(*args)
        _sync(args)
        with profile(activities=activities) as prof:
            for _ in range(repeats):
                with record_function(FORWARD_EVENT):
                    model(*args)
            _sync(args)
    events = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    # device time needs the CUDA activity to have been captured; without it fall back to CPU spans
    on_device = on_cuda and any(e.device_time_total > 0 for e in events if e.name == FORWARD_EVENT)
    return _per_forward_ms(events, names, repeats, on_device)


def profile_modules(
    model: nn.Module,
    example_input: Inputs,
    *,
    depth: int | None = 1,
    module_names: Sequence[str] | None = None,
    warmup: int = 5,
    repeats: int = 20,
    threads: int | None = None,
) -> list[ModuleTiming]:
    """Time selected modules of ``model`` in place, in eval mode under ``torch.inference_mode``.

    On CPU a module's time is the wall-clock span of its ``record_function`` event; when the input
    is on CUDA it is the device time of the kernels it launched. Times include the profiler's
    overhead per op, so their sum runs above ``time_forward`` on tiny layers.

    Args:
        model: any module; its training flag, hooks and the thread count are restored afterwards.
        example_input: a batch (or a tuple of positional inputs, the first one batched).
        depth: which modules to time, see ``select_modules``.
        module_names: explicit dotted names (takes precedence over ``depth``).
        warmup: untimed forwards first.
        repeats: profiled forwards; medians and means are over these.
        threads: ``torch.set_num_threads`` for the measurement; ``None`` keeps the current count.

    Returns:
        One ``ModuleTiming`` per selected module, in the order of their first call (modules never
        called last, with ``calls == 0``).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = select_modules(model, depth, module_names)
    args = _as_args(example_input)
    with _inference_setup(model, threads):
        static = _measure_static(model, args, names)
        times = _profile(model, args, names, warmup, repeats)
    modules = dict(model.named_modules())
    names.sort(key=lambda n: static[n].order if static[n].order >= 0 else len(names))
    return [_timing(n, modules[n], static[n], times[n]) for n in names]


def _timing(name: str, module: nn.Module, st: _Static, times: list[float]) -> ModuleTiming:
    return ModuleTiming(
        name=name,
        type=type(module).__name__,
        macs=st.macs,
        params=sum(p.numel() for p in module.parameters()),
        output_shape=st.output_shape,
        output_bytes=st.output_bytes,
        time_ms_median=statistics.median(times),
        time_ms_mean=statistics.fmean(times),
        calls=st.calls,
    )


def total_time_ms(timings: Sequence[ModuleTiming], statistic: Literal["median", "mean"] = "median") -> float:
    """Sum of the modules' times (nested selections are counted once per level).

    Args:
        timings: output of ``profile_modules``.
        statistic: which per-module figure to add up.
    """
    return sum(t.time_ms_median if statistic == "median" else t.time_ms_mean for t in timings)


def format_table(timings: Sequence[ModuleTiming]) -> str:
    """A plain-text table of ``timings`` with each module's share of the total median time."""
    total = total_time_ms(timings)
    header = ("module", "type", "calls", "MACs", "params", "output", "out bytes", "median ms", "mean ms", "share")
    rows = [
        (
            t.name or "<model>", t.type, str(t.calls), f"{t.macs:,}", f"{t.params:,}",
            "x".join(map(str, t.output_shape)) if all(isinstance(d, int) for d in t.output_shape)
            else str(list(t.output_shape)),
            f"{t.output_bytes:,}", f"{t.time_ms_median:.3f}", f"{t.time_ms_mean:.3f}",
            f"{100 * t.time_ms_median / total:.1f}%" if total > 0 else "-",
        )
        for t in timings
    ]  # fmt: skip
    macs = sum(t.macs for t in timings)
    rows.append(("total", "", "", f"{macs:,}", "", "", "", f"{total:.3f}", f"{total_time_ms(timings, 'mean'):.3f}", ""))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def time_forward(
    model: nn.Module, example_input: Inputs, *, warmup: int = 5, repeats: int = 20, threads: int | None = None
) -> tuple[float, float]:
    """Time the whole forward without the profiler: the end-to-end reference.

    Args:
        model: any module, run in eval mode under ``torch.inference_mode`` (training flag and thread
            count restored afterwards).
        example_input: a batch (or a tuple of positional inputs).
        warmup: untimed forwards first.
        repeats: timed forwards.
        threads: ``torch.set_num_threads`` for the measurement; ``None`` keeps the current count.

    Returns:
        ``(median_ms, spread_ms)``, the spread being the interquartile range (0 for one repeat).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    args = _as_args(example_input)
    samples: list[float] = []
    with _inference_setup(model, threads):
        for _ in range(warmup):
            model(*args)
        _sync(args)
        for _ in range(repeats):
            start = time.perf_counter_ns()
            model(*args)
            _sync(args)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    if repeats == 1:
        return samples[0], 0.0
    q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q2, q3 - q1
