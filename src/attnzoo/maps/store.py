"""Save and load recordings: one ``.npz`` file, arrays plus JSON metadata (numpy only).

Layout: ``map_0``, ``map_1``, ... hold the records' tensors in call order (bfloat16, which
numpy lacks, is stored as float32 and converted back on load); ``meta`` is a 0-d unicode
array holding JSON: ``{"format": "attnzoo.attention_maps", "version": 1, "names": [...],
"maps": [{"name", "kind", "module", "call", "dtype", "shape"}, ...]}``. Loading never unpickles.
A recording made on a GPU box can so be viewed anywhere (``attnzoo.viz.attention_view``).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_path

__all__ = ["save_maps", "load_maps"]

FORMAT, VERSION = "attnzoo.attention_maps", 1


def save_maps(maps: list[Any], path: str | os.PathLike[str], *, names: list[str]) -> Path:
    """Write ``maps`` (a list of ``AttentionMap``) and ``names`` to ``path`` atomically."""
    arrays, entries = {}, []
    for i, m in enumerate(maps):
        t = m.tensor.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        arrays[f"map_{i}"] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        entries.append({"name": m.name, "kind": m.kind, "module": m.module, "call": m.call,
                        "dtype": dtype, "shape": list(t.shape)})
    meta = {"format": FORMAT, "version": VERSION, "names": list(names), "maps": entries}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy adds no suffix
        np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    return Path(path)


def load_maps(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a file written by ``save_maps`` -> (records as dicts with a ``tensor``, names).

    ``ValueError`` naming the file, and the field where one is wrong, for anything else:
    not an npz, another format or version, or metadata that does not describe its arrays.
    """
    def bad(why: str) -> ValueError:
        return _NotARecording(f"path must be an attention recording written by AttentionRecorder.save "
                          f"({FORMAT} version {VERSION}), got {str(path)!r}: {why}")

    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise bad("no 'meta' entry")
            try:
                meta = json.loads(str(z["meta"][()]))
            except (ValueError, TypeError) as err:
                raise bad(f"'meta' is not JSON ({err})") from None
            _check_meta(meta, bad)
            records = []
            for i, e in enumerate(meta["maps"]):
                key = f"map_{i}"
                if key not in z.files:
                    raise bad(f"maps[{i}] has no array {key!r}")
                arr = z[key]
                if list(arr.shape) != e["shape"]:
                    raise bad(f"maps[{i}].shape is {e['shape']}, its array {key!r} has shape {list(arr.shape)}")
                t = torch.from_numpy(arr).to(getattr(torch, e["dtype"]))
                records.append({**{k: e[k] for k in ("name", "kind", "module", "call")}, "tensor": t})
    except (FileNotFoundError, _NotARecording):
        raise
    except (ValueError, KeyError, OSError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as err:
        raise bad(f"{type(err).__name__}: {err}") from None
    return records, list(meta["names"])


class _NotARecording(ValueError):
    """The ``ValueError`` of ``load_maps`` (told apart from numpy's own while reading)."""


def _check_meta(meta: Any, bad: Callable[[str], ValueError]) -> None:
    """Raise ``bad(why)`` at the first field of the metadata that is not as ``save_maps`` writes it."""
    if not isinstance(meta, dict):
        raise bad(f"meta must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise bad(f"meta.format and meta.version must be {FORMAT!r} and {VERSION}, "
                  f"got {meta.get('format')!r} and {meta.get('version')!r}")
    for field in ("names", "maps"):
        if not isinstance(meta.get(field), list):
            raise bad(f"meta.{field} must be a list, got {meta.get(field, '(missing)')!r:.60}")
    for i, n in enumerate(meta["names"]):
        if not isinstance(n, str):
            raise bad(f"meta.names[{i}] must be a str, got {n!r:.60}")
    for i, e in enumerate(meta["maps"]):
        if not isinstance(e, dict):
            raise bad(f"meta.maps[{i}] must be a JSON object, got {e!r:.60}")
        for field, ok, want in _ENTRY:
            if not ok(e.get(field)):
                raise bad(f"meta.maps[{i}].{field} must be {want}, got {e.get(field, '(missing)')!r:.60}")


def _dtype_name(x: Any) -> bool:
    return isinstance(x, str) and isinstance(getattr(torch, x, None), torch.dtype)


def _int(x: Any, low: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


_ENTRY: list[tuple[str, Callable[[Any], bool], str]] = [
    ("name", lambda x: isinstance(x, str), "a str"),
    ("kind", lambda x: isinstance(x, str), "a str"),
    ("module", lambda x: isinstance(x, str), "a str"),
    ("call", _int, "an int >= 0"),
    ("dtype", _dtype_name, "a torch dtype name"),
    ("shape", lambda x: isinstance(x, list) and all(_int(d) for d in x), "a list of ints >= 0"),
]
