"""The ``attnzoo`` command line around the tour: help texts, bad input, Ctrl-C, and the
report folder, which attnzoo replaces only when its manifest says attnzoo wrote it.

Bad input must exit with status 2 and exactly one line on stderr (no traceback) before
any training starts; an interruption must leave no report and no temporary folder; no
file attnzoo did not write is ever deleted. Training is replaced by ``fake_tour`` (one
figure, a stub page) where only the file handling is under test; the real tour runs in
test_demo.py, and real signals in test_cli_signals.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo import cli

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import attnzoo.demo  # noqa: E402
from attnzoo.demo import dates, vision  # noqa: E402
from attnzoo.demo import manifest  # noqa: E402
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


@pytest.fixture
def fake_tour(monkeypatch):
    """Training and the page replaced by one figure and a stub page; returns a list of
    callables that run during "training" (to change ``--out`` while the tour runs)."""
    during = []

    def run(budget, seed, device, fig_dir):
        for action in during:
            action()
        (Path(fig_dir) / "vision_fig.png").write_bytes(b"\x89PNG fake figure, seed %d" % seed)
        return {"seed": seed}
    monkeypatch.setattr(vision, "run", run)
    monkeypatch.setattr(attnzoo.demo, "html_page", lambda *a, **k: "<!DOCTYPE html><p>fake</p>")
    monkeypatch.setattr(attnzoo.demo, "summary", lambda results, index, *a, **k: f"report: {index}")
    return during


def demo(out: Path, capsys, seed: int = 0) -> tuple[int, str, str]:
    return run_cli(["demo", "--quick", "--only", "vision", "--seed", str(seed), "--out", str(out)], capsys)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder in which no file can be created (a read-only folder; /sys as root, whom
    permissions do not stop)."""
    if os.name != "posix":
        pytest.skip("needs POSIX permissions")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        yield Path("/sys")
        return
    os.close(fd)
    os.unlink(name)
    pytest.skip("no folder here refuses new files to root")


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
    for word in ("attnzoo-report/", "attnzoo-report-quick/", "vision", "resnet", "speech", "dates", "cpu", "cuda",
                 "seed", "index.html", "results.json", "same machine type", "torch build"):
        assert word in " ".join(out.split()), word
    flat = " ".join(out.split())
    assert "bit-reproducible" not in flat.replace("bit-reproducible only on the same machine type", "")
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
    assert (args.out, args.quick, args.seed, args.only, args.device) == (None, False, 0, None, "cpu")
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


def test_out_in_a_read_only_folder(capsys, no_training, unwritable_dir):
    before = sorted(os.listdir(unwritable_dir))
    code, out, err = run_cli(["demo", "--quick", "--out", str(unwritable_dir / "report")], capsys)
    assert_usage_error(code, out, err, "--out", "cannot write")
    assert sorted(os.listdir(unwritable_dir)) == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_out_that_cannot_be_created_says_so(capsys, no_training):
    code, out, err = run_cli(["demo", "--quick", "--out", "/proc/x"], capsys)
    assert_usage_error(code, out, err, "--out /proc/x: cannot be created: cannot write in /proc",
                       "the file system there takes no new folders")


