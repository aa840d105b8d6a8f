"""torch.compile(fullgraph=True) works on every module and matches eager."""

import shutil

import pytest
import torch

import attnzoo as az

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                reason="torch.compile on CPU needs a C compiler")

_g = torch.Generator().manual_seed(0)
X = torch.randn(2, 12, 32, generator=_g)
CTX = torch.randn(2, 9, 24, generator=_g)
PAD = torch.tensor([[False] * 9, [False] * 6 + [True] * 3])
FMAP = torch.randn(2, 32, 8, 8, generator=_g)
MEMORY = torch.randn(2, 5, 32, generator=_g)

CASES = {
    "self-attention, causal + padding": (
        lambda: az.MultiHeadAttention(32, 4, num_kv_heads=2),
        lambda m: m(X, is_causal=True, key_padding_mask=PAD[:, :1].expand(2, 12), need_weights=True),
    ),
    "cross-attention, padding": (lambda: az.CrossAttention(32, 24, 4), lambda m: m(X, CTX, context_padding_mask=PAD)),
    "squeeze-excite": (lambda: az.SqueezeExcite(32, 4), lambda m: m(FMAP)),
    "cbam": (lambda: az.CBAM(32, 4), lambda m: m(FMAP)),
    "temporal, padding": (lambda: az.TemporalAttention(32, num_queries=2), lambda m: m(X, torch.arange(12) >= torch.tensor([[12], [7]]))),
    "encoder layer": (lambda: az.TransformerEncoderLayer(32, 4, 64), lambda m: m(X)),
    "decoder layer": (lambda: az.TransformerDecoderLayer(32, 4, 64), lambda m: m(X, MEMORY)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fullgraph_compile_matches_eager(name):
    build, call = CASES[name]
    torch.manual_seed(0)
    module = build().eval()
    compiled = torch.compile(module, fullgraph=True, dynamic=False)
    with torch.no_grad():
        expected, got = call(module), call(compiled)
    for e, g in zip(*(t if isinstance(t, tuple) else (t,) for t in (expected, got))):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
