"""Context parallelism (attnzoo.distributed): P gloo processes on 127.0.0.1 vs one process.

One launch per P (2 and 4) runs every case in :func:`_worker`; each rank writes its
errors to a JSON file and the tests below check them. Reference: the same computation on
the whole sequence in a single process (float64: attention_reference / the module;
float32: attnzoo's fused path).
"""

from __future__ import annotations

import copy
import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo import MultiHeadAttention
from attnzoo.distributed import (
    RING_STATS, ShardLayout, context_parallel, padded_length, reset_ring_stats, ring_attention, shard,
    shard_attn_mask, unshard,
)
from attnzoo.examples import long_context
from attnzoo.functional import attention_reference, scaled_dot_product_attention

F64, F32 = 1e-10, 1e-5
# name: (dtype, B, H, Hkv, L, causal, zigzag, key padding, attn_mask, a row/batch with nothing to attend to[, hs])
RING_CASES = {
    "full": (torch.float64, 2, 4, 4, 16, False, True, False, False, False),
    "causal": (torch.float64, 2, 4, 4, 16, True, True, False, False, False),
    "causal_contiguous": (torch.float64, 2, 4, 4, 16, True, False, False, False, False),
    "key_padding": (torch.float64, 2, 4, 4, 16, True, True, True, False, False),
    "masked": (torch.float64, 2, 4, 4, 16, True, True, False, True, False),
    "gqa": (torch.float64, 2, 4, 2, 16, True, True, True, False, False),
    "odd_length": (torch.float64, 2, 4, 2, 13, True, True, True, True, False),
    "empty_rows": (torch.float64, 2, 4, 2, 16, False, True, True, True, True),
    "float32": (torch.float32, 2, 4, 2, 21, True, True, True, True, False),
    # hs=4: blocks of 2·hs = 8 query rows, so chunks split into several row blocks
    "row_blocks": (torch.float64, 1, 2, 1, 75, True, True, True, True, False, 4),
}


# ------------------------------------------------------------------------------ the ranks
def _ring_case(rank: int, world: int, dtype, B, H, Hkv, L, causal, zigzag, pad, mask, empty, hs=8, group=None) -> dict:
    g = torch.Generator().manual_seed(L * 1000 + H * 10 + Hkv)
    q = torch.randn(B, H, L, hs, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, L, hs, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, L, hs, generator=g, dtype=torch.float64)
    w = torch.randn(B, H, L, hs, generator=g, dtype=torch.float64)  # the loss is (out * w).sum()
    q, k, v, w = (t.to(dtype) for t in (q, k, v, w))
    padding = torch.rand(B, L, generator=g) < 0.3 if pad else torch.zeros(B, L, dtype=torch.bool)  # True = padding
    allowed = torch.rand(B, H, L, L, generator=g) < 0.7 if mask else torch.ones(B, H, L, L, dtype=torch.bool)
    if empty:
        padding[0] = True  # batch row 0: every key padded
        allowed[1, :, 3] = False  # batch row 1, query 3: every key masked
    full_mask = allowed & ~padding[:, None, None, :]  # (B, H, L, L) True = may attend

    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    if dtype == torch.float64:
        ref = attention_reference(qr, kr, vr, attn_mask=full_mask, is_causal=causal, enable_gqa=Hkv != H)
    else:
        ref = scaled_dot_product_attention(qr, kr, vr, attn_mask=full_mask, is_causal=causal, enable_gqa=Hkv != H)
    (ref * w).sum().backward()

    layout = ShardLayout(padded_length(L, world, zigzag), world, zigzag)
    ql, kl, vl, wl = (shard(t, group, dim=2, zigzag=zigzag)[0] for t in (q, k, v, w))
    ql, kl, vl = (t.requires_grad_() for t in (ql, kl, vl))
    key_mask = ~shard(padding, group, dim=1, zigzag=zigzag, pad_value=True)[0]  # (B, N) True = may attend
    attn = None
    if mask:
        cols = F.pad(allowed, [0, layout.length - L], value=False)  # padded keys: never
        attn = shard(cols, group, dim=2, zigzag=zigzag, pad_value=False)[0]  # (B, H, N, Lp)
    reset_ring_stats()
    out = ring_attention(ql, kl, vl, layout, group=group, is_causal=causal, key_mask=key_mask, attn_mask=attn)
    (out * wl).sum().backward()

    pos = layout.positions(rank)
    real = pos < L
    glob = pos[real]
    res = {
        "out": (out.detach()[:, :, real] - ref.detach()[:, :, glob]).abs().max().item(),
        "dq": (ql.grad[:, :, real] - qr.grad[:, :, glob]).abs().max().item(),
        "dk": (kl.grad[:, :, real] - kr.grad[:, :, glob]).abs().max().item(),
        "dv": (vl.grad[:, :, real] - vr.grad[:, :, glob]).abs().max().item(),
        "finite": all(bool(t.isfinite().all()) for t in (out, ql.grad, kl.grad, vl.grad)),
        "unshard": (unshard(out.detach(), L, group, dim=2, zigzag=zigzag) - ref.detach()).abs().max().item(),
        "bytes": RING_STATS["bytes_sent"],
        "bytes_expected": _ring_bytes(B, Hkv, layout.local_length, hs, torch.tensor([], dtype=dtype).element_size(),
                                      world),
    }
    if empty:
        nothing = ~(full_mask.any(-1))  # (B, H, L) rows with nothing to attend to
        if causal:
            nothing |= ~(full_mask & torch.ones(L, L, dtype=torch.bool).tril()).any(-1)
        n = nothing[:, :, glob]
        res["empty_out_max"] = out.detach()[:, :, real][n].abs().max().item()
        res["empty_dq_max"] = ql.grad[:, :, real][n].abs().max().item()
        res["empty_rows"] = int(n.sum())
    return res


