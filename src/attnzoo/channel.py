"""Moved to `attnzoo.gates.channel`; this name stays importable (old imports, pickles)."""

from .gates.channel import ChannelAttention, SqueezeExcite, hidden_width

__all__ = ["SqueezeExcite", "ChannelAttention", "hidden_width"]
