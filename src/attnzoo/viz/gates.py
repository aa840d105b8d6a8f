"""Figures of CNN gates: channel profiles (C,) or (K, C), and spatial gates (N, h, w) over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int
from ._figure import ATTN_CMAP, OVERLAY_CMAP, PathLike, _array, _labels, _new_figure, _save, _set_ticks

__all__ = ["plot_channel_profile", "plot_spatial_overlay"]


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
