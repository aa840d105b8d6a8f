"""Positions inside attention: RoPE, ALiBi and T5's relative bias.

Oracles: stock `transformers` (Llama's rotary embedding with every scaling type, GPT-NeoX's
partial rotary, GPT-J's interleaved rotary, BLOOM's ALiBi, T5's buckets and bias; small
configs, random weights, nothing downloaded) in float32, and the formulas written fresh here
in float64 (`transformers` builds its tables in float32 even for float64 models, so its
output at position 4095 is far from exact there).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo import RelativePositionBias, RotaryEmbedding, alibi_bias, alibi_slopes

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

HD, MAX_POS = 32, 1024
SCHEMES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
    "yarn-mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                    "mscale": 0.707, "mscale_all_dim": 0.5, "beta_fast": 16.0, "beta_slow": 2.0},
    "yarn-untruncated": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                         "truncate": False, "attention_factor": 1.25},
}


def llama_rope(scaling: dict | None, head_dim: int = HD, base: float = 10000.0):
    params = {"rope_type": "default"} if scaling is None else dict(scaling)
    params["rope_theta"] = base
    cfg = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                   max_position_embeddings=MAX_POS, rope_parameters=params)
    return modeling_llama.LlamaRotaryEmbedding(cfg)


def ours(scaling: dict | None, **kwargs) -> RotaryEmbedding:
    return RotaryEmbedding(HD, scaling=scaling, max_position_embeddings=MAX_POS, **kwargs)


def positions_up_to(top: int) -> torch.Tensor:
    """(2, 64) positions: a run from 0 and a scattered set reaching `top - 1`."""
    g = torch.Generator().manual_seed(top)
    scattered = torch.randint(0, top, (64,), generator=g)
    scattered[-1] = top - 1
    return torch.stack((torch.arange(64), scattered))


# ---------------------------------------------------------------- RoPE against transformers


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("top", [300, 4096])  # dynamic: inside, then beyond max_position_embeddings
def test_rotary_tables_and_rotation_match_llama(name: str, top: int) -> None:
    scaling = SCHEMES[name]
    hf, rope = llama_rope(scaling), ours(scaling)
    pos = positions_up_to(top)  # (B, L)
    cos, sin = rope.cos_sin(pos)
    want_cos, want_sin = hf(torch.zeros(1, dtype=torch.float32), pos)
    torch.testing.assert_close(cos, want_cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(sin, want_sin, atol=1e-5, rtol=0)
    assert rope.attention_factor == pytest.approx(hf.attention_scaling, abs=0)

    q, k = torch.randn(2, 4, 64, HD), torch.randn(2, 2, 64, HD)  # grouped keys: 2 kv heads
    want_q, want_k = modeling_llama.apply_rotary_pos_emb(q, k, want_cos, want_sin)
    got_q, got_k = rope(q, k, pos)
    torch.testing.assert_close(got_q, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, want_k, atol=1e-5, rtol=1e-5)


def test_dynamic_ntk_rescales_only_beyond_max_position_embeddings() -> None:
    dynamic, plain = ours(SCHEMES["dynamic"]), ours(None)
    inside = torch.arange(MAX_POS)  # largest position MAX_POS - 1: seq_len == max_position_embeddings
    assert torch.equal(dynamic.cos_sin(inside)[0], plain.cos_sin(inside)[0])
    just_beyond = torch.arange(MAX_POS + 1)
    assert not torch.equal(dynamic.cos_sin(just_beyond)[0], plain.cos_sin(just_beyond)[0])
    beyond = torch.arange(2 * MAX_POS)
    assert not torch.allclose(dynamic.cos_sin(beyond)[0], plain.cos_sin(beyond)[0], atol=0.1)
    # each call stands alone: a long call leaves no trace on the next short one
    assert torch.equal(dynamic.cos_sin(inside)[0], plain.cos_sin(inside)[0])


@pytest.mark.parametrize("pct", [0.25, 0.5, 1.0])
def test_gpt_neox_partial_rotary(pct: float) -> None:
    from transformers.models.gpt_neox import modeling_gpt_neox as neox

    cfg = transformers.GPTNeoXConfig(hidden_size=128, num_attention_heads=4, rotary_pct=pct,
                                     max_position_embeddings=MAX_POS)
    hf = neox.GPTNeoXRotaryEmbedding(cfg)
    rope = RotaryEmbedding(32, rotary_dim=int(32 * pct))
    pos = positions_up_to(2048)
    cos, sin = hf(torch.zeros(1), pos)
    q, k = torch.randn(2, 4, 64, 32), torch.randn(2, 4, 64, 32)
    want_q, want_k = neox.apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = rope(q, k, pos)
    torch.testing.assert_close(got_q, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, want_k, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_q[..., int(32 * pct):], q[..., int(32 * pct):])  # the rest passes through


@pytest.mark.parametrize("rotary_dim", [8, 16, 32])
def test_gptj_interleaved_rotary(rotary_dim: int) -> None:
    from transformers.models.gptj import modeling_gptj as gptj

    table = gptj.create_sinusoidal_positions(2048, rotary_dim)  # (positions, rotary_dim): [sin | cos]
    pos = positions_up_to(2048)
    sin, cos = table[pos].chunk(2, dim=-1)  # (B, L, rotary_dim/2) each
    x = torch.randn(2, 64, 4, 32)  # GPT-J rotates in (B, L, H, hs)
    turned = gptj.apply_rotary_pos_emb(x[..., :rotary_dim], sin, cos)
    want = torch.cat((turned, x[..., rotary_dim:]), dim=-1).transpose(1, 2)  # (B, H, L, hs)
    rope = RotaryEmbedding(32, rotary_dim=rotary_dim, interleaved=True)  # GPT-J's base is 10 000
    torch.testing.assert_close(rope.rotate(x.transpose(1, 2), pos), want, atol=1e-5, rtol=1e-5)


def test_interleaved_is_the_default_with_features_permuted() -> None:
    rope, inter = RotaryEmbedding(16, rotary_dim=8), RotaryEmbedding(16, rotary_dim=8, interleaved=True)
    perm = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7, *range(8, 16)])  # pair (j, j + 4) -> (2j, 2j + 1)
    x = torch.randn(1, 2, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(inter.rotate(x[..., perm]), rope.rotate(x)[..., perm], atol=1e-12, rtol=0)


# ---------------------------------------------------------------- RoPE against float64 formulas


def exact_inv_freq(scaling: dict | None, dim: int, base: float, seq_len: int) -> tuple[np.ndarray, float]:
    """θ_i in float64 from the papers' definitions, and the factor on cos/sin."""
    i = np.arange(dim // 2, dtype=np.float64)
    theta = base ** (-2 * i / dim)
    kind = "default" if scaling is None else scaling["rope_type"]
    s = scaling["factor"] if scaling else 1.0
    if kind == "linear":
        return theta / s, 1.0
    if kind == "dynamic":
        if seq_len > MAX_POS:
            grown = base * (s * seq_len / MAX_POS - (s - 1)) ** (dim / (dim - 2))
            theta = grown ** (-2 * i / dim)
        return theta, 1.0
    if kind == "llama3":
        ctx = scaling["original_max_position_embeddings"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        out = []
        for t in theta:
            wavelength = 2 * math.pi / t
            if wavelength < ctx / high:
                out.append(t)
            elif wavelength > ctx / low:
                out.append(t / s)
            else:
                mix = (ctx / wavelength - low) / (high - low)
                out.append((1 - mix) * t / s + mix * t)
        return np.array(out), 1.0
    if kind == "yarn":
        ctx = scaling["original_max_position_embeddings"]
        fast, slow = scaling.get("beta_fast", 32.0), scaling.get("beta_slow", 1.0)
        turns = [dim * math.log(ctx / (2 * math.pi * b)) / (2 * math.log(base)) for b in (fast, slow)]
        if scaling.get("truncate", True):
            turns = [math.floor(turns[0]), math.ceil(turns[1])]
        lo, hi = max(turns[0], 0), min(turns[1], dim - 1)
        ramp = np.clip((i - lo) / (hi - lo), 0, 1)
        factor = scaling.get("attention_factor")
        if factor is None:
            def m(x: float) -> float:
                return 0.1 * x * math.log(s) + 1
            factor = m(scaling["mscale"]) / m(scaling["mscale_all_dim"]) if "mscale" in scaling else m(1.0)
        return theta / s * ramp + theta * (1 - ramp), factor
    return theta, 1.0


@pytest.mark.parametrize("name", SCHEMES)
def test_float64_tables_are_exact(name: str) -> None:
    scaling = SCHEMES[name]
    rope = ours(scaling)
    pos = positions_up_to(4096)
    theta, factor = exact_inv_freq(scaling, HD, 10000.0, 4096)
    angles = pos.numpy()[..., None].astype(np.float64) * theta  # (B, L, d/2)
    cos, sin = rope.cos_sin(pos, torch.float64)
    np.testing.assert_allclose(cos.numpy(), factor * np.cos(np.concatenate((angles, angles), -1)), atol=1e-10, rtol=0)
    np.testing.assert_allclose(sin.numpy(), factor * np.sin(np.concatenate((angles, angles), -1)), atol=1e-10, rtol=0)


@pytest.mark.parametrize("interleaved", [False, True])
def test_float64_rotation_is_exact(interleaved: bool) -> None:
    rope = RotaryEmbedding(12, rotary_dim=8, base=500.0, interleaved=interleaved)
    pos = torch.tensor([[0, 1, 4095, 77], [3, 2, 1, 0]])
    x = torch.randn(2, 3, 4, 12, dtype=torch.float64)
    got = rope.rotate(x, pos).numpy()
    theta = 500.0 ** (-np.arange(4) / 4.0)
    for b in range(2):
        for j in range(4):
            for h in range(3):
                v = x[b, h, j].numpy()
                for p in range(4):
                    a, c = (2 * p, 2 * p + 1) if interleaved else (p, p + 4)
                    ang = float(pos[b, j]) * theta[p]
                    assert got[b, h, j, a] == pytest.approx(v[a] * math.cos(ang) - v[c] * math.sin(ang), abs=1e-10)
                    assert got[b, h, j, c] == pytest.approx(v[c] * math.cos(ang) + v[a] * math.sin(ang), abs=1e-10)
                np.testing.assert_array_equal(got[b, h, j, 8:], v[8:])


def test_rotation_gradcheck() -> None:
    rope = RotaryEmbedding(8, rotary_dim=6, scaling=SCHEMES["yarn"])
    x = torch.randn(2, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0, 5, 9, 2, 1], [7, 7, 3, 100, 4]])
    assert torch.autograd.gradcheck(lambda t: rope.rotate(t, pos), (x,))


