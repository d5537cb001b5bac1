"""Exit heads trained on the frozen backbone, all at once; optional joint fine-tuning (paper 001 §3.1, §4.3).

**Frozen backbone.** The backbone runs in eval mode under ``torch.no_grad``: no gradient reaches
it and BatchNorm statistics do not move, so its weights and buffers stay exactly as given (paper
001: freezing keeps the exits independent, which is what lets one trained head serve every EENN
candidate that contains its location).

**One pass feeds every head.** ``BlockGraph.feature_extractor`` returns the features at every
location from one backbone forward; each head's cross-entropy is summed into one loss (the heads
share no parameter, so each gets exactly its own gradient). When the features of the whole
training split fit in ``feature_cache_bytes`` they are computed once and cached (the datasets here
have no random augmentation, so a cached epoch equals a recomputed one); otherwise every epoch runs
the backbone again.

**Device.** ``train_heads``, ``exit_outputs`` and ``joint_finetune`` take ``device`` (None: where the
modules are): backbone and heads train there and end back where they were, batches move there, and
``exit_outputs`` returns CPU tensors (``jmsnas.devices``).

**Early dropping.** After the first epoch each head is scored on the calibration split; one whose
accuracy is below the majority-class rate plus ``min_head_accuracy_gain`` is "useless" (paper 001
uses the calibration performance after the first epoch to stop training heads that cannot reach a
meaningful quality) and trains no further. Before that check, and after the last epoch, the heads'
BatchNorm statistics are recomputed on training features with the current weights: after one
short epoch the running averages still remember the initial weights, and a head scored with them
looked useless when it was not (seen on a 560-sample set: 7 % in eval mode, far above chance).

**Joint fine-tuning** (optional, after the EENN is chosen): backbone and exits trained together on
``sum_k w_k CE(exit_k)`` (paper 004 eq. (5)), on a copy of the model (the user's model is left alone).
Default weights: the final exit 0.5, the early exits share 0.5 in proportion to ``k + 1`` — for two
early exits exactly paper 004's 0.2 / 0.3 / 0.5. Paper 001 fine-tunes for one epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from jmsnas.devices import DeviceLike, on_device, to_device
from jmsnas.exits.cascade import EarlyExitNet
from jmsnas.exits.graph import BlockGraph, block_graph

log = logging.getLogger("jmsnas.exits")


@dataclass
class HeadTraining:
    """What ``train_heads`` did: kept heads, dropped ones and their accuracy, timing."""

    heads: dict[int, nn.Module]
    accuracy: dict[int, float]
    dropped: dict[int, float]
    cached: bool
    seconds: float
    epochs: int
    history: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class ExitOutputs:
    """Logits of every head and of the final classifier on one split, with the labels."""

    heads: dict[int, torch.Tensor]
    final: torch.Tensor
    labels: torch.Tensor


def feature_bytes(graph: BlockGraph, locations: Sequence[int], samples: int) -> int:
    """Bytes (float32) of the features at ``locations`` for ``samples`` samples."""
    per_sample = sum(math.prod(graph.feature_shapes[b]) for b in locations)
    return 4 * per_sample * samples


def _batches(dataset: Dataset, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def backbone_features(graph: BlockGraph, locations: Sequence[int], loader: Iterable,
                      device: torch.device | None = None) -> tuple[list[torch.Tensor], ...]:
    """One backbone pass over ``loader``: ``(features per location, final logits, labels)``, concatenated.

    Batches are moved to ``device`` (None: as they come), where the backbone must be; so are the results.
    """
    extractor = graph.feature_extractor(locations).eval()
    feats: list[list[torch.Tensor]] = [[] for _ in locations]
    finals, labels = [], []
    for x, y in loader:
        x, y = to_device(x, device), to_device(y, device)
        final, *fs = extractor(x)
        for store, f in zip(feats, fs, strict=True):
            store.append(f)
        finals.append(final)
        labels.append(y)
    return [torch.cat(f) for f in feats], torch.cat(finals), torch.cat(labels)


def _epoch_batches(cache: tuple | None, graph: BlockGraph, locations: Sequence[int], dataset: Dataset,
                   batch_size: int, gen: torch.Generator,
                   device: torch.device | None) -> Iterable[tuple[list[torch.Tensor], torch.Tensor]]:
    """One epoch of ``(features per location, labels)`` batches in a seeded order, cached or recomputed alike."""
    order = torch.randperm(len(dataset), generator=gen)  # type: ignore[arg-type]
    batches = [order[lo:lo + batch_size].tolist() for lo in range(0, len(order), batch_size)]
    if cache is not None:
        feats, _, labels = cache
        for idx in batches:
            yield [f[idx] for f in feats], labels[idx]
        return
    extractor = graph.feature_extractor(locations).eval()
    for x, y in DataLoader(dataset, batch_sampler=batches):
        with torch.no_grad():
            _, *fs = extractor(to_device(x, device))
        yield list(fs), to_device(y, device)


@torch.no_grad()
def _recalibrate_bn(heads: Mapping[int, nn.Module], locations: Sequence[int], cache: tuple | None,
                    graph: BlockGraph, dataset: Dataset, batch_size: int, device: torch.device | None,
                    max_batches: int = 32) -> None:
    """Recompute the heads' BatchNorm running statistics (cumulative average) on training features."""
    bns = [m for h in heads.values() for m in h.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    for h in heads.values():
        h.train()
    if cache is not None:
        feats = cache[0]
        batches = (([f[lo:lo + batch_size] for f in feats], None) for lo in range(0, len(cache[2]), batch_size))
    else:
        extractor = graph.feature_extractor(locations).eval()
        batches = ((list(extractor(to_device(x, device))[1:]), None) for x, _ in _batches(dataset, batch_size))
    for n, (fs, _) in enumerate(batches):
        if n >= max_batches and cache is None:
            break
        for loc, f in zip(locations, fs, strict=True):
            if loc in heads:
                heads[loc](f)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    for h in heads.values():
        h.eval()


@torch.no_grad()
def _accuracy(heads: Mapping[int, nn.Module], locations: Sequence[int], feats: Sequence[torch.Tensor],
              labels: torch.Tensor) -> dict[int, float]:
    out = {}
    for loc, f in zip(locations, feats, strict=True):
        if loc in heads:
            heads[loc].eval()
            out[loc] = float((heads[loc](f).argmax(1) == labels).float().mean())
    return out


def _drop_useless(active: dict[int, nn.Module], acc: Mapping[int, float], bar: float) -> dict[int, float]:
    """Heads whose accuracy is below ``bar`` taken out of ``active`` (their gradients cleared): location -> accuracy."""
    dropped = {}
    for loc, a in acc.items():
        if a < bar:
            dropped[loc] = a
            for p in active.pop(loc).parameters():
                p.grad = None
    return dropped


def train_heads(graph: BlockGraph, heads: Mapping[int, nn.Module], train_set: Dataset, calib_set: Dataset, *,
                epochs: int, lr: float, batch_size: int, cache_bytes: int, min_accuracy_gain: float,
                seed: int = 0, cache: bool | None = None, progress: bool = False,
                device: DeviceLike = None) -> HeadTraining:
    """Train every head on the frozen backbone at once.

    Args:
        graph: the block graph (its model is the frozen backbone).
        heads: one head per location; trained in place.
        train_set: the training split (``(x, y)`` items).
        calib_set: the calibration split, for early dropping and the reported accuracy.
        epochs: epochs per head (AdamW, cosine schedule).
        lr: initial learning rate.
        batch_size: batch size.
        cache_bytes: cache the training features when they fit in this many bytes.
        min_accuracy_gain: drop a head below majority rate + this after epoch 1 (0 disables).
        seed: seeds the batch order.
        cache: force caching on or off (None: by ``cache_bytes``).
        progress: print one line per epoch.
        device: where backbone and heads run (None: where they are); both end back where they were.
    """
    with on_device(device, graph.model, graph.gm, *heads.values()) as dev:
        return _train_heads(graph, heads, train_set, calib_set, epochs=epochs, lr=lr, batch_size=batch_size,
                            cache_bytes=cache_bytes, min_accuracy_gain=min_accuracy_gain, seed=seed, cache=cache,
                            progress=progress, device=dev)


def _train_heads(graph: BlockGraph, heads: Mapping[int, nn.Module], train_set: Dataset, calib_set: Dataset, *,
                 epochs: int, lr: float, batch_size: int, cache_bytes: int, min_accuracy_gain: float,
                 seed: int, cache: bool | None, progress: bool, device: torch.device | None) -> HeadTraining:
    """``train_heads`` with the backbone and the heads on ``device`` already (None: where they are)."""
    start = time.perf_counter()
    locations = sorted(heads)
    graph.model.eval()
    use_cache = cache if cache is not None else feature_bytes(graph, locations, len(train_set)) <= cache_bytes
    train_cache = (backbone_features(graph, locations, _batches(train_set, batch_size), device) if use_cache
                   else None)
    calib_feats, _, calib_labels = backbone_features(graph, locations, _batches(calib_set, batch_size), device)
    majority = float(torch.bincount(calib_labels).max()) / len(calib_labels)
    active = dict(heads)
    params = [p for h in active.values() for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    dropped: dict[int, float] = {}
    history: dict[int, list[float]] = {loc: [] for loc in locations}
    for epoch in range(epochs):
        for h in active.values():
            h.train()
        for feats, y in _epoch_batches(train_cache, graph, locations, train_set, batch_size, gen, device):
            loss = sum(F.cross_entropy(active[loc](f), y) for loc, f in zip(locations, feats, strict=True)
                       if loc in active)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if epoch == 0 or epoch == epochs - 1:
            _recalibrate_bn(active, locations, train_cache, graph, train_set, batch_size, device)
        acc = _accuracy(active, locations, calib_feats, calib_labels)
        for loc, a in acc.items():
            history[loc].append(a)
        if epoch == 0 and min_accuracy_gain > 0:
            dropped.update(_drop_useless(active, acc, majority + min_accuracy_gain))
        if progress:
            log.info(f"  heads epoch {epoch + 1}/{epochs}: " + ", ".join(f"u{k} {v:.3f}" for k, v in acc.items()))
        if not active:
            break
    for h in heads.values():
        h.eval()
    final_acc = _accuracy(active, locations, calib_feats, calib_labels)
    return HeadTraining(active, final_acc, dropped, use_cache, time.perf_counter() - start, epochs, history)


@torch.no_grad()
def exit_outputs(graph: BlockGraph, heads: Mapping[int, nn.Module], dataset: Dataset, batch_size: int,
                 device: DeviceLike = None) -> ExitOutputs:
    """Logits of every head and of the model on ``dataset`` (one backbone pass per batch), as CPU tensors.

    ``device``: where backbone and heads run (None: where they are); both end back where they were.
    """
    locations = sorted(heads)
    with on_device(device, graph.model, graph.gm, *heads.values()) as dev:
        feats, final, labels = backbone_features(graph, locations, _batches(dataset, batch_size), dev)
        logits = {}
        for loc, f in zip(locations, feats, strict=True):
            heads[loc].eval()
            logits[loc] = torch.cat([heads[loc](f[i:i + batch_size]) for i in range(0, len(f), batch_size)]).cpu()
    return ExitOutputs(logits, final.cpu(), labels.cpu())


def default_loss_weights(num_exits: int) -> list[float]:
    """Weights of ``num_exits`` early exits and the final one (see the module docstring)."""
    if num_exits == 0:
        return [1.0]
    raw = [k + 1.0 for k in range(1, num_exits + 1)]
    return [0.5 * r / sum(raw) for r in raw] + [0.5]


def joint_finetune(graph: BlockGraph, locations: Sequence[int], heads: Sequence[nn.Module], train_set: Dataset, *,
                   weights: Sequence[float], epochs: int, lr: float, batch_size: int,
                   seed: int = 0, device: DeviceLike = None) -> tuple[BlockGraph, list[nn.Module], float]:
    """Fine-tune copies of the backbone and the heads together (paper 004 eq. (5)).

    ``device``: where the copies train (None: where the originals are); they end on the originals' device.

    Returns:
        ``(block graph of the fine-tuned model copy, fine-tuned head copies, seconds)``.
    """
    if len(weights) != len(heads) + 1:
        raise ValueError(f"need {len(heads) + 1} loss weights (one per exit, final last), got {len(weights)}")
    start = time.perf_counter()
    model = copy.deepcopy(graph.model)
    heads = [copy.deepcopy(h) for h in heads]
    tuned = block_graph(model, graph.input_shape)
    net = EarlyExitNet.build(tuned, locations, heads, [2.0] * len(heads))
    with on_device(device, net, model, tuned.gm) as dev:
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
        model.train()
        net.train()
        for _ in range(epochs):
            for x, y in loader:
                outs = net.all_exits(to_device(x, dev))
                loss = sum(w * F.cross_entropy(o, to_device(y, dev)) for w, o in zip(weights, outs, strict=True))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    net.eval()
    return tuned, heads, time.perf_counter() - start
