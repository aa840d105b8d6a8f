"""Context parallelism: attention over a sequence sharded along its length across ranks.

Built on ``torch.distributed`` point-to-point ops (any backend: gloo on CPU, NCCL on GPU);
it does not use PyTorch's experimental ``torch.distributed.tensor.experimental.context_parallel``.

* `ring_attention` (ring.py): the exact sharded attention, forward and backward; structured
  masks and score biases at global positions (blocks.py plans each ring step's blocks).
* `shard`, `unshard`, `ShardLayout` (zigzag.py): who holds which positions.
* `context_parallel` (module.py): switch a model's attnzoo attention to the ring.

See docs/distributed.md.
"""

from .module import context_parallel
from .ring import RING_STATS, reset_ring_stats, ring_attention
from .zigzag import ShardLayout, padded_length, shard, shard_attn_mask, unshard

__all__ = [
    "ring_attention", "RING_STATS", "reset_ring_stats", "context_parallel",
    "ShardLayout", "padded_length", "shard", "shard_attn_mask", "unshard",
]
