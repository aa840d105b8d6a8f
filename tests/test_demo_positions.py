"""The tour's positions part (``attnzoo demo --only positions``): a character-level
Transformer on Tiny Shakespeare with each position scheme.

Every scheme learns on a tiny budget (well below the unigram entropy, computed here from
the data); the models are causal; RoPE, ALiBi, sinusoidal and no positions take 4x the
training context while learned absolute positions refuse it (and are reported n/a, never
extrapolated); the part's results have the documented keys, the same numbers twice for one
seed, and the part shows up in ``--only``, ``--help``, the summary and README's tables.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from attnzoo import cli  # noqa: E402
from attnzoo.data.shakespeare import load_tiny_shakespeare, shakespeare_vocab  # noqa: E402
from attnzoo.demo import charlm, positions, report  # noqa: E402
from attnzoo.demo.common import NUM_THREADS, QUICK, PositionsBudget  # noqa: E402
from attnzoo.demo.stats import paired_difference  # noqa: E402

SCHEMES = ("learned", "sinusoidal", "rope", "alibi", "nope")
TINY = PositionsBudget(steps=40, n_seeds=1, batch_size=8, lr=2e-2, n_windows=3, context=64, scored=64, d_model=32)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _unigram_bits() -> float:
    """Cross-entropy (bits) of the validation characters under the training frequencies,
    computed afresh in float64 (no smoothing needed: every validation character occurs in training)."""
    train, val = load_tiny_shakespeare("train"), load_tiny_shakespeare("val")
    p = torch.bincount(train, minlength=65).double() / len(train)
    return float(-torch.log2(p[val]).mean())


@pytest.fixture(scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(NUM_THREADS)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def quick(tmp_path_factory, one_thread):
    """The part on its quick budget, twice with the same seed (real figures both times)."""
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    cpu = torch.device("cpu")
    return (positions.run(QUICK["positions"], 0, cpu, first), positions.run(QUICK["positions"], 0, cpu, second),
            first)


def _without_timings(results: dict) -> dict:
    """A JSON copy without the keys that hold timings (they differ from run to run)."""
    return json.loads(json.dumps(results), object_hook=lambda d: {k: v for k, v in d.items() if "seconds" not in k})


def test_unigram_reference_matches_the_part():
    ref = _unigram_bits()
    assert 4.5 < ref < 5.0  # 65 characters, far from uniform (log2 65 = 6.02)
    train, val = load_tiny_shakespeare("train"), load_tiny_shakespeare("val")
    assert charlm.unigram_bits(train, val, 65) == pytest.approx(ref, abs=2e-3)  # add-one smoothing only


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_learns_on_a_tiny_budget(scheme, one_thread):
    ids, val = load_tiny_shakespeare("train"), load_tiny_shakespeare("val")
    model = positions.build_model(scheme, 0, TINY)
    ends = charlm.window_ends(len(val), 4, 128)
    before = charlm.bits_per_char(model, val, ends, 64, 64)
    positions.train(model, ids, TINY, 0, "test")
    after = charlm.bits_per_char(model, val, ends, 64, 64)
    unigram = _unigram_bits()
    assert before > unigram  # an untrained model is worse than character frequencies
    assert after < unigram - 0.5, (scheme, before, after, unigram)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_models_are_causal(scheme):
    """Changing later characters never changes the predictions for earlier ones."""
    torch.manual_seed(1)
    model = charlm.CharLM(scheme, 65, context=16, d_model=16, nhead=4, layers=2).double().eval()
    x = torch.randint(0, 65, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 65, (2, 7))
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-12)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_same_seed_same_shared_weights_in_every_scheme():
    base = positions.build_model("nope", 3, TINY).state_dict()
    for scheme in SCHEMES:
        sd = positions.build_model(scheme, 3, TINY).state_dict()
        extra = set(sd) - set(base)
        assert extra == ({"pos.weight"} if scheme == "learned" else set()), scheme
        assert all(torch.equal(sd[k], base[k]) for k in base), scheme


def test_sinusoidal_table_matches_the_formula():
    d, length = 8, 50
    table = charlm.sinusoidal_table(length, d).double()
    for p in (0, 1, 17, 49):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert table[p, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


def test_alibi_model_adds_the_bias_to_the_causal_scores():
    """The ALiBi model's first attention layer equals softmax(q kᵀ/√hs - m (i - j)) over j <= i,
    written here in float64 from the paper's slopes for 4 heads (1/4, 1/16, 1/64, 1/256)."""
    torch.manual_seed(0)
    model = charlm.CharLM("alibi", 65, context=8, d_model=16, nhead=4, layers=1).double().eval()
    x = torch.randint(0, 65, (2, 12))
    block = model.blocks[0]
    h = block.ln1(model.tok(x))  # (B, L, C)
    q, k, v = (z.view(2, 12, 4, 4).transpose(1, 2) for z in block.qkv(h).split(16, dim=2))  # (B, nh, L, hs)
    slopes = torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8], dtype=torch.float64)
    i, j = torch.arange(12)[:, None], torch.arange(12)[None, :]
    scores = q @ k.transpose(-1, -2) / 2.0 - slopes[:, None, None] * (i - j)  # (B, nh, L, L)
    scores = scores.masked_fill(j > i, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 12, 16)  # (B, L, C)
    expected = model.tok(x) + block.proj(y)  # (B, L, C)
    expected = expected + block.mlp(block.ln2(expected))
    assert torch.allclose(model(x), model.head(model.ln_f(expected)), atol=1e-10)


