"""The report folder: checked before any training, built in a hidden staging folder beside
it, and moved into place in one ``os.replace`` at the very end.

A crash or Ctrl-C therefore never leaves a half-written report: the staging folder (and
any parent folders this run created) are removed, and an earlier report at ``--out``
stays as it was. An existing ``--out`` is only replaced when it is empty or looks like
an attnzoo report (a ``results.json`` and an ``index.html``, no subfolders), so pointing
``--out`` at a folder of your own files is refused instead of deleting them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..cli import UsageError

_UMASK = os.umask(0o022)
os.umask(_UMASK)
REPORT_MARKERS = ("results.json", "index.html")


def _looks_like_report(folder: Path) -> bool:
    entries = list(folder.iterdir())
    if not entries:
        return True
    names = {p.name for p in entries}
    return all(m in names for m in REPORT_MARKERS) and not any(p.is_dir() for p in entries)


class Staging:
    """``Staging(out)`` checks ``out`` and creates the staging folder (``UsageError`` when
    it cannot be written). ``path`` is where to write; ``commit()`` publishes it;
    ``discard()`` removes everything this run created."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
        if not self.out.name:
            raise UsageError(f"--out {os.fspath(out)!r}: choose a folder below the file system root")
        where = f"--out {self.out}"
        if self.out.exists() or self.out.is_symlink():
            if not self.out.is_dir():
                raise UsageError(f"{where}: exists and is not a folder")
            try:
                report = _looks_like_report(self.out)
            except OSError as exc:
                raise UsageError(f"{where}: cannot be read ({exc.strerror})") from None
            if not report:
                raise UsageError(f"{where}: folder exists and is not an attnzoo report; "
                                 "choose a new or empty folder (it would be replaced)")
            if not os.access(self.out, os.W_OK | os.X_OK):
                raise UsageError(f"{where}: folder is not writable")
        parent = self.out.parent
        ancestor = parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise UsageError(f"{where}: {ancestor} is not a folder")
        self._created: list[Path] = []
        self._aside: Path | None = None
        missing = []
        p = parent
        while p != ancestor:
            missing.append(p)
            p = p.parent
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self._created.append(folder)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=parent))
            os.chmod(self.path, 0o777 & ~_UMASK)
        except OSError as exc:
            self._remove_created()
            raise UsageError(f"{where}: cannot write in {parent} ({exc.strerror})") from None

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        self._created = []

    def discard(self) -> None:
        """Remove the staging folder (and a set-aside earlier report once the new one is in
        place) and the parent folders this run created."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._aside is not None and self.out.exists():
            shutil.rmtree(self._aside, ignore_errors=True)
        self._remove_created()

    def commit(self) -> Path:
        """Move the finished report to ``out`` (replacing an earlier report there)."""
        if not (self.out.exists() or self.out.is_symlink()):
            os.replace(self.path, self.out)
            return self.out
        aside = self._aside = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".old",
                                                    dir=self.out.parent))
        try:
            os.replace(self.out, aside)  # onto an empty folder: allowed
        except BaseException:
            aside.rmdir()
            raise
        try:
            os.replace(self.path, self.out)
        except BaseException:
            os.replace(aside, self.out)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return self.out
