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

`run_experiment` runs an experiment's search (and its deploy stage) from Python and returns the same object;
``jmsnas report RUN_DIR`` prints a finished run's choices (`main`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jmsnas.errors import ArtifactError, JmsnasError
from jmsnas.report import Selection, Summary, TrialSummary, selections_table
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


def run_experiment(experiment: str | Path | Mapping[str, Any], *, overrides: Sequence[str] = (), resume: bool = False,
           address: str | None = None, smoke: bool = False, num_cpus: int | None = None) -> RunResult:
    """Run an experiment's search (then its deploy stage, as ``jmsnas search`` does) and return the run.

    Progress goes to the ``jmsnas`` logger (silent unless the caller configures logging); a Ray this
    process already runs (a notebook's) is used and left running.

    Args:
        experiment: an experiment file, a shipped experiment's name, or its content as a dict.
        overrides: ``KEY.PATH=VALUE`` changes (``--set``).
        resume, address, smoke, num_cpus: as ``jmsnas search``'s options.

    Raises:
        JmsnasError: a bad experiment (naming the file and field), or a search that did not finish
            (some trial failed, or it was interrupted).
    """
    from jmsnas import tune
    from jmsnas.checks import check_partition, check_stages
    from jmsnas.config import load_experiment
    from jmsnas.resources import experiment_file
    from jmsnas.rundir import check_search, smoke_config
    from jmsnas.search import deploy_after_search

    source = experiment if isinstance(experiment, Mapping) else experiment_file(experiment)
    exp = load_experiment(source, overrides=overrides)
    for check in (check_stages, check_partition, check_search):
        check(exp)
    status = tune.run_search(exp, resume=resume, address=address, smoke=smoke, num_cpus=num_cpus)
    config = smoke_config(exp.config) if smoke else exp.config
    run_dir = (config.output_dir / config.name).resolve()
    if status != 0:
        raise JmsnasError(f"the search of {run_dir} did not finish (exit status {status}); see its summary.json "
                          "or resume it with resume=True")
    if any(getattr(exp.config, s) is not None for s in ("exits", "partition", "export")):
        deploy_after_search(exp, smoke=smoke)
    return load_run(run_dir)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m jmsnas.results") -> int:
    """``jmsnas report RUN_DIR [--json]``: print a finished run's choices (reads only; 0 done, 2 no run)."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Print what a finished run found: the choice per T_const, the "
                                     "overall choice and where its files are. Nothing is written.",
                                     epilog="examples:\n  jmsnas report runs/quickstart\n"
                                     "  jmsnas report runs/quickstart --json     summary.json's choices as JSON\n\n"
                                     "exit status: 0 done, 2 not a finished run")
    parser.add_argument("run_dir", type=Path, help="a run directory (runs/<name>/, holding summary.json)")
    parser.add_argument("--json", action="store_true", help="print the choices and the overall choice as JSON")
    from jmsnas.cli import add_verbosity

    add_verbosity(parser)
    args = parser.parse_args(argv)
    try:
        run = load_run(args.run_dir)
    except JmsnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    choices = [c.model_dump(mode="json", exclude_none=True) for c in run.choices]
    if args.json:
        best = None if run.best is None else run.best.model_dump(mode="json", exclude_none=True)
        print(json.dumps({"run_dir": str(run.dir), "choices": choices, "overall": best}, indent=2))
        return 0
    finished = sum(t.status == "finished" for t in run.trials)
    print(f"run         {run.dir} ({run.summary.experiment}): {len(run.trials)} trial(s), {finished} finished")
    print("\n".join(selections_table([c.model_dump(mode="json") for c in run.choices])))
    best = run.best
    print("overall     none: no constraint was met" if best is None else
          f"overall     trial {best.trial_id} (T_const {best.t_const_ms:g} ms): val acc {best.val_acc:.3f}, test acc "
          f"{best.test_acc:.3f}, {best.predicted_latency_ms:.4g} ms -> {run.dir / 'arch.json'}")
    print(f"report      {run.dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
