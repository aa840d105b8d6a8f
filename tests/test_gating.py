"""Tests for the CNN gating modules: SqueezeExcite, ChannelAttention, SpatialAttention, CBAM.

The references below re-implement each paper's formula in plain float64 tensor code
(explicit sums, elementwise maxima, a hand-written cross-correlation), using the
module's own weights, so the modules are checked against the definitions rather than
against stored numbers.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call

from attnzoo.channel import ChannelAttention, SqueezeExcite, hidden_width
from attnzoo.spatial import CBAM, SpatialAttention

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread (tests/conftest.py)

F64 = torch.float64
C = 6  # channels used by most tests; reduction 2 gives a hidden width of 3

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "SqueezeExcite": lambda c=C, dtype=F64: SqueezeExcite(c, 2, dtype=dtype),
    "ChannelAttention": lambda c=C, dtype=F64: ChannelAttention(c, 2, dtype=dtype),
    "SpatialAttention": lambda c=C, dtype=F64: SpatialAttention(3, dtype=dtype),
    "CBAM": lambda c=C, dtype=F64: CBAM(c, 2, 3, dtype=dtype),
}
NAMES = list(BUILDERS)
CHANNEL_GATES = ["SqueezeExcite", "ChannelAttention"]
WITH_CHANNELS = ["SqueezeExcite", "ChannelAttention", "CBAM"]
WITH_KERNEL = [lambda k: SpatialAttention(k), lambda k: CBAM(C, 2, k)]
FAST = settings(max_examples=20, deadline=None)


def build(name: str, c: int = C, dtype: torch.dtype = F64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name](c, dtype)


def rand(*shape: int, dtype: torch.dtype = F64, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def gate_shape(name: str, x: Tensor) -> tuple[int, ...]:
    b, c, h, w = x.shape
    return {"SpatialAttention": (b, 1, h, w), "CBAM": (b, c, h, w)}.get(name, (b, c, 1, 1))


# ----------------------------------------------------------------------------- references


def ref_sigmoid(t: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def ref_mlp(z: Tensor, fc1: nn.Linear, fc2: nn.Linear) -> Tensor:
    """W1 relu(W0 z + b0) + b1 on rows of z (B, C)."""
    h = z @ fc1.weight.T + fc1.bias
    h = torch.where(h > 0, h, torch.zeros_like(h))
    return h @ fc2.weight.T + fc2.bias


def ref_avg_hw(x: Tensor) -> Tensor:
    return x.sum(dim=3).sum(dim=2) / (x.shape[2] * x.shape[3])


def ref_max_hw(x: Tensor) -> Tensor:
    return functools.reduce(torch.maximum, x.flatten(2).unbind(2))


def ref_squeeze_excite(m: SqueezeExcite, x: Tensor) -> tuple[Tensor, Tensor]:
    """SENet: s = sigmoid(W2 relu(W1 z)), z = global average pool; out = s * x."""
    s = ref_sigmoid(ref_mlp(ref_avg_hw(x), m.fc1, m.fc2))[:, :, None, None]
    return s * x, s


def ref_channel_attention(m: ChannelAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """CBAM eq. 2: Mc = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))); out = Mc * F."""
    logits = ref_mlp(ref_avg_hw(x), m.fc1, m.fc2) + ref_mlp(ref_max_hw(x), m.fc1, m.fc2)
    s = ref_sigmoid(logits)[:, :, None, None]
    return s * x, s


def ref_spatial_attention(m: SpatialAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """CBAM eq. 3: Ms = sigmoid(f([AvgPool_c(F); MaxPool_c(F)])); out = Ms * F."""
    b, c, h, w = x.shape
    avg = x.sum(dim=1) / c
    mx = functools.reduce(torch.maximum, x.unbind(1))
    desc = torch.stack([avg, mx], dim=1)  # (B, 2, H, W)
    k = m.kernel_size
    p = k // 2
    padded = torch.zeros(b, 2, h + 2 * p, w + 2 * p, dtype=x.dtype)
    padded[:, :, p : p + h, p : p + w] = desc
    weight = m.conv.weight  # (1, 2, k, k); cross-correlation, as in every CNN library
    out = torch.full((b, h, w), m.conv.bias.item(), dtype=x.dtype)
    for ch in range(2):
        for i in range(k):
            for j in range(k):
                out = out + weight[0, ch, i, j] * padded[:, ch, i : i + h, j : j + w]
    s = ref_sigmoid(out)[:, None]
    return s * x, s


def ref_cbam(m: CBAM, x: Tensor) -> tuple[Tensor, Tensor]:
    """F' = Mc(F) * F; F'' = Ms(F') * F'."""
    y, mc = ref_channel_attention(m.channel, x)
    out, ms = ref_spatial_attention(m.spatial, y)
    return out, mc * ms


