"""Checks of a deployment against the network it came from: in process, and through the exported bundle.

- ``SplitPipeline``: the split network run in this process with every codec (what the bundle computes).
- ``accuracy``: top-1 accuracy of any callable over labelled batches.
- ``verify_parts``: the bundle on both backends against the unsplit model (max |diff|, top-1 agreement),
  held to a tolerance when every cut is lossless.
- ``verify_exit_decisions``: the bundle's runtime exit decisions (``Bundle.run_exits``) against the
  in-process cascade.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jmsnas.export.writer import device_parts
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.runtime.bundle import load_bundle, verify_bundle

BACKENDS = ("torchscript", "onnx")
#: max |diff| a lossless bundle may show per backend (float32 round-off; ONNX Runtime fuses differently)
LOSSLESS_TOLERANCE = {"torchscript": 1e-5, "onnx": 1e-4}


class SplitPipeline(nn.Module):
    """The split network run in process, with every codec: what the bundle computes."""

    def __init__(self, segments: Sequence[nn.Module], plan: DeploymentPlan,
                 codecs: dict[int, tuple[nn.Module, nn.Module]]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(device_parts(plan, segments, codecs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = (x,)
        for part in self.parts:
            values = part(*values)
        return values[0]


def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Share of samples whose top-1 class under ``fn`` is the label."""
    hits = total = 0
    with torch.no_grad():
        for x, y in batches:
            hits += int((fn(x).argmax(-1) == y).sum())
            total += len(y)
    return hits / max(total, 1)


def verify_parts(bundle: Path, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 lossless: bool) -> dict[str, Any]:
    """The bundle on each backend against the unsplit ``model``; ``ok`` holds a lossless bundle to tolerance."""
    out: dict[str, Any] = {}
    for backend in BACKENDS:
        check = verify_bundle(bundle, model, [x for x, _ in batches], backend)
        out[backend] = {"max_abs_diff": check.max_abs_diff, "top1_agreement": check.top1_agreement,
                        "samples": check.samples}
    out["lossless"] = lossless
    if lossless:
        out["ok"] = all(out[b]["max_abs_diff"] <= tol for b, tol in LOSSLESS_TOLERANCE.items())
    else:
        out["ok"] = True  # lossy: the agreement rate is the figure; nothing to hold it against
    return out


def verify_exit_decisions(bundle: Path, cascade: nn.Module,
                          batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Per backend, how often the bundle's runtime takes the in-process cascade's exit and top-1 class."""
    out = {}
    for backend in BACKENDS:
        runtime = load_bundle(bundle, backend)
        same_exit = same_top1 = total = 0
        for x, _ in batches:
            logits, index = runtime.run_exits(x)
            with torch.no_grad():
                ref_logits, ref_index = cascade(x)[:2]  # a SkippingCascade also returns what it computed
            same_exit += int((index == ref_index).sum())
            same_top1 += int((logits.argmax(-1) == ref_logits.argmax(-1)).sum())
            total += len(x)
        out[backend] = {"same_exit": same_exit / max(total, 1), "top1_agreement": same_top1 / max(total, 1),
                        "samples": total}
    return out
