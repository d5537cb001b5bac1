"""Stage 2 of paper 003 §V-B: train the derived network alone, then evaluate it on the test split.

`Classifier` is the system (loss, optimizer, metrics); the network inside is a plain `ArchNet`
(or any classifier ``nn.Module``) the user takes away.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def accuracy(model: nn.Module, batches) -> float:
    """Top-1 accuracy of ``model`` (in its current mode) over ``(x, y)`` batches, on its device and dtype."""
    param = next(model.parameters())
    correct = total = 0
    for x, y in batches:
        x = x.to(param.device, param.dtype) if x.is_floating_point() else x.to(param.device)
        correct += int((model(x).argmax(1) == y.to(param.device)).sum())
        total += len(y)
    return correct / total


class Classifier(pl.LightningModule):
    """Cross-entropy training of a classifier with SGD (Nesterov) and a cosine schedule.

    Args:
        model: the network.
        lr: initial learning rate.
        weight_decay: L2 weight decay (λ1 of paper 003 eq. (4)).
        epochs: length of the cosine schedule.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(self, model: nn.Module, lr: float = 0.05, weight_decay: float = 4e-5, epochs: int = 30,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.label_smoothing = label_smoothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({f"{stage}_loss": loss.detach(), f"{stage}_acc": acc}, prog_bar=stage != "train",
                      on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9, nesterov=True,
                              weight_decay=self.weight_decay)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs))]
