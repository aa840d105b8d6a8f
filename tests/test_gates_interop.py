"""The CNN gates inside practitioners' tooling: autocast, FX, jit.trace, export, ONNX, TorchScript.

Each test compares the tool's result with eager float32 (or float64) on the same weights.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

from attnzoo.channel import ChannelAttention, SqueezeExcite
from attnzoo.spatial import CBAM, SpatialAttention

NAMES = ["SqueezeExcite", "ChannelAttention", "SpatialAttention", "CBAM"]
C = 8


pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]


def gate(name: str, dims: int = 2, dtype: torch.dtype = torch.float32) -> nn.Module:
    return {
        "SqueezeExcite": lambda: SqueezeExcite(C, 2, dims=dims, dtype=dtype),
        "ChannelAttention": lambda: ChannelAttention(C, 2, dims=dims, dtype=dtype),
        "SpatialAttention": lambda: SpatialAttention(3, dims=dims, dtype=dtype),
        "CBAM": lambda: CBAM(C, 2, 3, dims=dims, dtype=dtype),
    }[name]()


def rand(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def fmap(dims: int, batch: int = 2, seed: int = 1) -> Tensor:
    return rand(batch, C, *{1: (9,), 2: (6, 5), 3: (3, 4, 5)}[dims], seed=seed)


class ResBlockNet(nn.Module):
    """conv-BN-ReLU stem, a residual block whose branch ends in the gate, pooled linear head."""

    def __init__(self, attn: nn.Module, dims: int) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
        self.stem = nn.Sequential(conv(3, C, 3, padding=1), bn(C), nn.ReLU())
        self.branch = nn.Sequential(conv(C, C, 3, padding=1, bias=False), bn(C), nn.ReLU(),
                                    conv(C, C, 3, padding=1, bias=False), bn(C), attn)
        self.head = nn.Linear(C, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.branch(h))
        return self.head(h.flatten(2).mean(2))


# ------------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_autocast_bfloat16_trains_and_evals_like_float32(name: str, dims: int) -> None:
    torch.manual_seed(0)
    net = ResBlockNet(gate(name, dims), dims)
    ref = copy.deepcopy(net)
    x = rand(4, 3, *{1: (16,), 2: (8, 6), 3: (4, 4, 3)}[dims])
    target = rand(4, 5, seed=2)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        loss = nn.functional.mse_loss(out.float(), target)
    loss.backward()
    ref_loss = nn.functional.mse_loss(ref(x), target)
    ref_loss.backward()
    assert out.dtype == torch.bfloat16  # the head ran in autocast's precision
    torch.testing.assert_close(loss, ref_loss, rtol=0.05, atol=0.02)
    attn = net.branch[-1]
    ref_grads = dict(ref.branch[-1].named_parameters())
    for pname, p in attn.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), pname
        assert bool(p.grad.any()) == bool(ref_grads[pname].grad.any()), pname  # (dead ReLU units give 0)
    g = torch.cat([p.grad.flatten() for p in attn.parameters()])
    r = torch.cat([ref_grads[n].grad.flatten() for n, _ in attn.named_parameters()])
    assert torch.cosine_similarity(g, r, dim=0) > 0.9  # the gate learns what float32 learns

    net.eval(), ref.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = net(x)
    torch.testing.assert_close(got.float(), ref(x).detach(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_dtype_mismatch_outside_autocast_is_a_clear_error(name: str) -> None:
    m = gate(name)
    with pytest.raises(TypeError, match=rf"x has dtype torch.bfloat16 but {name} parameters are torch.float32; "
                       r"convert the input or the module \(module.to\(torch.float32\)\)"):
        m(fmap(2).bfloat16())


# ---------------------------------------------------------------------------------- tracing


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fx_symbolic_trace_equals_eager(name: str, dims: int) -> None:
    torch.manual_seed(0)
    m = gate(name, dims)
    traced = torch.fx.symbolic_trace(m)
    for x in (fmap(dims), fmap(dims, batch=3, seed=5), fmap(dims, seed=6)[0]):  # other sizes, unbatched
        torch.testing.assert_close(traced(x), m(x), rtol=0, atol=0)


def test_fx_feature_extraction_sees_the_gates() -> None:
    """The sigmoids stay leaf modules in a traced network, so their outputs can be tapped."""
    torch.manual_seed(0)
    net = ResBlockNet(CBAM(C, 2, 3), 2).eval()
    traced = torch.fx.symbolic_trace(net)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"branch.5.channel.gate_act", "branch.5.spatial.gate_act", "branch.5.spatial.conv"} <= targets
    x = rand(2, 3, 8, 6)
    torch.testing.assert_close(traced(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [1, 3])
def test_jit_trace_equals_eager_without_tracer_warnings(name: str, dims: int) -> None:
    torch.manual_seed(0)
    m = gate(name, dims)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(m, fmap(dims))
    x = fmap(dims, batch=3, seed=7)  # another batch size and data than traced with
    torch.testing.assert_close(traced(x), m(x))


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_with_dynamic_batch_equals_eager(name: str) -> None:
    torch.manual_seed(0)
    m = gate(name).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(m, (fmap(2),), dynamic_shapes={"x": {0: batch}})
    for b in (1, 5):
        x = fmap(2, batch=b, seed=b)
        torch.testing.assert_close(ep.module()(x), m(x))


@pytest.mark.parametrize(("name", "dims"), [("SqueezeExcite", 2), ("CBAM", 1), ("CBAM", 2), ("CBAM", 3)])
def test_onnx_export_runs_in_onnxruntime(name: str, dims: int) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = gate(name, dims).eval()
    x = fmap(dims, seed=3)
    program = torch.onnx.export(m, (x,), opset_version=18, dynamo=True, verbose=False)
    proto = program.model_proto
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), m(x).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_fails_with_one_clear_error(name: str) -> None:
    pattern = (rf"^{name} does not support torch.jit.script; use torch.compile\(module\) or "
               r"torch.export.export\(module, args\) \(torch.jit.trace also works\)$")
    with pytest.raises(RuntimeError, match=pattern):
        torch.jit.script(gate(name))
    with pytest.raises(RuntimeError, match=pattern):  # also when nested in a user's network
        torch.jit.script(nn.Sequential(nn.Conv2d(3, C, 1), gate(name)))


@pytest.mark.parametrize(("dims", "batched"), [(1, False), (3, True)])
def test_compile_fullgraph_on_other_ranks(dims: int, batched: bool) -> None:
    """tests/test_compile.py compiles the 2-D gates with inductor; here dynamo alone
    (backend="eager", no C compiler, fast) shows the other ranks trace without a graph break."""
    torch.manual_seed(0)
    m = CBAM(C, 2, 3, dims=dims).eval()
    x = fmap(dims) if batched else fmap(dims)[0]
    compiled = torch.compile(m, fullgraph=True, dynamic=False, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=0, atol=0)


# ------------------------------------------------------------------- torch.func, autograd


@pytest.mark.parametrize("name", NAMES)
def test_vmap_jvp_and_double_backward(name: str) -> None:
    """vmap over samples (each call unbatched) equals the batched call; forward-mode jvp
    equals the Jacobian from reverse mode; second derivatives pass gradgradcheck."""
    torch.manual_seed(0)
    m = gate(name, dtype=torch.float64)
    x = fmap(2, batch=3).double()
    torch.testing.assert_close(torch.func.vmap(m)(x), m(x))
    t = torch.randn_like(x[:1])
    _, tangent = torch.func.jvp(m, (x[:1],), (t,))
    jac = torch.autograd.functional.jacobian(m, x[:1])  # (out..., in...)
    torch.testing.assert_close(tangent, (jac.flatten(x.dim()) @ t.flatten()).view_as(tangent))
    assert torch.autograd.gradgradcheck(m, (x[:1, :, :3, :3].clone().requires_grad_(),))
