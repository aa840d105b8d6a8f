"""End-to-end tests of ``attnzoo demo`` (the tour), on the ``--quick`` budget.

One real run of every part in a subprocess (module-scoped, under a minute on 2 idle cores)
is checked file by file and key by key, including that every quick model clearly learns
(well above chance); a second run with the same seed, in-process and ``--only speech``
(with stub figures), into the SAME folder must give identical speech numbers (timings
aside) and replace, not merge with, the first report. README's tour results must be the
text generated from the committed results of a real default run.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import matplotlib.image  # noqa: E402

import attnzoo  # noqa: E402
from attnzoo import cli  # noqa: E402

#: What the ``attnzoo`` console script runs (``attnzoo.cli:main``), in a fresh interpreter.
ATTNZOO = [sys.executable, "-c", "import sys; from attnzoo.cli import main; sys.exit(main())"]
SEED = 0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = ("baseline", "se", "cbam")
RESNET = ("resnet", "se_blocks", "se_convs", "cbam_blocks", "cbam_convs")
HEADS = ("last", "mean", "attention")
ROOT = Path(__file__).resolve().parents[1]
RESULTS_DEFAULT = ROOT / "docs" / "results" / "demo-default.json"
RESULTS_QUICK = ROOT / "docs" / "results" / "demo-quick.json"
README_START, README_END = "<!-- tour-results:start", "<!-- tour-results:end -->"


def _env() -> dict[str, str]:
    """The subprocess imports the same attnzoo as this test (installed or from src/)."""
    env = dict(os.environ)
    src = str(Path(attnzoo.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """Run ``attnzoo demo --quick`` once; snapshot what it wrote (later tests overwrite it)."""
    parent = tmp_path_factory.mktemp("tour")
    out = parent / "report"
    proc = subprocess.run([*ATTNZOO, "demo", "--quick", "--seed", str(SEED),
                           "--out", str(out)], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    return SimpleNamespace(out=out, parent=parent, proc=proc, files=files,
                           results=json.loads(files["results.json"]), html=files["index.html"].decode("utf-8"))


def _pngs(files: dict[str, bytes]) -> list[str]:
    return sorted(n for n in files if n.endswith(".png"))


def _without_timings(obj):
    """Drop every key with 'seconds' in its name (timings differ from run to run)."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _is_unit(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


def test_exit_status_progress_and_summary(tour):
    proc = tour.proc
    assert "Traceback" not in proc.stderr + proc.stdout
    # one line per finished training run, even though stderr is not a terminal
    lines = proc.stderr.splitlines()
    epochs = [line for line in lines if line.startswith("dates   epoch ")]  # the long training, epoch by epoch
    runs = [line for line in lines if line.startswith(("vision ", "resnet ", "speech ", "dates "))
            and line not in epochs]
    r = tour.results
    expected = (len(r["vision"]["seeds"]) * len(MODELS) + len(r["resnet"]["seeds"]) * len(RESNET)
                + len(r["speech"]["seeds"]) * len(HEADS) + 1)
    assert len(runs) == expected, proc.stderr
    assert len(epochs) == r["dates"]["train"]["epochs"], proc.stderr
    for name in MODELS:
        assert any(name in line and "test accuracy" in line for line in runs)
    # the summary table and the report's path on stdout
    out = proc.stdout
    for part, names in (("vision", MODELS), ("resnet", RESNET), ("speech", HEADS)):  # every part's table
        for name in names:
            m = tour.results[part]["models"][name]
            assert re.search(rf"^{name}\s+{m['accuracy_mean']:.3f} ± {m['accuracy_std']:.3f}", out, re.M), out
    assert f"{tour.results['dates']['exact_match']:.3f}" in out
    assert out.strip().splitlines()[-1] == f"report: {tour.out / 'index.html'}"