def _ring_bytes(B: int, Hkv: int, N: int, hs: int, elem: int, P: int) -> int:
    """The analytic volume one rank sends for a forward + backward (see docs/distributed.md)."""
    kv = (2 * B * Hkv * N * hs + B * N) * elem  # k, v and the key mask
    dkv = 2 * B * Hkv * N * hs * elem
    return 2 * (P - 1) * kv + (P * dkv if P > 1 else 0)


def _module_case(rank: int, world: int) -> dict:
    """A GQA MultiHeadAttention switched by context_parallel vs the same module on the whole sequence."""
    torch.manual_seed(0)
    B, L, E = 2, 11, 16
    mha = MultiHeadAttention(E, 4, num_kv_heads=2, dtype=torch.float64)
    cp = context_parallel(copy.deepcopy(mha))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, E, generator=g, dtype=torch.float64)
    w = torch.randn(B, L, E, generator=g, dtype=torch.float64)
    kpm = torch.rand(B, L, generator=g) < 0.2  # torch polarity: True = padding
    blocked = torch.rand(L, L, generator=g) < 0.2  # True = NOT allowed

    xr = x.clone().requires_grad_()
    ref, _ = mha(xr, key_padding_mask=kpm, attn_mask=blocked, is_causal=True)
    (ref * w).sum().backward()

    xl, padding = shard(x)
    xl.requires_grad_()
    wl, _ = shard(w)
    kpm_l = shard(kpm, pad_value=True)[0] | padding  # (B, N)
    out, weights = cp(xl, key_padding_mask=kpm_l, attn_mask=shard_attn_mask(blocked), is_causal=True)
    (out * wl).sum().backward()
    for p in cp.parameters():
        dist.all_reduce(p.grad)
    pos = ShardLayout(padded_length(L, world), world).positions(rank)
    real = pos < L
    errors = {}
    try:
        cp(xl, need_weights=True)
    except ValueError as e:
        errors["need_weights"] = str(e)
    try:
        cp(xl, key_padding_mask=kpm_l[:, 1:])
    except ValueError as e:
        errors["key_padding_mask"] = str(e)
    try:
        ring_attention(xl.view(B, 1, -1, E), xl.view(B, 1, -1, E), xl.view(B, 1, -1, E),
                       ShardLayout(padded_length(L, world), world), key_mask=kpm_l.float())
    except ValueError as e:
        errors["key_mask"] = str(e)
    try:
        cp(xl, key_padding_mask=kpm_l.double())
    except TypeError as e:
        errors["float_mask"] = str(e)
    try:
        context_parallel(MultiHeadAttention(E, 4, dropout=0.1, dtype=torch.float64))(xl)
    except ValueError as e:
        errors["dropout"] = str(e)
    restored = context_parallel(copy.deepcopy(cp), enable=False)
    return {
        "out": (out.detach()[:, real] - ref.detach()[:, pos[real]]).abs().max().item(),
        "dx": (xl.grad[:, real] - xr.grad[:, pos[real]]).abs().max().item(),
        "dparams": max((a.grad - b.grad).abs().max().item() for a, b in zip(cp.parameters(), mha.parameters())),
        "weights_none": weights is None,
        "same_keys": list(cp.state_dict()) == list(mha.state_dict()),
        "is_mha": isinstance(cp, MultiHeadAttention),
        "restored": type(restored) is MultiHeadAttention,
        "errors": errors,
    }


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = {name: _ring_case(rank, world, *args) for name, args in RING_CASES.items()}
        if world == 4:  # two groups of non-adjacent ranks, {0, 2} and {1, 3}, each its own ring
            groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
            g = groups[rank % 2]
            res["subgroup"] = _ring_case(dist.get_rank(g), 2, *RING_CASES["odd_length"], group=g)
        res["module"] = _module_case(rank, world)
        res["example"] = long_context.train(steps=3, length=37, batch=2)
        with open(f"{out_dir}/{rank}.json", "w") as fh:
            json.dump(res, fh)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 4], ids=lambda p: f"P{p}")
