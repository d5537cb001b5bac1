"""The teacher of the morphism search (paper 000 §III-C): a larger network trained on the same data.

Paper 000 fine-tunes ImageNet-pretrained networks (InceptionResNet) as teachers. Here the teacher is

- ``wide``: the search space's network with its largest MBConv on every layer and every width
  multiplied by ``teacher.width`` (works on signals and images alike), or
- any timm or torchvision model by name, built untrained (no weights are downloaded) for the
  dataset's classes and channels: images only.

It is trained once on hard labels and cached in the run directory (``teacher/teacher.pt``, a state
dict, and ``teacher/teacher.json``: what it was trained for, and its accuracy). Concurrent trials
take a file lock, so one trains and the others load. A teacher the user gives
(``teacher.checkpoint``) is a state dict of that model, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from jmsnas.config import Experiment, MorphismConfig, TeacherConfig, TrainerConfig
from jmsnas.data import JmsnasDataModule
from jmsnas.errors import ConfigError, JmsnasError
from jmsnas.io import atomic_write
from jmsnas.space.arch import ArchSpec, BlockSpec, HeadSpec, StemSpec, build_model
from jmsnas.space.candidates import CANDIDATES
from jmsnas.space.spec import SearchSpace
from jmsnas.strategies.records import TeacherRecord, UserTeacher
from jmsnas.strategies.retrain import Classifier
from jmsnas.strategies.teacher_check import library_of


def wide_spec(space: SearchSpace, num_classes: int, input_shape: tuple[int, ...], width: float) -> ArchSpec:
    """The search space's network with its largest MBConv per layer and every width times ``width``."""

    def w(c: int) -> int:
        return max(1, round(c * width))

    def size(name: str) -> tuple:
        op = CANDIDATES[name]
        return (op.kind == "mbconv", op.kernel_size or 0, op.expansion or 0, op.shortcut)

    blocks = [BlockSpec.of(max(s.candidates, key=size), w(s.in_channels), w(s.out_channels), s.stride)
              for s in space.layers(input_shape)]
    cfg = space.config
    return ArchSpec(dims=cfg.dims, input_shape=input_shape, num_classes=num_classes,
                    stem=StemSpec(channels=w(cfg.stem.channels), kernel_size=cfg.stem.kernel_size,
                                  stride=cfg.stem.stride),
                    blocks=tuple(blocks), head=HeadSpec(channels=w(cfg.head.channels), dropout=cfg.head.dropout))


