"""Transformer encoder/decoder layers on attnzoo attention, and a small seq2seq model.

The layers are drop-ins for ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``:
same submodule names (state dicts load both ways), same mask names and polarity:

* ``*_key_padding_mask`` (B, S): bool True = padding, ignored; float = added to the scores.
* ``src_mask`` / ``tgt_mask`` / ``memory_mask`` (L, S) or (B·nhead, L, S): bool True =
  NOT allowed to attend; float = added.
* ``is_causal`` / ``tgt_is_causal`` APPLY a causal mask (query i sees keys 0..i), alone or
  on top of a given mask; in torch they are only hints about the mask passed.

Differences from torch (a torch state dict loads silently, so mind them; ``from_torch``
copies a torch layer's configuration exactly):

* ``norm_first=True`` (pre-norm) by default; torch: False (post-norm).
* ``batch_first=True`` by default; torch: False (length first).
* the decoder's ``tgt_is_causal=True`` by default (pass ``tgt_is_causal=False`` to use
  ``tgt_mask`` alone); torch: False, and its ``tgt_mask`` is needed for causality.
* ``is_causal``/``tgt_is_causal``/``memory_is_causal`` apply a causal mask; torch treats
  them as hints that the given mask is causal.
* query rows that may attend to nothing give zeros instead of NaN.

The layers work inside torch's own machinery: autocast, ``torch.compile``,
``torch.fx.symbolic_trace``, ``torch.jit.trace``, ``torch.export`` and ONNX export;
``torch.jit.script`` raises one error naming those instead.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_dropout, check_positive_int, check_tensor, holds_no_values
from ._decode_graph import GraphedStep, graph_blocker
from .attention import MultiHeadAttention, is_fx_symbolic_tracing
from .kvcache import DecodeState, KVCache, MemoryKV, attend_cached, attend_memory, project_memory

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "Seq2SeqTransformer"]

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}
Activation = str | Callable[[Tensor], Tensor]


class _Layer(nn.Module):
    """What both layers share: argument checks, feed-forward block, norms and dropouts."""

    _torch_class: type[nn.Module]  # the torch layer this one mirrors (for from_torch)

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, norm_first: bool,
                 activation: Activation, layer_norm_eps: float, bias: bool, n_blocks: int, factory: dict) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("nhead", nhead)
        check_positive_int("dim_feedforward", dim_feedforward)
        check_dropout("dropout", dropout)
        if d_model % nhead:
            raise ValueError(f"d_model must be divisible by nhead, got d_model={d_model}, nhead={nhead}")
        if isinstance(activation, str) and activation in _ACTIVATIONS:
            activation = _ACTIVATIONS[activation]
        elif not callable(activation):
            raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {activation!r}")
        self.norm_first, self.activation = bool(norm_first), activation
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        for i in range(1, n_blocks + 1):  # norm1, dropout1, norm2, dropout2, ... as torch
            self.add_module(f"norm{i}", nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory))
            self.add_module(f"dropout{i}", nn.Dropout(dropout))
        self._attn_kw = {"dropout": dropout, "bias": bias, **factory}
        self._ff_dropout = f"dropout{n_blocks}"  # the feed-forward block's output dropout, as torch

    @classmethod
    def from_torch(cls, layer: nn.Module) -> _Layer:
        """The exact copy of torch's layer: weights, ``batch_first``, ``norm_first``, activation,
        ``layer_norm_eps``, dropout, bias, device, dtype and training mode.

        The call conventions still differ (see the module docstring): the decoder's
        ``tgt_is_causal`` defaults to True here (pass ``tgt_is_causal=False`` for torch's
        unmasked default), and ``is_causal`` applies a causal mask rather than hinting one.
        """
        kind = cls._torch_class
        if not isinstance(layer, kind):
            raise TypeError(f"layer must be a torch.nn.{kind.__name__}, got {type(layer).__name__}")
        attn = layer.self_attn
        if not isinstance(attn, nn.MultiheadAttention) or attn.bias_k is not None or attn.add_zero_attn:
            raise ValueError("layer.self_attn must be a plain nn.MultiheadAttention (no add_bias_kv/add_zero_attn)")
        w = layer.linear1.weight
        new = cls(
            attn.embed_dim, attn.num_heads, layer.linear1.out_features, layer.dropout.p,
            norm_first=layer.norm_first, activation=layer.activation, layer_norm_eps=layer.norm1.eps,
            batch_first=attn.batch_first, bias=layer.linear1.bias is not None, device=w.device, dtype=w.dtype,
        )
        new.load_state_dict(layer.state_dict())
        return new.train(layer.training)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.dropout(self.activation(self.linear1(x)))  # (B, T, dim_feedforward)
        return getattr(self, self._ff_dropout)(self.linear2(x))

    def _residual(self, x: Tensor, *blocks: Callable[[Tensor], Tensor]) -> Tensor:
        """x + block(norm(x)) for each block (pre-norm), or norm(x + block(x)) (post-norm)."""
        norms = (self.norm1, self.norm2, self.norm3) if len(blocks) == 3 else (self.norm1, self.norm2)
        for block, norm in zip(blocks, norms):
            x = x + block(norm(x)) if self.norm_first else norm(x + block(x))
        return x


class TransformerEncoderLayer(_Layer):
    """Self-attention then feed-forward, each a residual block; pre-norm unless ``norm_first=False``.

    ``src`` (B, S, E) -> (B, S, E); with ``batch_first=False`` (S, B, E); unbatched (S, E).
    Defaults differ from ``nn.TransformerEncoderLayer``: ``norm_first=True``,
    ``batch_first=True``; ``is_causal=True`` applies a causal mask.
    """

    _torch_class = nn.TransformerEncoderLayer

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1, *,
        norm_first: bool = True, activation: Activation = "relu", layer_norm_eps: float = 1e-5,
        batch_first: bool = True, bias: bool = True,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, nhead, dim_feedforward, dropout, norm_first, activation, layer_norm_eps,
                         bias, 2, {"device": device, "dtype": dtype})
        self.self_attn = MultiHeadAttention(d_model, nhead, batch_first=batch_first, **self._attn_kw)

    def forward(self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        """Masks as ``nn.TransformerEncoderLayer``: True = blocked / padding (see module doc)."""
        if not is_fx_symbolic_tracing():  # FX Proxies carry no type or shape to check
            check_tensor("src", src, ndim=(2, 3))

        def self_attn(h: Tensor) -> Tensor:
            h, _ = self.self_attn(h, attn_mask=src_mask, key_padding_mask=src_key_padding_mask, is_causal=is_causal)
            return self.dropout1(h)

        return self._residual(src, self_attn, self._ff_block)


class TransformerDecoderLayer(_Layer):
    """Causal self-attention, cross-attention over the encoder memory, then feed-forward.

    ``tgt`` (B, T, E), ``memory`` (B, S, E) -> (B, T, E) (``batch_first=False``: length first).
    Token-by-token decoding: `precompute_memory` once, then `forward_step`.
    Defaults differ from ``nn.TransformerDecoderLayer``: ``norm_first=True``,
    ``batch_first=True``, and ``forward(..., tgt_is_causal=True)`` applies a causal mask.
    """

    _torch_class = nn.TransformerDecoderLayer

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1, *,
        norm_first: bool = True, activation: Activation = "relu", layer_norm_eps: float = 1e-5,
        batch_first: bool = True, bias: bool = True,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, nhead, dim_feedforward, dropout, norm_first, activation, layer_norm_eps,
                         bias, 3, {"device": device, "dtype": dtype})
        self.self_attn = MultiHeadAttention(d_model, nhead, batch_first=batch_first, **self._attn_kw)
        self.multihead_attn = MultiHeadAttention(d_model, nhead, batch_first=batch_first, **self._attn_kw)

    def forward(
        self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = True, memory_is_causal: bool = False,
    ) -> Tensor:
        """Masks as ``nn.TransformerDecoderLayer``: True = blocked / padding (see module doc).

        ``tgt_is_causal=True`` (default) hides later target tokens with no ``tgt_mask``
        needed; a given ``tgt_mask`` is applied on top.
        """
        if not is_fx_symbolic_tracing():  # FX Proxies carry no type or shape to check
            check_tensor("tgt", tgt, ndim=(2, 3))
            check_tensor("memory", memory, ndim=tgt.dim())

        def self_attn(h: Tensor) -> Tensor:
            h, _ = self.self_attn(h, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask, is_causal=tgt_is_causal)
            return self.dropout1(h)

        def cross_attn(h: Tensor) -> Tensor:
            h, _ = self.multihead_attn(h, memory, attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask,
                                       is_causal=memory_is_causal)
            return self.dropout2(h)

        return self._residual(tgt, self_attn, cross_attn, self._ff_block)

    # ---------------------------------------------------------------- incremental decoding
    def precompute_memory(self, memory: Tensor, memory_key_padding_mask: Tensor | None = None) -> MemoryKV:
        """Cross-attention keys/values of ``memory`` (B, S, E), projected once; see `project_memory`."""
        return project_memory(self.multihead_attn, memory, memory_key_padding_mask)

    def forward_step(self, x: Tensor, memory_kv: MemoryKV, cache: KVCache, pos: int | Tensor) -> Tensor:
        """Decode the target tokens at positions ``pos .. pos+T-1``, all earlier ones cached.

        ``x`` (B, T, E) (usually T = 1; always batch-first) -> (B, T, E): rows ``pos..pos+T-1``
        of `forward` on the whole prefix (causal self-attention, no ``tgt_mask``). Only
        the new tokens are projected; their keys/values are written into ``cache`` at ``pos``
        and attention runs over the cached prefix. No validation: this runs every step.
        ``pos`` may be a (1,) long tensor (T = 1): the static-shape step of ``attend_cached``.
        """

        def self_attn(h: Tensor) -> Tensor:  # (B, T, E), keys/values from the cache
            return self.dropout1(attend_cached(self.self_attn, h, cache, pos))

        def cross_attn(h: Tensor) -> Tensor:  # (B, T, E), memory keys/values precomputed
            return self.dropout2(attend_memory(self.multihead_attn, h, memory_kv))

        return self._residual(x, self_attn, cross_attn, self._ff_block)


class Seq2SeqTransformer(nn.Module):
    """A small pre-norm encoder-decoder Transformer over token ids, with cached greedy decoding.

    Token embeddings (init N(0, 1/d_model), scaled by sqrt(d_model)) plus FIXED sinusoidal
    positional encodings (a non-persistent buffer of ``max_len`` rows: nothing to learn,
    nothing in the state dict); encoder stack + final norm; decoder stack + final norm;
    a linear output layer ``lm_head``. ``pad_id`` tokens are padding in ``src`` and ``tgt``.
    """

    def __init__(
        self, src_vocab: int, tgt_vocab: int, d_model: int = 128, nhead: int = 4, num_encoder_layers: int = 2,
        num_decoder_layers: int = 2, dim_feedforward: int = 512, dropout: float = 0.1, max_len: int = 128,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        for name, n in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab), ("num_encoder_layers", num_encoder_layers),
                        ("num_decoder_layers", num_decoder_layers), ("max_len", max_len)):
            check_positive_int(name, n)
        self.src_vocab, self.tgt_vocab, self.max_len = src_vocab, tgt_vocab, max_len
        self.pad_id = _check_id("pad_id", pad_id, min(src_vocab, tgt_vocab))
        layer_args = (d_model, nhead, dim_feedforward, dropout)
        self.encoder_layers = nn.ModuleList(TransformerEncoderLayer(*layer_args) for _ in range(num_encoder_layers))
        self.decoder_layers = nn.ModuleList(TransformerDecoderLayer(*layer_args) for _ in range(num_decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.src_emb = nn.Embedding(src_vocab, d_model, padding_idx=pad_id)
        self.tgt_emb = nn.Embedding(tgt_vocab, d_model, padding_idx=pad_id)
        with torch.no_grad():
            for emb in (self.src_emb, self.tgt_emb):
                nn.init.normal_(emb.weight, std=d_model**-0.5)
                emb.weight[pad_id].zero_()
        self.emb_scale = math.sqrt(d_model)
        self.register_buffer("pos_enc", _sinusoidal(max_len, d_model), persistent=False)  # (max_len, E)
        self.emb_dropout = nn.Dropout(dropout)
        self.lm_head = nn.Linear(d_model, tgt_vocab)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """``src`` (B, S), ``tgt`` (B, T) long -> logits (B, T, tgt_vocab); ``tgt`` is causal."""
        tgt = self._check_tokens("tgt", tgt, self.tgt_vocab)
        memory, src_pad = self.encode(src)
        if tgt.size(0) != memory.size(0):
            raise ValueError(f"src and tgt must have the same batch size, got {memory.size(0)} and {tgt.size(0)}")
        h = self._decode(tgt, memory, src_pad, tgt == self.pad_id)  # (B, T, E)
        return self.lm_head(self.decoder_norm(h))  # (B, T, tgt_vocab)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """``src`` (B, S) long -> (memory (B, S, E), src_padding_mask (B, S) bool, True = padding)."""
        src = self._check_tokens("src", src, self.src_vocab)
        pad = src == self.pad_id  # (B, S)
        x = self._embed(self.src_emb, src, 0)  # (B, S, E)
        for layer in self.encoder_layers:
            x = layer(x, src_key_padding_mask=pad)
        return self.encoder_norm(x), pad

    def init_decode_state(self, memory: Tensor, src_padding_mask: Tensor | None, max_steps: int) -> DecodeState:
        """Caches for `decode_step`: memory keys/values per layer, and empty self-attention
        caches of ``max_steps`` positions (B, Hkv, max_steps, hs) per layer."""
        if check_positive_int("max_steps", max_steps) > self.max_len:
            raise ValueError(f"max_steps must be at most max_len={self.max_len}, got {max_steps}")
        if src_padding_mask is not None and src_padding_mask.dtype == torch.bool and not src_padding_mask.any():
            src_padding_mask = None  # nothing to hide: attention takes its unmasked fast path
        memory_kv = [layer.precompute_memory(memory, src_padding_mask) for layer in self.decoder_layers]
        caches = [KVCache(memory.size(0), layer.self_attn.num_kv_heads, max_steps, layer.self_attn.head_dim,
                          device=memory.device, dtype=memory.dtype) for layer in self.decoder_layers]
        return DecodeState(memory_kv, caches)

    def decode_step(self, tokens: Tensor, pos: int | Tensor, state: DecodeState) -> Tensor:
        """Target ``tokens`` (B, T) at positions ``pos..pos+T-1`` -> logits (B, T, tgt_vocab).

        Earlier positions must already be in ``state``; these are written to it. Unchecked.
        ``pos`` as a (1,) long tensor (T = 1) gives the static-shape step that
        `GraphedStep` captures on CUDA.
        """
        x = self._embed(self.tgt_emb, tokens, pos)  # (B, T, E)
        for layer, memory_kv, cache in zip(self.decoder_layers, state.memory_kv, state.caches):
            x = layer.forward_step(x, memory_kv, cache, pos)
        return self.lm_head(self.decoder_norm(x))  # (B, T, tgt_vocab)

    @torch.inference_mode()
    def generate(self, src: Tensor, max_new_tokens: int, bos_id: int, eos_id: int, *, use_cache: bool = True) -> Tensor:
        """Greedy decoding: ``src`` (B, S) long -> tokens (B, n), n <= ``max_new_tokens``.

        The output excludes ``bos_id``; after a row's ``eos_id`` it holds ``pad_id``; decoding
        stops once every row has produced ``eos_id``. ``pad_id`` is never generated as a token
        (unless it is ``eos_id``). ``use_cache=True`` projects one new token per step and
        attends over cached keys/values; ``use_cache=False`` re-runs the decoder on the whole
        prefix every step (same tokens, much slower). Runs in eval mode, then restores it.
        """
        check_positive_int("max_new_tokens", max_new_tokens)
        if max_new_tokens + 1 > self.max_len:
            raise ValueError(
                f"max_new_tokens + 1 (for bos) must be at most max_len={self.max_len}, got {max_new_tokens}")
        _check_id("bos_id", bos_id, self.tgt_vocab)
        _check_id("eos_id", eos_id, self.tgt_vocab)
        if bos_id == self.pad_id:
            raise ValueError(f"bos_id must differ from pad_id={self.pad_id} (padding is masked in the target)")
        self._check_real(src)
        was_training = self.training
        self.eval()
        try:
            return self._greedy(src, max_new_tokens, bos_id, eos_id, use_cache)
        finally:
            self.train(was_training)

    def _greedy(self, src: Tensor, max_new_tokens: int, bos_id: int, eos_id: int, use_cache: bool) -> Tensor:
        memory, src_pad = self.encode(src)  # (B, S, E), (B, S)
        B, pad = memory.size(0), self.pad_id
        seq = torch.full((B, max_new_tokens + 1), pad, dtype=torch.long, device=memory.device)  # bos + output
        seq[:, 0] = bos_id
        done = torch.zeros(B, dtype=torch.bool, device=memory.device)
        if use_cache:
            step = self._cached_step(self.init_decode_state(memory, src_pad, max_new_tokens), B, memory.device)
        else:
            src_pad = src_pad if src_pad.any() else None
        for t in range(max_new_tokens):
            if use_cache:  # feed only the newest token
                logits = step(seq[:, t : t + 1], t)  # (B, V)
            else:  # re-run the decoder over the whole prefix, keep the last position
                h = self._decode(seq[:, : t + 1], memory, src_pad, None)[:, -1]  # (B, E)
                logits = self.lm_head(self.decoder_norm(h))  # (B, V)
            if pad != eos_id:
                logits[:, pad] = float("-inf")
            nxt = logits.argmax(dim=-1).masked_fill_(done, pad)  # (B,)
            seq[:, t + 1] = nxt
            done |= nxt == eos_id
            if done.all():  # the one host sync per step
                break
        return seq[:, 1 : t + 2]

    def _cached_step(self, state: DecodeState, B: int, device: torch.device) -> Callable[[Tensor, int], Tensor]:
        """``step(tokens (B, 1), t) -> logits (B, V)``: a captured CUDA graph where allowed
        (see `graph_blocker`), else the eager cached step."""

        def eager(tokens: Tensor, t: int) -> Tensor:
            return self.decode_step(tokens, t, state)[:, -1]

        if graph_blocker(self, device) is not None:
            return eager
        try:
            return GraphedStep(lambda tokens, pos: self.decode_step(tokens, pos, state)[:, -1], B, device)
        except Exception:  # capture unsupported here: decode eagerly (slot 0 is rewritten by step 0)
            return eager

    def _embed(self, emb: nn.Embedding, tokens: Tensor, start: int | Tensor) -> Tensor:
        if isinstance(start, Tensor):  # (1,) position tensor: the static-shape step
            pos = self.pos_enc.index_select(0, start)  # (1, E)
        else:
            pos = self.pos_enc[start : start + tokens.size(1)]  # (T, E)
        return self.emb_dropout(emb(tokens) * self.emb_scale + pos)  # (B, T, E)

    def _decode(self, tgt: Tensor, memory: Tensor, memory_pad: Tensor | None, tgt_pad: Tensor | None) -> Tensor:
        x = self._embed(self.tgt_emb, tgt, 0)  # (B, T, E)
        for layer in self.decoder_layers:  # causal self-attention (tgt_is_causal=True)
            x = layer(x, memory, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=memory_pad)
        return x  # (B, T, E), before the final norm

    def _check_real(self, src: object) -> None:
        """generate reads token values: refuse meta tensors and a model on another device."""
        if not isinstance(src, Tensor):
            return  # _check_tokens names the type
        if src.is_meta:
            raise ValueError("src is on the meta device, which holds no values; generate reads the tokens it "
                             "produces (argmax, eos_id), so src and the model must be real tensors")
        p = next(self.parameters())
        if p.device != src.device:
            raise ValueError(f"src is on device {src.device} but the {type(self).__name__}'s parameters are on "
                             f"{p.device}; move the model or src (src.to(device)); a model on the meta device "
                             "needs real weights first (to_empty + load_state_dict)")

    def _check_tokens(self, name: str, x: object, vocab: int) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype != torch.long:
            raise TypeError(f"{name} must be a LongTensor of token ids, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 2 or 0 in x.shape or x.size(1) > self.max_len:
            raise ValueError(f"{name} must have shape (B, length), 1 <= length <= max_len={self.max_len}, "
                             f"got {tuple(x.shape)}")
        if holds_no_values(x):  # meta, fake or traced: the ids cannot be read
            return x
        bad = (x < 0) | (x >= vocab)
        if bad.any():
            raise ValueError(f"{name} token ids must be in [0, {vocab}), got {x[bad][0].item()}")
        return x


def _check_id(name: str, i: object, vocab: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise TypeError(f"{name} must be an int, got {type(i).__name__}")
    if not 0 <= i < vocab:
        raise ValueError(f"{name} must be in [0, {vocab}), got {i}")
    return i


def _sinusoidal(max_len: int, d_model: int) -> Tensor:
    """Fixed positional encodings (max_len, d_model): sin on even features, cos on odd."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)  # (max_len, ceil(E/2))
    pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])  # (max_len, E/2)
    return pe.to(torch.get_default_dtype())