def test_forward_is_rotate_on_each() -> None:
    rope, pos = ours(SCHEMES["yarn"]), torch.tensor([[3, 9, 4000], [0, 1, 2]])
    q, k = torch.randn(2, 4, 3, HD), torch.randn(2, 2, 3, HD, dtype=torch.float64)
    got_q, got_k = rope(q, k, pos)
    assert torch.equal(got_q, rope.rotate(q, pos)) and torch.equal(got_k, rope.rotate(k, pos))
    got_q, got_k = rope(q, k.float(), pos)  # one table for both
    assert torch.equal(got_k, rope.rotate(k.float(), pos))


def test_half_input_keeps_dtype_and_buffer_is_not_saved() -> None:
    rope = ours(SCHEMES["llama3"])
    assert "inv_freq" not in rope.state_dict() and rope.inv_freq.dtype == torch.float32
    x = torch.randn(1, 2, 16, HD)
    got = rope.rotate(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), rope.rotate(x), atol=0.05, rtol=0.02)
    rope.half()  # casts the buffer; float32 tables are rebuilt, not taken from a float16 buffer
    torch.testing.assert_close(rope.rotate(x), ours(SCHEMES["llama3"]).rotate(x), atol=0, rtol=0)


@settings(max_examples=30, deadline=None)
@given(
    half_dim=st.integers(1, 8),
    interleaved=st.booleans(),
    name=st.sampled_from(["default", "linear", "llama3", "yarn"]),
    m=st.integers(0, 5000), n=st.integers(0, 5000), shift=st.integers(-5000, 5000),
    seed=st.integers(0, 2**31 - 1),
)
def test_rotation_preserves_pair_norms_and_depends_on_distance_only(
    half_dim: int, interleaved: bool, name: str, m: int, n: int, shift: int, seed: int
) -> None:
    d = 2 * half_dim
    rope = RotaryEmbedding(d, interleaved=interleaved, scaling=SCHEMES[name], max_position_embeddings=MAX_POS)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 1, d, generator=g, dtype=torch.float64)
    shift = max(shift, -min(m, n))
    rq = rope.rotate(q, torch.tensor([m]))
    def pairs(t: torch.Tensor) -> torch.Tensor:  # (..., d/2, 2): the rotated pairs
        return t.unflatten(-1, (half_dim, 2)) if interleaved else t.unflatten(-1, (2, half_dim)).transpose(-1, -2)

    norm = pairs(rq).norm(dim=-1) / rope.attention_factor
    torch.testing.assert_close(norm, pairs(q).norm(dim=-1), atol=1e-10, rtol=1e-10)
    score = (rq * rope.rotate(k, torch.tensor([n]))).sum()
    moved = (rope.rotate(q, torch.tensor([m + shift])) * rope.rotate(k, torch.tensor([n + shift]))).sum()
    assert float(moved) == pytest.approx(float(score), abs=1e-8)


