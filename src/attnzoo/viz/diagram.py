"""Data-flow diagrams of attention mechanisms, drawn from the module's own trace.

`mechanism_diagram(module, example_input)` traces the module with `torch.fx`, propagates
the example's shapes (`attnzoo.viz.dataflow.mechanism_graph`: what is folded into edges
is listed there) and draws the result: one box per operation, one arrow per tensor,
labelled with its shape, `B` standing for the batch. Nothing is drawn that is not in the
trace, so the picture changes when the code does.

Layout: a layered DAG drawn top to bottom. A node's rank is the length of the longest
path from an input to it; nodes of one rank form a row, ordered by the mean position of
their predecessors (a few sweeps down and up, ties in trace order), so parallel branches
(CBAM's average and max pooling, attention's query, key and value) sit side by side.
An edge that skips rows bends through invisible waypoints, one per row, so it never
crosses a box. A tensor with one shape read by several operations is labelled once,
under the box that makes it.

Files: `path` ending in `.svg` or `.png` is written atomically; SVG output is
deterministic (no date, fixed `svg.hashsalt`, text kept as text, so files stay small
and searchable), so the same graph gives the same bytes with the same matplotlib and fonts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .._io import atomic_path
from ._figure import DPI, PathLike, _new_figure
from .dataflow import DataflowGraph, mechanism_graph

__all__ = ["mechanism_diagram", "dataflow_figure", "SVG_HASHSALT"]

SVG_HASHSALT = "attnzoo-diagram"
_ROW = 1.05  # inches between ranks
_GAP = 0.3  # inches between boxes of one row
_FONT, _SMALL = 8.5, 7.0
_COLOURS = {"input": "#dfe9f7", "output": "#dff2e1", "layer": "#fdf1d8", "gate": "#f3e3f5", "op": "#f2f2f2"}
_GATES = ("sigmoid", "softmax", "relu", "tanh", "gelu", "silu", "hardsigmoid", "relu6", "masked", "scaledsigmoid",
          "scaled dot-product", "softmax attention")


def _kind(label: str, is_input: bool) -> str:
    low = label.lower()
    if is_input:
        return "input"
    if low.startswith("output"):
        return "output"
    if low.startswith(_GATES):
        return "gate"
    return "layer" if label[:1].isupper() or low.startswith("linear") else "op"


def _box(label: str) -> tuple[float, float]:
    lines = label.split("\n")
    return max(0.9, 0.068 * max(len(s) for s in lines) + 0.3), 0.2 + 0.17 * len(lines)


def _layout(g: DataflowGraph) -> tuple[dict[str, tuple[float, float]], list[list[str]], dict[str, list[str]]]:
    """Positions (x, y) in inches of nodes and waypoints, rows, and each edge's path."""
    order = {nid: i for i, (nid, _) in enumerate(g.nodes)}
    preds: dict[str, list[str]] = {nid: [] for nid in order}
    for s, d, _ in g.edges:
        preds[d].append(s)
    rank: dict[str, int] = {}
    for nid in order:  # trace order is a topological order
        rank[nid] = 1 + max((rank[p] for p in preds[nid]), default=-1)
    rows: list[list[str]] = [[] for _ in range(max(rank.values()) + 1)]
    for nid in order:
        rows[rank[nid]].append(nid)
    paths: dict[str, list[str]] = {}
    up: dict[str, list[str]] = {nid: list(preds[nid]) for nid in order}
    for i, (s, d, _) in enumerate(g.edges):  # waypoints for edges that skip rows
        path = [s]
        for r in range(rank[s] + 1, rank[d]):
            w = f"w{i}_{r}"
            rows[r].append(w)
            up[w] = [path[-1]]
            order[w] = order[s]
            path.append(w)
        path.append(d)
        up[d] = [path[-2] if x == s and len(path) > 2 else x for x in up[d]]
        paths[f"{s}>{d}>{i}"] = path
    down: dict[str, list[str]] = {n: [] for n in order}
    for n, ps in up.items():
        for p in ps:
            down[p].append(n)
    for sweep in range(6):  # barycentre ordering, down then up
        seq = range(1, len(rows)) if sweep % 2 == 0 else range(len(rows) - 2, -1, -1)
        for r in seq:
            ref = up if sweep % 2 == 0 else down
            pos = {n: i for i, n in enumerate(rows[r - 1 if sweep % 2 == 0 else r + 1])}
            here = {n: i for i, n in enumerate(rows[r])}
            bary = {}
            for n in rows[r]:
                ns = [pos[m] for m in ref[n] if m in pos]
                bary[n] = (sum(ns) / len(ns) if ns else float(here[n]), order[n])
            rows[r].sort(key=bary.__getitem__)
    label = dict(g.nodes)
    width = {n: _box(label[n])[0] if n in label else 0.1 for n in order}
    xy: dict[str, tuple[float, float]] = {}
    for r, row in enumerate(rows):
        want = []
        for n in row:
            ps = [xy[p][0] for p in up[n] if p in xy]
            want.append(sum(ps) / len(ps) if ps and r else 0.0)
        xs: list[float] = []
        for i, n in enumerate(row):  # keep the order, at least _GAP apart, as near the wish as possible
            lo = xs[-1] + (width[row[i - 1]] + width[n]) / 2 + _GAP if i else -1e9
            xs.append(max(want[i], lo))
        shift = sum(w - x for w, x in zip(want, xs)) / len(xs)
        if r == 0:
            shift = -(xs[0] + xs[-1]) / 2
        for n, x in zip(row, xs):
            xy[n] = (x + shift, -r * _ROW)
    return xy, rows, paths


