"""Every module kind under DistributedDataParallel and FSDP2 (gloo, 2 local processes) and
activation checkpointing.

DDP: two processes on 127.0.0.1 each train on half of the batch for 2 SGD steps; DDP
averages their gradients, which equals the gradient of the mean loss over the whole batch,
so the final parameters must equal one process training on the whole batch. The workers
are this file run as a script (``python tests/test_ddp.py RANK PORT OUT_DIR``); they train
once with DDP and once with FSDP2 (``fully_shard``, which shards the parameters across the
processes); both must end where one process ends.

Checkpointing: ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` around each
module gives the same output and gradients as the plain call, dropout included (the
checkpoint replays the RNG state).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import attnzoo as az

WORLD = 2
BATCH = 4  # split 2 + 2 between the ranks
STEPS = 2
DTYPE = torch.float64  # gloo all-reduces float64: the comparison can be tight


class AllKinds(nn.Module):
    """Image -> CNN gates -> tokens -> every sequence module -> scores; no batch statistics."""

    def __init__(self) -> None:
        super().__init__()
        c, e = 8, 16
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.se = az.SqueezeExcite(c, 2)
        self.channel = az.ChannelAttention(c, 2)
        self.spatial = az.SpatialAttention(3)
        self.cbam = az.CBAM(c, 2, 3)
        self.to_tokens = nn.Linear(c, e)
        self.mha = az.MultiHeadAttention(e, 2)
        self.self_attn = az.SelfAttention(e, 2)
        self.cross = az.CrossAttention(e, 6, 2)
        self.encoder = az.TransformerEncoderLayer(e, 2, 32, dropout=0.0)
        self.head = nn.Linear(e, 3)

    def forward(self, image: Tensor, context: Tensor) -> Tensor:
        h = self.cbam(self.spatial(self.channel(self.se(torch.relu(self.stem(image))))))  # (B, C, H, W)
        t = self.to_tokens(h.flatten(2).transpose(1, 2))  # (B, H*W, E)
        t = t + self.mha(t, t, t)[0]
        t = t + self.self_attn(t, is_causal=True)[0]
        t = t + self.cross(t, context)[0]
        return self.head(self.encoder(t).mean(1))  # (B, 3)


def data() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    image = torch.randn(BATCH, 3, 4, 4, generator=g, dtype=DTYPE)
    context = torch.randn(BATCH, 5, 6, generator=g, dtype=DTYPE)
    target = torch.randn(BATCH, 3, generator=g, dtype=DTYPE)
    return image, context, target


def build() -> AllKinds:
    torch.manual_seed(0)
    return AllKinds().to(DTYPE)


def train(model: nn.Module, rows: slice) -> None:
    image, context, target = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(image[rows], context[rows]), target[rows])
        loss.backward()
        opt.step()


def worker(rank: int, port: int, out_dir: str) -> None:
    """Train with DDP, then with FSDP2 where available; rank 0 saves each final state dict."""
    import torch.distributed as dist
    from torch.distributed import fsdp
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    try:
        model = build()
        train(DistributedDataParallel(model), rows)
        if rank == 0:
            torch.save(model.state_dict(), Path(out_dir) / "ddp.pt")
        if hasattr(fsdp, "fully_shard"):  # FSDP2, torch>=2.6
            from torch.distributed.device_mesh import init_device_mesh

            model, mesh = build(), init_device_mesh("cpu", (WORLD,))
            for part in (model.cbam, model.mha, model.encoder, model):  # a gate, attention, a layer, the rest
                fsdp.fully_shard(part, mesh=mesh)
            train(model, rows)
            state = {k: v.full_tensor() for k, v in model.state_dict().items()}  # gather the shards
            if rank == 0:
                torch.save(state, Path(out_dir) / "fsdp.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the two workers once (about the cost of two torch imports) for both tests."""
    out = tmp_path_factory.mktemp("distributed")
    src = str(Path(az.__file__).resolve().parents[1])  # the attnzoo under test, in the workers too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(WORLD)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return out