def test_files_written_and_nothing_left_behind(tour):
    names = set(tour.files)
    assert {"index.html", "results.json"} <= names
    expected = {"vision_accuracy.png", "vision_curves.png", "se_gates_stage1.png", "cbam_spatial_stage1.png",
                "dates_curves.png", "dates_encoder_self_attention.png", "dates_decoder_self_attention.png",
                "dates_cross_attention_ex1_layer1.png", "resnet_train_test.png", "resnet_curves.png",
                "speech_attention.png", "speech_accuracy.png"}
    assert expected <= names
    assert not [n for n in names if n.startswith(".") or "tmp" in n or "partial" in n]
    assert [p.name for p in tour.parent.iterdir()] == ["report"]  # no staging folder beside it


def test_results_json_shape_and_ranges(tour):
    r = tour.results
    assert r["seed"] == SEED and r["quick"] is True and r["only"] is None
    assert "gates" not in r["parts"] and "gates" not in r  # the league runs only with --only gates
    assert isinstance(r["seconds"], float) and r["seconds"] > 0
    env = r["environment"]
    assert env["command"] == f"attnzoo demo --quick --seed {SEED}" and env["attnzoo"] == attnzoo.__version__
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", env["date"])
    v = r["vision"]
    assert set(MODELS) <= set(v["models"])
    params = {}
    for name in MODELS:
        m = v["models"][name]
        assert _is_unit(m["accuracy_mean"]) and isinstance(m["accuracy_std"], float) and m["accuracy_std"] >= 0
        assert len(m["accuracies"]) == len(v["seeds"]) >= 1 and all(_is_unit(a) for a in m["accuracies"])
        assert math.isclose(m["accuracy_mean"], sum(m["accuracies"]) / len(m["accuracies"]))
        assert isinstance(m["params"], int) and m["params"] > 0
        assert isinstance(m["seconds"], float) and m["seconds"] > 0
        params[name] = m["params"]
    assert params["baseline"] < params["se"] < params["cbam"]  # same CNN plus the gates
    assert v["seeds"] == [SEED + i for i in range(len(v["seeds"]))]
    ratio = v["cbam_localization_ratio"]
    assert isinstance(ratio, float) and 0 < ratio <= 4.0  # the box is a quarter of the canvas
    stages = v["cbam_localization_per_stage"]
    assert len(stages) == 3 and stages[0]["mean"] == ratio
    for name in ("se", "cbam"):
        cmp = v["comparisons"][f"{name}_vs_baseline"]
        lo, hi = cmp["ci95_points"]
        assert lo <= cmp["mean_points"] <= hi and isinstance(cmp["significant"], bool)
    d = r["dates"]
    assert _is_unit(d["exact_match"]) and _is_unit(d["char_accuracy"])
    assert d["char_accuracy"] >= d["exact_match"]
    assert d["examples"] and all(set(e) >= {"input", "target", "prediction"} for e in d["examples"])
    assert all(isinstance(e[k], str) for e in d["examples"] for k in ("input", "target", "prediction"))
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", e["target"]) for e in d["examples"])
    assert len(d["per_format_exact_match"]) >= 10
    ca = d["cross_attention"]
    assert all(_is_unit(x) for x in ca["field_per_layer"] + ca["exact_position_per_layer"])
    rn = r["resnet"]
    assert set(rn["models"]) == set(RESNET)
    gates = {k: m["gates"] for k, m in rn["models"].items()}
    # 3 basic blocks; 9 convs (stem, 2 per block, 2 projection shortcuts)
    assert gates == {"resnet": 0, "se_blocks": 3, "cbam_blocks": 3, "se_convs": 9, "cbam_convs": 9}
    for m in rn["models"].values():
        assert math.isclose(m["gap_points_mean"], 100 * (m["train_accuracy_mean"] - m["accuracy_mean"]), abs_tol=1e-9)
    sp = r["speech"]
    assert sp["task"]["n_train"] == 270 and sp["task"]["n_test"] == 370
    assert len(sp["seeds"]) >= 3 and set(sp["models"]) == set(HEADS)
    assert sp["models"]["attention"]["params"] > sp["models"]["last"]["params"] == sp["models"]["mean"]["params"]
    a = sp["attention"]
    assert 0 <= a["centre_mean"] <= 1 and 0 < a["effective_frames_share_mean"] <= 1 + 1e-9