@pytest.mark.parametrize("scheme", ["sinusoidal", "rope", "alibi", "nope"])
def test_extrapolating_schemes_take_four_times_the_training_context(scheme):
    torch.manual_seed(0)
    model = charlm.CharLM(scheme, 65, context=32, d_model=16, nhead=4, layers=2).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 65, (2, 128)))
    assert out.shape == (2, 128, 65) and torch.isfinite(out).all()
    val = load_tiny_shakespeare("val")
    ends = charlm.window_ends(len(val), 2, 128)
    assert math.isfinite(charlm.bits_per_char(model, val, ends, 128, 32))


def test_learned_positions_refuse_longer_inputs_and_are_not_applicable():
    model = charlm.CharLM("learned", 65, context=32, d_model=16, nhead=4, layers=1)
    with pytest.raises(ValueError, match=r"^idx: learned absolute positions exist for 32 tokens only \(the training "
                                         r"context\), got a sequence of 33$"):
        model(torch.zeros(1, 33, dtype=torch.long))
    val = load_tiny_shakespeare("val")
    ends = charlm.window_ends(len(val), 2, 128)
    assert charlm.bits_per_char(model, val, ends, 64, 32) is None
    assert charlm.bits_per_char(model, val, ends, 32, 32) is not None


def test_bits_per_char_scores_the_same_characters_at_every_context():
    """A model that ignores its input (a constant distribution) gets the same loss at every
    context, equal to its cross-entropy on exactly the scored characters."""
    torch.manual_seed(0)
    model = charlm.CharLM("nope", 65, context=16, d_model=16, nhead=4, layers=1)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.randn(65))
    val = load_tiny_shakespeare("val")
    ends = charlm.window_ends(len(val), 5, 256)
    assert ends.min() >= 256 and ends.max() <= len(val) - 1
    logp = torch.log_softmax(model.head.bias.detach().double(), 0)
    scored = torch.cat([val[e - 24 + 1: e + 1] for e in ends.tolist()])  # targets of the last 24 inputs
    expected = float(-logp[scored].mean() / math.log(2))
    for context in (24, 64, 256):
        assert charlm.bits_per_char(model, val, ends, context, 24) == pytest.approx(expected, rel=1e-5)


def test_scored_cannot_exceed_the_context():
    model = charlm.CharLM("nope", 65, context=16, d_model=16, nhead=4, layers=1)
    val = load_tiny_shakespeare("val")
    with pytest.raises(ValueError, match=r"^scored must be in 1\.\.context=32, got 64$"):
        charlm.bits_per_char(model, val, charlm.window_ends(len(val), 2, 64), 32, 64)


def test_window_ends_rejects_a_short_split():
    with pytest.raises(ValueError, match="the split has 100 tokens, too few for 4 windows of 128"):
        charlm.window_ends(100, 4, 128)


def test_quick_results_structure_and_learning(quick):
    r, _, out = quick
    b = QUICK["positions"]
    t = r["task"]
    assert t["eval_contexts"] == [b.context, 2 * b.context, 4 * b.context, 8 * b.context] and t["context"] == b.context
    assert t["scored_chars"] == b.n_windows * b.scored
    assert t["unigram_bits"] == pytest.approx(_unigram_bits(), abs=2e-3)
    assert r["seeds"] == [0] and set(r["schemes"]) == set(SCHEMES)
    for scheme, m in r["schemes"].items():
        assert len(m["bits"]) == len(m["bits_mean"]) == len(m["bits_std"]) == 4
        applicable = [0] if scheme == "learned" else [0, 1, 2, 3]
        for i in range(4):
            if i in applicable:
                assert len(m["bits"][i]) == 1 and m["bits_mean"][i] == m["bits"][i][0] and m["bits_std"][i] == 0.0
                assert m["bits_mean"][i] < t["unigram_bits"] - 0.4, (scheme, m["bits_mean"])
            else:
                assert m["bits"][i] is None and m["bits_mean"][i] is None and m["bits_std"][i] is None
        assert isinstance(m["params"], int) and m["seconds"] > 0 and len(r["histories"][scheme][0]["loss"]) == 10
    params = {s: m["params"] for s, m in r["schemes"].items()}
    assert params["learned"] == params["nope"] + b.context * b.d_model
    assert params["sinusoidal"] == params["rope"] == params["alibi"] == params["nope"]
    cmp = r["comparisons"]
    assert set(cmp) == ({f"{s}_vs_nope" for s in SCHEMES if s != "nope"}
                        | {f"{s}_longest_vs_train" for s in SCHEMES if s != "learned"}
                        | {f"alibi_vs_{s}_longest" for s in ("sinusoidal", "rope", "nope")})
    m = r["schemes"]
    assert cmp["alibi_vs_rope_longest"]["mean_points"] == pytest.approx(
        100 * (m["alibi"]["bits_mean"][3] - m["rope"]["bits_mean"][3]))
    assert r["figures"] == {"context": "positions_context.png"}
    assert (out / "positions_context.png").read_bytes().startswith(PNG_SIGNATURE)
    json.dumps(r)  # plain JSON: None, not NaN, where not applicable


