"""Compare two run directories of the same experiment: every figure and file must agree.

    python benchmarks/compare_runs.py RUN_A RUN_B

Walks ``summary.json``, ``run.json`` and every choice folder ``best/t<T>ms/`` (``arch.json``,
``outcome.json``, ``plan.json``, ``deploy.json``, ``exits/*.json``, ``bundle/manifest.json``) and
compares the JSON values, the bytes of ``model.pt``, and every bundle file by content. What differs
between two runs by nature is left out and said so: Ray's trial ids (inside paths too), absolute
paths (the run root is replaced by ``<run>``), the git commit, wall-clock figures (keys ending in
``seconds`` or ``_s``, ``latency_measured``, dates), the ``version`` key the artifacts gained, and what
exporters record about the source: a TorchScript file is compared by its weights and its outputs on a
fixed input (its code names the Python module of each traced class and the file:line of every frame
of the tracing call stack), an ONNX file by its graph without the nodes' ``doc_string`` and
``metadata_props`` (source lines, class hierarchy), the manifest without its files' sha256. Floats
agree within a relative 1e-9. Exits 0 when everything agrees, 1 otherwise, listing each difference.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

VOLATILE_KEYS = {"trial_id", "version", "latency_measured", "timings_s", "date", "started", "finished", "wall_s",
                 "python", "host", "git", "ray", "git_commit"}
TRIAL_ID = re.compile(r"[0-9a-f]{5}_\d{5}")


def _volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or key.endswith("seconds") or key.endswith("_s")


def normalise(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: normalise(v, root) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [normalise(v, root) for v in value]
    if isinstance(value, str):
        return TRIAL_ID.sub("<trial>", value.replace(root, "<run>"))
    return value


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in {'A' if k in a else 'B'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        return [] if same else [f"{where}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _content(path: Path) -> str:
    """A digest of what a file holds, without the source locations and module names exporters record.

    TorchScript: its weights and buffers, and its outputs on a fixed input (``_probe``); the code
    members name the Python module of each traced class, which a move changes. ONNX: the graph with
    every node's ``doc_string`` and ``metadata_props`` (source lines, class hierarchy) cleared.
    """
    if path.suffix == ".pt" and path.parent.name == "bundle" and zipfile.is_zipfile(path):
        import torch

        module = torch.jit.load(str(path), map_location="cpu")
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
        with torch.no_grad():
            out = module(*_probe(path))
        for t in out if isinstance(out, tuple) else (out,):
            digest.update(t.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path))
        for node in model.graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    return _sha(path)


def _probe(path: Path) -> list:
    """A fixed input for the bundle part in ``path``, from the shapes and dtypes ``manifest.json`` gives it."""
    import torch

    manifest = json.loads((path.parent / "manifest.json").read_text())
    part = next(p for p in manifest["parts"] if p["files"]["torchscript"]["path"] == path.name)
    gen = torch.Generator().manual_seed(0)
    out = []
    for spec in part["inputs"]:
        shape = [2, *spec["example_shape"][1:]]
        if spec["dtype"] == "uint8":
            out.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen))
        else:
            out.append(torch.randn(shape, generator=gen))
    return out


def _without_hashes(manifest: Any) -> Any:
    """The manifest without its files' sha256 (the files themselves are compared by content)."""
    if isinstance(manifest, dict):
        return {k: _without_hashes(v) for k, v in manifest.items() if k != "sha256"}
    if isinstance(manifest, list):
        return [_without_hashes(v) for v in manifest]
    return manifest


def compare(run_a: Path, run_b: Path) -> list[str]:
    out = []
    names = ["summary.json", "run.json"]
    for choice in sorted((run_a / "best").glob("t*ms")):
        rel = choice.relative_to(run_a)
        names += [str(rel / n) for n in ("arch.json", "outcome.json", "plan.json", "deploy.json",
                                         "bundle/manifest.json")]
        names += [str(p.relative_to(run_a)) for p in sorted((choice / "exits").glob("*.json"))]
        binaries = ["model.pt", *(str(p.relative_to(choice)) for p in sorted((choice / "bundle").glob("*"))
                                  if p.suffix != ".json")]
        for name in binaries:
            a, b = choice / name, run_b / rel / name
            if not b.is_file():
                out.append(f"{rel / name}: missing in B")
            elif _content(a) != _content(b):
                out.append(f"{rel / name}: content differs")
    for name in names:
        a, b = run_a / name, run_b / name
        if not a.is_file() and not b.is_file():
            continue
        if not (a.is_file() and b.is_file()):
            out.append(f"{name}: missing in {'B' if a.is_file() else 'A'}")
            continue
        da = normalise(json.loads(a.read_text()), str(run_a.resolve()))
        db = normalise(json.loads(b.read_text()), str(run_b.resolve()))
        if name.endswith("manifest.json"):
            da, db = _without_hashes(da), _without_hashes(db)
        out += [f"{name}{d}" for d in differences(da, db)]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run_a, run_b = (Path(p) for p in argv)
    diffs = compare(run_a, run_b)
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s) between {run_a} and {run_b}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
