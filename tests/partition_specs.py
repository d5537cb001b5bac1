"""The tiny 2-D ArchSpec the partition tests split, compress and export, and a task it can learn."""

from __future__ import annotations

import torch

from jmsnas.space.arch import ArchSpec, BlockSpec, HeadSpec, StemSpec, build_model


def tiny_arch_spec() -> ArchSpec:
    """Stem 3->4, a stride-2 MBConv 4->8 and a shortcut MBConv 8->8, head 8 -> 5 classes, on 3x16x16."""
    return ArchSpec(
        dims=2,
        input_shape=(3, 16, 16),
        num_classes=5,
        stem=StemSpec(channels=4, kernel_size=3, stride=1),
        blocks=(BlockSpec.of("mb_k3_e3", 4, 8, 2), BlockSpec.of("mb_k3_e3_sc", 8, 8, 1)),
        head=HeadSpec(channels=8),
    )


class TemplateTask:
    """A learnable 5-class task on 3x16x16 inputs: a fixed random pattern per class plus noise."""

    def __init__(self, seed: int = 0, noise: float = 1.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.templates = torch.randn(5, 3, 16, 16, generator=g)
        self.noise = noise
        self.generator = g

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 5, (n,), generator=self.generator)
        return self.templates[y] + self.noise * torch.randn(n, 3, 16, 16, generator=self.generator), y


def trained_tiny_model(task: TemplateTask, steps: int = 80) -> torch.nn.Module:
    """``tiny_arch_spec``'s network trained briefly on ``task`` (predictions vary with the input), in eval mode."""
    torch.manual_seed(0)
    model = build_model(tiny_arch_spec())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x, y = task.batch(32)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()