# ---------------------------------------------------------------- ALiBi


def paper_slopes(n: int) -> list[float]:
    """ALiBi reference recipe: a geometric sequence from 2^(-8/n); for other n, borrow odd ones."""
    def power_of_two(k: int) -> list[float]:
        start = 2.0 ** (-8.0 / k)
        return [start * start**i for i in range(k)]

    if math.log2(n).is_integer():
        return power_of_two(n)
    below = 2 ** math.floor(math.log2(n))
    return power_of_two(below) + paper_slopes(2 * below)[0::2][: n - below]


@pytest.mark.parametrize("heads", range(1, 17))
def test_alibi_matches_bloom(heads: int) -> None:
    from transformers.models.bloom import modeling_bloom as bloom

    slopes = alibi_slopes(heads)
    assert slopes.shape == (heads,) and slopes.dtype == torch.float32
    torch.testing.assert_close(slopes, bloom._get_alibi_slopes(heads, torch.device("cpu")), atol=1e-7, rtol=1e-6)
    want = bloom.build_alibi_tensor(torch.ones(1, 120, dtype=torch.long), heads, torch.float32)  # (H, 1, S): m j
    q, k = torch.arange(100, 120), torch.arange(120)
    bias = alibi_bias(slopes, q, k)  # (H, 20, 120): m (j - i)
    assert bias.shape == (heads, 20, 120)
    # BLOOM adds m j, we add m (j - i): equal up to m i per row (long rows: see the float64 test)
    torch.testing.assert_close(bias + slopes[:, None, None] * q[:, None], want.expand(heads, 20, 120),
                               atol=1e-5, rtol=0)
    scores = torch.randn(heads, 20, 120).masked_fill(k > q[:, None], float("-inf"))  # causal
    torch.testing.assert_close((scores + bias).softmax(-1), (scores + want).softmax(-1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("heads", [1, 3, 5, 6, 7, 8, 12, 16, 24, 40, 64, 80])
def test_alibi_float64_is_exact(heads: int) -> None:
    slopes = alibi_slopes(heads, dtype=torch.float64)
    np.testing.assert_allclose(slopes.numpy(), paper_slopes(heads), rtol=1e-14, atol=0)
    q, k = torch.tensor([4095, 17]), torch.tensor([0, 17, 4095, 9000])
    want = np.array(paper_slopes(heads))[:, None, None] * (k.numpy()[None, None, :] - q.numpy()[None, :, None])
    np.testing.assert_allclose(alibi_bias(slopes, q, k).numpy(), want, rtol=1e-14, atol=0)


def test_alibi_blocks_tile_the_full_bias() -> None:
    slopes = alibi_slopes(6)
    full = alibi_bias(slopes, torch.arange(40), torch.arange(40))
    block = alibi_bias(slopes, torch.arange(16, 32), torch.arange(8, 24))
    assert torch.equal(block, full[:, 16:32, 8:24])


# ---------------------------------------------------------------- T5 relative position bias


def t5_exact_bucket(r: int, num_buckets: int, max_distance: int, bidirectional: bool) -> int:
    n = num_buckets // 2 if bidirectional else num_buckets
    offset = n if bidirectional and r > 0 else 0
    d = abs(r) if bidirectional else max(-r, 0)
    exact = n // 2
    if d < exact:
        return offset + d
    return offset + min(exact + math.floor(math.log(d / exact) / math.log(max_distance / exact) * (n - exact)), n - 1)


CONFIGS = [(32, 128, True), (32, 128, False), (16, 64, True), (8, 20, False), (64, 256, True),
           (4, 5, True), (2, 3, False)]


@pytest.mark.parametrize(("num_buckets", "max_distance", "bidirectional"), CONFIGS)
def test_t5_buckets(num_buckets: int, max_distance: int, bidirectional: bool) -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-1000, 1001)
    bias = RelativePositionBias(3, num_buckets=num_buckets, max_distance=max_distance, bidirectional=bidirectional)
    got = bias.buckets(torch.tensor([0]), rel)[0]
    want = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                                 max_distance=max_distance)
    assert torch.equal(got, want)
    exact = [t5_exact_bucket(int(r), num_buckets, max_distance, bidirectional) for r in rel]
    assert got.tolist() == exact
    assert int(got.min()) >= 0 and int(got.max()) < num_buckets


