"""Real processes, real signals: ``python -m attnzoo``, SIGTERM and SIGKILL during the
tour, and Ctrl-C while torch is still importing.

SIGTERM must clean up like Ctrl-C (exit 143, one line, no staging folder); a SIGKILLed
run leaves its staging folder, which the next run with the same ``--out`` removes. The
two tours run side by side and are killed as soon as their staging folder exists (a few
seconds, most of it importing torch).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import attnzoo
from attnzoo import _entry

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from attnzoo.demo.manifest import MANIFEST  # noqa: E402
from attnzoo.demo.output import Staging  # noqa: E402

SRC = str(Path(attnzoo.__file__).resolve().parents[1])
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def _env(*first: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*first, SRC] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_python_dash_m_attnzoo_is_the_command(tmp_path):
    runs = {("attnzoo", "--version"): 0, ("attnzoo.bench", "--only", "nope"): 2}
    procs = {argv: subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=_env(), cwd=tmp_path) for argv in runs}  # side by side
    for argv, status in runs.items():
        out, err = procs[argv].communicate(timeout=120)
        assert procs[argv].returncode == status, err
        if status == 0:
            assert out.strip() == f"attnzoo {attnzoo.__version__}"
        else:
            assert _one_line(err).startswith("attnzoo bench: error: --only") and out == ""


@posix_only
def test_ctrl_c_while_torch_imports_is_one_line(tmp_path):
    """A stand-in ``torch`` sends this process SIGINT from inside its import, i.e. while
    ``attnzoo/__init__`` imports torch, before ``cli.main`` could catch anything."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(60)\n")
    script = tmp_path / "bin" / "attnzoo"  # what pip writes for the console script
    script.parent.mkdir()
    script.write_text(textwrap.dedent("""\
        import re
        import sys
        from attnzoo.cli import main
        if __name__ == '__main__':
            sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
            sys.exit(main())
        """))
    for argv in (["-m", "attnzoo", "demo", "--quick"], [str(script), "demo", "--quick"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=_env(str(fake)),
                              cwd=tmp_path, timeout=60)
        assert proc.returncode in (130, -signal.SIGINT), proc.stderr
        assert _one_line(proc.stderr) == "attnzoo: interrupted" and proc.stdout == ""


def test_importing_attnzoo_elsewhere_changes_nothing(monkeypatch):
    assert not _entry.is_the_command()  # pytest is not the attnzoo command
    monkeypatch.setattr(sys, "argv", ["-m"])
    for orig, expected in [(["py", "-m", "attnzoo"], True), (["py", "-X", "importtime", "-m", "attnzoo.bench"], True),
                           (["py", "-mattnzoo"], True), (["py", "-m", "attnzoo_other"], False),
                           (["py", "-m", "pytest"], False)]:
        monkeypatch.setattr(sys, "orig_argv", orig)
        assert _entry.is_the_command() is expected, orig


def _staging_of(parent: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """Wait until the tour in ``proc`` has created its staging folder in ``parent``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the tour ended before it was signalled: {proc.communicate()[1][-2000:]}")
        for p in parent.iterdir():
            if p.name.endswith(".partial") and (p / MANIFEST).exists():
                return p
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no staging folder appeared")


@posix_only
def test_sigterm_cleans_up_and_a_sigkilled_run_is_cleaned_up_next_time(tmp_path):
    procs = {}
    for sig in ("term", "kill"):
        (tmp_path / sig).mkdir()
        procs[sig] = subprocess.Popen(
            [sys.executable, "-m", "attnzoo", "demo", "--quick", "--only", "vision",
             "--out", str(tmp_path / sig / "report")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    try:
        staged = {sig: _staging_of(tmp_path / sig, proc) for sig, proc in procs.items()}
        procs["term"].send_signal(signal.SIGTERM)
        procs["kill"].send_signal(signal.SIGKILL)
        outs = {sig: proc.communicate(timeout=120) for sig, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # SIGTERM: like Ctrl-C: status 143, one last line, nothing left behind
    assert procs["term"].returncode == 128 + signal.SIGTERM, outs["term"][1]
    err = outs["term"][1]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "attnzoo demo: terminated by SIGTERM; nothing partial was written"
    assert list((tmp_path / "term").iterdir()) == []
    # SIGKILL: the staging folder stays; the next run with the same --out removes it
    assert procs["kill"].returncode == -signal.SIGKILL
    assert staged["kill"].exists()
    (staged["kill"] / "mine.txt").write_text("a file attnzoo did not write")
    Staging(tmp_path / "kill" / "report").discard()  # attnzoo's own files go, mine.txt stays
    assert sorted(os.listdir(staged["kill"])) == [MANIFEST, "mine.txt"]
    (staged["kill"] / "mine.txt").unlink()
    nxt = Staging(tmp_path / "kill" / "report")
    assert not staged["kill"].exists()
    nxt.discard()
    assert list((tmp_path / "kill").iterdir()) == []


@posix_only
def test_a_signal_during_a_deferred_block_is_raised_after_it():
    from attnzoo._errors import Interrupted, interrupts_deferred, signals_as_interrupts

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    done = []
    with pytest.raises(KeyboardInterrupt) as info:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # a handler runs between bytecodes: it would have raised here
            done.append("block finished")
    assert done and not isinstance(info.value, Interrupted)
    with pytest.raises(Interrupted) as info:
        with signals_as_interrupts(), interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            done.append("again")
    assert info.value.signum == signal.SIGTERM and done == ["block finished", "again"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
