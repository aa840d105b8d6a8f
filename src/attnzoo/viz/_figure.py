"""What every figure of `attnzoo.viz` shares: a standalone Agg figure, the atomic PNG save,
argument conversion (tensor, array or list -> float64 array of a checked rank), labels, ticks.

matplotlib is imported only when a figure is made, so importing this needs numpy and torch only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_path

__all__ = ["DPI", "ATTN_CMAP", "OVERLAY_CMAP", "PathLike"]

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
