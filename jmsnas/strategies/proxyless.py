"""`SupernetSearch`: the JMSNAS search (paper 003 §IV) as a Lightning module.

The *system* (this module: the alternating weight / architecture steps, the loss of eq. (4), the
logging) is apart from the *model* (a plain `Supernet` the user can take away).

Each training batch does a weight step: one path per layer sampled from p = softmax(α), the
cross-entropy on a training batch, SGD on the weights (λ1‖θ‖² as weight decay). After the warm-up
epochs it also does an architecture step on a *validation* batch: two paths per layer, binary
gates, cross-entropy plus the latency penalty λ2 (E[T] − T_const)² (`LatencyPenalty`), α updated by
eq. (5) through the gates (`MixedOp.set_alpha_grad`) and directly through E[T], with Adam
(betas (0, 0.999), as ProxylessNAS), then the pair's logits re-scaled so unsampled paths keep
their probabilities. With ``train_derived`` (the experiments' default) every weight step after the
warm-up also trains the network that would be handed on now (`handed_on`: the most probable op per
layer, repaired by `derive_within` when it breaks T_const; re-derived at each epoch's start), the two
cross-entropies summed: the sandwich rule of BigNAS and Once-for-All, which always train the
smallest child beside the sampled ones (why: the section at the end).

Validation evaluates the network that would be handed on (`handed_on`), exported with the
supernet's weights and its BatchNorm statistics re-estimated on ``bn_calibration_batches``
training batches (`recalibrate_bn`). It is logged per epoch as ``val_acc_derived`` (also
``val_acc``, the metric Tune schedules on), beside ``val_acc_shared_bn``, the same network with the
supernet's shared running statistics; ``derived_latency_ms`` is its predicted latency,
``argmax_latency_ms`` the most probable network's.

Manual optimization: two optimizers advance ``trainer.global_step`` twice per batch, so the module
keeps its own step counters, saved in checkpoints with the sampling generator's state.

Why the supernet did not learn, and what fixed it
-------------------------------------------------
On ``experiments/quickstart.yaml`` (MNIST-1D, 3600 training samples in batches of 64: 57 weight steps
per epoch; 20 epochs, 5 of warm-up; T_const 18 ms; seed 0, one thread), with one module per
candidate (``weight_sharing: separate``, the code before), at the end of the search:

- the derived network scored 19 % with the shared BatchNorm statistics (between 8.5 and 26 % over
  the epochs), 27 % with batch statistics (train mode) and 30 % after recalibration on 20 training
  batches: the shared statistics cost about 10 pp, but the network was bad anyway;
- the supernet's own training accuracy on its sampled paths was 27 %: the weights did not learn.
  The training loop is not at fault: with one fixed path the same loop reaches 94 % in 4 epochs.
- not the cause: the learning rate (0.2 and 0.5 instead of 0.05: 23 and 21 % after 6 epochs, 23 % at
  0.05); updates per candidate (FairNAS's strict fairness, every candidate of every layer once per
  step at 13 times the cost: 23 % after 3 epochs with averaged gradients, 36 % with summed ones, 19 %
  single-path); shortcut-only candidates on the layers that keep the shape (27.5 % against 23 %
  after 6 epochs). Warm-up already samples uniformly: α stays 0 until it ends.
- the cause: candidates that share nothing. Sampling one layer (0, 1 or 5) while the others stay
  fixed already costs 12 to 26 pp after 4 epochs (69 to 83 % against 95 %); six such layers compound.

With the MBConv candidates of a layer as slices of one shared MBConv (``weight_sharing: entangled``,
the default; `jmsnas.space.entangled`) the same search ends with 97 % training accuracy and a derived
network at 96.8 % after recalibration (94 % with the shared statistics, 96 % in train mode); the
curve rises 47, 74, 89, 95 % at epochs 1, 5, 6, 10. A random path of the same supernet scores 79 %
with the shared statistics and 96.8 % after recalibration, so recalibration is what makes any path
other than the most sampled one comparable. One path trained alone reaches 97.5 % in 6 epochs.

Why the handed-on network is trained beside the sampled path
-------------------------------------------------------------
The penalty acts on E[T] under p, not on the most probable network. On the quickstart at T_const
14 ms (seed 0, without ``train_derived``) E[T] ended at 14 ms while the most probable network
predicts 15.9 ms; the repair made three layers identity, candidates of probability 0.02, 0.14 and
0.06 that the weight steps had almost never combined. After BN recalibration that network scored
84.5 % validation accuracy with the supernet's weights (85.4 % test), while the infeasible most
probable network scored 97.0 % and three random paths 97.0–97.3 %; retrained, it reaches 97.5 %:
what the search handed on was a good architecture with untrained weights. Sampling more feasible
networks from p does not help there: 800 draws gave none within 14 ms. Training the handed-on
network at every weight step (same seed, same 20 epochs) gives 97.75 % validation and 98.5 % test
accuracy with inherited weights, for 27 % more search time (67 s against 52 s, one thread).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from jmsnas.space.arch import ArchNet
from jmsnas.space.supernet import Supernet, recalibrate_bn
from jmsnas.strategies.expected_latency import ExpectedLatency, LatencyPenalty, derive_within


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
        calibration_batches: training batches the derived network's BatchNorm statistics are re-estimated on
            before each validation (`recalibrate_bn`); default: the datamodule's (or the Trainer's) training loader.
        bn_calibration_batches: how many; 0 evaluates with the supernet's shared statistics.
        train_derived: after the warm-up every weight step also trains the network the search would
            hand on now (`derive_within`, re-derived at each epoch's start), both losses summed.
    """

    def __init__(self, supernet: Supernet, latency: ExpectedLatency, penalty: LatencyPenalty, *,
                 weight_lr: float = 0.05, arch_lr: float = 0.002, weight_decay: float = 4e-5, warmup_epochs: int = 5,
                 epochs: int = 20, seed: int = 0, arch_batches: Iterable | None = None,
                 arch_ce_weight: float = 1.0, calibration_batches: Iterable | None = None,
                 bn_calibration_batches: int = 20, train_derived: bool = False) -> None:
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
        self.calibration_batches = calibration_batches
        self.bn_calibration_batches = bn_calibration_batches
        self.train_derived = train_derived
        self.derived_paths: list[int] | None = None  # trained beside the sampled path (train_derived)
        self._arch_iter: Iterator | None = None
        self._derived: list[ArchNet] = []  # a list, so that Lightning does not see a submodule
        self._paths: list[int] = []  # the validated network's ops
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
        x, y = self._as_trained(next(self._arch_iter))
        return x.to(self.device), y.to(self.device)

    def _as_trained(self, batch):
        """A batch this module draws itself, in the Trainer's precision (``trainer.precision``: 64-true -> float64)."""
        return batch if self._trainer is None else self.trainer.precision_plugin.convert_input(batch)

    def training_step(self, batch, batch_idx: int) -> None:
        w_opt, a_opt = self.optimizers()
        x, y = batch
        self.toggle_optimizer(w_opt)
        logits = self.supernet(x, self.supernet.sample_paths(self.generator))
        loss = F.cross_entropy(logits, y)
        total = loss
        if self.derived_paths is not None:
            derived = self.supernet(x, self.derived_paths)
            total = loss + F.cross_entropy(derived, y)
            self.log("train_acc_derived", (derived.argmax(1) == y).float().mean(), on_step=False, on_epoch=True,
                     batch_size=len(y))
        w_opt.zero_grad()
        self.manual_backward(total)
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

    def on_train_epoch_start(self) -> None:
        if self.train_derived and self.current_epoch >= self.warmup_epochs:
            self.derived_paths = self.handed_on()

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()

    def _calibration_source(self) -> Iterable:
        if self.calibration_batches is not None:
            source = self.calibration_batches
        else:
            dm = self.trainer.datamodule
            source = dm.train_dataloader() if dm is not None else self.trainer.train_dataloader
        return (self._as_trained(b) for b in source)

    def derived_network(self, paths: list[int] | None = None) -> ArchNet:
        """The derived network (default: the most probable one) with the supernet's weights, in eval mode.

        Its BatchNorm statistics are re-estimated on ``bn_calibration_batches`` training batches; the
        supernet itself is not changed.
        """
        net = self.supernet.export_subnet(paths)
        if self.bn_calibration_batches:
            recalibrate_bn(net, self._calibration_source(), self.bn_calibration_batches)
        return net.eval()

    def handed_on(self) -> list[int]:
        """The network derivation would hand on now: the most probable one, repaired to fit T_const."""
        return derive_within(self.supernet.probs(), self.latency, self.penalty.t_const_ms)

    def on_validation_epoch_start(self) -> None:
        self._paths = self.handed_on()
        self._derived = [self.derived_network(self._paths)]

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self._derived[0](x)
        shared = self.supernet(x, self._paths)  # the running statistics of all paths
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({"val_loss": F.cross_entropy(logits, y), "val_acc": acc}, prog_bar=True, on_step=False,
                      on_epoch=True, batch_size=len(y))
        self.log_dict({"val_acc_derived": acc, "val_acc_shared_bn": (shared.argmax(1) == y).float().mean()},
                      on_step=False, on_epoch=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        self._derived = []
        with torch.no_grad():
            soft = self.latency(self.supernet.probs())
            hard = self.latency.for_choices(self._paths)
            argmax = self.latency.for_choices([layer.argmax() for layer in self.supernet.layers])
            entropy = torch.stack([layer.entropy() for layer in self.supernet.layers]).mean()
        metrics = {"expected_latency_ms": float(soft.total_ms), "derived_latency_ms": float(hard.total_ms),
                   "argmax_latency_ms": float(argmax.total_ms),
                   "feasible": float(float(hard.total_ms) <= self.penalty.t_const_ms), "gate_entropy": float(entropy)}
        metrics.update({f"device_ms/{d}": v for d, v in soft.device_ms.items()})
        self.log_dict(metrics, prog_bar=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["jmsnas"] = {"weight_steps": self.weight_steps, "arch_steps": self.arch_steps,
                                "generator": self.generator.get_state(), "derived_paths": self.derived_paths}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["jmsnas"]
        self.weight_steps, self.arch_steps = state["weight_steps"], state["arch_steps"]
        self.generator.set_state(state["generator"])
        self.derived_paths = state.get("derived_paths")
