"""A finished run read back: ``jmsnas.load_run("runs/quickstart")``.

`RunResult` reads what the search wrote (``summary.json``, ``experiment.yaml``, each trial's
``outcome.json``) through their typed models, so a notebook can look at a run without Ray and
without parsing files by hand::

    import jmsnas
    run = jmsnas.load_run("runs/quickstart")
    run.table()          # one row per trial (a pandas DataFrame when pandas is installed)
    run.best             # the overall choice (a report.Selection) or None
    run.choice(18)       # the choice for T_const = 18 ms
    run.experiment       # the frozen experiment (an ExperimentConfig)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jmsnas.errors import ArtifactError
from jmsnas.report import Selection, Summary, TrialSummary
from jmsnas.strategies.records import Outcome

#: The columns of `RunResult.table`, in order.
TABLE_COLUMNS = ("trial_id", "status", "t_const_ms", "seed", "val_acc", "test_acc", "search_val_acc",
                 "predicted_latency_ms", "feasible", "compact", "overrides", "artifact_dir")


@dataclass(frozen=True)
class RunResult:
    """One run directory's results (see the module docstring)."""

    dir: Path
    summary: Summary

    @property
    def trials(self) -> list[TrialSummary]:
        """Every trial of the run, in Tune's order."""
        return list(self.summary.trials)

    @property
    def choices(self) -> list[Selection]:
        """The choice per T_const (feasible or not), by increasing T_const."""
        return list(self.summary.selections)

    @property
    def best(self) -> Selection | None:
        """The overall choice (the most accurate feasible one), or None when no constraint was met."""
        return self.summary.overall

    def choice(self, t_const_ms: float) -> Selection:
        """The choice for one T_const.

        Raises:
            KeyError: the run searched no such T_const (the message lists those it did).
        """
        for s in self.summary.selections:
            if s.t_const_ms == t_const_ms:
                return s
        raise KeyError(f"no T_const {t_const_ms:g} ms in {self.dir}; the run has "
                       f"{', '.join(f'{s.t_const_ms:g}' for s in self.summary.selections)}")

    def outcome(self, trial_id: str) -> Outcome:
        """The full ``outcome.json`` of a finished trial (architecture, split, timings)."""
        for t in self.summary.trials:
            if t.trial_id == trial_id:
                return Outcome.load(Path(t.artifact_dir) / "outcome.json")
        raise KeyError(f"no trial {trial_id!r} in {self.dir}")

    @property
    def experiment(self):
        """The experiment as the run froze it (``experiment.yaml``; an `ExperimentConfig`)."""
        from jmsnas.config import load_experiment

        return load_experiment(self.dir / "experiment.yaml", check_data=False).config

    def rows(self) -> list[dict[str, Any]]:
        """`table`'s rows as plain dicts (``TABLE_COLUMNS``)."""
        return [{c: getattr(t, c) for c in TABLE_COLUMNS} for t in self.summary.trials]

    def table(self):
        """The trials as a pandas ``DataFrame`` (``TABLE_COLUMNS``) when pandas is installed, else `rows`."""
        try:
            import pandas as pd
        except ImportError:
            return self.rows()
        return pd.DataFrame(self.rows(), columns=list(TABLE_COLUMNS))


def load_run(run_dir: str | Path) -> RunResult:
    """Read a finished run (``runs/<name>/``, the folder holding ``summary.json``).

    Raises:
        ArtifactError: (a `JmsnasError`) no ``summary.json`` there (the search has not finished, or this is
            not a run directory), or a file does not fit its model; the message names the file and field.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / "summary.json").is_file():
        hint = " (an interrupted search: resume it first)" if (run_dir / "experiment.yaml").is_file() else ""
        raise ArtifactError(f"{run_dir} holds no summary.json: not a finished run{hint}", file=run_dir / "summary.json")
    return RunResult(run_dir, Summary.load(run_dir / "summary.json"))