REFERENCES: dict[type, Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]] = {
    SqueezeExcite: ref_squeeze_excite,
    ChannelAttention: ref_channel_attention,
    SpatialAttention: ref_spatial_attention,
    CBAM: ref_cbam,
}

PARITY_CASES = {
    "se": lambda: SqueezeExcite(C, 2, dtype=F64),
    "se-r16-c3": lambda: SqueezeExcite(3, 16, dtype=F64),
    "se-c32-r16": lambda: SqueezeExcite(32, 16, dtype=F64),
    "ca": lambda: ChannelAttention(C, 2, dtype=F64),
    "ca-r16-c1": lambda: ChannelAttention(1, 16, dtype=F64),
    "sa-k1": lambda: SpatialAttention(1, dtype=F64),
    "sa-k3": lambda: SpatialAttention(3, dtype=F64),
    "sa-k7": lambda: SpatialAttention(7, dtype=F64),
    "cbam-k3": lambda: CBAM(C, 2, 3, dtype=F64),
    "cbam-k7": lambda: CBAM(C, 3, 7, dtype=F64),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_paper_formula(case: str, batch: int) -> None:
    torch.manual_seed(0)
    m = PARITY_CASES[case]()
    c = m.channel.channels if isinstance(m, CBAM) else getattr(m, "channels", C)
    x = rand(batch, c, 5, 4)  # H != W catches transposed spatial code
    ref_out, ref_gate = REFERENCES[type(m)](m, x)
    torch.testing.assert_close(m(x), ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.gate(x), ref_gate.expand(gate_shape(type(m).__name__, x)))


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_matters(name: str) -> None:
    """A parity test cannot pass by ignoring a weight: nudging any parameter changes the output."""
    m = build(name)
    x = rand(2, C, 5, 4)
    out = m(x)
    for pname, _ in m.named_parameters():
        nudged = copy.deepcopy(m)
        with torch.no_grad():
            nudged.get_parameter(pname).add_(0.1)
        assert not torch.allclose(nudged(x), out), pname


# ----------------------------------------------------------------------- gradients, shapes


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_input_and_parameters(name: str) -> None:
    m = build(name)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]
    x = rand(2, C, 4, 3).requires_grad_()

    def f(x: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, C, 5, 4), (3, C, 1, 1), (2, C, 7, 2)])
def test_forward_equals_x_times_gate(name: str, shape: tuple[int, ...]) -> None:
    m = build(name)
    x = rand(*shape)
    g = m.gate(x)
    assert g.shape == gate_shape(name, x)
    out = m(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x * g)


@pytest.mark.parametrize("name", NAMES)
def test_gate_strictly_between_zero_and_one(name: str) -> None:
    m = build(name)
    g = m.gate(rand(4, C, 6, 5))
    assert (g > 0).all() and (g < 1).all()


@pytest.mark.parametrize("name", NAMES)
def test_gate_act_is_a_hooked_sigmoid(name: str) -> None:
    m = build(name)
    x = rand(2, C, 5, 4)
    acts = [m.channel.gate_act, m.spatial.gate_act] if name == "CBAM" else [m.gate_act]
    seen: list[Tensor] = []
    handles = [a.register_forward_hook(lambda mod, i, o: seen.append(o)) for a in acts]
    try:
        m(x)
    finally:
        for h in handles:
            h.remove()
    assert all(isinstance(a, nn.Sigmoid) for a in acts)
    assert len(seen) == len(acts)  # each sigmoid fires exactly once per forward
    if name == "CBAM":
        torch.testing.assert_close(seen[0], m.channel.gate(x))
        torch.testing.assert_close(seen[1], m.spatial.gate(m.channel(x)))
        torch.testing.assert_close(seen[0] * seen[1], m.gate(x))
    else:
        torch.testing.assert_close(seen[0], m.gate(x))


# ------------------------------------------------------------ properties from the definitions


