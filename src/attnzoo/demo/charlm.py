"""The positions part's model: a small causal character-level Transformer with one of five
position schemes, and how it is scored.

`CharLM` maps token ids `(B, L)` to next-token logits `(B, L, V)`. Pre-norm blocks,
attention by `attnzoo.functional.scaled_dot_product_attention` with `is_causal=True`
(query `i` sees keys `0..i`). Where the positions enter:

* `learned`: a learned table `(context, d_model)` added to the token embeddings; it has no
  row beyond the training context, so longer inputs are refused (`ValueError`).
* `sinusoidal`: the fixed sin/cos table of "Attention is all you need", added to the token
  embeddings; defined at any length.
* `rope`: `attnzoo.RotaryEmbedding` rotates every head's queries and keys.
* `alibi`: `attnzoo.alibi_bias`, `-m_h (i - j)`, added to the scores as a float mask
  `(H, L, L)` that also holds the causal mask (`-inf` where `j > i`).
* `nope`: no position information at all; only the causal mask tells order.

`bits_per_char` scores the same validation characters at every evaluation context: each
window of `context` characters predicts its last `scored` characters only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import scaled_dot_product_attention
from ..positions import RotaryEmbedding, alibi_bias, alibi_slopes

__all__ = ["SCHEMES", "CharLM", "sinusoidal_table", "window_ends", "bits_per_char", "unigram_bits"]

SCHEMES = ("learned", "sinusoidal", "rope", "alibi", "nope")


def sinusoidal_table(length: int, d_model: int) -> Tensor:
    """`(length, d_model)` float32: `sin(p / 10000^(2i/d))` at even features, `cos` at odd."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    table = torch.zeros(length, d_model, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return table.float()


class Block(nn.Module):
    """Pre-norm causal self-attention + MLP; `(B, L, C)` -> `(B, L, C)`."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: Tensor, rope: RotaryEmbedding | None, mask: Tensor | None) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)  # each (B, L, C)
        q, k, v = (z.view(b, t, self.nhead, c // self.nhead).transpose(1, 2) for z in (q, k, v))  # (B, nh, L, hs)
        if rope is not None:
            q, k = rope(q, k)  # (B, nh, L, hs)
        if mask is None:
            y = scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, L, hs)
        else:  # the causal mask is in `mask` already (-inf above the diagonal)
            y = scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, L, hs)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))  # (B, L, C)
        return x + self.mlp(self.ln2(x))


class CharLM(nn.Module):
    """Decoder-only character model; `scheme` is one of `SCHEMES`, `context` the training length.

    For one seed the shared weights (embeddings, blocks, head) start equal in every scheme:
    the learned position table is drawn after them."""

    def __init__(self, scheme: str, vocab: int, *, context: int, d_model: int, nhead: int, layers: int) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        self.scheme, self.context = scheme, context
        self.tok = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(Block(d_model, nhead) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.pos = nn.Embedding(context, d_model) if scheme == "learned" else None
        self.rope = RotaryEmbedding(d_model // nhead) if scheme == "rope" else None
        self.register_buffer("slopes", alibi_slopes(nhead) if scheme == "alibi" else None, persistent=False)

    @property
    def max_length(self) -> int | None:
        """The longest input it can take: the training context for `learned`, else None (any)."""
        return self.context if self.scheme == "learned" else None

    def forward(self, idx: Tensor) -> Tensor:
        length = idx.shape[1]
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"idx: learned absolute positions exist for {self.max_length} tokens only "
                             f"(the training context), got a sequence of {length}")
        x = self.tok(idx)  # (B, L, C)
        at = torch.arange(length, device=idx.device)
        if self.pos is not None:
            x = x + self.pos(at)  # (B, L, C)
        elif self.scheme == "sinusoidal":
            x = x + sinusoidal_table(length, x.shape[-1]).to(x)  # (B, L, C)
        mask = None
        if self.slopes is not None:  # ALiBi's bias, and -inf where j > i (causal)
            future = torch.ones(length, length, dtype=torch.bool, device=idx.device).triu(1)  # (L, L)
            mask = alibi_bias(self.slopes, at, at).masked_fill(future, float("-inf"))  # (nh, L, L)
        for block in self.blocks:
            x = block(x, self.rope, mask)
        return self.head(self.ln_f(x))  # (B, L, V)


def window_ends(n_tokens: int, n_windows: int, longest: int) -> Tensor:
    """`n_windows` evenly spaced end positions in a split of `n_tokens` ids, each with room
    for `longest` inputs before it and its target at the end (exclusive ends of the inputs)."""
    last = n_tokens - 1  # the last input's target must exist
    if last < longest + n_windows:
        raise ValueError(f"the split has {n_tokens} tokens, too few for {n_windows} windows of {longest}")
    return torch.linspace(longest, last, n_windows, dtype=torch.float64).round().long()  # (W,)


@torch.no_grad()
def bits_per_char(model: CharLM, ids: Tensor, ends: Tensor, context: int, scored: int,
                  max_tokens: int = 8192) -> float | None:
    """Mean loss in bits of the `scored` last predictions of windows `ids[e - context: e]`,
    one per end `e` (targets `ids[e - context + 1: e + 1]`); None where the model cannot take
    `context` tokens (learned positions beyond the training length)."""
    if not 0 < scored <= context:
        raise ValueError(f"scored must be in 1..context={context}, got {scored}")
    if model.max_length is not None and context > model.max_length:
        return None
    was = model.training
    model.eval()
    offsets = torch.arange(-context, 0, device=ends.device)  # (context,)
    per = max(1, max_tokens // context)
    total = 0.0
    for i in range(0, len(ends), per):
        at = ends[i:i + per, None] + offsets  # (b, context)
        logits = model(ids[at])[:, -scored:]  # (b, scored, V)
        target = ids[at + 1][:, -scored:]  # (b, scored)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"))
    model.train(was)
    return total / (len(ends) * scored) / math.log(2.0)


def unigram_bits(train: Tensor, val: Tensor, vocab: int) -> float:
    """Bits per character of `val` under the training characters' frequencies (add-one
    smoothed): what a model that ignores all context gets."""
    counts = torch.bincount(train, minlength=vocab).double() + 1.0  # (V,)
    logp = (counts / counts.sum()).log2()
    return float(-logp[val].mean())
