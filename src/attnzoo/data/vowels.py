"""Real speech for temporal attention: the UCI *Japanese Vowels* speaker set.

Nine male speakers each said the Japanese vowels /ae/; every utterance became a
sequence of 7..29 frames of 12 LPC cepstrum coefficients (Kudo, Toyama & Shimbo,
1999). The task is to name the speaker (9 classes). The official split has 270
training utterances (30 per speaker) and 370 test utterances (24..88 per speaker).

The data ship with the package in ``japanese_vowels.npz`` (see ``ATTRIBUTION.md``;
``tools/convert_japanese_vowels.py`` rebuilds it exactly from the ``.ts`` files).
Nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from torch import Tensor

N_SPEAKERS = 9
N_COEFFS = 12
#: utterances per split in the official split
SPLIT_SIZES = {"train": 270, "test": 370}
MIN_FRAMES, MAX_FRAMES = 7, 29

__all__ = ["load_japanese_vowels", "N_SPEAKERS", "N_COEFFS", "SPLIT_SIZES"]


@lru_cache(maxsize=1)
def _load_raw() -> dict[str, np.ndarray]:
    with resources.files(__package__).joinpath("japanese_vowels.npz").open("rb") as f, np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    for split, n in SPLIT_SIZES.items():
        values, lengths, labels = (arrays[f"{split}_{k}"] for k in ("values", "lengths", "labels"))
        ok = (len(lengths) == len(labels) == n and values.shape == (int(lengths.sum()), N_COEFFS)
              and lengths.min() >= MIN_FRAMES and lengths.max() <= MAX_FRAMES
              and set(np.unique(labels)) == set(range(N_SPEAKERS)))
        if not ok:
            raise RuntimeError(f"japanese_vowels.npz is corrupt (split {split!r})")
    return arrays


def load_japanese_vowels(split: str) -> tuple[Tensor, Tensor, Tensor]:
    """One split of Japanese Vowels as a zero-padded batch.

    Args:
        split: "train" (270 utterances) or "test" (370), the official split.

    Returns:
        x: float32 ``(N, T_max, 12)``, the LPC cepstrum coefficients of each frame;
           utterance ``i`` fills ``x[i, :lengths[i]]`` and the rest is 0.
           ``T_max`` is the longest utterance of the split (26 train, 29 test).
        lengths: int64 ``(N,)``, frames per utterance, 7..29.
        labels: int64 ``(N,)``, the speaker, 0..8 (the source's label minus 1).

    The padding mask of ``attnzoo.TemporalAttention`` is
    ``torch.arange(x.shape[1]) >= lengths[:, None]`` (True = padding).
    Fresh tensors on every call.
    """
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, 'train' or 'test', got {type(split).__name__}")
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    raw = _load_raw()
    values, lengths, labels = (raw[f"{split}_{k}"] for k in ("values", "lengths", "labels"))
    lengths = torch.from_numpy(lengths.astype(np.int64))
    n, t_max = len(lengths), int(lengths.max())
    valid = torch.arange(t_max) < lengths[:, None]  # (N, T_max), True = a real frame
    x = torch.zeros(n, t_max, N_COEFFS, dtype=torch.float32)
    # frames are stored in utterance order, time-major: row-major boolean indexing matches
    x[valid] = torch.from_numpy(values.astype(np.float64) / 1e6).to(torch.float32)  # (F, 12)
    return x, lengths, torch.from_numpy(labels.astype(np.int64))