def ranks(request, tmp_path_factory) -> tuple[int, list[dict]]:
    world = request.param
    out = tmp_path_factory.mktemp(f"dist{world}")
    # fork: the children inherit the imported torch instead of importing it again (seconds each)
    mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True, start_method="fork")
    return world, [json.loads((out / f"{r}.json").read_text()) for r in range(world)]


# ------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("case", RING_CASES)
def test_ring_attention_equals_one_process(ranks, case):
    world, results = ranks
    tol = F64 if RING_CASES[case][0] == torch.float64 else F32
    for rank, res in enumerate(results):
        r = res[case]
        for what in ("out", "dq", "dk", "dv", "unshard"):
            assert r[what] <= tol, (world, rank, case, what, r[what])
        assert r["finite"]
        assert r["bytes"] == r["bytes_expected"], (world, rank, case)


def test_ring_attention_on_a_subgroup(ranks):
    world, results = ranks
    if world != 4:
        pytest.skip("the subgroups are made from 4 ranks")
    for res in results:
        r = res["subgroup"]
        assert max(r[w] for w in ("out", "dq", "dk", "dv", "unshard")) <= F64 and r["bytes"] == r["bytes_expected"]


def test_rows_with_nothing_to_attend_to_give_zero_output_and_zero_grad(ranks):
    _, results = ranks
    assert sum(res["empty_rows"]["empty_rows"] for res in results) >= 4 * 16  # batch row 0 entirely, and more
    for res in results:
        r = res["empty_rows"]
        if r["empty_rows"]:
            assert r["empty_out_max"] == 0.0 and r["empty_dq_max"] == 0.0


def test_context_parallel_module_equals_one_process(ranks):
    world, results = ranks
    for res in results:
        r = res["module"]
        assert r["out"] <= F64 and r["dx"] <= F64 and r["dparams"] <= F64, (world, r)
        assert r["weights_none"] and r["same_keys"] and r["is_mha"] and r["restored"]
        assert r["errors"]["need_weights"] == "need_weights=True is not supported under context parallelism"
        assert r["errors"]["float_mask"] == ("key_padding_mask must be a bool tensor under context parallelism, "
                                             "got torch.float64")
        assert r["errors"]["dropout"] == ("attention dropout is not supported under context parallelism, got "
                                          "dropout=0.1 in training mode (build the model with dropout=0.0 or call .eval())")
        N = padded_length(11, world) // world
        assert r["errors"]["key_padding_mask"] == (
            f"key_padding_mask must have shape (2, {N}) (this rank's shard), got (2, {N - 1})")
        assert r["errors"]["key_mask"].startswith(f"key_mask must be a bool (B, N) = (2, {N}) tensor, got torch.float32")


