"""A learned bottleneck at a cut: BottleNet++'s autoencoder as paper 004 §IV-V uses it, then 8 bits.

The encoder (sending device) is a stride-2 convolution to ``channels / reduction`` channels,
BatchNorm and ReLU (004 §V replaces BottleNet++'s sigmoid by a ReLU); its output is quantised
to 8 bits (``compress.quantize``). The decoder (receiving device) dequantises and applies a
transposed convolution back to the cut's shape, BatchNorm and (for non-negative features,
e.g. after a ReLU) a ReLU. With ``reduction=4`` a 2-D cut of even height and width sends 1/64
of its float32 bytes: 1/4 channels, 1/4 positions, 1/4 bits.

Training (``fit_bottleneck``) follows 004's first step: the on-device part is frozen and only
the autoencoder learns. Unlike 004, the server part is not fine-tuned with it (it shares its
weights with the unsplit model), and the target is the unsplit model's soft output at
temperature T (knowledge distillation, as in paper 002), so no labels are needed. 004's second
step (fine-tuning the server part with the quantiser in place) is not done.

A learned codec has weights, so ``plan.json`` records only its settings and quantiser
parameters; its modules go to ``export.export_bundle(codecs=...)`` and end up inside the
exported graphs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from jmsnas.partition.compress import build_codec, calibrate
from jmsnas.partition.split import run_segments


class BottleneckEncoder(nn.Module):
    """Conv (stride 2) to fewer channels, BatchNorm, ReLU; on the one tensor of a cut."""

    def __init__(self, channels: int, reduced_channels: int, dims: int) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.conv = conv(channels, reduced_channels, 3, stride=2, padding=1, bias=False)
        self.bn = bn(reduced_channels)

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (F.relu(self.bn(self.conv(xs[0]))),)


class BottleneckDecoder(nn.Module):
    """Transposed conv (stride 2) back to the cut's shape, BatchNorm, and ReLU if ``nonnegative``."""

    def __init__(self, reduced_channels: int, shape: Sequence[int], nonnegative: bool) -> None:
        super().__init__()
        dims = len(shape) - 1
        deconv = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        # (ceil(s / 2) - 1) * 2 - 2 + 3 + pad == s  =>  pad = 1 for even s, 0 for odd s
        pad = tuple(1 - s % 2 for s in shape[1:])
        self.deconv = deconv(reduced_channels, shape[0], 3, stride=2, padding=1, output_padding=pad, bias=False)
        self.bn = bn(shape[0])
        self.nonnegative = nonnegative

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        y = self.bn(self.deconv(xs[0]))
        return (F.relu(y) if self.nonnegative else y,)


class CodecChain(nn.Module):
    """Two codec stages applied in order (each maps a tuple of tensors to a tuple)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return self.second(self.first(xs))


def make_bottleneck(
    shape: Sequence[int], reduction: int = 4, nonnegative: bool = True
) -> tuple[BottleneckEncoder, BottleneckDecoder]:
    """A fresh autoencoder for a one-tensor cut of per-sample ``shape`` ``(C, L)`` or ``(C, H, W)``.

    Raises:
        ValueError: a shape that is not 1-D or 2-D feature maps.
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"a bottleneck needs a (C, L) or (C, H, W) feature map, got shape {tuple(shape)}")
    reduced = max(1, math.ceil(shape[0] / reduction))
    return BottleneckEncoder(shape[0], reduced, len(shape) - 1), BottleneckDecoder(reduced, shape, nonnegative)


def fit_bottleneck(
    encoder: BottleneckEncoder,
    decoder: BottleneckDecoder,
    front: Sequence[nn.Module],
    back: Sequence[nn.Module],
    reference: nn.Module,
    inputs: Sequence[torch.Tensor],
    epochs: int = 20,
    lr: float = 1e-2,
    temperature: float = 4.0,
) -> list[float]:
    """Train the autoencoder so that ``back(decoder(encoder(front(x))))`` mimics ``reference(x)``.

    Args:
        encoder: from ``make_bottleneck``.
        decoder: from ``make_bottleneck``.
        front: the segments before the cut (frozen; run without gradients).
        back: the segments after the cut (frozen; gradients only pass through them).
        reference: the unsplit model (its soft output is the target).
        inputs: training batches.
        epochs: passes over ``inputs``.
        lr: Adam learning rate.
        temperature: distillation temperature T; the loss is ``T^2 KL(p_ref^T || p^T)``.

    Returns:
        The mean loss of every epoch.
    """
    with torch.no_grad():
        cached = [(run_segments(front, x), reference(x)) for x in inputs]
    frozen = [p for m in back for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    encoder.train(), decoder.train()
    history = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for _ in range(epochs):
            total = 0.0
            for features, target in cached:
                (logits,) = run_segments(back, *decoder(encoder(features)))
                loss = _distillation_loss(logits, target, temperature)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
            history.append(total / len(cached))
    finally:
        for p in frozen:
            p.requires_grad_(True)
        encoder.eval(), decoder.eval()
    return history


def _distillation_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    soft = F.log_softmax(logits / temperature, dim=-1)
    return F.kl_div(soft, F.softmax(target / temperature, dim=-1), reduction="batchmean") * temperature**2


def bottleneck_codec(
    encoder: BottleneckEncoder, decoder: BottleneckDecoder, samples: Sequence[Sequence[torch.Tensor]], reduction: int
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """``(encoder, decoder, params)`` of the trained bottleneck followed by 8-bit quantisation.

    Args:
        encoder: trained (``fit_bottleneck``).
        decoder: trained.
        samples: per calibration batch, the tensors crossing the cut (calibrates the quantiser on the code).
        reduction: the channel reduction used, recorded in ``params``.

    Returns:
        The two codec modules for ``export.export_bundle(codecs=...)`` and the JSON parameters for the plan.
    """
    encoder.eval(), decoder.eval()
    with torch.no_grad():
        codes = [encoder(tuple(s)) for s in samples]
    params = calibrate("quantize", codes)
    quantize, dequantize = build_codec("quantize", params)
    return CodecChain(encoder, quantize), CodecChain(dequantize, decoder), {"reduction": reduction, **params}
