"""Tests for attnzoo.viz (headless PNG figures) and attnzoo._io (atomic writes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnzoo import viz  # noqa: E402
from attnzoo.viz import _figure  # noqa: E402
from attnzoo._io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert isinstance(path, Path)
    data = path.read_bytes()
    assert len(data) > 100
    assert data[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0
    assert float(pixels[..., :3].std()) > 0.0  # not a blank canvas
    # nothing but the PNG itself is left in the directory (no temporary files)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- plots


def test_plot_attention_single_head(tmp_path, rng):
    weights = torch.tensor(softmax(rng.normal(size=(10, 12))), requires_grad=True)
    out = viz.plot_attention(weights, tmp_path / "a.png", query_labels="abcdefghij",
                             key_labels=list("hello world!"), title="single")
    assert out == tmp_path / "a.png"
    assert_png(out)


def test_plot_attention_multi_head(tmp_path, rng):
    weights = softmax(rng.normal(size=(3, 5, 6))).tolist()  # nested lists work too
    out = viz.plot_attention(weights, str(tmp_path / "sub" / "h.png"), head_titles=["x", "y", "z"],
                             query_labels=[f"q{i}" for i in range(5)], key_labels=[f"key{i}" for i in range(6)])
    assert_png(out)


def test_plot_attention_more_heads_than_max(tmp_path, rng):
    assert_png(viz.plot_attention(softmax(rng.normal(size=(5, 4, 4))), tmp_path / "m.png", max_heads=2))


def test_inputs_tensor_or_array_are_equivalent(rng):
    w = rng.random((2, 3, 4))
    for x in (w, torch.tensor(w, dtype=torch.float32), torch.tensor(w, requires_grad=True), w.tolist()):
        arr = _figure._array("weights", x, ["(H, L, S)"])
        assert arr.dtype == np.float64 and arr.shape == (2, 3, 4)
        np.testing.assert_allclose(arr, w, rtol=1e-6)


def test_plot_attention_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"weights .*\(H, L, S\).*got shape \(2, 3, 4, 5\)"):
        viz.plot_attention(np.ones((2, 3, 4, 5)), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"weights .*got shape \(4,\)"):
        viz.plot_attention(torch.ones(4), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"weights must be non-empty"):
        viz.plot_attention(np.ones((0, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"query_labels has 2 entries.*3"):
        viz.plot_attention(np.ones((3, 4)), tmp_path / "x.png", query_labels=["a", "b"])
    with pytest.raises(ValueError, match=r"key_labels has 5 entries.*4"):
        viz.plot_attention(np.ones((3, 4)), tmp_path / "x.png", key_labels="abcde")
    with pytest.raises(ValueError, match=r"head_titles has 1 entries.*2"):
        viz.plot_attention(np.ones((2, 3, 4)), tmp_path / "x.png", head_titles=["h"])
    with pytest.raises(ValueError, match=r"max_heads"):
        viz.plot_attention(np.ones((2, 3, 4)), tmp_path / "x.png", max_heads=0)
    with pytest.raises(TypeError, match=r"weights"):
        viz.plot_attention("not numbers", tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_channel_profile(tmp_path, rng):
    gates = torch.rand(4, 16)
    assert_png(viz.plot_channel_profile(gates, tmp_path / "k" / "c.png", labels=list("abcd"), title="SE"))
    assert_png(viz.plot_channel_profile(rng.random(16), tmp_path / "one" / "c.png", labels=["class 3"]))


def test_plot_channel_profile_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"gates .*\(K, C\).*got shape \(2, 3, 4\)"):
        viz.plot_channel_profile(np.ones((2, 3, 4)), tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"labels has 2 entries.*3"):
        viz.plot_channel_profile(np.ones((3, 8)), tmp_path / "c.png", labels=["a", "b"])
    with pytest.raises(ValueError, match=r"gates must be non-empty"):
        viz.plot_channel_profile(np.ones((3, 0)), tmp_path / "c.png")


@pytest.mark.parametrize("with_channel", [False, True])
def test_plot_spatial_overlay(tmp_path, rng, with_channel):
    images = rng.random((3, 16, 16))
    gates = rng.random((3, 4, 4))
    if with_channel:
        images, gates = torch.tensor(images[:, None]), torch.tensor(gates[:, None])
    boxes = np.array([[2, 3, 10, 12]] * 3)
    out = viz.plot_spatial_overlay(images, gates, tmp_path / "o.png", boxes=boxes,
                                   titles=[f"img {i}" for i in range(3)], ncols=2)
    assert_png(out)


def test_plot_spatial_overlay_bad_inputs(tmp_path):
    imgs, gates = np.ones((3, 8, 8)), np.ones((3, 2, 2))
    with pytest.raises(ValueError, match=r"images .*got shape \(8, 8\)"):
        viz.plot_spatial_overlay(np.ones((8, 8)), gates, tmp_path / "o.png")
    with pytest.raises(ValueError, match=r"images .*\(N, 1, H, W\).*got shape \(3, 3, 8, 8\)"):
        viz.plot_spatial_overlay(np.ones((3, 3, 8, 8)), gates, tmp_path / "o.png")
    with pytest.raises(ValueError, match=r"gates .*N=3.*got shape \(2, 2, 2\)"):
        viz.plot_spatial_overlay(imgs, np.ones((2, 2, 2)), tmp_path / "o.png")
    with pytest.raises(ValueError, match=r"boxes .*\(3, 4\).*got shape \(3, 2\)"):
        viz.plot_spatial_overlay(imgs, gates, tmp_path / "o.png", boxes=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"titles has 1 entries.*3"):
        viz.plot_spatial_overlay(imgs, gates, tmp_path / "o.png", titles=["a"])
    assert list(tmp_path.iterdir()) == []


def test_plot_training_curves(tmp_path):
    histories = {
        "plain": {"loss": [2.3, 1.2, 0.7, 0.5], "accuracy": [0.3, 0.6, 0.8, 0.85]},
        "+SE": {"loss": np.array([2.3, 1.0, 0.5, 0.3]), "accuracy": torch.tensor([0.3, 0.7, 0.85, 0.9])},
        "loss only": {"loss": [2.0, 1.5, 1.4]},
    }
    assert_png(viz.plot_training_curves(histories, tmp_path / "t.png", title="curves"))


def test_plot_training_curves_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"histories"):
        viz.plot_training_curves({}, tmp_path / "t.png")
    with pytest.raises(ValueError, match=r"histories\['a'\].*'loss'"):
        viz.plot_training_curves({"a": {"accuracy": [0.5]}}, tmp_path / "t.png")
    with pytest.raises(ValueError, match=r"histories\['a'\]\['loss'\] must be non-empty"):
        viz.plot_training_curves({"a": {"loss": []}}, tmp_path / "t.png")
    with pytest.raises(ValueError, match=r"histories\['a'\]\['accuracy'\].*got shape \(2, 2\)"):
        viz.plot_training_curves({"a": {"loss": [1.0], "accuracy": [[1, 2], [3, 4]]}}, tmp_path / "t.png")


def test_plot_accuracy_bars_no_pyplot_no_leak(tmp_path):
    pyplot = sys.modules.get("matplotlib.pyplot")
    before = pyplot.get_fignums() if pyplot is not None else None
    results = {"plain CNN": (0.91, 0.01), "+SE": [0.93, 0.004], "+spatial transformer": (np.float64(0.95), 0.0)}
    assert_png(viz.plot_accuracy_bars(results, tmp_path / "b.png", title="acc", ylabel="accuracy"))
    if pyplot is None:  # viz never touches pyplot's global figure manager
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert pyplot.get_fignums() == before


def test_plot_accuracy_bars_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"results"):
        viz.plot_accuracy_bars({}, tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"results\['a'\]"):
        viz.plot_accuracy_bars({"a": (0.9, 0.1, 0.2)}, tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"results\['a'\]"):
        viz.plot_accuracy_bars({"a": (math.nan, 0.1)}, tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"results\['a'\]"):
        viz.plot_accuracy_bars({"a": (0.9, -0.1)}, tmp_path / "b.png")


def test_core_import_without_matplotlib(tmp_path):
    # A fresh interpreter where every matplotlib import fails: attnzoo.viz still imports, and a
    # plot says how to install matplotlib, writing nothing.
    code = (
        "import sys\n"
        "for m in ('matplotlib', 'matplotlib.figure', 'matplotlib.backends', 'matplotlib.backends.backend_agg'):\n"
        "    sys.modules[m] = None\n"
        "import attnzoo.viz as viz\n"
        "try:\n"
        f"    viz.plot_accuracy_bars({{'a': (0.5, 0.1)}}, {str(tmp_path / 'b.png')!r})\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR', e)\n"
    )
    src = str(Path(viz.__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": src})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IMPORT-ERROR" in done.stdout and 'attnzoo[demo]' in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_failed_plot_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        viz.plot_accuracy_bars({"a": (0.5, 0.1)}, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_atomic_path_leaves_nothing_on_error(tmp_path, exc):
    target = tmp_path / "out.bin"
    with pytest.raises(exc):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_bytes(b"partial")
            raise exc("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_existing_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_requires_a_written_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "x") as tmp:
            tmp.unlink()
    assert list(tmp_path.iterdir()) == []


def test_atomic_writers(tmp_path):
    assert atomic_write_bytes(tmp_path / "b", b"\x00\x01") == tmp_path / "b"
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "t", "héllo\n")
    assert (tmp_path / "t").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_json(tmp_path / "j.json", {"b": [1, 2.5], "a": None})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": None, "b": [1, 2.5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "j.json", "t"]
    if os.name == "posix":  # new files get normal permissions, not mkstemp's 0600
        umask = os.umask(0)
        os.umask(umask)
        assert (tmp_path / "t").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_atomic_write_json_rejects_nan(tmp_path, bad):
    target = tmp_path / "r.json"
    target.write_text('{"ok": 1}')
    with pytest.raises(ValueError):
        atomic_write_json(target, {"loss": [1.0, bad]})
    assert target.read_text() == '{"ok": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
