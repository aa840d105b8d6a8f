"""attnzoo as a transformers attention implementation (`attn_implementation="attnzoo"`).

Random-weight models from small configs, nothing downloaded, all with left padding:

* logits equal the `"sdpa"` implementation's (float64, 1e-10), at every position;
* `output_attentions=True` weights equal `"eager"`'s on every query row that may attend to
  something (float32, 1e-5: transformers' eager softmax runs in float32, and in float64 its
  float64-minimum mask overflows to -inf and gives NaN for left padding); the fully masked
  (padding) query rows are 0, where eager spreads them uniformly;
* `generate()` gives the sdpa implementation's tokens.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
azt = pytest.importorskip("attnzoo.integrations.transformers")

pytestmark = pytest.mark.usefixtures("single_thread")

LEFT_PAD = 3  # sequence 1 of 2 starts with this many padding tokens


def _llama(dtype: torch.dtype):  # GQA (4 query heads, 2 kv heads), RoPE with llama3 scaling
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    return transformers.LlamaForCausalLM(cfg).to(dtype)


def _mistral(dtype: torch.dtype):  # sliding window 4 on sequences of 11 (+ generated) tokens
    cfg = transformers.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=4, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)
    return transformers.MistralForCausalLM(cfg).to(dtype)


def _bert(dtype: torch.dtype):  # bidirectional, padding mask only
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=64)
    return transformers.BertModel(cfg).to(dtype)


MODELS = {"llama": _llama, "mistral": _mistral, "bert": _bert}


@pytest.fixture(scope="module", autouse=True)
def _registered():
    azt.register()


@pytest.fixture
def calls(monkeypatch) -> list[bool]:
    """need_weights of every attnzoo call the model makes (proof that attnzoo ran)."""
    seen: list[bool] = []
    real = azt.scaled_dot_product_attention

    def counting(*args, **kwargs):
        seen.append(kwargs["need_weights"])
        return real(*args, **kwargs)

    monkeypatch.setattr(azt, "scaled_dot_product_attention", counting)
    return seen


def _inputs(seq: int = 11) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (2, seq), generator=g)
    mask = torch.ones(2, seq, dtype=torch.long)
    ids[1, :LEFT_PAD] = 0
    mask[1, :LEFT_PAD] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _run(model, impl: str, inputs, **kw):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(**inputs, **kw)


def _main(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_equals_sdpa_in_float64(name, calls):
    torch.manual_seed(0)
    model = MODELS[name](torch.float64).eval()
    inputs = _inputs()
    want = _main(_run(model, "sdpa", inputs))
    assert calls == []
    got = _run(model, "attnzoo", inputs)
    assert calls == [False, False]  # one call per layer, no weights
    assert got.attentions is None  # not asked for: none computed
    torch.testing.assert_close(_main(got), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_attentions_equal_eager(name, calls):
    torch.manual_seed(0)
    model = MODELS[name](torch.float32).eval()
    inputs = _inputs()
    eager = _run(model, "eager", inputs, output_attentions=True)
    got = _run(model, "attnzoo", inputs, output_attentions=True)
    assert calls == [True, True]
    heads = model.config.num_attention_heads
    assert len(got.attentions) == len(eager.attentions) == 2
    causal = name != "bert"
    for a, e in zip(got.attentions, eager.attentions):
        assert a.shape == e.shape == (2, heads, 11, 11) and a.dtype == torch.float32
        # sequence 0 whole, sequence 1 from its first real token on
        torch.testing.assert_close(a[0], e[0], rtol=0, atol=1e-5)
        first = LEFT_PAD if causal else 0  # causal: the padding queries see only padding keys
        torch.testing.assert_close(a[1, :, first:], e[1, :, first:], rtol=0, atol=1e-5)
        assert torch.equal(a[1, :, :first], torch.zeros_like(a[1, :, :first]))  # eager: 1/11 each
        assert torch.equal(a[1, ..., :LEFT_PAD], torch.zeros_like(a[1, ..., :LEFT_PAD]))  # padding keys
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(_main(got)[valid], _main(eager)[valid], rtol=0, atol=1e-5)


def test_output_attentions_from_the_config():
    torch.manual_seed(0)
    model = _llama(torch.float32).eval()
    inputs = _inputs()
    eager = _run(model, "eager", inputs, output_attentions=True)
    model.config.output_attentions = True
    got = _run(model, "attnzoo", inputs)
    torch.testing.assert_close(got.attentions[1][0], eager.attentions[1][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,cache", [("llama", None), ("llama", "static"), ("mistral", None)])
def test_generate_gives_the_sdpa_tokens(name, cache, calls):
    torch.manual_seed(0)
    model = MODELS[name](torch.float64).eval()
    inputs = _inputs(seq=6)
    kw = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    if cache is not None:  # prefill then sees more keys (the empty cache slots) than queries
        kw["cache_implementation"] = cache
    model.set_attn_implementation("sdpa")
    want = model.generate(**inputs, **kw)
    model.set_attn_implementation("attnzoo")
    got = model.generate(**inputs, **kw)
    assert len(calls) == 2 * 8  # 2 layers x (prefill + 7 decoding steps)
    assert want.shape == (2, 14)  # 14 > window 4: the sliding window bites while decoding
    assert torch.equal(got, want)


@pytest.mark.parametrize("weights", [False, True])
def test_training_gradients_equal_sdpa(weights):
    torch.manual_seed(0)
    model = _llama(torch.float64).train()
    inputs = _inputs()
    grads = {}
    for impl in ("sdpa", "attnzoo"):
        model.set_attn_implementation(impl)
        model.zero_grad()
        out = model(**inputs, labels=inputs["input_ids"], output_attentions=weights and impl == "attnzoo")
        out.loss.backward()
        grads[impl] = [p.grad for p in model.parameters()]
    for a, b in zip(grads["attnzoo"], grads["sdpa"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


class _Module(torch.nn.Module):  # what transformers hands the attention function
    def __init__(self, groups: int, is_causal: bool = True):
        super().__init__()
        self.num_key_value_groups, self.is_causal, self.training = groups, is_causal, False


def _qkv(h=4, hkv=2, L=5, S=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, h, L, 8, generator=g, dtype=dtype)
    k, v = (torch.randn(2, hkv, S, 8, generator=g, dtype=dtype) for _ in range(2))
    return q, k, v


def _formula(q, k, v, bias):  # float64 softmax(q kᵀ / sqrt(hs) + bias) v with repeated kv heads
    k = k.repeat_interleave(q.size(1) // k.size(1), 1)
    v = v.repeat_interleave(q.size(1) // v.size(1), 1)
    w = torch.softmax(q @ k.transpose(-1, -2) / q.size(-1) ** 0.5 + bias, -1)
    return (w @ v).transpose(1, 2), w


def test_direct_call_shapes_causal_rule_and_no_warnings():
    q, k, v = _qkv()
    causal = torch.full((5, 5), float("-inf"), dtype=torch.float64).triu(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, w = azt.attention_forward(_Module(2), q, k, v, None, output_attentions=True)
        out1, none = azt.attention_forward(_Module(2), q[:, :, -1:], k, v, None)  # one query row: all keys
        outb, wb = azt.attention_forward(_Module(2, is_causal=False), q, k, v, None, output_attentions=True)
    want, want_w = _formula(q, k, v, causal)
    assert out.shape == (2, 5, 4, 8) and out.is_contiguous() and w.shape == (2, 4, 5, 5)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(w, want_w, rtol=0, atol=1e-12)
    assert none is None
    torch.testing.assert_close(out1, _formula(q[:, :, -1:], k, v, 0.0)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(wb, _formula(q, k, v, 0.0)[1], rtol=0, atol=1e-12)
    # is_causal passed by the caller wins over the module's
    out2, _ = azt.attention_forward(_Module(2, is_causal=False), q, k, v, None, is_causal=True)
    torch.testing.assert_close(out2, want, rtol=0, atol=1e-12)


def test_position_bias_and_masks_combine_like_transformers():
    q, k, v = _qkv(h=4, hkv=4)
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(1, 4, 5, 5, generator=g, dtype=torch.float64)
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    keep[1, ..., :2] = False
    hide = torch.zeros(2, 1, 5, 5, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    for mask in (keep, hide):
        out, w = azt.attention_forward(_Module(1, is_causal=False), q, k, v, mask, scaling=0.5 ** 0.5 / 2,
                                       position_bias=bias, output_attentions=True)
        want, want_w = _formula(q, k, v, bias + hide)  # scaling 1/sqrt(8), as the formula's
        torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(w, want_w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw,match", [
    ({"softcap": 50.0}, "does not support softcap"),
    ({"s_aux": torch.zeros(4)}, "does not support s_aux"),
    ({"sinks": torch.zeros(4)}, "does not support sinks")])
def test_unsupported_features_are_clear_errors(kw, match):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=match):
        azt.attention_forward(_Module(2), q, k, v, None, **kw)


def test_head_counts_must_match_the_groups():
    q, k, v = _qkv(h=4, hkv=2)
    with pytest.raises(ValueError, match=r"query has 4 heads and key 2.*num_key_value_groups \(3\)"):
        azt.attention_forward(_Module(3), q, k, v, None)


@pytest.mark.parametrize("name,exc,match", [
    ("", TypeError, "name must be a non-empty str"), (3, TypeError, "name must be a non-empty str"),
    ("sdpa", ValueError, "must not be one of transformers' own"),
    ("eager", ValueError, "must not be one of transformers' own")])
def test_register_checks_the_name(name, exc, match):
    with pytest.raises(exc, match=match):
        azt.register(name)


def test_core_never_imports_transformers():
    code = ("import sys, attnzoo, attnzoo.integrations, attnzoo.integrations.transformers\n"
            "assert 'transformers' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_t5_relative_position_bias_encoder_decoder_and_cross_attention(calls):
    """T5 passes its relative position bias as `position_bias` (right padding: no empty rows,
    and T5's eager softmax runs in float64, so eager is an oracle at 1e-10 here)."""
    cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(cfg).double().eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (2, 11), generator=g)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 8:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    dec = torch.randint(3, 64, (2, 5), generator=g)
    want = _run(model, "sdpa", inputs, decoder_input_ids=dec).logits
    eager = _run(model, "eager", inputs, decoder_input_ids=dec, output_attentions=True)
    got = _run(model, "attnzoo", inputs, decoder_input_ids=dec, output_attentions=True)
    assert len(calls) == 2 + 2 * 2  # encoder self, decoder self and cross, per layer
    torch.testing.assert_close(got.logits, want, rtol=0, atol=1e-10)
    for kind in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        for a, e in zip(getattr(got, kind), getattr(eager, kind), strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=1e-10)
    kw = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    model.set_attn_implementation("sdpa")
    tokens = model.generate(**inputs, **kw)
    model.set_attn_implementation("attnzoo")
    assert torch.equal(model.generate(**inputs, **kw), tokens)


def test_register_gives_the_name_transformers_sdpa_masks():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    azt.register("attnzoo_test")
    try:
        assert AttentionInterface._global_mapping["attnzoo_test"] is azt.attention_forward
        # without this, transformers would build no mask at all for an unknown name
        assert AttentionMaskInterface._global_mapping["attnzoo_test"] is sdpa_mask
    finally:
        AttentionInterface._global_mapping.pop("attnzoo_test", None)
        AttentionMaskInterface._global_mapping.pop("attnzoo_test", None)


def test_dropout_acts_on_the_returned_weights():
    q, k, v = _qkv()
    torch.manual_seed(3)
    out, w = azt.attention_forward(_Module(2), q, k, v, None, dropout=0.5, output_attentions=True)
    kept = _formula(q, k, v, torch.full((5, 5), float("-inf"), dtype=torch.float64).triu(1))[1]
    dropped = w == 0
    assert dropped.any() and (~dropped & (kept > 0)).any()
    torch.testing.assert_close(w[~dropped], 2 * kept[~dropped], rtol=0, atol=1e-12)  # kept ones scaled by 1/(1-p)
    torch.testing.assert_close(out, (w @ v.repeat_interleave(2, 1)).transpose(1, 2), rtol=0, atol=1e-12)
