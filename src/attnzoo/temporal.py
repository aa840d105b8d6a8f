"""Temporal attention: learned weights over the time steps of a sequence, and their average.

``TemporalAttention`` scores every step of ``x`` (B, T, D), turns the scores into weights
with a softmax over the *valid* steps, and returns the weighted average of the steps:

    e_t     = score(x_t)                                  # one number per step
    a       = softmax over valid t of e                   # (B, T), sums to 1
    pooled  = sum_t a_t x_t                               # (B, D)

It is the attention of Bahdanau et al. (2015) with a query that is learned rather than a
decoder state, the "attention pooling" used to summarise a recurrent or convolutional
encoder's outputs (Raffel & Ellis 2015, "feed-forward attention"; Yang et al. 2016). With
``num_queries=Q > 1`` there are Q independent scorings, giving Q summaries (B, Q, D), as
in the multi-hop self-attentive embedding of Lin et al. (2017).

Scores (``score=``):

* ``"additive"`` (Bahdanau): ``e_t = v_q . tanh(W x_t + b)``, W (hidden, D), one v_q
  (hidden,) per query. No bias after v: a constant added to every step cancels in the
  softmax.
* ``"dot"``: ``e_t = q . x_t / sqrt(D)`` with a learned query q (D,) per query, the scaled
  dot product with x as keys. ``hidden`` does not apply: a key projection before a learned
  query is only a reparametrisation, ``q . (W x) = (W^T q) . x``.

Padding: ``padding_mask`` (B, T) bool, **True = padding** (the polarity of
``key_padding_mask`` in ``MultiHeadAttention``). Padded steps get weight exactly 0, and
their content never reaches the result: it is replaced by zeros before anything is
computed, so NaN or Inf in padded steps change nothing, forward or backward. A sequence
with no valid step gets all-zero weights and a zero summary, never NaN.

Video: a clip ``x`` (B, C, T, H, W) from a 3-D CNN has the same time axis. Each frame is
scored from its spatial mean (B, T, C), the per-frame "squeeze" of SE; the weights are
per frame (B, T) and the result is the weighted average of the frames, ``(B, C, H, W)``,
which keeps the spatial map for a 2-D head (its spatial mean is the pooled descriptor).

The recorder (``attnzoo.record``) records the weights as kind ``"temporal"``: they are the
output of the submodule ``gate_act``, a masked softmax (followed by dropout in training).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import check_dropout, check_dtype_matches, check_positive_int, check_same_device, check_tensor

__all__ = ["TemporalAttention", "MaskedSoftmax", "padding_mask_from_lengths"]

SCORES = ("additive", "dot")


def padding_mask_from_lengths(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True = padding (steps ``t >= lengths[b]``)."""
    if not isinstance(lengths, Tensor) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer torch.Tensor, got {getattr(lengths, 'dtype', type(lengths).__name__)}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    t = max_len if max_len is not None else (int(lengths.max()) if len(lengths) else 0)
    return torch.arange(t, device=lengths.device) >= lengths[:, None]  # (B, T)


