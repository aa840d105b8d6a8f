"""Key/value caches for step-by-step decoding, and attention that uses them.

* `KVCache` holds one self-attention layer's keys and values in buffers allocated
  once, ``(B, Hkv, max_len, hs)``, written by position: step ``t`` writes slot ``t`` and
  attends over the valid prefix ``[:t + 1]``, so no step allocates or concatenates.
* `MemoryKV` holds one cross-attention layer's keys and values of the encoder
  memory, projected once per generated sequence instead of once per step.
* `attend_cached` / `attend_memory` run an attnzoo
  `MultiHeadAttention` over them, projecting only the new tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from ._checks import check_positive_int, check_tensor
from ._masked import _open_empty_rows, _zero_hidden_keys

if TYPE_CHECKING:  # annotations only (attention imports _mha_positions, which imports this module)
    from .attention import MultiHeadAttention

__all__ = ["KVCache", "MemoryKV", "DecodeState", "attend_cached", "attend_memory", "project_memory"]


class KVCache(nn.Module):
    """Preallocated keys and values of one attention layer, written by position.

    Buffers ``k_cache`` and ``v_cache`` have shape ``(B, Hkv, max_len, hs)``. They are
    not saved in ``state_dict`` but follow ``.to(device)`` like any buffer.
    """

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        sizes = {"batch_size": batch_size, "num_kv_heads": num_kv_heads, "max_len": max_len, "head_dim": head_dim}
        shape = tuple(check_positive_int(name, n) for name, n in sizes.items())
        self.register_buffer("k_cache", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k_cache.size(2)

    def update(self, pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k``, ``v`` (B, Hkv, T, hs) at positions ``pos .. pos+T-1``.

        Returns views of the valid prefix, keys and values ``(B, Hkv, pos+T, hs)``:
        everything written before ``pos`` plus the new entries. Only integer bounds are
        checked here (this runs every decoding step); shapes are checked by ``copy_``.
        """
        end = pos + k.size(2)
        if pos < 0 or end > self.k_cache.size(2):
            raise ValueError(f"KVCache.update: positions {pos}..{end - 1} outside 0..{self.max_len - 1}")
        self.k_cache[:, :, pos:end].copy_(k)  # (B, Hkv, T, hs) slot by slot
        self.v_cache[:, :, pos:end].copy_(v)
        return self.k_cache[:, :, :end], self.v_cache[:, :, :end]  # (B, Hkv, pos+T, hs)

    def reset(self) -> None:
        """Forget everything written (zero the buffers); the cache can be reused."""
        self.k_cache.zero_()
        self.v_cache.zero_()


class MemoryKV(NamedTuple):
    """One cross-attention layer's view of the encoder memory, computed once per sequence.

    ``k``, ``v``: ``(B, Hkv, S, hs)``. ``mask``: ``None`` or ``(B, 1, 1, S)`` in the
    FUNCTIONAL polarity (bool True = may attend; float = added to the scores).
    ``clean``: True when ``k``/``v`` are zero wherever ``mask`` hides them and no sample
    is fully masked, so each step can skip attention's guards for those.
    """

    k: Tensor
    v: Tensor
    mask: Tensor | None
    clean: bool = False


class DecodeState(NamedTuple):
    """Everything a decoder stack caches while generating: one entry per decoder layer."""

    memory_kv: list[MemoryKV]  # cross-attention keys/values of the encoder memory
    caches: list[KVCache]  # self-attention keys/values of the target prefix


def project_memory(attn: MultiHeadAttention, memory: Tensor, key_padding_mask: Tensor | None = None) -> MemoryKV:
    """Project ``memory`` (B, S, kdim) (always batch-first) to ``attn``'s keys/values, once.

    ``key_padding_mask`` (B, S) has the torch polarity (bool True = padding; float = added);
    it is converted here, once, to the functional polarity (B, 1, 1, S), True = may attend.
    """
    check_tensor("memory", memory, ndim=3)
    k, v = attn.project_kv(memory)  # (B, Hkv, S, hs) ×2
    B, S = memory.shape[:2]
    mask = attn.combine_masks(key_padding_mask, None, B, 1, S, k.dtype)  # (B, 1, 1, S) or None
    if mask is None:
        return MemoryKV(k, v, None, clean=True)
    k, v = _zero_hidden_keys(k, v, mask)  # once here instead of in every step
    empty = _open_empty_rows(mask)[1]  # samples with no key to attend to keep the guards
    return MemoryKV(k, v, mask, clean=not bool(empty.any()))  # one host sync per sequence


def attend_cached(attn: MultiHeadAttention, x: Tensor, cache: KVCache, pos: int | Tensor) -> Tensor:
    """Causal self-attention of the new tokens ``x`` (B, T, E) at positions ``pos..pos+T-1``.

    Projects only ``x``, writes its keys/values into ``cache`` at ``pos`` and attends over the
    cached prefix ``[:pos+T]``. Returns ``attn``'s output (B, T, E). Unchecked (runs every step).

    ``pos`` as a (1,) long tensor (one token, T = 1) is the static-shape form that a CUDA
    graph can capture: the write goes to slot ``pos`` and attention runs over all
    ``max_len`` slots with the unwritten ones masked, so no shape depends on ``pos``.
    """
    q, k, v = attn.project_qkv(x)  # (B, H, T, hs), (B, Hkv, T, hs) ×2
    if isinstance(pos, Tensor):
        cache.k_cache.index_copy_(2, pos, k)  # (B, Hkv, max_len, hs), slot pos written
        cache.v_cache.index_copy_(2, pos, v)
        written = torch.arange(cache.max_len, device=x.device) <= pos  # (max_len,) True = may attend
        # unwritten slots hold zeros (or an earlier sequence's finite values) and slot 0 is
        # always visible: the guards against NaN padding and empty rows are not needed
        return attn.attend(q, cache.k_cache, cache.v_cache, mask=written, guarded=False)[0]
    k, v = cache.update(pos, k, v)  # (B, Hkv, pos+T, hs) ×2
    T = x.size(1)
    mask = None  # a single new token may see the whole prefix
    if T > 1:  # a chunk: query pos+i sees keys 0..pos+i (causal, aligned bottom-right)
        mask = torch.arange(pos + T, device=x.device) <= torch.arange(pos, pos + T, device=x.device)[:, None]
    return attn.attend(q, k, v, mask=mask)[0]


def attend_memory(attn: MultiHeadAttention, x: Tensor, memory_kv: MemoryKV) -> Tensor:
    """Cross-attention of ``x`` (B, T, E) over keys/values from `project_memory` -> (B, T, E)."""
    q = attn.project_query(x)  # (B, H, T, hs)
    return attn.attend(q, memory_kv.k, memory_kv.v, mask=memory_kv.mask, guarded=not memory_kv.clean)[0]
