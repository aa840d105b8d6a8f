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

from ._blocksparse import block_attention
from ._structured import EMPTY, FULL, PARTIAL, StructuredMask, causal, documents, mask_mod, sinks, sliding_window

__all__ = ["EMPTY", "PARTIAL", "FULL", "StructuredMask", "block_attention", "causal", "documents", "mask_mod",
           "sinks", "sliding_window"]
