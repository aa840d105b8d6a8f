"""An interactive attention view: one self-contained HTML file (data and script inline).

`attention_view` writes a page where a reader picks a layer (a recorded module) and, when
it has several heads, a head or their mean, and clicks or hovers a query token to see what it
attends to: lines from the query column to the key column (opacity = weight, as bertviz's head
view), a heatmap of the shown window, the token's 10 most attended keys and a strip of its
weights over ALL keys. The heatmap has labelled axes (query tokens down, key tokens across), a
colour bar, and a colour scale to choose: fixed 0-1 (the default: comparable across rows, heads
and layers; near-uniform weights look pale) or per row (each row against its largest weight
over all keys). Labels are drawn whole up to 360 px, longer ones shortened with "…" (the whole
label shows on hover). Long sequences show a window of rows and a window of keys (default 64 each),
so the page draws at most window² cells and lines however long the sequence: it stays usable
at 4,096 tokens. No network access: no CDN, no external file, no library.

Weights are embedded as uint16 (``round(w · 65535)``, error <= 7.7e-6) in base64, per layer
``(H, R, S)``: H heads (1 when head-averaged), R embedded query rows, S keys. ``max_cells``
bounds H·R·S over all layers (2**24 by default: one 4,096 × 4,096 map, ~45 MB of HTML); for
more, embed fewer query ``rows=`` or record with ``average_heads=True``.

What counts as a layer: each recorded module (name). A module called several times with one
query row each time (cached decoding steps) becomes one map, its steps stacked as rows (keys
of a growing self-attention cache are padded with zeros on the right); other repeated calls
become one layer per call (``name #k``).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write_text

__all__ = ["attention_view", "view_layers"]

_SCRIPT = Path(__file__).with_name("view.js")


def _as_array(name: str, t: Any, heads_averaged: bool, batch: int) -> np.ndarray:
    """One record -> (H, L, S) float64 for sequence ``batch``."""
    if isinstance(t, Tensor):
        t = t.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(t, dtype=np.float64)
    batched = a.ndim == (3 if heads_averaged else 4)
    if a.ndim not in ((2, 3) if heads_averaged else (2, 3, 4)):
        want = "(B, L, S) or (L, S)" if heads_averaged else "(B, H, L, S), (H, L, S) or (L, S)"
        raise ValueError(f"records[{name!r}] must have shape {want}, got {a.shape}")
    if batched:
        if not -a.shape[0] <= batch < a.shape[0]:
            raise ValueError(f"batch must index the {a.shape[0]} sequences of records[{name!r}], got {batch}")
        a = a[batch]
    return a[None] if a.ndim == 2 else a  # (H, L, S)


def _stack_steps(steps: list[np.ndarray]) -> np.ndarray:
    """Decoding steps (H, 1, S_t) -> (H, T, max S_t), keys zero-padded on the right."""
    S = max(s.shape[-1] for s in steps)
    out = np.zeros((steps[0].shape[0], len(steps), S))
    for t, s in enumerate(steps):
        out[:, t, : s.shape[-1]] = s[:, 0]
    return out


def view_layers(records: Any, *, heads_averaged: bool = False, batch: int = 0,
                kinds: Sequence[str] = ("attention",)) -> list[tuple[str, np.ndarray]]:
    """The layers `attention_view` shows: ``[(label, weights (H, L, S)), ...]``.

    ``records``: an `AttentionRecorder` (its records of the given ``kinds``), a
    list of `AttentionMap`, a mapping ``{label: tensor or array}``, or one
    tensor/array.
    """
    if isinstance(records, (Tensor, np.ndarray)):
        items = [("attention", 0, records)]
    elif isinstance(records, Mapping):
        items = [(str(k), 0, v) for k, v in records.items()]
    else:
        maps = getattr(records, "maps", records)
        if not isinstance(maps, Sequence) or not all(hasattr(m, "tensor") for m in maps):
            raise TypeError("records must be an AttentionRecorder, a list of AttentionMap, a mapping "
                            f"of tensors or one tensor, got {type(records).__name__}")
        items = [(m.name or "(root)", m.call, m.tensor) for m in maps if m.kind in kinds]
    groups: dict[str, list[np.ndarray]] = {}
    for name, call, t in items:
        groups.setdefault(name, []).append(_as_array(f"{name} #{call}", t, heads_averaged, batch))
    layers = []
    for name, calls in groups.items():
        if len(calls) > 1 and all(c.shape[1] == 1 for c in calls):
            layers.append((name, _stack_steps(calls)))
        else:
            layers.extend((name if len(calls) == 1 else f"{name} #{k}", c) for k, c in enumerate(calls))
    if not layers:
        raise ValueError("records hold no attention map to show")
    return layers


def _labels(given: Sequence[Any] | None, n: int) -> list[str] | None:
    return None if given is None or len(given) != n else [str(x) for x in given]


def attention_view(
    records: Any,
    *,
    tokens: Sequence[Any] | None = None,
    query_tokens: Sequence[Any] | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str = "Attention",
    batch: int = 0,
    heads_averaged: bool = False,
    rows: slice | range | Sequence[int] | None = None,
    window: int = 64,
    max_cells: int = 1 << 24,
    kinds: Sequence[str] = ("attention",),
) -> Path | str:
    """Write the interactive view of ``records`` to ``path`` (atomically), or return the HTML.

    Args:
        records: what to show, see `view_layers` (e.g. a recorder after ``with``).
        tokens: labels of the keys (S of them); ``query_tokens`` those of the queries (default:
            ``tokens``). Each layer takes, for its L queries, ``query_tokens`` if there are L of
            them, else ``tokens`` if there are L, else positions 0, 1, ...; for its S keys,
            ``tokens``, else ``query_tokens`` (a decoder's self-attention), else positions.
        batch: which sequence of a batched recording to show.
        heads_averaged: the records are already averaged over heads: (B, L, S) or (L, S).
        rows: embed only these query rows (e.g. ``range(0, 4096, 8)``) to keep the file small.
        window: rows and keys drawn at once (the reader can move and resize the window).
        max_cells: refuse (``ValueError``) to embed more than this many weights in all.
        kinds: which records of a recorder to show (any kind whose maps are (B, H, L, S)).
    """
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 512:
        raise ValueError(f"window must be an int in [1, 512], got {window!r}")
    if isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 1:
        raise ValueError(f"max_cells must be a positive int, got {max_cells!r}")
    layers = view_layers(records, heads_averaged=heads_averaged, batch=batch, kinds=kinds)
    out, cells = [], 0
    for label, w in layers:
        H, L, S = w.shape
        keep = np.arange(L)[rows] if isinstance(rows, slice) else np.arange(L) if rows is None else np.asarray(rows)
        if keep.ndim != 1 or (keep.size and (keep.min() < 0 or keep.max() >= L)):
            raise ValueError(f"rows must select query rows of 0..{L - 1} (layer {label!r}), got {rows!r:.80}")
        cells += H * keep.size * S
        if cells > max_cells:
            raise ValueError(
                f"the view would embed more than max_cells={max_cells} weights in all (reached at layer "
                f"{label!r}: {H} heads x {keep.size} rows x {S} keys); pass fewer rows= (every k-th: "
                f"rows=range(0, {L}, k)), average the heads, fewer records, or a larger max_cells")
        q = _labels(query_tokens, L) or _labels(tokens, L)
        k = _labels(tokens, S) or _labels(query_tokens, S)
        quant = np.rint(np.clip(w[:, keep], 0.0, 1.0) * 65535).astype("<u2")  # (H, R, S)
        out.append({"label": label, "heads": H, "rows": int(keep.size), "cols": S,
                    "row_ids": keep.tolist(), "q": [q[i] for i in keep] if q else [str(i) for i in keep],
                    "k": k or [str(j) for j in range(S)],
                    "data": base64.b64encode(quant.tobytes()).decode("ascii")})
    page = _page({"title": title, "window": window, "layers": out})
    return page if path is None else atomic_write_text(path, page)


def _page(data: dict[str, Any]) -> str:
    blob = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")
    script = _SCRIPT.read_text(encoding="utf-8")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data["title"])}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:12px;color:#222}} .bar label{{margin-right:14px}}
#lines text{{font:12px monospace;cursor:pointer}} #lines text.sel{{font-weight:bold;fill:#c00}}
.row{{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}} #top{{font:12px monospace;margin:4px 0}}
canvas{{border:1px solid #ccc;image-rendering:pixelated}} .note{{color:#666;font-size:12px}}
</style></head><body>
<h3>{html.escape(data["title"])}</h3>
<div class="bar">
<label>layer <select id="layer"></select></label>
<label id="headbox">head <select id="head"></select></label>
<label>colour scale <select id="scale"><option value="fixed">fixed 0\u20131</option>
<option value="row">per row (row max)</option></select></label>
<label>rows from <input id="row0" type="number" min="0" value="0" style="width:6em"></label>
<label>keys from <input id="col0" type="number" min="0" value="0" style="width:6em"></label>
<label>window <input id="win" type="number" min="1" max="512" style="width:4em"></label>
</div>
<p class="note" id="info"></p>
<div class="row">
<svg id="lines"></svg>
<div><canvas id="heat"></canvas><p class="note">the window's weights: hover a cell for its value</p></div>
<div><p id="sel">Click or hover a query token (left column).</p><ol id="top"></ol>
<canvas id="strip" height="40"></canvas><p class="note">the selected query's weights over all keys</p></div>
</div>
<script id="az-data" type="application/json">{blob}</script>
<script>{script}</script>
</body></html>
"""