def test_same_seed_same_numbers(quick):
    first, second, _ = quick
    assert _without_timings(first) == _without_timings(second)


def test_part_is_in_only_and_help(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    only = next(a for a in sub.choices["demo"]._actions if "--only" in a.option_strings)
    assert "positions" in only.choices
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "'positions' (what position schemes" in out and "RoPE, ALiBi" in out


def test_summary_page_and_readme_cover_the_part_when_it_ran(quick):
    r = quick[0]
    base = {"seed": 0, "quick": True, "only": "positions", "parts": ["positions"], "seconds": 1.0, "views": [],
            "environment": {"device": "cpu", "torch": torch.__version__, "threads": NUM_THREADS}}
    results = {**base, "positions": r}
    text = report.summary(results, "x/index.html")
    assert "\npositions " in "\n" + text and f"bits/char @{8 * r['task']['context']}" in text
    assert f"{r['schemes']['alibi']['bits_mean'][3]:.3f} ± 0.000" in text
    assert "learned " in text and " n/a" in text and "Positions: Character-level Tiny Shakespeare" in text
    md = report.readme_results(results)
    c = r["task"]["context"]
    assert f"| Tiny Shakespeare, trained at context {c} (1 seed) | bits/char at {c} | bits/char at {2 * c} |" in md
    assert "| learned absolute | " in md and "| n/a | n/a | n/a |" in md
    assert "**Positions.**" in md
    html = report.html_page(results)
    assert "Positions: what a position scheme buys" in html and 'src="positions_context.png"' in html
    # a run without the part (--only another part, or the committed results) has no trace of it
    without = report.readme_results(base)
    assert "Tiny Shakespeare" not in without and "Positions" not in without
    assert "Positions" not in report.html_page(base)


def test_findings_word_the_alibi_claim_from_the_numbers(quick):
    """The claim's verdict follows the paired comparisons, not a fixed text."""
    from attnzoo.demo.findings import positions_text

    r = json.loads(json.dumps(quick[0]))
    r["seeds"] = [0, 1, 2]
    flat = paired_difference([3.01, 3.0, 3.02], [3.0, 3.0, 3.01])  # +0.007 ± 0.006: not significant
    rises = paired_difference([3.5, 3.6, 3.55], [3.0, 3.1, 3.05])  # +0.5 every seed
    drifts = paired_difference([3.1, 2.9, 3.3], [3.0, 3.0, 3.0])  # +0.1 ± 0.2: not conclusive
    cases = [(flat, rises, "holds here"), (rises, rises, "does not hold here: ALiBi's loss rises too"),
             (flat, drifts, "is not settled here: ALiBi's loss does not rise significantly, but sinusoidal's change")]
    for alibi, sinusoidal, words in cases:
        r["comparisons"]["alibi_longest_vs_train"] = alibi
        r["comparisons"]["sinusoidal_longest_vs_train"] = sinusoidal
        text = positions_text(r)
        assert f"The ALiBi paper's claim (its loss stays flat beyond the training length while sinusoidal " \
               f"positions degrade) {words}" in text[-1], text[-1]
        assert text[-3].startswith("Beyond the training length") and text[-2].startswith("At context 512, ALiBi")
        if sinusoidal is rises:
            assert ": sinusoidal worse: +0.500 ± 0.000 bits/char (paired over 3 seeds; 95% interval +0.500 to " \
                   "+0.500 bits; the margin for other machines is ±0.000)" in text[-3], text[-3]


def test_lines_plot_draws_gaps_and_rejects_bad_input(tmp_path):
    from attnzoo import viz

    path = viz.plot_lines_with_spread({"a": ([3.0, None], [0.1, None]), "b": ([2.0, 2.5], [0.0, 0.2])}, [128, 256],
                                      tmp_path / "ok.png", log2_x=True, vline=128)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    bad = [({"a": ([3.0, float("nan")], [0.1, 0.1])}, [1, 2], "series\\['a'\\]: means and sds must be finite"),
           ({"a": ([3.0, None], [0.1, 0.1])}, [1, 2], "None at the same places"),
           ({"a": ([3.0, 2.0], [0.1, -0.1])}, [1, 2], "sds >= 0"),
           ({"a": ([3.0], [0.1])}, [1, 2], r"series\['a'\] must be \(means, sds\), two lists of 2 values"),
           ({"a": ([3.0], [0.1])}, [0], "xs must be a non-empty list of finite positive numbers")]
    for series, xs, message in bad:
        with pytest.raises(ValueError, match=message):
            viz.plot_lines_with_spread(series, xs, tmp_path / "bad.png", log2_x=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]
