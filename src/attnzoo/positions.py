"""Position information inside attention: rotary embeddings, ALiBi and T5's relative bias.

Self-attention by itself cannot tell token order; these three mechanisms put positions
into the scores rather than into the input embeddings.

* `RotaryEmbedding` (RoPE) rotates each query and key at its absolute position, so that
  `q_m · k_n` depends on `m - n` only. Inputs `q`, `k` are `(B, H, L, hs)` (heads before
  length, the layout `MultiHeadAttention` computes in); positions are an integer tensor
  `(L,)` shared by the batch or `(B, L)` per sequence. Output: same shape and dtype.
* `alibi_slopes` / `alibi_bias` (ALiBi): a fixed bias `-m_h (i - j)` on the score of query
  `i` and key `j`, one slope `m_h` per head. Bias blocks are `(H, Lq, Lk)`.
* `RelativePositionBias` (T5): a learned bias per head and per bucket of the distance
  `j - i`, `(H, Lq, Lk)` for given query and key index ranges.

Both biases are additive: they are added to `Q Kᵀ / √hs` before the softmax, like a float
`attn_mask` (0 = no change); they never mask anything. The bias functions take index ranges
so that a caller can build the `(H, L, S)` bias block by block and never hold all of it.

A note for mask builders: Mistral's `sliding_window = W` lets query `i` see keys
`i - W + 1 .. i`, W keys counting the query itself (W − 1 to its left), not `i - W .. i`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_positive_int, check_tensor, is_tracing
from ._rope_scaling import attention_factor, inv_freq, parse_scaling

__all__ = ["RotaryEmbedding", "alibi_slopes", "alibi_bias", "alibi_score_bias", "RelativePositionBias"]

#: `score_bias(q_idx (lq, 1), kv_idx (1, lk)) -> (H, lq, lk)` float tile (see `attnzoo.functional`)
ScoreBias = Callable[[Tensor, Tensor], Tensor]


def _check_positions(name: str, positions: object, length: int | None = None, ndim: tuple[int, ...] = (1, 2)) -> Tensor:
    """An integer tensor of rank in `ndim` whose last size is `length` (if given)."""
    if not isinstance(positions, Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(positions).__name__}")
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {positions.dtype}")
    if positions.dim() not in ndim or (length is not None and positions.size(-1) != length):
        want = " or ".join({1: "(L,)", 2: "(B, L)"}[n] for n in ndim)
        at = f" with L = {length}" if length is not None else ""
        raise ValueError(f"{name} must have shape {want}{at}, got {tuple(positions.shape)}")
    return positions


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE): rotate queries and keys by their positions.

    Feature pairs `(a, b)` of a head are rotated by the angle `p θ_i` at position `p`,
    `θ_i = base^(-2i/d)` for pair `i` of `d = rotary_dim` features. Pairs are `(j, j + d/2)`
    by default (GPT-NeoX, Llama: `rotate_half`), `(2j, 2j + 1)` with `interleaved=True`
    (GPT-J, the paper's layout). Only the first `rotary_dim` features of a head are rotated
    (GPT-NeoX's `rotary_pct`, Phi's `partial_rotary_factor`); the rest pass unchanged.

    `scaling` extends the context of a trained model, as `transformers`' `rope_scaling`
    (`rope_parameters`) dict, with key `"rope_type"` (or `"type"`):

    * `{"rope_type": "linear", "factor": s}`: position interpolation, `θ_i / s`.
    * `{"rope_type": "dynamic", "factor": s}`: dynamic NTK. With `L` = largest position + 1
      of the call, the table is the plain one while `L <= max_position_embeddings`; beyond,
      the base grows to `base (s L / max_position_embeddings - s + 1)^(d / (d - 2))`.
      Stateless: `transformers` keeps the largest table it has seen until a call shorter
      than `max_position_embeddings` comes. (Keys in a cache keep the table they were
      rotated with, in `transformers` as here.)
    * `{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
      "original_max_position_embeddings"}`: wavelengths shorter than `original / high` kept,
      longer than `original / low` divided by `factor`, the band between blended.
    * `{"rope_type": "yarn", "factor", "original_max_position_embeddings", "beta_fast"=32,
      "beta_slow"=1, "attention_factor", "mscale", "mscale_all_dim", "truncate"=True}`:
      NTK-by-parts with a linear ramp between pair indices `floor(low)` and `ceil(high)`,
      and cos and sin multiplied by the attention factor (default `0.1 ln s + 1`).

    `max_position_embeddings` (default 2048) is the training length: dynamic NTK's
    threshold and the default of `original_max_position_embeddings`, as in `transformers`.
    Tables are computed on demand (they cost `O(L rotary_dim)`, nothing next to attention):
    in float64 for float64 inputs (exact), otherwise in float32 and then cast to the
    input's dtype, as `transformers` does. `inv_freq` is a non-persistent float32 buffer
    (for dynamic NTK, the table up to `max_position_embeddings`) that follows `.to(device)`.
    `torch.compile`, `torch.export` and `torch.jit.trace` see the same computation (dynamic
    NTK picks its table with `torch.where`, no host sync); under FX symbolic tracing `q` is
    taken as `(B, H, L, hs)` and the tables are float32.

    >>> import torch, attnzoo as az
    >>> rope = az.RotaryEmbedding(64)
    >>> q, k = torch.randn(2, 4, 10, 64), torch.randn(2, 4, 10, 64)  # (B, H, L, hs)
    >>> q, k = rope(q, k)  # positions 0 .. 9
    """

    def __init__(
        self,
        head_dim: int,
        *,
        base: float = 10000.0,
        rotary_dim: int | None = None,
        interleaved: bool = False,
        scaling: Mapping[str, Any] | None = None,
        max_position_embeddings: int = 2048,
    ) -> None:
        super().__init__()
        check_positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (features are rotated in pairs), got {head_dim}")
        rotary_dim = head_dim if rotary_dim is None else check_positive_int("rotary_dim", rotary_dim)
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim must be even and at most head_dim={head_dim}, got {rotary_dim}")
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            raise TypeError(f"base must be a float, got {type(base).__name__}")
        if not (base > 1 and math.isfinite(base)):
            raise ValueError(f"base must be a finite number > 1, got {base}")
        if not isinstance(interleaved, bool):
            raise TypeError(f"interleaved must be a bool, got {type(interleaved).__name__}")
        check_positive_int("max_position_embeddings", max_position_embeddings)
        self.head_dim, self.rotary_dim, self.base = head_dim, rotary_dim, float(base)
        self.interleaved, self.max_position_embeddings = interleaved, max_position_embeddings
        self.scaling = parse_scaling(scaling, max_position_embeddings)
        if self.scaling["rope_type"] == "dynamic" and rotary_dim < 4:
            raise ValueError(f"rotary_dim must be at least 4 for dynamic scaling, got {rotary_dim}")
        self.attention_factor = attention_factor(self.scaling)
        self.register_buffer("inv_freq", self._inv_freq(torch.float32, None, None), persistent=False)

    def _inv_freq(self, dtype: torch.dtype, device: torch.device | None, seq_len: Tensor | None) -> Tensor:
        return inv_freq(self.scaling, self.rotary_dim, self.base, self.max_position_embeddings, dtype, device, seq_len)

    def extra_repr(self) -> str:
        kind = self.scaling["rope_type"]
        return (f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base:g}, "
                f"interleaved={self.interleaved}" + ("" if kind == "default" else f", scaling={kind!r}"))

    def cos_sin(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """The tables `cos(p θ)` and `sin(p θ)`, each `(*positions.shape, rotary_dim)`.

        Laid out as the features they multiply: `[θ_0 .. θ_{d/2-1}, θ_0 .. θ_{d/2-1}]` by
        default, `[θ_0, θ_0, θ_1, θ_1, ...]` interleaved; times YaRN's attention factor.
        Computed in float64 if `dtype` is float64, else in float32, then cast to `dtype`.
        """
        if not is_tracing(positions):
            _check_positions("positions", positions)
        cos, sin = self._cos_sin(positions, torch.float64 if dtype == torch.float64 else torch.float32)
        return cos.to(dtype), sin.to(dtype)

    def _cos_sin(self, positions: Tensor, work: torch.dtype) -> tuple[Tensor, Tensor]:
        seq_len = None  # dynamic NTK: a tensor, compared on the device (no sync, exportable)
        if self.scaling["rope_type"] == "dynamic" and (is_tracing(positions) or positions.numel()):
            seq_len = positions.max() + 1
        if work == torch.float32 and seq_len is None and self.inv_freq.dtype == torch.float32:
            theta = self.inv_freq  # the buffer, unless a module.half() / .double() has cast it
        else:
            theta = self._inv_freq(work, positions.device, seq_len)
        angles = positions.to(work)[..., None] * theta.to(positions.device)  # (*P, d/2)
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1)  # (*P, d)
        else:
            angles = torch.cat((angles, angles), dim=-1)  # (*P, d)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos, sin

    def _tables(self, x: Tensor, positions: Tensor | None, name: str = "x") -> tuple[Tensor, Tensor]:
        """Check `x` (called `name`) and `positions`; cos and sin that broadcast against `x[..., :d]`.

        The checks are skipped while traced (see `attnzoo._checks.is_tracing`). Under FX the
        dtype and rank of `x` are unknown: `x` is taken as `(B, H, L, hs)`, tables as float32."""
        if positions is None:
            positions = torch.arange(x.size(-2), device=x.device)
        if isinstance(x, torch.fx.Proxy):
            cos, sin = self._cos_sin(positions.to(x.device), torch.float32)  # (L, d) or (B, L, d)
            return cos.to(x.dtype).unsqueeze(-3), sin.to(x.dtype).unsqueeze(-3)  # (1 or B, 1, L, d)
        if not is_tracing(x):
            check_tensor(name, x)
            if x.dim() < 2 or x.size(-1) != self.head_dim:
                raise ValueError(f"{name} must be (B, H, L, {self.head_dim}) (last size head_dim), "
                                 f"got {tuple(x.shape)}")
            _check_positions("positions", positions, x.size(-2))
            if positions.dim() == 2 and (x.dim() != 4 or positions.size(0) not in (1, x.size(0))):
                raise ValueError(f"positions (B, L) needs {name} of shape (B, H, L, hs) with the same B, got "
                                 f"positions {tuple(positions.shape)} and {name} {tuple(x.shape)}")
        cos, sin = self.cos_sin(positions.to(x.device), x.dtype)  # (L, d) or (B, L, d)
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, d)
        return cos, sin

    def _turn(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        d = self.rotary_dim
        part, rest = x[..., :d], x[..., d:]
        if self.interleaved:
            pairs = part.unflatten(-1, (d // 2, 2))  # (..., L, d/2, 2)
            turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., L, d)
        else:
            turned = torch.cat((-part[..., d // 2:], part[..., : d // 2]), dim=-1)  # (..., L, d)
        out = part * cos + turned * sin
        return out if d == self.head_dim else torch.cat((out, rest), dim=-1)

    def rotate(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Rotate `x` `(B, H, L, hs)` at `positions` `(L,)` or `(B, L)` (default `0 .. L-1`).

        With `(L,)` positions any `(*, L, hs)` works. Returns a new tensor of `x`'s shape and
        dtype; `x` is not modified.
        """
        return self._turn(x, *self._tables(x, positions))

    def forward(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rotate queries and keys `(B, H, L, hs)` (heads may differ: grouped keys) at the same
        `positions` `(L,)` or `(B, L)`; the tables are built once. Call `rotate` twice when they
        sit at different positions (keys of a cache)."""
        cos, sin = self._tables(q, positions, "q")
        if isinstance(k, torch.fx.Proxy):
            separate = False
        elif is_tracing(k):
            separate = k.dtype != q.dtype or k.device != q.device
        else:
            check_tensor("k", k)
            same = k.dim() == q.dim() and k.shape[0] == q.shape[0] and k.shape[-2:] == q.shape[-2:]
            separate = not same or k.dtype != q.dtype or k.device != q.device
        if separate:  # k checked on its own, tables in its dtype
            return self._turn(q, cos, sin), self._turn(k, *self._tables(k, positions, "k"))
        return self._turn(q, cos, sin), self._turn(k, cos, sin)


def alibi_slopes(
    num_heads: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """ALiBi's head slopes `(H,)`: `2^(-8h/n)`, `h = 1 .. n`, for `n = H` a power of two.

    Otherwise (BLOOM's rule, the paper's recipe): the `n` slopes of the largest power of
    two `n < H`, then the odd-numbered slopes of `2n` heads, `2^(-4(2j-1)/n)`, for the
    `H - n` heads left. Computed in float64 and cast to `dtype`.
    """
    check_positive_int("num_heads", num_heads)
    n = 2 ** int(math.floor(math.log2(num_heads)))
    h = torch.arange(1, n + 1, dtype=torch.float64, device=device)  # (n,)
    j = torch.arange(1, num_heads - n + 1, dtype=torch.float64, device=device)  # (H - n,)
    return torch.cat((2.0 ** (-8.0 * h / n), 2.0 ** (-4.0 * (2 * j - 1) / n))).to(dtype)  # (H,)


def alibi_bias(slopes: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
    """ALiBi's bias block `(H, Lq, Lk)`: `slopes[h] * (k_positions[j] - q_positions[i])`.

    `q_positions` `(Lq,)` and `k_positions` `(Lk,)` are integer indices (one block of the
    full matrix); the result has `slopes`' dtype and device. It is `-m (i - j) ≤ 0` for the
    keys a causal query sees. BLOOM adds `m j` instead, which differs by a constant per row
    and so gives the same softmax.
    """
    if not any(is_tracing(t) for t in (slopes, q_positions, k_positions)):
        check_tensor("slopes", slopes, 1)
        _check_positions("q_positions", q_positions, ndim=(1,))
        _check_positions("k_positions", k_positions, ndim=(1,))
    distance = k_positions.to(slopes.device)[None, :] - q_positions.to(slopes.device)[:, None]  # (Lq, Lk)
    return slopes[:, None, None] * distance.to(slopes.dtype)  # (H, Lq, Lk)


def alibi_score_bias(slopes: Tensor) -> ScoreBias:
    """ALiBi as a `score_bias` for `attnzoo.functional.scaled_dot_product_attention`.

    The returned callable maps index tiles `q_idx (lq, 1)`, `kv_idx (1, lk)` to
    `slopes[h] * (kv_idx - q_idx)`, a `(H, lq, lk)` tile in `slopes`' dtype: the blocks of
    `alibi_bias` over the positions `0 .. L-1`, `0 .. S-1`, without the `(H, L, S)` tensor.
    """
    check_tensor("slopes", slopes, 1)
    column = slopes.view(-1, 1, 1)  # (H, 1, 1)

    def bias(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        distance = kv_idx.to(slopes.device) - q_idx.to(slopes.device)  # (lq, lk)
        return column * distance.to(slopes.dtype)  # (H, lq, lk)

    bias.relative = True  # type: ignore[attr-defined]  # a function of kv_idx - q_idx alone
    return bias


class RelativePositionBias(nn.Module):
    """T5's learned relative position bias: one scalar per head and distance bucket.

    The distance `j - i` (key minus query index) falls in one of `num_buckets` buckets:
    exact buckets for `|j - i| < num_buckets / 4` (bidirectional: half the buckets per
    sign) or `< num_buckets / 2` (not bidirectional: only keys at or before the query,
    later ones share bucket 0), then logarithmically wider ones up to `max_distance`,
    beyond which all distances share the last bucket. The logarithm is taken in float32,
    as in Mesh TensorFlow and `transformers`, so the buckets (and pretrained T5 weights)
    line up with theirs. The table `relative_attention_bias` is an
    `nn.Embedding(num_buckets, num_heads)` named as in T5, so its weights load unchanged.
    It starts as `nn.Embedding` does, N(0, 1).
    """

    def __init__(self, num_heads: int, *, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:
        super().__init__()
        check_positive_int("num_heads", num_heads)
        check_positive_int("num_buckets", num_buckets)
        check_positive_int("max_distance", max_distance)
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be a bool, got {type(bidirectional).__name__}")
        per_side = num_buckets // 2 if bidirectional else num_buckets
        if per_side < 2:
            need = 4 if bidirectional else 2
            raise ValueError(f"num_buckets must be at least {need} (bidirectional={bidirectional}), got {num_buckets}")
        if max_distance <= per_side // 2:
            raise ValueError(f"max_distance must exceed the exact range {per_side // 2}, got {max_distance}")
        self.num_heads, self.num_buckets = num_heads, num_buckets
        self.max_distance, self.bidirectional = max_distance, bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
                f"max_distance={self.max_distance}, bidirectional={self.bidirectional}")

    def buckets(self, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        """Bucket of every (query, key) pair: long `(Lq, Lk)` from indices `(Lq,)`, `(Lk,)`."""
        if not (is_tracing(q_idx) or is_tracing(kv_idx)):
            _check_positions("q_idx", q_idx, ndim=(1,))
            _check_positions("kv_idx", kv_idx, ndim=(1,))
        distance = kv_idx.to(torch.long)[None, :] - q_idx.to(kv_idx.device, torch.long)[:, None]  # (Lq, Lk)
        if self.bidirectional:
            per_side = self.num_buckets // 2
            offset = (distance > 0).long() * per_side
            distance = distance.abs()
        else:
            per_side = self.num_buckets
            offset = torch.zeros_like(distance)
            distance = (-distance).clamp(min=0)
        exact = per_side // 2
        # log-spaced buckets for exact <= distance; the clamp keeps log away from 0 where unused
        spread = torch.log(distance.clamp(min=exact).float() / exact) / math.log(self.max_distance / exact)
        far = (exact + (spread * (per_side - exact)).long()).clamp(max=per_side - 1)
        return offset + torch.where(distance < exact, distance, far)

    def forward(self, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        """The bias `(H, Lq, Lk)` for query indices `(Lq,)` and key indices `(Lk,)`."""
        bucket = self.buckets(q_idx, kv_idx).to(self.relative_attention_bias.weight.device)  # (Lq, Lk)
        return self.relative_attention_bias(bucket).permute(2, 0, 1)  # (H, Lq, Lk)

    def score_bias(self) -> ScoreBias:
        """This bias as a `score_bias` for `attnzoo.functional.scaled_dot_product_attention`:
        index tiles `q_idx (lq, 1)`, `kv_idx (1, lk)` -> `(H, lq, lk)`, one block of `forward`
        at a time (gradients reach the table)."""

        def bias(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return self(q_idx.reshape(-1), kv_idx.reshape(-1))  # (H, lq, lk)

        bias.relative = True  # type: ignore[attr-defined]  # a function of kv_idx - q_idx alone
        return bias
