"""Which files in a report folder attnzoo wrote: ``attnzoo-manifest.json``.

Every report holds ``attnzoo-manifest.json``, written last, listing every other file of
the report with its size and SHA-256:

    {"schema": "attnzoo-report-manifest/1", "complete": true,
     "files": {"index.html": {"bytes": 5120, "sha256": "9f2c..."}, ...},
     "run": {"pid": 4242, "token": "0123456789abcdef", "start": 123456}}

A folder is an earlier report (which a new run may replace) only when every entry in it
is the manifest or a regular file that the manifest lists with the same size and hash.
Anything else (a file of yours, a subfolder, a figure you edited) is foreign: the folder
is refused, and nothing in it is ever deleted. While a run builds its report in a staging
folder, the same file (``"complete": false``, plus the host name) marks the folder as that
run's, so a later run can recognise and remove it once the process is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from .._io import atomic_write_json

__all__ = ["MANIFEST", "SCHEMA", "sha256_file", "write", "read", "foreign_entry", "is_listed"]

MANIFEST = "attnzoo-manifest.json"
SCHEMA = "attnzoo-report-manifest/1"
_MAX_BYTES = 1 << 20  # a manifest lists a few dozen files; anything bigger is not ours


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)  # a symlink is never one of ours
    except OSError:
        return False


def write(folder: Path, run: dict[str, Any], *, complete: bool) -> dict[str, Any]:
    """Write ``folder/attnzoo-manifest.json`` (atomically) listing every other file in
    ``folder`` (all must be regular files: attnzoo writes no subfolders); return it."""
    files = {}
    if complete:
        for entry in sorted(os.listdir(folder)):
            if entry == MANIFEST:
                continue
            path = folder / entry
            if not _is_regular(path):
                raise OSError(f"{path} is not a regular file; a report holds files only")
            files[entry] = {"bytes": os.lstat(path).st_size, "sha256": sha256_file(path)}
    manifest = {"schema": SCHEMA, "complete": complete, "files": files, "run": run}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def read(folder: Path) -> dict[str, Any] | None:
    """The manifest in ``folder`` if there is a valid one (else None; never raises for
    a missing or malformed file)."""
    path = folder / MANIFEST
    try:
        if not _is_regular(path) or os.lstat(path).st_size > _MAX_BYTES:
            return None
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get("schema") == SCHEMA and isinstance(data.get("files"), dict)):
        return None
    for name, entry in data["files"].items():
        if (not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name or os.sep in name
                or not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int)
                or not isinstance(entry.get("sha256"), str)):
            return None
    return data


def is_listed(folder: Path, name: str, manifest: dict[str, Any]) -> bool:
    """True when ``folder/name`` is a regular file that ``manifest`` lists, unchanged."""
    entry = manifest["files"].get(name)
    path = folder / name
    if entry is None or not _is_regular(path):
        return False
    try:
        return os.lstat(path).st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
    except OSError:
        return False


def foreign_entry(folder: Path) -> tuple[str, str] | None:
    """``(name, why)`` for the first entry of ``folder`` that attnzoo did not write, or
    None when the folder is empty or an unchanged attnzoo report. Raises ``OSError`` when
    the folder cannot be listed."""
    names = sorted(os.listdir(folder))
    others = [n for n in names if n != MANIFEST]
    if not names:
        return None
    manifest = read(folder)
    if MANIFEST not in names:
        return others[0], f"was not written by attnzoo (there is no {MANIFEST})"
    if manifest is None or manifest.get("complete") is not True:
        return MANIFEST, "is not a complete attnzoo manifest"
    for name in others:
        if name not in manifest["files"]:
            return name, f"was not written by attnzoo (it is not in {MANIFEST})"
        if not is_listed(folder, name, manifest):
            return name, "was changed after attnzoo wrote it"
    return None
