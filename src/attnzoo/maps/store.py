"""Save and load recordings: one ``.npz`` file, arrays plus JSON metadata (numpy only).

Layout: ``map_0``, ``map_1``, ... hold the records' tensors in call order (bfloat16, which
numpy lacks, is stored as float32 and converted back on load); ``meta`` is a 0-d unicode
array holding JSON: ``{"format": "attnzoo.attention_maps", "version": 1, "names": [...],
"maps": [{"name", "kind", "module", "call", "dtype", "shape"}, ...]}``. Loading never unpickles.
A recording made on a GPU box can so be viewed anywhere (`attnzoo.viz.attention_view`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_path

__all__ = ["save_maps", "load_maps"]

FORMAT, VERSION = "attnzoo.attention_maps", 1


def save_maps(maps: list[Any], path: str | os.PathLike[str], *, names: list[str]) -> Path:
    """Write ``maps`` (a list of `AttentionMap`) and ``names`` to ``path`` atomically."""
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
    """Read a file written by `save_maps` -> (records as dicts with a ``tensor``, names)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError
            records = []
            for i, e in enumerate(meta["maps"]):
                t = torch.from_numpy(z[f"map_{i}"]).to(getattr(torch, e["dtype"]))
                records.append({**{k: e[k] for k in ("name", "kind", "module", "call")}, "tensor": t})
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, OSError, TypeError, AttributeError) as err:
        raise ValueError(f"path must be an attention recording written by AttentionRecorder.save "
                         f"({FORMAT} version {VERSION}), got {str(path)!r} ({type(err).__name__}: {err})") from None
    return records, list(meta["names"])
