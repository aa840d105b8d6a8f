"""The shipped Japanese Vowels data: official split sizes, frame ranges, padding, and
(where the source ``.ts`` files are present) exact agreement with them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from attnzoo.data.vowels import load_japanese_vowels

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "japanese-vowels"  # next to a checkout under /work
if not SOURCE.is_dir():
    SOURCE = ROOT.parents[1] / "shared" / "data" / "japanese-vowels"  # a worktree under /work/wt


def _converter():
    """tools/convert_japanese_vowels.py, the script that built the shipped file."""
    spec = importlib.util.spec_from_file_location("convert", ROOT / "tools" / "convert_japanese_vowels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("split, n", [("train", 270), ("test", 370)])
def test_split_sizes_shapes_and_padding(split, n):
    x, lengths, labels = load_japanese_vowels(split)
    assert x.dtype == torch.float32 and lengths.dtype == labels.dtype == torch.int64
    assert x.shape == (n, int(lengths.max()), 12) and lengths.shape == labels.shape == (n,)
    assert 7 <= int(lengths.min()) and int(lengths.max()) <= 29
    assert set(labels.tolist()) == set(range(9))
    pad = torch.arange(x.shape[1]) >= lengths[:, None]  # (N, T_max)
    assert torch.all(x[pad] == 0)
    # real frames are LPC cepstra, never an all-zero row (so the padding is unambiguous)
    assert torch.all(x[~pad].abs().sum(-1) > 0) and torch.isfinite(x).all()


def test_official_split_composition():
    _, len_train, y_train = load_japanese_vowels("train")
    _, len_test, y_test = load_japanese_vowels("test")
    # UCI: 30 training utterances per speaker; test 24..88 per speaker; 7..29 frames overall
    assert torch.bincount(y_train).tolist() == [30] * 9
    counts = torch.bincount(y_test, minlength=9)
    assert int(counts.min()) == 24 and int(counts.max()) == 88 and int(counts.sum()) == 370
    both = torch.cat([len_train, len_test])
    assert int(both.min()) == 7 and int(both.max()) == 29


def test_fresh_tensors_and_bad_split():
    a, _, _ = load_japanese_vowels("train")
    a.fill_(1.0)
    b, _, _ = load_japanese_vowels("train")
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test', got 'valid'"):
        load_japanese_vowels("valid")
    with pytest.raises(TypeError, match="split must be a str, 'train' or 'test', got int"):
        load_japanese_vowels(0)


@pytest.mark.skipif(not SOURCE.is_dir(), reason="the source .ts files are not next to this checkout")
def test_shipped_file_equals_a_fresh_conversion_of_the_source():
    convert = _converter()
    fresh = convert.convert(SOURCE)
    for split in ("train", "test"):
        x, lengths, labels = load_japanese_vowels(split)
        assert np.array_equal(lengths.numpy(), fresh[f"{split}_lengths"])
        assert np.array_equal(labels.numpy(), fresh[f"{split}_labels"])
        values = fresh[f"{split}_values"].astype(np.float64) / 1e6  # (F, 12)
        pad = torch.arange(x.shape[1]) >= lengths[:, None]
        assert np.array_equal(x[~pad].numpy(), values.astype(np.float32))
    # and the parser reads the text itself: spot-check the first value of the train file
    first = (SOURCE / "JapaneseVowels_TRAIN.ts").read_text().split("@data")[1].split()[0].split(",")[0]
    assert float(load_japanese_vowels("train")[0][0, 0, 0]) == pytest.approx(float(first), abs=1e-6)


def test_parser_is_exact_and_refuses_bad_numbers():
    convert = _converter()
    assert convert._micro("-0.207383") == -207383 and convert._micro("-8.3E-4") == -830
    assert convert._micro("2") == 2_000_000
    for bad in ("0.1234567", "nan", "x"):
        with pytest.raises(ValueError):
            convert._micro(bad)
