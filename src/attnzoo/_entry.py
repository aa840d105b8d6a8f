"""Ctrl-C while the ``attnzoo`` command is still starting: one line, never a traceback.

``attnzoo`` (the console script) and ``python -m attnzoo[.bench]`` import this package,
and with it torch, before ``cli.main`` runs and can catch anything; an interrupt in
those seconds would print torch's import traceback. The package's ``__init__`` imports
this module first: when (and only when) this process IS the attnzoo command, it installs
a ``sys.excepthook`` that shows an uncaught ``KeyboardInterrupt`` as one line (Python
then still exits with the Ctrl-C status, 130). ``import attnzoo`` in any other program
changes nothing. Imports only ``os`` and ``sys``.
"""

from __future__ import annotations

import os
import sys

#: Console-script names (pip writes ``attnzoo``; ``attnzoo-script.py``/``.exe`` on Windows).
_SCRIPTS = ("attnzoo", "attnzoo-script.py", "attnzoo-script.pyw", "attnzoo.exe")


def _module_given_to_dash_m() -> str | None:
    """The module of ``python -m MODULE``, while Python is still importing its packages."""
    if sys.argv[:1] != ["-m"]:  # runpy sets argv[0] to the file once the module is found
        return None
    argv = list(getattr(sys, "orig_argv", []))
    for prev, arg in zip(argv, argv[1:]):
        if arg.startswith("-m") and len(arg) > 2 and not arg.startswith("--"):
            return arg[2:]
        if prev.startswith("-") and not prev.startswith("--") and prev.endswith("m"):
            return arg
    return None


def is_the_command() -> bool:
    """True in the ``attnzoo`` console script and in ``python -m attnzoo[...]``."""
    module = _module_given_to_dash_m()
    if module is not None:
        return module == "attnzoo" or module.startswith("attnzoo.")
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    return bool(script) and getattr(main, "__spec__", None) is None and os.path.basename(script) in _SCRIPTS


def _install() -> None:
    previous = sys.excepthook

    def one_line(exc_type, exc, tb):  # type: ignore[no-untyped-def]
        if issubclass(exc_type, KeyboardInterrupt):
            try:
                print("attnzoo: interrupted", file=sys.stderr, flush=True)
            except BaseException:  # noqa: BLE001 - stderr closed or a second Ctrl-C: stay quiet
                pass
            return
        previous(exc_type, exc, tb)
    sys.excepthook = one_line


if is_the_command():
    _install()
