"""MultiHeadAttention with RoPE, ALiBi, the T5 bias and structured masks, against a float64
formula written here; the per-block score biases against the dense ones; errors."""

import math

import pytest
import torch

import attnzoo as az
from attnzoo import masks as M
from attnzoo.functional import scaled_dot_product_attention

D = torch.float64
E, H = 32, 4
hs = E // H


def rope_ref(x, pos, base=10000.0):
    """rotate_half RoPE, fresh: pairs (j, j + d/2) turned by pos · base^(-2j/d)."""
    d = x.size(-1)
    theta = base ** (-torch.arange(0, d, 2, dtype=D) / d)  # (d/2,)
    ang = pos.to(D)[:, None] * theta  # (L, d/2)
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat((-x2, x1), -1) * sin


def reference(mha, x, allowed, qpos, kpos):
    """out (B, L, E) and per-head weights (B, H, L, S) of self-attention, as the math."""
    B, L, _ = x.shape
    kvh = mha.num_kv_heads
    W, b = mha.in_proj_weight, mha.in_proj_bias
    q = (x @ W[:E].T + b[:E]).view(B, L, H, hs).transpose(1, 2)
    k = (x @ W[E:E + kvh * hs].T + b[E:E + kvh * hs]).view(B, L, kvh, hs).transpose(1, 2)
    v = (x @ W[E + kvh * hs:].T + b[E + kvh * hs:]).view(B, L, kvh, hs).transpose(1, 2)
    if mha.rotary is not None:
        q, k = rope_ref(q, qpos), rope_ref(k, kpos)
    k, v = k.repeat_interleave(H // kvh, 1), v.repeat_interleave(H // kvh, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(hs)  # (B, H, L, S)
    if mha.alibi:
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], dtype=D)
        s = s + slopes[:, None, None] * (kpos[None, :] - qpos[:, None]).to(D)
    if mha.relative_bias is not None:
        s = s + mha.relative_bias(qpos, kpos)
    w = torch.softmax(s.masked_fill(~allowed, -math.inf), -1).nan_to_num(0.0)
    out = (w @ v).transpose(1, 2).reshape(B, L, E)
    return mha.out_proj(out), w


def window(L, left, n_sinks=0):
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    return (j <= i) & ((j >= i - left) | (j < n_sinks))  # causal: a sink is a key before the query


def build(rotary=False, alibi=False, t5=False, kv=H):
    torch.manual_seed(0)
    rel = az.RelativePositionBias(H, bidirectional=False, num_buckets=8, max_distance=20) if t5 else None
    mha = az.MultiHeadAttention(E, H, num_kv_heads=kv, rotary=az.RotaryEmbedding(hs) if rotary else None,
                                alibi=alibi, relative_bias=rel, dtype=D)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        if rel is not None:
            rel.relative_attention_bias.weight.mul_(3)
    return mha


