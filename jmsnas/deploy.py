"""``jmsnas deploy EXPERIMENT.yaml CHOICE_DIR`` (``python -m jmsnas.deploy``): plan, compress, export one network.

``CHOICE_DIR`` holds ``arch.json`` and ``model.pt`` (a ``runs/<name>/best/t<T>ms/`` folder, or one a
user fills with a network of the search space). The experiment gives the topology, the latency
models, the dataset (to calibrate and train compressors and to measure accuracy) and the
``exits`` / ``partition`` / ``export`` sections, so the same network can be re-planned for another
set of devices without searching again. Writes ``plan.json``, ``deploy.json``, (with ``exits``)
``exits/`` and (with ``export``) ``bundle/`` into ``CHOICE_DIR``; ``--force`` replaces earlier ones.
The exits keep the worst-case latency within the choice's ``outcome.json`` ``t_const_ms``, else the
strategy's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from jmsnas.config import load_experiment
from jmsnas.errors import ConfigError, JmsnasError
from jmsnas.resources import experiment_file

EXAMPLES = """examples:
  jmsnas deploy experiments/quickstart.yaml runs/quickstart/best/t18ms
  jmsnas deploy other_devices.yaml runs/quickstart/best/t18ms --force    re-plan the same network elsewhere
  jmsnas deploy exp.yaml my_net/ --set partition.compressors[1].kind=quantize

exit status: 0 deployed, 2 bad input (one 'error:' line names the file and field)"""


def _parser(prog: str) -> argparse.ArgumentParser:
    from jmsnas.cli import add_verbosity

    parser = argparse.ArgumentParser(prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Plan, compress, add exits to, export and verify one chosen network "
                                     "(a folder with arch.json and model.pt) on the experiment's devices.")
    parser.add_argument("experiment", help="experiment YAML (or a shipped one's name): topology, dataset, exits, "
                        "partition, export")
    parser.add_argument("choice", help="folder with arch.json and model.pt")
    parser.add_argument("--force", action="store_true", help="replace plan.json, deploy.json and bundle/ if present")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="change one field of the experiment before validation; VALUE is YAML (repeatable)")
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m jmsnas.deploy") -> int:
    """Run ``jmsnas deploy``; returns the exit status (0 deployed, 2 bad input)."""
    from jmsnas.cli import setup_logging

    args = _parser(prog).parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        from jmsnas.stages import deploy as pipeline

        exp = load_experiment(experiment_file(args.experiment), overrides=args.overrides)
        pipeline.check_partition(exp)
        choice = Path(args.choice)
        for name in ("arch.json", "model.pt"):
            if not (choice / name).is_file():
                raise ConfigError(f"{choice / name} not found: a choice folder holds arch.json and model.pt",
                                  field="choice")
        if (choice / pipeline.DEPLOY_JSON).exists() and not args.force:
            raise ConfigError(f"{choice / pipeline.DEPLOY_JSON} exists; pass --force to deploy again", field="choice")
        d = pipeline.deploy_choice(exp, choice)
    except JmsnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"plan        {choice / pipeline.PLAN_JSON}: {d.predicted_latency_ms:.4g} ms on "
          f"{' -> '.join(d.devices)}, boundaries {d.boundaries}")
    for c in d.cuts:
        print(f"  cut       {c.src} -> {c.dst}: {c.compressor}, {c.payload_bytes:g} bytes, {c.link_ms:.4g} ms")
    print(f"accuracy    {100 * d.test_acc_split:.2f} % split, {100 * d.test_acc_unsplit:.2f} % unsplit "
          f"({d.acc_change_pp:+.2f} pp)")
    for b in d.baselines:
        print(f"  baseline  {b['name']:<13} {b['latency_ms']:.4g} ms")
    line = pipeline.exits_line(d.to_dict())
    if line is not None:
        print(f"exits       {line}")
    if d.bundle is not None:
        print(f"bundle      {choice / d.bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
