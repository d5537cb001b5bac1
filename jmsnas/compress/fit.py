"""Fitting the learned compressors of a plan: an autoencoder at any one-tensor cut, a distilled head at the first.

``fit_learned`` walks the cuts of a sequential plan and trains the compressor named for each learned
cut on the training batches (``autoencoder``: paper 004's two steps, ``autoencoder.py``;
``distilled_bottleneck``: paper 002's student head, ``distilled.py``). It returns the device segments
with the trained layers in place, the codec modules export traces in, the parameters ``plan.json``
records per cut, and notes for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from jmsnas.compress.autoencoder import fit_autoencoder, make_autoencoder
from jmsnas.compress.config import CompressorConfig
from jmsnas.compress.distilled import fit_student_head, make_student_head
from jmsnas.compress.registry import COMPRESSORS
from jmsnas.devices import DeviceLike
from jmsnas.errors import ConfigError
from jmsnas.export.split import run_segments
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.space.macs import count_macs


@dataclass
class LearnedCodecs:
    """The segments after fitting, and per learned cut its codec modules and recorded parameters."""

    segments: list[nn.Module]
    codecs: dict[int, tuple[nn.Module, nn.Module]] = field(default_factory=dict)
    params: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fit_learned(segments: Sequence[nn.Module], plan: DeploymentPlan, input_shape: tuple[int, ...],
                given: Sequence[CompressorConfig], model: nn.Module, train_x: Sequence[torch.Tensor],
                epochs: tuple[int, int], device: DeviceLike = None) -> LearnedCodecs:
    """Train the learned compressor of every cut of ``plan`` that names one.

    Args:
        segments: one module per device of the plan (``export.split.split_archnet``).
        plan: the sequential plan (its cuts name the compressors).
        input_shape: the network's input shape without batch.
        given: the experiment's compressor settings, one per cut in path order.
        model: the unsplit network (the autoencoder's reconstruction target runs through it).
        train_x: training input batches; the first is also the calibration sample.
        epochs: (first step, fine-tuning with the quantiser) epochs.
        device: where the compressors train (None: where the segments are); everything ends back there.

    Raises:
        ConfigError: a learned compressor at a cut it cannot serve, naming ``partition.compressors[k]``.
    """
    out = LearnedCodecs(list(segments))
    for k, cut in enumerate(plan.cuts):
        kind = COMPRESSORS[cut.compressor]
        if kind.fit is None:
            continue
        out.segments, out.codecs[k], out.params[k], note = kind.fit(out.segments, k, plan, input_shape, given[k],
                                                                    model, train_x, epochs, device=device)
        if note is not None:
            out.notes.append(note)
    return out


def fit_autoencoder_cut(segments: list[nn.Module], k: int, plan: DeploymentPlan, input_shape: tuple[int, ...],
                        c: CompressorConfig, model: nn.Module, train_x: Sequence[torch.Tensor],
                        epochs: tuple[int, int], device: DeviceLike = None):
    """An autoencoder (paper 004) at cut ``k``, trained on ``device``: the receiving side is trained with it."""
    with torch.no_grad():
        sample = run_segments(segments[:k + 1], train_x[0][:2])
    if len(sample) != 1 or sample[0].dim() not in (3, 4):
        raise ConfigError(f"cut {k} carries {len(sample)} tensor(s) of shape {[tuple(t.shape[1:]) for t in sample]}; "
                          "an autoencoder needs one (C, L) or (C, H, W) feature map; use 'quantize' here",
                          field=f"partition.compressors[{k}].kind")
    shape = tuple(sample[0].shape[1:])
    reduction = max(1, round(1 / c.channel_fraction))
    encoder, decoder = make_autoencoder(shape, reduction=reduction, nonnegative=bool((sample[0] >= 0).all()))
    fit = fit_autoencoder(encoder, decoder, segments[:k + 1], segments[k + 1:], model, train_x, bits=c.bits,
                          reduction=reduction, epochs=epochs[0], finetune_epochs=epochs[1], device=device)
    return [*segments[:k + 1], *fit.back], (fit.encoder, fit.decoder), fit.params, None


def fit_distilled_cut(segments: list[nn.Module], k: int, plan: DeploymentPlan, input_shape: tuple[int, ...],
                      c: CompressorConfig, model: nn.Module, train_x: Sequence[torch.Tensor],
                      epochs: tuple[int, int], device: DeviceLike = None):
    """A distilled bottleneck head (paper 002) in place of the first device's layers (``k`` is 0), trained on
    ``device``."""
    if plan.segments[0].stop == 0:
        raise ConfigError(f"the plan runs no layer on {plan.devices[0]} (it sends the input), so there is no head "
                          "for a distilled bottleneck to replace; use 'quantize' or 'autoencoder'",
                          field="partition.compressors[0].kind")
    with torch.no_grad():
        sent = run_segments(segments[:1], train_x[0][:1])
    if len(sent) != 1:
        raise ConfigError(f"the first cut carries {len(sent)} tensors (a skip connection crosses it); a distilled "
                          "bottleneck replaces a head with one output; use 'quantize' here",
                          field="partition.compressors[0].kind")
    (target,) = sent
    encoder, decoder = make_student_head(input_shape, tuple(target.shape[1:]), c.channel_fraction,
                                         nonnegative=bool((target >= 0).all()))
    fit = fit_student_head(encoder, decoder, segments[:1], train_x, bits=c.bits, epochs=epochs[0],
                           finetune_epochs=epochs[1], device=device)
    teacher, student = count_macs(segments[0], input_shape), count_macs(encoder, input_shape)
    note = (f"distilled bottleneck: student head {student:,} MACs replaces {teacher:,} on {plan.devices[0]} "
            f"(final SSE {fit.finetune_history[-1] if fit.finetune_history else fit.history[-1]:.4g} per sample)")
    return [encoder, *segments[1:]], fit.codec, {"student_macs": student, "teacher_head_macs": teacher,
                                                 **fit.params}, note
