"""The context, kernel and free gates trace (torch.fx, torch.jit.trace) to the eager function,
without a warning from attnzoo, and say whether `add_attention` may use them."""

from __future__ import annotations

import warnings

import pytest
import torch

from attnzoo import GlobalContext, NonLocal, SelectiveKernel, SimAM, SplitAttention

pytestmark = pytest.mark.usefixtures("single_thread")

BUILD = {
    "nonlocal": lambda: NonLocal(16),
    "nonlocal-gaussian-scaled": lambda: NonLocal(16, mode="gaussian", use_scale=True),
    "nonlocal-dot": lambda: NonLocal(16, mode="dot_product", dims=1),
    "nonlocal-concat-sub": lambda: NonLocal(16, mode="concatenation", sub_sample=True, dims=3),
    "gc": lambda: GlobalContext(16, 4, fusion="mul", dims=1),
    "simam": lambda: SimAM(dims=3),
    "sk": lambda: SelectiveKernel(16, 4, groups=4),
    "splat": lambda: SplitAttention(16, groups=2, dims=1),
}


def _input(m: torch.nn.Module) -> torch.Tensor:
    return torch.randn(2, 16, *(4,) * m.dims, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(BUILD))
def test_fx_and_jit_trace_match_eager_without_warnings(name):
    torch.manual_seed(0)
    m = BUILD[name]().eval()
    for p in m.parameters():  # no zero layers: the traced function must be the whole one
        torch.nn.init.normal_(p, std=0.3)
    x = _input(m)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fx = torch.fx.symbolic_trace(m)
        traced = torch.jit.trace(m, (x,))
    ours = [w for w in caught if "attnzoo" in w.filename or "Converting a tensor" in str(w.message)]
    assert ours == []
    torch.testing.assert_close(fx(x), m(x))
    torch.testing.assert_close(traced(x), m(x))
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="does not support torch.jit.script"):
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's own notice on torch.jit.script
        torch.jit.script(m)


def test_retrofit_knowledge_lives_on_the_classes():
    """What add_attention needs: `retrofit_error` (None: may follow a layer) and `init_identity()`."""
    assert [c.retrofit_error is None for c in (NonLocal, GlobalContext, SimAM, SelectiveKernel, SplitAttention)] == [
        True, True, True, False, False]
    x = torch.randn(2, 16, 4, 4)
    for m in (NonLocal(16, mode="dot_product"), GlobalContext(16, fusion="mul")):
        for p in m.parameters():
            torch.nn.init.normal_(p)
        m.init_identity()
        assert torch.equal(m(x), x)
    for m in (SimAM(), SelectiveKernel(16, groups=4), SplitAttention(16)):
        with pytest.raises(ValueError):
            m.init_identity()
