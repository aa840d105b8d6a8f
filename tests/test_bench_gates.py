"""The `gates` bench group: its two sides compute the same thing, its rows are complete and
renderable, and it is listed among the groups. Tiny shapes, once: nothing here asserts a speed."""

from __future__ import annotations

import json

import pytest
import torch

from attnzoo import gates
from attnzoo.bench import group_names, main
from attnzoo.bench._docs import markdown_table
from attnzoo.bench._gate_formulas import FORMULAS, PAPER
from attnzoo.bench.cases_gates import UNITS, Stage, build_gate, nonlocal_memory_op, randomise_zeros

TINY = {"shape": (2, 32, 6), "memory": (1, 16, 4)}


def test_every_gate_and_conv_unit_has_a_case():
    assert set(FORMULAS) == {cls.__name__ for cls in gates.GATES} | set(UNITS)
    assert set(PAPER) <= set(FORMULAS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_both_sides_of_each_case_agree_in_value_and_gradient(name):
    torch.manual_seed(0)
    B, C, S = TINY["shape"]
    stage = Stage(C)
    m = build_gate(name, C).train()
    randomise_zeros(m)
    assert all(p.any() for p in m.parameters())  # no identity start: the gate changes the output
    where = "unit" if name in UNITS else "gate"
    x = torch.randn(B, C, S, S, dtype=torch.float64)
    stage, m = stage.double(), m.double()
    params = [*stage.parameters(), *m.parameters()]
    results = []
    for fn in (m, lambda t: FORMULAS[name](m, t)):
        xi = x.clone().requires_grad_()
        out = stage(xi, **{where: fn})
        grads = torch.autograd.grad(out.square().sum(), [xi, *params], allow_unused=True)  # units skip conv2
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-9, atol=1e-9)
    without = stage(x)
    assert not torch.allclose(out_a, without)  # the gate is in the stage
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None) == (gb is None)
        if ga is None:
            continue
        # max pooling: the module sends a tie's gradient to one arg-max, amax splits it
        # (no ties in random float64 inputs); relu6(t + 3) / 6 vs hardsigmoid: rounding only
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-8)


def test_quick_group_rows_overheads_and_docs_table(monkeypatch, tmp_path):
    from attnzoo.bench import SIZES, cases_gates

    monkeypatch.setitem(SIZES, "quick", {**SIZES["quick"], "gates": TINY})
    specs = []

    def fake(spec):  # the real subprocess is exercised below, in-process
        specs.append(spec)
        return {"peak_mb": 4.0 if spec["impl"] == "attnzoo" else 12.0, "seconds": 0.1, "method": "fake"}

    monkeypatch.setattr(cases_gates, "measure_in_subprocess", fake)
    # each timing starts with a full gc.collect(), which costs seconds in a big test process
    from attnzoo.bench import _core
    monkeypatch.setattr(_core.gc, "collect", lambda *a: 0)
    out = tmp_path / "g.json"
    assert main(["--quick", "--json", str(out), "--only", "gates", "--repeats", "1", "--warmup", "0"]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]]
    assert rows[0]["operation"] == "bottleneck, no gate fwd+bwd" and rows[0]["reference"] is None
    assert len(rows) == 1 + 2 * len(FORMULAS) + 1
    stage_flops = rows[0]["extra"]["flops"]
    assert stage_flops > 0
    for name in FORMULAS:
        time_row = next(r for r in rows if r["operation"] == f"{name} stage fwd+bwd")
        assert time_row["shape"] == "B=2 C=32 H=6 W=6" and time_row["extra"]["max_abs_diff"] < 1e-4
        over = next(r for r in rows if r["operation"].startswith(f"{name} overhead over stage"))
        extra = over["extra"]
        assert over["unit"] == "%" and over["ratio"] is None
        assert over["reference"] == pytest.approx(100 * (extra["flops_plain_formula"] - stage_flops) / stage_flops)
        if name != "NonLocal":  # FlopCounterMode does not count the fused CPU attention op
            assert extra["flops"] == extra["flops_plain_formula"]
        assert over["attnzoo"] == pytest.approx(100 * (extra["gated_stage_s"] - extra["stage_s"]) / extra["stage_s"])
        assert extra["paper_flops_overhead"] == PAPER.get(name, (None,))[0]
    se = next(r for r in rows if r["operation"].startswith("SqueezeExcite overhead"))
    hidden = 32 // 16
    assert se["extra"]["flops"] - stage_flops == 2 * 2 * (32 * hidden + hidden * 32)  # two Linear layers, B=2
    assert "paper: 3.87 vs 3.86 GFLOPs" in se["operation"] and se["extra"]["paper"].startswith("Hu et al.")
    memory = rows[-1]
    assert (memory["operation"], memory["unit"], memory["ratio"]) == ("NonLocal fwd+bwd peak memory", "MB", 3.0)
    assert [s["impl"] for s in specs] == ["attnzoo", "plain"]
    table = markdown_table(report, ["gates"])
    assert table.count("\n| gates |") == len(rows)
    assert "| gates | NonLocal fwd+bwd peak memory | B=1 C=16 H=4 W=4 | 4.0 MB | 12.0 MB | 3.00x |" in table


def test_nonlocal_memory_op_runs_both_sides():
    spec = {"B": 1, "C": 16, "S": 4}
    for impl in ("attnzoo", "plain"):
        warm, call = nonlocal_memory_op({**spec, "impl": impl}, torch.device("cpu"))
        warm()
        call()


def test_group_is_listed_in_help_and_only(capsys):
    assert "gates" in group_names()
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "gating, gates, throughput" in text.split("the groups are:")[1]
    assert main(["--only", "gatez"]) == 2
    assert "gates" in capsys.readouterr().err
