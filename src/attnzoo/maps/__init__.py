"""Attention maps of any model: record, capture (SDPA, cached decoding), rollout, an HTML view, save/load.

The import graph points one way: everything here uses the attention modules, never the
reverse.

* `recorder`: `AttentionRecorder` and `AttentionMap` (also `attnzoo.AttentionRecorder`).
* `capture`: what the recorder uses to see ``F.scaled_dot_product_attention`` calls and
  cached decoding steps.
* `rollout`: attention rollout (Abnar & Zuidema 2020) over recorded layers.
* `view`: `attention_view`, one self-contained interactive HTML file.
* `store`: save and load recordings (npz + JSON metadata), used by
  ``AttentionRecorder.save`` / ``AttentionRecorder.load``.
* `generation`: `generation_view`, the view of a cached ``generate``.
"""

from .generation import generation_view
from .recorder import AttentionMap, AttentionRecorder
from .rollout import attention_rollout
from .view import attention_view, view_layers

__all__ = ["AttentionMap", "AttentionRecorder", "attention_rollout", "attention_view", "generation_view",
           "view_layers"]
