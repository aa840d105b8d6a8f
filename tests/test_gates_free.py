"""SimAM (attnzoo.gates.free) against the paper's closed-form energy, written in numpy.

The reference computes the minimal energy e* = 4 (var + lambda) / ((t - mu)^2 + 2 var + 2 lambda)
of each neuron (paper eq. 6), with the official code's variance (divided by n = M - 1),
and the gate sigmoid(1 / e*), in float64 numpy.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnzoo as az
from attnzoo.gates.free import SimAM

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def simam_reference(x: np.ndarray, dims: int, lam: float) -> np.ndarray:
    axes = tuple(range(x.ndim - dims, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, ddof=1, keepdims=True)
    energy = 4 * (var + lam) / ((x - mu) ** 2 + 2 * var + 2 * lam)
    return x / (1 + np.exp(-1 / energy))


@pytest.mark.parametrize("dims, shape", [(1, (2, 3, 9)), (2, (2, 3, 4, 5)), (3, (1, 2, 3, 4, 2)), (2, (3, 4, 4))])
@pytest.mark.parametrize("lam", [1e-4, 0.1])
def test_matches_the_closed_form_energy(dims, shape, lam):
    x = np.random.default_rng(0).standard_normal(shape)
    m = SimAM(e_lambda=lam, dims=dims)
    got = m(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), simam_reference(x, dims, lam), rtol=1e-12, atol=1e-12)
    gate = m.gate(torch.from_numpy(x)).numpy()
    assert gate.shape == x.shape and (gate > 0.5).all() and (gate < 1).all()


def test_single_position_gives_the_half_energy_gate_not_nan():
    x = torch.randn(2, 3, 1, 1, dtype=F64, requires_grad=True)
    gate = SimAM().gate(x)
    torch.testing.assert_close(gate, torch.full_like(gate, torch.sigmoid(torch.tensor(0.5, dtype=F64)).item()))
    SimAM()(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert SimAM()(torch.randn(2, 3, 0, 4)).shape == (2, 3, 0, 4)


def test_gradcheck():
    x = torch.randn(2, 3, 3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(SimAM(e_lambda=0.1), (x,))


@settings(max_examples=20, deadline=None)
@given(dims=st.integers(1, 3), b=st.integers(1, 3), n=st.integers(2, 4), shift=st.floats(-5, 5), seed=st.integers(0, 2**16))
def test_gate_is_equivariant_to_positions_and_blind_to_a_channel_shift(dims, b, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, *(n,) * dims, generator=g, dtype=F64)
    m = SimAM(dims=dims)
    gate = m.gate(x)
    assert torch.isfinite(m(x)).all()
    perm = torch.randperm(n**dims, generator=g)
    permute = lambda t: t.flatten(2)[..., perm].view_as(t)  # noqa: E731
    torch.testing.assert_close(m.gate(permute(x)), permute(gate))
    torch.testing.assert_close(m.gate(x + shift), gate)  # depends on x - mean only


def test_no_parameters_no_identity_and_clear_errors():
    m = az.create_attention("simam", 64, device="cpu", dtype=torch.float32)
    assert type(m) is SimAM and list(m.parameters()) == [] and SimAM.retrofit_error is None
    with pytest.raises(ValueError, match=r"^SimAM has no parameters, so it cannot start as the identity .*; use init='default'$"):
        m.init_identity()
    with pytest.raises(ValueError, match="e_lambda must be a positive float, got 0"):
        SimAM(e_lambda=0)
    with pytest.raises(ValueError, match=r"x must be 5-D \(B, C, D, H, W\) or 4-D unbatched"):
        SimAM(dims=3)(torch.randn(2, 3, 4))


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler")
def test_compile_export_autocast():
    x = torch.randn(2, 8, 5, 6)
    m = SimAM()
    torch.testing.assert_close(torch.compile(m, fullgraph=True, dynamic=False)(x), m(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.export.export(m, (x,)).module()(x), m(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x.bfloat16())
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), m(x), atol=0.05, rtol=0.02)
