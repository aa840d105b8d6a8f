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
run's and lists each file as soon as the run has written it (``"files"``), and each
temporary file the run created and has not yet renamed (``"temporary"``), so that a later
run can recognise the folder once the process is gone and remove exactly those files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from .._io import atomic_write_json

__all__ = ["MANIFEST", "SCHEMA", "sha256_file", "entry", "write", "read", "foreign_entry", "is_listed"]

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


def entry(path: Path) -> dict[str, Any]:
    """The manifest's record of the file at ``path``: its size and SHA-256."""
    return {"bytes": os.lstat(path).st_size, "sha256": sha256_file(path)}


def write(folder: Path, run: dict[str, Any], *, complete: bool, files: dict[str, Any] | None = None,
          temporary: list[str] | None = None) -> dict[str, Any]:
    """Write ``folder/attnzoo-manifest.json`` (atomically); return it. Complete: it lists
    every other file in ``folder`` (all must be regular files: attnzoo writes no
    subfolders). Not complete (a run still writing): the ``files`` and ``temporary``
    names given."""
    if not complete:
        manifest = {"schema": SCHEMA, "complete": False, "files": dict(files or {}), "run": run,
                    "temporary": sorted(temporary or [])}
        atomic_write_json(folder / MANIFEST, manifest)
        return manifest
    listed = {}
    for name in sorted(os.listdir(folder)):
        if name == MANIFEST:
            continue
        path = folder / name
        if not _is_regular(path):
            raise OSError(f"{path} is not a regular file; a report holds files only")
        listed[name] = entry(path)
    manifest = {"schema": SCHEMA, "complete": True, "files": listed, "run": run}
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
    for name, item in data["files"].items():
        if (not _plain_name(name) or not isinstance(item, dict) or not isinstance(item.get("bytes"), int)
                or not isinstance(item.get("sha256"), str)):
            return None
    temporary = data.get("temporary", [])
    if not (isinstance(temporary, list) and all(_plain_name(n) for n in temporary)):
        return None
    return data


def _plain_name(name: object) -> bool:
    """A file name directly in the folder (no path, not the manifest itself)."""
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST) and "/" not in name
            and os.sep not in name)


def is_listed(folder: Path, name: str, manifest: dict[str, Any]) -> bool:
    """True when ``folder/name`` is a regular file that ``manifest`` lists, unchanged."""
    item = manifest["files"].get(name)
    path = folder / name
    if item is None or not _is_regular(path):
        return False
    try:
        return os.lstat(path).st_size == item["bytes"] and sha256_file(path) == item["sha256"]
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
