"""Transformer layers, KV cache and Seq2SeqTransformer: torch parity, cache exactness, masks, errors."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

from attnzoo.kvcache import KVCache
from attnzoo.transformer import Seq2SeqTransformer, TransformerDecoderLayer, TransformerEncoderLayer

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread (tests/conftest.py)

D = torch.float64
PAD, BOS, EOS = 0, 1, 2


def _model(seed=0, dtype=D, vocab=(23, 19), **kw):
    torch.manual_seed(seed)
    args = {"d_model": 32, "nhead": 4, "dim_feedforward": 64, "max_len": 40, **kw}
    return Seq2SeqTransformer(*vocab, **args).to(dtype).eval()


def _padded_src(seed, B=4, S=9, vocab=23):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (B, S), generator=g)
    for b in range(1, B):  # rows 1.. end in 2b padding tokens
        src[b, S - 2 * b :] = PAD
    return src


def _torch_copy(ours: nn.Module, theirs: nn.Module) -> None:
    """Load the torch layer's weights into ours: same names, no key left over either way."""
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())


# ----------------------------------------------------------------------- torch parity
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(norm_first, activation):
    torch.manual_seed(0)
    kw = {"norm_first": norm_first, "activation": activation, "batch_first": True, "dtype": D}
    theirs = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.1, **kw).eval()
    ours = TransformerEncoderLayer(16, 4, 24, dropout=0.1, **kw).eval()
    _torch_copy(ours, theirs)
    x = torch.randn(3, 7, 16, dtype=D)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[1, 4:], kpm[2, 1:3] = True, True
    torch.testing.assert_close(ours(x, src_key_padding_mask=kpm), theirs(x, src_key_padding_mask=kpm),
                               atol=1e-10, rtol=1e-10)
    causal = nn.Transformer.generate_square_subsequent_mask(7, dtype=D)
    torch.testing.assert_close(ours(x, is_causal=True), theirs(x, src_mask=causal, is_causal=True),
                               atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(1)
    kw = {"norm_first": norm_first, "batch_first": True, "dtype": D}
    theirs = nn.TransformerDecoderLayer(16, 2, 24, dropout=0.1, **kw).eval()
    ours = TransformerDecoderLayer(16, 2, 24, dropout=0.1, **kw).eval()
    _torch_copy(ours, theirs)
    tgt, memory = torch.randn(3, 6, 16, dtype=D), torch.randn(3, 5, 16, dtype=D)
    mpm = torch.zeros(3, 5, dtype=torch.bool)
    mpm[0, 3:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.bool)  # True = blocked
    expected = theirs(tgt, memory, tgt_mask=causal, memory_key_padding_mask=mpm, tgt_is_causal=True)
    torch.testing.assert_close(ours(tgt, memory, memory_key_padding_mask=mpm), expected, atol=1e-10, rtol=1e-10)
    got = ours(tgt, memory, tgt_mask=causal, memory_key_padding_mask=mpm, tgt_is_causal=False)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    # tgt_is_causal=False with no mask is full self-attention, as torch without a mask
    torch.testing.assert_close(ours(tgt, memory, tgt_is_causal=False), theirs(tgt, memory), atol=1e-10, rtol=1e-10)


def test_layers_batch_first_false_and_unbatched():
    torch.manual_seed(2)
    enc = TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=False, dtype=D)
    x = torch.randn(5, 3, 8, dtype=D)  # (S, B, E)
    out = enc(x)
    torch.testing.assert_close(out[:, 1], enc(x[:, 1]))  # unbatched (S, E)
    dec = TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=False, dtype=D)
    mem = torch.randn(4, 3, 8, dtype=D)
    torch.testing.assert_close(dec(x, mem)[:, 2], dec(x[:, 2], mem[:, 2]))


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
def test_layer_gradcheck(layer):
    torch.manual_seed(3)
    if layer == "encoder":
        m = TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation="gelu", dtype=D)
        x = torch.randn(2, 4, 8, dtype=D, requires_grad=True)
        kpm = torch.tensor([[False] * 4, [False, False, True, True]])
        assert torch.autograd.gradcheck(lambda x: m(x, src_key_padding_mask=kpm), (x,))
    else:
        m = TransformerDecoderLayer(8, 2, 12, dropout=0.0, norm_first=False, dtype=D)
        x = torch.randn(2, 4, 8, dtype=D, requires_grad=True)
        mem = torch.randn(2, 3, 8, dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, mem: m(x, mem), (x, mem))


