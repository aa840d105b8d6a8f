"""Atomic file writing.

Every file attnzoo writes (reports, figures, results, checkpoints) goes through
these helpers: data is written to a temporary file in the destination's directory,
flushed and fsynced, then ``os.replace``d onto the destination. A reader therefore
sees either the old file or the complete new one, never a partial write, and an
interrupted run (error or Ctrl-C) leaves no stray temporary file behind. With
``replace=False`` the complete temporary file is hard-linked to the destination instead,
which fails (``FileExistsError``) if anything is there, however late it appeared.
``write_json_owned`` uses that to write a command's results file without ever replacing a
file that is not the command's own.

``watch_writes(callback)`` lets a command learn of every file written this way while it
runs: ``callback("temporary", tmp)`` once the temporary file exists and
``callback("written", dest)`` once ``dest`` is in place (the tour records its files in its
manifest as they are written, so that only they are ever removed).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "read_json",
           "watch_writes", "write_json_owned"]

_WATCHERS: list[Callable[[str, Path], None]] = []


def watch_writes(callback: Callable[[str, Path], None]) -> Callable[[], None]:
    """Call ``callback(event, path)`` for every file these helpers write from now on
    (``event`` is ``"temporary"`` or ``"written"``); return the function that stops it."""
    _WATCHERS.append(callback)

    def stop() -> None:
        with contextlib.suppress(ValueError):
            _WATCHERS.remove(callback)
    return stop


def _tell(event: str, path: Path) -> None:
    for callback in list(_WATCHERS):
        callback(event, path)

# mkstemp creates files readable only by the owner; give new files the usual
# umask-derived mode instead (read once, at import, as os.umask has no getter).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())


def _link_new(tmp: Path, dest: Path) -> None:
    """Put the complete file ``tmp`` at ``dest`` only if nothing is there (``FileExistsError``
    otherwise): a hard link, atomic; where the file system has none, an exclusive create."""
    try:
        os.link(tmp, dest)
        return
    except FileExistsError:
        raise
    except OSError:
        pass  # no hard links here (some network or FAT file systems)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
    with os.fdopen(fd, "wb") as out, open(tmp, "rb") as src:
        out.write(src.read())
        out.flush()
        os.fsync(out.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds.

    The caller writes the complete file to the yielded path (by any means, e.g. a
    library's ``savefig``). On normal exit the file is fsynced and atomically
    replaces ``path``; if the block raises (``KeyboardInterrupt`` included) or
    leaves no file at the yielded path, the temporary file is removed and
    ``path`` is left untouched. ``replace=False``: ``FileExistsError`` (nothing
    changed) if ``path`` exists when the file is put in place.
    """
    dest = Path(path)
    directory = dest.parent if str(dest.parent) else Path(".")
    # Keep the real suffix last so tools that sniff the extension still work.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _tell("temporary", tmp)
        try:
            mode = dest.stat().st_mode & 0o7777  # keep an existing file's permissions
        except OSError:
            mode = 0o666 & ~_UMASK
        with contextlib.suppress(OSError):
            os.chmod(tmp, mode)
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {dest}")
        _fsync_file(tmp)
        if replace:
            os.replace(tmp, dest)
        else:
            _link_new(tmp, dest)
            tmp.unlink()
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory)
    _tell("written", dest)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, replace: bool = True) -> Path:
    """Atomically write ``data`` to ``path``; return ``path`` as a ``Path``
    (``replace=False``: ``FileExistsError`` if ``path`` exists, see ``atomic_path``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    with atomic_path(path, replace=replace) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` (encoded, default UTF-8, ``\\n`` newlines) to ``path``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = True) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN/Infinity rejected with ``ValueError``).

    The object is serialized before anything touches the disk, so an
    unserializable object leaves ``path`` and its directory untouched.
    """
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON in ``path``, or None where it cannot be read or is not JSON (an ownership
    check before replacing a file: a file that does not parse is someone else's)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write_json_owned(path: str | os.PathLike[str], obj: Any, ours: Callable[[Path], bool]) -> Path:
    """Atomically write ``obj`` as JSON to ``path`` (symlinks followed) unless a file that
    ``ours`` rejects is there: a new ``path`` is created without replacing anything that
    appeared meanwhile, an existing one is replaced only if ``ours(path)`` holds. Otherwise
    the JSON goes to a new name beside it, ``NAME.attnzoo-new`` (``-2``, ``-3``, ...).
    Returns the path written; the caller says so when it is not ``path``."""
    data = (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n").encode()
    target = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    if os.path.lexists(target):
        if os.path.isfile(target) and not os.path.islink(target) and ours(target):
            return atomic_write_bytes(target, data)
    else:
        with contextlib.suppress(FileExistsError):
            return atomic_write_bytes(target, data, replace=False)
    for i in range(1, 1000):
        beside = target.with_name(f"{target.name}.attnzoo-new{'' if i == 1 else f'-{i}'}")
        with contextlib.suppress(FileExistsError):
            return atomic_write_bytes(beside, data, replace=False)
    raise FileExistsError(f"no free name like {target.name}.attnzoo-new in {target.parent}")
