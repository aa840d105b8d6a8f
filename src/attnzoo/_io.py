"""Atomic file writing.

Every file attnzoo writes (reports, figures, results, checkpoints) goes through
these helpers: data is written to a temporary file in the destination's directory,
flushed and fsynced, then ``os.replace``d onto the destination. A reader therefore
sees either the old file or the complete new one, never a partial write, and an
interrupted run (error or Ctrl-C) leaves no stray temporary file behind.

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
           "watch_writes"]

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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds.

    The caller writes the complete file to the yielded path (by any means, e.g. a
    library's ``savefig``). On normal exit the file is fsynced and atomically
    replaces ``path``; if the block raises (``KeyboardInterrupt`` included) or
    leaves no file at the yielded path, the temporary file is removed and
    ``path`` is left untouched.
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
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory)
    _tell("written", dest)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``; return ``path`` as a ``Path``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    with atomic_path(path) as tmp:
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
