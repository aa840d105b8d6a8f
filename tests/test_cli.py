"""The ``attnzoo`` command line around the tour: help texts, bad input, Ctrl-C.

Bad input must exit with status 2 and exactly one line on stderr (no traceback) before
any training starts; an interruption must leave no report and no temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo import cli

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import attnzoo.demo  # noqa: E402
from attnzoo.demo import dates, vision  # noqa: E402
from attnzoo.demo.output import Staging  # noqa: E402

#: What the ``attnzoo`` console script runs (``attnzoo.cli:main``), in a fresh interpreter.
ATTNZOO = [sys.executable, "-c", "import sys; from attnzoo.cli import main; sys.exit(main())"]
OPTIONS = ("--out", "--quick", "--seed", "--only", "--device")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``attnzoo ARGV`` in this process -> (exit status, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if a test that expects an early exit reaches any training."""
    def boom(*args, **kwargs):
        raise AssertionError("training started although the input was bad")
    monkeypatch.setattr(vision, "run", boom)
    monkeypatch.setattr(dates, "run", boom)


def assert_usage_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


# ------------------------------------------------------------------------------- help


def test_top_level_help_lists_demo(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "demo" in out


def test_demo_help_describes_every_option(capsys):
    code, out, _ = run_cli(["demo", "--help"], capsys)
    assert code == 0
    for option in OPTIONS:
        assert option in out
    for word in ("attnzoo-report", "vision", "dates", "cpu", "cuda", "seed", "index.html", "results.json"):
        assert word in out, word
    # every option has a help text, not just its name
    actions = {a.option_strings[0]: a for a in _demo_parser()._actions if a.option_strings}
    for option in OPTIONS:
        assert actions[option].help and len(actions[option].help) > 20, option


def _demo_parser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["demo"]


def test_defaults():
    args = _demo_parser().parse_args([])
    assert (args.out, args.quick, args.seed, args.only, args.device) == ("attnzoo-report", False, 0, None, "cpu")
    assert args.run is attnzoo.demo.run_demo


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--seed", "1.5"], ["--seed"]),
    (["--seed", str(2**40)], ["--seed"]),
    (["--only", "foo"], ["--only", "foo"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--bogus"], ["--bogus"]),
    (["--quick", "extra"], ["extra"]),
])
def test_bad_values_exit_2_with_one_line(argv, words, capsys, no_training, tmp_path):
    out = tmp_path / "report"
    code, stdout, err = run_cli(["demo", *argv, "--out", str(out)], capsys)
    assert_usage_error(code, stdout, err, *words)
    assert not out.exists()


def test_out_under_a_regular_file(capsys, no_training, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out, err = run_cli(["demo", "--quick", "--out", str(blocker / "sub" / "report")], capsys)
    assert_usage_error(code, out, err, "--out", "not a folder")
    assert blocker.read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["file"]


def test_out_is_a_regular_file(capsys, no_training, tmp_path):
    target = tmp_path / "report"
    target.write_text("keep me")
    code, out, err = run_cli(["demo", "--quick", "--out", str(target)], capsys)
    assert_usage_error(code, out, err, "--out")
    assert target.read_text() == "keep me"


def test_out_is_a_folder_of_other_files(capsys, no_training, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    code, out, err = run_cli(["demo", "--quick", "--out", str(mine)], capsys)
    assert_usage_error(code, out, err, "--out", "not an attnzoo report")
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert sorted(os.listdir(tmp_path)) == ["mine"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_out_in_a_read_only_folder(capsys, no_training, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, out, err = run_cli(["demo", "--quick", "--out", str(ro / "report")], capsys)
    finally:
        ro.chmod(0o755)
    assert_usage_error(code, out, err, "--out", "cannot write")
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available here")
def test_cuda_without_a_gpu(capsys, no_training, tmp_path):
    code, out, err = run_cli(["demo", "--quick", "--device", "cuda", "--out", str(tmp_path / "r")], capsys)
    assert_usage_error(code, out, err, "cuda")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_in_a_real_process(tmp_path):
    """The console entry point itself: status 2, one stderr line, no traceback."""
    env = dict(os.environ)
    src = str(Path(attnzoo.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv in (["--seed", "-1"], ["--out", str(blocker / "report")]):
        proc = subprocess.run([*ATTNZOO, "demo", "--quick", *argv],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["file"]


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("part, function", [("vision", "train_classifier"), ("dates", "train_seq2seq")])
def test_interrupt_leaves_no_partial_report(part, function, capsys, monkeypatch, tmp_path):
    module = vision if part == "vision" else dates
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt
    monkeypatch.setattr(module, function, interrupted)
    out = tmp_path / "new" / "report"  # the run creates "new"; it must remove it again
    code, stdout, err = run_cli(["demo", "--quick", "--only", part, "--out", str(out)], capsys)
    assert calls and code == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_interrupt_keeps_the_previous_report(capsys, monkeypatch, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}')
    (out / "index.html").write_text("<!DOCTYPE html><p>old</p>")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(vision, "train_classifier", interrupted)
    code, _, _ = run_cli(["demo", "--quick", "--only", "vision", "--out", str(out)], capsys)
    assert code == 130
    assert (out / "results.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_interrupt_restores_torch_settings(monkeypatch, capsys, tmp_path):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    state = torch.random.get_rng_state()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(vision, "train_classifier", interrupted)
    run_cli(["demo", "--quick", "--only", "vision", "--out", str(tmp_path / "r")], capsys)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det
    assert torch.equal(torch.random.get_rng_state(), state)


# ------------------------------------------------------------------- the staging folder


def test_staging_replaces_an_earlier_report_as_a_whole(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    for name in ("results.json", "index.html", "old.png"):
        (out / name).write_text("old")
    staging = Staging(out)
    assert staging.path.parent == tmp_path and staging.path.name.startswith(".")
    (staging.path / "results.json").write_text("new")
    (staging.path / "index.html").write_text("new")
    assert staging.commit() == out
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.json"]
    assert (out / "results.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_staging_discard_removes_what_it_created(tmp_path):
    staging = Staging(tmp_path / "a" / "b" / "report")
    (staging.path / "fig.png").write_bytes(b"x")
    staging.discard()
    assert list(tmp_path.iterdir()) == []
