"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", 2020).

A layer's output at position i mixes its attention over the previous layer's positions
with its own input (the residual connection). Rollout models this per layer as:

```text
A_l   = mean over heads of the layer's attention weights         (*, L, L), rows sum to 1
Â_l   = (1 - r)·A_l + r·I        (r = residual, 0.5 in the paper)
Â_l   = Â_l / Â_l.sum(-1)        (rows renormalised: a fully masked row becomes I's row)
R     = Â_n · … · Â_2 · Â_1      (*, L, L)
```

so ``R[..., i, j]`` is how much input token j flows into position i after the whole stack;
every row of ``R`` sums to 1. Only self-attention layers make sense here (L = S, queries and
keys are the same positions), given first layer first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["attention_rollout"]


def attention_rollout(layers: Any, *, residual: float = 0.5, average_heads: bool = True) -> Tensor:
    """Rollout of self-attention ``layers`` (first layer first) -> ``(*, L, L)``, rows summing to 1.

    Args:
        layers: an `AttentionRecorder` after one forward pass (its ``"attention"`` records,
            in call order: e.g. ``attention_rollout(rec)`` for a BERT), or per layer a tensor
            ``(*, H, L, L)`` (or ``(*, L, L)`` with ``average_heads=False``) or an
            `AttentionMap` holding one, e.g. ``[m for m in rec.maps if m.name.endswith("attention.self")]``.
            All the same shape.
        residual: weight ``r`` of the identity (the residual path), in [0, 1]; 0.5 as the paper.
        average_heads: average dim -3 (the heads) first; False if the weights are already averaged
            (e.g. recorded with ``average_heads=True``).
    """
    if hasattr(layers, "maps") and hasattr(layers, "names"):  # a recorder
        layers = _one_pass(layers)
    if isinstance(residual, bool) or not isinstance(residual, (int, float)) or not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be a float in [0, 1], got {residual!r}")
    if isinstance(layers, Tensor) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise TypeError("layers must be an AttentionRecorder or a non-empty sequence of tensors or AttentionMaps, "
                        f"got {type(layers).__name__}")
    mats = [getattr(a, "tensor", a) for a in layers]
    need = 3 if average_heads else 2
    for i, a in enumerate(mats):
        if not isinstance(a, Tensor) or not a.is_floating_point():
            raise TypeError(f"layers[{i}] must be a floating-point tensor, got {type(a).__name__}")
        if a.dim() < need or a.size(-1) != a.size(-2) or a.shape != mats[0].shape:
            want = "(*, H, L, L)" if average_heads else "(*, L, L)"
            raise ValueError(f"layers[{i}] must have shape {want}, square and equal for every layer "
                             f"(layers[0] is {tuple(mats[0].shape)}), got {tuple(a.shape)}")
    L = mats[0].size(-1)
    eye = torch.eye(L, dtype=mats[0].dtype, device=mats[0].device)  # (L, L)
    rollout = None
    for a in mats:
        a = a.mean(dim=-3) if average_heads else a  # (*, L, L)
        a = (1.0 - residual) * a + residual * eye
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)  # rows sum to 1
        rollout = a if rollout is None else a @ rollout  # later layers on the left
    return rollout


def _one_pass(rec: Any) -> list[Any]:
    """A recorder's attention records, checked to be one call per module (one forward pass)."""
    maps = [m for m in rec.maps if m.kind == "attention"]
    if not maps:
        raise ValueError("layers (a recorder) holds no attention record; record a forward pass inside its with block")
    calls: dict[str, int] = {}
    for m in maps:
        calls[m.name] = calls.get(m.name, 0) + 1
    repeated = [name for name, n in calls.items() if n > 1]
    if repeated:
        raise ValueError(f"layers (a recorder) must hold one forward pass, one record per module; "
                         f"{repeated[0]!r} was recorded {calls[repeated[0]]} times: pass the records of one "
                         "pass, e.g. [m for m in rec.maps if m.call == 0]")
    return maps
