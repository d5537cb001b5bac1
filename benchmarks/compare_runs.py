"""Compare two run directories of the same experiment: every figure and file must agree.

    python benchmarks/compare_runs.py RUN_A RUN_B

Walks ``summary.json``, ``run.json`` and every choice folder ``best/t<T>ms/`` (``arch.json``,
``outcome.json``, ``plan.json``, ``deploy.json``, ``exits/*.json``, ``bundle/manifest.json``) and
compares the JSON values, the bytes of ``model.pt``, and every bundle file by content. What differs
between two runs by nature is left out and said so: Ray's trial ids, absolute paths (the run root is
replaced by ``<run>``), wall-clock figures (keys ending in ``seconds`` or ``_s``, ``latency_measured``,
dates), the ``version`` key the artifacts gained, and the source locations the exporters record:
a TorchScript file is compared member by member without its ``.debug_pkl`` (file:line of every frame
of the tracing call stack) and ``serialization_id`` (and the manifest without its files' sha256);
an ONNX file graph by graph without the nodes' ``doc_string`` (their source lines). Floats agree
within a relative 1e-9. Exits 0 when everything agrees, 1 otherwise, listing each difference.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Any

VOLATILE_KEYS = {"trial_id", "version", "latency_measured", "timings_s", "date", "started", "finished", "wall_s",
                 "python", "host", "git", "ray"}


def _volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or key.endswith("seconds") or key.endswith("_s")


def normalise(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: normalise(v, root) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [normalise(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<run>")
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
    """A digest of what a file computes: TorchScript and ONNX files without their source locations."""
    if path.suffix == ".pt" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            members = sorted(n for n in z.namelist() if not n.endswith((".debug_pkl", "serialization_id")))
            digest = hashlib.sha256()
            for name in members:
                digest.update(name.split("/", 1)[-1].encode() + z.read(name))
            return digest.hexdigest()
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path))
        for node in model.graph.node:
            node.doc_string = ""
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    return _sha(path)


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
