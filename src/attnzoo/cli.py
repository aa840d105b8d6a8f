"""The ``attnzoo`` command: ``attnzoo demo`` (the tour) and ``attnzoo bench`` (speed).

Also ``python -m attnzoo`` (``__main__.py``). Bad usage exits with status 2 and one line on
stderr, never a traceback; a command that cannot finish exits with status 1 and one line.
Ctrl-C exits with status 130 and SIGTERM (or SIGHUP) with 128 + its number (143), both
with one line, after the same clean-up: no partial report, no temporary folder (every
file is written atomically, the report folder in one rename). The errors live in
``_errors.py``, below the commands, so ``demo``/``bench`` never import this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._errors import CommandError, OneLineParser, UsageError, run_command

__all__ = ["main", "build_parser", "UsageError", "CommandError"]  # UsageError: kept importable from here


def build_parser() -> argparse.ArgumentParser:
    from .bench import DESCRIPTION as BENCH_DESCRIPTION
    from .bench import add_arguments as add_bench_arguments
    from .demo import DESCRIPTION as DEMO_DESCRIPTION
    from .demo import add_arguments as add_demo_arguments

    parser = OneLineParser(
        prog="attnzoo",
        description="attnzoo: the classic attention mechanisms, correct, fast and visible.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    demo = sub.add_parser(
        "demo",
        help="train every mechanism on real data and write an HTML report",
        description=DEMO_DESCRIPTION,
    )
    add_demo_arguments(demo)
    bench = sub.add_parser(
        "bench",
        help="compare attnzoo's speed and memory with PyTorch's, side by side",
        description=BENCH_DESCRIPTION,
    )
    add_bench_arguments(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``attnzoo ARGV``; return the exit status (argparse's ``SystemExit`` for --help
    and unparsable options propagates, as for any argparse program)."""
    return run_command(build_parser, argv, lambda args: f"attnzoo {args.command}")


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
