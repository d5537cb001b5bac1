"""The ``autoencoder`` compressor: BottleNet++'s autoencoder at a cut, as paper 004 §IV trains it.

The encoder (sending device) is a stride-2 convolution to ``channels / reduction`` channels,
BatchNorm and ReLU (004 §V replaces BottleNet++'s sigmoid by a ReLU); its output is quantised
(``compress`` ``quantize``, 8 bits by default). The decoder (receiving device) dequantises and
applies a transposed convolution back to the cut's shape, BatchNorm and (for non-negative
features, e.g. after a ReLU) a ReLU. With ``reduction=4`` and 8 bits a 2-D cut of even height and
width sends 1/64 of its float32 bytes: 1/4 channels, 1/4 positions, 1/4 bits.

Training (``fit_autoencoder``) follows 004's two steps:

1. the sending side is frozen; encoder, decoder and the receiving side's layers learn together;
2. the quantiser is calibrated on the code and put in place; the encoder is frozen too (rounding
   has no gradient, and nothing before it learns any more), and decoder plus receiving side are
   fine-tuned on the dequantised code.

Unlike 004, the target is the unsplit model's soft output at temperature T (knowledge
distillation, as in paper 002), so no labels are needed, and the receiving side is trained as a
*copy*: the unsplit model, which is the teacher, is never changed. ``fit_autoencoder`` returns the
trained copies; they replace the receiving side's segments at export.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from jmsnas.compress.quantize import build_codec, calibrate
from jmsnas.devices import DeviceLike, on_device, to_device
from jmsnas.export.split import run_segments

log = logging.getLogger(__name__)


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


def upsample_padding(shape: Sequence[int]) -> tuple[int, ...]:
    """``output_padding`` of a k3/s2/p1 transposed conv that maps ``ceil(s / 2)`` back to ``s`` per axis."""
    # (ceil(s / 2) - 1) * 2 - 2 + 3 + pad == s  =>  pad = 1 for even s, 0 for odd s
    return tuple(1 - s % 2 for s in shape)


class BottleneckDecoder(nn.Module):
    """Transposed conv (stride 2) back to the cut's shape, BatchNorm, and ReLU if ``nonnegative``."""

    def __init__(self, reduced_channels: int, shape: Sequence[int], nonnegative: bool) -> None:
        super().__init__()
        dims = len(shape) - 1
        deconv = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.deconv = deconv(reduced_channels, shape[0], 3, stride=2, padding=1,
                             output_padding=upsample_padding(shape[1:]), bias=False)
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


def make_autoencoder(
    shape: Sequence[int], reduction: int = 4, nonnegative: bool = True
) -> tuple[BottleneckEncoder, BottleneckDecoder]:
    """A fresh autoencoder for a one-tensor cut of per-sample ``shape`` ``(C, L)`` or ``(C, H, W)``.

    Raises:
        ValueError: a shape that is not 1-D or 2-D feature maps.
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"an autoencoder needs a (C, L) or (C, H, W) feature map at the cut, got shape {tuple(shape)}")
    reduced = max(1, math.ceil(shape[0] / reduction))
    return BottleneckEncoder(shape[0], reduced, len(shape) - 1), BottleneckDecoder(reduced, shape, nonnegative)


@dataclass
class AutoencoderFit:
    """A trained autoencoder compressor.

    ``encoder``/``decoder`` include the quantiser (for ``export_bundle(codecs=...)``); ``back`` are
    the trained copies of the receiving side's segments; ``params`` go to ``plan.json``.
    """

    encoder: nn.Module
    decoder: nn.Module
    back: list[nn.Module]
    params: dict[str, Any]
    history: list[float]
    finetune_history: list[float]


def fit_autoencoder(
    encoder: BottleneckEncoder,
    decoder: BottleneckDecoder,
    front: Sequence[nn.Module],
    back: Sequence[nn.Module],
    reference: nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    epochs: int = 20,
    finetune_epochs: int = 5,
    lr: float = 1e-2,
    finetune_lr: float = 1e-3,
    temperature: float = 4.0,
    bits: int = 8,
    reduction: int = 4,
    device: DeviceLike = None,
) -> AutoencoderFit:
    """Train the autoencoder and the receiving side in paper 004's two steps (module docstring).

    Args:
        encoder: from ``make_autoencoder``.
        decoder: from ``make_autoencoder``.
        front: the segments before the cut (frozen; run without gradients).
        back: the segments after the cut; they are copied, and the copies learn.
        reference: the unsplit model (its soft output is the target); never changed.
        inputs: training batches.
        epochs: passes over ``inputs`` of step 1.
        finetune_epochs: passes of step 2 (quantiser in place).
        lr: Adam learning rate of step 1.
        finetune_lr: Adam learning rate of step 2.
        temperature: distillation temperature T; the loss is ``T^2 KL(p_ref^T || p^T)``.
        bits: bits per value of the quantiser (8, 4 or 2).
        reduction: the channel reduction used, recorded in ``params``.
        device: where both steps run (None: where the modules are); every module ends back where it was
            (the copies of ``back`` where ``back`` is).
    """
    tail = [copy.deepcopy(m) for m in back]
    with on_device(device, encoder, decoder, *front, *tail, reference) as dev:
        with torch.no_grad():
            cached = [(run_segments(front, x), reference(x)) for x in (to_device(x, dev) for x in inputs)]
        tail_params = [p for m in tail for p in m.parameters()]
        history = _train(cached, encoder, decoder, tail,
                         [*encoder.parameters(), *decoder.parameters(), *tail_params], epochs, lr, temperature)
        encoder.eval()
        with torch.no_grad():
            codes = [encoder(tuple(f)) for f, _ in cached]
        params = calibrate("quantize", codes, bits=bits)
        quantize, dequantize = build_codec("quantize", params)
        with torch.no_grad(), on_device(dev, quantize, dequantize):
            wire = [(dequantize(quantize(c)), t) for c, (_, t) in zip(codes, cached, strict=True)]
        finetune = _train(wire, None, decoder, tail, [*decoder.parameters(), *tail_params], finetune_epochs,
                          finetune_lr, temperature)
    for m in (decoder, *tail):
        m.eval()
    return AutoencoderFit(CodecChain(encoder, quantize), CodecChain(dequantize, decoder), tail,
                          {"reduction": reduction, **params}, history, finetune)


def _train(cached, encoder: nn.Module | None, decoder: nn.Module, tail: Sequence[nn.Module], params: list,
           epochs: int, lr: float, temperature: float) -> list[float]:
    """Minimise the distillation loss of ``tail(decoder(encoder(features)))`` over ``cached`` (features, target)."""
    optimizer = torch.optim.Adam(params, lr=lr)
    for m in (encoder, decoder, *tail):
        if m is not None:
            m.train()
    history, start = [], time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        for features, target in cached:
            code = tuple(features) if encoder is None else encoder(tuple(features))
            (logits,) = run_segments(tail, *decoder(code))
            loss = distillation_loss(logits, target, temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        history.append(total / len(cached))
        log.info("autoencoder: epoch %d/%d, distillation loss %.4g (%.0f s)", len(history), epochs, history[-1],
                 time.perf_counter() - start)
    return history


def distillation_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(target / T) || softmax(logits / T))``, averaged over the batch."""
    soft = F.log_softmax(logits / temperature, dim=-1)
    return F.kl_div(soft, F.softmax(target / temperature, dim=-1), reduction="batchmean") * temperature**2
