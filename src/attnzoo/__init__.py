"""attnzoo: the classic attention mechanisms of deep learning, correct, fast and visible.

>>> import attnzoo as az
>>> mha = az.MultiHeadAttention(64, num_heads=4)
"""

from . import functional
from .attention import CrossAttention, MultiHeadAttention, SelfAttention

__version__ = "0.1.0"

__all__ = [
    "functional",
    "MultiHeadAttention",
    "SelfAttention",
    "CrossAttention",
]
