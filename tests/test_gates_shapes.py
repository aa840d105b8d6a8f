"""The CNN gates on 1-D, 2-D and 3-D feature maps, unbatched inputs and empty sizes.

References re-implement the papers' formulas for any number of spatial dims in plain
float64 code (explicit sums, elementwise maxima, a hand-written N-d cross-correlation)
with the module's own weights.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from attnzoo.channel import ChannelAttention, SqueezeExcite
from attnzoo.spatial import CBAM, SpatialAttention

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread (tests/conftest.py)

F64 = torch.float64
C = 5
NAMES = ["SqueezeExcite", "ChannelAttention", "SpatialAttention", "CBAM"]
SPATIAL = {1: (7,), 2: (5, 4), 3: (3, 4, 2)}  # unequal sizes catch transposed code


def build(name: str, dims: int, k: int = 3, dtype: torch.dtype = F64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return {
        "SqueezeExcite": lambda: SqueezeExcite(C, 2, dims=dims, dtype=dtype),
        "ChannelAttention": lambda: ChannelAttention(C, 2, dims=dims, dtype=dtype),
        "SpatialAttention": lambda: SpatialAttention(k, dims=dims, dtype=dtype),
        "CBAM": lambda: CBAM(C, 2, k, dims=dims, dtype=dtype),
    }[name]()


def rand(*shape: int, dtype: torch.dtype = F64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- references


def ref_sigmoid(t: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def ref_mlp(z: Tensor, m: nn.Module) -> Tensor:
    h = z @ m.fc1.weight.T + m.fc1.bias
    h = torch.where(h > 0, h, torch.zeros_like(h))
    return h @ m.fc2.weight.T + m.fc2.bias


def ref_channel(m: nn.Module, x: Tensor) -> Tensor:
    """Gate (B, C, 1, ...) of SE (avg only) or CBAM eq. 2 (avg and max), x batched."""
    flat = x.flatten(2)  # (B, C, N)
    avg = flat.sum(2) / flat.shape[2]
    logits = ref_mlp(avg, m)
    if isinstance(m, ChannelAttention):
        logits = logits + ref_mlp(functools.reduce(torch.maximum, flat.unbind(2)), m)
    return ref_sigmoid(logits).reshape(*x.shape[:2], *[1] * (x.dim() - 2))


def ref_spatial(m: SpatialAttention, x: Tensor) -> Tensor:
    """Gate (B, 1, *spatial) of CBAM eq. 3 with an N-d cross-correlation, x batched."""
    b, c, *size = x.shape
    desc = torch.stack([x.sum(1) / c, functools.reduce(torch.maximum, x.unbind(1))], 1)
    k, p = m.kernel_size, m.kernel_size // 2
    padded = torch.zeros(b, 2, *[s + 2 * p for s in size], dtype=x.dtype)
    padded[(slice(None), slice(None), *[slice(p, p + s) for s in size])] = desc
    out = torch.full((b, *size), m.conv.bias.item(), dtype=x.dtype)
    for ch in range(2):
        for off in itertools.product(range(k), repeat=len(size)):
            window = padded[(slice(None), ch, *[slice(o, o + s) for o, s in zip(off, size)])]
            out = out + m.conv.weight[(0, ch, *off)] * window
    return ref_sigmoid(out)[:, None]


def ref_gate(m: nn.Module, x: Tensor) -> Tensor:
    if isinstance(m, CBAM):
        mc = ref_channel(m.channel, x)
        return mc * ref_spatial(m.spatial, mc * x)
    if isinstance(m, SpatialAttention):
        return ref_spatial(m, x)
    return ref_channel(m, x)


# ------------------------------------------------------------------------- ranks, parity


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("batched", [True, False])
def test_matches_formula_per_rank(name: str, dims: int, batched: bool) -> None:
    m = build(name, dims)
    xb = rand(2, C, *SPATIAL[dims])
    expected = ref_gate(m, xb)
    x, expected = (xb, expected) if batched else (xb[1], expected[1])
    g = m.gate(x)
    assert g.shape == expected.shape
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m(x), x * expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gradcheck_per_rank(name: str, dims: int) -> None:
    m = build(name, dims)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]
    x = rand(2, C, *[min(s, 3) for s in SPATIAL[dims]]).requires_grad_()

    def f(x: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradcheck(f, (x[0].detach().requires_grad_(), *params))  # unbatched


@pytest.mark.parametrize("dims", [1, 3])
def test_spatial_conv_follows_the_rank(dims: int) -> None:
    """A dims-N gate equals the dims-2 gate on the same data with a size-1 axis added.

    With a size-1 axis and padding k // 2 only the kernel's middle slice along that axis
    meets data, so the N-d weight is that slice (or the 2-d weight is the N-d middle slice).
    """
    k = 5
    m, m2 = build("CBAM", dims, k), build("CBAM", 2, k, seed=3)
    mid = k // 2
    with torch.no_grad():
        if dims == 1:  # (B, C, L) == (B, C, L, 1)
            m.load_state_dict(m2.state_dict() | {"spatial.conv.weight": m2.spatial.conv.weight[..., mid]})
            x = rand(2, C, 6)
            x2 = x[..., None]
        else:  # (B, C, 1, H, W) == (B, C, H, W)
            m2.load_state_dict(m.state_dict() | {"spatial.conv.weight": m.spatial.conv.weight[:, :, mid]})
            x2 = rand(2, C, 4, 3)
            x = x2[:, :, None]
    assert type(m.spatial.conv) is {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    assert m.spatial.conv.weight.shape == (1, 2) + (k,) * dims
    torch.testing.assert_close(m(x).reshape(x2.shape), m2(x2), rtol=1e-12, atol=1e-12)


def test_two_d_state_dict_layout_is_unchanged() -> None:
    """The default (dims=2) keeps the layout of earlier releases, so their checkpoints load."""
    torch.manual_seed(0)
    saved = {  # what CBAM(4, 2, 3).state_dict() held before dims existed
        "channel.fc1.weight": torch.randn(2, 4), "channel.fc1.bias": torch.randn(2),
        "channel.fc2.weight": torch.randn(4, 2), "channel.fc2.bias": torch.randn(4),
        "spatial.conv.weight": torch.randn(1, 2, 3, 3), "spatial.conv.bias": torch.randn(1),
    }
    m = CBAM(4, 2, 3)
    m.load_state_dict(saved)  # strict
    assert type(m.spatial.conv) is nn.Conv2d and repr(m.spatial) == "SpatialAttention(\n  kernel_size=3\n" \
        "  (conv): Conv2d(2, 1, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n  (gate_act): Sigmoid()\n)"
    channel_only = {k.removeprefix("channel."): v for k, v in saved.items() if k.startswith("channel.")}
    for dims in (1, 3):  # the channel MLP does not depend on the rank
        SqueezeExcite(4, 2, dims=dims).load_state_dict(channel_only)


@pytest.mark.parametrize("name", NAMES)
def test_modules_pickled_before_dims_existed_still_run(name: str) -> None:
    """torch.save(module) of an earlier release restores a __dict__ without ``dims``."""
    m = build(name, 2)
    x = rand(2, C, 5, 4)
    expected = m(x)
    for sub in m.modules():
        sub.__dict__.pop("dims", None)
    torch.testing.assert_close(m(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(m(x[0]), expected[0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("dims", "shape", "pattern"),
    [
        (1, (2, C, 4, 4), r"x must be 3-D \(B, C, L\) or 2-D unbatched \(C, L\) for {name}\(dims=1\), "
         r"got shape \(2, 5, 4, 4\); build it with dims=2 for \(B, C, H, W\), dims=3 for \(B, C, D, H, W\)"),
        (1, (C,), r"x must be 3-D \(B, C, L\) or 2-D unbatched .*got shape \(5,\)"),
        (2, (2, C, 3, 4, 4), r"x must be 4-D \(B, C, H, W\) or 3-D unbatched \(C, H, W\) for {name}\(dims=2\)"),
        (3, (2, C, 4), r"x must be 5-D \(B, C, D, H, W\) or 4-D unbatched \(C, D, H, W\) for "
         r"{name}\(dims=3\), got shape \(2, 5, 4\); build it with dims=1 for \(B, C, L\), dims=2 for"),
        (3, (1, 1, C, 2, 2, 2), r"x must be 5-D .*got shape \(1, 1, 5, 2, 2, 2\)"),
    ],
)
def test_bad_rank(name: str, dims: int, shape: tuple[int, ...], pattern: str) -> None:
    m = build(name, dims)
    pattern = pattern.replace("{name}", name)
    with pytest.raises(ValueError, match=pattern):
        m(torch.zeros(shape, dtype=F64))
    with pytest.raises(ValueError, match=pattern):
        m.gate(torch.zeros(shape, dtype=F64))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("dims", "error", "pattern"),
    [(0, ValueError, r"dims must be 1, 2 or 3 \(spatial dimensions\), got 0"),
     (4, ValueError, r"dims must be 1, 2 or 3 \(spatial dimensions\), got 4"),
     (2.0, TypeError, r"dims must be an int \(1, 2 or 3\), got float"),
     (True, TypeError, r"dims must be an int \(1, 2 or 3\), got bool")],
)
def test_bad_dims(name: str, dims: object, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        build(name, dims)


def test_wrong_channel_count_unbatched_names_dim_0() -> None:
    with pytest.raises(ValueError, match=r"x must have 5 channels \(dim 0\) for this CBAM, got 4 \(shape \(4, 3, 3\)\)$"):
        build("CBAM", 2)(rand(4, 3, 3))


@pytest.mark.parametrize("name", ["SqueezeExcite", "ChannelAttention", "CBAM"])
def test_batched_input_of_a_lower_rank_gets_a_dims_hint(name: str) -> None:
    """(B, C, H, W) given to a dims=3 gate reads as an unbatched (C, D, H, W) one."""
    with pytest.raises(ValueError, match=rf"x must have 5 channels \(dim 0\) for this {name}, got 2 "
                       r"\(shape \(2, 5, 4, 4\)\); read as unbatched; a batched input with 2 spatial dims needs dims=2"):
        build(name, 3)(rand(2, C, 4, 4))


# ---------------------------------------------------------------------------- empty sizes

EMPTY = {
    1: [(2, C, 0), (0, C, 4), (C, 0)],
    2: [(2, C, 0, 4), (2, C, 4, 0), (0, C, 4, 4), (0, C, 0, 0), (C, 0, 3)],
    3: [(2, C, 0, 3, 3), (2, C, 2, 3, 0), (0, C, 2, 2, 2), (C, 2, 0, 2)],
}
EMPTY_CASES = [(d, s) for d, shapes in EMPTY.items() for s in shapes]


def expected_gate_shape(name: str, x: Tensor, dims: int) -> tuple[int, ...]:
    lead, c, spatial = x.shape[: x.dim() - dims - 1], x.shape[-dims - 1], x.shape[-dims:]
    if name == "SpatialAttention":
        return (*lead, 1, *spatial)
    if name == "CBAM":
        return tuple(x.shape)
    return (*lead, c, *[1] * dims)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("dims", "shape"), EMPTY_CASES, ids=[str(s) for _, s in EMPTY_CASES])
def test_empty_sizes(name: str, dims: int, shape: tuple[int, ...]) -> None:
    """Like torch's layers on empty input: an empty result, a finite gate, zero gradients."""
    m = build(name, dims)
    x = torch.zeros(shape, dtype=F64, requires_grad=True)
    out, g = m(x), m.gate(x)
    assert out.shape == x.shape and out.numel() == 0
    assert g.shape == expected_gate_shape(name, x, dims)
    assert torch.isfinite(g).all() and ((g > 0) & (g < 1)).all()
    (out.sum() + g.sum()).backward()
    assert x.grad.shape == x.shape
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    if g.numel():  # an empty map pools to 0: the gate is the MLP's answer to 0
        zero = torch.zeros(g.shape[0] if x.dim() == dims + 2 else 1, C, dtype=F64)
        expected = torch.sigmoid(ref_mlp(zero, m) * (2 if name == "ChannelAttention" else 1))
        torch.testing.assert_close(g.reshape(-1, C), expected.expand(g.reshape(-1, C).shape))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_spatial_attention_on_zero_channels(dims: int) -> None:
    """C = 0: both descriptors are empty sums (0), so the gate is sigmoid(conv(0))."""
    m = build("SpatialAttention", dims)
    x = torch.zeros(2, 0, *SPATIAL[dims], dtype=F64, requires_grad=True)
    g = m.gate(x)
    expected = torch.sigmoid(m.conv(torch.zeros(2, 2, *SPATIAL[dims], dtype=F64)))
    torch.testing.assert_close(g, expected)
    m(x).sum().backward()
    assert torch.isfinite(m.conv.weight.grad).all()


@pytest.mark.parametrize("name", ["SqueezeExcite", "ChannelAttention", "CBAM"])
def test_zero_channels_is_a_channel_count_error(name: str) -> None:
    with pytest.raises(ValueError, match=rf"x must have {C} channels \(dim 1\) for this {name}, got 0"):
        build(name, 2)(torch.zeros(2, 0, 3, 3, dtype=F64))