@FAST
@given(
    name=st.sampled_from(CHANNEL_GATES),
    b=st.integers(1, 3),
    c=st.integers(1, 8),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_channel_gate_ignores_pixel_order(name: str, b: int, c: int, h: int, w: int, seed: int) -> None:
    m = build(name, c)
    x = rand(b, c, h, w, seed=seed)
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    shuffled = x.flatten(2)[:, :, perm].reshape(x.shape)  # same permutation for all channels
    torch.testing.assert_close(m.gate(shuffled), m.gate(x))
    torch.testing.assert_close(m(shuffled), m(x).flatten(2)[:, :, perm].reshape(x.shape))


@FAST
@given(b=st.integers(1, 3), c=st.integers(1, 8), h=st.integers(1, 6), w=st.integers(1, 6),
       k=st.sampled_from([1, 3, 5, 7]), seed=st.integers(0, 2**16))
def test_spatial_gate_ignores_channel_order(b: int, c: int, h: int, w: int, k: int, seed: int) -> None:
    torch.manual_seed(seed)
    m = SpatialAttention(k, dtype=F64)
    x = rand(b, c, h, w, seed=seed)
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(m.gate(x[:, perm]), m.gate(x))
    torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm])


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_independent(name: str) -> None:
    """No batch statistics (no BatchNorm): each sample's gate depends on that sample only."""
    m = build(name)
    x = rand(3, C, 5, 4)
    full = m.gate(x)
    for i in range(3):
        torch.testing.assert_close(m.gate(x[i : i + 1]), full[i : i + 1])


def test_cbam_is_spatial_after_channel_without_residual() -> None:
    m = build("CBAM")
    assert [n for n, _ in m.named_children()] == ["channel", "spatial"]
    assert isinstance(m.channel, ChannelAttention) and isinstance(m.spatial, SpatialAttention)
    x = rand(2, C, 5, 4)
    assert torch.equal(m(x), m.spatial(m.channel(x)))
    assert not torch.allclose(m(x), x + m.spatial(m.channel(x)))
    assert m.channel.hidden_channels == C // 2 and m.spatial.kernel_size == 3


def test_channel_attention_differs_from_squeeze_excite() -> None:
    """Same weights, but CBAM's channel gate also sees the max-pooled descriptor."""
    torch.manual_seed(0)
    se = SqueezeExcite(C, 2, dtype=F64)
    ca = ChannelAttention(C, 2, dtype=F64)
    ca.load_state_dict(se.state_dict())
    x = rand(2, C, 5, 4)
    assert not torch.allclose(se.gate(x), ca.gate(x))


# ----------------------------------------------------------------------------- hidden width


@pytest.mark.parametrize(
    ("channels", "reduction", "min_hidden", "expected"),
    [(1, 16, 1, 1), (3, 16, 1, 1), (15, 16, 1, 1), (16, 16, 1, 1), (32, 16, 1, 2),
     (40, 16, 1, 2), (256, 16, 1, 16), (2048, 16, 1, 128), (32, 16, 8, 8), (7, 1, 1, 7)],
)
def test_hidden_width(channels: int, reduction: int, min_hidden: int, expected: int) -> None:
    assert hidden_width(channels, reduction, min_hidden) == expected
    for cls in (SqueezeExcite, ChannelAttention):
        m = cls(channels, reduction, min_hidden=min_hidden)
        assert m.hidden_channels == m.fc1.out_features == m.fc2.in_features == expected
    assert CBAM(channels, reduction, min_hidden=min_hidden).channel.hidden_channels == expected


@settings(max_examples=100, deadline=None)
@given(channels=st.integers(1, 4096), reduction=st.integers(1, 64), min_hidden=st.integers(1, 16))
def test_hidden_width_bounds(channels: int, reduction: int, min_hidden: int) -> None:
    hidden = hidden_width(channels, reduction, min_hidden)
    assert hidden >= min_hidden >= 1
    assert hidden == min_hidden or hidden <= channels / reduction
    if channels % reduction == 0:
        assert hidden == max(min_hidden, channels // reduction)


@pytest.mark.parametrize("cls", [SqueezeExcite, ChannelAttention, CBAM])
@pytest.mark.parametrize("channels", [1, 3])
def test_tiny_channel_counts_still_have_a_live_gate(cls: type, channels: int) -> None:
    torch.manual_seed(0)
    m = cls(channels, 16, dtype=F64)
    x = rand(2, channels, 4, 4)
    assert m(x).shape == x.shape
    assert not torch.allclose(m.gate(x), m.gate(-x))  # not a constant sigmoid(bias)


# ------------------------------------------------------------------------- runtime settings


@pytest.mark.parametrize("name", NAMES)
def test_no_grad_and_batch_of_one(name: str) -> None:
    m = build(name, dtype=torch.float32)
    x = rand(1, C, 5, 4, dtype=torch.float32)
    expected = m(x)
    with torch.no_grad():
        out = m(x)
        g = m.gate(x)
    assert not out.requires_grad and not g.requires_grad
    assert g.shape == gate_shape(name, x)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1e4, 1e15])