L = 150  # two query blocks, several key blocks
DOCS = (torch.arange(L) * 7 // L).view(1, L)
CONFIGS = {
    "rope, causal": (dict(rotary=True), None, window(L, L)),
    "alibi, window": (dict(alibi=True), M.sliding_window(9), window(L, 9)),
    "t5, window | sinks, gqa": (dict(t5=True, kv=2), M.sliding_window(70) | M.sinks(3), window(L, 70, 3)),
    "rope + alibi, documents": (dict(rotary=True, alibi=True, kv=1), M.documents(DOCS),
                                (DOCS[0][:, None] == DOCS[0][None, :]) & window(L, L)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("given", [False, True], ids=["block route", "positions given"])
def test_forward_and_weights_match_formula(name, given):
    opts, mask, allowed = CONFIGS[name]
    mha = build(**opts)
    x = torch.randn(2, L, E, dtype=D)
    pos = torch.arange(L)
    out, w = mha(x, mask=mask, is_causal=True, need_weights=True, average_attn_weights=False,
                 positions=pos if given else None)
    ref_out, ref_w = reference(mha, x, allowed, pos, pos)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w, ref_w, atol=1e-10, rtol=1e-10)  # exact under window and bias
    _, rows = mha(x, mask=mask, is_causal=True, need_weights=True, weights_for=slice(100, 104),
                  positions=pos if given else None)
    torch.testing.assert_close(rows, ref_w[:, :, 100:104].mean(1), atol=1e-10, rtol=1e-10)


def test_shifted_positions_and_key_padding():
    """Positions p0 .. p0+L-1 give the rotary and ALiBi terms at those positions; the
    mask is evaluated there too (a window is shift invariant); padding still hides keys."""
    mha = build(rotary=True, alibi=True)
    x = torch.randn(2, 40, E, dtype=D)
    pad = torch.zeros(2, 40, dtype=torch.bool)
    pad[1, -7:] = True
    pos = torch.arange(1000, 1040)
    out = mha(x, mask=M.sliding_window(6), is_causal=True, key_padding_mask=pad, positions=pos)[0]
    allowed = window(40, 6) & ~pad.view(2, 1, 1, 40)
    torch.testing.assert_close(out, reference(mha, x, allowed, pos, pos)[0], atol=1e-10, rtol=1e-10)


def test_score_bias_helpers_match_dense_bias():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, H, 200, hs, dtype=D) for _ in range(3))
    slopes = az.alibi_slopes(H, dtype=D)
    i = torch.arange(200)
    dense = az.alibi_bias(slopes, i, i)  # (H, L, S)
    got = scaled_dot_product_attention(q, k, v, score_bias=az.alibi_score_bias(slopes), mask=M.causal())
    want = scaled_dot_product_attention(q, k, v, attn_mask=dense.masked_fill(~window(200, 200), -math.inf))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    rel = az.RelativePositionBias(H).to(D)
    got = scaled_dot_product_attention(q, k, v, score_bias=rel.score_bias(), mask=M.sliding_window(30, 30))
    band = (i[None, :] - i[:, None]).abs() <= 30
    want = scaled_dot_product_attention(q, k, v, attn_mask=rel(i, i).masked_fill(~band, -math.inf))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    got.sum().backward()  # the per-block tiles carry the table's gradient
    g = rel.relative_attention_bias.weight.grad.clone()
    rel.zero_grad()
    want.sum().backward()
    torch.testing.assert_close(g, rel.relative_attention_bias.weight.grad, atol=1e-10, rtol=1e-10)


def test_relative_bias_is_module_state_and_plain_state_dict_unchanged():
    mha = build(t5=True)
    assert "relative_bias.relative_attention_bias.weight" in dict(mha.named_parameters())
    plain = az.MultiHeadAttention(E, H)
    assert set(plain.state_dict()) == set(torch.nn.MultiheadAttention(E, H).state_dict())
    assert set(build(rotary=True, alibi=True).state_dict()) == set(plain.state_dict())  # no buffers saved


def test_recorder_records_the_weights_used():
    mha = build(alibi=True, t5=True)
    x = torch.randn(1, L, E, dtype=D)
    with az.AttentionRecorder(mha) as rec:
        out = mha(x, mask=M.sliding_window(9), is_causal=True)[0]
    ref_out, ref_w = reference(mha, x, window(L, 9), torch.arange(L), torch.arange(L))
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(rec[""][0], ref_w, atol=1e-10, rtol=1e-10)  # (B, H, L, S)


def test_dropout_weights_are_the_ones_applied():
    mha = build(alibi=True)
    mha.dropout = 0.3
    mha.train()
    x = torch.randn(1, 60, E, dtype=D)
    out, w = mha(x, mask=M.sliding_window(5), is_causal=True, need_weights=True, average_attn_weights=False)
    assert (w == 0).any() and not torch.allclose(w.sum(-1), torch.ones(1, H, 60, dtype=D))
    v = (x @ mha.in_proj_weight[2 * E:].T + mha.in_proj_bias[2 * E:]).view(1, 60, H, hs).transpose(1, 2)
    torch.testing.assert_close(out, mha.out_proj((w @ v).transpose(1, 2).reshape(1, 60, E)))


def test_autocast_bfloat16():
    torch.manual_seed(0)
    mha = az.MultiHeadAttention(E, H, rotary=az.RotaryEmbedding(hs), alibi=True)
    x = torch.randn(2, 70, E)
    want = mha(x, mask=M.sliding_window(8), is_causal=True)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mha(x, mask=M.sliding_window(8), is_causal=True)[0]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)


class _Windowed(torch.nn.Module):
    def __init__(self, mha, mask):
        super().__init__()
        self.mha, self.mask = mha, mask

    def forward(self, x):
        return self.mha(x, mask=self.mask, is_causal=True)[0]


@pytest.mark.parametrize("opts, mask", [(dict(rotary=True), None), (dict(alibi=True), M.sliding_window(5) | M.sinks(2))],
                         ids=["rotary", "alibi + window"])
