"""Function-preserving network morphisms on an ``ArchSpec`` and its weights (paper 000 §III-C).

Paper 000's search is Elsken et al.'s network-morphism hill climbing (NASH): every child is its
parent changed by a few *morphisms*, operations that grow the network while keeping the function
it computes, so the child starts from what the parent learned. Each function here takes a spec and
its built ``ArchNet`` and returns a new spec and a new ``ArchNet`` whose outputs equal the parent's
(up to float rounding), in eval mode and in train mode alike:

- ``deepen``: insert a shortcut MBConv whose last BatchNorm has ``gamma = beta = 0``: its branch
  adds exactly zero, so the new layer is the identity (the zero-init-residual form of Net2DeeperNet;
  an MBConv without shortcut cannot be the identity, its ReLU6 clips).
- ``widen``: Net2WiderNet on the channels between layers: copy some channels of their producer
  (conv rows with their BatchNorm, running statistics included) and split each consumer's weights
  on a copied channel between the copies, so consumers receive the same sums.
- ``widen_hidden``: Net2WiderNet on an MBConv's hidden width (``conv_pw``/``conv_dw`` rows,
  ``conv_pwl`` columns).
- ``add_skip``: add a 1x1 projection of an earlier layer's output whose BatchNorm starts at zero.
- ``concat``: append channels projected from an earlier layer; every consumer's weights on them start at zero.

A split is not halved evenly: the copies get random positive shares that sum to one, so their
gradients differ from the first step (even halves would keep the copies equal forever; Net2Net adds
noise instead, which does not keep the function exactly).

Channels are tied across a *residual run*: a shortcut block or an identity passes its input's
channels on, so positions ``a..b`` of a run (position p is the output of layer p of
``[stem, *blocks]``) must change together. The run's producer (the stem, or the block before it)
makes the channels, the blocks inside carry them (their branch output for a new channel starts at
zero), and the consumer after it (the next non-shortcut block or the head) and every skip
projection reading from the run take them in.

Randomness: structural choices and shares come from the ``random.Random`` passed in; newly
initialised weights from torch's global generator (seed it for repeatable children).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from jmsnas.space.arch import ArchNet, ArchSpec, BlockSpec, build_model
from jmsnas.space.ops import CANDIDATES

ChannelMap = list[int | None]
"""New channel j takes old channel ``m[j]``; None: a new channel (zero into every consumer)."""
_BN = ("weight", "bias", "running_mean", "running_var")
#: Share of a width that one widening adds, drawn per morphism.
WIDEN_FRACTIONS = (0.25, 0.5)


# --- spec edits ------------------------------------------------------------------------------


def _block(b: BlockSpec, **updates: Any) -> BlockSpec:
    return BlockSpec.model_validate({**b.model_dump(), **updates})


def _with_in(b: BlockSpec, in_channels: int, **updates: Any) -> BlockSpec:
    """``b`` reading ``in_channels`` channels, its hidden width kept (and stored only when it differs)."""
    hidden = b.hidden
    if hidden is not None and b.expansion is not None and hidden == in_channels * b.expansion:
        hidden = None
    return _block(b, in_channels=in_channels, hidden_channels=hidden, **updates)


def _spec(spec: ArchSpec, blocks: Sequence[BlockSpec], stem_channels: int | None = None) -> ArchSpec:
    data = spec.model_dump()
    data["blocks"] = [b.model_dump() for b in blocks]
    if stem_channels is not None:
        data["stem"]["channels"] = stem_channels
    return ArchSpec.model_validate(data)


def residual_run(spec: ArchSpec, position: int) -> tuple[int, int]:
    """The positions ``(a, b)`` whose channels are tied to ``position`` by shortcuts and identities."""
    a = b = position
    while a > 0 and spec.blocks[a - 1].passes_through:
        a -= 1
    while b < len(spec.blocks) and spec.blocks[b].passes_through:
        b += 1
    return a, b


def _respec_run(spec: ArchSpec, a: int, b: int, width: int, **producer: Any) -> ArchSpec:
    """``spec`` with ``width`` channels on positions ``a..b`` (``producer`` updates the block making them)."""
    blocks = list(spec.blocks)
    if a > 0:
        blocks[a - 1] = _block(blocks[a - 1], out_channels=width, **producer)
    for q in range(a, b):
        blocks[q] = _with_in(blocks[q], width, out_channels=width)
    if b < len(blocks):
        blocks[b] = _with_in(blocks[b], width)
    return _spec(spec, blocks, stem_channels=width if a == 0 else None)


# --- weight edits ----------------------------------------------------------------------------


def _prefix(spec: ArchSpec, layer: int) -> str:
    """State-dict prefix of layer ``layer`` of ``[stem, *blocks, head]`` (a MergeBlock's body for a skip block)."""
    if layer == 0:
        return "stem."
    if layer == len(spec.blocks) + 1:
        return "head."
    block = spec.blocks[layer - 1]
    return f"blocks.{layer - 1}." + ("body." if block.skip_from is not None else "")


def _shares(m: ChannelMap, rng: random.Random) -> list[float]:
    """Per new channel, its share of the old channel it copies (random, positive, summing to one per old channel)."""
    draws = [rng.uniform(0.5, 1.5) if o is not None else 0.0 for o in m]
    totals = Counter()
    for o, d in zip(m, draws, strict=True):
        if o is not None:
            totals[o] += d
    return [d / totals[o] if o is not None else 0.0 for o, d in zip(m, draws, strict=True)]


class _Weights:
    """The parent's state dict, edited in place under its own keys, then moved to the child's keys."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.w = {k: v.detach().clone() for k, v in state.items()}

    def rows(self, key: str, m: ChannelMap) -> None:
        """Conv weight rows: copy ``m[j]``; a new row gets a fresh default (Kaiming-uniform) init."""
        old = self.w[key]
        new = torch.empty(len(m), *old.shape[1:], dtype=old.dtype)
        nn.init.kaiming_uniform_(new, a=math.sqrt(5))  # what nn.Conv*d.reset_parameters draws
        for j, o in enumerate(m):
            if o is not None:
                new[j] = old[o]
        self.w[key] = new

    def bn_rows(self, prefix: str, m: ChannelMap, zero: bool) -> None:
        """BatchNorm channels: copy ``m[j]``; a new one outputs 0 (``zero``) or is a default BatchNorm."""
        fill = {"weight": 0.0 if zero else 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        for name in _BN:
            old = self.w[prefix + name]
            new = torch.full((len(m),), fill[name], dtype=old.dtype)
            for j, o in enumerate(m):
                if o is not None:
                    new[j] = old[o]
            self.w[prefix + name] = new

    def cols(self, key: str, m: ChannelMap, shares: Sequence[float]) -> None:
        """Input columns: ``share`` of column ``m[j]``; a new column is zero."""
        old = self.w[key]
        new = torch.zeros(old.shape[0], len(m), *old.shape[2:], dtype=old.dtype)
        for j, o in enumerate(m):
            if o is not None:
                new[:, j] = old[:, o] * shares[j]
        self.w[key] = new

    def into(self, net: ArchNet, origin: Callable[[str], str | None]) -> None:
        """Load into ``net``: every key whose ``origin`` the parent has takes it; the rest keep their init."""
        state = net.state_dict()
        for key in state:
            src = origin(key)
            if src is not None and src in self.w:
                if self.w[src].shape != state[key].shape:
                    raise AssertionError(f"{src} -> {key}: shape {tuple(self.w[src].shape)} != "
                                         f"{tuple(state[key].shape)}")
                state[key] = self.w[src]
        net.load_state_dict(state)


def _zero_bn(net: nn.Module, prefix: str) -> None:
    bn = net.get_submodule(prefix.rstrip("."))
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()


def _remap_run(spec: ArchSpec, w: _Weights, a: int, b: int, m: ChannelMap, rng: random.Random,
               producer: bool = True) -> None:
    """Apply channel map ``m`` to positions ``a..b`` of ``spec`` in ``w`` (see the module docstring)."""
    shares = _shares(m, rng)
    if producer and a == 0:
        w.rows("stem.conv.weight", m)
        w.bn_rows("stem.bn.", m, zero=False)
    elif producer:
        _producer_rows(spec, w, a - 1, m)
    for q in range(a, b):  # the blocks inside the run carry the channels
        block, pre = spec.blocks[q], _prefix(spec, q + 1)
        if block.op != "identity":
            w.cols(pre + "conv_pw.weight", m, shares)
            w.rows(pre + "conv_pwl.weight", m)
            w.bn_rows(pre + "bn3.", m, zero=True)
        if block.skip_from is not None:
            w.rows(f"blocks.{q}.skip.conv.weight", m)
            w.bn_rows(f"blocks.{q}.skip.bn.", m, zero=True)
    consumer = "head.conv.weight" if b == len(spec.blocks) else _prefix(spec, b + 1) + "conv_pw.weight"
    w.cols(consumer, m, shares)
    for i, block in enumerate(spec.blocks):
        if block.skip_from is not None and a <= block.skip_from <= b:
            w.cols(f"blocks.{i}.skip.conv.weight", m, shares)


def _producer_rows(spec: ArchSpec, w: _Weights, index: int, m: ChannelMap) -> None:
    block, pre = spec.blocks[index], _prefix(spec, index + 1)
    body_m, skip_m = m, m
    if block.merge == "concat" and block.skip_from is not None:
        main = block.body_out_channels
        body_m = [o for o in m if o is not None and o < main]
        skip_m = [o - main for o in m if o is not None and o >= main]
        if m != body_m + [o + main for o in skip_m]:
            raise ValueError("widening a concat block must keep its own channels before the concatenated ones")
    w.rows(pre + "conv_pwl.weight", body_m)
    w.bn_rows(pre + "bn3.", body_m, zero=False)
    if block.skip_from is not None:
        w.rows(f"blocks.{index}.skip.conv.weight", skip_m)
        w.bn_rows(f"blocks.{index}.skip.bn.", skip_m, zero=False)


def _finish(net: ArchNet, new_spec: ArchSpec, w: _Weights, origin: Callable[[str], str | None]) -> ArchNet:
    child = build_model(new_spec)
    w.into(child, origin)
    return child.train(net.training)


# --- the morphisms ---------------------------------------------------------------------------


def deepen(spec: ArchSpec, net: ArchNet, position: int, op: str) -> tuple[ArchSpec, ArchNet]:
    """Insert shortcut MBConv ``op`` at ``position`` (0: right after the stem), initialised to the identity.

    Raises:
        ValueError: ``op`` is not a shortcut MBConv, or the position is out of range.
    """
    if not CANDIDATES[op].shortcut:
        raise ValueError(f"deepen inserts a shortcut MBConv (…_sc), not {op!r}")
    if not 0 <= position <= len(spec.blocks):
        raise ValueError(f"position must be in 0..{len(spec.blocks)}, got {position}")
    width = spec.channels_at(position)
    blocks = [b if b.skip_from is None or b.skip_from <= position else _block(b, skip_from=b.skip_from + 1)
              for b in spec.blocks]
    blocks.insert(position, BlockSpec.of(op, width, width, 1))
    new_spec = _spec(spec, blocks)

    def origin(key: str) -> str | None:
        if not key.startswith("blocks."):
            return key
        _, index, rest = key.split(".", 2)
        i = int(index)
        return None if i == position else f"blocks.{i - (i > position)}.{rest}"

    child = _finish(net, new_spec, _Weights(net.state_dict()), origin)
    _zero_bn(child, f"blocks.{position}.bn3.")
    return new_spec, child


def widen(spec: ArchSpec, net: ArchNet, position: int, extra: int, rng: random.Random) -> tuple[ArchSpec, ArchNet]:
    """Add ``extra`` copied channels at ``position`` (and the residual run it belongs to), Net2WiderNet."""
    a, b = residual_run(spec, position)
    width = spec.channels_at(a)
    producer = spec.blocks[a - 1] if a > 0 else None
    own = width
    if producer is not None and producer.merge == "concat" and producer.skip_from is not None:
        own = producer.body_out_channels  # copy the block's own channels, keep the concatenated ones last
    m: ChannelMap = [*range(own), *(rng.randrange(own) for _ in range(extra)), *range(own, width)]
    w = _Weights(net.state_dict())
    _remap_run(spec, w, a, b, m, rng)
    new_spec = _respec_run(spec, a, b, width + extra)
    return new_spec, _finish(net, new_spec, w, lambda k: k)


def widen_hidden(spec: ArchSpec, net: ArchNet, block: int, extra: int,
                 rng: random.Random) -> tuple[ArchSpec, ArchNet]:
    """Add ``extra`` copied hidden channels to MBConv ``block``, Net2WiderNet."""
    b = spec.blocks[block]
    hidden = b.hidden
    if hidden is None:
        raise ValueError(f"block {block} ({b.op}) has no hidden width")
    m: ChannelMap = [*range(hidden), *(rng.randrange(hidden) for _ in range(extra))]
    pre = _prefix(spec, block + 1)
    w = _Weights(net.state_dict())
    w.rows(pre + "conv_pw.weight", m)
    w.bn_rows(pre + "bn1.", m, zero=False)
    w.rows(pre + "conv_dw.weight", m)
    w.bn_rows(pre + "bn2.", m, zero=False)
    w.cols(pre + "conv_pwl.weight", m, _shares(m, rng))
    blocks = list(spec.blocks)
    blocks[block] = _block(b, hidden_channels=hidden + extra)
    new_spec = _spec(spec, blocks)
    return new_spec, _finish(net, new_spec, w, lambda k: k)


def _skip_origin(index: int) -> Callable[[str], str | None]:
    """Keys of a block that just became a MergeBlock: ``blocks.i.body.X`` comes from ``blocks.i.X``."""
    body, skip = f"blocks.{index}.body.", f"blocks.{index}.skip."

    def origin(key: str) -> str | None:
        if key.startswith(skip):
            return None
        return f"blocks.{index}." + key.removeprefix(body) if key.startswith(body) else key

    return origin


def _check_skip(spec: ArchSpec, block: int, source: int) -> BlockSpec:
    b = spec.blocks[block]
    if b.skip_from is not None:
        raise ValueError(f"block {block} already has a skip connection")
    if not 0 <= source <= block:
        raise ValueError(f"a skip into block {block} starts at layer 0..{block}, got {source}")
    return b


def add_skip(spec: ArchSpec, net: ArchNet, block: int, source: int) -> tuple[ArchSpec, ArchNet]:
    """Add layer ``source``'s output (projected, zero-initialised) to block ``block``'s output."""
    b = _check_skip(spec, block, source)
    blocks = list(spec.blocks)
    blocks[block] = _block(b, skip_from=source, merge="add")
    new_spec = _spec(spec, blocks)
    child = _finish(net, new_spec, _Weights(net.state_dict()), _skip_origin(block))
    _zero_bn(child, f"blocks.{block}.skip.bn.")
    return new_spec, child


def concat(spec: ArchSpec, net: ArchNet, block: int, source: int, channels: int,
           rng: random.Random) -> tuple[ArchSpec, ArchNet]:
    """Append ``channels`` channels projected from layer ``source`` to block ``block``'s output.

    The block must be an MBConv without shortcut. Whatever reads the block's output gets zero
    weights on the new channels, and the blocks of the residual run after it carry them unchanged.
    """
    b = _check_skip(spec, block, source)
    if b.passes_through or b.op == "identity":
        raise ValueError(f"concat needs an MBConv without shortcut, block {block} is {b.op}")
    a, end = residual_run(spec, block + 1)
    m: ChannelMap = [*range(b.out_channels), *([None] * channels)]
    w = _Weights(net.state_dict())
    _remap_run(spec, w, a, end, m, rng, producer=False)
    new_spec = _respec_run(spec, a, end, b.out_channels + channels, skip_from=source, merge="concat",
                           skip_channels=channels)
    return new_spec, _finish(net, new_spec, w, _skip_origin(block))


# --- random morphisms ------------------------------------------------------------------------


def _grow(width: int, rng: random.Random) -> int:
    return max(1, round(width * rng.choice(WIDEN_FRACTIONS)))


def applicable(spec: ArchSpec, deepen_ops: Sequence[str]) -> dict[str, list[tuple]]:
    """Per morphism kind, the targets it can apply to in ``spec`` (empty lists left out)."""
    n = len(spec.blocks)
    mbconv = [i for i, b in enumerate(spec.blocks) if b.op != "identity"]
    free = [i for i, b in enumerate(spec.blocks) if b.skip_from is None]
    targets: dict[str, list[tuple]] = {
        "deepen": [(p, op) for p in range(n + 1) for op in deepen_ops],
        "widen": [(p,) for p in range(n + 1)],
        "widen_hidden": [(i,) for i in mbconv],
        "add_skip": [(i, j) for i in free for j in range(i + 1) if not (j == i and spec.blocks[i].passes_through)],
        "concat": [(i, j) for i in free if i in mbconv and not spec.blocks[i].shortcut for j in range(i + 1)],
    }
    return {k: v for k, v in targets.items() if v}


def random_morphism(spec: ArchSpec, net: ArchNet, rng: random.Random,
                    deepen_ops: Sequence[str]) -> tuple[ArchSpec, ArchNet, str]:
    """Apply one morphism, its kind and then its target drawn uniformly among those that apply.

    Args:
        spec: the parent's spec.
        net: the parent (not changed).
        rng: structural choices.
        deepen_ops: shortcut MBConv candidates ``deepen`` may insert.

    Returns:
        The child's spec, the child, and a short description (e.g. ``widen@2+8``) for logs.
    """
    options = applicable(spec, deepen_ops)
    kind = rng.choice(sorted(options))
    target = rng.choice(options[kind])
    if kind == "deepen":
        p, op = target
        return (*deepen(spec, net, p, op), f"deepen@{p}:{op}")
    if kind == "widen":
        (p,) = target
        extra = _grow(spec.channels_at(p), rng)
        return (*widen(spec, net, p, extra, rng), f"widen@{p}+{extra}")
    if kind == "widen_hidden":
        (i,) = target
        extra = _grow(spec.blocks[i].hidden or 1, rng)
        return (*widen_hidden(spec, net, i, extra, rng), f"widen_hidden@b{i}+{extra}")
    i, j = target
    if kind == "add_skip":
        return (*add_skip(spec, net, i, j), f"add_skip@b{i}<-{j}")
    channels = _grow(spec.blocks[i].out_channels, rng)
    return (*concat(spec, net, i, j, channels, rng), f"concat@b{i}<-{j}+{channels}")
