"""Ring attention with structured masks, score biases and RoPE at GLOBAL positions.

One launch of 2 gloo processes on 127.0.0.1 runs every case in `_worker`; each rank
writes its errors to a JSON file. Reference: `attnzoo.functional.scaled_dot_product_attention`
with the same mask / bias on the whole sequence in one process (float64), and for the
skip counts a dense (L, L) mask written here.
"""

from __future__ import annotations

import copy
import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnzoo import MultiHeadAttention
from attnzoo.distributed import RING_STATS, ShardLayout, context_parallel, reset_ring_stats, ring_attention, shard
from attnzoo.functional import scaled_dot_product_attention
from attnzoo.masks import causal, documents, mask_mod, sinks, sliding_window
from attnzoo.positions import RelativePositionBias, RotaryEmbedding, alibi_bias, alibi_slopes

F64 = 1e-10
WORLD, B, H, HKV, L, HS = 2, 2, 4, 2, 16, 8
DOC_IDS = torch.tensor([[0] * 5 + [1] * 7 + [2] * 4, [0] * 9 + [1] * 7])  # (B, L): packed documents
SLOPES = alibi_slopes(H, dtype=torch.float64)


def _alibi(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    return alibi_bias(SLOPES, q_idx[:, 0], kv_idx[0])  # (H, lq, lk)


def _head_windows(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    return (kv_idx <= q_idx) & (q_idx - kv_idx <= 1 + 3 * h) & (b >= 0)  # head h: a window of 2 + 3h keys


# name: (structured mask, score bias, is_causal, zigzag, rope)
CASES = {
    "window_sinks": (sliding_window(3) | sinks(2), None, False, True, False),
    "window_both_sides": (sliding_window(2, 3), None, False, True, False),
    "documents_causal": (documents(DOC_IDS) & causal(), None, False, True, False),
    "documents_is_causal": (documents(DOC_IDS), None, True, True, False),
    "alibi_causal": (None, _alibi, True, True, False),
    "alibi_window": (sliding_window(5), _alibi, False, True, False),
    "rope_causal": (None, None, True, True, True),
    "head_windows": (mask_mod(_head_windows), None, False, True, False),
    "small_window": (sliding_window(1), None, False, True, False),
    "small_window_contiguous": (sliding_window(1), None, False, False, False),
}


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, HS, generator=g, dtype=torch.float64)
    k = torch.randn(B, HKV, L, HS, generator=g, dtype=torch.float64)
    v = torch.randn(B, HKV, L, HS, generator=g, dtype=torch.float64)
    dout = torch.randn(B, H, L, HS, generator=g, dtype=torch.float64)
    return q, k, v, dout


def _case(rank: int, mask, bias, is_causal: bool, zigzag: bool, rope: bool) -> dict:
    q, k, v, dout = _inputs()
    layout = ShardLayout(L, WORLD, zigzag)
    rot = RotaryEmbedding(HS) if rope else None

    # the whole sequence, one process
    qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
    qr, kr = (rot.rotate(qf), rot.rotate(kf)) if rope else (qf, kf)  # positions 0 .. L-1
    ref = scaled_dot_product_attention(qr, kr, vf, is_causal=is_causal, mask=mask, score_bias=bias, enable_gqa=True)
    ref.backward(dout)

    # this rank's shard: rotated at its GLOBAL positions
    ql, kl, vl = (shard(t, dim=2, zigzag=zigzag)[0].clone().requires_grad_() for t in (q, k, v))
    pos = layout.positions(rank)  # (N,) global positions of the local rows
    qs, ks = (rot.rotate(ql, pos), rot.rotate(kl, pos)) if rope else (ql, kl)
    reset_ring_stats()
    out = ring_attention(qs, ks, vl, layout, is_causal=is_causal, mask=mask, score_bias=bias)
    stats = dict(RING_STATS)  # the forward's skips (the backward repeats them)
    out.backward(shard(dout, dim=2, zigzag=zigzag)[0])

    def err(local: torch.Tensor, full: torch.Tensor) -> float:
        return (local - shard(full, dim=2, zigzag=zigzag)[0]).abs().max().item()

    local_rope = None  # rotating at LOCAL positions 0 .. N-1 instead: not the same attention
    if rope:
        with torch.no_grad():
            local_rope = err(ring_attention(rot.rotate(ql), rot.rotate(kl), vl, layout, is_causal=is_causal), ref)
    return {"local_rope": local_rope, "out": err(out.detach(), ref.detach()), "dq": err(ql.grad, qf.grad),
            "dk": err(kl.grad, kf.grad),
            "dv": err(vl.grad, vf.grad), "skipped_blocks": stats["skipped_blocks"],
            "skipped_steps": stats["skipped_steps"], "finite": bool(out.isfinite().all())}


def _sweep(rank: int) -> dict:
    """Forward only, many windows (± sinks), both layouts: the largest error, and every
    (window, layout) whose skip count differs from a dense mask's hidden blocks."""
    q, k, v, _ = _inputs()
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]  # (L, 1), (1, L)
    worst, wrong = 0.0, []
    for left in (0, 2, 5, 9):
        for right in (0, 1, 4):
            for n in (0, 3):
                for zigzag in (True, False):
                    mask = sliding_window(left, right) | sinks(n) if n else sliding_window(left, right)
                    dense = ((j >= i - left) & (j <= i + right)) | (j < n)  # (L, L) True = may attend
                    layout = ShardLayout(L, WORLD, zigzag)
                    ref = scaled_dot_product_attention(q, k, v, mask=mask, enable_gqa=True)
                    local = [shard(t, dim=2, zigzag=zigzag)[0] for t in (q, k, v)]
                    reset_ring_stats()
                    out = ring_attention(*local, layout, mask=mask)
                    worst = max(worst, (out - shard(ref, dim=2, zigzag=zigzag)[0]).abs().max().item())
                    hidden = sum(not dense[qa:qb, ka:kb].any() for qa, qb in layout.chunks(rank)
                                 for src in range(WORLD) for ka, kb in layout.chunks(src))
                    if RING_STATS["skipped_blocks"] != hidden:
                        wrong.append((left, right, n, zigzag, RING_STATS["skipped_blocks"], hidden))
    return {"worst": worst, "wrong_skips": wrong}


