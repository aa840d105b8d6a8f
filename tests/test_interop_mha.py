"""attnzoo's MultiHeadAttention inside torch's own Transformer layers, and traced/exported."""

import copy
import warnings

import pytest
import torch
from torch import nn

import attnzoo as az

E, H = 16, 4
_g = torch.Generator().manual_seed(0)
X = torch.randn(3, 6, E, generator=_g)
MEM = torch.randn(3, 5, E, generator=_g)
PAD = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] * 2 + [True] * 4])  # True = padding
CAUSAL = nn.Transformer.generate_square_subsequent_mask(6)  # float, -inf above the diagonal


def _swap(module: nn.Module) -> nn.Module:
    """Replace every nn.MultiheadAttention in torch's layers by attnzoo's (same weights)."""
    for m in list(module.modules()):
        for attr in ("self_attn", "multihead_attn"):
            if isinstance(getattr(m, attr, None), nn.MultiheadAttention):
                setattr(m, attr, az.MultiHeadAttention.from_torch(getattr(m, attr)))
    return module


def _enc_layer():
    return nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)


CASES = {
    "encoder layer, padding": (_enc_layer, lambda m: m(X, src_key_padding_mask=PAD)),
    "encoder layer, causal mask": (_enc_layer, lambda m: m(X, src_mask=CAUSAL, is_causal=True)),
    "encoder layer, no mask": (_enc_layer, lambda m: m(X)),
    "encoder stack, padding": (lambda: nn.TransformerEncoder(_enc_layer(), 2, enable_nested_tensor=False),
                               lambda m: m(X, src_key_padding_mask=PAD)),
    "decoder layer": (lambda: nn.TransformerDecoderLayer(E, H, 32, dropout=0.0, batch_first=True),
                      lambda m: m(X, MEM, tgt_mask=CAUSAL, tgt_is_causal=True, memory_key_padding_mask=PAD[:, :5])),
    "transformer": (lambda: nn.Transformer(E, H, 2, 2, 32, dropout=0.0, batch_first=True),
                    lambda m: m(X, X, tgt_mask=CAUSAL, src_key_padding_mask=PAD, memory_key_padding_mask=PAD)),
}


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(CASES))
def test_inside_torch_layers_equals_torch(name, mode, grad):
    """Swapped in after the layers were built (the nested-tensor inference path included)."""
    build, call = CASES[name]
    torch.manual_seed(0)
    theirs = getattr(build(), mode)()
    ours = _swap(copy.deepcopy(theirs))
    with torch.set_grad_enabled(grad):
        expected, got = call(theirs), call(ours)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    if grad:
        got.sum().backward()
        assert all(p.grad is not None for p in ours.parameters() if p.requires_grad)


def test_swapped_before_building_the_stack_declines_the_fused_path():
    layer = _swap(_enc_layer()).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack = nn.TransformerEncoder(layer, 2)  # torch warns that it will not use nested tensors
    assert not stack.use_nested_tensor and any("_qkv_same_embed_dim" in str(w.message) for w in caught)
    reference = nn.TransformerEncoder(_enc_layer(), 2, enable_nested_tensor=False).eval()
    reference.load_state_dict(stack.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(stack(X, src_key_padding_mask=PAD), reference(X, src_key_padding_mask=PAD))


def test_torch_positional_call_convention():
    theirs = nn.MultiheadAttention(E, H, batch_first=True)
    ours = az.MultiHeadAttention.from_torch(theirs)
    mask = torch.rand(6, 6, generator=_g) < 0.3
    mask[:, 0] = False
    args = (X, X, X, PAD, True, mask, False)  # ..., key_padding_mask, need_weights, attn_mask, average
    for e, g in zip(theirs(*args), ours(*args)):
        torch.testing.assert_close(g, e)


# ------------------------------------------------------------------------- tracing, export
MODULES = {
    "mha": (lambda: az.MultiHeadAttention(E, H, num_kv_heads=2), (X, MEM, MEM, PAD[:, :5])),
    "self-attention": (lambda: az.SelfAttention(E, H), (X,)),
    "cross-attention": (lambda: az.CrossAttention(E, E, H), (X, MEM)),
    "encoder layer": (lambda: az.TransformerEncoderLayer(E, H, 32), (X, None, PAD)),
    "decoder layer": (lambda: az.TransformerDecoderLayer(E, H, 32), (X, MEM)),
}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", list(MODULES))
def test_fx_symbolic_trace_equals_eager(name):
    build, args = MODULES[name]
    torch.manual_seed(0)
    module = build().eval()
    traced = torch.fx.symbolic_trace(module)
    torch.testing.assert_close(_first(traced(*args)), _first(module(*args)))
    if name == "mha":  # forward's flags stay arguments of the traced graph
        out, w = traced(X, MEM, MEM, PAD[:, :5], True, None, False)
        e_out, e_w = module(X, MEM, MEM, PAD[:, :5], need_weights=True, average_attn_weights=False)
        torch.testing.assert_close(w, e_w)


@pytest.mark.parametrize("name", ["mha", "encoder layer", "decoder layer"])
def test_jit_trace_and_export_equal_eager(name):
    build, args = MODULES[name]
    torch.manual_seed(0)
    module = build().eval()
    expected = _first(module(*args))
    positional = tuple(a for a in args if a is not None) if name != "encoder layer" else (X, torch.zeros(6, 6), PAD)
    with torch.no_grad():
        traced = torch.jit.trace(module, positional)
    torch.testing.assert_close(_first(traced(*positional)), _first(module(*positional)))
    exported = torch.export.export(module, args)
    torch.testing.assert_close(_first(exported.module()(*args)), expected)


@pytest.mark.parametrize("name", ["mha", "encoder layer", "decoder layer"])
def test_onnx_export_runs_in_onnxruntime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    build, args = MODULES[name]
    torch.manual_seed(0)
    module = build().eval()
    program = torch.onnx.export(module, args, dynamo=True, opset_version=18, verbose=False)
    program.save(str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), [a for a in args if a is not None])}
    got = torch.from_numpy(session.run(None, feeds)[0])
    torch.testing.assert_close(got, _first(module(*args)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["mha", "encoder layer"])
def test_jit_script_fails_with_one_clear_error(name):
    with pytest.raises(RuntimeError, match=r"does not support torch.jit.script .*use torch.compile, torch.export"):
        torch.jit.script(MODULES[name][0]())
