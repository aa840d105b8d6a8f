"""Headless-safe figures of what attention mechanisms attend to.

Every function builds a standalone ``matplotlib.figure.Figure`` on an Agg canvas
(no pyplot, no global backend or rcParams changes, nothing registered globally,
so nothing leaks and no display is needed), writes a PNG atomically and returns
its ``Path``. Array arguments may be torch tensors, numpy arrays or nested lists.
matplotlib is imported lazily: ``import attnzoo`` works without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnzoo._checks import check_positive_int
from attnzoo._io import atomic_path
from attnzoo.maps.view import attention_view as attention_view  # interactive HTML (no matplotlib)

__all__ = ["plot_attention", "plot_channel_profile", "plot_spatial_overlay", "plot_training_curves",
           "plot_accuracy_bars", "plot_train_test_bars", "plot_sequence_weights", "model_color",
           "plot_lines_with_spread"]

DPI = 110
ATTN_CMAP = "viridis"
OVERLAY_CMAP = "magma"
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "": "∅"}  # make whitespace tokens readable
_MAX_TICKS = 40

PathLike = str | os.PathLike[str]


def _new_figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('attnzoo plotting needs matplotlib; install it with: pip install "attnzoo[demo]"') from exc
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: PathLike) -> Path:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    finally:
        fig.clear()
    return dest


def _array(name: str, x: object, shapes: Sequence[str]) -> np.ndarray:
    """Convert to a float64 numpy array whose rank matches one of ``shapes`` (e.g. "(L, S)")."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().to(torch.float64).numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from exc
    ranks = [len([d for d in s.strip("()").split(",") if d.strip()]) for s in shapes]
    if arr.ndim not in ranks:
        raise ValueError(f"{name} must have shape {' or '.join(shapes)}, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(arr.shape)}")
    return arr


def _labels(name: str, labels: Sequence[Any] | str | None, n: int, what: str) -> list[str] | None:
    if labels is None:
        return None
    out = [_VISIBLE.get(str(s), str(s)) for s in labels]  # a str gives one label per character
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries but {what} is {n}")
    return out


def _set_ticks(ax: Any, axis: str, labels: list[str] | None, n: int) -> None:
    step = max(1, math.ceil(n / _MAX_TICKS))
    idx = list(range(0, n, step))
    texts = [labels[i] for i in idx] if labels is not None else [str(i) for i in idx]
    if axis == "x":
        long = any(len(t) > 2 for t in texts)
        ax.set_xticks(idx)
        ax.set_xticklabels(texts, rotation=60 if long else 0, ha="right" if long else "center",
                           rotation_mode="anchor", fontsize=8)
    else:
        ax.set_yticks(idx)
        ax.set_yticklabels(texts, fontsize=8)
    ax.tick_params(length=2)


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


def plot_channel_profile(gates: Any, path: PathLike, *, labels: Sequence[Any] | None = None,
                         title: str | None = None, vmin: float | None = None, vmax: float | None = None) -> Path:
    """Mean gate per channel: (K, C) gives a class-by-channel heatmap, (C,) a bar chart.

    ``labels`` names the K profiles (rows); for a single (C,) profile it may hold
    one name, used as the y-axis label. ``vmin``/``vmax`` fix the heatmap's colour scale
    (e.g. 0 and 1 for sigmoid gates, so that gates between 0.995 and 1.0 look uniform
    instead of structured); by default it spans the data.
    """
    g = _array("gates", gates, ["(C,)", "(K, C)"])
    n_ch = g.shape[-1]
    if g.ndim == 1:
        names = _labels("labels", labels, 1, "1 for a single (C,) profile")
        fig = _new_figure(min(12.0, max(5.0, 0.14 * n_ch + 2.0)), 3.2)
        ax = fig.subplots()
        ax.bar(np.arange(n_ch), g, width=0.8, color="#3b6fb6")
        ax.set_xlim(-0.6, n_ch - 0.4)
        ax.set_ylabel(names[0] if names else "mean gate", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    else:
        n_cls = g.shape[0]
        names = _labels("labels", labels, n_cls, "the number of rows K in gates")
        fig = _new_figure(min(14.0, max(6.0, 0.13 * n_ch + 2.5)), min(10.0, max(2.6, 0.32 * n_cls + 1.4)))
        ax = fig.subplots()
        im = ax.imshow(g, cmap=ATTN_CMAP, aspect="auto", interpolation="nearest", vmin=vmin, vmax=vmax)
        _set_ticks(ax, "y", names, n_cls)
        ax.set_ylabel("class", fontsize=9)
        fig.colorbar(im, ax=ax, label="mean gate", pad=0.01)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(n_ch, 16), integer=True))
    ax.tick_params(labelsize=8)
    ax.set_xlabel("channel", fontsize=9)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path)


