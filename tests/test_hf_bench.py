"""The ``hf`` bench group (a transformers Llama with output_attentions, attnzoo vs eager):
its rows, its skip without transformers, and the docs table rendered from its results file.
Tiny shapes, once: nothing here asserts a speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from attnzoo.bench import SIZES, main
from attnzoo.bench._core import GROUPS, Context

pytest.importorskip("transformers")

TINY_HF = {"B": 1, "N": 32, "layers": 2, "heads": 4, "hidden": 32}


def test_rows_time_memory_and_the_returned_share(monkeypatch, tmp_path):
    monkeypatch.setitem(SIZES, "quick", {**SIZES["quick"], "hf": TINY_HF})
    out = tmp_path / "hf.json"
    assert main(["--quick", "--json", str(out), "--only", "hf", "--repeats", "1", "--warmup", "0"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["operation"], r["unit"], r["error"]) for r in rows] == [
        ("Llama fwd output_attentions time", "s", None),
        ("Llama fwd output_attentions peak memory", "MB", None),
        ("Llama fwd output_attentions peak beyond returned", "MB", None)]
    assert all(r["shape"] == "B=1 N=32 E=32 H=4 layers=2" for r in rows)
    assert rows[0]["extra"]["max_abs_diff"] < 1e-5  # attnzoo's weights are eager's
    returned = 2 * 1 * 4 * 32 * 32 * 4 / 2**20  # layers x (B, H, N, N) float32
    peak, beyond = rows[1], rows[2]
    assert peak["extra"]["returned_mb"] == beyond["extra"]["returned_mb"] == pytest.approx(returned)
    for side in ("attnzoo", "reference"):
        assert beyond[side] == pytest.approx(max(0.0, peak[side] - returned))
    assert peak["reference_name"] == 'transformers attn_implementation="eager"'


def test_skipped_with_a_clear_row_without_transformers(monkeypatch):
    import attnzoo.bench.cases_hf  # noqa: F401  (registers the group)

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    ctx = Context(quick=True, repeats=1, warmup=0, device=__import__("torch").device("cpu"), sizes={})
    [job] = list(GROUPS["hf"][1](ctx))
    row = job.run()
    assert row.note == "skipped: transformers is not installed (pip install 'transformers>=5')"
    assert row.attnzoo is row.reference is row.error is None


def test_unknown_memory_op_is_refused():
    from attnzoo.bench._memory import _op

    with pytest.raises(ValueError, match="unknown memory op 'os:system'"):
        _op("os:system")
    assert _op("attnzoo.bench.cases_hf:memory_op").__name__ == "memory_op"


def test_docs_table_is_rendered_from_the_committed_results():
    from attnzoo.bench._docs import BLOCK, render_blocks

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs/integration.md").read_text()
    assert any(m.group("file") == "docs/bench/hf.json" for m in BLOCK.finditer(text))
    assert render_blocks(text, root) == text, "stale table: run python -m attnzoo.bench._docs docs/integration.md"
