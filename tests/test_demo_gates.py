"""The gate league (``attnzoo demo --only gates``): a real quick run covers every kind that
``add_attention`` accepts; the table's columns; parameter and FLOP counts of two gates
against counts written out by hand; the default tour leaves the league out and shows the
committed table; README's and docs/mechanisms.md's league blocks are the text generated
from the committed results file."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import torch  # noqa: E402

import attnzoo  # noqa: E402
from attnzoo.demo import gates, league  # noqa: E402
from attnzoo.demo.parts import PARTS  # noqa: E402
from attnzoo.retrofit import KINDS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATTNZOO = [sys.executable, "-c", "import sys; from attnzoo.cli import main; sys.exit(main())"]
WIDTHS = (16, 32, 64)  # the small ResNet's block widths: one gate per block
START, END = "<!-- gate-league:start", "<!-- gate-league:end -->"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One real ``attnzoo demo --only gates --quick`` run in a fresh interpreter."""
    out = tmp_path_factory.mktemp("league") / "report"
    env = {**os.environ, "PYTHONPATH": str(Path(attnzoo.__file__).resolve().parents[1])}
    proc = subprocess.run([*ATTNZOO, "demo", "--only", "gates", "--quick", "--seed", "0", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((out / "results.json").read_text("utf-8")), (out / "index.html").read_text("utf-8")


def test_quick_league_runs_every_kind_add_attention_accepts(quick):
    proc, r, html = quick
    assert r["parts"] == ["gates"] and r["only"] == "gates" and r["quick"] is True
    g = r["gates"]
    assert g["variants"] == ["plain", *KINDS] and set(g["models"]) == set(g["variants"])
    assert "sk" not in g["models"] and "splat" not in g["models"]
    assert sorted(g["ranking"]) == sorted(g["variants"])
    accs = [g["models"][n]["accuracy_mean"] for n in g["ranking"]]
    assert accs == sorted(accs, reverse=True)
    assert set(g["comparisons"]) == {f"{k}_vs_plain" for k in KINDS}
    assert len(g["seeds"]) == 1
    plain = g["models"]["plain"]
    assert plain["gates"] == 0 and plain["extra_params"] == 0 and plain["time_ratio"] == 1.0
    for kind in KINDS:
        m = g["models"][kind]
        assert m["gates"] == len(WIDTHS), kind  # one per basic block
        assert m["extra_params"] >= 0 and m["extra_flops"] >= 0 and m["time_ratio"] > 0
        assert m["params"] == plain["params"] + m["extra_params"]
        cmp = g["comparisons"][f"{kind}_vs_plain"]
        assert math.isclose(cmp["mean_points"], 100 * (m["accuracies"][0] - plain["accuracies"][0]), abs_tol=1e-9)
    # a progress line per training run, the summary table on stdout, the section on the page
    assert sum(line.startswith("gates   ") and "test accuracy" in line for line in proc.stderr.splitlines()) == 15
    for kind in KINDS:
        assert any(line.startswith(f"{kind} ") for line in proc.stdout.splitlines()), kind
    assert "Gate league: which gate helps, at what cost" in html and "Not run now" not in html


def test_table_columns_and_rows():
    run = league.committed()
    assert run is not None, "the committed league results file is missing"
    md = league.league_md(run["gates"]).splitlines()
    head = [c.strip() for c in md[0].strip("|").split("|")]
    assert head == ["gate (per block)", "test accuracy", "vs plain: mean, 95% interval (points)", "verdict",
                    "parameters", "FLOPs / batch", "CPU fwd+bwd time (x plain)"]
    rows = [ln for ln in md[2:] if ln.startswith("|")]
    assert len(rows) == 1 + len(KINDS)
    assert all(len(ln.strip("|").split("|")) == len(head) for ln in rows)
    verdicts = [ln.strip("|").split("|")[3].strip() for ln in rows]
    assert verdicts.count("") == 1  # the plain network, the reference
    pattern = (r"significantly (better|worse)|one seed: no interval|"
               r"not conclusive \((~\d+ seeds would settle it|no practical number of seeds)\)")
    assert all(re.fullmatch(pattern, v) for v in verdicts if v), verdicts


def _extra(kind: str) -> tuple[int, int]:
    """(extra parameters, extra FLOPs of one forward on a batch of 32) of ``kind`` in the league."""
    x = torch.randn(32, 1, 32, 32)
    plain, gated = gates.build("plain", 0, WIDTHS), gates.build(kind, 0, WIDTHS)
    n = sum(p.numel() for p in gated.parameters()) - sum(p.numel() for p in plain.parameters())
    return n, gates.count_flops(gated, x) - gates.count_flops(plain, x)


def test_se_adds_two_linears_per_block():
    """SE, default reduction r = 16: C -> C/r -> C, both with bias; each linear is 2·B·C·C/r FLOPs."""
    r, b = 16, 32
    params = sum(2 * c * (c // r) + c + c // r for c in WIDTHS)
    flops = sum(2 * (2 * b * c * (c // r)) for c in WIDTHS)
    assert _extra("se") == (params, flops) == (791, 43_008)


def test_eca_adds_one_three_tap_conv_per_block():
    """ECA: k = odd(|log2(C) + 1| / 2) = 3 for C = 16, 32, 64; no bias; a 1-D conv over the C
    pooled channels is 2·B·C·k FLOPs."""
    b = 32
    ks = [int((math.log2(c) + 1) / 2) for c in WIDTHS]
    ks = [k if k % 2 else k + 1 for k in ks]
    assert ks == [3, 3, 3]
    assert _extra("eca") == (sum(ks), sum(2 * b * c * k for c, k in zip(WIDTHS, ks)))


def test_flop_counter_counts_no_pooling_or_sigmoid():
    """SimAM has no parameters and only elementwise ops: 0 extra FLOPs, as the footnote says."""
    assert _extra("simam") == (0, 0)
    assert "count as 0" in gates.FLOPS_NOTE


def test_default_tour_leaves_the_league_out_and_shows_the_committed_table():
    from attnzoo.demo.report import html_page, summary

    assert PARTS["gates"].in_tour is False and all(p.in_tour for n, p in PARTS.items() if n != "gates")
    run = league.committed()
    # a default run's results with no part in them: what the report adds for the league
    default = {k: v for k, v in run.items() if k != "gates"} | {"only": None, "parts": []}
    html, text = html_page(default), summary(default, "x/index.html")
    assert "Not run now" in html and "attnzoo demo --only gates" in html
    first = league.league_rows(run["gates"])[0]
    assert f"<td class=l>{first[0]}</td><td>{first[1]}</td>" in html
    assert "gate league: not run in the default tour" in text and "attnzoo demo --only gates" in text


def _block(path: Path) -> str:
    text = path.read_text("utf-8")
    start, end = text.index(START), text.index(END)
    return text[text.index("\n", start) + 1:end]


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="needs the source checkout")
@pytest.mark.parametrize("doc", ["README.md", "docs/mechanisms.md"])
def test_league_block_matches_the_committed_results_file(doc):
    run = league.committed()
    assert run["only"] == "gates" and run["quick"] is False and len(run["gates"]["seeds"]) >= 5
    assert run["environment"]["command"] == "attnzoo demo --seed 0 --only gates"
    assert _block(ROOT / doc) == league.readme_league(run), (
        f"{doc}'s gate league differs from {league.COMMITTED.name}; regenerate it with "
        "attnzoo.demo.league.readme_league")
