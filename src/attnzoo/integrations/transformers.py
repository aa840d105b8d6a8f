"""attnzoo as an attention implementation of Hugging Face `transformers` (5.x).

```python
import attnzoo.integrations.transformers as azt
azt.register()  # once per process
model = AutoModelForCausalLM.from_config(config, attn_implementation="attnzoo")
out = model(**inputs, output_attentions=True)  # out.attentions: attnzoo's exact weights
```

`register` adds `attention_forward` to transformers' `AttentionInterface` and, under the same
name, transformers' own `sdpa_mask` to its `AttentionMaskInterface`: the model then builds the
masks it builds for `"sdpa"` (boolean, True = may attend, or None where `is_causal` suffices),
which is attnzoo's polarity. Without that second registration transformers builds no mask at
all for an unknown implementation name.

Shapes, as transformers passes them: query (B, H, L, hs), key and value (B, Hkv, S, hs) with
H a multiple of Hkv (grouped-query attention), mask (B, 1 or H, L, S) bool or float (added).
`attention_forward` returns the output (B, L, H, hs) and the weights (B, H, L, S) when the call
asks for them (`output_attentions`, from the call or the model config), else None. The weights
come from attnzoo's blocked pass (`attnzoo.functional.scaled_dot_product_attention` with
`need_weights=True`), never as one (B, H, L, S) score tensor beside them. A query row that may
attend to nothing (left padding) gets 0 output and 0 weights (eager gives a uniform row there).

Models whose attention does not go through the interface (BLOOM, Falcon and MPT in 5.x: their
ALiBi attention is written inside the model) accept the name and keep their own attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..functional import scaled_dot_product_attention

__all__ = ["attention_forward", "register"]

#: Keyword arguments transformers may pass that attnzoo cannot honour: (name, why).
_UNSUPPORTED = (
    ("softcap", "logit soft-capping (tanh on the scores)"),
    ("s_aux", "attention sinks (an extra softmax column per head)"),
    ("sinks", "attention sinks (an extra softmax column per head)"),
)


def register(name: str = "attnzoo") -> None:
    """Make `attn_implementation=name` run `attention_forward` in every transformers model
    that dispatches through `AttentionInterface`. Registers the sdpa mask builder under the
    same name too, so the model passes boolean masks (True = may attend). Safe to call twice.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if name in ("eager", "sdpa") or name.startswith(("flash_attention", "flex_attention", "paged")):
        raise ValueError(f"name must not be one of transformers' own implementations, got {name!r}")
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as exc:
        raise ImportError("attnzoo.integrations.transformers.register needs transformers>=5 "
                          f"(pip install 'transformers>=5'): {exc}") from None
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)


def attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """transformers' attention-function signature, computed by attnzoo.

    query (B, H, L, hs), key/value (B, Hkv, S, hs) -> (output (B, L, H, hs), weights
    (B, H, L, S) or None). `attention_mask`: bool (True = may attend) or float (added), or
    None, where `is_causal` (from the call, else `module.is_causal`, else True) decides, with
    transformers' sdpa rule: a single query row is never causal. `position_bias` (float,
    added to the scores, e.g. T5) is honoured; `softcap` and attention sinks raise.
    """
    for arg, what in _UNSUPPORTED:
        if kwargs.get(arg) is not None:
            raise ValueError(f"attnzoo attention does not support {arg} ({what}); "
                             "use attn_implementation='eager' for this model")
    groups = getattr(module, "num_key_value_groups", 1)
    gqa = query.size(1) != key.size(1)
    if gqa and query.size(1) != key.size(1) * groups:
        raise ValueError(f"query has {query.size(1)} heads and key {key.size(1)}: expected query heads = key heads "
                         f"x module.num_key_value_groups ({groups})")
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    causal = bool(causal) and attention_mask is None and query.size(2) > 1
    mask = attention_mask
    if mask is not None and mask.is_floating_point() and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)  # a custom 4-D float mask in another precision
    bias = kwargs.get("position_bias")
    if bias is not None:  # additive bias on the scores; hidden positions stay hidden
        bias = bias.to(query.dtype)
        if mask is None:
            mask = bias
        elif mask.dtype == torch.bool:
            mask = bias.masked_fill(~mask, float("-inf"))  # (B, H, L, S)
        else:
            mask = bias + mask
    want = kwargs.get("output_attentions")
    if want is None:
        want = getattr(getattr(module, "config", None), "output_attentions", False)
    result = scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=float(dropout), is_causal=causal, scale=scaling,
        enable_gqa=gqa, need_weights=bool(want),
    )
    out, weights = result if want else (result, None)
    return out.transpose(1, 2).contiguous(), weights  # (B, L, H, hs), (B, H, L, S) or None
