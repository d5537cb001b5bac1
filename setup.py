"""Build hook: a wheel carries the top-level data directories inside the package, as ``jmsnas/_data/``.

The repository keeps ``search_spaces/``, ``latency_profiles/`` and ``experiments/`` at its top level
(tests, docs and experiment files refer to them there); `jmsnas.resources.shipped` finds either copy.
An editable install copies nothing: the package then reads the checkout's directories.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).resolve().parent
DATA_DIRS = ("search_spaces", "latency_profiles", "experiments")
SUFFIXES = {".yaml", ".csv", ".json"}


class build_py(_build_py):  # noqa: N801 - setuptools' command name
    """``build_py`` that also copies the data directories into ``jmsnas/_data/`` of the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in DATA_DIRS:
            src = HERE / name
            if not src.is_dir():
                raise FileNotFoundError(f"{src}: the wheel ships this directory; it is missing from the source")
            dst = Path(self.build_lib) / "jmsnas" / "_data" / name
            shutil.rmtree(dst, ignore_errors=True)
            for f in sorted(src.rglob("*")):
                if f.is_file() and f.suffix in SUFFIXES:
                    target = dst / f.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, target)


setup(cmdclass={"build_py": build_py})
