"""Structured attention masks that never materialise an L×S mask.

A mask object says which keys each query may see (True = may attend, the polarity of
`torch.nn.functional.scaled_dot_product_attention`'s bool `attn_mask`). It can

* evaluate any block of (query rows × key columns) to a small bool tile: the object is
  itself a `mask_mod` in the spirit of FlexAttention, `mask(b, h, q_idx, kv_idx)`, called
  with broadcastable long index tensors `b (B, 1, 1, 1)`, `h (1, H, 1, 1)`,
  `q_idx (1, 1, lq, 1)`, `kv_idx (1, 1, 1, lk)` and returning a bool tensor that
  broadcasts to `(B, H, lq, lk)`;
* classify a whole grid of blocks cheaply as `EMPTY` (no query sees any key), `FULL`
  (every query sees every key) or `PARTIAL`: `mask.block_map(L, S, block_q, block_kv)`
  returns an int8 `(ceil(L / block_q), ceil(S / block_kv))` tensor of those values,
  computed analytically for the named builders.

Builders: `causal()`, `sliding_window(left, right=0)`, `sinks(n)`, `documents(doc_ids)`,
`mask_mod(fn)`; combine them with `&` and `|`, e.g. `sliding_window(255) | sinks(4)`.
Query `i` and key `j` are absolute positions (0-based, top-left aligned like
`is_causal`). Pass a mask to `attnzoo.functional.scaled_dot_product_attention(...,
mask=...)` or to `attnzoo.masks.block_attention`, which visit only the non-empty blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["EMPTY", "PARTIAL", "FULL", "StructuredMask", "block_attention", "causal", "documents", "mask_mod",
           "sinks", "sliding_window"]

#: Block classes. Ordered so that `&` is the element-wise min and `|` the max.
EMPTY, PARTIAL, FULL = 0, 1, 2

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class StructuredMask:
    """Base of every mask object: evaluate tiles (`__call__`), classify blocks (`block_map`)."""

    #: True when the mask is a function of kv_idx - q_idx alone (same for every b and h)
    relative = False

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        raise NotImplementedError

    def block_map(self, L: int, S: int, block_q: int, block_kv: int, batch: int = 1, heads: int = 1) -> Tensor:
        """int8 (ceil(L / block_q), ceil(S / block_kv)): `EMPTY`, `PARTIAL` or `FULL` per block,
        over every batch element and head."""
        lo_q, hi_q = _edges(L, block_q)
        lo_k, hi_k = _edges(S, block_kv)
        classes = self._ranges(lo_q[:, None], hi_q[:, None], lo_k[None, :], hi_k[None, :])
        return classes.to(torch.int8).expand(lo_q.numel(), lo_k.numel())  # (nq, nk)

    def _ranges(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
        """Classes of the blocks rows [q0, q1) × keys [k0, k1) (broadcast long tensors)."""
        raise NotImplementedError

    def _check(self, L: int, S: int, batch: int) -> None:
        """Raise if the mask cannot describe this call (e.g. doc_ids of another length)."""

    def __and__(self, other: StructuredMask) -> StructuredMask:
        return _Combined(self, _as_mask("other", other), both=True)

    def __or__(self, other: StructuredMask) -> StructuredMask:
        return _Combined(self, _as_mask("other", other), both=False)


class _Band(StructuredMask):
    """Query i sees keys i - left .. i + right (None: unbounded on that side)."""

    relative = True

    def __init__(self, left: int | None, right: int | None) -> None:
        self.left, self.right = left, right

    def __repr__(self) -> str:
        return "causal()" if self.left is None and self.right == 0 else f"sliding_window({self.left}, {self.right})"

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        d = kv_idx - q_idx
        if self.left is None:
            return d <= self.right if self.right is not None else d == d
        return (d >= -self.left) if self.right is None else (d >= -self.left) & (d <= self.right)

    def _ranges(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
        big = 1 << 62
        left = big if self.left is None else self.left
        right = big if self.right is None else self.right
        # rows q0..q1-1, keys k0..k1-1: empty when every key is left of every row's window
        # (or right of it), full when every key is inside every row's window
        empty = (k1 - 1 < q0 - left) | (k0 > q1 - 1 + right)
        full = (k0 >= q1 - 1 - left) & (k1 - 1 <= q0 + right)
        return _classes(empty, full)


class _Sinks(StructuredMask):
    """The first n keys, visible to every query."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"sinks({self.n})"

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx < self.n) & (q_idx >= 0)

    def _ranges(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
        return _classes(k0 >= self.n, k1 <= self.n)


class _Documents(StructuredMask):
    """A query sees only the keys of its own document: doc_ids[b, i] == doc_ids[b, j]."""

    def __init__(self, doc_ids: Tensor) -> None:
        self.doc_ids = doc_ids

    def __repr__(self) -> str:
        return f"documents(<{tuple(self.doc_ids.shape)}>)"

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        ids = self.doc_ids
        b = b.clamp(max=ids.size(0) - 1)  # one row of ids serves every batch element
        return ids[b, q_idx] == ids[b, kv_idx]

    def _check(self, L: int, S: int, batch: int) -> None:
        n, length = self.doc_ids.shape
        if L != length or S != length or n not in (1, batch):
            raise ValueError(
                f"doc_ids must have shape (B or 1, L) with L = query length = key length, got "
                f"{tuple(self.doc_ids.shape)} for B={batch}, L={L}, S={S}"
            )

    def block_map(self, L: int, S: int, block_q: int, block_kv: int, batch: int = 1, heads: int = 1) -> Tensor:
        self._check(L, S, batch)
        q_lo, q_hi = _block_extrema(self.doc_ids, block_q)  # (n, nq) smallest, largest id per block
        k_lo, k_hi = _block_extrema(self.doc_ids, block_kv)  # (n, nk)
        q_lo, q_hi, k_lo, k_hi = q_lo[:, :, None], q_hi[:, :, None], k_lo[:, None, :], k_hi[:, None, :]
        empty = (q_hi < k_lo) | (k_hi < q_lo)  # (n, nq, nk): the id ranges do not meet
        full = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo)  # one document on both sides
        return _classes(empty.all(dim=0), full.all(dim=0)).to(torch.int8)


