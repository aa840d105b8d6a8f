"""add_attention / find_attention on networks attnzoo does not know: transformers' ResNet
(basic and bottleneck blocks) and ConvNeXt built from small configs with random weights
(nothing is downloaded), hand-written residual blocks, and a plain nn.Sequential CNN."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.record import AttentionRecorder
from attnzoo.retrofit import ScaledSigmoid

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("single_thread")


def hf_resnet(layer_type: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2],
                                    layer_type=layer_type, num_labels=3)
    return transformers.ResNetForImageClassification(cfg).eval()


def hf_convnext(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return transformers.ConvNextModel(transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)).eval()


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class TorchvisionStyleBlock(nn.Module):
    """A basic block in torchvision's layout: ``downsample`` is None or a projection."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


def test_se_resnet50_parameter_count():
    """SENet paper: SE (r = 16) in every bottleneck of ResNet-50 adds ~2.53 M (25.6 M -> 28.1 M)."""
    cfg = transformers.ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                                    layer_type="bottleneck", num_labels=1000)
    with torch.device("meta"):  # shapes only: no memory, no initialisation, no forward
        model = transformers.ResNetForImageClassification(cfg)
    before = n_params(model)
    az.add_attention(model, "se", reduction=16)
    gates = az.find_attention(model)
    assert len(gates) == 16  # one per bottleneck
    assert all(p.is_meta for _, g in gates for p in g.parameters())  # made where the model lives
    assert [g.channels for _, g in gates] == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    # the SENet count: 2/r sum_s N_s C_s^2 weights, plus the biases (C/r + C per block)
    expected = sum(n * (2 * c * c // 16 + c // 16 + c) for n, c in zip(cfg.depths, cfg.hidden_sizes))
    assert n_params(model) - before == expected
    assert round(before / 1e6, 1) == 25.6 and round(n_params(model) / 1e6, 1) == 28.1
    assert round((n_params(model) - before) / 1e6, 2) == 2.53


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
@pytest.mark.parametrize("kind", ["se", "cbam"])
def test_hf_resnet_identity_start_is_bit_equal_and_gates_learn(layer_type, kind):
    model = hf_resnet(layer_type)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x).logits
    keys = set(model.state_dict())
    out = az.add_attention(model, kind, init="identity", reduction=2, **({"kernel_size": 3} if kind == "cbam" else {}))
    assert out is model
    gates = az.find_attention(model)
    names = [n for n, _ in gates]
    assert names == [f"resnet.encoder.stages.{s}.layers.{i}.attnzoo_gate_layer" for s, i in ((0, 0), (1, 0), (1, 1))]
    # each gate sits at the end of the branch: its channel count is that block's output width
    chans = [g.channels if kind == "se" else g.channel.channels for _, g in gates]
    assert chans == [8, 16, 16]
    assert keys <= set(model.state_dict())  # original names kept: a pretrained state dict still loads
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)  # exact identity at insertion
    model.train()
    model(x).logits.square().sum().backward()
    for _, g in gates:
        last = [g.fc2] if kind == "se" else [g.channel.fc2, g.spatial.conv]
        assert all(m.weight.grad.abs().sum() > 0 and m.bias.grad.abs().sum() > 0 for m in last)
    # one optimiser step on the gates alone and the network is no longer the pretrained one
    with torch.no_grad():
        for _, g in gates:
            for p in g.parameters():
                p -= 0.1 * p.grad if p.grad is not None else 0
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x).logits, before)


def test_gate_runs_on_the_residual_branch_before_the_addition():
    model = hf_resnet("basic")
    az.add_attention(model, "se", reduction=2)
    block = model.resnet.encoder.stages[1].layers[0]
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        branch = block.layer[1](block.layer[0](x))  # the branch's layers, called without its hook
        want = block.activation(block.attnzoo_gate_layer(branch) + block.shortcut(x))
        assert torch.equal(block(x), want)


def test_hf_convnext_blocks_and_recorder():
    model = hf_convnext()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x).pooler_output
    az.add_attention(model, "se", init="identity", reduction=4)
    names = [n for n, _ in az.find_attention(model)]
    assert names == ["encoder.stages.0.layers.0.drop_path.attnzoo_gate", "encoder.stages.1.layers.0.drop_path.attnzoo_gate"]
    assert [g.channels for _, g in az.find_attention(model)] == [8, 16]
    with torch.no_grad():
        assert torch.equal(model(x).pooler_output, before)
        with AttentionRecorder(model) as rec:
            model(x)
    assert rec.names == names and all(torch.all(t == 1) for t in (rec[n][0] for n in names))
    assert rec[names[1]][0].shape == (2, 16, 1, 1)