def _squeeze_channel(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
        x = x[:, 0]
    return x


def plot_spatial_overlay(images: Any, gates: Any, path: PathLike, *, boxes: Any = None,
                         titles: Sequence[str] | None = None, ncols: int = 4, vmin: float | None = None,
                         vmax: float | None = None, side_by_side: bool = False) -> Path:
    """Grid of grayscale images with their spatial gates overlaid (upsampled bilinearly).

    ``boxes`` (N, 4) are pixel boxes ``(top, left, bottom, right)`` with exclusive
    bottom/right, as in ``image[top:bottom, left:right]``. All gates share one colour
    scale so panels are comparable: ``vmin``/``vmax`` fix it (e.g. 0 and 1 for sigmoid
    gates); by default it spans the data. With ``side_by_side=True`` each image is drawn
    next to its gate map (the gate at its own resolution, not blended with the ink), the
    box drawn on both.
    """
    img = _squeeze_channel("images", _array("images", images, ["(N, H, W)", "(N, 1, H, W)"]))
    gate = _squeeze_channel("gates", _array("gates", gates, ["(N, h, w)", "(N, 1, h, w)"]))
    n, height, width = img.shape
    if gate.shape[0] != n:
        raise ValueError(f"gates must have N={n} maps to match images, got shape {tuple(gate.shape)}")
    box = None
    if boxes is not None:
        box = _array("boxes", boxes, ["(N, 4)"])
        if box.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got shape {tuple(box.shape)}")
    titles = _labels("titles", titles, n, "the number of images N")
    check_positive_int("ncols", ncols)
    up = torch.nn.functional.interpolate(torch.from_numpy(gate)[:, None], size=(height, width),
                                         mode="bilinear", align_corners=False)[:, 0].numpy()
    finite = up[np.isfinite(up)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    vmin = lo if vmin is None else float(vmin)
    vmax = hi if vmax is None else float(vmax)
    vmax = vmax if vmax > vmin else vmin + 1e-6
    if side_by_side:
        return _side_by_side(img, gate, box, titles, min(ncols, n), vmin, vmax, path)

    from matplotlib.cm import ScalarMappable
    from matplotlib.patches import Rectangle

    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    panel = 2.3 * min(1.5, max(0.75, max(height, width) / 64))
    fig = _new_figure(cols * panel * width / max(height, width) + 0.8, rows * (panel + 0.25))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(img[i], cmap="gray", interpolation="nearest")
        im = ax.imshow(up[i], cmap=OVERLAY_CMAP, vmin=vmin, vmax=vmax, alpha=0.5, interpolation="nearest")
        if box is not None:
            top, left, bottom, right = box[i]
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                   fill=False, edgecolor="#00e5ff", linewidth=1.5))
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    opaque = ScalarMappable(norm=im.norm, cmap=im.cmap)  # colorbar without the overlay's transparency
    fig.colorbar(opaque, ax=list(axes), shrink=0.8, label="gate", pad=0.02)
    return _save(fig, path)


def _side_by_side(img: np.ndarray, gate: np.ndarray, box: np.ndarray | None, titles: list[str] | None,
                  cols: int, vmin: float, vmax: float, path: PathLike) -> Path:
    """Pairs (image | gate map at its own resolution), ``cols`` pairs per row."""
    from matplotlib.patches import Rectangle

    n, height, width = img.shape
    rows = math.ceil(n / cols)
    fig = _new_figure(cols * 4.4 + 0.9, rows * 2.45)
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    im = None
    for i in range(rows * cols):
        a_img, a_gate = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        a_img.set_axis_off()
        a_gate.set_axis_off()
        if i >= n:
            continue
        for ax in (a_img, a_gate):  # a thin frame shows the canvas's edge on white
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
        a_img.imshow(img[i], cmap="gray_r", interpolation="nearest")
        gh, gw = gate[i].shape
        im = a_gate.imshow(gate[i], cmap=ATTN_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest",
                           extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        if box is not None:
            top, left, bottom, right = box[i]
            for ax, color in ((a_img, "#d62728"), (a_gate, "#ff4d4d")):
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                       fill=False, edgecolor=color, linewidth=1.5))
        if titles is not None:
            a_img.set_title(titles[i], fontsize=9)
        a_gate.set_title(f"gate ({gh}x{gw})", fontsize=9)
    fig.colorbar(im, ax=list(axes.ravel()), shrink=0.8, label="gate", pad=0.01)
    return _save(fig, path)


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


def plot_accuracy_bars(results: Mapping[str, Sequence[float]], path: PathLike, *, title: str | None = None,
                       ylabel: str = "test accuracy", colors: Mapping[str, Any] | None = None) -> Path:
    """Bar chart of ``name -> (mean, std)`` with error bars and the mean printed on each bar.

    ``colors`` maps names to matplotlib colours (default: one tab10 colour per bar)."""
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty dict name -> (mean, std)")
    pairs = []
    for name, value in results.items():
        arr = _array(f"results[{name!r}]", value, ["(2,)"])
        if arr.shape != (2,) or not np.all(np.isfinite(arr)) or arr[1] < 0:
            raise ValueError(f"results[{name!r}] must be a finite (mean, std) pair with std >= 0, got {value!r}")
        pairs.append(arr)
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
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty dict name -> (train, test_mean, test_std)")
    rows = []
    for name, value in results.items():
        arr = _array(f"results[{name!r}]", value, ["(3,)"])
        if arr.shape != (3,) or not np.all(np.isfinite(arr)) or arr[2] < 0:
            raise ValueError(f"results[{name!r}] must be a finite (train, test_mean, test_std) triple "
                             f"with test_std >= 0, got {value!r}")
        rows.append(arr)
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
