"""Who feeds whom in a bundle: a chain (part m feeds m + 1) or, for a branched bundle, the parts' ``sources``.

A branched bundle (``export.branched``) names per part the earlier part and output each input comes
from. Served, a part sends each consumer only the outputs that consumer takes, and a part fed by
several producers (the join after parallel branches) waits until every one of its inputs has come.
Only the first part may take the network input: the feeder sends it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jmsnas.errors import BundleError, ConfigError
from jmsnas.export.manifest import PartEntry


@dataclass(frozen=True)
class PartGraph:
    """Per part: its consumers with the ``(input slot, output index)`` pairs each takes, and its producers."""

    consumers: tuple[tuple[tuple[int, tuple[tuple[int, int], ...]], ...], ...]
    producers: tuple[tuple[int, ...], ...]
    branched: bool

    @classmethod
    def of(cls, parts: list[PartEntry], file: Path | None = None) -> PartGraph:
        """The graph of a bundle's parts.

        Raises:
            BundleError: a part other than the first that takes the network input, or a source that is
                not an earlier part.
        """
        n = len(parts)
        if all(p.sources is None for p in parts):  # a chain: every output of m is every input of m + 1
            cons = tuple(((m + 1, tuple((i, i) for i in range(len(parts[m + 1].inputs)))),) if m + 1 < n else ()
                         for m in range(n))
            return cls(cons, tuple((m - 1,) if m else (-1,) for m in range(n)), False)
        takes: list[dict[int, list[tuple[int, int]]]] = [{} for _ in range(n)]
        producers = []
        for j, part in enumerate(parts):
            srcs = part.sources or []
            for slot, (m, k) in enumerate(srcs):
                if m < 0 and j != 0:
                    raise BundleError(f"part {j} takes the network input; only the first part may be fed it",
                                      file=file, field=f"parts[{j}].sources")
                if not -1 <= m < j:
                    raise BundleError(f"part {j} takes an input from part {m}, which does not come before it",
                                      file=file, field=f"parts[{j}].sources")
                if m >= 0:
                    takes[m].setdefault(j, []).append((slot, k))
            producers.append(tuple(sorted({m for m, _ in srcs})))
        cons = tuple(tuple((j, tuple(pairs)) for j, pairs in sorted(t.items())) for t in takes)
        return cls(cons, tuple(producers), True)

    def consumer_parts(self, m: int) -> list[int]:
        """The parts part ``m`` sends to, in part order."""
        return [j for j, _ in self.consumers[m]]


def part_index(parts: list[PartEntry], device: str, file: Path) -> int:
    """The index of ``device``'s part in a bundle.

    Raises:
        ConfigError: a device the bundle does not name.
    """
    names = [p.device for p in parts]
    if device not in names:
        raise ConfigError(f"device {device!r} is not in this bundle; valid: {names}", file=file, field="--device")
    return names.index(device)
