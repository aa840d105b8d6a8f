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
import signal
import sys
from collections.abc import Sequence

from ._errors import CommandError, UsageError, signals_as_interrupts

__all__ = ["main", "build_parser", "UsageError", "CommandError"]  # UsageError: kept importable from here


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .bench import add_arguments as add_bench_arguments
    from .demo import add_arguments as add_demo_arguments

    parser = _Parser(
        prog="attnzoo",
        description="attnzoo: the classic attention mechanisms, correct, fast and visible.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="train every mechanism on real data and write an HTML report",
        description="Train small models with and without attention on real data (handwritten "
        "digits, date strings), measure what attention buys, and write DIR/index.html and "
        "DIR/results.json.",
    )
    add_demo_arguments(demo)
    bench = sub.add_parser(
        "bench",
        help="compare attnzoo's speed and memory with PyTorch's, side by side",
        description="Time attnzoo against the PyTorch equivalents in one run and print ratios.",
    )
    add_bench_arguments(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``attnzoo ARGV``; return the exit status (argparse's ``SystemExit`` for --help
    and unparsable options propagates, as for any argparse program)."""
    name = "attnzoo"
    try:
        with signals_as_interrupts():
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return 2
            name = f"attnzoo {args.command}"
            return int(args.run(args) or 0)
    except CommandError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"terminated by {signal.Signals(signum).name}"
        print(f"{name}: {what}; nothing partial was written", file=sys.stderr)
        return 128 + signum


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
