"""Figures of training results: loss/accuracy curves per model, accuracy bars, train vs test bars.

One colour per model name (``model_color``) across all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._figure import PathLike, _array, _new_figure, _save

__all__ = ["model_color", "plot_training_curves", "plot_accuracy_bars", "plot_train_test_bars"]


#: One colour per model name, shared by every figure of the tour (curves and bars alike).
_MODEL_COLORS = {
    "baseline": "#7f7f7f", "resnet": "#7f7f7f", "last": "#7f7f7f", "transformer": "#1f77b4",
    "se": "#1f77b4", "se_blocks": "#1f77b4", "se_convs": "#9ecae1",
    "cbam": "#ff7f0e", "cbam_blocks": "#ff7f0e", "cbam_convs": "#fdbf6f",
    "mean": "#2ca02c", "attention": "#9467bd",
}


def model_color(name: str) -> Any:
    """The colour of model ``name`` in the tour's figures (a fixed table, else a tab10 colour
    chosen from the name, so the same name always gets the same colour)."""
    if name in _MODEL_COLORS:
        return _MODEL_COLORS[name]
    from matplotlib import colormaps

    return colormaps["tab10"](sum(map(ord, name)) % 10)


def plot_training_curves(histories: Mapping[str, Mapping[str, Sequence[float]]], path: PathLike, *,
                         title: str | None = None, colors: Mapping[str, Any] | None = None) -> Path:
    """Loss (and, where recorded, accuracy) per epoch, one line per model name.

    ``colors`` maps names to matplotlib colours (default: one tab10 colour per line)."""
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("histories must be a non-empty dict name -> {'loss': [...], 'accuracy': [...]}")
    series: dict[str, dict[str, np.ndarray]] = {}
    for name, hist in histories.items():
        if not isinstance(hist, Mapping) or "loss" not in hist:
            raise ValueError(f"histories[{name!r}] must be a dict with a 'loss' list")
        series[name] = {"loss": _array(f"histories[{name!r}]['loss']", hist["loss"], ["(T,)"])}
        if hist.get("accuracy") is not None:
            series[name]["accuracy"] = _array(f"histories[{name!r}]['accuracy']", hist["accuracy"], ["(T,)"])
    keys = ["loss"] + (["accuracy"] if any("accuracy" in s for s in series.values()) else [])
    losses = np.concatenate([s["loss"] for s in series.values()])
    losses = losses[np.isfinite(losses)]
    fig = _new_figure(5.0 * len(keys) + 0.5, 3.6)
    axes = fig.subplots(1, len(keys), squeeze=False).ravel()
    from matplotlib.ticker import MaxNLocator

    palette = _colors(len(series)) if colors is None else [colors.get(n) for n in series]
    for ax, key in zip(axes, keys):
        for (name, s), color in zip(series.items(), palette):
            if key in s:
                y = s[key]
                x = np.arange(1, len(y) + 1)
                ax.plot(x, y, label=str(name), color=color, linewidth=1.6, marker="o" if len(y) <= 30 else None,
                        markersize=3)
        if key == "loss" and losses.size and losses.min() > 0 and losses.max() / losses.min() > 20:
            ax.set_yscale("log")
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel(key, fontsize=9)
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _result_rows(results: Any, fields: str, what: str) -> list[np.ndarray]:
    """``results`` (a non-empty mapping name -> numbers ``fields``, the last a std >= 0) as arrays."""
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"results must be a non-empty dict name -> {fields}")
    n, rows = fields.count(",") + 1, []
    for name, value in results.items():
        arr = _array(f"results[{name!r}]", value, [f"({n},)"])
        if arr.shape != (n,) or not np.all(np.isfinite(arr)) or arr[-1] < 0:
            raise ValueError(f"results[{name!r}] must be a finite {fields} {what}, got {value!r}")
        rows.append(arr)
    return rows


def plot_accuracy_bars(results: Mapping[str, Sequence[float]], path: PathLike, *, title: str | None = None,
                       ylabel: str = "test accuracy", colors: Mapping[str, Any] | None = None) -> Path:
    """Bar chart of ``name -> (mean, std)`` with error bars and the mean printed on each bar.

    ``colors`` maps names to matplotlib colours (default: one tab10 colour per bar)."""
    pairs = _result_rows(results, "(mean, std)", "pair with std >= 0")
    names = [str(name) for name in results]
    m, s = np.stack(pairs).T
    long = any(len(n) > 10 for n in names)
    width = max(4.5, 0.75 * len(names) + 2.0, 0.1 * len(title or ""))  # room for the title
    fig = _new_figure(min(14.0, width), 3.8 + (0.6 if long else 0.0))
    ax = fig.subplots()
    x = np.arange(len(names))
    palette = _colors(len(names)) if colors is None else [colors.get(n) for n in results]
    ax.bar(x, m, yerr=s, capsize=4, color=palette, width=0.65, edgecolor="black", linewidth=0.5,
           error_kw={"elinewidth": 1.0})
    lo, hi = min(0.0, float((m - s).min())), max(0.0, float((m + s).max()))
    span = (hi - lo) or 1.0
    for xi, mi, si in zip(x, m, s):
        y = mi + si if mi >= 0 else mi - si
        ax.text(xi, y + (0.02 if mi >= 0 else -0.02) * span, f"{mi:.3f}", ha="center",
                va="bottom" if mi >= 0 else "top", fontsize=8)
    ax.set_ylim(lo - (0.1 * span if lo < 0 else 0.0), hi + 0.12 * span)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30 if long else 0, ha="right" if long else "center",
                       rotation_mode="anchor", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path)


def plot_train_test_bars(results: Mapping[str, Sequence[float]], path: PathLike, *, title: str | None = None,
                         colors: Mapping[str, Any] | None = None) -> Path:
    """Grouped bars of ``name -> (train accuracy, test mean, test std)``: a pale bar for train
    and a solid one for test per model, so the gap between them (overfitting) is visible."""
    rows = _result_rows(results, "(train, test_mean, test_std)", "triple with test_std >= 0")
    names = [str(n) for n in results]
    tr, te, sd = np.stack(rows).T
    palette = _colors(len(names)) if colors is None else [colors.get(n) for n in results]
    fig = _new_figure(min(14.0, max(6.0, 1.3 * len(names) + 2.0)), 4.0)
    ax = fig.subplots()
    x = np.arange(len(names))
    ax.bar(x - 0.19, tr, width=0.36, color=palette, alpha=0.35, edgecolor="black", linewidth=0.5, label="train")
    ax.bar(x + 0.19, te, yerr=sd, capsize=3, width=0.36, color=palette, edgecolor="black", linewidth=0.5,
           label="test", error_kw={"elinewidth": 1.0})
    for xi, a, b in zip(x, tr, te):
        ax.text(xi - 0.19, a + 0.01, f"{a:.3f}", ha="center", va="bottom", fontsize=8)
        ax.text(xi + 0.19, b + 0.01, f"{b:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0.0, 1.1)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=9)
    ax.set_ylabel("accuracy (pale: train, solid: test)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path)