def test_no_nan_for_large_inputs(name: str, scale: float) -> None:
    m = build(name, dtype=torch.float32)
    x = (rand(2, C, 5, 4, dtype=torch.float32) * scale).requires_grad_()
    out = m(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(m.gate(x)).all()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_input(name: str) -> None:
    m = build(name)
    x = rand(2, C, 5, 4)
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), m(x))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_device_and_dtype_arguments(dtype: torch.dtype) -> None:
    modules = [
        SqueezeExcite(C, device="cpu", dtype=dtype),
        ChannelAttention(C, device="cpu", dtype=dtype),
        SpatialAttention(device="cpu", dtype=dtype),
        CBAM(C, device="cpu", dtype=dtype),
    ]
    for m in modules:
        assert all(p.dtype == dtype and p.device.type == "cpu" for p in m.parameters())
        assert m(rand(1, C, 3, 3, dtype=dtype)).dtype == dtype


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls", [SqueezeExcite, ChannelAttention, CBAM])
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"channels": 0}, ValueError, r"channels must be a positive int, got 0"),
        ({"channels": -4}, ValueError, r"channels must be a positive int, got -4"),
        ({"channels": 2.0}, TypeError, r"channels must be an int, got float"),
        ({"channels": "8"}, TypeError, r"channels must be an int, got str"),
        ({"channels": True}, TypeError, r"channels must be an int, got bool"),
        ({"channels": 8, "reduction": 0}, ValueError, r"reduction must be a positive int, got 0"),
        ({"channels": 8, "reduction": -2}, ValueError, r"reduction must be a positive int, got -2"),
        ({"channels": 8, "reduction": 1.5}, TypeError, r"reduction must be an int, got float"),
        ({"channels": 8, "min_hidden": 0}, ValueError, r"min_hidden must be a positive int, got 0"),
    ],
)
def test_bad_constructor_arguments(cls: type, kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        cls(**kwargs)


@pytest.mark.parametrize("make", WITH_KERNEL, ids=["SpatialAttention", "CBAM"])
@pytest.mark.parametrize(
    ("k", "error", "pattern"),
    [
        (4, ValueError, r"kernel_size must be odd.*got 4"),
        (0, ValueError, r"kernel_size must be a positive int, got 0"),
        (-3, ValueError, r"kernel_size must be a positive int, got -3"),
        (3.0, TypeError, r"kernel_size must be an int, got float"),
    ],
)
def test_bad_kernel_size(
    make: Callable[[object], nn.Module], k: object, error: type, pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        make(k)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("x", "error", "pattern"),
    [
        (rand(C, 5), ValueError, r"x must be 4-D \(B, C, H, W\) or 3-D unbatched \(C, H, W\) "
         r"for \w+\(dims=2\), got shape \(6, 5\); build it with dims=1 for \(B, C, L\), "
         r"dims=3 for \(B, C, D, H, W\)"),
        (rand(1, 1, C, 5, 4), ValueError, r"x must be 4-D .*got shape \(1, 1, 6, 5, 4\)"),
        (
            torch.ones(2, C, 5, 4, dtype=torch.int64),
            TypeError,
            r"x must be a floating-point tensor, got dtype torch.int64",
        ),
        (torch.ones(2, C, 5, 4, dtype=torch.bool), TypeError, r"x must be a floating-point tensor"),
        (
            rand(2, C, 5, 4, dtype=torch.float32),
            TypeError,
            r"x has dtype torch.float32 but \w+ parameters are torch.float64",
        ),
        ([[1.0]], TypeError, r"x must be a torch.Tensor, got list"),
    ],
)
def test_bad_input(name: str, x: object, error: type, pattern: str) -> None:
    m = build(name)
    with pytest.raises(error, match=pattern):
        m(x)
    with pytest.raises(error, match=pattern):
        m.gate(x)


@pytest.mark.parametrize("name", WITH_CHANNELS)
@pytest.mark.parametrize("got", [C - 1, C + 2])
def test_wrong_channel_count(name: str, got: int) -> None:
    m = build(name)
    with pytest.raises(ValueError, match=rf"x must have {C} channels \(dim 1\).*got {got}"):
        m(rand(2, got, 5, 4))
