"""The Exit Predictor (paper 004 §III): a tiny network on the raw input that says which exits to compute.

It runs first, on the device, and gives one score ``s_n = sigmoid(f_EP(x))_n`` per early exit; exit n
is computed only where ``s_n >= gamma_n`` (Algorithm 1, ``jmsnas.exits.skip``). It is trained with
binary cross-entropy on the labels ``u(c_n - lambda_n)`` of a frozen early-exit network at fixed
thresholds (eqs. (6)-(9)): "would exit n be confident for this sample".

Architectures (``../shared/specs/exit-predictor.md`` B.4; 1-D and 2-D alike):

- ``ours``: a standard stride-2 conv (16 channels), then three depthwise-separable blocks whose
  stride-2 depthwise output is concatenated with a max-pooled copy of the block input, reweighted by
  squeeze-and-excitation and mixed by a pointwise conv (32, 64, 128 channels); flatten, FC 128, FC
  N-1. No conv bias, as the paper's MAC counts imply; BatchNorm after each convolution by default
  (``batch_norm``: without it the network did not train, see the class).
- ``plain`` (Table II "w/o Cat. & SE"): the same without the max-pool path and the SE.
- ``fcs`` ("FCs only"): flatten, FC 128, FC N-1.
- ``lenet`` (LeNet-5): conv5 6, pool, conv5 16, pool, FC 120, FC 84, FC N-1 (convs padded by 2 on
  inputs too short for two unpadded 5-wide convolutions).

The conv and linear MACs are pinned by the paper's Table II at 3x32x32 with two early exits:
290,816 (plain), 391,808 (ours, SE ratio 16), 393,472 (fcs), 651,048 (lenet). The spec proposes an SE
hidden width of at least 4; the paper's 0.40 M is met only by ``2 C_in // 16`` exactly (2 in the first
block), which is what is built here.

``width`` scales every channel count (the spec's fallback when the predictor is too large for a small
backbone: width 0.5 gives 8/16/32/64).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from jmsnas.devices import DeviceLike, on_device, to_device

VARIANTS = ("ours", "plain", "fcs", "lenet")

__all__ = ["VARIANTS", "ExitPredictor", "PredictorTraining", "exit_labels", "train_predictor", "predictor_scores"]


def _layers(dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if dims == 1:
        return nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d
    if dims == 2:
        return nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d
    raise ValueError(f"the Exit Predictor takes 1-D or 2-D inputs (channels, length[, width]), got {dims}-D")


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, ratio: int, dims: int) -> None:
        super().__init__()
        _, _, gap = _layers(dims)
        hidden = max(channels // ratio, 1)
        self.gap = gap(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(self.gap(x).flatten(1)))))
        return x * g.view(*g.shape, *([1] * (x.dim() - 2)))


class _Block(nn.Module):
    """Depthwise stride-2 conv (+ max-pooled input and SE when ``concat``), then a pointwise conv."""

    def __init__(self, cin: int, cout: int, dims: int, concat: bool, se_ratio: int, batch_norm: bool) -> None:
        super().__init__()
        conv, pool, _ = _layers(dims)
        self.depthwise = conv(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = _norm(cin, dims, batch_norm)
        self.pool = pool(2, 2, ceil_mode=True) if concat else None
        mixed = 2 * cin if concat else cin
        self.se = _SqueezeExcite(mixed, se_ratio, dims) if concat else None
        self.pointwise = conv(mixed, cout, 1, bias=False)
        self.bn2 = _norm(cout, dims, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.depthwise(x)))
        if self.pool is not None and self.se is not None:
            h = self.se(torch.cat([self.pool(x), h], dim=1))
        return torch.relu(self.bn2(self.pointwise(h)))


def _norm(channels: int, dims: int, on: bool) -> nn.Module:
    if not on:
        return nn.Identity()
    return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)


class ExitPredictor(nn.Module):
    """Scores (logits) for N-1 early exits from the raw input; ``sigmoid`` of them are the paper's ``s_n``.

    Args:
        input_shape: the input without batch, ``(C, L)`` or ``(C, H, W)``.
        num_exits: N-1, the early exits it scores.
        variant: one of ``VARIANTS``.
        width: multiplier of every channel count (1.0: the paper's 16 / 32 / 64 / 128).
        hidden: width of the hidden FC layer (the paper's 128).
        se_ratio: squeeze-and-excitation reduction (16).
        batch_norm: BatchNorm after each convolution of ``ours`` / ``plain``. Without it (the paper's MAC
            counts cannot tell) the network trained to a constant on MNIST-1D: every score the same
            (sd < 1e-3, AUC 0.57 against its labels), at SGD lr 0.1 and 0.01 alike. It costs no MACs
            at inference (folded into the convolutions; ``MacCounter`` does not count it).
    """

    def __init__(self, input_shape: Sequence[int], num_exits: int, variant: str = "ours", *, width: float = 1.0,
                 hidden: int = 128, se_ratio: int = 16, batch_norm: bool = True) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown Exit Predictor variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if num_exits < 1:
            raise ValueError(f"the Exit Predictor needs at least one early exit to score, got {num_exits}")
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_exits = int(num_exits)
        self.variant = variant
        dims = len(self.input_shape) - 1
        conv, pool, _ = _layers(dims)
        ch = [max(1, round(c * width)) for c in (16, 32, 64, 128)]
        cin = self.input_shape[0]
        if variant in ("ours", "plain"):
            blocks = [_Block(a, b, dims, variant == "ours", se_ratio, batch_norm) for a, b in zip(ch, ch[1:],
                                                                                                   strict=False)]
            self.features: nn.Module = nn.Sequential(conv(cin, ch[0], 3, stride=2, padding=1, bias=False),
                                                     _norm(ch[0], dims, batch_norm), nn.ReLU(), *blocks)
            fcs = [hidden]
        elif variant == "fcs":
            self.features = nn.Identity()
            fcs = [hidden]
        else:
            pad = 0 if min(self.input_shape[1:]) >= 16 else 2
            self.features = nn.Sequential(conv(cin, 6, 5, padding=pad), nn.ReLU(), pool(2, 2, ceil_mode=True),
                                          conv(6, 16, 5, padding=pad), nn.ReLU(), pool(2, 2, ceil_mode=True))
            fcs = [120, 84]
        with torch.no_grad():  # eval: BatchNorm cannot take one value per channel in training mode
            flat = self.features.eval()(torch.zeros(1, *self.input_shape)).numel()
        self.features.train()
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip([flat, *fcs], fcs, strict=False):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(fcs[-1], self.num_exits))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``z_EP`` [B, N-1] (eq. (8)); the scores are their sigmoid (eq. (7))."""
        return self.head(self.features(x))


def exit_labels(confidences: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Eq. (9): ``u(c_n - lambda_n)``, 1.0 where exit n is confident, for every sample and every early exit.

    Args:
        confidences: [B, N-1] exit confidences of the frozen early-exit network (all exits, every sample).
        thresholds: the N-1 fixed thresholds lambda.
    """
    lam = torch.as_tensor(list(thresholds), dtype=confidences.dtype)
    if lam.numel() != confidences.shape[1]:
        raise ValueError(f"{confidences.shape[1]} exits but {lam.numel()} thresholds")
    return (confidences >= lam).to(torch.float32)


@dataclass(frozen=True)
class PredictorTraining:
    """Paper 004 §V-A for the predictor: SGD with cosine annealing, weight decay 2e-4 (epochs scaled down)."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.1
    min_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 2e-4
    seed: int = 0


def train_predictor(predictor: ExitPredictor, x: torch.Tensor, labels: torch.Tensor,
                    training: PredictorTraining = PredictorTraining(), device: DeviceLike = None) -> ExitPredictor:
    """Fit ``predictor`` to eq. (9) labels with eq. (6) (BCE on the logits, summed over exits, batch mean).

    ``device``: where it trains (None: where it is); it ends back where it was.
    """
    if labels.shape != (len(x), predictor.num_exits):
        raise ValueError(f"labels must be [{len(x)}, {predictor.num_exits}], got {list(labels.shape)}")
    gen = torch.Generator().manual_seed(training.seed)
    torch.manual_seed(training.seed)
    loader = DataLoader(TensorDataset(x, labels), batch_size=training.batch_size, shuffle=True, generator=gen)
    with on_device(device, predictor) as dev:
        opt = torch.optim.SGD(predictor.parameters(), lr=training.lr, momentum=training.momentum,
                              weight_decay=training.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=training.epochs * len(loader),
                                                           eta_min=training.min_lr)
        loss_fn = nn.BCEWithLogitsLoss(reduction="none")
        predictor.train()
        for _ in range(training.epochs):
            for xb, yb in loader:
                opt.zero_grad()
                loss_fn(predictor(to_device(xb, dev)), to_device(yb, dev)).sum(dim=1).mean().backward()
                opt.step()
                sched.step()
    return predictor.eval()


@torch.no_grad()
def predictor_scores(predictor: nn.Module, x: torch.Tensor, batch_size: int = 1024,
                     device: DeviceLike = None) -> torch.Tensor:
    """The scores ``s`` [B, N-1] (sigmoid of the logits) of ``x``, in eval mode, as a CPU tensor.

    ``device``: where the predictor runs (None: where it is); it ends back where it was.
    """
    predictor.eval()
    with on_device(device, predictor) as dev:
        return torch.cat([torch.sigmoid(predictor(to_device(b, dev))) for b in x.split(batch_size)]).cpu()