def dataflow_figure(graph: DataflowGraph, path: PathLike | None = None) -> Any:
    """Draw a `DataflowGraph` (see the module docstring for the layout); write `path`
    (`.svg` or `.png`) atomically when given, and return the matplotlib `Figure`."""
    if not isinstance(graph, DataflowGraph):
        raise TypeError(f"graph must be a DataflowGraph, got {type(graph).__name__}")
    if not graph.nodes:
        raise ValueError(f"graph {graph.title!r} has no operations to draw")
    suffix = None if path is None else Path(path).suffix.lower()
    if suffix not in (None, ".svg", ".png"):
        raise ValueError(f"path must end in .svg or .png, got {str(path)!r}")
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    xy, rows, paths = _layout(graph)
    label = dict(graph.nodes)
    inputs = {n for n in label if not any(d == n for _, d, _ in graph.edges)}
    xs = [x for x, _ in xy.values()]
    half = max(_box(label[n])[0] for n in label) / 2 + 1.0  # room for shape labels
    x0, x1 = min(xs) - half, max(xs) + half
    y0, y1 = -(len(rows) - 1) * _ROW - 0.5, 0.5
    fig = _new_figure(x1 - x0, y1 - y0 + 0.35)
    fig.set_layout_engine("none")
    ax = fig.add_axes((0, 0, 1, (y1 - y0) / (y1 - y0 + 0.35)))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_axis_off()
    fig.text(0.5, 1 - 0.2 / (y1 - y0 + 0.35), graph.title, ha="center", va="center", fontsize=11, weight="bold")
    for n, text in graph.nodes:
        (x, y), (w, h) = xy[n], _box(text)
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    fc=_COLOURS[_kind(text, n in inputs)], ec="#4a4f5c", lw=0.8, zorder=3))
        ax.text(x, y, text, ha="center", va="center", fontsize=_FONT, zorder=4, linespacing=1.1)
    shapes: dict[str, set[str]] = {}
    for s, _, shape in graph.edges:
        shapes.setdefault(s, set()).add(shape)
    labelled: set[str] = set()
    for i, (s, d, shape) in enumerate(graph.edges):
        pts = [xy[n] for n in paths[f"{s}>{d}>{i}"]]
        hs, hd = _box(label[s])[1] / 2, _box(label[d])[1] / 2
        pts[0] = (pts[0][0], pts[0][1] - hs)
        pts[-1] = (pts[-1][0], pts[-1][1] + hd)
        for a, b in zip(pts[:-2], pts[1:-1]):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="#4a4f5c", lw=0.9, zorder=1, solid_capstyle="round")
        ax.add_patch(FancyArrowPatch(pts[-2], pts[-1], arrowstyle="-|>", mutation_scale=9, color="#4a4f5c",
                                     lw=0.9, zorder=2, shrinkA=0, shrinkB=0))
        if len(shapes[s]) == 1:  # one tensor read by each consumer: label it once, under its maker
            if s in labelled:
                continue
            labelled.add(s)
            lx, ly = pts[0][0] + 0.06, pts[0][1] - 0.2
        else:
            (ax_, ay), (bx, by) = pts[0], pts[1]
            lx, ly = (ax_ + bx) / 2 + 0.06, (ay + by) / 2
        ax.text(lx, ly, shape, ha="left", va="center", fontsize=_SMALL, color="#1f3d7a", zorder=5,
                bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "none", "alpha": 0.85})
    if path is not None:
        _write(fig, Path(path), graph)
    return fig


def _write(fig: Any, dest: Path, graph: DataflowGraph) -> None:
    import matplotlib

    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(graph.to_json().encode()).hexdigest()
    fmt = dest.suffix.lower().lstrip(".")
    meta = {"Date": None, "Description": f"attnzoo data-flow diagram; graph sha256 {digest}"} if fmt == "svg" else {}
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASHSALT, "svg.fonttype": "none"}), atomic_path(dest) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI, facecolor="white", metadata=meta)


def mechanism_diagram(module: nn.Module, example_input: Tensor | tuple[Tensor, ...], path: PathLike | None = None,
                      *, title: str | None = None) -> Any:
    """Draw `module`'s data flow on `example_input` and return the matplotlib `Figure`.

    `example_input` is a tensor, or a tuple of `forward`'s leading tensor arguments (e.g.
    `(query, key, value)`); later arguments keep their defaults. Boxes are the traced
    operations (`Linear 64→4`, `mean dim=(-2, -1)`, `Sigmoid`, `mul`, ...), arrows the
    tensors with their shapes (`(B, 64, 1, 1)`). Layout-only steps (`view`, `reshape`,
    `flatten`, tuple and attribute reads, size arithmetic, parameters, inactive dropout)
    are folded into the arrows: see `attnzoo.viz.dataflow`. `path` (`.svg` or `.png`) is
    written atomically when given; `title` defaults to the module's class name.

    Raises `TypeError` for a non-module or non-tensor example, `ValueError` naming the
    module's class when `torch.fx` cannot trace it.
    """
    return dataflow_figure(mechanism_graph(module, example_input, title=title), path)
