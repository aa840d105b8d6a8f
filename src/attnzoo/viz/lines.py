"""Lines with a shaded spread: a measured quantity against a setting (e.g. loss against the
evaluation context), one line per model, mean ± sd over seeds; a point that does not apply
is left out, not drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._figure import PathLike, _array, _new_figure, _save
from .results import _colors

__all__ = ["plot_lines_with_spread"]


def plot_lines_with_spread(series: Mapping[str, Sequence[Sequence[float | None]]], xs: Sequence[float],
                           path: PathLike, *, xlabel: str = "", ylabel: str = "", title: str | None = None,
                           colors: Mapping[str, Any] | None = None, vline: float | None = None,
                           log2_x: bool = False) -> Path:
    """One line per name of ``series``: ``name -> (means, sds)``, each a list aligned with
    ``xs``, the band mean ± sd shaded. A None mean (not applicable there) leaves a gap: that
    point is not drawn. ``vline`` draws a dashed vertical line (e.g. the training length);
    ``log2_x`` puts ``xs`` on a base-2 log axis labelled with the values themselves."""
    x = _array("xs", xs, ["(N,)"])
    if x.size == 0 or not np.all(np.isfinite(x)) or (log2_x and np.any(x <= 0)):
        raise ValueError(f"xs must be a non-empty list of finite{' positive' if log2_x else ''} numbers, got {xs!r}")
    if not isinstance(series, Mapping) or not series:
        raise ValueError("series must be a non-empty dict name -> (means, sds)")
    lines = {}
    for name, value in series.items():
        if not isinstance(value, Sequence) or len(value) != 2 or any(len(v) != x.size for v in value):
            raise ValueError(f"series[{name!r}] must be (means, sds), two lists of {x.size} values (None = not "
                             f"applicable), got {value!r}")
        given = [v is not None for v in value[0]]
        m, s = (np.array([np.nan if v is None else float(v) for v in vals]) for vals in value)
        if ([v is not None for v in value[1]] != given or not np.all(np.isfinite(m[given]))
                or not np.all(np.isfinite(s[given])) or np.any(s[given] < 0)):
            raise ValueError(f"series[{name!r}]: means and sds must be finite, sds >= 0, None at the same places, "
                             f"got {value!r}")
        lines[str(name)] = (m, s)
    fig = _new_figure(6.4, 4.0)
    ax = fig.subplots()
    palette = _colors(len(lines)) if colors is None else [colors.get(n) for n in series]
    for (name, (m, s)), color in zip(lines.items(), palette):
        ax.plot(x, m, label=name, color=color, linewidth=1.8, marker="o", markersize=4)
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.2, linewidth=0)
    if log2_x:
        ax.set_xscale("log", base=2)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:g}" for v in x], fontsize=8)
    if vline is not None:
        ax.axvline(vline, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path)