def test_compile_and_export_match_eager(opts, mask):
    torch.manual_seed(0)
    module = _Windowed(az.MultiHeadAttention(E, H, rotary=az.RotaryEmbedding(hs) if opts.get("rotary") else None,
                                             alibi=opts.get("alibi", False)), mask).eval()
    x = torch.randn(2, 24, E)
    with torch.no_grad():
        want = module(x)
        compiled = torch.compile(module, fullgraph=True, dynamic=False, backend="aot_eager")
        torch.testing.assert_close(compiled(x), want, atol=1e-5, rtol=1e-5)
        exported = torch.export.export(module, (x,))
        torch.testing.assert_close(exported.module()(x), want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("n_sinks", [0, 3])
def test_rolling_decode_equals_full_forward(n_sinks):
    """Step by step over a rolling cache of left + 1 (+ sinks) slots, far past the window."""
    mha = build(rotary=True, alibi=True, t5=True, kv=2)
    left, T = 7, 60  # past the window several times over
    mask = M.sliding_window(left) | M.sinks(n_sinks) if n_sinks else M.sliding_window(left)
    x = torch.randn(2, T, E, dtype=D)
    full = mha(x, mask=mask, is_causal=True)[0]
    cache = az.RollingKVCache(2, 2, left + 1, hs, sinks=n_sinks, dtype=D)
    steps = torch.cat([mha.decode_step(x[:, t:t + 1], cache, t, mask=mask) for t in range(T)], 1)
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=1e-10)
    assert cache.k_cache.shape == (2, 2, left + 1 + n_sinks, hs)
    assert cache.positions[:n_sinks].tolist() == list(range(n_sinks))  # sinks keep their first entries
    assert sorted(cache.positions[n_sinks:].tolist()) == list(range(T - left - 1, T))


def test_kvcache_decode_with_rope_equals_forward():
    mha = build(rotary=True, alibi=True)
    x = torch.randn(1, 20, E, dtype=D)
    full = mha(x, is_causal=True)[0]
    cache = az.KVCache(1, H, 32, hs, dtype=D)
    first = mha.decode_step(x[:, :5], cache, 0)  # a chunk, then single tokens
    steps = [first] + [mha.decode_step(x[:, t:t + 1], cache, t) for t in range(5, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-10)
    # the cache stores rotated keys: key t rotated at position t
    k = (x @ mha.in_proj_weight[E:2 * E].T + mha.in_proj_bias[E:2 * E]).view(1, 20, H, hs).transpose(1, 2)
    torch.testing.assert_close(cache.k_cache[:, :, :20], rope_ref(k, torch.arange(20)), atol=1e-12, rtol=1e-12)


# ------------------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"rotary must have head_dim = embed_dim // num_heads = 8, got "
                                         r"RotaryEmbedding\(head_dim=16\)"):
        az.MultiHeadAttention(E, H, rotary=az.RotaryEmbedding(16))
    with pytest.raises(ValueError, match="relative_bias must have num_heads = 4, got 2"):
        az.MultiHeadAttention(E, H, relative_bias=az.RelativePositionBias(2))
    with pytest.raises(TypeError, match="alibi must be a bool"):
        az.MultiHeadAttention(E, H, alibi=1)
    mha = build(alibi=True)
    x = torch.randn(1, 10, E, dtype=D)
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(L, S\) = \(10, 10\)"):
        mha(x, attn_mask=torch.zeros(10, 9, dtype=D))
    with pytest.raises(ValueError, match=r"positions must have shape \(L,\) with L = 10"):
        mha(x, positions=torch.arange(9))
    with pytest.raises(TypeError, match="mask must be an attnzoo.masks mask"):
        mha(x, mask=torch.ones(10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"position must leave room in the cache: positions 30\.\.30 exceed "
                                         r"the cache's max_len=30"):
        mha.decode_step(x[:, :1], az.KVCache(1, H, 30, hs, dtype=D), 30)
    small = az.RollingKVCache(1, H, 4, hs, dtype=D)
    for t in range(4):
        mha.decode_step(x[:, t:t + 1], small, t, mask=M.sliding_window(4))
    with pytest.raises(ValueError, match=r"cache is too small for mask: position 4 overwrites position 0"):
        mha.decode_step(x[:, 4:5], small, 4, mask=M.sliding_window(4))
    with pytest.raises(ValueError, match=r"x must hold one token \(B, 1, E\) with a RollingKVCache"):
        mha.decode_step(x[:, :2], small, 0)
    with pytest.raises(TypeError, match="position must be an int"):
        mha.decode_step(x[:, :1], small, torch.tensor(0))
