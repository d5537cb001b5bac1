"""Training and scoring one child of the morphism search (paper 000 §III-C).

A child is trained briefly from the weights its morphisms preserved, with SGD and a cosine
schedule (NASH's SGDR, one cycle), on the distillation loss (`jmsnas.distill`) against the
teacher's logits, which are computed once per search and travel with the data (``WithTeacher``).
It is scored by the same loss on the validation split, the *softened validation loss*; the plain
variant (``use_kd: false``) trains and scores on hard cross-entropy.

``train_child(data, job)`` is a plain function of picklable arguments, so the search can run it
in its own process, as a Ray task (`jmsnas.tune`), or in a loop.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from jmsnas.config import TrainerConfig
from jmsnas.distill import distillation_loss
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.strategies.retrain import Classifier


class WithTeacher(Dataset):
    """``(x, y, teacher_logits)`` samples: a dataset with the teacher's logits for each of its samples."""

    def __init__(self, base: Dataset, logits: torch.Tensor) -> None:
        if len(base) != len(logits):
            raise ValueError(f"{len(base)} samples but {len(logits)} teacher logits")
        self.base = base
        self.logits = logits

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index][:2]
        return x, y, self.logits[index]


class DistillClassifier(Classifier):
    """``Classifier`` on the distillation loss; logs ``val_score``, the loss a child is judged by.

    Batches are ``(x, y, teacher_logits)`` when ``use_kd``, else ``(x, y)`` and the loss is plain
    cross-entropy.

    Args:
        model: the network.
        lr: initial learning rate (cosine to zero over ``epochs``).
        weight_decay: L2 weight decay.
        epochs: length of the cosine schedule.
        temperature: T of the soft term.
        kd_weight: weight of the soft term (``1 - kd_weight`` on the hard labels).
        use_kd: False: the plain variant.
    """

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, epochs: int, temperature: float,
                 kd_weight: float, use_kd: bool = True) -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, epochs=epochs)
        self.temperature = temperature
        self.kd_weight = kd_weight
        self.use_kd = use_kd

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.model(x)
        if self.use_kd:
            loss, _ = distillation_loss(logits, batch[2], y, self.temperature, self.kd_weight)
        else:
            loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        name = "score" if stage == "val" else "loss"
        self.log_dict({f"{stage}_{name}": loss.detach(), f"{stage}_acc": acc}, prog_bar=False, on_step=False,
                      on_epoch=True, batch_size=len(y))
        return loss


@dataclass
class ChildData:
    """What every child of a search shares: the data and how to train."""

    train: Dataset
    val: Dataset
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float
    temperature: float
    kd_weight: float
    use_kd: bool
    hw: TrainerConfig = field(default_factory=TrainerConfig)  # accelerator / devices / precision of every child


@dataclass
class ChildJob:
    """One child: its architecture (``ArchSpec.to_dict``), its inherited weights and its seed."""

    index: int
    arch: dict
    state: dict[str, torch.Tensor]
    seed: int


@dataclass
class ChildResult:
    """A trained child: its score (lower is better), validation accuracy, weights, and where it was trained."""

    index: int
    score: float
    val_acc: float
    state: dict[str, torch.Tensor]
    wall_s: float
    pid: int


def _quiet_lightning() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def fit(model: nn.Module, data: ChildData, seed: int, epochs: int | None = None) -> tuple[float, float]:
    """Train ``model`` in place on ``data`` and return ``(score, val_acc)`` after the last epoch."""
    _quiet_lightning()
    pl.seed_everything(seed, workers=True, verbose=False)
    epochs = epochs or data.epochs
    system = DistillClassifier(model, lr=data.lr, weight_decay=data.weight_decay, epochs=epochs,
                               temperature=data.temperature, kd_weight=data.kd_weight, use_kd=data.use_kd)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(data.train, batch_size=data.batch_size, shuffle=True, generator=gen)
    val = DataLoader(data.val, batch_size=data.batch_size, shuffle=False)
    trainer = pl.Trainer(max_epochs=epochs, **data.hw.kwargs(), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(system, train, val)
    found = trainer.callback_metrics
    return float(found["val_score"]), float(found["val_acc"])


def train_child(data: ChildData, job: ChildJob) -> ChildResult:
    """Build the child, load its inherited weights, train it briefly and score it."""
    start = time.perf_counter()
    model = build_model(ArchSpec.from_dict(job.arch))
    model.load_state_dict(job.state)
    score, val_acc = fit(model, data, job.seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ChildResult(job.index, score, val_acc, state, time.perf_counter() - start, os.getpid())
