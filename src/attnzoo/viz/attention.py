"""Heatmaps of attention weights: per head and their mean, and per-step weights of sequences.

``plot_attention``: weights (L, S) or (H, L, S), rows = queries, columns = keys.
``plot_sequence_weights``: (N, T) weights of N padded sequences (e.g. temporal attention),
padding (steps at or after each length) drawn blank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_positive_int
from ._figure import ATTN_CMAP, PathLike, _array, _labels, _new_figure, _save, _set_ticks

__all__ = ["plot_attention", "plot_sequence_weights"]


def plot_attention(weights: Any, path: PathLike, *, query_labels: Sequence[Any] | str | None = None,
                   key_labels: Sequence[Any] | str | None = None, title: str | None = None,
                   head_titles: Sequence[str] | None = None, max_heads: int = 8) -> Path:
    """Heatmap of attention weights: (L, S) gives one map; (H, L, S) one per head plus their mean.

    Rows are queries (``query_labels``, length L), columns keys (``key_labels``,
    length S); a string counts as one label per character. At most ``max_heads``
    heads are drawn; the mean panel always averages all H.
    """
    w = _array("weights", weights, ["(L, S)", "(H, L, S)"])
    check_positive_int("max_heads", max_heads)
    w = w[None] if w.ndim == 2 else w
    n_heads, n_q, n_k = w.shape
    qlab = _labels("query_labels", query_labels, n_q, "the number of queries L in weights")
    klab = _labels("key_labels", key_labels, n_k, "the number of keys S in weights")
    head_titles = _labels("head_titles", head_titles, n_heads, "the number of heads H in weights")

    if n_heads == 1:
        panels = [(w[0], head_titles[0] if head_titles else None)]
    else:
        shown = min(n_heads, max_heads)
        panels = [(w[h], head_titles[h] if head_titles else f"head {h}") for h in range(shown)]
        panels.append((w.mean(axis=0), f"mean of {n_heads} heads"))
        if shown < n_heads:
            title = f"{title + '  ' if title else ''}(first {shown} of {n_heads} heads shown)"
    rows = math.ceil(len(panels) / 4)
    cols = math.ceil(len(panels) / rows)
    single = len(panels) == 1
    cell = min(0.34 if single else 0.25, max(0.08, (7.0 if single else 3.2) / max(n_q, n_k)))
    fig = _new_figure(cols * (n_k * cell + 0.6) + 1.4, rows * (n_q * cell + 0.9) + (0.4 if title else 0.1))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    finite = w[np.isfinite(w)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    vmax = vmax if vmax > vmin else vmin + 1.0
    for i, (ax, (data, sub)) in enumerate(zip(axes, panels)):
        im = ax.imshow(data, cmap=ATTN_CMAP, vmin=vmin, vmax=vmax, aspect="equal", interpolation="nearest")
        _set_ticks(ax, "x", klab, n_k)
        _set_ticks(ax, "y", qlab, n_q)
        if i + cols < len(panels):  # tick labels only on the outer edges of the grid
            ax.tick_params(labelbottom=False)
        if i % cols:
            ax.tick_params(labelleft=False)
        if sub:
            ax.set_title(sub, fontsize=10, fontweight="bold" if sub.startswith("mean of") else "normal")
        if i % cols == 0:
            ax.set_ylabel("query", fontsize=9)
        if i + cols >= len(panels):
            ax.set_xlabel("key", fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=list(axes[: len(panels)]), shrink=0.9 if rows > 1 else 1.0, label="weight",
                 fraction=0.05 if single else 0.03, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def plot_sequence_weights(weights: Any, lengths: Any, path: PathLike, *, row_labels: Sequence[str] | None = None,
                          title: str | None = None) -> Path:
    """Heatmap of per-step weights (N, T) of N sequences (one row each, e.g. temporal
    attention over the frames of utterances); steps at or after ``lengths[i]`` are padding
    and drawn blank. The colour scale runs from 0 to the largest weight shown."""
    w = _array("weights", weights, ["(N, T)"]).copy()
    n, t = w.shape
    lens = _array("lengths", lengths, ["(N,)"])
    if lens.shape != (n,) or np.any(lens < 1) or np.any(lens > t):
        raise ValueError(f"lengths must have shape ({n},) with values in 1..{t}, got {lens.tolist()!r}")
    labels = _labels("row_labels", row_labels, n, "the number of sequences N in weights")
    w[np.arange(t)[None, :] >= lens[:, None]] = np.nan
    fig = _new_figure(11.0, min(12.0, max(3.0, 0.2 * n + 1.4)))
    ax = fig.subplots()
    from matplotlib import colormaps

    cmap = colormaps[ATTN_CMAP].with_extremes(bad="white")
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=float(np.nanmax(w)), aspect="auto", interpolation="nearest")
    ax.set_yticks(np.arange(n))
    ax.set_yticklabels(labels if labels is not None else [str(i) for i in range(n)], fontsize=8)
    for i in range(1, n):  # a thin line between groups of equal labels (e.g. speakers)
        if labels is not None and labels[i] != labels[i - 1]:
            ax.axhline(i - 0.5, color="black", linewidth=0.6)
    ax.set_xticks(np.arange(0, t, 2))
    ax.set_xticklabels([str(i + 1) for i in range(0, t, 2)], fontsize=8)
    ax.set_xlabel("frame", fontsize=9)
    fig.colorbar(im, ax=ax, label="weight", pad=0.01)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path)
