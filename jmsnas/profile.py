"""``jmsnas profile`` (``python -m jmsnas.profile``): measure this machine as a device for jmsnas.

Example (a phone-class CPU at one thread)::

    python -m jmsnas.profile --search-space search_spaces/mbconv13_1d.yaml \\
        --search-space search_spaces/mbconv13.yaml --device-name cpu-1t --threads 1

writes ``./latency_profiles/cpu-1t.csv`` and ``cpu-1t.json`` (``--out-dir`` elsewhere); an experiment
then names the device ``profile: cpu-1t`` (found in ``./latency_profiles``, or set ``profiles_dir``).
Run the same command on a Raspberry Pi or a Jetson (``--device cuda``) and copy the two files into
the ``latency_profiles/`` of the machine that searches. An interrupted run resumes when run again.

Profile on a quiet machine: every chunk of ops is measured under a contention guard (a reference
workload timed around it; see `jmsnas.latency.guard`). A chunk measured while the machine slowed
down is measured again; when no quiet window comes the run stops with exit status 3 and the profile
stays incomplete (run the same command again later to finish it).

Check a profile against this machine (re-times a sample of its rows; exit 0 when it holds, 1 when not)::

    python -m jmsnas.profile --verify cpu-1t

Exit status: 0 done, 1 ``--verify``: the profile does not hold here, 2 bad arguments, 3 no quiet
window (machine too busy), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jmsnas.config import DEFAULT_PROFILES_DIR, USER_PROFILES_DIR
from jmsnas.errors import JmsnasError
from jmsnas.latency.guard import DEFAULT_TOLERANCE, ContentionError

_EXAMPLES = """examples:
  jmsnas profile --search-space search_spaces/mbconv13_1d.yaml --device-name cpu-1t --threads 1
  jmsnas profile --search-space search_spaces/mbconv13.yaml --device-name jetson --device cuda
  jmsnas profile --verify cpu-1t

