"""Kept for old imports: ``from attnzoo.record import AttentionRecorder`` still works.

The recorder lives in `attnzoo.maps.recorder`; use ``attnzoo.AttentionRecorder`` and
``attnzoo.AttentionMap``.
"""

from .maps.recorder import AttentionMap, AttentionRecorder

__all__ = ["AttentionMap", "AttentionRecorder"]
