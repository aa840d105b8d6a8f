"""attnzoo: the classic attention mechanisms of deep learning, correct, fast and visible.

>>> import attnzoo as az
>>> mha = az.MultiHeadAttention(64, num_heads=4)
>>> se = az.create_attention("se", 64)
"""

from . import _entry  # noqa: F401  (first: Ctrl-C while the attnzoo command starts -> one line)
from . import functional, masks
from .attention import CrossAttention, MultiHeadAttention, SelfAttention
from .channel import ChannelAttention, SqueezeExcite
from .factory import available_attention, create_attention
from .record import AttentionMap, AttentionRecorder
from .kvcache import KVCache
from .spatial import CBAM, SpatialAttention
from .temporal import TemporalAttention
from .retrofit import add_attention, find_attention
from .transformer import Seq2SeqTransformer, TransformerDecoderLayer, TransformerEncoderLayer

__version__ = "0.1.0"

__all__ = [
    "functional",
    "masks",
    "MultiHeadAttention",
    "SelfAttention",
    "CrossAttention",
    "SqueezeExcite",
    "ChannelAttention",
    "SpatialAttention",
    "CBAM",
    "create_attention",
    "available_attention",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "Seq2SeqTransformer",
    "KVCache",
    "AttentionRecorder",
    "AttentionMap",
    "TemporalAttention",
    "add_attention",
    "find_attention",
]
