"""Input checks of the scaled dot-product attention call (`attnzoo.functional`), shared
with the block-skipping path (`attnzoo._blocksparse`)."""

from __future__ import annotations

from ._checks import check_dropout, check_mask_dtype, check_tensor

__all__ = ["_validate", "_broadcast"]


def _validate(
    query: object, key: object, value: object, attn_mask: object, dropout_p: object,
    enable_gqa: bool,
) -> tuple[int, ...]:
    """Check the arguments; return the batch dims the three inputs broadcast to."""
    q = check_tensor("query", query)
    k = check_tensor("key", key)
    v = check_tensor("value", value)
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., length, features), got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.size(-1) != k.size(-1):
        raise ValueError(
            f"query and key must have the same head dim (last dim), got {q.size(-1)} and {k.size(-1)}"
        )
    if k.size(-2) != v.size(-2):
        raise ValueError(
            f"key and value must have the same length (dim -2), got key {tuple(k.shape)} "
            f"and value {tuple(v.shape)}"
        )
    qb, kb, vb = q.shape[:-2], k.shape[:-2], v.shape[:-2]
    if enable_gqa and q.dim() >= 3:
        if not (q.dim() == k.dim() == v.dim()) or kb != vb or qb[:-1] != kb[:-1] or qb[-1] % kb[-1] != 0:
            raise ValueError(
                f"with enable_gqa, query heads (dim -3) must be a multiple of key heads and "
                f"other batch dims equal, got query {tuple(q.shape)}, key {tuple(k.shape)} "
                f"and value {tuple(v.shape)}"
            )
        batch = tuple(qb)
    else:
        batch = _broadcast(qb, kb, vb)  # leading (batch) dims broadcast, right-aligned, as in torch
        if batch is None:
            raise ValueError(
                f"query, key and value batch dims (all but the last two) must broadcast, got query "
                f"{tuple(q.shape)}, key {tuple(k.shape)} and value {tuple(v.shape)}"
            )
    check_dropout("dropout_p", dropout_p)
    if attn_mask is not None:
        check_mask_dtype("attn_mask", attn_mask)
        target = (*batch, q.size(-2), k.size(-2))
        if _broadcast(attn_mask.shape, target) != target:
            raise ValueError(
                f"attn_mask must broadcast to (..., L, S) = {target}, got {tuple(attn_mask.shape)}"
            )
        if attn_mask.is_floating_point() and attn_mask.dtype != q.dtype:
            raise TypeError(f"a float attn_mask must have the query's dtype {q.dtype}, got {attn_mask.dtype}")
    return batch


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The right-aligned broadcast of ``shapes``, or None where they do not broadcast.

    ``torch.broadcast_shapes`` builds tensors to find out, which costs more (tens of µs)
    than the attention call itself on a GPU.
    """
    if all(s == shapes[0] for s in shapes):
        return tuple(shapes[0])
    out = []
    for i in range(1, max(len(s) for s in shapes) + 1):
        sizes = {s[-i] for s in shapes if len(s) >= i} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(reversed(out))
