"""The two file formats of a bundle part: TorchScript (``torch.jit.trace``) and ONNX (opset 18, ``torch.export``).

``save_torchscript`` and ``save_onnx`` write one part; ``onnx_shapes`` reads back the shapes the
ONNX graph declares (``None`` on a dynamic axis, as the manifest records them) and
``onnx_max_abs_diff`` is the export's own check of the ONNX file against the eager part.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import onnx


def save_torchscript(part: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Trace ``part`` on ``inputs`` and save it as TorchScript (``torch.jit.load`` opens it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated")  # still the loadable format
        traced = torch.jit.trace(part, inputs, check_trace=False)
        torch.jit.save(traced, str(path))


def save_onnx(
    part: nn.Module, inputs: tuple[torch.Tensor, ...], in_names: list[str], out_names: list[str], path: Path
) -> None:
    """ONNX opset 18 via ``torch.export``, batch axis dynamic where the graph allows it, checked by ``onnx``."""
    import onnx  # noqa: PLC0415  (export-only dependency)

    # forward(*xs) is one var-positional parameter, so its spec is a one-element tuple of per-tensor specs.
    batch = (tuple({0: torch.export.Dim.AUTO} for _ in inputs),)
    torch.onnx.export(
        part,
        inputs,
        str(path),
        dynamo=True,
        opset_version=18,
        external_data=False,
        input_names=in_names,
        output_names=out_names,
        dynamic_shapes=batch,
        verbose=False,
    )
    onnx.checker.check_model(str(path))


def onnx_shapes(path: Path) -> tuple[list[list[int | None]], list[list[int | None]]]:
    """Input and output shapes of an ONNX file; ``None`` for a dynamic axis."""
    import onnx  # noqa: PLC0415

    graph = onnx.load(str(path)).graph

    def dims(value: onnx.ValueInfoProto) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    return [dims(v) for v in graph.input], [dims(v) for v in graph.output]


def onnx_max_abs_diff(path: Path, inputs: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> float:
    """The export's own check: onnxruntime on the example against the eager part (uint8 compared as numbers)."""
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), inputs, strict=True)}
    got = session.run(None, feeds)
    return max(
        float(np.abs(g.astype(np.float64) - e.numpy().astype(np.float64)).max(initial=0.0))
        for g, e in zip(got, expected, strict=True)
    )
