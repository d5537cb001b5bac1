"""``jmsnas``: one command with subcommands (``jmsnas search``, ``jmsnas deploy``, ``jmsnas profile``, ...).

Each subcommand is the ``main(argv)`` of its module, imported only when it is run, so ``jmsnas
--version`` and ``jmsnas search --check`` do not import Ray or Lightning. ``python -m jmsnas.search``
and the other module commands keep working and take the same options.

Output: a command's result (a summary, a plan) goes to stdout; progress goes through `logging`
(the ``jmsnas`` logger, to stdout; ``-v`` adds debug lines, ``-q`` keeps warnings and errors only);
errors go to stderr as one ``error: ...`` line, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from jmsnas import __version__

#: Subcommand -> (module whose ``main(argv)`` runs it, one line of help).
COMMANDS: dict[str, tuple[str, str]] = {
    "search": ("jmsnas.search", "search a network and its split across devices (then deploy the choices)"),
    "deploy": ("jmsnas.deploy", "plan, add exits to, compress, export and verify one chosen network"),
    "profile": ("jmsnas.profile", "measure this machine as a device (a latency profile)"),
    "serve": ("jmsnas.serve", "run an exported bundle's part on this device"),
    "report": ("jmsnas.results", "print what a finished run found (the choice per T_const)"),
}
#: Subcommands whose ``main`` takes ``prog=`` (so ``--help`` reads ``jmsnas search``).
_TAKES_PROG = {"search", "deploy", "profile", "report", "serve"}

EXIT_CODES = """exit status:
  0    done (--check: the experiment is valid)
  1    some trial failed (search); the profile does not hold here (profile --verify)
  2    bad input: the experiment file, a --set, an argument (one 'error:' line names the file and field)
  3    profile: no quiet window on this machine
  130  interrupted (search prints the command that resumes)"""

LOGGER = logging.getLogger("jmsnas")


class _StdoutHandler(logging.StreamHandler):
    """Writes to the current ``sys.stdout`` (looked up at each record, so redirections are followed)."""

    @property
    def stream(self):  # noqa: D102 - logging.StreamHandler's attribute
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``-v`` / ``-q`` on a command's parser (repeatable: ``-qq`` keeps errors only)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0, help="more output (debug lines)")
    group.add_argument("-q", "--quiet", action="count", default=0,
                       help="less output: warnings and errors only (-qq: errors only)")


def setup_logging(verbose: int = 0, quiet: int = 0) -> None:
    """Send the ``jmsnas`` logger's records to stdout at the level ``-v`` / ``-q`` ask for (INFO by default)."""
    level = logging.DEBUG if verbose else {0: logging.INFO, 1: logging.WARNING}.get(quiet, logging.ERROR)
    for h in [h for h in LOGGER.handlers if isinstance(h, _StdoutHandler)]:
        LOGGER.removeHandler(h)
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    if quiet:  # the libraries' own chatter follows -q too
        for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "ray", "ray.tune"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))


def available() -> dict[str, tuple[str, str]]:
    """The subcommands whose module exists in this installation (``serve`` may be absent)."""
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def _parser(commands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<9} {spec[1]}" for name, spec in commands.items())
    parser = argparse.ArgumentParser(
        prog="jmsnas", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Joint model split and neural architecture search for networks of devices.",
        epilog=f"commands:\n{lines}\n\n'jmsnas COMMAND --help' shows a command's options.\n\n"
               "examples:\n"
               "  jmsnas search experiments/quickstart.yaml --check\n"
               "  jmsnas search quickstart --set tune.num_samples=2 --output-dir /tmp/runs\n"
               "  jmsnas deploy experiments/quickstart.yaml runs/quickstart/best/t18ms\n"
               "  jmsnas profile --search-space search_spaces/mbconv13_1d.yaml --device-name cpu-1t\n"
               "  jmsnas report runs/quickstart\n\n"
               f"{EXIT_CODES}")
    parser.add_argument("--version", action="version", version=f"jmsnas {__version__}")
    add_verbosity(parser)
    parser.add_argument("command", choices=list(commands), metavar="COMMAND", help=", ".join(commands))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``jmsnas [-v|-q] COMMAND ARGS``: run a subcommand; returns its exit status."""
    commands = available()
    args = _parser(commands).parse_args(argv)
    rest = list(args.args)
    rest = ["-v"] * args.verbose + ["-q"] * args.quiet + rest  # -v/-q before the command reach it too
    module = importlib.import_module(commands[args.command][0])
    if args.command in _TAKES_PROG:
        return int(module.main(rest, prog=f"jmsnas {args.command}"))
    if args.verbose or args.quiet:
        setup_logging(args.verbose, args.quiet)
        rest = rest[args.verbose + args.quiet:]
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
