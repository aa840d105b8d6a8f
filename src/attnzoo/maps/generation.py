"""What each generated token looked at: record a cached ``generate`` and write its view.

>>> path, tokens = generation_view(model, src, "dates_view.html", bos_id=1, eos_id=2,
...                                max_new_tokens=11, src_tokens=list("14/11/23") + ["<eos>"],
...                                token_label=lambda i: tgt_vocab.decode([i]) or "<eos>")  # doctest: +SKIP

``src`` is one source sequence (1, S). The recorder sees each decoding step through the
``attend`` patch (see `attnzoo.maps.capture`); the view has one layer per decoder
layer's cross-attention (``cross_only=False`` adds the self-attention over the cache and
the encoder's self-attention): queries are the generated tokens (row t = the step that
produced token t), keys the source tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from .recorder import AttentionRecorder
from ..transformer import Seq2SeqTransformer
from .view import attention_view

__all__ = ["generation_view"]


def generation_view(model: Seq2SeqTransformer, src: Tensor, path: str | os.PathLike[str], *, bos_id: int,
                    eos_id: int, max_new_tokens: int, src_tokens: Sequence[str],
                    token_label: Callable[[int], str] = str, cross_only: bool = True,
                    title: str = "Cross-attention of each generated token") -> tuple[Path, Tensor]:
    """Greedy-decode ``src`` (1, S) while recording, write the view to ``path`` -> (path, tokens (1, T))."""
    if not isinstance(model, Seq2SeqTransformer):
        raise TypeError(f"model must be an attnzoo Seq2SeqTransformer, got {type(model).__name__}")
    if not isinstance(src, Tensor) or src.dim() != 2 or src.size(0) != 1:
        raise ValueError(f"src must be one source sequence of shape (1, S), got {getattr(src, 'shape', src)!r}")
    keep = (lambda name, m: name.endswith("multihead_attn")) if cross_only else None
    with AttentionRecorder(model, include=keep, to_cpu=True) as rec:
        tokens = model.generate(src, max_new_tokens, bos_id, eos_id)
    labels = [token_label(int(t)) for t in tokens[0]]
    page = attention_view(rec, tokens=list(src_tokens), query_tokens=labels, path=path, title=title)
    return page, tokens
