"""Ring attention: exact attention over a sequence sharded across the ranks of a group.

Each of the P ranks of a ``torch.distributed`` process group holds one shard (see
`attnzoo.distributed.zigzag` for which positions):

    q (B, H, N, hs)   k, v (B, Hkv, N, hs)   ->   out (B, H, N, hs)      N = Lp / P

Forward: the key/value shards travel round the ring (rank r sends to r+1 and receives
from r-1 with ``dist.batch_isend_irecv``); while the next shard is in flight, each rank
attends from its queries to the shard it holds and merges the block into running
(max, sum, output) accumulators, so that after P steps ``out = softmax(q kᵀ) v`` over
the whole sequence exactly. It keeps each row's log-sum-exp for the backward.
Backward: the key/value shards go round the ring again (overlapped the same way), each
followed by its dk/dv accumulators, which every rank adds its contribution to; after P
hops they are back on their owner. dq never leaves its rank.

Masks (functional polarity, bool True = may attend):

* ``is_causal``: key position <= query position, in GLOBAL positions.
* ``key_mask`` (B, N): this rank's keys; it travels round the ring with them.
* ``attn_mask`` (B or 1, H or 1, N, Lp): this rank's query rows, every key column in
  global order.

A row that may attend to nothing gives 0 output and zero gradients (no NaN). GQA:
``H`` a multiple of ``Hkv``; query head h uses key/value head h // (H // Hkv).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from .zigzag import ShardLayout

__all__ = ["ring_attention", "RING_STATS", "reset_ring_stats"]

# At most this many scores at once (all batch and head dims together).
_BLOCK_ELEMENTS = 1 << 21
# What this process sent round the ring since the last reset_ring_stats().
RING_STATS = {"bytes_sent": 0, "messages": 0}


def reset_ring_stats() -> None:
    """Zero `RING_STATS`."""
    RING_STATS.update(bytes_sent=0, messages=0)


class _Ring:
    """Send to the next rank of the group, receive from the previous one, asynchronously."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        g = group if group is not None else dist.group.WORLD
        self.next = dist.get_global_rank(g, (self.rank + 1) % self.world)
        self.prev = dist.get_global_rank(g, (self.rank - 1) % self.world)

    def exchange(self, send: Tensor, tag: int = 0) -> tuple[list, Tensor]:
        """Start sending ``send`` on and receiving its successor; ``wait`` finishes it."""
        recv = torch.empty_like(send)
        ops = [dist.P2POp(dist.isend, send, self.next, self.group, tag),
               dist.P2POp(dist.irecv, recv, self.prev, self.group, tag)]
        RING_STATS["bytes_sent"] += send.numel() * send.element_size()
        RING_STATS["messages"] += 1
        return dist.batch_isend_irecv(ops), recv

    @staticmethod
    def wait(pending: tuple[list, Tensor]) -> Tensor:
        for req in pending[0]:
            req.wait()
        return pending[1]


def _pack(*ts: Tensor) -> Tensor:
    """One flat buffer (one message) of several tensors of one dtype."""
    return torch.cat([t.reshape(-1) for t in ts])


def _unpack(buf: Tensor, *shapes: torch.Size) -> list[Tensor]:
    out, i = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(buf[i:i + n].view(s))
        i += n
    return out