def test_quick_run_learns(tour):
    """The smoke run must show every model learning: well above chance (0.1 for 10 digits,
    0.11 for 9 speakers), not the near-chance numbers a too-small budget gives."""
    r = tour.results
    for name, m in {**r["vision"]["models"], **r["resnet"]["models"]}.items():
        assert m["accuracy_mean"] >= 0.6, (name, m["accuracies"])
    for name, m in r["speech"]["models"].items():
        assert m["accuracy_mean"] >= 0.7, (name, m["accuracies"])
    assert r["dates"]["char_accuracy"] >= 0.8


def test_pngs_are_valid_images(tour):
    pngs = _pngs(tour.files)
    assert len(pngs) >= 12
    for name in pngs:
        data = tour.files[name]
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000, name
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100, name
        assert float(pixels[..., :3].std()) > 0.01, f"{name} is blank"


def test_html_is_self_contained_and_shows_the_numbers(tour):
    html = tour.html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "Not run now" in html and "attnzoo demo --only gates" in html  # the committed gate league
    referenced = set(re.findall(r'<img src="([^"]+)"', html))
    svgs = {f for f in tour.files if f.endswith(".svg")}
    assert referenced == set(_pngs(tour.files)) | svgs  # every figure shown, none missing
    # the data-flow diagrams, drawn from the modules' own fx traces, one per mechanism
    from attnzoo.viz.diagrams import MECHANISMS

    assert "How each mechanism computes" in html and svgs == {f"{name}.svg" for name in MECHANISMS}
    lowered = html.lower()
    for external in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert external not in lowered
    v, d = tour.results["vision"], tour.results["dates"]
    for name in MODELS:
        m = v["models"][name]
        assert f"{m['accuracy_mean']:.3f} ± {m['accuracy_std']:.3f}" in html
        assert f"{m['params']:,}" in html
    assert f"{v['cbam_localization_ratio']:.2f}" in html
    assert f"{d['exact_match']:.3f}" in html and f"{d['char_accuracy']:.3f}" in html
    for e in d["examples"][:3]:
        assert e["target"] in html
    for mechanism in ("Squeeze-and-Excitation", "CBAM", "Self-attention", "Cross-attention"):
        assert mechanism in html
    # the page states the finding in words, whatever it is, each sentence once
    assert re.search(r"(beat|did worse than) the baseline|Not conclusive whether \w+ differs from the baseline"
                     r"|from a single seed, too few to tell", html)
    from html import escape

    from attnzoo.demo.report import findings

    for _, sentence in findings(tour.results):
        assert html.count(escape(sentence)) == 1, sentence
    assert "Quick run: a smoke test." in html
    for part in ("resnet", "speech"):
        for m in tour.results[part]["models"].values():
            assert f"{m['accuracy_mean']:.3f} ± {m['accuracy_std']:.3f}" in html
    # the interactive views: the speech weights and the date model's generated characters
    for part, file in (("speech", "speech_attention_view.html"), ("dates", "dates_attention_view.html")):
        assert tour.results[part]["figures"]["view"]["file"] == file
        assert f'<iframe src="{file}"' in html
        page = (tour.out / file).read_text(encoding="utf-8")
        assert "<script" in page and not re.search(r"(src|href)=\"https?://", page)  # data and script inline


def test_interactive_views_are_embedded_when_listed(tour):
    from attnzoo.demo.report import html_page

    results = {**tour.results, "views": [{"file": "view_dates.html", "title": "Cross-attention, <layer 2>"}]}
    html = html_page(results)
    assert '<iframe src="view_dates.html"' in html and '<a href="view_dates.html">' in html
    assert "Cross-attention, &lt;layer 2&gt;" in html


