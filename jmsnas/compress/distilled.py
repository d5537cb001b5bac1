"""The ``distilled_bottleneck`` compressor: head network distillation with an injected bottleneck (paper 002).

The network is cut after unit ``k``; its head (units ``[0, k)``, the teacher head) would run on the
sending device. Paper 002 replaces it by a smaller *student* head with an aggressive bottleneck
inside, trained to mimic the teacher head's output with the sum of squared errors
``SSE(X) = sum_x ||t(x) - s(x)||^2`` (its eq. (1)), and cuts the student at the bottleneck:

- ``StudentEncoder`` (sending device): stride-2 convolutions (3x3, BatchNorm, ReLU) from the input
  down to half the teacher output's resolution, then a 1x1 convolution to the bottleneck's few
  channels (``channel_fraction`` of the teacher output's channels), BatchNorm and ReLU. The code is
  quantised (8 bits by default) and sent.
- ``StudentDecoder`` (receiving device): 3x3 convolution back to the student's width, one stride-2
  transposed convolution to the teacher output's resolution, and a 3x3 convolution to its channels
  (with a ReLU when the teacher output is non-negative). The original tail follows unchanged.

Training (``fit_student_head``) is label-free: Adam on the SSE against the frozen teacher head
(per batch the SSE is divided by the batch size, so the step size does not depend on it); then,
as for the autoencoder (paper 004's second step), the quantiser is calibrated on the code, the
encoder frozen, and the decoder fine-tuned on the dequantised code.

The student's width is ``max(8, C / 2)`` for a teacher output of ``C`` channels: a head clearly
smaller than the teacher's, as paper 002 asks, without a search over student shapes (paper 002
designs its students by hand; that is the part it leaves vague). The cut must sit where the
teacher has halved the input's resolution a whole number of times (every stride-2 layer of the
search spaces and of ResNet/MobileNet-style networks does), so the student can mirror it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from jmsnas.compress.autoencoder import CodecChain, upsample_padding
from jmsnas.compress.quantize import build_codec, calibrate, packed_bytes
from jmsnas.devices import DeviceLike, on_device, to_device
from jmsnas.export.split import run_segments

log = logging.getLogger(__name__)


def _layers(dims: int) -> tuple[type, type, type]:
    if dims == 1:
        return nn.Conv1d, nn.BatchNorm1d, nn.ConvTranspose1d
    return nn.Conv2d, nn.BatchNorm2d, nn.ConvTranspose2d


def halvings(input_size: Sequence[int], target_size: Sequence[int]) -> int:
    """How many stride-2 halvings (``ceil(s / 2)``) take ``input_size`` to ``target_size``.

    Raises:
        ValueError: no whole number of halvings does.
    """
    size, steps = tuple(input_size), 0
    while size != tuple(target_size):
        if all(s == 1 for s in size) or any(s < t for s, t in zip(size, target_size, strict=True)):
            raise ValueError(f"a distilled bottleneck needs a cut whose size {tuple(target_size)} is the input's "
                             f"{tuple(input_size)} halved a whole number of times")
        size, steps = tuple(math.ceil(s / 2) for s in size), steps + 1
    return steps


class StudentEncoder(nn.Module):
    """The student head up to its bottleneck; a segment (input tensor -> tuple with the code)."""

    def __init__(self, in_channels: int, width: int, code_channels: int, steps: int, dims: int) -> None:
        super().__init__()
        conv, bn, _ = _layers(dims)
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(steps):
            layers += [conv(c, width, 3, stride=2, padding=1, bias=False), bn(width), nn.ReLU()]
            c = width
        layers += [conv(c, code_channels, 1, bias=False), bn(code_channels), nn.ReLU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.body(x),)


class StudentDecoder(nn.Module):
    """The student head after its bottleneck; a codec stage (tuple with the code -> tuple with the features)."""

    def __init__(self, code_channels: int, width: int, target_shape: Sequence[int], nonnegative: bool) -> None:
        super().__init__()
        dims = len(target_shape) - 1
        conv, bn, deconv = _layers(dims)
        self.body = nn.Sequential(
            conv(code_channels, width, 3, padding=1, bias=False), bn(width), nn.ReLU(),
            deconv(width, width, 3, stride=2, padding=1, output_padding=upsample_padding(target_shape[1:]),
                   bias=False), bn(width), nn.ReLU(),
            conv(width, target_shape[0], 3, padding=1, bias=False), bn(target_shape[0]),
        )  # fmt: skip
        self.nonnegative = nonnegative

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        y = self.body(xs[0])
        return (F.relu(y) if self.nonnegative else y,)


def make_student_head(
    input_shape: Sequence[int], target_shape: Sequence[int], channel_fraction: float = 0.25,
    nonnegative: bool = True, width: int | None = None,
) -> tuple[StudentEncoder, StudentDecoder]:
    """A fresh student head for a teacher head mapping per-sample ``input_shape`` to ``target_shape``.

    The code has ``ceil(C * channel_fraction)`` channels at half the target's resolution.

    Raises:
        ValueError: shapes that are not 1-D or 2-D maps of the same dimensionality, or a target the
            student cannot mirror (see ``halvings``).
    """
    if len(target_shape) not in (2, 3) or len(input_shape) != len(target_shape):
        raise ValueError(f"a distilled bottleneck needs (C, L) or (C, H, W) maps at the input and the cut, got "
                         f"{tuple(input_shape)} and {tuple(target_shape)}")
    code_size = tuple(math.ceil(s / 2) for s in target_shape[1:])
    steps = halvings(input_shape[1:], target_shape[1:]) + (1 if code_size != tuple(target_shape[1:]) else 0)
    width = width or max(8, target_shape[0] // 2)
    code = max(1, math.ceil(target_shape[0] * channel_fraction))
    dims = len(target_shape) - 1
    return (StudentEncoder(input_shape[0], width, code, steps, dims),
            StudentDecoder(code, width, target_shape, nonnegative))


def sse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Paper 002 eq. (1) for one batch, divided by the batch size: ``sum ||t - s||^2 / b``."""
    return (teacher - student).pow(2).sum() / student.shape[0]