class _MaskMod(StructuredMask):
    """A user function `fn(b, h, q_idx, kv_idx) -> bool tensor`, optionally with a block hint."""

    def __init__(self, fn: MaskFn, classify: Callable[..., Tensor] | None) -> None:
        self.fn, self.classify = fn, classify

    def __repr__(self) -> str:
        return f"mask_mod({getattr(self.fn, '__name__', self.fn)!r})"

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        out = self.fn(b, h, q_idx, kv_idx)
        if not isinstance(out, Tensor) or out.dtype != torch.bool:
            what = f"dtype {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
            raise TypeError(f"mask_mod must return a bool tensor (True = may attend), got {what}")
        shape = torch.broadcast_shapes(b.shape, h.shape, q_idx.shape, kv_idx.shape)  # (B, H, lq, lk)
        if out.dim() > len(shape) or any(a not in (1, n) for a, n in zip(out.shape[::-1], shape[::-1])):
            raise ValueError(f"mask_mod must return a bool tile broadcasting to (B, H, lq, lk) = {tuple(shape)}, "
                             f"got {tuple(out.shape)}")
        return out

    def block_map(self, L: int, S: int, block_q: int, block_kv: int, batch: int = 1, heads: int = 1) -> Tensor:
        if self.classify is not None:
            return super().block_map(L, S, block_q, block_kv, batch, heads)
        # no hint: evaluate the mask a band of query rows at a time (O(L·S) time, O(band·S) memory)
        nq, nk = -(-L // block_q), -(-S // block_kv)
        b = torch.arange(batch).view(batch, 1, 1, 1)  # (B, 1, 1, 1)
        h = torch.arange(heads).view(1, heads, 1, 1)  # (1, H, 1, 1)
        kv = torch.arange(S).view(1, 1, 1, S)  # (1, 1, 1, S)
        pad = nk * block_kv - S
        rows = []
        for r0 in range(0, L, block_q):
            q = torch.arange(r0, min(L, r0 + block_q)).view(1, 1, -1, 1)  # (1, 1, lq, 1)
            tile = self(b, h, q, kv).expand(batch, heads, q.size(-2), S)  # (B, H, lq, S)
            seen = torch.nn.functional.pad(tile.any(dim=(0, 1, 2)), (0, pad))  # (nk·block_kv,)
            alls = torch.nn.functional.pad(tile.all(dim=(0, 1, 2)), (0, pad), value=True)
            rows.append(_classes(~seen.view(nk, block_kv).any(-1), alls.view(nk, block_kv).all(-1)))
        return torch.stack(rows).to(torch.int8) if rows else torch.zeros(nq, nk, dtype=torch.int8)

    def _ranges(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
        assert self.classify is not None
        out = self.classify(q0, q1, k0, k1)
        shape = torch.broadcast_shapes(q0.shape, k0.shape)
        if not isinstance(out, Tensor) or out.shape != shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"classify must return a {shape} tensor of EMPTY/PARTIAL/FULL, got {got}")
        return out.long()


class _Combined(StructuredMask):
    """`a & b` (both allow) or `a | b` (either allows)."""

    def __init__(self, a: StructuredMask, b: StructuredMask, both: bool) -> None:
        self.a, self.b, self.both = a, b, both
        self.relative = a.relative and b.relative

    def __repr__(self) -> str:
        return f"({self.a!r} {'&' if self.both else '|'} {self.b!r})"

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        x, y = self.a(b, h, q_idx, kv_idx), self.b(b, h, q_idx, kv_idx)
        return x & y if self.both else x | y

    def _check(self, L: int, S: int, batch: int) -> None:
        self.a._check(L, S, batch)
        self.b._check(L, S, batch)

    def block_map(self, L: int, S: int, block_q: int, block_kv: int, batch: int = 1, heads: int = 1) -> Tensor:
        x = self.a.block_map(L, S, block_q, block_kv, batch, heads)
        y = self.b.block_map(L, S, block_q, block_kv, batch, heads)
        return torch.minimum(x, y) if self.both else torch.maximum(x, y)


class _All(StructuredMask):
    """Every query sees every key (the mask of a call given only a score bias)."""

    relative = True

    def __repr__(self) -> str:
        return "all()"

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return torch.ones((), dtype=torch.bool, device=q_idx.device)

    def _ranges(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
        return torch.full(torch.broadcast_shapes(q0.shape, k0.shape), FULL)


# ------------------------------------------------------------------------------ builders
def causal() -> StructuredMask:
    """Query i sees keys 0..i (top-left aligned, as `is_causal=True`)."""
    return _Band(None, 0)


def sliding_window(left: int, right: int = 0) -> StructuredMask:
    """Query i sees keys i - left .. i + right (both ends included).

    `sliding_window(W - 1)` is Mistral's `sliding_window=W` (W keys, the query's own
    included); `right > 0` gives a symmetric (encoder) window such as Longformer's.
    """
    return _Band(_window_int("left", left), _window_int("right", right))


def sinks(n: int) -> StructuredMask:
    """The first n keys are visible to every query ("attention sinks"); combine with a
    window: `sliding_window(255) | sinks(4)`."""
    return _Sinks(_window_int("n", n))


def documents(doc_ids: Tensor) -> StructuredMask:
    """Packed sequences: `doc_ids` (B or 1, L) integer ids; query i of sample b sees key j
    only if `doc_ids[b, i] == doc_ids[b, j]` (self-attention: L = key length). Combine with
    `causal()` for packed causal language modelling."""
    if not isinstance(doc_ids, Tensor):
        raise TypeError(f"doc_ids must be a torch.Tensor of integer ids, got {type(doc_ids).__name__}")
    if doc_ids.dtype.is_floating_point or doc_ids.dtype.is_complex or doc_ids.dtype == torch.bool:
        raise TypeError(f"doc_ids must be an integer tensor (e.g. torch.long), got dtype {doc_ids.dtype}")
    if doc_ids.dim() != 2:
        raise ValueError(f"doc_ids must have shape (B, L), got {tuple(doc_ids.shape)}")
    return _Documents(doc_ids.long())


def mask_mod(fn: MaskFn, classify: Callable[..., Tensor] | None = None) -> StructuredMask:
    """A mask from `fn(b, h, q_idx, kv_idx) -> bool tensor` (vectorised over broadcast
    index tensors, see the module docstring).

    Without `classify` the block map is found by evaluating `fn` on every block once per
    call (O(L·S) time, small memory). `classify(q_lo, q_hi, kv_lo, kv_hi)` gets the block
    edges as long tensors `(nq, 1)` and `(1, nk)` (`hi` exclusive) and returns an
    `(nq, nk)` tensor of `EMPTY`/`PARTIAL`/`FULL`; it must never call a visible block
    `EMPTY` or a partial one `FULL`.
    """
    if not callable(fn):
        raise TypeError(f"mask_mod must be callable as fn(b, h, q_idx, kv_idx), got {type(fn).__name__}")
    if classify is not None and not callable(classify):
        raise TypeError(f"classify must be callable or None, got {type(classify).__name__}")
    return _MaskMod(fn, classify)


# ------------------------------------------------------------------------------ helpers
def _window_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _as_mask(name: str, value: object) -> StructuredMask:
    if not isinstance(value, StructuredMask):
        raise TypeError(f"{name} must be an attnzoo.masks mask (causal(), sliding_window(...), ...), "
                        f"got {type(value).__name__}")
    return value


def _edges(n: int, block: int) -> tuple[Tensor, Tensor]:
    """Start and (exclusive) end of each block of `block` positions over 0..n-1."""
    lo = torch.arange(0, n, block)
    return lo, (lo + block).clamp(max=n)


def _classes(empty: Tensor, full: Tensor) -> Tensor:
    """EMPTY where `empty`, FULL where `full`, PARTIAL elsewhere (long tensor)."""
    out = torch.full(torch.broadcast_shapes(empty.shape, full.shape), PARTIAL, dtype=torch.long)
    return out.masked_fill(full, FULL).masked_fill(empty, EMPTY)


def _block_extrema(ids: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Smallest and largest id in each block of `block` positions: (n, L) -> 2 × (n, nb)."""
    n, L = ids.shape
    nb = math.ceil(L / block)
    padded = torch.cat([ids.cpu(), ids[:, -1:].cpu().expand(n, nb * block - L)], dim=1)  # repeat the last id
    blocks = padded.view(n, nb, block)  # (n, nb, block)
    return blocks.amin(dim=-1), blocks.amax(dim=-1)


from ._blocksparse import block_attention  # noqa: E402  (last: it builds on the classes above)