def build_teacher(cfg: TeacherConfig, space: SearchSpace, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The untrained teacher network."""
    if cfg.model == "wide":
        return build_model(wide_spec(space, num_classes, input_shape, cfg.width))
    if library_of(cfg.model) == "timm":
        import timm

        return timm.create_model(cfg.model, pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
    import torchvision

    model = torchvision.models.get_model(cfg.model, weights=None, num_classes=num_classes)
    return model if input_shape[0] == 3 else nn.Sequential(nn.Conv2d(input_shape[0], 3, 1), model)


def _cache_key(exp: Experiment, cfg: TeacherConfig, num_classes: int, input_shape: tuple[int, ...]) -> dict:
    """What a cached teacher was trained for: it is reused only for the same."""
    return {"teacher": cfg.model_dump(mode="json", exclude={"checkpoint"}),
            "dataset": exp.config.dataset.model_dump(mode="json"), "seed": exp.config.seed,
            "search_space": exp.search_space.config.model_dump(mode="json"), "num_classes": num_classes,
            "input_shape": list(input_shape)}


def load_user_teacher(model: nn.Module, path: Path, exp: Experiment) -> None:
    """Load a state dict the user gives (``teacher.checkpoint``): weights only, never unpickled code."""
    field = "strategy.teacher.checkpoint"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, OSError...
        raise ConfigError(f"cannot read {path} as weights ({str(exc).splitlines()[0]})", file=exp.path,
                          field=field) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint of `Classifier`
    if not isinstance(state, dict):
        raise ConfigError(f"{path} does not hold a state dict", file=exp.path, field=field)
    if state and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        why = " ".join(line.strip() for line in str(exc).splitlines()[:2])
        raise ConfigError(f"{path} does not fit the teacher {exp.config.strategy.teacher.model!r}: {why}",
                          file=exp.path, field=field) from None


def _train(model: nn.Module, dm: JmsnasDataModule, strategy: MorphismConfig, out_dir: Path,
           progress: bool, hw: TrainerConfig) -> dict:
    from jmsnas.strategies.run import _trainer

    cfg = strategy.teacher
    system = Classifier(model, lr=cfg.lr, weight_decay=strategy.lambda1, epochs=cfg.epochs)
    hparams = {"teacher": cfg.model_dump(mode="json"), "weight_decay": strategy.lambda1}
    trainer = _trainer(out_dir, "train", cfg.epochs, progress, hw, hparams, enable_checkpointing=False)
    start = time.perf_counter()
    trainer.fit(system, datamodule=dm)
    wall = time.perf_counter() - start
    val_acc = float(trainer.callback_metrics["val_acc"])
    test_acc = float(trainer.test(system, datamodule=dm, verbose=False)[0]["test_acc"])
    return {"val_acc": val_acc, "test_acc": test_acc, "train_wall_s": wall}


def load_or_train_teacher(exp: Experiment, strategy: MorphismConfig, dm: JmsnasDataModule, cache_dir: Path, *,
                          seed: int = 0, progress: bool = False) -> tuple[nn.Module, dict]:
    """The trained teacher (eval mode) and its record: the user's checkpoint, the cached one, or trained now.

    Args:
        exp: the experiment.
        strategy: the morphism strategy (its ``teacher`` section and ``lambda1``).
        dm: the data.
        cache_dir: where the trained teacher is kept (``runs/<name>/teacher``).
        seed: seed of the teacher's initialisation and data order, when it is trained.
        progress: show Lightning's progress bars.

    Returns:
        The teacher, and its record (``teacher.json``: what it was trained for, its accuracy).
    """
    info = dm.info()
    cfg = strategy.teacher
    model = build_teacher(cfg, exp.search_space, info.num_classes, info.input_shape)
    if cfg.checkpoint is not None:
        load_user_teacher(model, cfg.checkpoint, exp)
        return model.eval(), UserTeacher(checkpoint=str(cfg.checkpoint), model=cfg.model).model_dump()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(exp, cfg, info.num_classes, info.input_shape)
    weights, record_path = cache_dir / "teacher.pt", cache_dir / "teacher.json"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one trial trains; the others wait, then load
        cached = _cached_record(record_path)
        if cached is not None and cached.key == key and weights.is_file():
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return model.eval(), cached.data()
        pl.seed_everything(seed, workers=True, verbose=False)
        model = build_teacher(cfg, exp.search_space, info.num_classes, info.input_shape)
        scores = _train(model, dm, strategy, cache_dir, progress, exp.config.trainer)
        record = TeacherRecord.of({"key": key, "model": cfg.model, "params": sum(p.numel() for p in model.parameters()),
                                   **scores})
        atomic_write(weights, lambda p: torch.save(model.state_dict(), p))
        record.write(record_path)
    return model.eval(), record.data()


def _cached_record(path: Path) -> TeacherRecord | None:
    """The cached teacher's record, or None when there is none or it is unreadable (the teacher is retrained)."""
    if not path.is_file():
        return None
    try:
        return TeacherRecord.load(path)
    except JmsnasError:
        return None


@torch.no_grad()
def teacher_logits(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> torch.Tensor:
    """The teacher's logits on every sample of ``dataset``, in order (``[N, K]``)."""
    model.eval()
    outs = [model(batch[0]) for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    return torch.cat(outs).float()
