"""The report folder (``--out``): checked before any training, built in a hidden staging
folder beside it, and moved into place in one rename at the very end.

Ownership comes from the manifest (``manifest.py``): ``--out`` may be absent, empty, or an
earlier attnzoo report whose every file is listed, unchanged, in its manifest; anything
else is refused before training (exit 2, one line naming a foreign file). At the end the
folder is checked again: a file that appeared during the run is never deleted; the swap is
refused and the finished report is left, renamed to a visible ``NAME.attnzoo-new``, beside
it (exit 1, one line saying where). Replacing an earlier report deletes only the files its
manifest lists and that still match their hash.

* A symlinked ``--out`` (or a symlink among its parents) is followed: the report replaces
  the folder it points to, under the same rules; a dangling symlink is refused.
* The staging folder ``.NAME.attnzoo-PID-TOKEN.partial`` holds a manifest with the pid,
  the process's start time, the host and the random token, and lists every file the run
  has written there (recorded as each is written, through ``_io.watch_writes``). A run
  killed with SIGKILL leaves it behind; the next run with the same ``--out`` removes the
  files it lists, unchanged, once that process is gone (only in folders whose manifest
  matches their name), and the folder once nothing else is in it: a folder that holds
  anything else is left as it is, with one line saying so. ``.NAME.attnzoo-PID-TOKEN.old``
  (an earlier report set aside during the swap) is put back or cleared by the same rules.
* A crash, Ctrl-C or SIGTERM removes the staging folder and any parent folders this run
  created; the earlier report stays as it was. The swap itself is not interruptible.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

from .._errors import CommandError, UsageError, interrupts_deferred
from .._io import watch_writes
from . import manifest
from .manifest import MANIFEST

__all__ = ["Staging", "process_gone", "remove_stale"]


def _say(line: str) -> None:
    print(f"attnzoo demo: {line}", file=sys.stderr, flush=True)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of ``pid`` from /proc (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def process_gone(pid: int, start: int | None) -> bool:
    """True only when process ``pid`` (started at ``start``, if known) surely no longer
    runs: no such pid, a zombie, or a different process that reuses the pid. When in doubt
    (another user's process, no /proc, not POSIX): False."""
    if os.name != "posix" or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, ticks = stat
    return state in ("Z", "X") or (start is not None and ticks != start)


def _run_info() -> dict[str, Any]:
    stat = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "token": secrets.token_hex(8), "start": stat[1] if stat else None,
            "host": socket.gethostname()}


def _clear_report(folder: Path, listed: dict[str, Any]) -> list[str]:
    """Delete the files of ``folder`` that manifest ``listed`` lists, unchanged (and the
    temporary files it lists), then the manifest and the folder once nothing else is
    left; return the names left (not ours)."""
    left = [n for n in sorted(os.listdir(folder)) if n != MANIFEST]
    temporary = set(listed.get("temporary", []))
    for name in list(left):
        if manifest.is_listed(folder, name, listed) or (name in temporary and os.path.isfile(folder / name)
                                                        and not os.path.islink(folder / name)):
            os.unlink(folder / name)
            left.remove(name)
    if not left:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / MANIFEST)
        os.rmdir(folder)
    return left


