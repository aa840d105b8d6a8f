"""Tiny Shakespeare as shipped: the exact text, the usual split, one id per character."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnzoo.data import shakespeare
from attnzoo.data.shakespeare import N_CHARS, load_tiny_shakespeare, shakespeare_vocab

ROOT = Path(__file__).resolve().parents[1]
SOURCE = next((p / "shared" / "data" / "tiny-shakespeare" / "input.txt" for p in ROOT.parents
               if (p / "shared" / "data" / "tiny-shakespeare" / "input.txt").is_file()), None)


def _decode(ids: torch.Tensor) -> str:
    vocab = shakespeare_vocab()
    return "".join(vocab[i] for i in ids.tolist())


def test_split_sizes_vocab_and_ids():
    train, val = load_tiny_shakespeare("train"), load_tiny_shakespeare("val")
    assert (train.numel(), val.numel()) == (1_003_854, 111_540)
    assert train.numel() + val.numel() == N_CHARS
    assert train.dtype == val.dtype == torch.long
    vocab = shakespeare_vocab()
    assert len(vocab) == 65 and list(vocab) == sorted(set(vocab))
    assert int(train.min()) == 0 and int(torch.cat([train, val]).max()) == 64
    assert _decode(train[:14]) == "First Citizen:"


def test_fresh_tensors():
    a = load_tiny_shakespeare("val")
    a.zero_()
    assert int(load_tiny_shakespeare("val").sum()) > 0


@pytest.mark.skipif(SOURCE is None, reason="the source input.txt is not next to this checkout")
def test_text_equals_the_source_file():
    text = SOURCE.read_text(encoding="ascii")
    ids = torch.cat([load_tiny_shakespeare("train"), load_tiny_shakespeare("val")])
    assert _decode(ids) == text


def test_bad_split_is_named():
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        load_tiny_shakespeare("test")


def test_corrupt_file_is_refused(monkeypatch):
    monkeypatch.setattr(shakespeare, "SHA256", "0" * 64)
    shakespeare._text.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="corrupt"):
            load_tiny_shakespeare("train")
    finally:
        shakespeare._text.cache_clear()