exit status: 0 done, 1 --verify: the profile does not hold here, 2 bad arguments, 3 no quiet window
(machine too busy; run again later to finish), 130 interrupted (run again to resume)"""


def _parser(prog: str) -> argparse.ArgumentParser:
    """The command line of ``jmsnas profile`` (``python -m jmsnas.profile``)."""
    from jmsnas.cli import add_verbosity

    parser = argparse.ArgumentParser(prog=prog, description="Time every candidate op of search spaces on this machine.",
                                     epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbosity(parser)
    parser.add_argument("--search-space", action="append", type=Path,
                        help="a search-space YAML file; repeat for several (required unless --verify)")
    parser.add_argument("--device-name", help="name of the profile (NAME.csv), e.g. cpu-1t or rpi4")
    parser.add_argument("--verify", metavar="NAME",
                        help="re-time a sample of profile NAME's rows here and report whether it still holds")
    parser.add_argument("--verify-ops", type=int, default=64, help="rows re-timed by --verify (default 64)")
    parser.add_argument("--tolerance", type=float, default=100 * DEFAULT_TOLERANCE,
                        help="percent the reference workload may move before a chunk is re-measured "
                             "(default %(default)s)")
    parser.add_argument("--no-guard", action="store_true",
                        help="measure without the contention guard (the profile is marked guarded: false)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (default 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where ops run (default cpu)")
    parser.add_argument("--batch-size", type=int, action="append", help="batch size(s) to time; default 1")
    parser.add_argument("--blocks", type=int, default=10,
                        help="timing blocks per op, interleaved with other ops; the median of block minima is kept")
    parser.add_argument("--block-size", type=int, default=10, help="timed runs per block")
    parser.add_argument("--rounds", type=int,
                        help="measurements of each chunk of ops, seconds apart; each op keeps its fastest, which "
                             "survives the slow spells of shared VMs (default 3; --verify: the profile's own, "
                             "at least 5)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing each op")
    parser.add_argument("--calibration-nets", type=int, default=60,
                        help="random whole networks per space timed to calibrate how op times add up (0: none)")
    parser.add_argument("--no-grid", action="store_true", help="time only the exact shapes of the spaces")
    parser.add_argument("--out-dir", type=Path, default=USER_PROFILES_DIR,
                        help="where profiles are written and --verify reads them, falling back to the shipped "
                        "ones (default: ./%(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m jmsnas.profile") -> int:
    """Profile (or ``--verify``) a device; returns the exit status (2: bad arguments, 3: no quiet window)."""
    from jmsnas.cli import setup_logging

    args = _parser(prog).parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    try:
        if args.verify is not None:
            return _verify(args)
        if not args.search_space or not args.device_name:
            raise JmsnasError("--search-space and --device-name are required (or --verify NAME)")
        if args.tolerance <= 0:
            raise JmsnasError(f"--tolerance must be > 0 (percent), got {args.tolerance}")
        if args.threads < 1 or args.blocks < 1 or args.block_size < 1 or args.warmup < 0 or args.calibration_nets < 0:
            raise JmsnasError("--threads, --blocks and --block-size must be >= 1; --warmup and --calibration-nets >= 0")
        if args.rounds is not None and args.rounds < 1:
            raise JmsnasError(f"--rounds must be >= 1, got {args.rounds}")
        if not args.device_name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise JmsnasError(f"--device-name {args.device_name!r} may hold only letters, digits, '-', '_' and '.'")
        from jmsnas.latency.guard import ContentionGuard
        from jmsnas.latency.profiler import DEFAULT_ROUNDS, profile_search_spaces
        from jmsnas.space.spec import load_search_space

        spaces = [load_search_space(p) for p in args.search_space]
        csv_path = profile_search_spaces(spaces, args.device_name, args.out_dir, threads=args.threads,
                                         device=args.device, batch_sizes=args.batch_size or [1], warmup=args.warmup,
                                         blocks=args.blocks, block_size=args.block_size,
                                         rounds=args.rounds or DEFAULT_ROUNDS, calibration_nets=args.calibration_nets,
                                         grid=not args.no_grid,
                                         overwrite=args.overwrite, progress=True, guard=None if args.no_guard else
                                         ContentionGuard(tolerance=args.tolerance / 100))
    except ContentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except JmsnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"wrote {csv_path} and {csv_path.with_suffix('.json')}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from jmsnas.latency.verify import verify_profile

    if args.verify_ops < 1:
        raise JmsnasError(f"--verify-ops must be >= 1, got {args.verify_ops}")
    if args.rounds is not None and args.rounds < 1:
        raise JmsnasError(f"--rounds must be >= 1, got {args.rounds}")
    name = args.verify
    csv_path = args.out_dir / f"{name}.csv"
    if not csv_path.is_file() and (DEFAULT_PROFILES_DIR / f"{name}.csv").is_file():
        csv_path = DEFAULT_PROFILES_DIR / f"{name}.csv"  # a shipped profile
    report = verify_profile(csv_path, n_ops=args.verify_ops, rounds=args.rounds,
                            tolerance=None if args.no_guard else args.tolerance / 100)
    speed = ""
    if report.speed_index_profile_ms and report.speed_index_now_ms:
        speed = (f"; reference workload {report.speed_index_now_ms:.3f} ms now vs {report.speed_index_profile_ms:.3f} "
                 f"ms when profiled ({report.speed_index_now_ms / report.speed_index_profile_ms:.2f}x)")
    print(f"{name}: {report.n_ops} rows re-timed, median ratio now/profile {report.median_ratio:.3f}, "
          f"{100 * report.within_10pct:.0f} % within ±10 %{speed}")
    print(f"{name}: the profile {'holds' if report.holds else 'does NOT hold'} on this machine")
    return 0 if report.holds else 1


if __name__ == "__main__":
    sys.exit(main())
