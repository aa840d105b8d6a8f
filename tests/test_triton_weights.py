"""The Triton kernels for head-averaged weights, run by Triton's CPU interpreter.

Skipped where Triton is not installed; on a GPU, tests/test_cuda.py runs them compiled.
The interpreter runs in a subprocess because ``TRITON_INTERPRET`` is read when the
kernels are defined. (The interpreter's bfloat16 ``tl.dot`` is wrong, so bfloat16 is
checked on the GPU only.)
"""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(r'''
    import math, torch
    import attnzoo._weights as AW
    import attnzoo.functional as AF
    from attnzoo import _triton_weights as TW
    from attnzoo.functional import attention_reference, scaled_dot_product_attention

    g = torch.Generator().manual_seed(0)

    def reference(q, k, mask, causal):
        m = None if mask is None else (mask if mask.dtype == torch.bool else mask.double())
        return attention_reference(q.double(), k.double(), k.double(), m, is_causal=causal, need_weights=True)[1].mean(-3)

    pad = torch.ones(2, 1, 1, 50, dtype=torch.bool)
    pad[0, ..., 31:] = False
    pad[1] = False  # a sample with nothing to attend to: zeros
    bias = torch.zeros(70, 50)
    bias[:, 40:] = -math.inf
    bias[5] = -math.inf  # an empty row
    bias[7, :3] = 2.5  # a finite bias
    cases = [((2, 3), 70, 50, 24, None, False), ((1, 2), 64, 64, 16, None, True), ((2, 3), 70, 50, 24, pad, False),
             ((2, 2), 70, 50, 16, bias, True),
             ((2, 2), 130, 67, 32, torch.rand(2, 2, 130, 67, generator=g) > 0.3, True),
             ((3, 2, 2), 5, 9, 8, None, False)]  # two leading batch dims, then heads
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 2e-3)):
        for batch, L, S, D, mask, causal in cases:
            q = torch.randn(*batch, L, D, generator=g).to(dtype)
            k = torch.randn(*batch, S, D, generator=g).to(dtype)
            m = mask if mask is None or mask.dtype == torch.bool else mask.to(dtype)
            got = TW.head_mean_weights(q, k, m, causal, 1 / math.sqrt(D))
            assert got.dtype == dtype and got.shape == (*batch[:-1], L, S), (got.dtype, got.shape)
            err = (got.double() - reference(q, k, m, causal)).abs().max().item()
            assert got.isfinite().all() and err < tol, (batch, L, S, dtype, causal, err)

    TW._MAX_GRID_Z = 2  # a batch larger than one grid holds: chunks
    q, k = torch.randn(3, 2, 20, 8, generator=g), torch.randn(3, 2, 30, 8, generator=g)
    m = torch.rand(3, 1, 20, 30, generator=g) > 0.2
    err = (TW.head_mean_weights(q, k, m, True, 0.3).double() - reference(q * 0.3 * 8 ** 0.5, k, m, True)).abs().max()
    assert err < 1e-6, err

    # Wired into attention: where the kernels serve (here: CPU tensors made to count), the
    # module's averaged weights equal the blocked float32 path's.
    TW.available = lambda q: q.dtype in (torch.float16, torch.float32)
    mha = __import__("attnzoo").MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 70, 32, generator=g)
    kpm = torch.zeros(2, 70, dtype=torch.bool)
    kpm[1, 50:] = True
    with torch.inference_mode():
        out, w = mha(x, key_padding_mask=kpm, is_causal=True, need_weights=True)
        AW._kernels_serve = lambda *a: False
        with AF.fused_output():  # the fused output as above; blocked weights
            out2, w2 = mha(x, key_padding_mask=kpm, is_causal=True, need_weights=True)
    assert torch.equal(out, out2)  # served by the kernels, the output stays on the fused kernel
    torch.testing.assert_close(w, w2, atol=1e-6, rtol=1e-6)
    print("ok")
''')


def test_kernels_match_the_float64_formula_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_a_failing_kernel_falls_back_to_the_blocked_path_with_one_warning(monkeypatch):
    import torch

    import attnzoo._weights as AW
    from attnzoo import _triton_weights as TW

    monkeypatch.setattr(TW, "_disabled", [])
    monkeypatch.setattr(TW, "available", lambda q: not TW._disabled)

    def broken(*args):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(TW, "head_mean_weights", broken)
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4)
    with pytest.warns(RuntimeWarning, match="Triton weights kernels failed .*no compiler"):
        w = AW.attention_weights(q, k, average_heads=True)
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-1, -2) / 2, -1).mean(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # disabled for good: no second try, no second warning
        assert TW._disabled and AW.attention_weights(q, k, average_heads=True).shape == (2, 5, 6)
