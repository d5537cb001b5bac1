"""`SupernetSearch`: the JMSNAS search (paper 003 §IV) as a Lightning module.

The *system* (this module: the alternating weight / architecture steps, the loss of eq. (4), the
logging) is apart from the *model* (a plain `Supernet` the user can take away).

Each training batch does a weight step: one path per layer sampled from p = softmax(α), the
cross-entropy on a training batch, SGD on the weights (λ1‖θ‖² as weight decay). After the warm-up
epochs it also does an architecture step on a *validation* batch: two paths per layer, binary
gates, cross-entropy plus the latency penalty λ2 (E[T] − T_const)² (`LatencyPenalty`), α updated by
eq. (5) through the gates (`MixedOp.set_alpha_grad`) and directly through E[T], with Adam
(betas (0, 0.999), as ProxylessNAS), then the pair's logits re-scaled so unsampled paths keep
their probabilities.

Manual optimization: two optimizers advance ``trainer.global_step`` twice per batch, so the module
keeps its own step counters, saved in checkpoints with the sampling generator's state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from jmsnas.space.supernet import Supernet
from jmsnas.strategies.latency import ExpectedLatency, LatencyPenalty


class SupernetSearch(pl.LightningModule):
    """Alternating weight and architecture steps over a `Supernet`.

    Args:
        supernet: the supernet (its weights and α are trained in place).
        latency: the expected-latency predictor over the experiment's topology.
        penalty: the latency term of eq. (4).
        weight_lr: initial SGD learning rate of the weights (cosine-annealed over ``epochs``).
        arch_lr: Adam learning rate of α (paper 003: 0.002).
        weight_decay: λ1 of eq. (4).
        warmup_epochs: epochs of weight steps only before α starts to move.
        epochs: total epochs (sets the learning-rate schedule).
        seed: seed of the path-sampling generator.
        arch_batches: batches for the architecture steps; default: the datamodule's validation loader.
        arch_ce_weight: weight of the cross-entropy in the architecture loss (0 leaves only the latency term).
    """

    def __init__(self, supernet: Supernet, latency: ExpectedLatency, penalty: LatencyPenalty, *,
                 weight_lr: float = 0.05, arch_lr: float = 0.002, weight_decay: float = 4e-5, warmup_epochs: int = 5,
                 epochs: int = 20, seed: int = 0, arch_batches: Iterable | None = None,
                 arch_ce_weight: float = 1.0) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.supernet = supernet
        self.latency = latency
        self.penalty = penalty
        self.weight_lr = weight_lr
        self.arch_lr = arch_lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.epochs = epochs
        self.generator = torch.Generator().manual_seed(seed)
        self.arch_batches = arch_batches
        self.arch_ce_weight = arch_ce_weight
        self._arch_iter: Iterator | None = None
        self.weight_steps = 0
        self.arch_steps = 0

    def configure_optimizers(self):
        weights = torch.optim.SGD(self.supernet.weight_parameters(), lr=self.weight_lr, momentum=0.9, nesterov=True,
                                  weight_decay=self.weight_decay)
        arch = torch.optim.Adam(self.supernet.arch_parameters(), lr=self.arch_lr, betas=(0.0, 0.999), eps=1e-8)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(weights, T_max=max(1, self.epochs))
        return [weights, arch], [schedule]

    def _next_arch_batch(self):
        if self._arch_iter is None:
            source = self.arch_batches if self.arch_batches is not None else self.trainer.datamodule.val_dataloader()
            self._arch_iter = iter(itertools.cycle(source)) if not isinstance(source, Iterator) else source
        x, y = next(self._arch_iter)
        return x.to(self.device), y.to(self.device)

    def training_step(self, batch, batch_idx: int) -> None:
        w_opt, a_opt = self.optimizers()
        x, y = batch
        self.toggle_optimizer(w_opt)
        logits = self.supernet(x, self.supernet.sample_paths(self.generator))
        loss = F.cross_entropy(logits, y)
        w_opt.zero_grad()
        self.manual_backward(loss)
        w_opt.step()
        self.untoggle_optimizer(w_opt)
        self.weight_steps += 1
        self.log_dict({"train_loss": loss.detach(), "train_acc": (logits.argmax(1) == y).float().mean()},
                      prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))
        if self.current_epoch >= self.warmup_epochs:
            self._arch_step(a_opt)

    def _arch_step(self, a_opt) -> None:
        x, y = self._next_arch_batch()
        self.toggle_optimizer(a_opt)
        pairs = self.supernet.sample_paths(self.generator, two=True)
        a_opt.zero_grad()
        ce = F.cross_entropy(self.supernet(x, pairs), y)
        estimate = self.latency(self.supernet.probs())
        penalty, info = self.penalty(estimate.total_ms)
        self.manual_backward(self.arch_ce_weight * ce + penalty)  # CE reaches the gates; E[T] reaches alpha directly
        self.supernet.set_alpha_grads(pairs)
        old = [a.detach().clone() for a in self.supernet.arch_parameters()]
        a_opt.step()
        self.supernet.rescale_alphas(pairs, old)
        self.untoggle_optimizer(a_opt)
        self.arch_steps += 1
        self.log_dict({"arch_ce": ce.detach(), **info}, on_step=False, on_epoch=True, batch_size=len(y))

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self.supernet(x, [layer.argmax() for layer in self.supernet.layers])
        self.log_dict({"val_loss": F.cross_entropy(logits, y), "val_acc": (logits.argmax(1) == y).float().mean()},
                      prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        with torch.no_grad():
            soft = self.latency(self.supernet.probs())
            hard = self.latency.for_choices([layer.argmax() for layer in self.supernet.layers])
            entropy = torch.stack([layer.entropy() for layer in self.supernet.layers]).mean()
        metrics = {"expected_latency_ms": float(soft.total_ms), "derived_latency_ms": float(hard.total_ms),
                   "feasible": float(float(hard.total_ms) <= self.penalty.t_const_ms), "gate_entropy": float(entropy)}
        metrics.update({f"device_ms/{d}": v for d, v in soft.device_ms.items()})
        self.log_dict(metrics, prog_bar=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["jmsnas"] = {"weight_steps": self.weight_steps, "arch_steps": self.arch_steps,
                                "generator": self.generator.get_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["jmsnas"]
        self.weight_steps, self.arch_steps = state["weight_steps"], state["arch_steps"]
        self.generator.set_state(state["generator"])
