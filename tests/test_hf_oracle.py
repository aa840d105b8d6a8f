"""The recorder on Hugging Face models (random weights from small configs, nothing downloaded).

Oracle: the same weights run with ``attn_implementation="eager"`` and ``output_attentions=True``
return the attention probabilities; the recorder, on the ``"sdpa"`` implementation (fused
kernel, no weights), must reproduce them, and must not change the outputs at all.
"""

import pytest
import torch

from attnzoo.record import AttentionRecorder

transformers = pytest.importorskip("transformers")

SMALL = {"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 32}


def _bert():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, max_position_embeddings=16, **SMALL)
    ids = torch.randint(1, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0  # padding: keys 5, 6 of sequence 1 are hidden
    mask[2, 3:] = 0
    return transformers.BertModel(cfg), {"input_ids": ids, "attention_mask": mask}


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=4, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0  # right padding on top of the causal mask
    return transformers.GPT2Model(cfg), {"input_ids": ids, "attention_mask": mask}


def _vit():
    cfg = transformers.ViTConfig(hidden_size=16, image_size=8, patch_size=4, num_channels=3, **SMALL)
    return transformers.ViTModel(cfg), {"pixel_values": torch.randn(2, 3, 8, 8)}


@pytest.mark.parametrize("build,attention_class", [
    (_bert, "BertSelfAttention"), (_gpt2, "GPT2Attention"), (_vit, "ViTAttention")])
def test_recorded_weights_equal_eager_attentions(build, attention_class):
    torch.manual_seed(0)
    model, inputs = build()
    model.set_attn_implementation("sdpa")
    model.eval()
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
        with AttentionRecorder(model) as rec:
            got = model(**inputs).last_hidden_state
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_attentions=True).attentions
    assert torch.equal(got, ref)  # the fused call still computes the output
    names = [n for n, m in model.named_modules() if type(m).__name__ == attention_class]
    assert len(names) == 2  # one attention module per layer, named as named_modules() names it
    assert [(m.name, m.kind, m.module, m.call) for m in rec.maps] == [
        (n, "attention", attention_class, 0) for n in names]
    assert len(eager) == 2
    for m, e in zip(rec.maps, eager):
        assert m.tensor.shape == e.shape
        torch.testing.assert_close(m.tensor, e, rtol=0, atol=1e-5)


def test_head_average_rows_and_float32_cpu_copies_on_bert():
    torch.manual_seed(1)
    model, inputs = _bert()
    model.eval()
    with torch.no_grad(), AttentionRecorder(model) as full:
        model(**inputs)
    with torch.no_grad(), AttentionRecorder(model, average_heads=True, rows=slice(2, 5), to_cpu=True,
                                            dtype=torch.float32) as small:
        model(**inputs)
    for f, s in zip(full.maps, small.maps):
        assert s.tensor.shape == (3, 3, 7) and s.tensor.dtype == torch.float32
        torch.testing.assert_close(s.tensor, f.tensor[:, :, 2:5].mean(1), rtol=0, atol=1e-6)


def _llama_gqa():
    """A Llama with grouped-query attention: 4 query heads share 2 key/value heads."""
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(3, 50, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding: sequence 0 starts at position 2
    ids[0, :2] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


def test_llama_gqa_left_padded_generate_equals_eager_attentions():
    torch.manual_seed(0)
    model, inputs = _llama_gqa()
    steps = 4
    kw = {"max_new_tokens": steps, "do_sample": False, "min_new_tokens": steps}
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        ref = model.generate(**inputs, **kw)
        with AttentionRecorder(model) as rec, AttentionRecorder(model, average_heads=True) as avg:
            got = model.generate(**inputs, **kw)
        model.set_attn_implementation("eager")
        eager = model.generate(**inputs, **kw, output_attentions=True, return_dict_in_generate=True)
    assert torch.equal(got, ref) and torch.equal(eager.sequences, ref)  # same tokens: same inputs at each step
    names = [f"model.layers.{i}.self_attn" for i in range(2)]
    assert rec.names == names
    assert [(m.name, m.call) for m in rec.maps] == [(n, t) for t in range(steps) for n in names]
    real = inputs["attention_mask"].bool()  # (B, L): query rows of padding are left out (eager spreads them)
    for t, layers in enumerate(eager.attentions):  # per step, per layer: (B, H, L_t, S_t)
        for i, e in enumerate(layers):
            r, a = rec[names[i]][t], avg[names[i]][t]
            assert r.shape == e.shape == ((2, 4, 5, 5) if t == 0 else (2, 4, 1, 5 + t))  # (B, H, L, S)
            assert a.shape == e.shape[:1] + e.shape[2:]
            rows = real if t == 0 else torch.ones(2, 1, dtype=torch.bool)
            for b in range(2):
                torch.testing.assert_close(r[b][:, rows[b]], e[b][:, rows[b]], rtol=0, atol=2e-6)
                torch.testing.assert_close(a[b][rows[b]], e[b][:, rows[b]].mean(0), rtol=0, atol=2e-6)
            assert torch.all(r[0, ..., :2] == 0)  # the left padding gets no weight
