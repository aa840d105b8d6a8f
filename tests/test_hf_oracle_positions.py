"""Model-level oracle: transformers' own eager attention layers against attnzoo's
`scaled_dot_product_attention` with the mask written as attnzoo arguments.

For Llama (GQA 4:2, RoPE with llama3 scaling), Mistral (sliding window 4 on 11 tokens) and
BLOOM (ALiBi), each with left padding: the layer's projections (and transformers' own
rotary embedding) give q, k, v; the test writes the mask itself (a dense bool (B, 1, L, S):
causal, window, padding; for BLOOM the ALiBi bias as a float `attn_mask`, -inf where hidden)
and checks attnzoo's output and weights equal the eager layer's on every query row that may
attend to something. Fully masked (padding) query rows are 0 in attnzoo. The masks
transformers builds for eager must hide exactly what the test's masks hide.
"""

from __future__ import annotations

import pytest
import torch

from attnzoo.functional import scaled_dot_product_attention

transformers = pytest.importorskip("transformers")
masking = pytest.importorskip("transformers.masking_utils")

pytestmark = pytest.mark.usefixtures("single_thread")

B, L, E, H, PAD, WINDOW = 2, 11, 32, 4, 3, 4
TOL = {"rtol": 0, "atol": 1e-5}  # float32: transformers' eager softmax runs in float32


def _padding() -> torch.Tensor:
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, :PAD] = 0  # left padding
    return mask


def _keep(padding: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(B, 1, L, S) bool, True = may attend: key j <= query i, within the window, not padding."""
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    keep = j <= i
    if window is not None:
        keep = keep & (i - j < window)
    return keep[None, None] & padding.bool()[:, None, None, :]  # (B, 1, L, S)


def _positions(padding: torch.Tensor) -> torch.Tensor:
    return (padding.cumsum(-1) - 1).clamp(min=0)  # (B, L): real tokens count from 0, as generate does


def _config(cls, **kw):
    cfg = cls(hidden_size=E, intermediate_size=48, num_hidden_layers=1, num_attention_heads=H, **kw)
    cfg._attn_implementation = "eager"
    return cfg


def _check(out, weights, ref_out, ref_weights, keep):
    rows = keep.any(-1)  # (B, 1, L): query rows that may attend to something
    assert not rows.all()  # the padding rows are there
    assert weights.shape == ref_weights.shape
    w_rows = rows.expand(B, ref_weights.size(1), L)  # (B, H, L)
    torch.testing.assert_close(weights[w_rows], ref_weights[w_rows], **TOL)
    assert torch.equal(weights[~w_rows], torch.zeros_like(weights[~w_rows]))
    assert torch.equal(weights.masked_select(~keep), torch.zeros_like(weights.masked_select(~keep)))
    o_rows = rows[:, 0]  # (B, L)
    torch.testing.assert_close(out[o_rows], ref_out[o_rows], **TOL)


def _transformers_hides(float_mask: torch.Tensor) -> torch.Tensor:
    return float_mask == torch.finfo(float_mask.dtype).min


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_rope_gqa_and_window_layers_equal_eager(family):
    torch.manual_seed(0)
    if family == "llama":
        mod = transformers.models.llama.modeling_llama
        cfg = _config(transformers.LlamaConfig, num_key_value_heads=2, max_position_embeddings=64, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 4})
        attn, rotary, window = mod.LlamaAttention(cfg, layer_idx=0), mod.LlamaRotaryEmbedding(cfg), None
        make_mask = masking.create_causal_mask
    else:
        mod = transformers.models.mistral.modeling_mistral
        cfg = _config(transformers.MistralConfig, num_key_value_heads=2, max_position_embeddings=64,
                      sliding_window=WINDOW)
        attn, rotary, window = mod.MistralAttention(cfg, layer_idx=0), mod.MistralRotaryEmbedding(cfg), WINDOW
        make_mask = masking.create_sliding_window_causal_mask
    attn.eval()
    hidden = torch.randn(B, L, E)
    padding = _padding()
    position_ids = _positions(padding)
    cos, sin = rotary(hidden, position_ids)
    eager_mask = make_mask(config=cfg, inputs_embeds=hidden, attention_mask=padding, cache=None,
                           position_ids=position_ids)
    keep = _keep(padding, window)
    assert torch.equal(_transformers_hides(eager_mask), ~keep)
    with torch.no_grad():
        ref_out, ref_weights = attn(hidden, position_embeddings=(cos, sin), attention_mask=eager_mask)
        hs = attn.head_dim
        q = attn.q_proj(hidden).view(B, L, -1, hs).transpose(1, 2)  # (B, H, L, hs)
        k = attn.k_proj(hidden).view(B, L, -1, hs).transpose(1, 2)  # (B, Hkv, L, hs)
        v = attn.v_proj(hidden).view(B, L, -1, hs).transpose(1, 2)  # (B, Hkv, L, hs)
        assert (q.size(1), k.size(1)) == (4, 2)
        q, k = mod.apply_rotary_pos_emb(q, k, cos, sin)
        out, weights = scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=attn.scaling, enable_gqa=True,
                                                    need_weights=True)
        out = attn.o_proj(out.transpose(1, 2).reshape(B, L, H * hs))  # (B, L, E)
    _check(out, weights, ref_out, ref_weights, keep)


def _alibi(padding: torch.Tensor) -> torch.Tensor:
    """(B, H, 1, S) ALiBi bias written from the paper: slope_h * (key position), H a power of 2."""
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)])  # (H,)
    return slopes[None, :, None, None] * _positions(padding)[:, None, None, :].float()  # (B, H, 1, S)


def test_bloom_alibi_layer_equals_eager():
    torch.manual_seed(0)
    mod = transformers.models.bloom.modeling_bloom
    cfg = transformers.BloomConfig(hidden_size=E, n_head=H, n_layer=1, vocab_size=64)
    cfg._attn_implementation = "eager"
    attn = mod.BloomAttention(cfg, layer_idx=0).eval()
    hidden, residual = torch.randn(B, L, E), torch.randn(B, L, E)
    padding = _padding()
    alibi = mod.build_alibi_tensor(padding, H, torch.float32)  # (B*H, 1, S), what BloomModel passes
    torch.testing.assert_close(alibi.view(B, H, 1, L)[padding.bool()[:, None, None, :].expand(B, H, 1, L)],
                               _alibi(padding)[padding.bool()[:, None, None, :].expand(B, H, 1, L)], rtol=0, atol=0)
    eager_mask = masking.create_causal_mask(config=cfg, inputs_embeds=hidden, attention_mask=padding, cache=None)
    keep = _keep(padding)
    assert torch.equal(_transformers_hides(eager_mask), ~keep)
    with torch.no_grad():
        ref_out, ref_weights = attn(hidden, residual, alibi=alibi, attention_mask=eager_mask)
        q, k, v = attn._reshape(attn.query_key_value(hidden))  # each (B, H, L, hs)
        bias = _alibi(padding).expand(B, H, L, L).masked_fill(~keep, float("-inf"))  # (B, H, L, S)
        out, weights = scaled_dot_product_attention(q, k, v, attn_mask=bias, need_weights=True)
        out = attn.dense(out.transpose(1, 2).reshape(B, L, E)) + residual  # (B, L, E)
    _check(out, weights, ref_out, ref_weights, keep)