def test_same_seed_same_numbers_and_report_replaced(tour, capsys, monkeypatch):
    # Same seed, in this process rather than a subprocess, into the SAME folder. The
    # figures were checked above; here they are stubs, to keep the test short.
    from attnzoo import viz

    def stub(*args, **kwargs):
        path = next(Path(a) for a in args if isinstance(a, (str, os.PathLike)) and str(a).endswith(".png"))
        path.write_bytes(PNG_SIGNATURE)
        return path
    for name in viz.__all__:
        if name.startswith("plot_"):
            monkeypatch.setattr(viz, name, stub)
    code = cli.main(["demo", "--quick", "--seed", str(SEED), "--only", "speech", "--out", str(tour.out)])
    assert code == 0
    capsys.readouterr()
    again = json.loads((tour.out / "results.json").read_text("utf-8"))
    assert "dates" not in again and "vision" not in again and again["only"] == "speech"
    assert _without_timings(again["speech"]) == _without_timings(tour.results["speech"])
    # the old report was replaced as a whole: no dates figures remain, nothing left beside it
    assert not list(tour.out.glob("dates_*.png"))
    assert "Sequences: date normalisation" not in (tour.out / "index.html").read_text("utf-8")
    assert [p.name for p in tour.parent.iterdir()] == ["report"]


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text("utf-8")
    start, end = text.index(README_START), text.index(README_END)
    return text[text.index("\n", start) + 1:end]


@pytest.mark.skipif(not (ROOT / "README.md").exists() or not RESULTS_DEFAULT.exists(),
                    reason="needs the source checkout (README.md and docs/results/)")
def test_readme_tour_results_match_the_committed_results_file():
    """README's tour numbers are the text generated from a real default run's results.json."""
    from attnzoo.demo.report import readme_results

    default = json.loads(RESULTS_DEFAULT.read_text("utf-8"))
    quick = json.loads(RESULTS_QUICK.read_text("utf-8"))
    assert default["quick"] is False and default["only"] is None and quick["quick"] is True
    assert {"vision", "resnet", "speech", "dates"} <= set(default["parts"]) <= set(attnzoo.demo.PARTS)
    assert _readme_block() == readme_results(default, quick), (
        "README's tour results differ from docs/results/demo-default.json; regenerate them with "
        "attnzoo.demo.report.readme_results")


@pytest.mark.parametrize("head", ["last", "mean", "attention"])
def test_speech_heads_ignore_padding(head):
    """What follows an utterance's end (padding) cannot change any head's output."""
    import torch

    from attnzoo.demo.speech import SpeakerNet

    torch.manual_seed(0)
    model = SpeakerNet(head, hidden=8).double().eval()
    lengths = torch.tensor([3, 7, 5])
    x = torch.randn(3, 7, 12, dtype=torch.float64)
    pad = torch.arange(7) >= lengths[:, None]  # (B, T), True = padding
    noisy = x.masked_fill(pad[..., None], 0.0) + 100.0 * torch.randn_like(x) * pad[..., None]
    assert torch.equal(model(x.masked_fill(pad[..., None], 0.0), lengths), model(noisy, lengths))
    assert torch.allclose(model(x[:1, :3], lengths[:1]), model(x, lengths)[:1], atol=1e-12)


def test_new_plots_reject_bad_input(tmp_path):
    from attnzoo import viz

    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\) with values in 1\.\.3, got \[1\.0, 4\.0\]"):
        viz.plot_sequence_weights([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], [1, 4], tmp_path / "w.png")
    with pytest.raises(ValueError, match=r"results\['x'\] must be a finite \(train, test_mean, test_std\) triple"):
        viz.plot_train_test_bars({"x": (0.9, 0.8, -0.1)}, tmp_path / "b.png")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------ statistics (stats.py)


def _diffs_with(mean: float, sd: float, n: int) -> list[float]:
    """n paired differences (points) with exactly this mean and sample sd."""
    z = [i - (n - 1) / 2 for i in range(n)]
    scale = math.sqrt(sum(v * v for v in z) / (n - 1))
    return [mean + sd * v / scale for v in z]


