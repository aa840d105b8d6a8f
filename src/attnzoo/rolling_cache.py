"""A rolling key/value cache: constant memory for sliding-window (and sink) decoding.

`RollingKVCache` holds `sinks + window` slots of keys and values, `(B, Hkv, slots, hs)`,
allocated once (static shapes, as in gpt-fast). The token at absolute position `p` goes
to slot `p` while `p < sinks` (those entries are never overwritten), and after that to
slot `sinks + (p - sinks) % window`, overwriting the oldest non-sink entry. The buffer
`positions` `(slots,)` (long) records the absolute position held by each slot, `-1` for
a slot not yet written; decoding scores every slot and masks by these positions, so the
order of the slots never matters (softmax over keys is order-free).

A model with `sliding_window(left) | sinks(n)` needs `window >= left + 1` (the query's
own key counts) and `sinks >= n`; `MultiHeadAttention.decode_step` raises if a slot
about to be overwritten is still visible to the query.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_positive_int

__all__ = ["RollingKVCache"]


class RollingKVCache(nn.Module):
    """Preallocated keys and values of one layer for the last `window` tokens and the first `sinks`.

    Buffers (not in `state_dict`, they follow `.to(device)`): `k_cache`, `v_cache`
    `(B, Hkv, sinks + window, hs)` and `positions` `(sinks + window,)` long, `-1` = empty.
    """

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        window: int,
        head_dim: int,
        *,
        sinks: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        sizes = {"batch_size": batch_size, "num_kv_heads": num_kv_heads, "window": window, "head_dim": head_dim}
        B, Hkv, W, hs = (check_positive_int(name, n) for name, n in sizes.items())
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
        self.window, self.sinks = W, sinks
        shape = (B, Hkv, sinks + W, hs)
        self.register_buffer("k_cache", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("positions", torch.full((sinks + W,), -1, dtype=torch.long, device=device),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"window={self.window}, sinks={self.sinks}"

    def slot(self, position: int) -> int:
        """The slot that holds absolute position `position`."""
        if position < self.sinks:
            return position
        return self.sinks + (position - self.sinks) % self.window

    def evicts(self, position: int) -> int | None:
        """The absolute position that writing `position` overwrites (None: a fresh slot)."""
        if position < self.sinks + self.window:
            return None
        return position - self.window

    def update(self, position: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write one token's `k`, `v` `(B, Hkv, 1, hs)` at absolute `position` (an int >= 0).

        Returns the whole cache: keys, values `(B, Hkv, sinks + window, hs)` and the
        positions `(sinks + window,)` of their slots (`-1` = empty). Only the bounds are
        checked here (this runs every step); shapes are checked by `copy_`.
        """
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"position must be an int >= 0, got {position!r}")
        if k.size(2) != 1:
            raise ValueError(f"RollingKVCache takes one token per step, got k of shape {tuple(k.shape)}")
        s = self.slot(position)
        self.k_cache[:, :, s:s + 1].copy_(k)  # (B, Hkv, 1, hs)
        self.v_cache[:, :, s:s + 1].copy_(v)
        self.positions[s] = position
        return self.k_cache, self.v_cache, self.positions

    def reset(self) -> None:
        """Forget everything written; the cache can be reused for a new sequence."""
        self.k_cache.zero_()
        self.v_cache.zero_()
        self.positions.fill_(-1)