def test_convs_places_a_gate_after_every_conv():
    model = hf_resnet("bottleneck")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    az.add_attention(model, "spatial", where="convs", kernel_size=3)
    assert [n for n, _ in az.find_attention(model)] == [f"{n}.attnzoo_gate" for n in convs]
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


def test_plain_sequential_cnn_and_callable_where():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match=r"where='blocks'\) found no residual block in Sequential: no module's "
                                         r"forward adds a convolutional branch to its own input"):
        az.add_attention(seq, "se")
    x = torch.randn(2, 3, 9, 9)
    ref = seq(x)
    az.add_attention(seq, "cbam", where="convs", init="identity", reduction=2)
    assert [(n, g.channel.channels) for n, g in az.find_attention(seq)] == [("0.attnzoo_gate", 8), ("3.attnzoo_gate", 4)]
    assert torch.equal(seq(x), ref)
    seq2 = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).double()
    az.add_attention(seq2, "se", where=lambda name, m: isinstance(m, nn.BatchNorm2d), reduction=4)
    assert [(n, g.fc1.weight.dtype) for n, g in az.find_attention(seq2)] == [("1.attnzoo_gate", torch.float64)]
    with pytest.raises(ValueError, match=r"cannot tell the channel count after '2' \(ReLU\)"):
        az.add_attention(seq2, "se", where=lambda name, m: isinstance(m, nn.ReLU))
    with pytest.raises(ValueError, match="'1' already has a gate from add_attention"):
        az.add_attention(seq2, "se", where=lambda name, m: name == "1")
    with pytest.raises(ValueError, match="the callable selected no module"):
        az.add_attention(seq2, "se", where=lambda name, m: False)


def test_handwritten_blocks_and_a_residual_root():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Sequential(TorchvisionStyleBlock(8, 8), TorchvisionStyleBlock(8, 16, 2))
            self.refine = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))

        def forward(self, x):
            h = self.body(self.stem(x))
            return h + self.refine(h)  # a residual add in the root itself, branch = a Sequential

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    ref = net(x)
    az.add_attention(net, "se", init="identity", reduction=4)
    assert [(n, g.channels) for n, g in az.find_attention(net)] == [
        ("body.0.bn2.attnzoo_gate", 8), ("body.1.bn2.attnzoo_gate", 16), ("attnzoo_gate_refine", 16)]
    assert torch.equal(net(x), ref)


def test_copy_pickle_and_state_dict_round_trip():
    model = hf_resnet("basic")
    az.add_attention(model, "se", reduction=2)
    x = torch.randn(1, 3, 32, 32)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for _, g in az.find_attention(twin):
            g.fc2.bias.fill_(3.0)  # a copy's gates are its own
        assert not torch.equal(twin(x).logits, model(x).logits)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    fresh = az.add_attention(hf_resnet("basic", seed=1), "se", reduction=2)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits) and torch.equal(fresh(x).logits, model(x).logits)


class RegisteredBackwards(nn.Module):
    """Its last registered layer is not its last executed one: the channel guess is wrong."""

    def __init__(self):
        super().__init__()
        self.late = nn.Conv2d(8, 4, 1)
        self.early = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.late(self.early(x))


def test_a_wrong_channel_guess_fails_loudly_naming_the_place():
    net = nn.Sequential(RegisteredBackwards())
    az.add_attention(net, "se", where=lambda name, m: name == "0", reduction=2)
    with pytest.raises(ValueError, match=r"the SqueezeExcite that add_attention put after '0': x must have 8 channels"):
        net(torch.randn(1, 3, 4, 4))


class BranchEndsInAnOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + 0.5 * self.conv(x)