@pytest.mark.parametrize("decoder", [False, True])
def test_t5_bias_matches_compute_bias(decoder: bool) -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    cfg = transformers.T5Config(d_model=32, d_kv=8, num_heads=4, relative_attention_num_buckets=16,
                                relative_attention_max_distance=40, is_decoder=decoder)
    hf = T5Attention(cfg, has_relative_attention_bias=True)
    torch.nn.init.normal_(hf.relative_attention_bias.weight)
    bias = RelativePositionBias(4, num_buckets=16, max_distance=40, bidirectional=not decoder)
    bias.load_state_dict({"relative_attention_bias.weight": hf.relative_attention_bias.weight})
    want = hf.compute_bias(7, 90, past_seen_tokens=83)[0]  # (H, 7, 90): queries 83 .. 89
    got = bias(torch.arange(83, 90), torch.arange(90))
    assert torch.equal(got, want)
    assert torch.equal(bias(torch.arange(85, 88), torch.arange(30, 60)), got[:, 2:5, 30:60])  # a block
    bias.double()
    got64 = bias(torch.arange(83, 90), torch.arange(90))
    assert got64.dtype == torch.float64 and torch.equal(got64, want.double())


# ---------------------------------------------------------------- tracing and export


class _Positions(torch.nn.Module):
    """RoPE on q and k plus both biases, as an attention layer would use them."""

    def __init__(self, scaling: dict | None) -> None:
        super().__init__()
        self.rope = RotaryEmbedding(16, rotary_dim=8, scaling=scaling, max_position_embeddings=6)
        self.t5 = RelativePositionBias(2, num_buckets=8, max_distance=16)

    def forward(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k = self.rope(q, k, pos)
        return q, k, alibi_bias(alibi_slopes(2), pos, pos), self.t5(pos, pos)


@pytest.mark.parametrize("name", ["default", "dynamic", "yarn"])
def test_jit_trace_and_export_equal_eager(name: str) -> None:
    m = _Positions(SCHEMES[name])
    args = (torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16), torch.arange(5))
    longer = (torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16), torch.arange(9))  # dynamic: beyond 6
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "`torch.jit.trace", DeprecationWarning)
        traced = torch.jit.trace(m, args)
    for got, want in zip(traced(*longer), m(*longer)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    exported = torch.export.export(m, args).module()
    for got, want in zip(exported(*args), m(*args)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


class _Rope(torch.nn.Module):
    def __init__(self, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.rope = rope

    def forward(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope(q, k, pos)


@pytest.mark.parametrize("name", ["default", "dynamic", "yarn"])
def test_fx_symbolic_trace_equals_eager(name: str) -> None:
    """Under FX the rank and dtype of q are unknown: (B, H, L, hs) and float32 tables."""
    m = _Positions(SCHEMES[name])
    q, k = torch.randn(2, 2, 9, 16), torch.randn(2, 1, 9, 16)
    for got, want in zip(torch.fx.symbolic_trace(m)(q, k, torch.arange(9)), m(q, k, torch.arange(9))):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    rope = _Rope(m.rope)
    pos = torch.randint(0, 20, (2, 9))  # (B, L)
    for got, want in zip(torch.fx.symbolic_trace(rope)(q, k, pos), rope(q, k, pos)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"head_dim": 7}, ValueError, "head_dim must be even (features are rotated in pairs), got 7"),
    ({"head_dim": 0}, ValueError, "head_dim must be a positive int, got 0"),
    ({"head_dim": 8.0}, TypeError, "head_dim must be an int, got float"),
    ({"head_dim": 8, "rotary_dim": 5}, ValueError, "rotary_dim must be even and at most head_dim=8, got 5"),
    ({"head_dim": 8, "rotary_dim": 10}, ValueError, "rotary_dim must be even and at most head_dim=8, got 10"),
    ({"head_dim": 8, "base": 1.0}, ValueError, "base must be a finite number > 1, got 1.0"),
    ({"head_dim": 8, "scaling": {"rope_type": "ntk"}}, ValueError,
     "scaling['rope_type'] must be one of ['default', 'dynamic', 'linear', 'llama3', 'yarn'], got 'ntk'"),
    ({"head_dim": 8, "scaling": {"rope_type": "llama3", "factor": 8.0}}, ValueError,
     "scaling of rope_type 'llama3' needs the keys ['factor', 'low_freq_factor', 'high_freq_factor']; "
     "missing ['low_freq_factor', 'high_freq_factor']"),
    ({"head_dim": 8, "scaling": {"type": "linear"}}, ValueError,
     "scaling of rope_type 'linear' needs the keys ['factor']; missing ['factor']"),
    ({"head_dim": 8, "scaling": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, ValueError,
     "scaling of rope_type 'linear' takes the keys ['factor']; unknown ['rope_theta'] "
     "(the base and rotary_dim are RotaryEmbedding arguments)"),
    ({"head_dim": 8, "scaling": {"rope_type": "linear", "factor": 0}}, ValueError,
     "scaling['factor'] must be > 0, got 0"),
    ({"head_dim": 8, "scaling": {"rope_type": "linear", "factor": "2"}}, TypeError,
     "scaling['factor'] must be a number, got str"),
    ({"head_dim": 8, "scaling": "linear"}, TypeError,
     "scaling must be a dict like {'rope_type': 'linear', 'factor': 2.0} or None, got str"),
    ({"head_dim": 8, "scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                 "high_freq_factor": 1.0}},
     ValueError, "scaling['low_freq_factor'] must be < scaling['high_freq_factor'], got 4.0 and 1.0"),
    ({"head_dim": 8, "rotary_dim": 2, "scaling": {"rope_type": "dynamic", "factor": 2.0}}, ValueError,
     "rotary_dim must be at least 4 for dynamic scaling, got 2"),
])
def test_rotary_bad_arguments(kwargs: dict, error: type, message: str) -> None:
    head_dim = kwargs.pop("head_dim")
    with pytest.raises(error) as info:
        RotaryEmbedding(head_dim, **kwargs)
    assert str(info.value) == message


def test_rotary_bad_positions() -> None:
    rope, x = RotaryEmbedding(8), torch.randn(2, 3, 5, 8)
    with pytest.raises(TypeError, match=r"^positions must be an integer tensor \(torch.long\), got dtype torch.float32"):
        rope.rotate(x, torch.arange(5.0))
    with pytest.raises(ValueError, match=r"^positions must have shape \(L,\) or \(B, L\) with L = 5, got \(4,\)$"):
        rope.rotate(x, torch.arange(4))
    with pytest.raises(ValueError, match=r"^positions \(B, L\) needs x of shape \(B, H, L, hs\) with the same B"):
        rope.rotate(x, torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^x must be \(B, H, L, 8\) \(last size head_dim\), got \(2, 3, 5, 6\)$"):
        rope.rotate(torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match=r"^positions \(B, L\) needs k of shape \(B, H, L, hs\) with the same B"):
        rope(x, torch.randn(1, 3, 5, 8), torch.zeros(2, 5, dtype=torch.long))  # k's batch is not q's
    with pytest.raises(TypeError, match=r"^k must be a torch.Tensor, got NoneType$"):
        rope(x, None)
    with pytest.raises(TypeError, match=r"^positions must be an integer torch.Tensor, got list$"):
        rope.cos_sin([0, 1])


def test_bias_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^num_heads must be a positive int, got 0$"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match=r"^num_heads must be a positive int, got -2$"):
        RelativePositionBias(-2)
    with pytest.raises(ValueError, match=r"^num_buckets must be at least 4 \(bidirectional=True\), got 3$"):
        RelativePositionBias(2, num_buckets=3)
    with pytest.raises(ValueError, match=r"^max_distance must exceed the exact range 8, got 8$"):
        RelativePositionBias(2, num_buckets=32, max_distance=8)
    with pytest.raises(TypeError, match=r"^k_positions must be an integer tensor \(torch.long\), got dtype torch.bool"):
        alibi_bias(alibi_slopes(2), torch.arange(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^q_idx must have shape \(L,\), got \(1, 3\)$"):
        RelativePositionBias(2).buckets(torch.zeros(1, 3, dtype=torch.long), torch.arange(3))