# ------------------------------------------------------------------------- KV cache
def test_kv_cache_writes_by_position_and_resets():
    cache = KVCache(2, 3, 6, 4, dtype=D)
    k0, v0 = torch.randn(2, 3, 2, 4, dtype=D), torch.randn(2, 3, 2, 4, dtype=D)
    k, v = cache.update(0, k0, v0)
    assert k.shape == v.shape == (2, 3, 2, 4) and torch.equal(k, k0) and torch.equal(v, v0)
    k1, v1 = torch.randn(2, 3, 1, 4, dtype=D), torch.randn(2, 3, 1, 4, dtype=D)
    k, v = cache.update(2, k1, v1)
    assert torch.equal(k, torch.cat([k0, k1], 2)) and torch.equal(v, torch.cat([v0, v1], 2))
    assert k.data_ptr() == cache.k_cache.data_ptr()  # a view of the preallocated buffer
    k, _ = cache.update(1, k1, v1)  # rewriting position 1 leaves 0 alone, drops nothing
    assert k.shape[2] == 2 and torch.equal(k[:, :, 0], k0[:, :, 0]) and torch.equal(k[:, :, 1], k1[:, :, 0])
    assert torch.equal(cache.k_cache[:, :, 2], k1[:, :, 0]) and not cache.k_cache[:, :, 3:].any()
    assert not cache.state_dict()  # scratch space, not a parameter
    cache.reset()
    assert not cache.k_cache.any() and not cache.v_cache.any()
    with pytest.raises(ValueError, match="outside"):
        cache.update(5, k0, v0)


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_forward_step_matches_forward(norm_first):
    torch.manual_seed(4)
    layer = TransformerDecoderLayer(16, 4, 24, norm_first=norm_first, dtype=D).eval()
    tgt, memory = torch.randn(2, 7, 16, dtype=D), torch.randn(2, 5, 16, dtype=D)
    mpm = torch.tensor([[False] * 5, [False, False, False, True, True]])
    expected = layer(tgt, memory, memory_key_padding_mask=mpm)
    mem_kv = layer.precompute_memory(memory, mpm)
    cache = KVCache(2, 4, 7, 4, dtype=D)
    steps = [layer.forward_step(tgt[:, t : t + 1], mem_kv, cache, t) for t in range(4)]
    steps.append(layer.forward_step(tgt[:, 4:7], mem_kv, cache, 4))  # a chunk of 3 at once
    torch.testing.assert_close(torch.cat(steps, 1), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("fully_padded", [False, True])
def test_memory_keys_are_cleaned_once_and_steps_skip_guards_only_when_safe(fully_padded):
    """project_memory zeroes padded keys/values once (NaN stored there included); steps then
    skip attention's guards, except when a sample is fully padded (its rows give 0)."""
    torch.manual_seed(5)
    layer = TransformerDecoderLayer(16, 4, 24, dtype=D).eval()
    tgt, memory = torch.randn(2, 3, 16, dtype=D), torch.randn(2, 5, 16, dtype=D)
    mpm = torch.zeros(2, 5, dtype=torch.bool)
    mpm[1, 3:] = True
    if fully_padded:
        mpm[0] = True
    memory[mpm] = float("nan")  # garbage at the padding must not matter
    mem_kv = layer.precompute_memory(memory, mpm)
    assert mem_kv.clean is (not fully_padded)
    hidden = mpm[:, None, :, None].expand_as(mem_kv.k)
    assert not mem_kv.k[hidden].any() and not mem_kv.v[hidden].any()
    expected = layer(tgt, memory, memory_key_padding_mask=mpm)
    cache = KVCache(2, 4, 3, 4, dtype=D)
    steps = torch.cat([layer.forward_step(tgt[:, t : t + 1], mem_kv, cache, t) for t in range(3)], 1)
    assert steps.isfinite().all()
    torch.testing.assert_close(steps, expected, atol=1e-10, rtol=1e-10)


# ------------------------------------------------------------ cached generation
@pytest.mark.parametrize("seed,eos_bias", [(0, 0.0), (1, 0.75), (2, 0.25), (3, 0.25)])
def test_cached_generation_equals_recomputation(seed, eos_bias):
    model = _model(seed)
    src = _padded_src(seed)
    with torch.no_grad():
        model.lm_head.bias[EOS] += eos_bias  # chosen so that rows stop at different steps
    cached = model.generate(src, 20, BOS, EOS)
    assert torch.equal(cached, model.generate(src, 20, BOS, EOS, use_cache=False))
    lengths = (cached != PAD).sum(dim=1)
    assert (cached == EOS).any() and lengths.min() < lengths.max()  # rows stopped at different steps
    assert not torch.equal(cached, _model(seed + 100).generate(src, 20, BOS, EOS))  # the check can fail


class _EagerStatic:
    """Stands in for GraphedStep on the CPU: runs the same static-shape step, uncaptured."""

    def __init__(self, step, batch_size, device):
        self.step, self.calls = step, 0

    def __call__(self, tokens, pos):
        self.calls += 1
        return self.step(tokens, torch.tensor([pos]))


@pytest.mark.parametrize("dtype", [D, torch.float32])
def test_static_shape_step_generates_the_uncached_tokens(monkeypatch, dtype):
    """The step a CUDA graph captures (tensor position, whole cache, masked) gives the same tokens."""
    import attnzoo.transformer as T

    steps = []
    monkeypatch.setattr(T, "graph_blocker", lambda model, device: None)
    monkeypatch.setattr(T, "GraphedStep", lambda *a: steps.append(_EagerStatic(*a)) or steps[-1])
    model = _model(7, dtype=dtype)
    src = _padded_src(7)
    with torch.no_grad():
        model.lm_head.bias[EOS] += 0.5
    static = model.generate(src, 20, BOS, EOS)
    assert len(steps) == 1 and steps[0].calls == static.size(1)
    assert torch.equal(static, model.generate(src, 20, BOS, EOS, use_cache=False))


def test_graph_blocker_sees_recorders_hooks_and_function_modes():
    from torch.overrides import TorchFunctionMode

    from attnzoo._decode_graph import graph_blocker

    model, cuda = _model(0), torch.device("cuda")
    assert graph_blocker(model, torch.device("cpu")) is not None  # the CPU decodes eagerly
    assert graph_blocker(model, cuda) is None
    attn = model.decoder_layers[0].self_attn
    attn.attend = attn.attend  # what a recorder does: an instance attribute
    assert "decoder_layers.0.self_attn" in graph_blocker(model, cuda)
    del attn.attend
    handle = model.lm_head.register_forward_hook(lambda *a: None)
    assert "lm_head" in graph_blocker(model, cuda)
    handle.remove()
    with TorchFunctionMode():
        assert "TorchFunctionMode" in graph_blocker(model, cuda)
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    assert "global" in graph_blocker(model, cuda)
    handle.remove()
    assert graph_blocker(model, cuda) is None


def test_cached_generation_float32_and_no_eos():
    model = _model(5, dtype=torch.float32)
    src = _padded_src(5)
    with torch.no_grad():
        model.lm_head.bias[EOS] = -1e4  # never stops early
    out = model.generate(src, 25, BOS, EOS)
    assert out.shape == (4, 25) and not (out == PAD).any()  # pad is never generated
    assert torch.equal(out, model.generate(src, 25, BOS, EOS, use_cache=False))


def _reference_greedy(model, src, n):
    """Row by row, unpadded source, full forward() every step: the definition of greedy."""
    rows = []
    for s in src:
        s = s[s != PAD][None]  # (1, S_b)
        seq = [BOS]
        while len(seq) <= n and seq[-1] != EOS:
            logits = model(s, torch.tensor([seq]))[0, -1]
            logits[PAD] = float("-inf")
            seq.append(int(logits.argmax()))
        rows.append(seq[1:])
    width = max(map(len, rows))
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_matches_reference_greedy_with_early_eos(use_cache):
    model = _model(6)
    src = _padded_src(6)
    with torch.no_grad():
        model.lm_head.bias[EOS] += 1.0
        expected = _reference_greedy(model, src, 15)
    lengths = [int((r != PAD).sum()) for r in expected]
    assert min(lengths) < max(lengths) and (expected == EOS).sum() >= 2  # eos at different steps
    assert torch.equal(model.generate(src, 15, BOS, EOS, use_cache=use_cache), expected)
    with torch.no_grad():
        model.lm_head.bias[EOS] += 1e4
    assert torch.equal(model.generate(src, 15, BOS, EOS, use_cache=use_cache), torch.full((4, 1), EOS))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (D, 1e-10)])
