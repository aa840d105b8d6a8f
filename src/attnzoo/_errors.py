"""How the commands (``attnzoo demo``, ``attnzoo bench``) fail and stop.

This module sits below ``cli``, ``demo/`` and ``bench/``: they all raise these errors and
``run_command`` (used by ``cli.main`` and ``python -m attnzoo.bench``) turns them into an
exit status and one line on stderr. Nothing here imports torch or another attnzoo module,
so the import graph points one way (commands -> here).

* ``CommandError``: the command cannot finish (exit status 1), e.g. a report that could
  not be put in place; ``UsageError``: a bad option value (exit status 2), found before
  any expensive work.
* ``Interrupted``: raised by ``signals_as_interrupts`` for SIGTERM (and SIGHUP), so a
  terminated run cleans up exactly like Ctrl-C (it subclasses ``KeyboardInterrupt``);
  exit status 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM).
* ``interrupts_deferred``: a block that must not be cut in half by Ctrl-C/SIGTERM (the
  final swap of a report folder, a clean-up); a signal that arrives is re-raised after it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

__all__ = ["CommandError", "UsageError", "Interrupted", "signals_as_interrupts", "interrupts_deferred",
           "OneLineParser", "run_command"]


class CommandError(Exception):
    """The command cannot finish; ``str(exc)`` is the one line shown (exit status 1)."""

    status = 1


class UsageError(CommandError):
    """A bad option value found after parsing (exit status 2, one line on stderr)."""

    status = 2


class Interrupted(KeyboardInterrupt):
    """A termination signal, handled like Ctrl-C; ``signum`` is the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminating_signals() -> list[int]:
    return [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


@contextlib.contextmanager
def _handlers(signals: list[int], handler: object, replace: object) -> Iterator[None]:
    """Inside the block, ``handler`` handles each of ``signals`` whose current handler
    passes ``replace``; the previous handlers come back afterwards (main thread only)."""
    saved: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            if replace(signal.getsignal(sig)):  # type: ignore[operator]
                saved[sig] = signal.signal(sig, handler)  # type: ignore[arg-type]
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def signals_as_interrupts() -> contextlib.AbstractContextManager[None]:
    """Inside the block, SIGTERM/SIGHUP raise ``Interrupted`` (only where they still have
    their default action, so ``nohup`` keeps working); the previous handlers come back after."""
    return _handlers(_terminating_signals(), _raise_interrupted, lambda h: h == signal.SIG_DFL)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM back until the block is done, then raise the interruption.

    Only signals whose handler is a Python function (Ctrl-C's default, or the handler of
    ``signals_as_interrupts``) are held; a no-op outside the main thread.
    """
    pending: list[int] = []
    with _handlers([signal.SIGINT, *_terminating_signals()], lambda signum, frame: pending.append(signum),
                   callable):
        yield
    if pending:
        raise KeyboardInterrupt if pending[0] == signal.SIGINT else Interrupted(pending[0])


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (exit status 2), no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_command(make_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None,
                name_of: Callable[[argparse.Namespace], str]) -> int:
    """Build the parser, parse ``argv`` and call ``args.run(args)``; return the exit status.

    ``CommandError``: its status and one line ``NAME: error: ...``; Ctrl-C/SIGTERM: 130/143
    and one line; no ``args.run`` (no command given): the help, status 2. The parser is built
    inside the signal handling, so Ctrl-C while torch imports is one line too. argparse's
    ``SystemExit`` (``--help``, unparsable options) propagates.
    """
    name = "attnzoo"
    try:
        with signals_as_interrupts():
            parser = make_parser()
            name = parser.prog
            args = parser.parse_args(argv)
            if getattr(args, "run", None) is None:
                parser.print_help()
                return 2
            name = name_of(args)
            return int(args.run(args) or 0)
    except CommandError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"terminated by {signal.Signals(signum).name}"
        print(f"{name}: {what}; nothing partial was written", file=sys.stderr)
        return 128 + signum