def remove_stale(out: Path) -> None:
    """Remove the staging folders that killed runs left beside ``out`` (see the module doc)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.attnzoo-(\d+)-([0-9a-f]{{16}})\.(partial|old)")
    try:
        names = sorted(os.listdir(out.parent))
    except OSError:
        return
    for entry in names:
        m = pattern.fullmatch(entry)
        folder = out.parent / entry
        if m is None or folder.is_symlink() or not folder.is_dir():
            continue
        pid, token, kind = int(m[1]), m[2], m[3]
        data = manifest.read(folder)
        if data is None:
            continue
        run = data.get("run")
        try:
            if kind == "partial":
                if not (isinstance(run, dict) and run.get("pid") == pid and run.get("token") == token
                        and run.get("host") in (None, socket.gethostname())
                        and process_gone(pid, run.get("start"))):
                    continue
                left = _clear_report(folder, data)
                if left:
                    _say(f"left {folder} (by an earlier run, process {pid}, that was killed) in place: "
                         f"{left[0]} in it was not written by attnzoo; remove the folder yourself")
                else:
                    _say(f"removed {folder}, left by an earlier run (process {pid}) that was killed")
            elif data.get("complete") is True and process_gone(pid, None):
                if not os.path.lexists(out):
                    os.rename(folder, out)
                    _say(f"put back the earlier report {out}, set aside by a run (process {pid}) that was killed")
                elif not _clear_report(folder, data):
                    _say(f"removed {folder}, an old report set aside by a run (process {pid}) that was killed")
        except OSError:
            continue  # best effort: a folder that cannot be cleared stays as it is


class Staging:
    """``Staging(out)`` checks ``out`` and creates the staging folder (``UsageError`` when
    ``out`` holds anything attnzoo did not write or cannot be written). ``path`` is where
    to write; ``commit()`` publishes it; ``discard()`` removes everything this run created."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        given = os.path.expanduser(os.fspath(out))
        self.shown = Path(os.path.abspath(given))  # the path as the user wrote it, for messages
        self.where = where = f"--out {self.shown}"
        if not self.shown.name:
            raise UsageError(f"--out {os.fspath(out)!r}: choose a folder below the file system root")
        if os.path.islink(self.shown) and not os.path.exists(self.shown):
            raise UsageError(f"{where}: is a symbolic link to {os.readlink(self.shown)}, which does not exist")
        self.out = Path(os.path.realpath(given))  # symlinks followed: we replace what they point to
        if not self.out.name:
            raise UsageError(f"{where}: points to the file system root; choose a folder below it")
        self._kept = False
        self._created: list[Path] = []
        self._files: dict[str, Any] = {}  # what this run wrote in the staging folder
        self._temporary: set[str] = set()
        self._stop_watching = lambda: None
        remove_stale(self.out)
        if self.out.exists():
            if not self.out.is_dir():
                raise UsageError(f"{where}: exists and is not a folder")
            foreign = self._foreign(UsageError)
            if foreign is not None:
                raise UsageError(f"{where}: not an attnzoo report: {foreign[0]} {foreign[1]}; "
                                 "choose a new or empty folder (attnzoo replaces only its own reports)")
            if not os.access(self.out, os.W_OK | os.X_OK):
                raise UsageError(f"{where}: folder is not writable")
        parent = self.out.parent
        ancestor = parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise UsageError(f"{where}: {ancestor} is not a folder")
        missing = []
        p = parent
        while p != ancestor:
            missing.append(p)
            p = p.parent
        self.run = _run_info()
        self.path = parent / f".{self.out.name}.attnzoo-{self.run['pid']}-{self.run['token']}.partial"
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self._created.append(folder)
            self.path.mkdir()
            manifest.write(self.path, self.run, complete=False)  # marks the folder as this run's
            self._stop_watching = watch_writes(self._record)
        except OSError as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_created()
            failed_in = Path(exc.filename).parent if exc.filename else parent
            why = exc.strerror or str(exc)
            if exc.errno == errno.ENOENT and failed_in.is_dir():  # e.g. /proc: the folder exists, takes nothing
                why += ", although it exists: the file system there takes no new folders"
            raise UsageError(f"{where}: cannot be created: cannot write in {failed_in} ({why})") from None

    def _foreign(self, error: type[CommandError]) -> tuple[str, str] | None:
        try:
            return manifest.foreign_entry(self.out)
        except OSError as exc:
            raise error(f"{self.where}: cannot be read ({exc.strerror or exc})") from None

    def _record(self, event: str, path: Path) -> None:
        """List a file this run wrote (or a temporary file it created) in the staging
        manifest, so that a later run removes it, and only it, if this one is killed."""
        if path.parent != self.path or path.name == MANIFEST or path.name.startswith(f".{MANIFEST}."):
            return  # the manifest and its own temporary file are not listed in it
        if event == "temporary":
            self._temporary.add(path.name)
        else:
            self._temporary = {n for n in self._temporary if os.path.lexists(self.path / n)}
            self._files[path.name] = manifest.entry(path)
        manifest.write(self.path, self.run, complete=False, files=self._files, temporary=sorted(self._temporary))

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        self._created = []

    def discard(self) -> None:
        """Remove the staging folder and the parent folders this run created (not after
        ``commit`` kept the report beside a changed ``out``)."""
        self._stop_watching()
        if self._kept:
            return
        with interrupts_deferred():
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_created()

    def commit(self) -> Path:
        """Write the manifest and move the finished report to ``out``, replacing an earlier
        report there; ``CommandError`` (report kept beside it) if ``out`` changed meanwhile.
        Returns ``out`` as the user gave it."""
        self._stop_watching()
        with interrupts_deferred():
            manifest.write(self.path, {k: v for k, v in self.run.items() if k != "host"}, complete=True)
            self._swap()
        return self.shown

    def _swap(self) -> None:
        out = self.out
        if not os.path.lexists(out):
            try:
                os.rename(self.path, out)  # fails if a file or a non-empty folder appeared there
            except OSError as exc:
                self._keep(f"something appeared there during the run ({exc.strerror})")
            return
        if out.is_symlink() or not out.is_dir():
            self._keep("it is no longer a folder")
        foreign = self._foreign(CommandError)
        if foreign is not None:
            self._keep(f"{foreign[0]} appeared during the run and {foreign[1]}")
        old = manifest.read(out)  # None when the folder is empty
        aside = out.parent / f".{out.name}.attnzoo-{self.run['pid']}-{self.run['token']}.old"
        try:
            aside.mkdir()
            os.rename(out, aside)  # onto the empty folder: allowed
        except OSError as exc:
            with contextlib.suppress(OSError):
                aside.rmdir()
            self._keep(f"it cannot be moved ({exc.strerror})")
        try:
            os.rename(self.path, out)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rename(aside, out)
            self._keep(f"it cannot be replaced ({exc.strerror})")
        try:
            left = _clear_report(aside, old or {"files": {}})
        except OSError as exc:
            _say(f"the earlier report set aside in {aside} could not be removed ({exc.strerror})")
            return
        if left:
            self._give_back(aside, left)

    def _give_back(self, aside: Path, left: list[str]) -> None:
        """Files that appeared in ``out`` between the last check and the swap went with
        the old report: move them into the new ``out``, or keep them in a visible folder."""
        clash = []
        for name in left:
            if os.path.lexists(self.out / name):
                clash.append(name)
            else:
                os.rename(aside / name, self.out / name)
        if not clash:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside / MANIFEST)
            aside.rmdir()
            _say(f"{left[0]} appeared in {self.shown} while the report was put in place; it is still there")
            return
        kept = self._visible(".attnzoo-old")
        os.rename(aside, kept)
        _say(f"{clash[0]} appeared in {self.shown} while the report was put in place; it was kept in {kept}")

    def _visible(self, suffix: str) -> Path:
        """Reserve a new, visible folder name beside ``out`` (``NAME{suffix}``, ``-2``, ...)."""
        for i in range(1, 1000):
            candidate = self.out.parent / f"{self.out.name}{suffix}{'' if i == 1 else f'-{i}'}"
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
        raise OSError(f"no free name like {self.out.name}{suffix} in {self.out.parent}")

    def _keep(self, why: str) -> NoReturn:
        """Refuse the swap: leave the finished report in a visible folder and say where."""
        try:
            kept = self._visible(".attnzoo-new")
            os.rename(self.path, kept)  # onto the empty folder just reserved
        except OSError:
            kept = self.path
        self.path, self._kept = kept, True
        raise CommandError(f"{self.where}: {why}; nothing in it was changed and the new report "
                           f"was left in {kept}")