class MaskedSoftmax(nn.Module):
    """Softmax over the last dim that gives exactly 0 to masked entries (True = masked).

    A row with every entry masked gives all zeros (not NaN). Dropout (training only) is
    applied to the weights afterwards, as attention dropout, and is part of this module so
    that what a recorder hooks here is exactly what the caller gets back.
    """

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(check_dropout("dropout", dropout))

    def forward(self, scores: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return self.dropout(torch.softmax(scores, dim=-1))
        empty = mask.all(dim=-1, keepdim=True)  # rows with no valid entry: keep scores finite
        w = torch.softmax(scores.masked_fill(mask & ~empty, float("-inf")), dim=-1)
        return self.dropout(w.masked_fill(mask, 0.0))


class TemporalAttention(nn.Module):
    """Attention pooling over time: weights per step and the weighted average of the steps.

    ``forward(x, padding_mask=None) -> (pooled, weights)``:

    * x (B, T, D)        -> pooled (B, D),       weights (B, T)       [num_queries=1]
    * x (B, T, D)        -> pooled (B, Q, D),    weights (B, Q, T)    [num_queries=Q>1]
    * x (B, C, T, H, W)  -> pooled (B, C, H, W), weights (B, T)       (or (B, Q, C, H, W), (B, Q, T))

    ``padding_mask``: optional (B, T) bool, True = padding. Weights sum to 1 over the valid
    steps (in eval mode or with dropout 0), are exactly 0 on padding; padded content has no
    effect; a fully padded sequence gives zeros.

    Args:
        dim: D, the feature size of each step (C for a clip).
        score: ``"additive"`` (Bahdanau, v . tanh(W x_t + b)) or ``"dot"`` (q . x_t / sqrt(D)).
        hidden: width of the additive score's tanh layer (default ``dim``); not for ``"dot"``.
        num_queries: Q, the number of independent weightings (default 1).
        dropout: dropout on the weights in training (default 0).
        device: device of the parameters.
        dtype: dtype of the parameters; inputs must match it (outside ``torch.autocast``).
    """

    def __init__(
        self,
        dim: int,
        *,
        score: str = "additive",
        hidden: int | None = None,
        num_queries: int = 1,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        if not isinstance(score, str) or score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if score == "dot" and hidden is not None:
            raise ValueError(
                f"hidden applies only to score='additive', got hidden={hidden!r} with score='dot' "
                "(a key projection before a learned query is a reparametrisation of the query)"
            )
        self.score = score
        self.num_queries = check_positive_int("num_queries", num_queries)
        self.hidden = None if score == "dot" else check_positive_int("hidden", dim if hidden is None else hidden)
        kw = {"device": device, "dtype": dtype}
        if score == "additive":
            self.proj = nn.Linear(dim, self.hidden, bias=True, **kw)  # W, b
            self.v = nn.Linear(self.hidden, self.num_queries, bias=False, **kw)
        else:
            # unit-variance query: q . x / sqrt(D) then has unit variance for unit-variance x
            self.query = nn.Parameter(torch.randn(self.num_queries, dim, **kw))
        self.gate_act = MaskedSoftmax(dropout)

    def _param_dtype(self) -> torch.dtype:
        return (self.proj.weight if self.score == "additive" else self.query).dtype

    def scores(self, steps: Tensor) -> Tensor:
        """Unnormalised scores, (B, T, D) -> (B, Q, T)."""
        if self.score == "additive":
            return self.v(torch.tanh(self.proj(steps))).transpose(1, 2)  # (B, Q, T)
        return torch.matmul(steps, self.query.t()).transpose(1, 2) / math.sqrt(self.dim)  # (B, Q, T)

    def _check(self, x: Tensor, padding_mask: Tensor | None) -> None:
        name = type(self).__name__
        check_tensor("x", x, ndim=(3, 5))
        d = x.shape[-1] if x.dim() == 3 else x.shape[1]
        where = "last dim" if x.dim() == 3 else "dim 1 (channels of a (B, C, T, H, W) clip)"
        if d != self.dim:
            raise ValueError(f"x must have {self.dim} features ({where}) for this {name}, got {d} (shape {tuple(x.shape)})")
        check_dtype_matches("x", x, self._param_dtype(), name)
        if padding_mask is None:
            return
        if not isinstance(padding_mask, Tensor):
            raise TypeError(f"padding_mask must be a bool torch.Tensor or None, got {type(padding_mask).__name__}")
        if padding_mask.dtype != torch.bool:
            raise TypeError(f"padding_mask must be a bool tensor (True = padding), got dtype {padding_mask.dtype}")
        b, t = x.shape[0], x.shape[1] if x.dim() == 3 else x.shape[2]
        if tuple(padding_mask.shape) != (b, t):
            raise ValueError(f"padding_mask must have shape (B, T) = {(b, t)}, got {tuple(padding_mask.shape)}")
        check_same_device("padding_mask", padding_mask, "x", x)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(pooled, weights)``; see the class docstring for the shapes."""
        self._check(x, padding_mask)
        video = x.dim() == 5
        if padding_mask is not None:  # padded content must not reach anything, not even as NaN * 0
            pad = padding_mask[:, None, :, None, None] if video else padding_mask[:, :, None]
            x = x.masked_fill(pad, 0.0)
        steps = x.mean((3, 4)).transpose(1, 2) if video else x  # (B, T, D)
        scores = self.scores(steps)  # (B, Q, T)
        mask = None if padding_mask is None else padding_mask[:, None, :]  # (B, 1, T)
        if self.num_queries == 1:
            scores = scores.squeeze(1)  # (B, T)
            mask = None if mask is None else mask.squeeze(1)
        weights = self.gate_act(scores, mask)  # (B, T) or (B, Q, T)
        w = weights.reshape(x.shape[0], self.num_queries, steps.shape[1])  # (B, Q, T)
        if video:
            pooled = torch.einsum("bqt,bcthw->bqchw", w, x)  # (B, Q, C, H, W)
        else:
            pooled = torch.matmul(w, x)  # (B, Q, D)
        return (pooled.squeeze(1) if self.num_queries == 1 else pooled), weights

    def extra_repr(self) -> str:
        hidden = f", hidden={self.hidden}" if self.hidden is not None else ""
        return f"dim={self.dim}, score={self.score!r}{hidden}, num_queries={self.num_queries}"