def test_quick_runs_have_their_own_default_folder(capsys, fake_tour, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(["demo", "--only", "vision"], capsys)[0] == 0
    full = snapshot(tmp_path / "attnzoo-report")
    assert run_cli(["demo", "--quick", "--only", "vision"], capsys)[0] == 0
    assert snapshot(tmp_path / "attnzoo-report") == full  # the full report is still there
    assert sorted(os.listdir(tmp_path)) == ["attnzoo-report", "attnzoo-report-quick"]


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


def test_interrupt_keeps_the_previous_report(capsys, monkeypatch, fake_tour, tmp_path):
    out = tmp_path / "report"
    assert demo(out, capsys)[0] == 0
    before = snapshot(out)

    def interrupted():
        raise KeyboardInterrupt
    fake_tour.append(interrupted)
    code, _, err = demo(out, capsys, seed=1)
    assert code == 130 and "interrupted" in err and len(err.splitlines()) == 1
    assert snapshot(out) == before
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
    first = Staging(out)
    assert first.path.parent == tmp_path and first.path.name.startswith(".")
    for name in ("results.json", "index.html", "old.png"):
        (first.path / name).write_text("old")
    assert first.commit() == out
    listed = json.loads((out / manifest.MANIFEST).read_text())["files"]
    assert sorted(listed) == ["index.html", "old.png", "results.json"]
    second = Staging(out)
    (second.path / "results.json").write_text("new")
    (second.path / "index.html").write_text("new")
    assert second.commit() == out
    assert sorted(p.name for p in out.iterdir()) == ["attnzoo-manifest.json", "index.html", "results.json"]
    assert (out / "results.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_staging_discard_removes_what_it_created(tmp_path):
    staging = Staging(tmp_path / "a" / "b" / "report")
    (staging.path / "fig.png").write_bytes(b"x")
    staging.discard()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------ ownership: the manifest (issue 7, item 8)


def test_a_report_lookalike_without_manifest_is_refused(capsys, no_training, tmp_path):
    """(a) index.html + results.json do not make a folder attnzoo's: nothing is deleted."""
    s = tmp_path / "s"
    s.mkdir()
    (s / "index.html").write_text("x")
    (s / "results.json").write_text("{}")
    (s / "notes.txt").write_text("keep")
    before = snapshot(s)
    code, out, err = run_cli(["demo", "--quick", "--only", "vision", "--out", str(s)], capsys)
    assert_usage_error(code, out, err, "--out", "not an attnzoo report", "index.html", "attnzoo-manifest.json")
    assert snapshot(s) == before and [p.name for p in tmp_path.iterdir()] == ["s"]


def test_the_manifest_lists_every_file_with_its_hash(capsys, fake_tour, tmp_path):
    out = tmp_path / "report"
    code, stdout, err = demo(out, capsys)
    assert code == 0 and err == "" and stdout.strip() == f"report: {out / 'index.html'}"
    data = json.loads((out / manifest.MANIFEST).read_text())
    assert data["schema"] == manifest.SCHEMA and data["complete"] is True
    files = sorted(p.name for p in out.iterdir() if p.name != manifest.MANIFEST)
    assert sorted(data["files"]) == files == ["index.html", "results.json", "vision_fig.png"]
    for name, entry in data["files"].items():
        blob = (out / name).read_bytes()
        assert entry == {"bytes": len(blob), "sha256": __import__("hashlib").sha256(blob).hexdigest()}
    assert "host" not in data["run"]  # the staging marker's host name is not published


def test_an_earlier_report_is_replaced(capsys, fake_tour, tmp_path):
    out = tmp_path / "report"
    assert demo(out, capsys, seed=1)[0] == 0
    (out / "vision_fig.png").unlink()  # a file the manifest lists may be gone: still ours
    assert demo(out, capsys, seed=2)[0] == 0
    assert (out / "vision_fig.png").read_bytes().endswith(b"seed 2")
    assert json.loads((out / "results.json").read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("change, name, words", [
    (lambda out: (out / "notes.txt").write_text("mine"), "notes.txt", "not in attnzoo-manifest.json"),
    (lambda out: (out / "index.html").write_text("edited"), "index.html", "changed after attnzoo wrote it"),
    (lambda out: (out / "sub").mkdir(), "sub", "not written by attnzoo"),
    (lambda out: (out / manifest.MANIFEST).write_text("{}"), manifest.MANIFEST, "not a complete"),
])
def test_an_earlier_report_with_anything_else_is_refused(change, name, words, capsys, fake_tour, monkeypatch,
                                                          tmp_path):
    out = tmp_path / "report"
    assert demo(out, capsys)[0] == 0
    change(out)
    before = snapshot(out) if name != "sub" else sorted(os.listdir(out))

    def boom():
        raise AssertionError("training started although --out holds a foreign file")
    fake_tour.append(boom)
    code, stdout, err = demo(out, capsys, seed=1)
    assert_usage_error(code, stdout, err, "--out", name, words)
    assert (snapshot(out) if name != "sub" else sorted(os.listdir(out))) == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("earlier", [False, True])
def test_a_file_that_appears_during_the_run_is_never_deleted(earlier, capsys, fake_tour, tmp_path):
    """(b) the swap is refused; the finished report is left beside it, and we say where."""
    out = tmp_path / "report"
    if earlier:
        assert demo(out, capsys)[0] == 0
    fake_tour.append(lambda: (out.mkdir(exist_ok=True), (out / "notes.txt").write_text("written meanwhile")))
    code, stdout, err = demo(out, capsys, seed=3)
    kept = tmp_path / "report.attnzoo-new"
    assert code == 1 and stdout == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "notes.txt" in err and str(kept) in err, err
    assert (out / "notes.txt").read_text() == "written meanwhile"
    expected = {"notes.txt"} | ({"index.html", "results.json", "vision_fig.png", manifest.MANIFEST} if earlier else set())
    assert set(os.listdir(out)) == expected
    assert sorted(os.listdir(kept)) == [manifest.MANIFEST, "index.html", "results.json", "vision_fig.png"]
    assert (kept / "vision_fig.png").read_bytes().endswith(b"seed 3")
    assert manifest.foreign_entry(kept) is None  # a complete report: usable as --out later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "report.attnzoo-new"]


def test_a_file_that_appears_during_the_swap_is_given_back(capsys, fake_tour, monkeypatch, tmp_path):
    """Between the last check and the rename a file can still arrive: it goes with the
    earlier report, and is then moved into the new folder, not deleted."""
    out = tmp_path / "report"
    assert demo(out, capsys)[0] == 0
    from attnzoo.demo import output
    real_read = output.manifest.read

    def read_then_race(folder):
        data = real_read(folder)
        if sys._getframe(1).f_code.co_name == "_swap":  # the read just before the rename
            (out / "late.txt").write_text("arrived during the swap")
        return data
    monkeypatch.setattr(output.manifest, "read", read_then_race)
    code, _, err = demo(out, capsys, seed=4)
    assert code == 0 and "late.txt" in err and len(err.splitlines()) == 1
    assert (out / "late.txt").read_text() == "arrived during the swap"
    assert (out / "vision_fig.png").read_bytes().endswith(b"seed 4")
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


# ------------------------------------------------- output paths checked first (item 8 d)


def test_a_symlinked_out_is_followed(capsys, fake_tour, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert demo(link, capsys)[0] == 0
    assert demo(link, capsys, seed=1)[0] == 0  # and replaced through the link next time
    assert link.is_symlink() and link.resolve() == target
    assert (target / "vision_fig.png").read_bytes().endswith(b"seed 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_a_symlink_to_a_foreign_folder_or_nowhere_is_refused(capsys, no_training, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    (tmp_path / "link").symlink_to(mine)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    code, out, err = run_cli(["demo", "--quick", "--out", str(tmp_path / "link")], capsys)
    assert_usage_error(code, out, err, "--out", "thesis.tex")
    code, out, err = run_cli(["demo", "--quick", "--out", str(tmp_path / "dangling")], capsys)
    assert_usage_error(code, out, err, "--out", "symbolic link", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "mine"]
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


@pytest.fixture
def no_bench(monkeypatch):
    import attnzoo.bench as bench

    def boom(*args, **kwargs):
        raise AssertionError("the benchmark ran although --json cannot be written")
    monkeypatch.setattr(bench, "run_benchmarks", boom)


def test_bench_json_in_an_unwritable_folder(capsys, no_bench, unwritable_dir):
    code, out, err = run_cli(["bench", "--quick", "--only", "functional", "--json",
                              str(unwritable_dir / "bench.json")], capsys)
    assert_usage_error(code, out, err, "--json", "cannot write")


def test_bench_json_never_replaces_a_file_it_did_not_write(capsys, no_bench, tmp_path):
    mine = tmp_path / "results.json"
    mine.write_text('{"mine": 1}')
    code, out, err = run_cli(["bench", "--quick", "--json", str(mine)], capsys)
    assert_usage_error(code, out, err, "--json", "not written by attnzoo bench")
    assert mine.read_text() == '{"mine": 1}'
    import attnzoo.bench as bench

    earlier = tmp_path / "bench.json"
    earlier.write_text(json.dumps({"schema": bench.SCHEMA, "rows": []}))
    bench.check_json_path(str(earlier))  # an earlier bench file may be replaced


# ------------------------------------------------ staging folders left by killed runs (c)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _fake_staging(parent: Path, name: str, pid: int, token: str = "0123456789abcdef", **run) -> Path:
    """A staging folder as a run killed after writing one figure leaves it (the figure recorded)."""
    folder = parent / f".{name}.attnzoo-{pid}-{token}.partial"
    folder.mkdir()
    (folder / "vision_fig.png").write_bytes(b"half")
    files = {"vision_fig.png": {"bytes": 4, "sha256": manifest.sha256_file(folder / "vision_fig.png")}}
    manifest.write(folder, {"pid": pid, "token": token, **run}, complete=False, files=files)
    return folder


def test_staging_left_by_a_dead_run_is_removed_only_if_ours(tmp_path, capsys):
    dead = _dead_pid()
    stale = _fake_staging(tmp_path, "report", dead)
    alive = _fake_staging(tmp_path, "report", os.getppid(), token="fedcba9876543210")  # a live process
    copied = _fake_staging(tmp_path, "report", dead, token="00000000000000aa")
    data = json.loads((copied / manifest.MANIFEST).read_text())
    data["run"]["token"] = "00000000000000bb"  # marker does not match its folder's name
    (copied / manifest.MANIFEST).write_text(json.dumps(data))
    lookalike = tmp_path / f".report.attnzoo-{dead}-0123456789abcdef.old"  # no manifest: not ours
    lookalike.mkdir()
    (lookalike / "thesis.tex").write_text("precious")
    staging = Staging(tmp_path / "report")
    assert not stale.exists()
    assert alive.exists() and copied.exists() and (lookalike / "thesis.tex").exists()
    assert f"process {dead}" in capsys.readouterr().err
    staging.discard()


def test_a_stale_staging_folder_loses_only_the_files_attnzoo_recorded(tmp_path, capsys):
    dead = _dead_pid()
    stale = _fake_staging(tmp_path, "report", dead)
    (stale / "notes.txt").write_text("put here after the run was killed")
    (stale / ".index.html.abc123.tmp.html").write_text("a temporary file attnzoo did not record")
    Staging(tmp_path / "report").discard()
    assert sorted(os.listdir(stale)) == [".index.html.abc123.tmp.html", manifest.MANIFEST, "notes.txt"]
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "left" in err and "not written by attnzoo" in err, err
    (stale / "notes.txt").unlink()  # once only attnzoo's files are left, the folder goes
    (stale / ".index.html.abc123.tmp.html").unlink()
    Staging(tmp_path / "report").discard()
    assert not stale.exists()


def test_a_run_records_every_file_in_its_staging_manifest_as_it_writes(tmp_path):
    from attnzoo._io import atomic_path, atomic_write_text

    staging = Staging(tmp_path / "report")
    atomic_write_text(staging.path / "index.html", "<p>page</p>")
    with atomic_path(staging.path / "fig.png") as tmp:
        tmp.write_bytes(b"png")
        data = manifest.read(staging.path)  # killed here: the temporary file is listed as ours
        assert data["temporary"] == [tmp.name] and list(data["files"]) == ["index.html"]
    atomic_write_text(tmp_path / "elsewhere.txt", "not in the staging folder")
    data = manifest.read(staging.path)
    assert data["complete"] is False and data["temporary"] == []
    assert data["files"] == {n: {"bytes": os.path.getsize(staging.path / n),
                                 "sha256": manifest.sha256_file(staging.path / n)} for n in ("fig.png", "index.html")}
    staging.discard()


def test_an_earlier_report_set_aside_by_a_killed_run_is_put_back(tmp_path, capsys):
    dead = _dead_pid()
    aside = tmp_path / f".report.attnzoo-{dead}-0123456789abcdef.old"
    aside.mkdir()
    (aside / "index.html").write_text("old report")
    manifest.write(aside, {"pid": 1, "token": "x"}, complete=True)
    staging = Staging(tmp_path / "report")  # the killed run died between its two renames
    staging.discard()
    assert (tmp_path / "report" / "index.html").read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report"] and "put back" in capsys.readouterr().err
    aside.mkdir()  # and when --out exists, only the files its manifest lists are removed
    (aside / "index.html").write_text("older report")
    manifest.write(aside, {"pid": 1, "token": "x"}, complete=True)
    (aside / "notes.txt").write_text("not in the manifest")
    Staging(tmp_path / "report").discard()
    assert sorted(os.listdir(aside)) == [manifest.MANIFEST, "notes.txt"]


def test_the_commands_never_import_the_cli():
    """The import graph points one way: ``cli`` uses ``demo``/``bench``, never the reverse."""
    import ast

    root = Path(attnzoo.__file__).parent
    for path in [*(root / "bench").glob("*.py"), *(root / "demo").glob("*.py"), root / "distributed" / "bench.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{'.' * node.level}{node.module or ''}"] + [a.name for a in node.names if not node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.endswith("cli") or n == "attnzoo.cli" for n in names), f"{path.name} imports cli"