def test_forward_logits_equal_cached_step_logits(dtype, tol):
    model = _model(7, dtype=dtype)
    src = _padded_src(7)
    tgt = torch.randint(3, 19, (4, 12), generator=torch.Generator().manual_seed(7))
    tgt[:, 0] = BOS
    tgt[2, 9:] = PAD  # trailing target padding: rows before it are unaffected
    with torch.no_grad():
        full = model(src, tgt)
        memory, src_pad = model.encode(src)
        state = model.init_decode_state(memory, src_pad, 12)
        steps = torch.cat([model.decode_step(tgt[:, t : t + 1], t, state) for t in range(12)], 1)
    valid = tgt != PAD
    torch.testing.assert_close(steps[valid], full[valid], atol=tol, rtol=tol)


def test_generate_restores_training_flag_and_needs_no_grad():
    model = _model(8).train()
    out = model.generate(_padded_src(8), 5, BOS, EOS)
    assert model.training and all(m.training for m in model.modules())
    assert out.dtype == torch.long and not out.requires_grad
    assert torch.equal(out, model.eval().generate(_padded_src(8), 5, BOS, EOS))  # dropout was off


# ------------------------------------------------------------------------ masking
def test_target_is_causal():
    model = _model(9)
    src, tgt = _padded_src(9), torch.randint(3, 19, (4, 10), generator=torch.Generator().manual_seed(9))
    changed = tgt.clone()
    changed[:, 6] = (tgt[:, 6] - 3 + 1) % 16 + 3  # another non-special token
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-12, rtol=0)
    assert (a[:, 6:] - b[:, 6:]).abs().amax(dim=-1).min() > 1e-6  # every later position sees it