def _pack_kv(k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """k, v (B, Hkv, N, hs) and the key mask (B, N) in one message.

    The mask always travels (1 / (2·Hkv·hs) of the message), so that every rank sends the
    same sizes even when only some shards have padding.
    """
    B, N = k.size(0), k.size(2)
    km = k.new_ones(B, N) if key_mask is None else key_mask.to(k.dtype)
    return _pack(k, v, km)


def _unpack_kv(buf: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor, Tensor | None]:
    k, v, km = _unpack(buf, shape, shape, torch.Size((shape[0], shape[2])))
    km = km > 0.5  # (B, N) True = may attend
    return k, v, None if bool(km.all()) else km


def _rows_per_block(B: int, H: int, N: int, hs: int) -> int:
    """Query rows per block: 2·hs rows against a key chunk of at most N keys keeps each block's
    scores within 2x the size of the local q, so memory per rank stays O(N·H·hs)."""
    return max(1, min(2 * hs, _BLOCK_ELEMENTS // (B * H * N)))


def _blocks(layout: ShardLayout, rank: int, src: int, causal: bool, rows_per: int):
    """Yield the blocks to compute: (local rows, local keys, global keys, global rows or None).

    The last item is the block's global query range where the causal mask cuts through it,
    None where every key is visible. Keys after a block's last query are left out, so
    blocks the causal mask hides entirely are skipped and diagonal ones are trimmed.
    """
    q_off = 0
    for qa, qb in layout.chunks(rank):
        k_off = 0
        for ka, kb in layout.chunks(src):
            for r0 in range(qa, qb, rows_per):
                r1 = min(qb, r0 + rows_per)
                kend = min(kb, r1) if causal else kb  # keys after the last query row are hidden
                if kend > ka:
                    diag = (r0, r1) if causal and r0 < kend - 1 else None
                    yield (q_off + r0 - qa, q_off + r1 - qa), (k_off, k_off + kend - ka), (ka, kend), diag
            k_off += kb - ka
        q_off += qb - qa


def _allowed(key_mask: Tensor | None, attn_mask: Tensor | None, rows: tuple[int, int], keys: tuple[int, int],
             gkeys: tuple[int, int], diag: tuple[int, int] | None, device: torch.device) -> Tensor | None:
    """Bool (..., R, C) True = may attend for one block, broadcastable to (B, Hkv, G, R, C)."""
    allowed = None
    if diag is not None:  # the query at global position p sees keys 0..p
        allowed = torch.arange(*diag, device=device)[:, None] >= torch.arange(*gkeys, device=device)  # (R, C)
    if key_mask is not None:
        km = key_mask[:, None, None, None, keys[0]:keys[1]]  # (B, 1, 1, 1, C)
        allowed = km if allowed is None else allowed & km
    if attn_mask is not None:
        am = attn_mask[..., rows[0]:rows[1], gkeys[0]:gkeys[1]]  # (b, h, g, R, C)
        allowed = am if allowed is None else allowed & am
    return allowed


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, attn_mask: Tensor | None,
                layout: ShardLayout, group: dist.ProcessGroup | None, causal: bool, scale: float) -> Tensor:
        ring = _Ring(group)
        B, H, N, hs = q.shape
        Hkv = k.size(1)
        qg = q.view(B, Hkv, H // Hkv, N, hs)  # (B, Hkv, G, N, hs)
        acc = torch.zeros_like(qg)  # Σ exp(s - m) v
        m = qg.new_full((B, Hkv, H // Hkv, N, 1), float("-inf"))  # running row max
        l = qg.new_zeros((B, Hkv, H // Hkv, N, 1))  # Σ exp(s - m)
        rows_per = _rows_per_block(B, H, layout.local_length, hs)
        kv = _pack_kv(k, v, key_mask) if ring.world > 1 else None  # one process: nothing travels
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            pending = ring.exchange(kv) if step < ring.world - 1 else None  # overlaps the compute below
            k_s, v_s, km = _unpack_kv(kv, k.shape) if kv is not None else (k, v, key_mask)
            for rows, keys, gkeys, diag in _blocks(layout, ring.rank, src, causal, rows_per):
                r = slice(*rows)
                _forward_block(qg[..., r, :], k_s[:, :, None, keys[0]:keys[1]], v_s[:, :, None, keys[0]:keys[1]],
                               _allowed(km, attn_mask, rows, keys, gkeys, diag, q.device), scale,
                               acc[..., r, :], m[..., r, :], l[..., r, :])
            if pending is not None:
                kv = ring.wait(pending)
        empty = l == 0  # rows that may attend to nothing: out 0, lse -inf
        out = (acc / l.masked_fill(empty, 1.0)).masked_fill(empty, 0.0)  # (B, Hkv, G, N, hs)
        lse = m + torch.log(l)  # -inf where empty
        ctx.save_for_backward(q, k, v, out, lse, key_mask, attn_mask)
        ctx.layout, ctx.group, ctx.causal, ctx.scale = layout, group, causal, scale
        return out.view(B, H, N, hs)

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse, key_mask, attn_mask = ctx.saved_tensors
        layout, scale = ctx.layout, ctx.scale
        ring = _Ring(ctx.group)
        B, H, N, hs = q.shape
        Hkv = k.size(1)
        qg = q.view(B, Hkv, H // Hkv, N, hs)  # (B, Hkv, G, N, hs)
        do = dout.reshape(qg.shape)  # (B, Hkv, G, N, hs)
        D = (do * out).sum(-1, keepdim=True)  # (B, Hkv, G, N, 1)
        lse = lse.masked_fill(lse.isneginf(), 0.0)  # empty rows: every score is -inf, p = 0
        dq = torch.zeros_like(qg)
        rows_per = _rows_per_block(B, H, layout.local_length, hs)
        kv = _pack_kv(k, v, key_mask) if ring.world > 1 else None  # one process: nothing travels
        travelling = None  # dk/dv accumulators of the shard held, on their way round
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            pending = ring.exchange(kv) if step < ring.world - 1 else None
            k_s, v_s, km = _unpack_kv(kv, k.shape) if kv is not None else (k, v, key_mask)
            # The dk/dv accumulators of the shard held: zeros at step 0, else what the previous
            # rank sent at the end of its last step. Waiting for them here (not overlapped)
            # keeps one accumulator per rank instead of three (filling, arriving, leaving).
            grads = k.new_zeros(2 * k.numel()) if travelling is None else ring.wait(travelling)
            travelling = None
            dk, dv = _unpack(grads, k.shape, v.shape)  # (B, Hkv, N, hs) views, added to in place
            for rows, keys, gkeys, diag in _blocks(layout, ring.rank, src, ctx.causal, rows_per):
                r, c = slice(*rows), slice(*keys)
                _backward_block(qg[..., r, :], k_s[:, :, None, c], v_s[:, :, None, c], do[..., r, :], D[..., r, :],
                                lse[..., r, :], _allowed(km, attn_mask, rows, keys, gkeys, diag, q.device), scale,
                                dq[..., r, :], dk[:, :, c], dv[:, :, c])
            travelling = ring.exchange(grads, tag=1) if ring.world > 1 else ([], grads)
            if pending is not None:
                kv = ring.wait(pending)
        grads = ring.wait(travelling)  # back home after P hops: my own shard's dk, dv, complete
        dk, dv = _unpack(grads, k.shape, v.shape)
        return dq.view(B, H, N, hs), dk, dv, None, None, None, None, None, None


def _forward_block(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float,
                   acc: Tensor, m: Tensor, l: Tensor) -> None:
    """Merge one block into the running accumulators, in place (online softmax)."""
    s = (q @ k.transpose(-2, -1)).mul_(scale)  # (B, Hkv, G, R, C); in place from here on
    if allowed is not None:
        s.masked_fill_(~allowed, float("-inf"))
    m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (B, Hkv, G, R, 1)
    shift = m_new.masked_fill(m_new.isneginf(), 0.0)  # nothing seen yet: any finite shift
    p = s.sub_(shift).exp_()  # masked scores give exactly 0
    alpha = torch.exp(m - shift)
    l.mul_(alpha).add_(p.sum(dim=-1, keepdim=True))
    acc.mul_(alpha).add_(p @ v)  # (B, Hkv, G, R, hs)
    m.copy_(m_new)


def _backward_block(q: Tensor, k: Tensor, v: Tensor, do: Tensor, D: Tensor, lse: Tensor,
                    allowed: Tensor | None, scale: float, dq: Tensor, dk: Tensor, dv: Tensor) -> None:
    """Add one block's gradients to dq (B, Hkv, G, R, hs) and dk, dv (B, Hkv, C, hs), in place."""
    s = (q @ k.transpose(-2, -1)).mul_(scale)  # (B, Hkv, G, R, C); in place from here on
    if allowed is not None:
        s.masked_fill_(~allowed, float("-inf"))
    p = s.sub_(lse).exp_()  # the final softmax weights of this block
    dv.add_((p.transpose(-2, -1) @ do).sum(dim=2))  # (B, Hkv, C, hs), summed over the group
    ds = (do @ v.transpose(-2, -1)).sub_(D).mul_(p)  # (B, Hkv, G, R, C)
    dq.add_(ds @ k, alpha=scale)
    dk.add_((ds.transpose(-2, -1) @ q).sum(dim=2), alpha=scale)


def ring_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    layout: ShardLayout,
    *,
    group: dist.ProcessGroup | None = None,
    is_causal: bool = False,
    key_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Exact attention from this rank's queries to the keys of every rank (see module doc).

    ``query`` (B, H, N, hs), ``key``/``value`` (B, Hkv, N, hs) with ``N = layout.local_length``;
    ``key_mask`` (B, N) bool, ``attn_mask`` (B or 1, H or 1, N, layout.length) bool, both
    True = may attend. Returns (B, H, N, hs). Differentiable in query, key and value.
    Every rank of ``group`` must call it with the same shapes and flags.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a (B, heads, N, hs) tensor, got {getattr(t, 'shape', type(t).__name__)}")
    B, H, N, hs = query.shape
    if key.shape != value.shape or key.size(0) != B or key.size(2) != N or key.size(3) != hs or H % key.size(1):
        raise ValueError(f"key and value must be (B, Hkv, N, hs) with H % Hkv == 0 for query {tuple(query.shape)}, "
                         f"got key {tuple(key.shape)} and value {tuple(value.shape)}")
    if not (query.dtype == key.dtype == value.dtype) or not query.is_floating_point():
        raise TypeError(f"query, key and value must share a floating dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    if not isinstance(layout, ShardLayout):
        raise TypeError("layout must be an attnzoo.distributed.ShardLayout (e.g. ShardLayout(length, world)), "
                        f"got {type(layout).__name__}")
    world = dist.get_world_size(group)
    if layout.world != world or layout.local_length != N:
        raise ValueError(f"layout must have world={world} and local_length={N}, got {layout}")
    if key_mask is not None and (key_mask.dtype != torch.bool or key_mask.shape != (B, N)):
        raise ValueError(f"key_mask must be a bool (B, N) = {(B, N)} tensor, got {key_mask.dtype} {tuple(key_mask.shape)}")
    if attn_mask is not None:
        ok = attn_mask.dim() == 4 and attn_mask.size(0) in (1, B) and attn_mask.size(1) in (1, H)
        if attn_mask.dtype != torch.bool or not ok or attn_mask.shape[2:] != (N, layout.length):
            raise ValueError(f"attn_mask must be a bool (B or 1, H or 1, N, Lp) = (.., .., {N}, {layout.length}) "
                             f"tensor, got {attn_mask.dtype} {tuple(attn_mask.shape)}")
        b, h = attn_mask.shape[:2]
        G = H // key.size(1)
        attn_mask = attn_mask.view(b, H // G, G, N, layout.length) if h == H else attn_mask[:, :, None]  # (b, h, g, N, Lp)
    scale = 1.0 / math.sqrt(hs) if scale is None else float(scale)
    q, k, v = query.contiguous(), key.contiguous(), value.contiguous()
    return _RingAttention.apply(q, k, v, key_mask, attn_mask, layout, group, bool(is_causal), scale)
