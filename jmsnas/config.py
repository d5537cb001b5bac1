"""The experiment file: pydantic models and `load_experiment`.

Configuration flows one way: YAML -> these models (validated, defaults filled, unknown keys
rejected) -> builder functions -> objects. Paths in the file are resolved relative to the file.

The sections a library package reads are defined beside it and composed here: ``exits`` in
``jmsnas.exits_config``, ``partition`` (compressors) in ``jmsnas.compress.config``. The packages below the
stages never import this module; ``jmsnas.builders`` turns an ``Experiment`` into their objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from jmsnas.compress.config import PartitionConfig
from jmsnas.dataset_config import (  # noqa: F401 - the dataset sections are part of the experiment's schema
    CifarDataset,
    DatasetConfig,
    DigitsDataset,
    ImageFolderDataset,
    Mnist1dDataset,
    SyntheticDataset,
)
from jmsnas.errors import ConfigError, JmsnasError
from jmsnas.exits_config import ExitsConfig
from jmsnas.resources import shipped
from jmsnas.topology import AnalyticSpec, Device, Link, Topology, build_topology
from jmsnas.trainer_config import TrainerConfig
from jmsnas.validation import FieldValueError, Strict, load_yaml_mapping, validate_or_raise

#: The shipped latency profiles (inside a wheel, or the checkout's ``latency_profiles/``).
DEFAULT_PROFILES_DIR = shipped("latency_profiles")
#: The file name errors give an experiment loaded from a mapping (in its ``base_dir``).
DICT_SOURCE = "<dict>"
#: Where ``jmsnas profile`` writes by default, relative to the working directory.
USER_PROFILES_DIR = Path("latency_profiles")


def default_profiles_dir(names: list[str]) -> Path:
    """Where ``profile: NAME`` devices are looked up when the experiment names no ``profiles_dir``.

    ``./latency_profiles`` (what ``jmsnas profile`` writes) when it holds every named profile, else the
    shipped profiles.
    """
    local = (Path.cwd() / USER_PROFILES_DIR).resolve()
    if names and all((local / f"{n}.csv").is_file() for n in names):
        return local
    return DEFAULT_PROFILES_DIR


# --- topology --------------------------------------------------------------------------------


class AnalyticDeviceConfig(Strict):
    macs_per_s: PositiveFloat
    memory_bytes: PositiveInt
    memory_bandwidth_bytes_per_s: PositiveFloat | None = None
    overhead_ms: float = Field(0.0, ge=0)


class DeviceConfig(Strict):
    name: str = Field(min_length=1)
    profile: str | None = Field(None, description="name of a measured profile in profiles_dir (NAME.csv)")
    analytic: AnalyticDeviceConfig | None = None
    memory_bytes: PositiveInt | None = Field(None, description="memory limit of a profiled device")

    @model_validator(mode="after")
    def _one_description(self) -> DeviceConfig:
        if (self.profile is None) == (self.analytic is None):
            raise ValueError("give exactly one of 'profile' (a measured latency profile) or 'analytic'")
        return self


class LinkConfig(Strict):
    src: str
    dst: str
    bandwidth_mbps: float
    rtt_ms: float = 0.0


class TopologyConfig(Strict):
    kind: Literal["chain", "mesh"]
    devices: list[DeviceConfig] = Field(min_length=1)
    links: list[LinkConfig] = []


# --- strategy --------------------------------------------------------------------------------


class RetrainConfig(Strict):
    """Stage 2 of paper 003 §V-B: train the derived network alone."""

    epochs: PositiveInt = 30
    init: Literal["inherit", "scratch"] = "inherit"
    lr: PositiveFloat = 0.01


class _StrategyBase(Strict):
    def resolve_paths(self, resolve: Callable[[Path | None], Path | None]) -> _StrategyBase:
        """The section with its file paths resolved by ``resolve`` (relative to the experiment file)."""
        return self


class ProxylessConfig(_StrategyBase):
    """Paper 003 §IV: binary-gate supernet, loss eq. (4)."""

    name: Literal["proxyless"]
    warmup_epochs: int = Field(5, ge=0)
    epochs: PositiveInt = 20
    weight_lr: PositiveFloat = 0.05
    arch_lr: PositiveFloat = Field(0.002, description="Adam on alpha; paper 003 uses 0.002")
    lambda1: float = Field(4e-5, ge=0, description="weight decay, the λ1‖θ‖² of eq. (4)")
    lambda2: float = Field(1e-3, ge=0, description="latency penalty weight λ2 of eq. (4), per ms²")
    t_const_ms: PositiveFloat
    penalty: Literal["two_sided", "one_sided"] = "two_sided"
    split: Literal["searched", "pinned"] = "searched"
    max_layers_per_device: list[PositiveInt] | None = None
    weight_sharing: Literal["entangled", "separate"] = Field("entangled", description="entangled: a layer's MBConvs "
                                                             "are slices of one MBConv; separate: a module each")
    bn_calibration_batches: int = Field(20, ge=0, description="training batches the derived network's BatchNorm "
                                        "statistics are re-estimated on before it is validated (0: shared statistics)")
    train_derived: bool = Field(True, description="weight steps also train the network derivation hands on now")
    derive_candidates: int = Field(16, ge=0, description="feasible networks sampled from p and scored beside the "
                                   "repaired most probable one (jmsnas.strategies.derive; 0: the repair alone)")
    retrain: RetrainConfig = RetrainConfig()

    @model_validator(mode="after")
    def _pinned_needs_counts(self) -> ProxylessConfig:
        if self.split == "pinned" and self.max_layers_per_device is None:
            raise ValueError("split: pinned needs max_layers_per_device (a count per device, topology order)")
        return self


class TeacherConfig(Strict):
    """The network whose softened outputs guide the morphism search (paper 000 §III-C)."""

    model: str = Field("wide", description="'wide' (a wide search-space network) or a timm/torchvision name")
    epochs: PositiveInt = 20
    checkpoint: Path | None = Field(None, description="a state dict of the teacher (torch.load weights_only); "
                                    "given: not trained")
    width: PositiveFloat = Field(2.0, description="'wide': multiplier of the search space's channel widths")
    lr: PositiveFloat = 0.05


class MorphismConfig(_StrategyBase):
    """Paper 000 §III-C: KD-guided network-morphism hill climbing."""

    name: Literal["morphism"]
    iterations: PositiveInt = 4
    children: PositiveInt = 4
    child_epochs: PositiveInt = 3
    temperature: PositiveFloat = Field(20.0, description="paper 000 uses T = 20")
    kd_weight: float = Field(0.9, ge=0, le=1, description="weight of the soft term; 1 - kd_weight on hard labels")
    use_kd: bool = Field(True, description="false: the plain search (hard labels, hard validation loss)")
    t_const_ms: PositiveFloat
    teacher: TeacherConfig = TeacherConfig()
    morphs_per_child: PositiveInt = Field(2, description="random morphisms applied to the parent per child")
    child_lr: PositiveFloat = Field(0.05, description="initial SGD learning rate of a child (cosine to 0)")
    lambda1: float = Field(4e-5, ge=0, description="weight decay of children, teacher and retraining")
    start_width: PositiveFloat = Field(0.5, description="start network: this share of each stage's width")
    start_op: str = Field("mb_k3_e3", description="start network: the op of its one layer per stage")
    parallel_children: PositiveInt = Field(2, description="under Ray Tune: children trained at once, one "
                                           "Ray task (resources_per_trial) each")
    acceptance: Literal["fair", "paper"] = Field(
        "fair", description="fair: the parent trains child_epochs more beside its children and that score is the "
        "bar (NASH); paper: the parent's score from when it was accepted (paper 000)")
    # Paper 000 retrains the found architecture from scratch on hard labels.
    retrain: RetrainConfig = RetrainConfig(init="scratch")

    def resolve_paths(self, resolve: Callable[[Path | None], Path | None]) -> MorphismConfig:
        if self.teacher.checkpoint is None:
            return self
        return self.model_copy(update={"teacher": self.teacher.model_copy(
            update={"checkpoint": resolve(self.teacher.checkpoint)})})

    @model_validator(mode="after")
    def _start_op_is_plain_mbconv(self) -> MorphismConfig:
        from jmsnas.space.candidates import CANDIDATES

        op = CANDIDATES.get(self.start_op)
        if op is None or op.kind != "mbconv" or op.shortcut:
            plain = [n for n, c in CANDIDATES.items() if c.kind == "mbconv" and not c.shortcut]
            raise FieldValueError(f"{self.start_op!r} is not an MBConv without shortcut; valid: {', '.join(plain)}",
                                  "start_op")
        return self


class RandomConfig(_StrategyBase):
    """Latency-constrained random search (Li & Talwalkar 2019): the baseline a search must beat.

    Networks of the search space are drawn uniformly (one candidate per layer) and kept only when
    their predicted latency on the topology fits ``t_const_ms``; each is trained for
    ``sample_epochs``, the best by validation accuracy is retrained.
    """

    name: Literal["random"]
    t_const_ms: PositiveFloat
    num_candidates: PositiveInt = Field(8, description="networks drawn within T_const and trained")
    sample_epochs: PositiveInt = Field(3, description="epochs each candidate is trained before they are compared")
    max_rejections: PositiveInt = Field(1000, description="draws in a row that break T_const (or fit no memory) "
                                        "before sampling stops")
    time_budget_s: PositiveFloat | None = Field(None, description="wall-clock seconds of candidate training; no "
                                                "candidate starts once spent (the first always does)")
    sample_lr: PositiveFloat = Field(0.05, description="initial SGD learning rate of a candidate (cosine to 0)")
    lambda1: float = Field(4e-5, ge=0, description="weight decay of candidates and retraining")
    # Li & Talwalkar train the chosen architecture from scratch; `inherit` continues from its sample training.
    retrain: RetrainConfig = RetrainConfig(init="scratch")


StrategyConfig = Annotated[ProxylessConfig | MorphismConfig | RandomConfig, Field(discriminator="name")]


# --- tune ------------------------------------------------------------------------------------


class ResourcesConfig(Strict):
    cpu: PositiveFloat = 1.0
    gpu: float = Field(0.0, ge=0)


class TuneConfig(Strict):
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="strategy fields (or 'seed') to grid over")
    num_samples: PositiveInt = 1
    scheduler: Literal["fifo", "asha"] = "fifo"
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: PositiveInt | None = None
    resources_per_trial: ResourcesConfig = ResourcesConfig()


# --- later stages ----------------------------------------------------------------------------


class ExportConfig(Strict):
    """Export of each chosen network as bundle/: a TorchScript and an ONNX file per device, manifest.json."""

    verify: bool = Field(True, description="run the exported parts against the unsplit model and record the figures")
    measure: bool = Field(True, description="time every exported part that runs on a device with a measured profile "
                                            "on this machine (ONNX Runtime and TorchScript, batch 1) and write the "
                                            "figures beside the predictions (deploy.json: latency_measured)")


# --- the experiment --------------------------------------------------------------------------


class ExperimentConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    dataset: DatasetConfig
    topology: TopologyConfig
    search_space: Path
    strategy: StrategyConfig
    tune: TuneConfig = TuneConfig()
    trainer: TrainerConfig = TrainerConfig()
    exits: ExitsConfig | None = None
    partition: PartitionConfig | None = None
    export: ExportConfig | None = None
    profiles_dir: Path | None = Field(None, description="where profile: NAME devices are looked up; resolved at load "
                                      "(default: ./latency_profiles when it holds every profile named, "
                                      "else the shipped ones)")
    output_dir: Path | None = Field(None, description="runs are written to OUTPUT_DIR/<name>; resolved at load "
                                    "(default: ./runs)")

    @model_validator(mode="after")
    def _gpus_used_when_reserved(self) -> ExperimentConfig:
        gpu, accel = self.tune.resources_per_trial.gpu, self.trainer.accelerator
        if gpu > 0 and accel == "cpu":
            raise FieldValueError(f"tune.resources_per_trial.gpu reserves {gpu:g} GPU(s) that no training would use; "
                                  "set trainer.accelerator: gpu (or gpu: 0)", "trainer.accelerator")
        if gpu == 0 and accel in ("gpu", "cuda"):
            raise FieldValueError(f"trainer.accelerator {accel!r} needs a GPU, but a Ray trial sees only the GPUs "
                                  "tune.resources_per_trial.gpu reserves (0); set it to 1 (or a fraction)",
                                  "tune.resources_per_trial.gpu")
        if accel in ("gpu", "cuda") and self.trainer.devices > max(1, int(gpu)):
            raise FieldValueError(f"{self.trainer.devices} devices per Trainer, but a trial reserves {gpu:g} GPU(s)",
                                  "trainer.devices")
        return self


class Experiment:
    """A loaded, validated experiment: the config plus the objects built from it."""

    def __init__(self, config: ExperimentConfig, path: Path, topology: Topology, search_space: Any) -> None:
        self.config = config
        self.path = path
        self.topology = topology
        self.search_space = search_space

    @property
    def run_dir(self) -> Path:
        return self.config.output_dir / self.config.name


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _resolve_paths(config: ExperimentConfig, base: Path) -> ExperimentConfig:
    names = [d.profile for d in config.topology.devices if d.profile is not None]
    updates: dict[str, Any] = {"search_space": _resolve(base, config.search_space),
                               "profiles_dir": _resolve(base, config.profiles_dir) or default_profiles_dir(names),
                               "output_dir": _resolve(base, config.output_dir) or Path.cwd() / "runs"}
    dataset = config.dataset
    if hasattr(dataset, "root"):
        updates["dataset"] = dataset.model_copy(update={"root": _resolve(base, dataset.root)})
    updates["strategy"] = config.strategy.resolve_paths(lambda p: _resolve(base, p))
    return config.model_copy(update=updates)


def build_devices(config: TopologyConfig, profiles_dir: Path, file: Path) -> list[Device]:
    devices = []
    for i, d in enumerate(config.devices):
        if d.profile is not None and not (profiles_dir / f"{d.profile}.csv").is_file():
            have = sorted(p.stem for p in profiles_dir.glob("*.csv")) if profiles_dir.is_dir() else []
            raise ConfigError(f"no latency profile {d.profile!r} in {profiles_dir} (available: {have or 'none'}); "
                              "measure one with `python -m jmsnas.profile` or describe the device with 'analytic'",
                              file=file, field=f"topology.devices[{i}].profile")
        analytic = None if d.analytic is None else AnalyticSpec(**d.analytic.model_dump())
        devices.append(Device(name=d.name, profile=d.profile, analytic=analytic, memory_bytes=d.memory_bytes))
    return devices


def _check_grid(config: ExperimentConfig, file: Path) -> None:
    allowed = set(type(config.strategy).model_fields) - {"name", "retrain", "teacher"} | {"seed"}
    for key, values in config.tune.grid.items():
        if key not in allowed:
            raise ConfigError(f"cannot grid over {key!r}; valid keys for strategy {config.strategy.name!r}: "
                              f"{', '.join(sorted(allowed))}", file=file, field=f"tune.grid.{key}")
        if not values:
            raise ConfigError("a grid needs at least one value", file=file, field=f"tune.grid.{key}")


def _read(source: str | Path | Mapping[str, Any], base_dir: str | Path | None) -> tuple[Path, Path, dict[str, Any]]:
    """The file errors name, the directory relative paths are resolved from, and the raw mapping."""
    if isinstance(source, Mapping):
        base = Path(base_dir if base_dir is not None else Path.cwd()).resolve()
        return base / DICT_SOURCE, base, dict(source)
    path = Path(source).resolve()
    return path, path.parent if base_dir is None else Path(base_dir).resolve(), load_yaml_mapping(path)


def _validate(data: dict[str, Any], path: Path, overrides: Sequence[str]) -> ExperimentConfig:
    """The schema check, with the ``--set`` override that a bad field came from named in the error."""
    from jmsnas.overrides import apply_overrides, override_keys

    try:
        data = apply_overrides(data, overrides)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=path, field=exc.field) from None
    try:
        return validate_or_raise(ExperimentConfig, data, file=path)
    except ConfigError as exc:
        hit = [o for o, key in zip(overrides, override_keys(overrides), strict=True)
               if exc.field is not None and (exc.field == key or exc.field.startswith((key + ".", key + "[")))]
        if not hit:
            raise
        raise ConfigError(f"{exc.message} (from --set {hit[-1]})", file=path, field=exc.field) from None


def load_experiment(source: str | Path | Mapping[str, Any], check_data: bool = True, *,
                    overrides: Sequence[str] = (), base_dir: str | Path | None = None) -> Experiment:
    """Load, validate and resolve an experiment file (or the same content as a dict).

    Args:
        source: the experiment YAML file, or its content as a mapping (a notebook's dict).
        check_data: also check that a dataset root holds what the dataset needs (cheap, no loading).
        overrides: ``KEY.PATH=VALUE`` changes applied before validation (``jmsnas search --set``;
            `jmsnas.overrides`), validated like the file.
        base_dir: where relative paths are resolved from; default: the file's folder, or for a
            mapping the working directory.

    Raises:
        JmsnasError: naming the file (``<dict>`` in ``base_dir`` for a mapping), the field path and what
            would be valid.
    """
    from jmsnas.dataset_info import check_dataset
    from jmsnas.space.spec import load_search_space

    path, base, data = _read(source, base_dir)
    config = _resolve_paths(_validate(data, path, overrides), base)
    try:
        devices = build_devices(config.topology, config.profiles_dir, path)
        links = [Link(**link.model_dump()) for link in config.topology.links]
        topology = build_topology(config.topology.kind, devices, links)
    except JmsnasError as exc:
        raise type(exc)(exc.message, file=path, field=exc.field) from None
    _check_grid(config, path)
    if not config.search_space.is_file():
        raise ConfigError(f"search space file {config.search_space} not found", file=path, field="search_space")
    space = load_search_space(config.search_space)
    if check_data:
        check_dataset(config.dataset, file=path)
    return Experiment(config=config, path=path, topology=topology, search_space=space)