def test_unsupported_and_bad_arguments():
    with pytest.raises(ValueError, match=r"block 'BranchEndsInAnOp': the residual branch of BranchEndsInAnOp "
                                         r"ends in call_function <built-in function mul>"):
        az.add_attention(BranchEndsInAnOp(), "se")
    with pytest.raises(ValueError, match="found no residual block in Linear"):
        az.add_attention(nn.Linear(3, 3), "se")
    with pytest.raises(ValueError, match="found nothing to gate in Linear: no convolution"):
        az.add_attention(nn.Linear(3, 3), "se", where="convs")
    m = hf_resnet("basic")
    with pytest.raises(ValueError, match=r"kind must be one of \('se', 'channel', 'spatial', 'cbam', 'eca', 'ese', 'ge', 'coord', 'bam', "
                       r"'triplet', 'srm', 'gc', 'nonlocal', 'simam'\), got 'mha'"):
        az.add_attention(m, "mha")
    with pytest.raises(ValueError, match="where must be 'blocks', 'convs' or a callable"):
        az.add_attention(m, "se", where="everywhere")
    with pytest.raises(ValueError, match=r"init must be one of \('default', 'identity'\), got 'zeros'"):
        az.add_attention(m, "se", init="zeros")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        az.add_attention("resnet", "se")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        az.find_attention(3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'kernel_size'"):
        az.add_attention(m, "se", kernel_size=3)
    assert az.find_attention(m) == []  # errors above left the model unchanged
    assert not any(m._forward_hooks for m in m.modules())


def test_scaled_sigmoid_is_exactly_one_at_zero():
    assert torch.equal(ScaledSigmoid(2.0)(torch.zeros(3, dtype=torch.float64)), torch.ones(3, dtype=torch.float64))
    assert torch.equal(ScaledSigmoid(2.0)(torch.zeros(3, dtype=torch.float16)), torch.ones(3, dtype=torch.float16))


def test_a_model_of_containers_only_is_refused_unchanged():
    seq = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Sequential(nn.Conv2d(4, 4, 3)))
    with pytest.raises(ValueError, match=r"cannot attach a gate after '0': it and all its parents are containers"):
        az.add_attention(seq, "se", where=lambda name, m: name in ("1.0", "0"))
    assert az.find_attention(seq) == [] and not any(m._forward_hooks for m in seq.modules())


class SharedConvBlock(nn.Module):
    """A residual block whose branch is a conv it shares with another block."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


def test_a_conv_shared_by_two_blocks_gets_one_gate_applied_once():
    torch.manual_seed(0)
    c = nn.Conv2d(8, 8, 3, padding=1)
    model = nn.Sequential(SharedConvBlock(c), SharedConvBlock(c))
    az.add_attention(model, "se", reduction=2)
    gates = az.find_attention(model)
    assert [n for n, _ in gates] == ["0.conv.attnzoo_gate"]
    assert sum(isinstance(h, az.retrofit._ApplyGate) for h in c._forward_hooks.values()) == 1
    gate = gates[0][1]
    assert {id(p) for p in gate.parameters()} <= {id(p) for p in model.parameters()}
    sd = model.state_dict()  # the shared conv and its one gate are listed under both blocks, like any shared module
    assert {k for k in sd if "attnzoo_gate" in k} == {
        f"{i}.conv.attnzoo_gate.{p}" for i in (0, 1) for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
    assert all(sd[f"{i}.conv.attnzoo_gate.{p}"].data_ptr() == t.data_ptr()
               for i in (0, 1) for p, t in gate.named_parameters())
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        h = torch.relu(gate(nn.functional.conv2d(x, c.weight, c.bias, padding=1)) + x)  # gated once per call
        want = torch.relu(gate(nn.functional.conv2d(h, c.weight, c.bias, padding=1)) + h)
        assert torch.allclose(model(x), want, atol=1e-6)


class ResBlock(nn.Module):
    """``relu(bn(conv2(relu(conv1(x)))) + x)`` for Conv1d, Conv2d or Conv3d."""

    def __init__(self, dims: int, c: int = 8) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
        self.conv1, self.conv2, self.bn = conv(c, c, 3, padding=1), conv(c, c, 3, padding=1), bn(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv2(torch.relu(self.conv1(x)))) + x)


class LayerNormEndedBlock(nn.Module):
    """A residual branch that ends in a GroupNorm: its dims come from the block's convs."""

    def __init__(self, dims: int, c: int = 8) -> None:
        super().__init__()
        self.conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](c, c, 3, padding=1)
        self.norm = nn.GroupNorm(2, c)

    def forward(self, x):
        return self.norm(self.conv(x)) + x


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kind", ["se", "channel", "spatial", "cbam"])
@pytest.mark.parametrize("where", ["blocks", "convs", "callable"])
def test_gates_follow_the_dimensionality_of_the_conv_they_gate(dims, kind, where):
    torch.manual_seed(0)
    model = nn.Sequential(ResBlock(dims), LayerNormEndedBlock(dims)).eval()
    kw = {"kernel_size": 3} if kind in ("spatial", "cbam") else {}
    kw.update({"reduction": 2} if kind != "spatial" else {})
    sel = (lambda n, m: n in ("0.bn", "1.norm")) if where == "callable" else where
    az.add_attention(model, kind, where=sel, **kw)
    gates = az.find_attention(model)
    assert len(gates) == (3 if where == "convs" else 2)
    assert all(g.channel.dims == g.spatial.dims == dims if kind == "cbam" else g.dims == dims for _, g in gates)
    # batch = channels = 8: a 2-D gate would read a (B, C, L) map as an unbatched (C, H, W) one
    x = torch.randn((8, 8) + (5,) * dims)
    with torch.no_grad():
        whole = model(x)
        one_by_one = torch.cat([model(x[i : i + 1]) for i in range(8)])
    assert torch.allclose(whole, one_by_one, atol=1e-5)  # no sample sees another
    assert not torch.allclose(whole, nn.Sequential(*[type(b)(dims) for b in model])(x))  # not a no-op check


