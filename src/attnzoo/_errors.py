"""How the commands (``attnzoo demo``, ``attnzoo bench``) fail and stop.

This module sits below ``cli``, ``demo/`` and ``bench/``: they all raise these errors and
``cli.main`` turns them into an exit status and one line on stderr. Nothing here imports
torch or another attnzoo module, so the import graph points one way (commands -> here).

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

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["CommandError", "UsageError", "Interrupted", "signals_as_interrupts", "interrupts_deferred"]


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
def signals_as_interrupts() -> Iterator[None]:
    """Inside the block, SIGTERM/SIGHUP raise ``Interrupted`` (only where they still have
    their default action, so ``nohup`` keeps working); the previous handlers come back after."""
    saved: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        def handler(signum: int, frame: object) -> None:
            raise Interrupted(signum)
        for sig in _terminating_signals():
            if signal.getsignal(sig) == signal.SIG_DFL:
                saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM back until the block is done, then raise the interruption.

    Only signals whose handler is a Python function (Ctrl-C's default, or the handler of
    ``signals_as_interrupts``) are held; a no-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum: int, frame: object) -> None:
        pending.append(signum)
    saved: dict[int, object] = {}
    for sig in [signal.SIGINT, *_terminating_signals()]:
        if callable(signal.getsignal(sig)):
            saved[sig] = signal.signal(sig, note)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
    if pending:
        raise KeyboardInterrupt if pending[0] == signal.SIGINT else Interrupted(pending[0])
