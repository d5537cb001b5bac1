"""Per-device latency models: ``predict(ops) -> ms`` for measured and analytic devices.

A *measured* device has a profile CSV (`jmsnas.latency.profiler`). Its model is a scikit-learn
gradient-boosting regressor on log latency, refitted from the CSV when loaded (and cached for the
process): a fitted model is never stored, so a profile stays readable across scikit-learn versions
(nn-Meter's pickled predictors broke exactly this way). Where the exact op and shape were measured,
the measured value is used instead of the regressor's estimate (``use_measured``).

Additivity: ops timed alone do not add up to the network they form (an op timed alone runs with
its weights, activations and allocator state hot; in a network the ops evict each other, and the
forward adds its own calls). The profile therefore also times random whole networks
(``NAME.networks.csv``), and the model fits ``network ≈ scale · Σ predicted op + overhead · #ops``
to them by non-negative least squares, where the predicted ops are this model's own uncalibrated
predictions; a calibrated op prediction is then ``scale · op + overhead``, so per-layer latencies
stay additive (as the split planner and the search need). Each calibration network is timed together
with its ops built alone (``ops_ms``); its whole time is brought to the op rows' speed by
``Σ predicted op / ops_ms`` before the fit. Without that the fit learns the machine's drift between the
op rows and the networks: in a 2026-12-04 profile on an AMD EPYC VM (networks timed with their own
layers then) those layers ran 0.95x the op rows early in the network phase and 1.03-1.45x later, and the
fitted 1-D scale was 1.12 where uniform networks ran 1.07x their layers timed with them.

The calibration is fitted **per dimensionality** (1-D and 2-D networks each get their own scale and
overhead; an op of a dimensionality without calibration networks gets the pooled fit) and **applied by
default** (``apply_calibration``). What decided it, measured 2026-12-02 on a quiet 2-core VM (Intel Xeon),
with a profile measured on that machine minutes before (`benchmarks/results/latency_fidelity_same_machine.md`,
100 random networks of both shipped spaces, noise floor 100 % within ±10 %): the plain sum of per-op
predictions was within ±10 % of the measured network for 96 % of 1-D networks but 0 % of 2-D ones (mean
signed error -21.6 %: on 2-D networks ops timed alone run faster than they do inside the network); one
calibration pooled over both spaces (scale 1.19) mends the 2-D networks and breaks the 1-D ones (0 %);
calibrated per dimensionality (1-D scale 0.93 + 9 µs per op, 2-D 1.18 + 10 µs) 98 % of each space was
within ±10 %. Five-fold cross-validation on each profile's own 120 calibration networks agrees on all
three profiles at hand (the shipped cpu-1t and cpu-2t, measured 2026-12-01 on an AMD EPYC VM, and the
2026-12-02 one): per dimensionality 100 % within ±10 % for both spaces on all three; the plain sum 88-100 % on the
shipped ones and 100 % (1-D) / 0 % (2-D) on 2026-12-02's; pooled 100 % on the shipped ones and 2 % / 95 %
on 2026-12-02's. (An earlier stop measured the opposite on a VM whose
speed moved by ±30 % over minutes: there the calibration learned the drift.)

An *analytic* device is described by throughput (paper 001 §4's hardware description: MAC/s,
memory size and speed). An op then costs a fixed overhead plus the larger of its compute time
(MACs / MAC/s) and its memory time (bytes of input, output and weights / memory bandwidth): a
roofline. Paper 001 uses MACs / MAC/s alone; the memory term matters for depthwise convolutions,
which move many bytes per MAC.

The predictor knows nothing of losses: the search turns predictions into a penalty elsewhere.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from jmsnas.errors import ConfigError
from jmsnas.latency.ops import descriptor_key, log_features
from jmsnas.plan.wire import FLOAT32_BYTES
from jmsnas.space.macs import OpDescriptor
from jmsnas.topology import AnalyticSpec, Device, Topology

#: Bytes per tensor element moved by an analytic device (float32 inference).
DEFAULT_BYTES_PER_ELEMENT = FLOAT32_BYTES

#: Fewest calibration networks a calibration is fitted to (fewer: none, scale 1 and no overhead).
MIN_CALIBRATION_NETS = 3


class LatencyModel(Protocol):
    """What the search and the planner need from a device."""

    name: str
    kind: Literal["measured", "analytic"]

    def predict(self, ops: Sequence[OpDescriptor], batch_size: int = 1) -> np.ndarray:
        """Latency in ms of each op at ``batch_size``."""
        ...


class AnalyticLatencyModel:
    """Roofline latency from MAC/s and memory bandwidth, plus a per-op overhead (marked "analytic")."""

    kind: Literal["analytic"] = "analytic"

    def __init__(self, name: str, spec: AnalyticSpec, bytes_per_element: int = DEFAULT_BYTES_PER_ELEMENT) -> None:
        self.name = name
        self.spec = spec
        self.bytes_per_element = bytes_per_element

    def predict(self, ops: Sequence[OpDescriptor], batch_size: int = 1) -> np.ndarray:
        macs = np.array([o.macs for o in ops], dtype=float) * batch_size
        compute_s = macs / self.spec.macs_per_s
        if self.spec.memory_bandwidth_bytes_per_s:
            elements = np.array([(o.input_numel + o.output_numel) * batch_size + o.params for o in ops], dtype=float)
            memory_s = elements * self.bytes_per_element / self.spec.memory_bandwidth_bytes_per_s
            compute_s = np.maximum(compute_s, memory_s)
        return self.spec.overhead_ms + 1e3 * compute_s


def _feature_matrix(feats: Sequence[dict[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.array([[f.get(n, 0.0) for n in names] for f in feats], dtype=float)


class ProfiledLatencyModel:
    """A regressor fitted to one device's measured profile.

    Args:
        name: the device profile's name.
        rows: rows of the profile CSV (strings, as `csv.DictReader` gives them).
        meta: the profile's JSON metadata (how it was measured).
        seed: seed of the regressor's subsampling, for repeatable fits.
        networks: per calibration network ``(its ops, whole network ms measured)``, or ``(its ops, whole ms, sum
            of its ops' ms timed alone at the same moment)``: then the whole is first brought to the op rows'
            speed (times ``Σ predicted op / that sum``), so the fit does not learn the machine's drift.
        apply_calibration: whether `predict` applies the whole-network calibration by default.
    """

    kind: Literal["measured"] = "measured"

    def __init__(self, name: str, rows: Sequence[dict[str, str]], meta: dict | None = None, seed: int = 0,
                 networks: Sequence[tuple[Sequence[OpDescriptor], float]
                                    | tuple[Sequence[OpDescriptor], float, float]] | None = None,
                 apply_calibration: bool = True) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        if len(rows) < 5:
            raise ConfigError(f"profile {name!r} has {len(rows)} rows; at least 5 are needed to fit a latency model")
        self.name = name
        self.meta = meta or {}
        self.measured = {r["key"]: float(r["latency_ms"]) for r in rows}
        feats = [row_features(r) for r in rows]
        self.feature_names = sorted(feats[0])
        y = np.log(np.array([float(r["latency_ms"]) for r in rows]))
        # Shallow trees with shrinkage: ~1e3 rows, a smooth target in log space. Tried a random forest
        # first: it cannot extrapolate between grid points as well (piecewise-constant, no shrinkage).
        self.regressor = GradientBoostingRegressor(n_estimators=400, max_depth=4, learning_rate=0.05,
                                                   subsample=0.8, random_state=seed)
        self.regressor.fit(_feature_matrix(feats, self.feature_names), y)
        self.apply_calibration = apply_calibration
        sums = []
        for ops, whole, *same_time in networks or []:
            predicted = float(self.predict(ops, calibrated=False).sum())
            if same_time and same_time[0] > 0:  # the whole at the op rows' speed
                whole = whole * predicted / same_time[0]
            sums.append((_network_dims(ops), (predicted, len(ops), whole)))
        #: pooled over every calibration network (reported; used for ops of a dimensionality without its own)
        self.scale, self.overhead_ms = self._calibrate([s for _, s in sums])
        #: ``dims -> (scale, overhead ms)``, one calibration per dimensionality (1-D, 2-D) of the networks
        groups: dict[int, list[tuple[float, int, float]]] = {}
        for d, s in sums:
            groups.setdefault(d, []).append(s)
        self.calibration: dict[int, tuple[float, float]] = {
            d: self._calibrate(g) for d, g in sorted(groups.items()) if len(g) >= MIN_CALIBRATION_NETS}

    @staticmethod
    def _calibrate(networks: Sequence[tuple[float, int, float]]) -> tuple[float, float]:
        """Non-negative least squares ``(scale, overhead)`` of ``whole ≈ scale · Σ ops + overhead · #ops``.

        Args:
            networks: per network ``(sum of its predicted op ms, number of ops, whole network ms)``.
        """
        if len(networks) < MIN_CALIBRATION_NETS:
            return 1.0, 0.0
        from scipy.optimize import nnls

        a = np.array([[parts, n] for parts, n, _ in networks], dtype=float)
        (scale, overhead), _ = nnls(a, np.array([whole for _, _, whole in networks], dtype=float))
        return (float(scale), float(overhead)) if scale > 0 else (1.0, 0.0)

    def predict(self, ops: Sequence[OpDescriptor], batch_size: int = 1, use_measured: bool = True,
                calibrated: bool | None = None) -> np.ndarray:
        """Latency (ms) of each op at ``batch_size``.

        Args:
            ops: the ops.
            batch_size: the batch size.
            use_measured: return the measured value for an op and shape the profile holds.
            calibrated: apply the whole-network calibration; default: ``apply_calibration`` (see the module
                docstring).
        """
        if not ops:
            return np.zeros(0)
        est = np.exp(self.regressor.predict(_feature_matrix([log_features(o, batch_size) for o in ops],
                                                            self.feature_names)))
        if use_measured:
            for i, op in enumerate(ops):
                est[i] = self.measured.get(descriptor_key(op, batch_size), est[i])
        if calibrated is None:
            calibrated = self.apply_calibration
        if not calibrated:
            return est
        scale, overhead = np.array([self.calibration_for(o.dims) for o in ops]).T
        return scale * est + overhead

    def calibration_for(self, dims: int) -> tuple[float, float]:
        """``(scale, overhead ms)`` applied to an op of ``dims`` dimensions: its own fit, else the pooled one."""
        return self.calibration.get(dims, (self.scale, self.overhead_ms))

    @classmethod
    def from_csv(cls, csv_path: str | Path) -> ProfiledLatencyModel:
        """Fit from a profile CSV (cached per file and modification time)."""
        path = Path(csv_path).resolve()
        if not path.is_file():
            raise ConfigError("latency profile not found", file=path)
        return _load_cached(path, path.stat().st_mtime_ns)


def _network_dims(ops: Sequence[OpDescriptor]) -> int:
    """The dimensionality (1-D or 2-D) of a calibration network: that of its ops, which all share it."""
    return ops[0].dims if ops else 0


def row_features(row: dict[str, str]) -> dict[str, float]:
    """Regressor features of one CSV row (the same as `log_features` of its descriptor)."""
    return log_features(row_descriptor(row), int(row["batch_size"]))


def row_descriptor(row: dict[str, str]) -> OpDescriptor:
    """Rebuild the `OpDescriptor` a CSV row was measured for."""

    def size(text: str) -> tuple[int, ...]:
        return tuple(int(v) for v in text.split("x")) if text else ()

    ints = ("dims", "in_channels", "out_channels", "hidden_channels", "kernel_size", "expansion", "stride", "macs",
            "params", "input_numel", "output_numel")
    return OpDescriptor(op=row["op"], kind=row["kind"], shortcut=bool(int(row["shortcut"])),
                        in_size=size(row["in_size"]), out_size=size(row["out_size"]),
                        **{k: int(row[k]) for k in ints})


@functools.lru_cache(maxsize=16)
def _load_cached(path: Path, mtime_ns: int) -> ProfiledLatencyModel:
    from jmsnas.latency.profiler import NETWORK_COLUMNS, networks_path, read_rows

    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("complete") is False:
        raise ConfigError("latency profile is incomplete (its run was interrupted or stopped for lack of a quiet "
                          f"window); run `python -m jmsnas.profile --device-name {path.stem} ...` again to finish it",
                          file=meta_path)
    from jmsnas.space.arch import ArchSpec
    from jmsnas.space.macs import arch_descriptors

    networks = [(arch_descriptors(ArchSpec.from_dict(json.loads(r["arch"]))), float(r["latency_ms"]),
                 *([float(r["ops_ms"])] if r.get("ops_ms") else []))  # an older profile has no ops_ms
                for r in read_rows(networks_path(path), NETWORK_COLUMNS)]
    return ProfiledLatencyModel(path.stem, read_rows(path), meta, networks=networks)


def latency_model_for(device: Device, profiles_dir: str | Path) -> LatencyModel:
    """The latency model of a topology device: its measured profile, or its analytic description."""
    if device.analytic is not None:
        return AnalyticLatencyModel(device.name, device.analytic)
    return ProfiledLatencyModel.from_csv(Path(profiles_dir) / f"{device.profile}.csv")


def latency_models(topology: Topology, profiles_dir: str | Path) -> dict[str, LatencyModel]:
    """The latency model of every device of ``topology`` (measured profile or analytic)."""
    return {d.name: latency_model_for(d, profiles_dir) for d in topology.devices}
