"""Moved to `attnzoo.gates.spatial`; this name stays importable (old imports, pickles)."""

from .gates.spatial import CBAM, SpatialAttention

__all__ = ["SpatialAttention", "CBAM"]
