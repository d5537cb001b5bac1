"""Where the shipped data lives: search spaces, latency profiles and experiments.

A source checkout (and an editable install) keeps them at the repository's top level
(``search_spaces/``, ``latency_profiles/``, ``experiments/``); a built wheel carries copies inside
the package, under ``jmsnas/_data/`` (``setup.py`` copies them at build time). `shipped` returns
whichever exists, the packaged copy first, through `importlib.resources`, so a wheel installed
anywhere finds its experiments and profiles and a checkout keeps using its own files.

Profiles a user measures (``jmsnas profile``) are written to ``./latency_profiles`` in the working
directory, never into the installed package.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal

Shipped = Literal["search_spaces", "latency_profiles", "experiments"]

#: The top-level data directories a wheel carries under ``jmsnas/_data/``.
SHIPPED: tuple[str, ...] = ("search_spaces", "latency_profiles", "experiments")

_CHECKOUT = Path(__file__).resolve().parent.parent


def shipped(name: Shipped) -> Path:
    """The directory of shipped data ``name``: the wheel's ``jmsnas/_data/<name>``, else the checkout's ``<name>``."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped directory {name!r}; one of {', '.join(SHIPPED)}")
    packaged = Path(str(importlib.resources.files("jmsnas") / "_data" / name))
    return packaged if packaged.is_dir() else _CHECKOUT / name


def experiment_file(name: str | Path) -> Path:
    """The experiment file a user names: an existing path, else a shipped experiment of that name.

    ``experiments/quickstart.yaml``, ``quickstart.yaml`` and ``quickstart`` all find the shipped
    quickstart when no such file exists here. A name that is neither is returned as given, so that
    loading it reports the missing file.
    """
    path = Path(name)
    if path.exists():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    packaged = shipped("experiments") / f"{stem}.yaml"
    return packaged if stem and packaged.is_file() else path