def test_example_trains_to_the_single_process_loss(ranks):
    _, results = ranks
    for res in results:
        history = res["example"]
        assert len(history) == 3 and history[-1][1] < history[0][1]  # it trains
        for sharded, single in history:
            assert abs(sharded - single) <= F32 * max(1.0, abs(single))


# ------------------------------------------------------------------------------ one process
@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 200), world=st.integers(1, 8), zigzag=st.booleans())
def test_layout_gives_every_position_to_exactly_one_rank(length, world, zigzag):
    layout = ShardLayout(padded_length(length, world, zigzag), world, zigzag)
    assert length <= layout.length < length + (2 if zigzag else 1) * world
    pos = torch.cat([layout.positions(r) for r in range(world)])
    assert torch.equal(pos.sort().values, torch.arange(layout.length))
    if zigzag:  # balanced under a causal mask: every rank sees the same number of (query, key) pairs
        work = {int((layout.positions(r) + 1).sum()) for r in range(world)}
        assert len(work) == 1


def test_layout_and_context_parallel_reject_bad_input():
    with pytest.raises(ValueError, match=r"^length must be a multiple of 8 for world=4, got 10$"):
        ShardLayout(10, 4)
    with pytest.raises(ValueError, match=r"^rank must be in \[0, 2\), got 2$"):
        ShardLayout(8, 2).chunks(2)
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module, got int$"):
        context_parallel(3)
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match=r"^context_parallel needs an initialised torch.distributed process group"):
        context_parallel(MultiHeadAttention(8, 2))


def test_example_without_torchrun_exits_2_with_one_line(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    assert long_context.main(["--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: launch with torchrun")


# ------------------------------------------------------------------------------ the docs
DOCS = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs"


def test_docs_figure_and_example_output_are_current():
    from attnzoo.distributed.zigzag import diagram

    text = (DOCS / "distributed.md").read_text()
    assert diagram(4) in text
    # the example's output, as its documented run wrote it (torchrun ... > docs/bench/long_context.txt)
    run = (DOCS / "bench" / "long_context.txt").read_text().strip()
    assert run.startswith("1001 tokens on 2 processes") and run in text


def test_performance_table_comes_from_the_committed_results():
    from attnzoo.distributed.bench import format_table, ring_bytes

    res = json.loads((DOCS / "bench" / "distributed.json").read_text())
    assert format_table(res["rows"]) in (DOCS / "performance.md").read_text()
    assert res["command"] in (DOCS / "performance.md").read_text()
    for row in res["rows"]:  # the formula, the counter and the benchmark agree
        assert row["bytes_sent"] == row["bytes_analytic"]
        if not row["fused"]:
            per_call = ring_bytes(1, row["heads"], row["local_length"], row["head_dim"], 4, row["P"])
            assert row["bytes_analytic"] == max(1, row["layers"]) * per_call


@pytest.mark.parametrize("argv, message", [
    (["--ranks", "1,x"], "error: --ranks must be comma-separated positive ints, got '1,x'"),
    (["--ranks", "0"], "error: --ranks must be comma-separated positive ints, got '0'"),
    (["--length", "100", "--ranks", "1,4"], "error: --length must be a multiple of 2·P for every P in [1, 4], got 100"),
    (["--heads", "0"], "error: --heads must be >= 1, got 0"),
])
def test_bench_bad_values_exit_2_with_one_line(argv, message, capsys):
    from attnzoo.distributed.bench import main

    assert main(argv) == 2
    assert capsys.readouterr().err == message + "\n"


def test_bench_json_never_replaces_someone_elses_file(tmp_path, capsys):
    from attnzoo.distributed.bench import main

    theirs = tmp_path / "notes.json"
    theirs.write_text('{"mine": true}')
    assert main(["--json", str(theirs)]) == 2  # refused before any measuring
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and was not written by this benchmark" in err
    assert theirs.read_text() == '{"mine": true}'
    assert main(["--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    ours = tmp_path / "earlier.json"  # an earlier results file of this benchmark may be replaced
    ours.write_text((DOCS / "bench" / "distributed.json").read_text())
    assert main(["--json", str(ours), "--ranks", "0"]) == 2  # past the path check: fails on --ranks
    assert "--ranks" in capsys.readouterr().err
