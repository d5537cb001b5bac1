"""User-facing errors.

A `JmsnasError` is something the user can fix: a bad experiment file, a missing dataset root,
an unknown device. The CLI prints its message and exits with status 2, without a traceback.
Internal bugs raise ordinary exceptions and keep their tracebacks.
"""

from __future__ import annotations

from pathlib import Path


class JmsnasError(Exception):
    """An error caused by user input, with a message that says what would be valid.

    Args:
        message: what is wrong and what would be valid.
        file: the file the bad input came from, if any.
        field: the dotted field path inside that file (e.g. ``topology.links[2].bandwidth_mbps``).
    """

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.field:
            where.append(self.field)
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigError(JmsnasError):
    """The experiment or search-space file is invalid."""


class DatasetError(JmsnasError):
    """A dataset root is missing or does not hold what was expected."""


class TopologyError(JmsnasError):
    """Devices and links do not form a valid chain or mesh."""



class ArtifactError(JmsnasError):
    """A file jmsnas writes and reads back (``plan.json``, a bundle's ``manifest.json``) is missing or invalid."""


class BundleError(ArtifactError):
    """A bundle that is incomplete, tampered with, or not a jmsnas bundle."""
