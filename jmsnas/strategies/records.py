"""The files a search run writes and reads back, one pydantic model each.

Every model here is strict (``extra="forbid"``) and carries a ``version`` (1; files written before
it existed load as version 1). `Artifact.load` reads a file and raises `JmsnasError` naming the
file and the field (``.../outcome.json: split.boundaries[1]: Input should be a valid integer ...``);
`Artifact.write` writes it atomically through `jmsnas.io`.

The search code keeps plain dicts in memory (the climb's and the random search's state, the
teacher's record): a dict becomes a file through ``Model.of(data).write(path)`` and comes back
through ``Model.load(path)``, so both directions are checked against the same schema. A dump holds
exactly the keys that were given (``exclude_unset``), in the models' field order, so a file keeps
the keys and the order it had before the models existed, with ``version`` added first.

- `Outcome`: ``outcome.json`` of one search run (`jmsnas.strategies.run.retrain_and_record`).
- `TeacherRecord`: ``teacher/teacher.json``, what the cached teacher was trained for
  (`jmsnas.strategies.teacher`).
- `ClimbState` and `ClimbRecord`: ``climb/state.json`` (the resumable hill climb) and
  ``climb.json`` (the finished climb with its teacher) of the morphism search.
- `RandomRecord`: ``random.json`` of the random search.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Discriminator, Tag

from jmsnas.io import load_artifact, write_json


class Record(BaseModel):
    """A part of an artifact: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Artifact(Record):
    """A JSON file a run writes and reads back (see the module docstring)."""

    version: int = 1

    @classmethod
    def of(cls, data: dict[str, Any]) -> Self:
        """Validate ``data`` made by the code (a bad one is a bug: pydantic's ``ValidationError``)."""
        return cls.model_validate(data)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read and validate the file at ``path``.

        Raises:
            ArtifactError: (a `JmsnasError`) the file is missing or unreadable, is not JSON, or a field
                does not fit; the message names the file and the field.
        """
        return load_artifact(path, cls.model_validate)

    def data(self) -> dict[str, Any]:
        """The keys that were given, without ``version``: what the code keeps in memory."""
        return self.model_dump(exclude_unset=True, exclude={"version"})

    def to_json(self) -> dict[str, Any]:
        """What the file holds: ``version`` first, then `data`."""
        return {"version": self.version, **self.data()}

    def write(self, path: str | Path, *, newline: bool = False) -> None:
        """Write `to_json` as indented JSON, atomically; ``newline``: end the file with one."""
        write_json(path, self.to_json(), newline=newline)


# --- outcome.json ----------------------------------------------------------------------------------


class OutcomeSplit(Record):
    """Where the network runs: device ``path[m]`` runs layers ``boundaries[m]:boundaries[m + 1]``."""

    path: list[str]
    boundaries: list[int]
    device_ms: dict[str, float]
    link_ms: dict[str, float]


class Outcome(Artifact):
    """``outcome.json``: a `jmsnas.strategies.run.SearchOutcome` (same fields) with its version."""

    arch: dict[str, Any]
    compact: str
    t_const_ms: float
    predicted_latency_ms: float
    feasible: bool
    split: OutcomeSplit
    search_val_acc: float
    val_acc: float
    test_acc: float
    search_wall_s: float
    retrain_wall_s: float
    seed: int


# --- the morphism search's teacher and climb -------------------------------------------------------


class TeacherRecord(Artifact):
    """``teacher.json``: what the cached teacher was trained for (``key``), its size and accuracy."""

    key: dict[str, Any]
    model: str
    params: int
    val_acc: float
    test_acc: float
    train_wall_s: float


class UserTeacher(Record):
    """The record of a teacher the user gave (``teacher.checkpoint``): nothing was trained."""

    checkpoint: str
    model: str


class StartStep(Record):
    """The climb's first history entry: the start network, trained like a child."""

    iteration: int
    start: str
    score: float
    val_acc: float


class ParentStep(Record):
    """The parent trained beside its children (``acceptance: fair``)."""

    score: float
    val_acc: float
    wall_s: float
    pid: int


class ChildStep(Record):
    """One trained child of an iteration: its morphisms, network, predicted latency and score."""

    morphs: list[str]
    compact: str
    latency_ms: float
    score: float
    val_acc: float
    wall_s: float
    pid: int


class ClimbStep(Record):
    """One hill-climbing iteration: the accepted child (index or None), the dropped draws, the children."""

    iteration: int
    accepted: int | None
    dropped: dict[str, int]
    pid: int
    acceptance: Literal["fair", "paper"]
    parent_score_before: float
    parent: ParentStep | None
    children: list[ChildStep]


def _step_kind(entry: Any) -> str:
    return "start" if isinstance(entry, StartStep) or (isinstance(entry, dict) and "start" in entry) else "climb"


def _teacher_kind(record: Any) -> str:
    return "user" if isinstance(record, UserTeacher) or (isinstance(record, dict) and "checkpoint" in record) \
        else "trained"


#: A history entry: the start network (``start``) or one iteration (``climb``); an error names the kind.
HistoryEntry = Annotated[Annotated[StartStep, Tag("start")] | Annotated[ClimbStep, Tag("climb")],
                         Discriminator(_step_kind)]
#: The teacher of a climb: trained here (``trained``) or the user's checkpoint (``user``).
Teacher = Annotated[Annotated[TeacherRecord, Tag("trained")] | Annotated[UserTeacher, Tag("user")],
                    Discriminator(_teacher_kind)]


class ClimbState(Artifact):
    """``climb/state.json``: the current parent (``arch``, an ``ArchSpec.to_dict``), its scores, the history.

    ``weights`` names the parent's weights beside the file (``parent-<iteration>.pt``).
    """

    iteration: int
    arch: dict[str, Any]
    compact: str
    score: float
    val_acc: float
    latency_ms: float
    wall_s: float
    history: list[HistoryEntry]
    weights: str


class ClimbRecord(ClimbState):
    """``climb.json``: the finished climb's state and the teacher's record (None without distillation).

    ``weights`` is there only when the climb was resumed from ``climb/state.json`` (it names the
    weights the run resumed from).
    """

    teacher: Teacher | None
    weights: str | None = None

    def data(self) -> dict[str, Any]:
        """As `Artifact.data`, with ``teacher`` first, as the file has always had it."""
        data = super().data()
        return {"teacher": data.pop("teacher"), **data}


# --- random.json ---------------------------------------------------------------------------------


class DrawnNetwork(Record):
    """A network drawn within T_const: its ``ArchSpec.to_dict``, compact string and predicted latency."""

    arch: dict[str, Any]
    compact: str
    latency_ms: float


class TrainedCandidate(Record):
    """A trained candidate: index into ``drawn``, and its validation figures after ``sample_epochs``."""

    index: int
    compact: str
    latency_ms: float
    val_acc: float
    val_loss: float
    wall_s: float


class RandomRecord(Artifact):
    """``random.json``: every drawn network, the rejections, the trained candidates and the best one's index."""

    seed: int
    t_const_ms: float
    rejected: dict[str, int]
    fastest_drawn_ms: float | None
    drawn: list[DrawnNetwork]
    trained: list[TrainedCandidate]
    best: int | None
    stopped: str | None
    wall_s: float