def test_paired_difference_matches_the_t_interval_written_out():
    from attnzoo.demo.stats import paired_difference

    treated, control = [0.93, 0.91, 0.95], [0.90, 0.90, 0.91]
    cmp = paired_difference(treated, control)
    d = [100 * (a - b) for a, b in zip(treated, control)]  # 3, 1, 4 points
    m = sum(d) / 3
    s = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
    half = 4.303 * s / math.sqrt(3)  # t(0.975, 2 df)
    assert cmp["n"] == 3 and cmp["mean_points"] == pytest.approx(m) and cmp["std_points"] == pytest.approx(s)
    assert cmp["ci95_points"] == pytest.approx([m - half, m + half])
    assert cmp["margin_points"] == pytest.approx(4.303 * s * math.sqrt(2 / 3))


def test_an_interval_that_barely_excludes_0_is_not_conclusive():
    """The ResNet case that flipped between an Intel and an AMD machine: 3 seeds whose 95%
    interval excludes 0, but not by the margin a rerun elsewhere may shift the mean."""
    from attnzoo.demo.findings import verdict
    from attnzoo.demo.stats import paired_difference

    d = _diffs_with(2.0, 0.6, 3)  # interval about +0.5 to +3.5 points: excludes 0
    cmp = paired_difference([x / 100 for x in d], [0.0] * 3)
    assert cmp["ci95_points"][0] > 0 and cmp["significant"] is False
    text = verdict("se_blocks", cmp, against="the plain ResNet")
    assert text.startswith("Not conclusive whether SE per block differs from the plain ResNet: +2.0 ± 0.6 points")
    assert f"about {cmp['seeds_needed']} seeds would settle it" in text and "significant" not in text


@pytest.mark.parametrize("mean, sd", [(2.0, 0.6), (1.0, 2.0), (-3.0, 5.0), (0.5, 0.1)])
def test_seeds_needed_is_the_fewest_seeds_that_would_settle_it(mean, sd):
    from attnzoo.demo.stats import MIN_SEEDS, paired_difference, seeds_needed

    n = seeds_needed(mean, sd)
    assert n is not None and n >= MIN_SEEDS
    at = paired_difference([x / 100 for x in _diffs_with(mean, sd, n)], [0.0] * n)
    assert at["significant"] is True and at["mean_points"] == pytest.approx(mean)
    if n > MIN_SEEDS:
        below = paired_difference([x / 100 for x in _diffs_with(mean, sd, n - 1)], [0.0] * (n - 1))
        assert below["significant"] is False and below["seeds_needed"] == n
    # significant means: the interval clears 0 by the margin, with >= MIN_SEEDS seeds
    lo, hi = at["ci95_points"]
    assert lo > at["margin_points"] or hi < -at["margin_points"]
    assert seeds_needed(0.0, sd) is None


def test_two_seeds_are_never_significant():
    from attnzoo.demo.findings import verdict
    from attnzoo.demo.stats import paired_difference

    cmp = paired_difference([0.99, 0.98], [0.50, 0.51])  # +48 points, tiny sd
    assert cmp["significant"] is False and cmp["seeds_needed"] == 3
    assert "fewer than 3 seeds" in verdict("se", cmp)


def test_reproducibility_is_stated_the_same_way_everywhere():
    """README (its generated block), docs, ``demo --help`` and the report page all say what
    is reproducible in the words of ``stats.REPRODUCIBLE``, and nothing claims more."""
    from attnzoo.demo import DESCRIPTION
    from attnzoo.demo.page import page
    from attnzoo.demo.stats import REPRODUCIBLE

    def flat(text: str) -> str:
        return " ".join(text.split())
    readme = flat((ROOT / "README.md").read_text("utf-8"))
    docs = flat((ROOT / "docs" / "index.md").read_text("utf-8"))
    results = {"seed": 0, "quick": False, "only": None, "seconds": 1.0,
               "environment": {"device": "cpu", "torch": "x"}}
    for where, text in (("README", readme), ("docs/index.md", docs), ("demo --help", flat(DESCRIPTION)),
                        ("report page", flat(page(results, [], "")))):
        assert flat(REPRODUCIBLE).lower() in text.lower(), where
        assert "bit-reproducible" not in text and "gives the same numbers" not in text, where