@dataclass
class DistilledFit:
    """A trained student head: ``encoder`` is the sending device's segment; ``codec`` goes to ``export_bundle``.

    ``codec`` is ``(quantiser, dequantiser + decoder)``; ``payload_bytes`` is what one sample sends.
    """

    encoder: StudentEncoder
    codec: tuple[nn.Module, nn.Module]
    params: dict[str, Any]
    payload_bytes: int
    history: list[float]
    finetune_history: list[float]


def fit_student_head(
    encoder: StudentEncoder,
    decoder: StudentDecoder,
    teacher_head: Sequence[nn.Module],
    inputs: Sequence[torch.Tensor],
    *,
    epochs: int = 30,
    finetune_epochs: int = 10,
    lr: float = 1e-2,
    finetune_lr: float = 1e-3,
    bits: int = 8,
    device: DeviceLike = None,
) -> DistilledFit:
    """Train the student head to mimic ``teacher_head`` (frozen) with the SSE, then fine-tune with the quantiser.

    Args:
        encoder: from ``make_student_head``.
        decoder: from ``make_student_head``.
        teacher_head: the segments the student replaces (run without gradients).
        inputs: training batches (network inputs).
        epochs: passes over ``inputs`` of the distillation.
        finetune_epochs: passes with the quantiser in place (decoder only).
        lr: Adam learning rate of the distillation.
        finetune_lr: Adam learning rate of the fine-tuning.
        bits: bits per value of the code (8, 4 or 2).
        device: where both steps run (None: where the modules are); every module ends back where it was.
    """
    with on_device(device, encoder, decoder, *teacher_head) as dev:
        inputs = [to_device(x, dev) for x in inputs]
        with torch.no_grad():
            targets = [run_segments(teacher_head, x)[0] for x in inputs]
        if any(t.shape[1:] != targets[0].shape[1:] for t in targets):
            raise ValueError("the teacher head must give one tensor of a fixed shape")
        history = _fit(encoder, decoder, list(zip(inputs, targets, strict=True)), True, epochs, lr)
        encoder.eval()
        with torch.no_grad():
            codes = [encoder(x) for x in inputs]
        params = calibrate("quantize", codes, bits=bits)
        quantize, dequantize = build_codec("quantize", params)
        with torch.no_grad(), on_device(dev, quantize, dequantize):
            wire = [(dequantize(quantize(c))[0], t) for c, t in zip(codes, targets, strict=True)]
        finetune = _fit(None, decoder, wire, False, finetune_epochs, finetune_lr)
    decoder.eval()
    payload = sum(packed_bytes(math.prod(s), bits) for s in params["shapes"])
    return DistilledFit(encoder, (quantize, CodecChain(dequantize, decoder)), params, payload, history, finetune)


def _fit(encoder: StudentEncoder | None, decoder: StudentDecoder, pairs, from_input: bool, epochs: int,
         lr: float) -> list[float]:
    modules = [m for m in (encoder, decoder) if m is not None]
    optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=lr)
    for m in modules:
        m.train()
    history, start = [], time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        for source, target in pairs:
            code = encoder(source) if from_input and encoder is not None else (source,)
            loss = sse_loss(decoder(code)[0], target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        history.append(total / len(pairs))
        log.info("student head: epoch %d/%d, feature SSE %.4g (%.0f s)", len(history), epochs, history[-1],
                 time.perf_counter() - start)
    return history
