"""Tests of attnzoo.data: bundled UCI digits, cluttered digits, date pairs."""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pytest
import torch

from attnzoo.data import (
    DATE_FORMATS,
    CharVocab,
    date_vocabularies,
    digit_split,
    encode_batch,
    is_test_date,
    load_digits,
    make_cluttered_digits,
    make_dates,
)

# ----------------------------------------------------------------- UCI digits


def test_load_digits_facts() -> None:
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 16
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and all(170 <= c <= 190 for c in counts)
    images[:] = 0  # callers get copies: the cache must be unaffected
    assert load_digits()[0].max() == 16


def test_digit_split_is_a_stratified_partition() -> None:
    train, test = digit_split("train"), digit_split("test")
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(1797))
    labels = load_digits()[1]
    frac = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(frac - 0.2) < 0.01)


# ----------------------------------------------------------- cluttered digits


def _upscaled(source: int, scale: int = 2) -> torch.Tensor:
    img = torch.from_numpy(load_digits()[0][source]).float() / 16
    return img.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def test_cluttered_shapes_and_range() -> None:
    d = make_cluttered_digits(64, canvas=40, n_fragments=3, seed=1)
    assert d.images.shape == (64, 1, 40, 40) and d.images.dtype == torch.float32
    assert d.labels.shape == (64,) and d.labels.dtype == torch.int64
    assert d.boxes.shape == (64, 4) and d.boxes.dtype == torch.int64
    assert d.fragment_sources.shape == (64, 3)
    assert d.images.min() >= 0 and d.images.max() <= 1
    assert torch.equal(d.labels, torch.from_numpy(load_digits()[1])[d.sources])


def test_cluttered_determinism() -> None:
    a = make_cluttered_digits(32, seed=3)
    b = make_cluttered_digits(32, seed=3)
    c = make_cluttered_digits(32, seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.sources, c.sources)


@pytest.mark.parametrize("n_fragments", [0, 6])
def test_cluttered_box_holds_the_digit(n_fragments: int) -> None:
    d = make_cluttered_digits(50, canvas=28, n_fragments=n_fragments, seed=7)
    top, left, bottom, right = d.boxes.unbind(1)
    assert torch.all((top >= 0) & (left >= 0) & (bottom <= 28) & (right <= 28))
    assert torch.all((bottom - top == 16) & (right - left == 16))
    for i in range(50):
        t, l, b, r = d.boxes[i].tolist()
        inside = d.images[i, 0, t:b, l:r]
        digit = _upscaled(int(d.sources[i]))
        assert torch.all(inside >= digit)  # fragments only ever add ink (max)
        assert inside.max() == max(digit.max(), inside.max())
        if n_fragments == 0:
            assert torch.equal(inside, digit)
            assert d.images[i].sum() == digit.sum()  # nothing outside the box


def test_cluttered_fragments_are_other_digits_and_add_ink() -> None:
    d = make_cluttered_digits(1000, n_fragments=4, split="test", seed=2)
    assert torch.all(d.fragment_sources != d.sources[:, None])
    ink = torch.stack([_upscaled(int(s)).sum() for s in d.sources])
    assert torch.all(d.images.sum((1, 2, 3)) >= ink - 1e-4)
    assert (d.images.sum((1, 2, 3)) > ink + 1e-4).float().mean() > 0.9


def test_cluttered_fragments_are_crops_with_ink() -> None:
    # On a wide canvas a lone fragment rarely touches the digit's box, so nearly
    # every sample shows ink outside the box (uniform crops would be ~10% empty).
    d = make_cluttered_digits(400, canvas=128, n_fragments=1, seed=9)
    outside = d.images[:, 0].clone()
    for i, (t, l, b, r) in enumerate(d.boxes.tolist()):
        outside[i, t:b, l:r] = 0
    assert (outside.sum((1, 2)) > 0).float().mean() > 0.95


def test_cluttered_train_test_sources_disjoint() -> None:
    tr = make_cluttered_digits(3000, split="train", seed=0)
    te = make_cluttered_digits(1000, split="test", seed=0)
    used_tr = set(tr.sources.tolist()) | set(tr.fragment_sources.flatten().tolist())
    used_te = set(te.sources.tolist()) | set(te.fragment_sources.flatten().tolist())
    assert not used_tr & used_te
    assert used_tr <= set(digit_split("train").tolist())
    assert used_te <= set(digit_split("test").tolist())