def _errors(rank: int) -> dict:
    """The message of each bad call (every rank raises before sending anything)."""
    q, k, v, _ = _inputs()
    layout = ShardLayout(L, WORLD)
    ql, kl, vl = (shard(t, dim=2)[0] for t in (q, k, v))
    bad = {
        "mask_not_structured": {"mask": torch.ones(L, L, dtype=torch.bool)},
        "bias_not_callable": {"score_bias": torch.zeros(H, L, L)},
        "bias_transposed": {"score_bias": lambda qi, ki: _alibi(qi, ki).transpose(-2, -1)},
        "bias_heads": {"score_bias": lambda qi, ki: torch.zeros(3, qi.size(0), ki.size(1), dtype=torch.float64)},
        "bias_grad": {"score_bias": lambda qi, ki: torch.zeros(H, qi.size(0), ki.size(1), requires_grad=True)},
        "documents_length": {"mask": documents(DOC_IDS[:, :12])},
    }
    out = {}
    for name, kwargs in bad.items():
        try:
            ring_attention(ql, kl, vl, layout, **kwargs)
            out[name] = None
        except (TypeError, ValueError) as e:
            out[name] = f"{type(e).__name__}: {e}"
    return out


def _module_case(rank: int) -> dict:
    """context_parallel: a module with RoPE, ALiBi and a frozen T5 bias under a structured mask
    vs the same projections and a float64 functional call on the whole sequence."""
    torch.manual_seed(0)
    E = 16
    mha = MultiHeadAttention(E, H, num_kv_heads=HKV, dtype=torch.float64)
    mha.rotary = RotaryEmbedding(E // H)  # the options MultiHeadAttention's positions set
    mha.alibi = True
    mha.relative_bias = RelativePositionBias(H).double().requires_grad_(False)
    cp = context_parallel(copy.deepcopy(mha))
    mask = documents(DOC_IDS) & sliding_window(6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, E, generator=g, dtype=torch.float64)
    w = torch.randn(B, L, E, generator=g, dtype=torch.float64)

    xr = x.clone().requires_grad_()
    q, k, v = mha.project_qkv(xr)  # (B, H, L, hs), (B, Hkv, L, hs) ×2
    q, k = mha.rotary.rotate(q), mha.rotary.rotate(k)  # positions 0 .. L-1

    def bias(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return _alibi(q_idx, kv_idx) + mha.relative_bias(q_idx[:, 0], kv_idx[0])  # (H, lq, lk)

    ref = scaled_dot_product_attention(q, k, v, mask=mask, score_bias=bias, enable_gqa=True)  # (B, H, L, hs)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(B, L, E))  # (B, L, E)
    (ref * w).sum().backward()

    xl = shard(x)[0].requires_grad_()
    out, _ = cp(xl, mask=mask)
    (out * shard(w)[0]).sum().backward()
    for p in cp.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
    errors = {}
    try:
        cp(xl, positions=torch.arange(L // WORLD))
    except ValueError as e:
        errors["positions"] = str(e)
    cp.relative_bias.requires_grad_(True)
    try:
        cp(xl, mask=mask)
    except ValueError as e:
        errors["relative_bias"] = str(e)
    trained = [(a, b) for a, b in zip(cp.parameters(), mha.parameters()) if b.grad is not None]
    return {
        "out": (out.detach() - shard(ref.detach())[0]).abs().max().item(),
        "dx": (xl.grad - shard(xr.grad)[0]).abs().max().item(),
        "dparams": max((a.grad - b.grad).abs().max().item() for a, b in trained),
        "nparams": len(trained), "trainable": sum(p.requires_grad for p in mha.parameters()),
        "errors": errors,
    }


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = {name: _case(rank, *args) for name, args in CASES.items()}
        res["errors"] = _errors(rank)
        res["module"] = _module_case(rank)
        res["sweep"] = _sweep(rank)
        with open(f"{out_dir}/{rank}.json", "w") as fh:
            json.dump(res, fh)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ring_structured")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(WORLD, port, str(out)), nprocs=WORLD, join=True, start_method="fork")
    return [json.loads((out / f"{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES)
def test_ring_attention_with_global_positions_equals_one_process(results, case):
    for rank, res in enumerate(results):
        r = res[case]
        for what in ("out", "dq", "dk", "dv"):
            assert r[what] <= F64, (rank, case, what, r[what])
        assert r["finite"]


def _dense_window(left: int) -> torch.Tensor:
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    return (j <= i) & (j >= i - left)  # (L, L) True = may attend


@pytest.mark.parametrize("case", ["small_window", "small_window_contiguous"])
def test_blocks_the_window_hides_are_skipped_and_counted(results, case):
    zigzag = CASES[case][3]
    layout = ShardLayout(L, WORLD, zigzag)
    allowed = _dense_window(1)
    total = 0
    for rank, res in enumerate(results):
        blocks = steps = 0
        for step in range(WORLD):
            src = (rank - step) % WORLD
            hidden = [not allowed[qa:qb, ka:kb].any()
                      for qa, qb in layout.chunks(rank) for ka, kb in layout.chunks(src)]
            blocks += sum(hidden)
            steps += all(hidden)
        assert res[case]["skipped_blocks"] == blocks, (rank, res[case])
        assert res[case]["skipped_steps"] == steps, (rank, res[case])
        total += blocks
    assert total > 0
    if not zigzag:  # rank 0 holds positions 0..7: rank 1's keys 8..15 are all in its future
        assert [res[case]["skipped_steps"] for res in results] == [1, 0]


def test_many_windows_and_sinks_equal_one_process_and_skip_exactly_the_hidden_blocks(results):
    for res in results:
        assert res["sweep"]["worst"] <= F64 and res["sweep"]["wrong_skips"] == [], res["sweep"]


def test_rope_needs_the_global_positions(results):
    assert all(res["rope_causal"]["local_rope"] > 1e-3 for res in results)


def test_nothing_is_skipped_without_a_mask(results):
    for res in results:
        assert res["alibi_causal"]["skipped_steps"] == 0
        assert res["rope_causal"]["skipped_steps"] == 0


def test_context_parallel_module_with_positions_and_mask_equals_one_process(results):
    for res in results:
        r = res["module"]
        assert max(r["out"], r["dx"], r["dparams"]) <= F64, r
        assert r["nparams"] == r["trainable"] >= 4  # every projection's weight and bias, not the frozen bias
        assert r["errors"]["positions"].startswith("positions must be None under context parallelism")
        assert r["errors"]["relative_bias"].startswith("relative_bias cannot be trained under context parallelism")


@pytest.mark.parametrize("name, expected", [
    ("mask_not_structured", "TypeError: mask must be an attnzoo.masks mask"),
    ("bias_not_callable", "TypeError: score_bias must be callable as score_bias(q_idx, kv_idx), got Tensor"),
    ("bias_transposed", "ValueError: score_bias(q_idx, kv_idx) must return a float (H or 1, lq, lk) = (4 or 1, 2, 3)"
                        " tensor, got shape (4, 3, 2)"),
    ("bias_heads", "ValueError: score_bias(q_idx, kv_idx) must return a float (H or 1, lq, lk) = (4 or 1, 2, 3)"
                   " tensor, got shape (3, 2, 3)"),
    ("bias_grad", "ValueError: score_bias must not need gradients under ring attention"),
    ("documents_length", "ValueError: doc_ids must have shape (B or 1, L) with L = query length = key length"),
])
def test_bad_mask_or_bias_raises_naming_the_argument(results, name, expected):
    for res in results:
        assert res["errors"][name] is not None and res["errors"][name].startswith(expected), res["errors"][name]
