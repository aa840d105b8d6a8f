"""The benchmark harness runs, writes the documented JSON, and gets its arithmetic right.

These tests never assert anything about speed: they run tiny shapes, once.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import attnzoo.bench as bench
from attnzoo.bench import SIZES, group_names, main
from attnzoo.bench._core import GROUPS, Job, Row, compare, format_table, format_value, ratio

TINY = {
    "functional": [(1, 2, 16, 8)],
    "mha_dims": (16, 2),
    "mha": [(1, 16)],
    "weights": [(1, 16, 16, 2)],
    "weights_causal": [(1, 16, 16, 2)],
    "masked": {"B": 2, "N": [32], "E": 16, "H": 2},
    "memory": {"B": 1, "N": 64, "E": 16, "H": 2, "rows": 4},
    "long": {"B": 1, "N": 64, "E": 16, "H": 2},
    "decode": {"tokens": [4], "vocab": 16, "src_len": 4, "max_len": 16},
    "compile": {"B": 1, "N": 8, "E": 16, "H": 2, "C": 16, "HW": 4, "cases": []},
    "gating": {"shape": (1, 16, 4), "tour_batch": 2, "tour_side": 32},
    "throughput": {"N": [16], "B": 1, "H": 2, "hs": 8, "mm": 16},
}
TOP_KEYS = {"schema", "attnzoo", "created", "command", "equivalent_command", "options", "machine", "elapsed_s", "group_elapsed_s", "rows"}
MACHINE_KEYS = {"cpu", "cores", "cores_available", "torch", "threads", "interop_threads", "device", "python",
                "platform", "env"}
ROW_KEYS = {"group", "operation", "shape", "unit", "attnzoo", "reference", "reference_name", "ratio", "note",
            "error", "extra"}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(SIZES, "quick", TINY)


def _run(tmp_path, only: str) -> dict:
    out = tmp_path / "bench.json"
    rc = main(["--quick", "--json", str(out), "--only", only, "--repeats", "1", "--warmup", "0"])
    assert rc == 0
    return json.loads(out.read_text())


def _check_report(report: dict, groups: list[str]) -> None:
    assert set(report) == TOP_KEYS
    assert set(report["machine"]) == MACHINE_KEYS
    assert report["machine"]["threads"] == torch.get_num_threads()
    assert report["command"]  # the process's own command line
    assert report["equivalent_command"].startswith("attnzoo bench --quick --only " + ",".join(groups))
    assert report["options"]["groups"] == groups
    assert report["rows"], "no rows"
    for row in report["rows"]:
        assert set(row) == ROW_KEYS
        assert row["error"] is None, row
        if row["attnzoo"] is not None and row["reference"] is not None:
            assert row["ratio"] == pytest.approx(ratio(row["attnzoo"], row["reference"], row["unit"]))
    assert {r["group"] for r in report["rows"]} == set(groups)


def test_quick_in_process_groups(tiny, tmp_path, capsys):
    groups = ["functional", "mha_train", "mha_eval", "mha_weights", "masked", "decode", "compile", "gating",
              "throughput"]
    report = _run(tmp_path, ",".join(groups))
    _check_report(report, groups)
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["group", "operation", "shape", "attnzoo", "reference", "ratio"]
    by_op = {(r["group"], r["operation"]): r for r in report["rows"]}
    assert by_op["decode", "generate s/token"]["extra"]["same_tokens"] is True
    assert by_op["mha_eval", "self-attn eval"]["extra"]["max_abs_diff"] < 1e-4
    assert by_op["throughput", "sdpa fwd GFLOP/s"]["unit"] == "GFLOP/s"


def test_quick_memory_and_long_groups(tiny, tmp_path, monkeypatch):
    from attnzoo.bench import cases_attention

    specs = []

    def fake(spec):  # the real subprocess is exercised once, below
        specs.append(spec)
        return {"peak_mb": 8.0 if spec.get("rows") else 16.0, "seconds": 0.5, "method": "fake", "threads": 1}

    monkeypatch.setattr(cases_attention, "measure_in_subprocess", fake)
    report = _run(tmp_path, "memory,long")
    _check_report(report, ["memory", "long"])
    assert [r["unit"] for r in report["rows"]] == ["MB", "MB", "s"] + ["MB", "s"] * 3
    assert report["rows"][1]["ratio"] == 2.0  # all rows' MB / chosen rows' MB
    assert [(s["op"], s.get("impl"), s.get("rows"), s.get("mask")) for s in specs] == [
        ("mha_weights", "attnzoo", None, None), ("mha_weights", "torch", None, None),
        ("mha_weights", "attnzoo", 4, None), ("mha_long", None, None, "none"),
        ("mha_long", None, None, "causal"), ("mha_long", None, None, "padding")]


def test_dtype_option_runs_every_tensor_in_that_dtype(tiny, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--json", str(out), "--only", "mha_weights,throughput", "--repeats", "1",
                 "--warmup", "0", "--dtype", "bfloat16"]) == 0
    report = json.loads(out.read_text())
    assert report["options"]["dtype"] == "bfloat16" and "--dtype bfloat16 --json" in report["equivalent_command"]
    assert torch.get_default_dtype() == torch.float32  # restored after the run
    rows = {r["group"]: r for r in report["rows"]}
    assert rows["mha_weights"]["error"] is None and rows["mha_weights"]["extra"]["max_abs_diff"] < 0.1
    assert "bfloat16" in rows["throughput"]["reference_name"]
    assert "dtype bfloat16" in capsys.readouterr().out


def test_cuda_sizes_cover_every_group_and_issue_10_shapes():
    cuda, full = SIZES["cuda"], SIZES["full"]
    assert set(cuda) == set(full) == set(SIZES["quick"])
    assert (1, 8192, 1024, 16) in cuda["weights"] and (2, 64, 64, 4) in full["weights"]
    assert cuda["masked"]["N"] == [16384, 65536] and full["masked"]["N"] == [8192]
    assert (cuda["decode"]["B"], cuda["decode"]["d_model"], cuda["decode"]["layers"]) == (8, 512, 6)


def test_memory_is_measured_in_a_fresh_process():
    from attnzoo.bench._memory import measure_in_subprocess

    res = measure_in_subprocess({"op": "mha_long", "mask": "causal", "B": 1, "N": 64, "E": 16, "H": 2})
    assert res["peak_mb"] >= 0 and res["seconds"] > 0
    assert res["method"] in ("VmHWM-VmRSS", "ru_maxrss-VmRSS")


def test_groups_listed_equal_groups_registered():
    registry, missing = bench._registry()
    assert not missing
    assert set(registry) == set(group_names())


@pytest.mark.parametrize("argv", [["--only", "nope"], ["--repeats", "0"], ["--warmup", "-1"], ["--device", "tpu"],
                                  ["--json", "/no/such/dir/x.json"], ["--json", "."]])
def test_bad_values_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnzoo bench: error:") and "\n" not in err


def test_a_failing_row_is_reported_and_the_run_goes_on(monkeypatch):
    bench._registry()

    def boom() -> Row:
        raise RuntimeError("boom\nsecond line")

    def fake(ctx):
        yield Job("bad", "N=1", boom)
        yield Job("good", "N=1", lambda: Row("functional", "good", "N=1", attnzoo=1.0, reference=2.0))

    monkeypatch.setitem(GROUPS, "functional", ("fake", fake))
    report = bench.run_benchmarks({"quick": True, "repeats": 1, "warmup": 0, "groups": ["functional"],
                                   "device": "cpu", "json": None}, progress=None)
    bad, good = report["rows"]
    assert bad["error"] == "RuntimeError: boom second line" and bad["ratio"] is None
    assert good["error"] is None and good["ratio"] == 2.0


def test_compile_failure_becomes_an_error_row(monkeypatch):
    from attnzoo.bench import cases_models
    from attnzoo.bench._core import Context

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    ctx = Context(quick=True, repeats=1, warmup=0, device=torch.device("cpu"), sizes=TINY)
    shape, build = cases_models._compile_cases(ctx)["SqueezeExcite"]
    row = cases_models._compiled(ctx, "SqueezeExcite", shape, build)
    assert row.error == "torch.compile failed: RuntimeError: no C++ compiler found"
    assert "error: torch.compile failed" in format_table([row])


def test_compile_cases_build_and_run_eagerly():
    from attnzoo.bench import cases_models
    from attnzoo.bench._core import Context

    ctx = Context(quick=True, repeats=1, warmup=0, device=torch.device("cpu"), sizes=TINY)
    cases = cases_models._compile_cases(ctx)
    assert set(cases) == set(SIZES["full"]["compile"]["cases"])
    for _shape, build in cases.values():
        m, args, kw = build()
        with torch.no_grad():
            assert cases_models._first(m.eval()(*args, **kw)).shape == args[0].shape


def test_attnzoo_bench_subcommand(capsys):
    import importlib

    from attnzoo import cli

    if not hasattr(importlib.import_module("attnzoo.demo"), "add_arguments"):
        pytest.skip("attnzoo.demo (needed by the attnzoo command's parser) is not written yet")
    assert cli.main(["bench", "--only", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_literal_references_match_the_modules():
    from attnzoo.bench.cases_models import literal_cbam, literal_se
    from attnzoo.channel import SqueezeExcite
    from attnzoo.spatial import CBAM

    torch.manual_seed(0)
    x = torch.randn(2, 32, 6, 6)
    se, cbam = SqueezeExcite(32), CBAM(32)
    torch.testing.assert_close(literal_se(se, x), se(x))
    torch.testing.assert_close(literal_cbam(cbam, x), cbam(x))


# ------------------------------------------------------------------------- arithmetic
def test_ratio_is_how_many_times_better_attnzoo_is():
    assert ratio(2.0, 4.0, "s") == 2.0  # attnzoo twice as fast
    assert ratio(4.0, 2.0, "s") == 0.5
    assert ratio(10.0, 30.0, "MB") == 3.0  # a third of the memory
    assert ratio(0.001, 0.003, "s/token") == pytest.approx(3.0)
    assert ratio(50.0, 100.0, "GFLOP/s") == 0.5  # rates: attnzoo / reference
    for a, r, unit in [(None, 1.0, "s"), (1.0, None, "s"), (0.0, 1.0, "s"), (1.0, 2.0, "%"),
                       (math.nan, 1.0, "s"), (1.0, math.inf, "MB")]:
        assert ratio(a, r, unit) is None
    assert Row("g", "op", "", unit="MB", attnzoo=5.0, reference=20.0).ratio == 4.0
    assert Row("g", "op", "", attnzoo=math.nan, reference=1.0).to_json()["attnzoo"] is None


def test_compare_alternates_and_reports_medians(monkeypatch):
    calls = []
    compare(lambda: calls.append("a"), lambda: calls.append("b"), repeats=3, warmup=1, min_sample_s=0)
    assert calls == ["a", "b"] * 4  # warm-up pair, then A B A B A B
    ticks = iter([0.0, 1.0, 0.0, 5.0, 0.0, 3.0, 0.0, 5.0, 0.0, 2.0, 0.0, 5.0])  # a: 1, 3, 2; b: 5, 5, 5
    import attnzoo.bench._core as core

    monkeypatch.setattr(core.time, "perf_counter", lambda: next(ticks))
    a, b = compare(lambda: None, lambda: None, repeats=3, warmup=0, min_sample_s=0)
    monkeypatch.undo()
    assert (a, b) == (2.0, 5.0)


def test_format_value_scales_units():
    assert format_value(1.5, "s") == "1.5 s"
    assert format_value(0.0015, "s") == "1.5 ms"
    assert format_value(2.5e-5, "s") == "25 us"
    assert format_value(0.004, "s/token") == "4 ms/token"
    assert format_value(1234.56, "MB") == "1234.6 MB"
    assert format_value(12.34, "%") == "12.3 %"
    assert format_value(None, "s") == "-"


def test_table_aligns_columns_and_lists_notes():
    rows = [
        Row("functional", "sdpa fwd", "B=1 N=8", attnzoo=0.002, reference=0.004),
        Row("memory", "peak", "N=4096", unit="MB", attnzoo=10.0, reference=100.0, note="fresh process"),
        Row("compile", "CBAM compiled", "B=2", error="torch.compile failed: no compiler"),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["group", "operation", "shape", "attnzoo", "reference", "ratio"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines[2]) == len(lines[3]) == len(lines[0])  # numeric rows line up with the header
    assert lines[2].split()[-5:] == ["2", "ms", "4", "ms", "2.00x"]
    assert "peak [1]" in lines[3] and lines[3].endswith("10.00x")
    assert lines[4].split()[:2] == ["compile", "CBAM"] and lines[4].endswith("error: torch.compile failed: no compiler")
    assert lines[-1] == "[1] fresh process"


def test_gpu_check_script_runs_every_row_on_tiny_cpu_shapes(tmp_path, capsys):
    """benchmarks/gpu_check.py (meant for an H100) runs its whole table on the CPU with --tiny."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest on a shared machine
    try:
        assert gpu_check.main(["--device", "cpu", "--tiny", "--no-tests", "--repeats", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"].split(",")[0] for r in rows] == ["MHA eval"] * 3 + ["MHA fwd+bwd"] * 2 + ["Seq2SeqTransformer.generate"]
    assert all(r["ratio"] > 0 and r["attnzoo_s"] > 0 for r in rows)
    assert rows[0]["max_abs_diff"] < 1e-4 and rows[-1]["same_tokens"] is True
    assert capsys.readouterr().out.count("\n| ") == 6
    if not torch.cuda.is_available():
        assert gpu_check.main([]) == 2  # the default device is cuda: a clear refusal without one
    theirs = tmp_path / "notes.txt"
    theirs.write_text("someone's notes\n")
    for opt in ("--json", "--profile"):  # a file gpu_check did not write is never replaced
        assert gpu_check.main(["--device", "cpu", "--tiny", "--no-tests", opt, str(theirs)]) == 2
        assert theirs.read_text() == "someone's notes\n"
    assert "was not written by gpu_check" in capsys.readouterr().err
    assert gpu_check._is_our_json(str(out))  # its own file may be rewritten, as may the committed runs
    assert gpu_check._is_our_json(str(path.parents[1] / "docs" / "bench" / "gpu-check-h100.json"))


@pytest.mark.parametrize("doc", ["docs/performance.md", "README.md"])
def test_docs_tables_are_rendered_from_committed_results(doc):
    """Every speed table in the docs and README sits in a bench block: its results file, rendered."""
    from pathlib import Path

    from attnzoo.bench._docs import BLOCK, render_blocks

    root = Path(__file__).resolve().parents[1]
    text = (root / doc).read_text()
    assert BLOCK.search(text), f"{doc} has no <!-- bench: FILE --> block"
    assert render_blocks(text, root) == text, f"stale table: run python -m attnzoo.bench._docs {doc}"


def test_markdown_table_renders_rows_errors_and_group_filter():
    from attnzoo.bench._docs import markdown_table

    report = {"rows": [Row("masked", "m", "N=8", attnzoo=0.002, reference=0.004).to_json(),
                       Row("decode", "d", "", error="boom").to_json()],
              "machine": {"cpu": "X", "threads": 1, "torch": "2", "device": "cpu"},
              "options": {"dtype": "float32", "repeats": 3}, "equivalent_command": "attnzoo bench"}
    lines = markdown_table(report).splitlines()
    assert lines[2] == "| masked | m | N=8 | 2 ms | 4 ms | 2.00x |"
    assert lines[3] == "| decode | d |  | error: boom |  |  |"
    assert len(markdown_table(report, ["decode"]).splitlines()) == len(lines) - 1
    assert lines[-1].startswith("X, 1 thread(s), torch 2, device cpu, dtype float32; medians of 3")


def test_docs_block_render_replaces_only_the_block(tmp_path):
    from attnzoo.bench._docs import render_blocks

    report = {"rows": [Row("masked", "m", "N=8", attnzoo=1.0, reference=3.0).to_json()],
              "machine": {"cpu": "X", "threads": 1, "torch": "2", "device": "cpu"},
              "options": {"repeats": 3}, "equivalent_command": "attnzoo bench"}
    (tmp_path / "r.json").write_text(json.dumps(report))
    text = "before\n<!-- bench: r.json -->\nold table\n<!-- /bench -->\nafter\n"
    new = render_blocks(text, tmp_path)
    assert new.startswith("before\n<!-- bench: r.json -->\n| group |") and new.endswith("<!-- /bench -->\nafter\n")
    assert "| masked | m | N=8 | 1 s | 3 s | 3.00x |" in new and "old table" not in new
    assert render_blocks(new, tmp_path) == new


def test_gpu_check_table_states_each_goal_and_whether_it_is_met(tmp_path):
    """The GPU table: goals from issue 10 per row kind, met or not, in a block like the bench's."""
    from attnzoo.bench._docs import gpu_check_table, render_blocks

    weights = {"path": "MHA eval, need_weights=True (averaged)", "shape": "B1 N8192", "dtype": "bfloat16",
               "attnzoo_s": 0.002, "reference_s": 0.004, "ratio": 2.0, "reference": "torch",
               "attnzoo_mb": 100.0, "reference_mb": 200.0, "memory_ratio": 2.0}
    masked = {"path": "MHA fwd+bwd, causal + key padding (last 1/8)", "shape": "N16384", "dtype": "bfloat16",
              "attnzoo_s": 0.004, "reference_s": 0.0032, "ratio": 0.8, "reference": "causal alone"}
    decode = {"path": "Seq2SeqTransformer.generate", "shape": "B8 256 tokens", "dtype": "bfloat16",
              "attnzoo_s": 0.0012, "reference_s": 0.012, "ratio": 10.0, "reference": "recompute",
              "same_tokens": False, "tokens_agree": 0.5, "same_tokens_float32": True, "float32_tokens": 64,
              "cuda_graph": True}
    report = {"device": "GPU", "torch": "2", "rows": [weights, masked, decode, {"path": "error", "error": "boom"}]}
    lines = gpu_check_table(report).splitlines()
    assert lines[2].endswith("| 2.00x | ≥ 1.0x, memory ≤ 1/3 | **no** | peak memory 100 vs 200 MiB "
                             "(2.0x less; goal ≥ 3x) |")  # fast enough, but not lean enough
    assert "| 0.80x | ≥ 1/1.3 = 0.77x | yes |" in lines[3]
    assert "| 1.2 ms/token | 12 ms/token (recompute) | 10.00x | ≥ 5x and ≤ 1 ms/token | **no** |" in lines[4]
    assert "float32 tokens (64) identical: yes; bfloat16 tokens equal to uncached: 50.0%" in lines[4]
    assert lines[5].startswith("| error: boom |") and lines[-1].startswith("GPU, torch 2;")
    (tmp_path / "g.json").write_text(json.dumps(report))
    text = "a\n<!-- gpu-check: g.json -->\nold\n<!-- /gpu-check -->\nb\n"
    new = render_blocks(text, tmp_path)
    assert "old" not in new and new.endswith("<!-- /gpu-check -->\nb\n") and render_blocks(new, tmp_path) == new


# ------------------------------------- --json: never a file that appeared during the run


def _fake_report(path, content: str | None):
    """A run that takes no time; ``path`` gets ``content`` while it runs (None: removed)."""
    def run(options, **kwargs):
        if content is None:
            path.unlink()
        else:
            path.write_text(content)
        return {"schema": bench.SCHEMA, "machine": {"cpu": "x", "cores": 1, "torch": "t", "threads": 1,
                                                      "device": "cpu"}, "rows": []}
    return run


@pytest.mark.parametrize("earlier", [False, True])
def test_bench_json_that_appears_during_the_run_is_not_replaced(earlier, tmp_path, monkeypatch, capsys):
    target = tmp_path / "bench.json"
    if earlier:  # an earlier bench file (replaceable at the start) that someone replaced meanwhile
        target.write_text(json.dumps({"schema": bench.SCHEMA, "rows": []}))
    monkeypatch.setattr(bench, "run_benchmarks", _fake_report(target, '{"mine": 1}'))
    assert main(["--quick", "--json", str(target)]) == 1
    err = capsys.readouterr().err
    kept = tmp_path / "bench.json.attnzoo-new"
    assert err == (f"attnzoo bench: error: --json {target}: {target} appeared during the run and was not "
                   f"written by attnzoo bench; it was left as it is and the results were written to {kept}\n")
    assert target.read_text() == '{"mine": 1}'
    assert json.loads(kept.read_text())["schema"] == bench.SCHEMA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.json.attnzoo-new"]


def test_bench_json_replaces_its_own_earlier_file_and_writes_a_new_one(tmp_path, monkeypatch, capsys):
    target = tmp_path / "bench.json"
    target.write_text(json.dumps({"schema": bench.SCHEMA, "rows": [], "old": True}))
    monkeypatch.setattr(bench, "run_benchmarks", _fake_report(target, json.dumps({"schema": bench.SCHEMA})))
    assert main(["--quick", "--json", str(target)]) == 0
    assert json.loads(target.read_text())["rows"] == []
    monkeypatch.setattr(bench, "run_benchmarks", _fake_report(target, None))  # removed meanwhile: created
    assert main(["--quick", "--json", str(target)]) == 0
    assert json.loads(target.read_text())["rows"] == [] and [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_write_new_never_replaces(tmp_path):
    from attnzoo._io import atomic_write_bytes

    target = tmp_path / "x.json"
    atomic_write_bytes(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"second", replace=False)
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ----------------------------------------------------- python -m attnzoo.distributed.bench


def _fake_row(P, length, heads, head_dim, fused=False, layers=0):
    return {"P": P, "fused": fused, "layers": layers, "length": length, "local_length": length // P,
            "heads": heads, "head_dim": head_dim, "threads_per_rank": 1, "peak_mb": 0.0, "seconds": 0.001,
            "bytes_sent": 0, "bytes_analytic": 0, "per_rank": []}


def test_distributed_bench_json_that_appears_during_the_run_is_not_replaced(tmp_path, monkeypatch, capsys):
    from attnzoo.distributed import bench as dbench

    target = tmp_path / "dist.json"

    def row(*args, **kwargs):
        target.write_text('{"mine": 1}')
        return _fake_row(*args, **kwargs)
    monkeypatch.setattr(dbench, "run_row", row)
    assert dbench.main(["--json", str(target), "--ranks", "1", "--layers", "0"]) == 1
    err = capsys.readouterr().err
    kept = tmp_path / "dist.json.attnzoo-new"
    assert err.splitlines()[-1] == (f"error: --json {target}: {target} appeared during the run and was not written "
                                    f"by this benchmark; it was left as it is and the results were written to {kept}")
    assert target.read_text() == '{"mine": 1}' and json.loads(kept.read_text())["rows"]


def test_distributed_bench_too_small_to_measure_exits_2_before_any_work(monkeypatch, capsys):
    from attnzoo.distributed import bench as dbench

    def boom(*args, **kwargs):
        raise AssertionError("measured although the arguments were bad")
    monkeypatch.setattr(dbench, "run_row", boom)
    argv = ["--length", "64", "--ranks", "1", "--layers", "0", "--heads", "1", "--head-dim", "4"]
    assert dbench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--length" in err and "too small" in err, err


def test_distributed_format_table_survives_a_zero_peak():
    from attnzoo.distributed.bench import format_table

    rows = [_fake_row(1, 64, 1, 4, fused=True), _fake_row(1, 64, 1, 4), _fake_row(2, 64, 1, 4)]
    lines = format_table(rows).splitlines()
    assert len(lines) == 5 and all(line.split("|")[5].strip() == "—" for line in lines[2:])


def test_quick_compile_notes_say_which_case_is_compiled():
    from attnzoo.bench import cases_models
    from attnzoo.bench._core import Context

    ctx = Context(quick=True, repeats=1, warmup=0, device=torch.device("cpu"), sizes=SIZES["quick"], min_sample_s=0.0)
    jobs = list(cases_models.compile_group(ctx))
    compiled = SIZES["quick"]["compile"]["cases"]
    assert compiled and [j.operation for j in jobs if j.operation[: -len(" compiled")] in compiled]
    for job in jobs:
        if job.operation[: -len(" compiled")] not in compiled:
            row = job.run()
            assert row.attnzoo is None and row.note.startswith("not compiled in this run (it compiles "
                                                               + ", ".join(compiled) + " only)")
    help_text = " ".join(bench_help().split())
    assert "in seconds" not in help_text and "about a minute or two" in help_text


def bench_help() -> str:
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return next(a.help for a in parser._actions if "--quick" in a.option_strings)
