"""Headless-safe figures of what attention mechanisms attend to.

Every function builds a standalone ``matplotlib.figure.Figure`` on an Agg canvas
(no pyplot, no global backend or rcParams changes, nothing registered globally,
so nothing leaks and no display is needed), writes a PNG atomically and returns
its ``Path``. Array arguments may be torch tensors, numpy arrays or nested lists.
matplotlib is imported lazily: ``import attnzoo`` works without it.

* `attention`: ``plot_attention`` (per-head heatmaps), ``plot_sequence_weights``.
* `gates`: ``plot_channel_profile``, ``plot_spatial_overlay``.
* `results`: ``plot_training_curves``, ``plot_accuracy_bars``, ``plot_train_test_bars``,
  ``model_color``.
* ``attention_view`` (the interactive HTML page, no matplotlib) is `attnzoo.maps.view`'s.
"""

from ..maps.view import attention_view as attention_view  # interactive HTML (no matplotlib)
from .attention import plot_attention, plot_sequence_weights
from .gates import plot_channel_profile, plot_spatial_overlay
from .results import model_color, plot_accuracy_bars, plot_train_test_bars, plot_training_curves

__all__ = ["plot_attention", "plot_channel_profile", "plot_spatial_overlay", "plot_training_curves",
           "plot_accuracy_bars", "plot_train_test_bars", "plot_sequence_weights", "model_color"]
