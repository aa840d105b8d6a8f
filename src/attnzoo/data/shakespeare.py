"""Real text for character-level language modelling: *Tiny Shakespeare*.

1,115,394 characters (65 distinct) of passages from Shakespeare's plays, the standard
small corpus of character-level language modelling (char-rnn, nanoGPT's
`shakespeare_char`). It ships with the package as `tiny_shakespeare.txt.gz` (see
`ATTRIBUTION.md`); nothing is downloaded. The usual split is kept: the first 90 % of the
characters for training, the last 10 % for validation.
"""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from importlib import resources

import torch
from torch import Tensor

#: SHA-256 of the decompressed text (the char-rnn repository's `input.txt`, unchanged)
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
N_CHARS = 1_115_394
TRAIN_FRACTION = 0.9

__all__ = ["load_tiny_shakespeare", "shakespeare_vocab", "SHA256", "N_CHARS"]


@lru_cache(maxsize=1)
def _text() -> str:
    with resources.files(__package__).joinpath("tiny_shakespeare.txt.gz").open("rb") as f:
        raw = gzip.decompress(f.read())
    if len(raw) != N_CHARS or hashlib.sha256(raw).hexdigest() != SHA256:
        raise RuntimeError("tiny_shakespeare.txt.gz is corrupt (size or SHA-256 differs)")
    return raw.decode("ascii")


def shakespeare_vocab() -> str:
    """The 65 distinct characters, sorted: character `vocab[i]` has token id `i`."""
    return "".join(sorted(set(_text())))


def load_tiny_shakespeare(split: str) -> Tensor:
    """One split of Tiny Shakespeare as token ids.

    Args:
        split: `"train"` (the first 90 % of the characters, 1,003,854) or `"val"` (the
            last 10 %, 111,540), the usual split.

    Returns:
        int64 `(N,)`: each character's index in `shakespeare_vocab()`. A fresh tensor on
        every call.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    text = _text()
    lookup = torch.full((128,), -1, dtype=torch.long)
    lookup[torch.tensor([ord(c) for c in shakespeare_vocab()])] = torch.arange(len(shakespeare_vocab()))
    ids = lookup[torch.frombuffer(bytearray(text.encode("ascii")), dtype=torch.uint8).long()]  # (N_CHARS,)
    cut = int(N_CHARS * TRAIN_FRACTION)
    return (ids[:cut] if split == "train" else ids[cut:]).clone()