def test_dims_cannot_be_told_without_convs_unless_given():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"cannot tell whether the feature maps after '1' \(LayerNorm\) are "
                                         r"1-, 2- or 3-D: pass dims=1, 2 or 3"):
        az.add_attention(model, "se", where=lambda n, m: n == "1", reduction=2)
    az.add_attention(model, "se", where=lambda n, m: n == "1", reduction=2, dims=1)
    assert az.find_attention(model)[0][1].dims == 1


class DataDependentBlock(ResBlock):
    """A residual block torch.fx cannot trace: its forward branches on the data."""

    def forward(self, x):
        if x.sum() > 0:
            return torch.relu(self.bn(self.conv2(torch.relu(self.conv1(x)))) + x)
        return x


def three_blocks() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(ResBlock(2), DataDependentBlock(2), ResBlock(2))


def test_a_block_fx_cannot_trace_is_named_in_a_warning_or_an_error_when_strict():
    model = three_blocks()
    with pytest.warns(az.UntracedModuleWarning) as rec:
        az.add_attention(model, "se", reduction=2)
    assert [str(w.message) for w in rec] == [
        "add_attention(where='blocks') could not trace '1' (DataDependentBlock: TraceError) with torch.fx, "
        "so it got no gate although it may be a residual block; gate it with where=callable, or pass strict=True "
        "to make this an error"]
    assert [n for n, _ in az.find_attention(model)] == ["0.bn.attnzoo_gate", "2.bn.attnzoo_gate"]
    model = three_blocks()
    with pytest.raises(ValueError, match=r"add_attention\(where='blocks', strict=True\) could not trace '1' "
                                         r"\(DataDependentBlock: TraceError\) with torch.fx"):
        az.add_attention(model, "se", reduction=2, strict=True)
    assert az.find_attention(model) == []  # the error left the model unchanged


def test_hf_models_warn_nothing():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (hf_resnet("basic"), hf_resnet("bottleneck"), hf_convnext()):
            az.add_attention(model, "se", reduction=2, strict=True)


@pytest.mark.parametrize("kind", ["gc", "nonlocal", "simam"])
def test_context_and_free_gates_go_into_blocks(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ResBlock(2), ResBlock(2)).eval()
    x = torch.randn(2, 3, 12, 12)
    before = model(x)
    init = "default" if kind == "simam" else "identity"
    az.add_attention(model, kind, init=init)
    assert len(az.find_attention(model)) == 2
    if init == "identity":
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    else:
        assert not torch.equal(model(x), before)


def test_simam_refuses_an_identity_start():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ResBlock(2))
    with pytest.raises(ValueError, match="SimAM"):
        az.add_attention(model, "simam", init="identity")


@pytest.mark.parametrize("kind", ["sk", "splat"])
def test_conv_units_are_refused_by_add_attention(kind):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ResBlock(2))
    with pytest.raises(ValueError, match=f"kind='{kind}': .* is a convolution unit"):
        az.add_attention(model, kind)
