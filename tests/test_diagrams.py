"""Data-flow diagrams come from the module's own trace: the graph (nodes, edges, shapes) is
checked against shapes written out here from the modules' sizes, and the committed
figures in docs/figures/diagrams/ must be what the code makes today."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.viz.dataflow import DataflowGraph, mechanism_graph
from attnzoo.viz.diagrams import MECHANISMS, diagram_graphs, diagram_section, fingerprint, write_diagrams

pytest.importorskip("matplotlib")
from attnzoo.viz import mechanism_diagram  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
FIGS = Path(__file__).resolve().parents[1] / "docs" / "figures" / "diagrams"


def chain(g: DataflowGraph) -> list[tuple[str, str, str]]:
    """Edges as (source label, target label, shape)."""
    label = dict(g.nodes)
    return [(label[s], label[d], shape) for s, d, shape in g.edges]


def preds(g: DataflowGraph, label: str) -> list[str]:
    names = dict(g.nodes)
    return [names[s] for s, d, _ in g.edges if names[d] == label]


@pytest.mark.parametrize("reduction", [16, 8])
def test_se_is_pool_fc_relu_fc_sigmoid_mul_with_its_shapes(reduction):
    c = 64
    m = az.SqueezeExcite(c, reduction=reduction).eval()
    h = c // reduction  # the hidden width, from the paper's C / r
    g = mechanism_graph(m, torch.randn(3, c, 5, 7))
    assert g.labels() == ["x", "mean dim=(-2, -1)", f"Linear {c}→{h}", "ReLU", f"Linear {h}→{c}", "Sigmoid",
                          "mul", "output"]
    assert chain(g) == [
        ("x", "mean dim=(-2, -1)", f"(B, {c}, 5, 7)"),
        ("mean dim=(-2, -1)", f"Linear {c}→{h}", f"(B, {c})"),  # the flatten is folded into the edge
        (f"Linear {c}→{h}", "ReLU", f"(B, {h})"),
        ("ReLU", f"Linear {h}→{c}", f"(B, {h})"),
        (f"Linear {h}→{c}", "Sigmoid", f"(B, {c}, 1, 1)"),
        ("x", "mul", f"(B, {c}, 5, 7)"),
        ("Sigmoid", "mul", f"(B, {c}, 1, 1)"),
        ("mul", "output", f"(B, {c}, 5, 7)"),
    ]


def test_cbam_feeds_both_pooled_branches_through_one_shared_mlp_then_the_spatial_gate():
    g = mechanism_graph(az.CBAM(32, reduction=4).eval(), torch.randn(2, 32, 6, 6))
    labels = g.labels()
    assert labels.count("Linear 32→8") == 1 and labels.count("Linear 8→32") == 1  # one MLP, shared
    assert sorted(preds(g, "stack")) == ["adaptive_max_pool2d 1", "mean dim=(-2, -1)"]
    assert preds(g, "Linear 32→8") == ["stack"]
    # the pair of descriptors is a real dimension of 2, not the batch (which is 2 here too)
    assert ("stack", "Linear 32→8", "(2, B, 32)") in chain(g)
    assert ("Linear 8→32", "sum dim=0", "(2, B, 32)") in chain(g)
    assert sorted(preds(g, "cat dim=-3")) == ["max dim=-3", "mean dim=-3"]
    assert ("cat dim=-3", "Conv2d 2→1\nk 7×7", "(B, 2, 6, 6)") in chain(g)
    assert labels.count("mul") == 2 and labels[-1] == "output"


def test_mha_draws_q_k_v_side_by_side_into_one_attention_node():
    e, h, lq, s = 24, 3, 4, 6
    m = az.MultiHeadAttention(e, h, batch_first=True).eval()
    g = mechanism_graph(m, (torch.randn(2, lq, e), torch.randn(2, s, e), torch.randn(2, s, e)))
    assert g.labels().count("scaled dot-product attention") == 1
    into = [(a, shape) for a, b, shape in chain(g) if b == "scaled dot-product attention"]
    assert into == [("transpose 1, 2", f"(B, {h}, {lq}, {e // h})"), ("transpose 1, 2", f"(B, {h}, {s}, {e // h})"),
                    ("transpose 1, 2", f"(B, {h}, {s}, {e // h})")]
    assert [x for x in chain(g) if x[0] in ("query", "key", "value")] == [
        ("query", f"linear {e}→{e}", f"(B, {lq}, {e})"), ("key", f"linear {e}→{e}", f"(B, {s}, {e})"),
        ("value", f"linear {e}→{e}", f"(B, {s}, {e})")]


def test_temporal_attention_traces_and_its_fx_graph_runs_like_eager():
    m = az.TemporalAttention(8).eval()
    x = torch.randn(3, 5, 8)
    gm = torch.fx.symbolic_trace(m, concrete_args={"padding_mask": None})
    for a, b in zip(gm(x), m(x)):
        torch.testing.assert_close(a, b)
    g = mechanism_graph(m, x)
    assert chain(g)[-2:] == [("matmul", "output 0", "(B, 8)"), ("MaskedSoftmax", "output 1", "(B, 5)")]


def test_tracing_leaves_the_module_alone():
    m = az.BAM(16, reduction=4).train()  # BatchNorm in training mode would update its statistics
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = mechanism_graph(m, torch.randn(4, 16, 5, 5) + 3.0)
    assert "BatchNorm2d" in g.labels()
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_graph_does_not_depend_on_the_example_batch():
    m = az.ChannelAttention(16, reduction=4).eval()
    assert mechanism_graph(m, torch.randn(2, 16, 3, 3)) == mechanism_graph(m, torch.randn(5, 16, 3, 3))


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_errors_name_the_module_and_the_argument():
    with pytest.raises(ValueError, match=r"^module Branchy cannot be traced with torch.fx, so it cannot be diagrammed"):
        mechanism_graph(Branchy(), torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"^module must be a torch.nn.Module, got function"):
        mechanism_graph(lambda x: x, torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"^example_input must be a tensor or a tuple of tensors, got list"):
        mechanism_graph(az.SqueezeExcite(8), [[1.0]])
    with pytest.raises(ValueError, match=r"^module SqueezeExcite does not run on example_input"):
        mechanism_graph(az.SqueezeExcite(8), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"^path must end in \.svg or \.png, got 'a\.pdf'"):
        mechanism_diagram(az.SqueezeExcite(8), torch.randn(2, 8, 3, 3), "a.pdf")


def test_mechanism_diagram_writes_svg_and_png(tmp_path):
    x = torch.randn(2, 8, 4, 4)
    fig = mechanism_diagram(az.SqueezeExcite(8, reduction=2), x, tmp_path / "se.svg", title="SE")
    assert fig.texts[0].get_text() == "SE"
    text = (tmp_path / "se.svg").read_text()
    assert "(B, 8, 1, 1)" in text and "Linear 8→4" in text and "<dc:date>" not in text
    mechanism_diagram(az.SqueezeExcite(8, reduction=2), x, tmp_path / "se.png")
    assert (tmp_path / "se.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["se.png", "se.svg"]  # no temporary file left


def test_committed_diagrams_are_up_to_date(tmp_path):
    """The JSON graphs are compared on every machine; the SVGs must carry their JSON's hash,
    and are compared byte for byte only where matplotlib and the font match the ones they
    were drawn with (glyph metrics move text by fractions of a point elsewhere)."""
    committed = {p.stem for p in FIGS.glob("*.json")} - {"fingerprint"}
    assert committed == set(MECHANISMS), "run: python -m attnzoo.viz.diagrams docs/figures/diagrams"
    for name, graph in diagram_graphs().items():
        text = (FIGS / f"{name}.json").read_text()
        assert text == graph.to_json(), f"docs/figures/diagrams/{name}.json is stale; regenerate it"
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert f"graph sha256 {digest}" in (FIGS / f"{name}.svg").read_text(), f"{name}.svg is stale"
    if json.loads((FIGS / "fingerprint.json").read_text()) != fingerprint():
        pytest.skip("SVG bytes depend on matplotlib and fonts; this machine's differ from the committed ones")
    write_diagrams(tmp_path, ["se", "cbam", "mha", "temporal"])
    for name in ("se", "cbam", "mha", "temporal"):
        assert (tmp_path / f"{name}.svg").read_bytes() == (FIGS / f"{name}.svg").read_bytes(), name


def test_diagram_section_embeds_the_written_svgs(tmp_path):
    html = diagram_section(tmp_path, ["se", "temporal"])
    assert html.count("<figure>") == 2 and 'src="se.svg"' in html and 'src="temporal.svg"' in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["se.svg", "temporal.svg"]
    with pytest.raises(ValueError, match=r"^names must be keys of MECHANISMS"):
        diagram_section(tmp_path, ["nope"])


def test_mechanisms_page_shows_every_committed_diagram():
    page = (FIGS.parents[1] / "mechanisms.md").read_text()
    for name in MECHANISMS:
        assert f"](figures/diagrams/{name}.svg)" in page, name


def _eager_module_inputs(module: nn.Module, example: tuple[torch.Tensor, ...]) -> list[tuple[str, str]]:
    """(class name, input shape) of every layer as the module runs eagerly on a batch of 3,
    recorded by forward pre-hooks: no torch.fx, no ShapeProp. 3 is no other size of the
    examples, so it can be written B."""
    seen: list[tuple[str, str]] = []
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Dropout)
    leaves = [m for m in module.modules() if m is not module and not isinstance(m, containers)
              and (type(m).__module__.startswith("torch.nn") or type(m).__name__ == "MaskedSoftmax")]
    hooks = [m.register_forward_pre_hook(
        lambda m, args: seen.append((type(m).__name__, "(" + ", ".join(
            "B" if d == 3 else str(d) for d in args[0].shape) + ")"))) for m in leaves]
    try:
        with torch.no_grad():
            module(*(torch.cat([t, t[:1]]) for t in example))  # batch 2 -> 3
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("name", list(MECHANISMS))
def test_every_drawn_layer_receives_the_shape_it_receives_when_run(name):
    _, build, example = MECHANISMS[name]
    torch.manual_seed(0)
    m = build().eval()
    xs = example()
    assert all(t.shape[0] == 2 and 3 not in t.shape for t in xs)
    eager = _eager_module_inputs(m, xs)
    g = mechanism_graph(m, xs)
    classes = {c for c, _ in eager}
    drawn = [(label.split()[0], shape) for src, label, shape in chain(g) if label.split()[0] in classes]
    assert eager, name
    assert sorted(drawn) == sorted(eager)
