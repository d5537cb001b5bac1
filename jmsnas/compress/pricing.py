"""What a learned compressor adds to the devices at its cut, priced by their latency models.

An autoencoder's encoder runs on the sending device and its decoder on the receiving one; a distilled
bottleneck's decoder (the rest of the student head) runs on the receiving device. Their layers are not
layers of the searched network, so the search's latency (and, before this module, the deploy stage's)
left them out. Here every convolution, transposed convolution and linear layer a codec runs on one
sample becomes an ``OpDescriptor`` (kind ``stem``: a conv with its BatchNorm and activation, the nearest
kind a latency model knows; op name ``codec:<layer>``, so a profile's measured row is never taken for
it) and is priced by the device's model: exactly by an analytic device's roofline, by the regressor's
estimate on a profiled one.

``with_codec_compute`` adds those times to the plan: to the sender's and receiver's compute, to the
total, and, with exits, to the worst case (every sample crosses every cut) and to the mean weighted by
the share of samples that reach the cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from jmsnas.latency.model import LatencyModel
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.runtime.verify import SplitPipeline
from jmsnas.space.macs import OpDescriptor

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)


def describe_layer(layer: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> OpDescriptor:
    """The descriptor of one conv / transposed conv / linear layer on one sample of ``in_shape`` (no batch)."""
    params = sum(p.numel() for p in layer.parameters())
    in_shape, out_shape = tuple(int(v) for v in in_shape), tuple(int(v) for v in out_shape)
    if isinstance(layer, nn.Linear):
        return OpDescriptor(op="codec:Linear", kind="stem", dims=1, in_channels=layer.in_features,
                            out_channels=layer.out_features, hidden_channels=layer.out_features, kernel_size=1,
                            expansion=0, shortcut=False, stride=1, in_size=(1,), out_size=(1,),
                            macs=layer.in_features * layer.out_features * math.prod(in_shape[:-1]), params=params,
                            input_numel=math.prod(in_shape), output_numel=math.prod(out_shape))
    taps = math.prod(layer.kernel_size)
    # a conv's every output value (a transposed conv's every input value) is one dot product over a group
    # of the other side's channels
    if isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d):
        macs = math.prod(in_shape) * (layer.out_channels // layer.groups) * taps
    else:
        macs = math.prod(out_shape) * (layer.in_channels // layer.groups) * taps
    return OpDescriptor(op=f"codec:{type(layer).__name__}", kind="stem", dims=len(in_shape) - 1,
                        in_channels=layer.in_channels, out_channels=layer.out_channels,
                        hidden_channels=layer.out_channels, kernel_size=int(layer.kernel_size[0]), expansion=0,
                        shortcut=False, stride=int(layer.stride[0]), in_size=in_shape[1:], out_size=out_shape[1:],
                        macs=int(macs), params=params, input_numel=math.prod(in_shape),
                        output_numel=math.prod(out_shape))


def codec_ops(plan: DeploymentPlan, segments: Sequence[nn.Module], codecs: Mapping[int, tuple[nn.Module, nn.Module]],
              x: torch.Tensor) -> dict[int, tuple[list[OpDescriptor], list[OpDescriptor]]]:
    """Per learned cut, the ops of its encoder and of its decoder, from one sample ``x[:1]`` run through the plan."""
    seen: dict[tuple[int, int], list[OpDescriptor]] = {(k, side): [] for k in codecs for side in (0, 1)}
    hooks = []
    for k, pair in codecs.items():
        for side, codec in enumerate(pair):
            for layer in codec.modules():
                if isinstance(layer, _LAYERS):
                    def record(mod, inp, out, key=(k, side)) -> None:
                        seen[key].append(describe_layer(mod, inp[0].shape[1:], out.shape[1:]))
                    hooks.append(layer.register_forward_hook(record))
    try:
        with torch.no_grad():
            SplitPipeline(segments, plan, codecs).eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return {k: (seen[k, 0], seen[k, 1]) for k in codecs}


def codec_compute_ms(plan: DeploymentPlan, ops: Mapping[int, tuple[list[OpDescriptor], list[OpDescriptor]]],
                     models: Mapping[str, LatencyModel]) -> dict[int, tuple[float, float]]:
    """Per learned cut, ``(encoder ms on its sender, decoder ms on its receiver)``."""
    out = {}
    for k, (enc, dec) in ops.items():
        cut = plan.cuts[k]
        out[k] = (float(models[cut.src].predict(enc).sum()) if enc else 0.0,
                  float(models[cut.dst].predict(dec).sum()) if dec else 0.0)
    return out


def with_codec_compute(plan: DeploymentPlan, extra: Mapping[int, tuple[float, float]]) -> DeploymentPlan:
    """The plan with each cut's codec compute on its sender (segment k) and receiver (segment k + 1).

    Without exits the total grows by the sum; with exits the worst case does, and the mean by each
    cut's share weighted by the samples that reach it (those not left at an exit on a device before it).
    """
    if not extra:
        return plan
    segs = list(plan.segments)
    for k, (enc, dec) in extra.items():
        segs[k] = replace(segs[k], compute_ms=segs[k].compute_ms + enc)
        segs[k + 1] = replace(segs[k + 1], compute_ms=segs[k + 1].compute_ms + dec)
    added = sum(enc + dec for enc, dec in extra.values())
    index = {name: m for m, name in enumerate(plan.devices)}
    mean = plan.mean_latency_ms
    if mean is not None:
        left = [e for e in plan.exits if e.termination_rate is not None]
        mean += sum((enc + dec) * (1.0 - sum(e.termination_rate for e in left if index[e.device] <= k))
                    for k, (enc, dec) in extra.items())
    return replace(plan, segments=tuple(segs), total_latency_ms=plan.total_latency_ms + added, mean_latency_ms=mean)