def test_source_padding_does_not_change_output():
    model = _model(10)
    src = _padded_src(10)
    tgt = torch.randint(3, 19, (4, 8), generator=torch.Generator().manual_seed(10))
    more_pad = torch.cat([src, torch.full((4, 5), PAD)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(more_pad, tgt), model(src, tgt), atol=1e-10, rtol=1e-10)
        garbage = src.clone()
        garbage[src == PAD] = 5  # the same positions as real tokens DO change the output
        assert not torch.allclose(model(garbage, tgt), model(src, tgt), atol=1e-6)
    out = model.generate(src, 12, BOS, EOS)
    assert torch.equal(model.generate(more_pad, 12, BOS, EOS), out)
    for b in range(4):  # each row as if alone and unpadded
        alone = model.generate(src[b : b + 1, : int((src[b] != PAD).sum())], 12, BOS, EOS)
        assert torch.equal(alone[0], out[b, : alone.size(1)])


# ------------------------------------------------------------------------- errors
def test_bad_arguments_are_named():
    model = _model(11)
    src = _padded_src(11)
    with pytest.raises(TypeError, match="src"):
        model.generate(src.float(), 5, BOS, EOS)
    with pytest.raises(ValueError, match="src"):
        model.generate(src[0], 5, BOS, EOS)
    with pytest.raises(ValueError, match="src"):
        model.generate(src + 30, 5, BOS, EOS)
    with pytest.raises(ValueError, match="src"):
        model.encode(torch.ones(1, 41, dtype=torch.long))  # longer than max_len
    with pytest.raises(ValueError, match="tgt"):
        model(src, torch.full((4, 3), 19))
    with pytest.raises(ValueError, match="batch size"):
        model(src, torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(src, 0, BOS, EOS)
    with pytest.raises(ValueError, match="max_len"):
        model.generate(src, 40, BOS, EOS)
    with pytest.raises(ValueError, match="bos_id"):
        model.generate(src, 5, 19, EOS)
    with pytest.raises(ValueError, match="bos_id must differ from pad_id"):
        model.generate(src, 5, PAD, EOS)
    with pytest.raises(TypeError, match="eos_id"):
        model.generate(src, 5, BOS, 2.0)
    with pytest.raises(ValueError, match="eos_id"):
        model.generate(src, 5, BOS, -1)
    with pytest.raises(ValueError, match="nhead"):
        Seq2SeqTransformer(10, 10, d_model=30, nhead=4)
    with pytest.raises(ValueError, match="tgt_vocab"):
        Seq2SeqTransformer(10, 0)
    with pytest.raises(ValueError, match="pad_id"):
        Seq2SeqTransformer(10, 5, pad_id=7)
    with pytest.raises(ValueError, match="activation"):
        TransformerEncoderLayer(8, 2, activation="tanh")
    with pytest.raises(ValueError, match="dropout"):
        TransformerDecoderLayer(8, 2, dropout=1.5)
    with pytest.raises(ValueError, match="src"):
        TransformerEncoderLayer(8, 2)(torch.randn(8))
    with pytest.raises(TypeError, match="memory"):
        TransformerDecoderLayer(8, 2)(torch.randn(1, 2, 8), torch.ones(1, 2, 8, dtype=torch.long))


def test_token_ids_out_of_range_are_named_with_the_value():
    model = _model(11)
    src = _padded_src(11)
    with pytest.raises(ValueError, match=re.escape("tgt token ids must be in [0, 19), got 19")):
        model(src, torch.full((4, 3), 19))
    with pytest.raises(ValueError, match=re.escape("src token ids must be in [0, 23), got -1")):
        model.encode(src.index_fill(1, torch.tensor([2]), -1))


@pytest.mark.parametrize("training", [False, True])
def test_forward_on_meta_and_fake_tensors_gives_shapes(training):
    """No values to read (meta init, FakeTensorMode, torch.export): the token-id range check
    is skipped, the shape checks are not, and the forward gives the logits' shape."""
    with torch.device("meta"):
        model = _model(3, dtype=torch.float32).train(training)
        src, tgt = torch.zeros(4, 9, dtype=torch.long), torch.zeros(4, 6, dtype=torch.long)
    memory, pad = model.encode(src)
    assert memory.is_meta and memory.shape == (4, 9, 32) and pad.shape == (4, 9) and pad.dtype == torch.bool
    logits = model(src, tgt)
    assert logits.is_meta and logits.shape == (4, 6, 19) and logits.dtype == torch.float32
    with pytest.raises(ValueError, match=re.escape("tgt must have shape (B, length), 1 <= length <= max_len=40")):
        model(src, torch.zeros(4, 41, dtype=torch.long, device="meta"))
    real = _model(3, dtype=torch.float32).train(training)
    with FakeTensorMode(allow_non_fake_inputs=True):
        logits = real(_padded_src(3), torch.ones(4, 6, dtype=torch.long))
    assert is_fake(logits) and logits.shape == (4, 6, 19)


# ------------------------------------------------------------------------ training
def test_tiny_model_learns_to_copy():
    torch.manual_seed(0)
    L = 5
    model = Seq2SeqTransformer(12, 12, d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=64, dropout=0.0, max_len=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        src = torch.randint(3, 12, (32, L))
        tgt_in = F.pad(src, (1, 0), value=BOS)  # bos, x1..xL
        tgt_out = F.pad(src, (0, 1), value=EOS)  # x1..xL, eos
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    src = torch.randint(3, 12, (128, L))
    out = model.generate(src, L + 1, BOS, EOS)
    assert out.shape == (128, L + 1)
    assert (out[:, :L] == src).float().mean() > 0.9
    assert (out[:, L] == EOS).float().mean() > 0.9