def test_cluttered_small_canvas_and_scale() -> None:
    d = make_cluttered_digits(5, canvas=8, n_fragments=2, fragment_size=3, scale=1)
    assert d.images.shape == (5, 1, 8, 8) and torch.all(d.boxes == torch.tensor([0, 0, 8, 8]))


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"n": 0}, ValueError, "n must"),
        ({"n": 2.0}, TypeError, "n must"),
        ({"n": 4, "canvas": 15}, ValueError, "canvas"),
        ({"n": 4, "split": "val"}, ValueError, "split"),
        ({"n": 4, "n_fragments": -1}, ValueError, "n_fragments"),
        ({"n": 4, "fragment_size": 17}, ValueError, "fragment_size"),
        ({"n": 4, "seed": -1}, ValueError, "seed"),
    ],
)
def test_cluttered_bad_arguments(kwargs: dict, exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        make_cluttered_digits(**kwargs)


# ---------------------------------------------------------------------- dates
# Independent parsers, one per documented convention; each returns a date or None.
_MONTHS = ("january february march april may june july august september "
           "october november december").split()
_DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()


def _month(name: str, full: bool) -> int | None:
    names = _MONTHS if full else [m[:3] for m in _MONTHS]
    return names.index(name.lower()) + 1 if name.lower() in names else None


def _mk(y: str, m: int | str | None, d: str, weekday: str | None = None) -> date | None:
    try:
        out = date(int(y), int(m), int(d))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    name = _DAYS[out.weekday()]
    if weekday is not None and weekday.lower() not in (name, name[:3]):
        return None
    return out


def _yy(y: str) -> str:
    return str(1900 + int(y) if int(y) >= 50 else 2000 + int(y))


def _suffix_ok(day: str, suffix: str) -> bool:
    k = int(day)
    return suffix == ("th" if 11 <= k <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th"))


_PARSERS = {
    r"([A-Z][a-z]+), (\d{1,2}) ([A-Z][a-z]+) (\d{4})": lambda w, d, m, y: (
        _mk(y, _month(m, True), d, w)),
    r"(\d\d)/(\d\d)/(\d\d)": lambda m, d, y: _mk(_yy(y), m, d),
    r"([A-Z][a-z]{2}) (\d{1,2}), (\d{4})": lambda m, d, y: _mk(y, _month(m, False), d),
    r"(\d{1,2}) ([A-Z][a-z]{2}) (\d{4})": lambda d, m, y: _mk(y, _month(m, False), d),
    r"(\d{4})年(\d{1,2})月(\d{1,2})日": lambda y, m, d: _mk(y, m, d),
    r"(\d\d)/(\d\d)/(\d{4})": lambda m, d, y: _mk(y, m, d),
    r"(\d\d)\.(\d\d)\.(\d{4})": lambda d, m, y: _mk(y, m, d),
    r"([A-Z][a-z]+) (\d{1,2})(st|nd|rd|th), (\d{4})": lambda m, d, s, y: (
        _mk(y, _month(m, True), d) if _suffix_ok(d, s) else None),
    r"([a-z]+) (\d{1,2}) ([a-z]{3}) (\d{4})": lambda w, d, m, y: _mk(y, _month(m, False), d, w),
    r"(\d{4})/(\d\d)/(\d\d)": lambda y, m, d: _mk(y, m, d),
    r"(\d\d)-([A-Z]{3})-(\d{4})": lambda d, m, y: _mk(y, _month(m, False), d),
    r"([A-Z][a-z]{2}) (\d{1,2}) ([A-Z][a-z]+) (\d{4})": lambda w, d, m, y: (
        _mk(y, _month(m, True), d, w)),
}


def _parse_all(text: str) -> dict[str, date]:
    hits = {}
    for pattern, build in _PARSERS.items():
        match = re.fullmatch(pattern, text)
        if match and (parsed := build(*match.groups())) is not None:
            hits[pattern] = parsed
    return hits


def test_dates_round_trip_unambiguously_and_all_formats_appear() -> None:
    assert len(DATE_FORMATS) == len(_PARSERS) >= 10
    pairs = make_dates(3000, seed=11)
    seen: dict[str, int] = {}
    for text, iso in pairs:
        hits = _parse_all(text)
        assert {d.isoformat() for d in hits.values()} == {iso}, text
        for pattern in hits:
            seen[pattern] = seen.get(pattern, 0) + 1
    assert set(seen) == set(_PARSERS)
    expected = len(pairs) / len(_PARSERS)
    assert all(0.7 * expected < c < 1.3 * expected for c in seen.values())


def test_dates_outside_two_digit_window_drop_that_format() -> None:
    pairs = make_dates(600, seed=1, start=date(1890, 1, 1), end=date(1960, 12, 31))
    for text, iso in pairs:
        assert {d.isoformat() for d in _parse_all(text).values()} == {iso}, text
        assert not re.fullmatch(r"\d\d/\d\d/\d\d", text)
        assert "1890-01-01" <= iso <= "1960-12-31"


def test_dates_train_test_disjoint_and_covering() -> None:
    start, end = date(2020, 1, 1), date(2020, 3, 31)  # 91 days
    train = {iso for _, iso in make_dates(3000, split="train", start=start, end=end)}
    test = {iso for _, iso in make_dates(3000, split="test", start=start, end=end)}
    assert not train & test
    assert len(train | test) == 91 and 5 <= len(test) <= 35
    assert all(is_test_date(date.fromisoformat(s)) for s in test)
    big_tr = {iso for _, iso in make_dates(5000, split="train", seed=5)}
    big_te = {iso for _, iso in make_dates(5000, split="test", seed=6)}
    assert not big_tr & big_te


def test_dates_determinism() -> None:
    assert make_dates(50, seed=3) == make_dates(50, seed=3)
    assert make_dates(50, seed=3) != make_dates(50, seed=4)


def test_vocab_covers_every_generated_input() -> None:
    src, tgt = date_vocabularies()
    wide = make_dates(500, seed=1, start=date(1, 1, 1), end=date(9999, 12, 31))
    pairs = make_dates(2000, seed=0) + wide
    for text, iso in pairs:
        assert src.unk_id not in src.encode(text) and src.decode(src.encode(text)) == text
        assert tgt.unk_id not in tgt.encode(iso) and tgt.decode(tgt.encode(iso)) == iso
    assert len(tgt) == 4 + 11 and (src.pad_id, src.bos_id, src.eos_id, src.unk_id) == (0, 1, 2, 3)


def test_char_vocab_encode_decode() -> None:
    v = CharVocab("abc")
    assert len(v) == 7
    ids = v.encode("cab", add_bos=True)
    assert ids == [v.bos_id, 6, 4, 5, v.eos_id]
    assert v.decode(ids + [5, 5]) == "cab"  # stops at eos
    assert v.decode([v.pad_id, 4, v.bos_id, 5]) == "ab"
    assert v.decode(v.encode("axb", add_eos=False)) == "a\ufffdb"


def test_encode_batch_pads() -> None:
    src, _ = date_vocabularies()
    batch = encode_batch(["12/31/99", "1 Jan 2000"], src, add_bos=True)
    assert batch.dtype == torch.long and batch.shape == (2, 12)
    assert batch[0, -2:].tolist() == [src.pad_id] * 2 and batch[1, -1] == src.eos_id
    assert [src.decode(row) for row in batch] == ["12/31/99", "1 Jan 2000"]
    assert encode_batch(["ab"], CharVocab("ab"), max_len=5).shape == (1, 5)
    with pytest.raises(ValueError, match="max_len"):
        encode_batch(["abcdef"], CharVocab("abcdef"), max_len=3)


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"n": 0}, ValueError, "n must"),
        ({"n": 3, "start": date(2000, 1, 2), "end": date(2000, 1, 1)}, ValueError, "start"),
        ({"n": 3, "start": "2000-01-01"}, TypeError, "start"),
        ({"n": 3, "split": "valid"}, ValueError, "split"),
    ],
)
def test_make_dates_bad_arguments(kwargs: dict, exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        make_dates(**kwargs)
