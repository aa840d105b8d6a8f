"""The ``attnzoo`` command: ``attnzoo demo`` (the tour) and ``attnzoo bench`` (speed).

Bad usage exits with status 2 and one line on stderr, never a traceback; Ctrl-C exits
with status 130 and leaves no partial report (every file is written atomically).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class UsageError(Exception):
    """A bad option value found after parsing (exit status 2, one line on stderr)."""


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"attnzoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnzoo {args.command}: interrupted; nothing partial was written", file=sys.stderr)
        return 130


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":  # pragma: no cover
    from attnzoo.cli import main as _main  # the imported module, whose UsageError the commands raise

    sys.exit(_main())
