"""Which positions of a sequence each rank holds: the zigzag (load-balanced) order.

With P ranks, a sequence of length L is padded at its END to ``Lp = ceil(L / 2P) · 2P``
positions and cut into 2P chunks of ``C = Lp / 2P``. Rank r holds chunks r and 2P-1-r,
in that order, so its shard has ``Lp / P`` positions:

    P = 2, 2P = 4 chunks:   | 0 | 1 | 2 | 3 |      rank 0 holds chunks 0, 3
                                                    rank 1 holds chunks 1, 2

Under a causal mask an early chunk sees few keys and a late one many; pairing them gives
every rank the same work. ``zigzag=False`` gives rank r one contiguous chunk instead
(positions r·Lp/P .. (r+1)·Lp/P - 1): the same results, unbalanced when causal.

Shapes: `shard` takes ``x`` with the sequence at ``dim`` (e.g. (B, L, E), dim=1)
and returns this rank's ``(B, Lp/P, E)`` plus ``padding`` (Lp/P,) bool, True = a padded
position. Pass ``padding`` as key padding (so no real query attends to it) and leave
those rows out of the loss. `unshard` gathers the shards back into (B, L, E).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_positive_int

__all__ = ["ShardLayout", "diagram", "padded_length", "shard", "shard_attn_mask", "unshard"]


def padded_length(length: int, world: int, zigzag: bool = True) -> int:
    """The smallest multiple of 2·world (world, if not zigzag) that is >= ``length``."""
    n = (2 if zigzag else 1) * check_positive_int("world", world)
    return -(-check_positive_int("length", length) // n) * n


@dataclass(frozen=True)
class ShardLayout:
    """Global positions of each rank's shard of a padded sequence of ``length`` positions."""

    length: int  # padded length Lp, a multiple of 2·world (world if not zigzag)
    world: int
    zigzag: bool = True

    def __post_init__(self) -> None:
        if self.length != padded_length(self.length, self.world, self.zigzag):
            n = 2 * self.world if self.zigzag else self.world
            raise ValueError(f"length must be a multiple of {n} for world={self.world}, got {self.length}")

    @property
    def local_length(self) -> int:
        """Positions per rank, Lp / P."""
        return self.length // self.world

    def chunks(self, rank: int) -> list[tuple[int, int]]:
        """``[(start, stop), ...]``: the global ranges rank ``rank`` holds, in its local order."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank must be in [0, {self.world}), got {rank}")
        if not self.zigzag:
            n = self.local_length
            return [(rank * n, (rank + 1) * n)]
        c = self.length // (2 * self.world)
        late = 2 * self.world - 1 - rank
        return [(rank * c, (rank + 1) * c), (late * c, (late + 1) * c)]

    def positions(self, rank: int, device: torch.device | str | None = None) -> Tensor:
        """(Lp/P,) long: the global position of each local row of rank ``rank``."""
        return torch.cat([torch.arange(a, b, device=device) for a, b in self.chunks(rank)])


def _check(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise TypeError(f"{name} must be a torch.Tensor with a sequence dim, got {getattr(x, 'shape', type(x).__name__)}")
    return x


def _rank_world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def shard(
    x: Tensor, group: dist.ProcessGroup | None = None, dim: int = 1, *, zigzag: bool = True,
    pad_value: float | bool = 0,
) -> tuple[Tensor, Tensor]:
    """This rank's shard of ``x`` along ``dim`` (every rank passes the same full ``x``).

    Returns ``(x_local, padding)``: ``x_local`` has ``Lp/P`` positions at ``dim`` (padded
    positions filled with ``pad_value``), ``padding`` (Lp/P,) bool is True where padded.
    No communication.
    """
    x = _check("x", x)
    rank, world = _rank_world(group)
    dim = dim % x.dim()
    L = x.size(dim)
    layout = ShardLayout(padded_length(L, world, zigzag), world, zigzag)
    if layout.length > L:
        pad = [0, 0] * (x.dim() - 1 - dim) + [0, layout.length - L]
        x = F.pad(x, pad, value=pad_value)  # padded at the end of the sequence
    pos = layout.positions(rank, x.device)
    return x.index_select(dim, pos), pos >= L


def shard_attn_mask(attn_mask: Tensor, group: dist.ProcessGroup | None = None, *, zigzag: bool = True) -> Tensor:
    """This rank's rows of a torch-polarity bool mask (True = NOT allowed), (..., L, L).

    Returns ``(..., Lp/P, Lp)``: the local query rows, every key column in global order;
    padded rows and columns are True (blocked). This is the ``attn_mask`` a
    context-parallel `MultiHeadAttention` takes.
    """
    attn_mask = _check("attn_mask", attn_mask)
    if attn_mask.dtype != torch.bool or attn_mask.dim() < 2 or attn_mask.size(-1) != attn_mask.size(-2):
        raise ValueError(f"attn_mask must be a bool (..., L, L) tensor, got {attn_mask.dtype} {tuple(attn_mask.shape)}")
    _, world = _rank_world(group)
    L = attn_mask.size(-1)
    Lp = padded_length(L, world, zigzag)
    mask = F.pad(attn_mask, [0, Lp - L], value=True)  # (..., L, Lp)
    return shard(mask, group, dim=-2, zigzag=zigzag, pad_value=True)[0]  # (..., Lp/P, Lp)


def unshard(x_local: Tensor, length: int, group: dist.ProcessGroup | None = None, dim: int = 1, *,
            zigzag: bool = True) -> Tensor:
    """Gather every rank's shard (all_gather) and put the positions back in order; drop padding.

    ``x_local`` (..., Lp/P at ``dim``, ...) -> (..., length, ...) on every rank. Not differentiable.
    """
    x_local = _check("x_local", x_local)
    rank, world = _rank_world(group)
    dim = dim % x_local.dim()
    layout = ShardLayout(padded_length(length, world, zigzag), world, zigzag)
    if x_local.size(dim) != layout.local_length:
        raise ValueError(
            f"x_local must have {layout.local_length} positions at dim {dim} for length={length} on "
            f"{world} ranks, got shape {tuple(x_local.shape)}")
    parts = [torch.empty_like(x_local) for _ in range(world)]
    dist.all_gather(parts, x_local.contiguous(), group=group)
    gathered = torch.cat(parts, dim=dim)  # rank 0's positions, then rank 1's, ...
    order = torch.cat([layout.positions(r) for r in range(world)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return gathered.index_select(dim, inverse[:length].to(x_local.device))


def diagram(world: int) -> str:
    """ASCII picture of the zigzag order, the causal work per rank and the ring, for ``world`` ranks.

    One column per chunk (2·world chunks); docs/distributed.md shows ``diagram(4)``.
    """
    P = check_positive_int("world", world)
    layout = ShardLayout(2 * P, P)  # one position per chunk
    owner = {a: r for r in range(P) for a, _ in layout.chunks(r)}
    cols = range(2 * P)
    lines = ["sequence, cut into 2P chunks, and the rank holding each (zigzag: rank r holds r and 2P-1-r):",
             "",
             "    chunk " + "".join(f"{c:>3}" for c in cols),
             "    rank  " + "".join(f"{owner[c]:>3}" for c in cols),
             "",
             "causal attention, chunk by chunk: the rank that computes each (query, key) block",
             "('.': hidden by the causal mask, never computed):",
             "",
             "            key chunk",
             "    query " + "".join(f"{c:>3}" for c in cols)]
    work = [0] * P
    for qc in cols:
        cells = []
        for kc in cols:
            if kc <= qc:
                work[owner[qc]] += 1 if kc < qc else 0.5  # a diagonal block is half visible
            cells.append(f"{owner[qc]:>3}" if kc <= qc else "  .")
        lines.append(f"    {qc:>5} " + "".join(cells))
    lines += ["", "    work per rank (blocks, a diagonal one counts 1/2): "
              + ", ".join(f"rank {r}: {w:g}" for r, w in enumerate(work)),
              "    with contiguous shards (rank r holding chunks 2r, 2r+1) it would be: "
              + ", ".join(f"rank {r}: {2 * r + 0.5 + 2 * r + 1.5:g}" for r in range(P)),
              "",
              "the ring: each step, every rank passes the k/v it holds to the next rank",
              "",
              "    " + " -> ".join(f"rank {r}" for r in range(P)) + (" -> rank 0" if P > 1 else ""),
              ""]
    lines.append("    step  " + "".join(f"   rank {r} holds" for r in range(P)))
    for s in range(P):
        lines.append(f"    {s:>4}  " + "".join(f"{'k/v of ' + str((r - s) % P):>15}" for r in range(P)))
    lines += ["", "backward: the same ring again; the k/v shards carry their dk/dv accumulators along,",
              f"and after {P} hops the accumulators are back with their owner, complete."]
    return "\n".join(lines)
