"""Attention maps of any model: capture (SDPA, cached decoding), rollout, an HTML view, save/load.

* :mod:`.capture`: what :class:`~attnzoo.AttentionRecorder` uses to see
  ``F.scaled_dot_product_attention`` calls and cached decoding steps.
* :mod:`.rollout`: attention rollout (Abnar & Zuidema 2020) over recorded layers.
* :mod:`.view`: :func:`attention_view`, one self-contained interactive HTML file.
* :mod:`.store`: save and load recordings (npz + JSON metadata), used by
  ``AttentionRecorder.save`` / ``AttentionRecorder.load``.
* :mod:`.generation`: :func:`generation_view`, the view of a cached ``generate``.
"""

from .generation import generation_view
from .rollout import attention_rollout
from .view import attention_view, view_layers

__all__ = ["attention_rollout", "attention_view", "generation_view", "view_layers"]
