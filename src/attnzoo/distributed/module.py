"""Context parallelism for attnzoo models: self-attention over a sequence sharded across ranks.

`context_parallel` switches every `MultiHeadAttention` in a model
(``SelfAttention``, the Transformer layers' attention, ...) to ring attention over the ranks
of a process group, in place. The parameters, their names and the state dict are
unchanged; every other layer (norms, feed-forward, projections) acts position by
position and needs no change. Each rank then feeds its shard of the sequence:

    x_local (B, N, E)  ->  out_local (B, N, E)          N = Lp / P  (see attnzoo.distributed.zigzag)

Self-attention (``key`` None or ``key is query``) runs the ring. Masks keep
``nn.MultiheadAttention``'s polarity (bool True = NOT allowed / padding), but hold this
rank's part only:

* ``key_padding_mask`` (B, N): this shard's keys (e.g. the ``padding`` from
  `shard`, OR-ed with the data's own padding).
* ``attn_mask`` (N, Lp) or (B·H, N, Lp): this shard's query rows, all key columns in
  global order (`shard_attn_mask` builds it).
* ``is_causal=True``: causal in global positions.
* ``mask``: a structured mask (`attnzoo.masks`, True = may attend) over the GLOBAL
  positions of the whole padded sequence (`ring_attention`'s ``mask``).

Positions: a module with ``rotary`` (a `RotaryEmbedding`) rotates q and k at this
rank's GLOBAL positions (`ShardLayout.positions`); ``alibi=True`` and a
``relative_bias`` (inference only: it gets no gradient through the ring) add their bias
at global positions too. ``positions=`` must stay None: the layout fixes them.

Cross-attention (a ``key`` that is not the query) is not sharded: every rank passes the
whole memory and the module attends from its local queries as usual. Not supported
under context parallelism: ``need_weights=True``, attention dropout while training,
float masks (all raise).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from .._mha_layout import _batch_first_inputs
from ..functional import RowIndex
from ..masks import StructuredMask
from ..positions import alibi_bias, alibi_slopes
from .blocks import ScoreBias
from .ring import ring_attention
from .zigzag import ShardLayout

__all__ = ["context_parallel", "ContextParallelMixin"]


class ContextParallelMixin:
    """Overrides ``forward`` of a MultiHeadAttention (sub)class with ring self-attention."""

    cp_group: dist.ProcessGroup | None
    cp_zigzag: bool

    def forward(  # type: ignore[override]
        self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
        key_padding_mask: Tensor | None = None, need_weights: bool = False, attn_mask: Tensor | None = None,
        average_attn_weights: bool = True, is_causal: bool = False, weights_for: RowIndex = None,
        *, mask: StructuredMask | None = None, positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:  # MultiHeadAttention.forward's (and torch's) argument order
        mha: MultiHeadAttention = self  # type: ignore[assignment]
        if (key is not None and key is not query) or (value is not None and value is not query):
            extra = {n: a for n, a in (("mask", mask), ("positions", positions)) if a is not None}
            return MultiHeadAttention.forward(  # cross-attention: the memory is not sharded
                mha, query, key, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal,
                need_weights=need_weights, average_attn_weights=average_attn_weights, weights_for=weights_for, **extra)
        if positions is not None:
            raise ValueError("positions must be None under context parallelism (each rank's global positions "
                             "come from its ShardLayout)")
        if need_weights:
            raise ValueError("need_weights=True is not supported under context parallelism")
        if mha.training and mha.dropout > 0:
            raise ValueError(f"attention dropout is not supported under context parallelism, got dropout={mha.dropout} "
                             "in training mode (build the model with dropout=0.0 or call .eval())")
        dims = (mha.embed_dim, mha.kdim, mha.vdim, mha.out_proj.weight.dtype, mha.batch_first)
        x, _, _, key_padding_mask = _batch_first_inputs(query, query, query, key_padding_mask, dims)  # (B, N, E)
        unbatched = query.dim() == 2
        B, N, _ = x.shape  # (B, N, E)
        world = dist.get_world_size(self.cp_group)
        layout = ShardLayout(N * world, world, self.cp_zigzag)
        key_mask = None
        if key_padding_mask is not None:
            _check_bool("key_padding_mask", key_padding_mask, (B, N))
            key_mask = ~key_padding_mask  # (B, N) True = may attend
        dense = None
        if attn_mask is not None:
            H, Lp = mha.num_heads, layout.length
            if attn_mask.dim() == 2:
                _check_bool("attn_mask", attn_mask, (N, Lp), (B * H, N, Lp))
                dense = ~attn_mask.view(1, 1, N, Lp)
            else:
                _check_bool("attn_mask", attn_mask, (B * H, N, Lp), (N, Lp))
                dense = ~attn_mask.view(B, H, N, Lp)

        q, k, v = mha.project_qkv(x)  # (B, H, N, hs), (B, Hkv, N, hs) ×2
        rotary = getattr(mha, "rotary", None)
        if rotary is not None:  # at this rank's GLOBAL positions
            pos = layout.positions(dist.get_rank(self.cp_group), q.device)  # (N,)
            q, k = rotary.rotate(q, pos), rotary.rotate(k, pos)
        out = ring_attention(q, k, v, layout, group=self.cp_group, is_causal=is_causal, key_mask=key_mask,
                             attn_mask=dense, mask=mask, score_bias=_score_bias(mha, q.dtype))  # (B, H, N, hs)
        out = mha.out_proj(out.transpose(1, 2).reshape(B, N, mha.embed_dim))  # (B, N, E)
        if unbatched:
            out = out.squeeze(0)
        elif not mha.batch_first:
            out = out.transpose(0, 1)  # (N, B, E)
        return out, None


def _score_bias(mha: MultiHeadAttention, dtype: torch.dtype) -> ScoreBias | None:
    """The module's ALiBi and T5 bias as one `score_bias(q_idx (R, 1), kv_idx (1, C))`, or None."""
    alibi, relative = getattr(mha, "alibi", False), getattr(mha, "relative_bias", None)
    if relative is not None and torch.is_grad_enabled() and any(p.requires_grad for p in relative.parameters()):
        raise ValueError("relative_bias cannot be trained under context parallelism (the ring gives it no "
                         "gradient): freeze it (requires_grad_(False)) or run under torch.no_grad()")
    if not alibi and relative is None:
        return None
    slopes = alibi_slopes(mha.num_heads, dtype=dtype) if alibi else None

    def bias(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        t = 0.0
        if slopes is not None:
            t = alibi_bias(slopes.to(q_idx.device), q_idx[:, 0], kv_idx[0])  # (H, R, C)
        if relative is not None:
            t = t + relative(q_idx[:, 0], kv_idx[0]).to(dtype)  # (H, R, C)
        return t

    return bias


def _check_bool(name: str, mask: object, shape: tuple, *other: tuple) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor under context parallelism, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != shape:
        want = " or ".join(str(s) for s in (shape, *other))
        raise ValueError(f"{name} must have shape {want} (this rank's shard), got {tuple(mask.shape)}")


_CLASSES: dict[type, type] = {}


def _cp_class(cls: type) -> type:
    if issubclass(cls, ContextParallelMixin):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"ContextParallel{cls.__name__}", (ContextParallelMixin, cls), {"_cp_base": cls})
    return _CLASSES[cls]


def context_parallel(model: nn.Module, group: dist.ProcessGroup | None = None, *, zigzag: bool = True,
                     enable: bool = True) -> nn.Module:
    """Switch every attnzoo MultiHeadAttention in ``model`` to ring attention over ``group``, in place.

    Returns ``model``. ``group=None`` is the default process group; ``zigzag`` must match
    how the inputs were sharded. ``enable=False`` switches them back to single-process
    attention. Parameters and state-dict keys do not change.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if enable and not dist.is_initialized():
        raise ValueError("context_parallel needs an initialised torch.distributed process group "
                         "(call torch.distributed.init_process_group first)")
    for m in model.modules():
        if not isinstance(m, MultiHeadAttention):
            continue
        if enable:
            m.__class__ = _cp_class(type(m))
            m.cp_group, m.cp_zigzag = group, bool(zigzag)
        elif isinstance(m, ContextParallelMixin):
            m.__class__ = m._cp_base  # type: ignore[attr-defined]
    return model
