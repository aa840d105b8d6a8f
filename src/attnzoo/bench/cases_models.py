"""Benchmark groups for models: cached decoding, torch.compile, and the CNN gates."""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..gates.channel import SqueezeExcite
from ..gates.spatial import CBAM
from ..transformer import Seq2SeqTransformer, TransformerEncoderLayer
from ._core import Context, Job, Row, group


def _fmt(**dims: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


# ---------------------------------------------------------------------------------- decode
@group("decode", "Seq2SeqTransformer.generate seconds per token, use_cache=True vs False")
def decode_group(ctx: Context) -> Iterator[Job]:
    s = ctx.sizes["decode"]
    state: dict[str, Any] = {}

    def model() -> tuple[Seq2SeqTransformer, Tensor]:
        if not state:
            torch.manual_seed(0)
            m = Seq2SeqTransformer(s["vocab"], s["vocab"], d_model=d, nhead=heads, num_encoder_layers=layers,
                                   num_decoder_layers=layers, dim_feedforward=4 * d, max_len=s["max_len"]).to(ctx.device)
            with torch.no_grad():  # eos can never win the argmax: every generate runs its full length
                m.lm_head.bias[s["vocab"] - 1] = -1e9
            src = torch.randint(2, s["vocab"] - 1, (B, s["src_len"]), device=ctx.device)
            state.update(m=m, src=src)
        return state["m"], state["src"]

    B, d, heads, layers = s.get("B", 1), s.get("d_model", 128), s.get("nhead", 4), s.get("layers", 2)
    for n in s["tokens"]:
        shape = _fmt(B=B, d_model=d, layers=f"{layers}+{layers}", new_tokens=n)
        yield Job("generate s/token", shape, lambda n=n, shape=shape: _decode(ctx, model, n, shape))


def _decode(ctx: Context, model: Callable[[], tuple[Seq2SeqTransformer, Tensor]], n: int, shape: str) -> Row:
    m, src = model()
    eos = m.tgt_vocab - 1

    def gen(cache: bool, tokens: int = n) -> Callable[[], None]:
        def call() -> None:
            out = m.generate(src, tokens, bos_id=1, eos_id=eos, use_cache=cache)
            if out.size(1) != tokens:
                raise RuntimeError(f"generate stopped after {out.size(1)} of {tokens} tokens")
        return call

    for cache in (True, False):  # warm both paths on a short run
        gen(cache, min(8, n))()
    same = torch.equal(m.generate(src, n, 1, eos, use_cache=True), m.generate(src, n, 1, eos, use_cache=False))
    a, r = ctx.compare(gen(True), gen(False), warmup=0, min_sample_s=0.0)
    return Row("decode", "generate s/token", shape, unit="s/token", attnzoo=a / n, reference=r / n,
               reference_name="same model, use_cache=False (re-runs the decoder on the prefix)",
               extra={"same_tokens": same})


# --------------------------------------------------------------------------------- compile
Built = tuple[nn.Module, tuple, dict]


def _compile_cases(ctx: Context) -> dict[str, tuple[str, Callable[[], Built]]]:
    s, dev = ctx.sizes["compile"], ctx.device
    B, N, E, H = s["B"], s["N"], s["E"], s["H"]
    C, Hw = s["C"], s["HW"]

    def mha_self():
        x = torch.randn(B, N, E, device=dev)
        return MultiHeadAttention(E, H, device=dev), (x,), {}

    S = 2 * N

    def mha_cross():
        x, mem = torch.randn(B, N, E, device=dev), torch.randn(B, S, E, device=dev)
        kpm = torch.zeros(B, S, dtype=torch.bool, device=dev)
        kpm[:, S - S // 4:] = True
        return MultiHeadAttention(E, H, device=dev), (x, mem), {"key_padding_mask": kpm}

    def se():
        return SqueezeExcite(C, device=dev), (torch.randn(B, C, Hw, Hw, device=dev),), {}

    def cbam():
        return CBAM(C, device=dev), (torch.randn(B, C, Hw, Hw, device=dev),), {}

    def encoder_layer():
        m = TransformerEncoderLayer(E, H, 4 * E, dropout=0.0, device=dev)
        return m, (torch.randn(B, N, E, device=dev),), {}

    img = _fmt(B=B, C=C, H=Hw, W=Hw)
    return {"MultiHeadAttention self": (_fmt(B=B, N=N, E=E, H=H), mha_self),
            "MultiHeadAttention cross+kpm": (_fmt(B=B, L=N, S=S, E=E, H=H), mha_cross),
            "SqueezeExcite": (img, se), "CBAM": (img, cbam),
            "TransformerEncoderLayer": (_fmt(B=B, N=N, d_model=E, nhead=H), encoder_layer)}


@group("compile", "eager vs torch.compile(fullgraph=True), eval; compile time reported apart")
def compile_group(ctx: Context) -> Iterator[Job]:
    for name, (shape, build) in _compile_cases(ctx).items():
        op = f"{name} compiled"
        if name in ctx.sizes["compile"]["cases"]:
            yield Job(op, shape, lambda name=name, shape=shape, build=build: _compiled(ctx, name, shape, build))
        else:  # --quick compiles only a few: compilation, not the shape, takes the time
            compiled = ", ".join(ctx.sizes["compile"]["cases"]) or "no case"
            note = f"not compiled in this run (it compiles {compiled} only): compiling takes seconds at any size"
            yield Job(op, shape, lambda op=op, shape=shape, note=note: Row("compile", op, shape, note=note))


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _compiled(ctx: Context, name: str, shape: str, build: Callable[[], Built]) -> Row:
    torch.manual_seed(0)
    m, args, kw = build()
    m.eval()
    torch._dynamo.reset()  # every case compiles from scratch: comparable compile times
    op = f"{name} compiled"
    ref_name = "the same module, eager"
    try:
        compiled = torch.compile(m, fullgraph=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            got = _first(compiled(*args, **kw))
        ctx.sync()
        compile_s = time.perf_counter() - t0
    except Exception as exc:  # no compiler, graph break, ...: the row records why
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return Row("compile", op, shape, error=f"torch.compile failed: {text[:400]}", reference_name=ref_name)
    with torch.no_grad():
        want = _first(m(*args, **kw))
    close = torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    diff = (got - want).abs().max().item()

    def run(f: Callable[..., Any]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                f(*args, **kw)
        return call

    a, r = ctx.compare(run(compiled), run(m))
    note = None if close else f"{name}: compiled output differs from eager (max abs diff {diff:.3g})"
    return Row("compile", op, shape, attnzoo=a, reference=r, reference_name=ref_name, note=note,
               extra={"compile_s": compile_s, "allclose": close, "max_abs_diff": diff})


# ---------------------------------------------------------------------------------- gating
def literal_se(m: SqueezeExcite, x: Tensor) -> Tensor:
    """SENet as written: mean over H,W -> Linear -> ReLU -> Linear -> sigmoid -> multiply."""
    z = x.mean(dim=(2, 3))
    s = torch.sigmoid(F.linear(F.relu(F.linear(z, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias))
    return x * s[:, :, None, None]


def literal_cbam(m: CBAM, x: Tensor) -> Tensor:
    """CBAM as written: shared MLP on avg and max separately, add, sigmoid, multiply; then
    channel mean and max maps, concatenate, conv, sigmoid, multiply."""
    c = m.channel

    def mlp(z: Tensor) -> Tensor:
        return F.linear(F.relu(F.linear(z, c.fc1.weight, c.fc1.bias)), c.fc2.weight, c.fc2.bias)

    mc = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    y = x * mc[:, :, None, None]
    maps = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
    conv = m.spatial.conv
    ms = torch.sigmoid(F.conv2d(maps, conv.weight, conv.bias, padding=conv.padding))
    return y * ms


@group("gating", "SqueezeExcite / CBAM forward+backward vs the papers' formulas; CBAM share of the tour CNN")
def gating_group(ctx: Context) -> Iterator[Job]:
    B, C, Hw = ctx.sizes["gating"]["shape"]
    shape = _fmt(B=B, C=C, H=Hw, W=Hw)
    yield Job("SqueezeExcite fwd+bwd", shape, lambda: _gate(ctx, "SqueezeExcite", SqueezeExcite, literal_se, shape))
    yield Job("CBAM fwd+bwd", shape, lambda: _gate(ctx, "CBAM", CBAM, literal_cbam, shape))
    yield Job("CBAM share of tour CNN fwd", "", lambda: _tour_share(ctx))


def _gate(ctx: Context, name: str, cls: type, literal: Callable[[Any, Tensor], Tensor], shape: str) -> Row:
    B, C, Hw = ctx.sizes["gating"]["shape"]
    torch.manual_seed(0)
    m = cls(C, device=ctx.device)
    x = torch.randn(B, C, Hw, Hw, device=ctx.device, requires_grad=True)
    g = torch.randn(B, C, Hw, Hw, device=ctx.device)
    with torch.no_grad():
        diff = (m(x) - literal(m, x)).abs().max().item()

    def step(f: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def call() -> None:
            m.zero_grad(set_to_none=True)
            x.grad = None
            f(x).backward(g)
        return call

    a, r = ctx.compare(step(m), step(lambda t: literal(m, t)))
    return Row("gating", f"{name} fwd+bwd", shape, attnzoo=a, reference=r,
               reference_name=f"literal {name} formula, same weights", extra={"max_abs_diff": diff})


def find_tour_cnn() -> tuple[Callable[[], nn.Module] | None, str]:
    """A zero-argument builder of the tour's CNN with CBAM, and what it is (or why there is none).

    Prefers ``attnzoo.demo.vision.build_model("cbam", 0, FULL["vision"])`` (the tour's own
    configuration); otherwise any public callable in ``attnzoo.demo`` with "cnn" in its
    name, given ``attention="cbam"`` when it takes such an argument.
    """
    try:
        from ..demo import common, vision

        budget = common.FULL["vision"]
        return (lambda: vision.build_model("cbam", 0, budget)), "attnzoo.demo.vision.build_model('cbam')"
    except Exception:
        pass
    try:
        demo = importlib.import_module("attnzoo.demo")
    except Exception as exc:
        return None, f"attnzoo.demo cannot be imported ({type(exc).__name__}: {exc})"
    modules = [demo]
    for info in pkgutil.iter_modules(getattr(demo, "__path__", [])):
        try:
            modules.append(importlib.import_module(f"attnzoo.demo.{info.name}"))
        except Exception:
            continue
    for mod in modules:
        for name, obj in sorted(vars(mod).items()):
            if ("cnn" in name.lower() and callable(obj) and not name.startswith("_")
                    and getattr(obj, "__module__", "").startswith("attnzoo.demo")):
                try:
                    params = inspect.signature(obj).parameters
                except (TypeError, ValueError):
                    continue
                kw = {p: "cbam" for p in ("attention", "attn", "gate", "mechanism") if p in params}
                return (lambda obj=obj, kw=kw: obj(**kw)), f"{obj.__module__}.{name}({kw or ''})"
    return None, "attnzoo.demo has no CNN builder yet (no public callable with 'cnn' in its name)"


def _tour_share(ctx: Context) -> Row:
    op = "CBAM share of tour CNN fwd"
    builder, where = find_tour_cnn()
    if builder is None:
        return Row("gating", op, "", unit="%", note=f"skipped: {where}")
    torch.manual_seed(0)
    model = builder().to(ctx.device).eval()
    if not any(isinstance(mod, CBAM) for mod in model.modules()):
        return Row("gating", op, "", unit="%", note=f"skipped: {where} contains no CBAM module")
    plain = copy.deepcopy(model)
    for mod in list(plain.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, CBAM):
                setattr(mod, child_name, nn.Identity())
    B, side = ctx.sizes["gating"]["tour_batch"], ctx.sizes["gating"]["tour_side"]
    x = torch.randn(B, 1, side, side, device=ctx.device)

    def fwd(m: nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                m(x)
        return call

    with_cbam, without = ctx.compare(fwd(model), fwd(plain))
    share = 100.0 * (with_cbam - without) / with_cbam
    return Row("gating", op, _fmt(B=B, H=side, W=side), unit="%", attnzoo=share,
               reference_name=f"{where} with every CBAM replaced by nn.Identity",
               extra={"with_cbam_s": with_cbam, "without_cbam_s": without})
