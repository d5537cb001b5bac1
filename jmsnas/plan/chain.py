"""Exact contiguous split of N layers over a chain of M devices (paper 003 eq. (1)).

Device m runs layers ``boundaries[m]:boundaries[m + 1]`` and then sends what it has to device
m + 1; a device may run no layer and just relay what it received (the source relays the input).
The completion latency is eq. (1)::

    T = sum_m ( sum_{n in D^m} tau_n^m + eps^m ),   eps^m = link_m.latency_ms(bytes sent by m)

where the bytes sent by device m depend only on ``b = boundaries[m + 1]``: the output of layer
``b - 1``, or the input when ``b == 0``; the last device sends nothing (``eps^M = 0``).

``best_chain_split`` minimises T exactly by dynamic programming over ``(device, layers done)``:
``C[m][b] = min_{a <= b} C[m - 1][a] + sum_{n=a}^{b-1} tau_n^m + eps^m(b)``, O(N^2 M), with
per-device memory and layer-count limits. The search runs it on detached expected latencies to
pick boundaries, then ``chain_latency`` evaluates eq. (1) for them with gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from jmsnas.topology import Link, Topology


@dataclass(frozen=True)
class ChainSplit:
    """A contiguous assignment of layers to the devices of a chain.

    Args:
        boundaries: ``M + 1`` non-decreasing ints from 0 to N; device m runs layers
            ``boundaries[m]:boundaries[m + 1]``.
        latency_ms: the completion latency of eq. (1) for this assignment.
    """

    boundaries: tuple[int, ...]
    latency_ms: float

    def device_layers(self) -> list[range]:
        """Per device the range of layers it runs (possibly empty)."""
        b = self.boundaries
        return [range(b[m], b[m + 1]) for m in range(len(b) - 1)]


def sent_bytes(boundary: int, layer_output_bytes: Sequence[float], input_bytes: float) -> float:
    """Bytes a device sends when the first ``boundary`` layers are done: the last output, or the input."""
    return float(input_bytes) if boundary == 0 else float(layer_output_bytes[boundary - 1])


def best_chain_split(
    layer_latency_ms: np.ndarray | torch.Tensor,
    layer_output_bytes: Sequence[float] | np.ndarray,
    input_bytes: float,
    links: Sequence[Link],
    memory_bytes_per_layer: Sequence[float] | np.ndarray | None = None,
    device_memory_bytes: Sequence[float | None] | None = None,
    max_layers_per_device: Sequence[int] | None = None,
) -> ChainSplit:
    """The contiguous split minimising eq. (1), exactly (dynamic programming, O(N^2 M)).

    Args:
        layer_latency_ms: ``[N, M]`` latency ``tau_n^m`` of layer n on device m (a tensor is detached).
        layer_output_bytes: ``[N]`` size of each layer's output.
        input_bytes: size of the network input, held by the first device.
        links: the ``M - 1`` links of the chain in order; ``links[m]`` goes from device m to m + 1.
        memory_bytes_per_layer: ``[N]`` memory each layer needs on the device running it; None: no limit.
        device_memory_bytes: ``[M]`` memory of each device (None entries: unlimited); None: no limit.
        max_layers_per_device: ``[M]`` most layers each device may run; None: no limit.

    Returns:
        The best ``ChainSplit`` (on ties, device m starts as early as possible, from the last device back).

    Raises:
        ValueError: inconsistent shapes, or no assignment satisfies the memory / layer limits.
    """
    tau = _as_matrix(layer_latency_ms)
    n_layers, n_dev = tau.shape
    out_bytes = _as_vector(layer_output_bytes, n_layers, "layer_output_bytes")
    if len(links) != n_dev - 1:
        raise ValueError(f"a chain of {n_dev} devices needs {n_dev - 1} links, got {len(links)}")
    mem = np.zeros(n_layers)
    if memory_bytes_per_layer is not None:
        mem = _as_vector(memory_bytes_per_layer, n_layers, "memory_bytes_per_layer")
    cap = _limits(device_memory_bytes, n_dev, "device_memory_bytes")
    max_n = _limits(max_layers_per_device, n_dev, "max_layers_per_device")
    prefix_tau = np.vstack([np.zeros((1, n_dev)), np.cumsum(tau, axis=0)])
    prefix_mem = np.concatenate([[0.0], np.cumsum(mem)])
    cost = np.full(n_layers + 1, np.inf)
    cost[0] = 0.0
    starts = []
    for m in range(n_dev):
        eps = np.array([_link_ms(links, m, sent_bytes(b, out_bytes, input_bytes)) for b in range(n_layers + 1)])
        cost, start = _device_step(cost, prefix_tau[:, m], eps, prefix_mem, cap[m], max_n[m])
        starts.append(start)
    if not np.isfinite(cost[n_layers]):
        raise ValueError(_infeasible_message(mem, cap, max_n))
    bounds = [n_layers]
    for start in reversed(starts):
        bounds.append(int(start[bounds[-1]]))
    return ChainSplit(tuple(reversed(bounds)), float(cost[n_layers]))


def _device_step(
    prev: np.ndarray, prefix_tau: np.ndarray, eps: np.ndarray, prefix_mem: np.ndarray, cap: float, max_n: float
) -> tuple[np.ndarray, np.ndarray]:
    """One DP stage: ``new[b] = min_a prev[a] + tau[a:b].sum() + eps[b]`` over feasible ``a <= b``.

    Returns:
        ``(new, start)``: the costs after this device for every ``b``, and the minimising ``a``
        (the first one on ties).
    """
    n = len(prev)
    new, start = np.full(n, np.inf), np.zeros(n, dtype=np.int64)
    for b in range(n):
        a = np.arange(b + 1)
        ok = (prefix_mem[b] - prefix_mem[a] <= cap) & (b - a <= max_n)
        total = np.where(ok, prev[: b + 1] + prefix_tau[b] - prefix_tau[: b + 1], np.inf)
        start[b] = int(np.argmin(total))
        new[b] = total[start[b]] + eps[b]
    return new, start


def _link_ms(links: Sequence[Link], m: int, payload_bytes: float) -> float:
    """``eps^m``: latency of device m sending ``payload_bytes`` on; 0 for the last device."""
    return 0.0 if m == len(links) else links[m].latency_ms(payload_bytes)


def chain_latency(
    layer_latency_ms: torch.Tensor,
    boundaries: Sequence[int],
    layer_output_bytes: Sequence[float] | np.ndarray,
    input_bytes: float,
    links: Sequence[Link],
) -> torch.Tensor:
    """Eq. (1) for fixed ``boundaries``, differentiable in ``layer_latency_ms``.

    The gradient with respect to ``layer_latency_ms`` is the 0/1 assignment mask; communication
    terms are constants (they depend only on the boundaries).

    Args:
        layer_latency_ms: ``[N, M]`` tensor of ``tau_n^m`` (e.g. ``ExpectedLatency.layer_latency``).
        boundaries: ``M + 1`` non-decreasing ints from 0 to N.
        layer_output_bytes: ``[N]`` size of each layer's output.
        input_bytes: size of the network input.
        links: the ``M - 1`` links of the chain in order.

    Returns:
        A 0-dim tensor (ms).
    """
    tau = torch.as_tensor(layer_latency_ms)
    n_layers, n_dev = tau.shape
    _check_boundaries(boundaries, n_layers, n_dev)
    if len(links) != n_dev - 1:
        raise ValueError(f"a chain of {n_dev} devices needs {n_dev - 1} links, got {len(links)}")
    total = tau.new_zeros(())
    comm = 0.0
    for m in range(n_dev):
        lo, hi = int(boundaries[m]), int(boundaries[m + 1])
        total = total + tau[lo:hi, m].sum()
        comm += _link_ms(links, m, sent_bytes(hi, layer_output_bytes, input_bytes))
    return total + comm


def _as_matrix(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"layer_latency_ms must be [N, M] with M >= 1, got shape {arr.shape}")
    return arr


def _as_vector(values: Sequence[float] | np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{name} must have one entry per layer ({n}), got {len(arr)}")
    return arr


def _limits(values: Sequence[float | None] | None, n_dev: int, name: str) -> np.ndarray:
    if values is None:
        return np.full(n_dev, np.inf)
    if len(values) != n_dev:
        raise ValueError(f"{name} must have one entry per device ({n_dev}), got {len(values)}")
    return np.array([np.inf if v is None else float(v) for v in values])


def _check_boundaries(boundaries: Sequence[int], n_layers: int, n_dev: int) -> None:
    b = [int(v) for v in boundaries]
    if len(b) != n_dev + 1 or b[0] != 0 or b[-1] != n_layers or any(x > y for x, y in zip(b, b[1:], strict=False)):
        raise ValueError(f"boundaries must be {n_dev + 1} non-decreasing ints from 0 to {n_layers}, got {b}")


def _infeasible_message(mem: np.ndarray, cap: np.ndarray, max_n: np.ndarray) -> str:
    msg = (
        f"no contiguous split of {len(mem)} layers over {len(cap)} devices fits the limits: "
        f"layer memory {mem.tolist()} B (total {mem.sum():g} B), device memory {cap.tolist()} B, "
        f"max layers per device {max_n.tolist()}"
    )
    too_big = [n for n, v in enumerate(mem) if v > cap.max()]
    if too_big:
        msg += f"; layers {too_big} alone exceed every device's memory"
    return msg


T = TypeVar("T")


def best_path(topology: Topology, solve: Callable[[tuple[str, ...]], T],
              latency_ms: Callable[[T], float]) -> tuple[tuple[str, ...], T]:
    """The source-to-sink path of ``topology`` whose ``solve(path)`` is fastest (every mesh path is a chain).

    A path whose ``solve`` raises ``ValueError`` (the network does not fit its devices) is skipped; on
    ties the first path of ``topology.paths()`` wins.

    Raises:
        ValueError: no path fits (the last path's reason).
    """
    best: tuple[tuple[str, ...], T] | None = None
    error: ValueError | None = None
    for path in topology.paths():
        try:
            result = solve(tuple(path))
        except ValueError as exc:
            error = exc
            continue
        if best is None or latency_ms(result) < latency_ms(best[1]):
            best = (tuple(path), result)
    if best is None:
        raise ValueError(f"no path of the {topology.kind} fits: {error}")
    return best
