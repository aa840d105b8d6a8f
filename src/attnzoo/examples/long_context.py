"""Train a small attnzoo Transformer on one sequence sharded over processes (context parallelism).

    torchrun --nproc-per-node 2 -m attnzoo.examples.long_context [--steps 5] [--length 1001]

Every process builds the same model and the same data. `attnzoo.distributed.context_parallel`
switches its attention to ring attention, and each rank trains on its zigzag shard of the
sequence (B, N) with N = Lp / P; gradients are summed over the ranks (as DDP does). Beside
it, every rank also trains an identical copy on the WHOLE sequence in one process, and rank
0 prints both losses per step: they agree to float32 rounding.

The model is a causal language model: token + learned position embeddings (positions are
GLOBAL, from the shard layout: the only place where sharding shows in the model code),
``TransformerEncoderLayer`` × 2 with ``is_causal=True``, a final norm and a linear head.
The length need not divide by 2P: the sequence is padded at its end, the padded keys are
masked (``src_key_padding_mask``) and the padded rows are left out of the loss.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo import TransformerEncoderLayer
from attnzoo.distributed import ShardLayout, context_parallel, padded_length, shard


class TinyCausalLM(nn.Module):
    """tokens (B, N) + global positions (N,) -> logits (B, N, vocab)."""

    def __init__(self, vocab: int = 64, d_model: int = 32, nhead: int = 4, layers: int = 2, max_len: int = 4096) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(TransformerEncoderLayer(d_model, nhead, 2 * d_model, dropout=0.0)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: Tensor, positions: Tensor, padding: Tensor | None = None) -> Tensor:
        x = self.tok(tokens) + self.pos(positions)  # (B, N, E)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding, is_causal=True)
        return self.head(self.norm(x))  # (B, N, vocab)


def train(group: dist.ProcessGroup | None = None, steps: int = 5, length: int = 1001, batch: int = 2,
          dtype: torch.dtype = torch.float32, seed: int = 0) -> list[tuple[float, float]]:
    """Train for ``steps``; return ``[(sharded loss, single-process loss), ...]`` per step (every rank)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    vocab = 64
    torch.manual_seed(seed)
    model = TinyCausalLM(vocab, max_len=padded_length(length, world)).to(dtype)
    reference = copy.deepcopy(model)  # trained on the whole sequence, in this process
    context_parallel(model, group)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, length + 1), generator=gen)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, L) each

    x, padding = shard(inputs, group, dim=1)  # (B, N), (N,) True = padded
    y, _ = shard(targets, group, dim=1)
    positions = ShardLayout(padded_length(length, world), world).positions(rank)  # (N,) global
    key_padding = padding.expand(batch, -1) if padding.any() else None  # (B, N) True = padding
    real = ~padding

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    history = []
    for _ in range(steps):
        logits = model(x, positions, key_padding)  # (B, N, vocab)
        loss = F.cross_entropy(logits[:, real].flatten(0, 1), y[:, real].flatten(), reduction="sum") / (batch * length)
        opt.zero_grad()
        loss.backward()
        # The loss is the sum of every rank's part: sum the gradients (and the loss) over the
        # ranks, in one message.
        params = list(model.parameters())
        flat = torch.cat([loss.detach().reshape(1)] + [p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, group=group)
        total, i = flat[0], 1
        for p in params:
            p.grad.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()
        opt.step()

        ref_logits = reference(inputs, torch.arange(length))  # (B, L, vocab)
        ref_loss = F.cross_entropy(ref_logits.flatten(0, 1), targets.flatten())
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        history.append((total.item(), ref_loss.item()))
    return history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.examples.long_context", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--length", type=int, default=1001, help="tokens in the sequence (any length >= 1)")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print("error: launch with torchrun, e.g. torchrun --nproc-per-node 2 -m attnzoo.examples.long_context",
              file=sys.stderr)
        return 2
    for name in ("steps", "length", "batch"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        history = train(steps=args.steps, length=args.length, batch=args.batch)
        if dist.get_rank() == 0:
            world = dist.get_world_size()
            print(f"{args.length} tokens on {world} processes ({padded_length(args.length, world) // world} "
                  f"positions each, zigzag), vs one process on the whole sequence:")
            for step, (cp, single) in enumerate(history):
                print(f"step {step}: loss {cp:.6f} sharded, {single:.6f} single-process, |diff| {abs(cp - single):.1e}")
            worst = max(abs(a - b) for a, b in history)
            print(f"{'equal' if worst <= 1e-5 else 'DIFFERENT'}: max |diff| {worst:.1e} (float32)")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
