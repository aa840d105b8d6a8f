"""attnzoo: the classic attention mechanisms of deep learning, correct, fast and visible.

>>> import attnzoo as az
>>> mha = az.MultiHeadAttention(64, num_heads=4)
>>> se = az.create_attention("se", 64)
"""

from . import _entry  # noqa: F401  (first: Ctrl-C while the attnzoo command starts -> one line)
from . import functional, masks
from .attention import CrossAttention, MultiHeadAttention, SelfAttention
from .gates import BAM, ECA, SRM, CoordAttention, EffectiveSE, GatherExcite, TripletAttention
from .gates.channel import ChannelAttention, SqueezeExcite
from .factory import available_attention, create_attention
from .maps.recorder import AttentionMap, AttentionRecorder
from .gates import GlobalContext, NonLocal, SelectiveKernel, SimAM, SplitAttention
from .kvcache import KVCache
from .rolling_cache import RollingKVCache
from .positions import RelativePositionBias, RotaryEmbedding, alibi_bias, alibi_score_bias, alibi_slopes
from .gates.spatial import CBAM, SpatialAttention
from .temporal import TemporalAttention
from .retrofit import UntracedModuleWarning, add_attention, find_attention
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
    "ECA",
    "EffectiveSE",
    "SRM",
    "GatherExcite",
    "CoordAttention",
    "BAM",
    "TripletAttention",
    "GlobalContext",
    "NonLocal",
    "SelectiveKernel",
    "SplitAttention",
    "SimAM",
    "create_attention",
    "available_attention",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "Seq2SeqTransformer",
    "KVCache",
    "RollingKVCache",
    "AttentionRecorder",
    "AttentionMap",
    "TemporalAttention",
    "add_attention",
    "find_attention",
    "RotaryEmbedding",
    "alibi_slopes",
    "alibi_bias",
    "alibi_score_bias",
    "RelativePositionBias",
    "UntracedModuleWarning",
]