def compare_with_one_process(saved: Path) -> None:
    single = build()
    before = {k: v.clone() for k, v in single.state_dict().items()}
    train(single, slice(None))
    got = torch.load(saved)
    assert got.keys() == before.keys()
    for name, value in single.state_dict().items():
        assert not torch.equal(value, before[name]), f"{name} did not train"  # every module took part
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12, msg=name)


def test_ddp_two_processes_equal_one_process_on_the_whole_batch(distributed_results: Path) -> None:
    compare_with_one_process(distributed_results / "ddp.pt")


def test_fsdp2_two_processes_equal_one_process_on_the_whole_batch(distributed_results: Path) -> None:
    """FSDP2 (``fully_shard``) on CPU with gloo: parameters sharded across the 2 processes."""
    if not (distributed_results / "fsdp.pt").exists():
        pytest.skip("torch.distributed.fsdp.fully_shard needs torch>=2.6")
    compare_with_one_process(distributed_results / "fsdp.pt")


# ------------------------------------------------------------------------- checkpointing

E = 16
_g = torch.Generator().manual_seed(2)
X = torch.randn(2, 5, E, generator=_g, dtype=DTYPE)
CTX = torch.randn(2, 4, 6, generator=_g, dtype=DTYPE)
MEM = torch.randn(2, 4, E, generator=_g, dtype=DTYPE)
FMAP = torch.randn(2, 8, 5, 4, generator=_g, dtype=DTYPE)

CHECKPOINT_CASES: dict[str, tuple[Callable[[], nn.Module], tuple[Tensor, ...], Callable[..., Tensor]]] = {
    "MultiHeadAttention": (lambda: az.MultiHeadAttention(E, 2, dropout=0.2), (X, MEM),
                           lambda m, x, mem: m(x, mem, mem, is_causal=False)[0]),
    "SelfAttention": (lambda: az.SelfAttention(E, 2, dropout=0.2), (X,), lambda m, x: m(x, is_causal=True)[0]),
    "CrossAttention": (lambda: az.CrossAttention(E, 6, 2), (X, CTX), lambda m, x, c: m(x, c)[0]),
    "TransformerEncoderLayer": (lambda: az.TransformerEncoderLayer(E, 2, 32, dropout=0.2), (X,), lambda m, x: m(x)),
    "TransformerDecoderLayer": (lambda: az.TransformerDecoderLayer(E, 2, 32, dropout=0.2), (X, MEM),
                                lambda m, x, mem: m(x, mem)),
    "SqueezeExcite": (lambda: az.SqueezeExcite(8, 2), (FMAP,), lambda m, x: m(x)),
    "ChannelAttention": (lambda: az.ChannelAttention(8, 2), (FMAP,), lambda m, x: m(x)),
    "SpatialAttention": (lambda: az.SpatialAttention(3), (FMAP,), lambda m, x: m(x)),
    "CBAM": (lambda: az.CBAM(8, 2, 3), (FMAP,), lambda m, x: m(x)),
}


def _grads(name: str, checkpointed: bool) -> tuple[Tensor, list[Tensor]]:
    make, inputs, call = CHECKPOINT_CASES[name]
    torch.manual_seed(0)
    m = make().to(DTYPE).train()
    xs = [t.clone().requires_grad_() for t in inputs]
    torch.manual_seed(1)  # the same dropout masks in both runs
    if checkpointed:
        out = torch.utils.checkpoint.checkpoint(call, m, *xs, use_reentrant=False)
    else:
        out = call(m, *xs)
    (out * torch.linspace(-1, 1, out.numel(), dtype=DTYPE).view(out.shape)).sum().backward()
    return out.detach(), [t.grad for t in xs] + [p.grad for p in m.parameters()]


def test_checkpoint_around_every_module_kind_gives_the_same_gradients() -> None:
    for name in CHECKPOINT_CASES:
        out, grads = _grads(name, checkpointed=False)
        ck_out, ck_grads = _grads(name, checkpointed=True)
        torch.testing.assert_close(ck_out, out, rtol=0, atol=0, msg=name)
        assert len(grads) == len(ck_grads)
        for g, ck in zip(grads, ck_grads):
            assert g is not None and ck is not None, name
            torch.testing.assert_close(ck, g, rtol=1e-12, atol=1e-12, msg=name)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
