"""Benchmark group ``hf``: a transformers Llama with ``output_attentions=True``, attnzoo vs eager.

The model: `transformers.LlamaModel` from a small config (2 layers, 8 heads, hidden 256, random
weights, nothing downloaded), one causal sequence of N = 2048 tokens (256 with ``--quick``),
batch 1. Both sides return every layer's per-head weights, (B, H, N, N) each, so the returned
memory is the same; what attnzoo saves is the transient memory of computing them (eager holds
the scores, the masked scores and the softmax of a whole layer at once; attnzoo works in blocks
of query rows). The rows:

* time: forward with ``output_attentions=True``, attnzoo and eager interleaved in this process;
* peak memory: the same call, each side in its own fresh process (``_memory``), and the same
  peaks less the returned weights (the transient part).

Skipped, with a row saying so, when transformers is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ._core import Context, Job, Row, group
from ._memory import measure_in_subprocess

__all__ = ["hf_group", "memory_op", "SIZES"]

#: Used where the run's size table has no ``hf`` entry.
SIZES = {"full": {"B": 1, "N": 2048, "layers": 2, "heads": 8, "hidden": 256},
         "quick": {"B": 1, "N": 256, "layers": 2, "heads": 8, "hidden": 256}}
REFERENCE = 'transformers attn_implementation="eager"'
OP = "Llama fwd output_attentions"


def _sizes(ctx: Context) -> dict[str, Any]:
    return ctx.sizes.get("hf") or SIZES["quick" if ctx.quick else "full"]


def _shape(s: dict[str, Any]) -> str:
    return f"B={s['B']} N={s['N']} E={s['hidden']} H={s['heads']} layers={s['layers']}"


@group("hf", "a transformers Llama forward with output_attentions=True: attnzoo vs eager attention")
def hf_group(ctx: Context) -> Iterator[Job]:
    s = _sizes(ctx)
    shape = _shape(s)
    try:
        import transformers  # noqa: F401
    except ImportError:
        yield Job(OP, shape, lambda: Row("hf", OP, shape, note="skipped: transformers is not installed "
                                                             "(pip install 'transformers>=5')"))
        return
    results: dict[str, dict[str, Any]] = {}

    def child(impl: str) -> dict[str, Any]:
        if impl not in results:
            spec = {"op": f"{__name__}:memory_op", "impl": impl, **s, "device": str(ctx.device),
                    "threads": torch.get_num_threads()}
            results[impl] = measure_in_subprocess(spec)
        return results[impl]

    yield Job(f"{OP} time", shape, lambda: _time(ctx, s, shape))
    yield Job(f"{OP} peak memory", shape, lambda: _memory_rows(s, shape, child("attnzoo"), child("eager")))


def _model(s: dict[str, Any], impl: str, device: Any) -> Any:
    """The benchmark's LlamaModel (seeded: both implementations get the same weights)."""
    import transformers

    from ..integrations import transformers as azt

    azt.register()
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=s["hidden"], intermediate_size=2 * s["hidden"],
                                   num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                                   num_key_value_heads=s["heads"], max_position_embeddings=max(s["N"], 16))
    torch.manual_seed(0)
    model = transformers.LlamaModel(cfg).to(device).eval()
    model.set_attn_implementation(impl)
    return model


def _ids(s: dict[str, Any], n: int, device: Any) -> torch.Tensor:
    return torch.randint(0, 256, (s["B"], n), generator=torch.Generator().manual_seed(1)).to(device)


def _time(ctx: Context, s: dict[str, Any], shape: str) -> Row:
    ours, ref = _model(s, "attnzoo", ctx.device), _model(s, "eager", ctx.device)
    ids = _ids(s, s["N"], ctx.device)

    def run(model: Any) -> Any:
        with torch.inference_mode():
            return model(input_ids=ids, output_attentions=True).attentions

    diff = max((a - b).abs().max().item() for a, b in zip(run(ours), run(ref)))
    a, r = ctx.compare(lambda: run(ours), lambda: run(ref))
    return Row("hf", f"{OP} time", shape, attnzoo=a, reference=r, reference_name=REFERENCE,
               extra={"max_abs_diff": diff})


def _returned_mb(s: dict[str, Any]) -> float:
    """The attentions both sides return: layers x (B, H, N, N) in the run's dtype."""
    item = torch.empty((), dtype=torch.get_default_dtype()).element_size()
    return s["layers"] * s["B"] * s["heads"] * s["N"] ** 2 * item / 2**20


def _memory_rows(s: dict[str, Any], shape: str, ours: dict[str, Any], ref: dict[str, Any]) -> list[Row]:
    returned = _returned_mb(s)
    extra = {"returned_mb": returned, "attnzoo_s": ours["seconds"], "reference_s": ref["seconds"],
             "method": ours["method"]}
    note = (f"each side one call in a fresh process; both return the same {returned:,.0f} MB of "
            "per-head weights; the 'beyond' row is the peak less those")
    return [
        Row("hf", f"{OP} peak memory", shape, unit="MB", attnzoo=ours["peak_mb"], reference=ref["peak_mb"],
            reference_name=REFERENCE, note=note, extra=extra),
        Row("hf", f"{OP} peak beyond returned", shape, unit="MB", attnzoo=max(0.0, ours["peak_mb"] - returned),
            reference=max(0.0, ref["peak_mb"] - returned), reference_name=REFERENCE, note=note, extra=extra),
    ]


def memory_op(spec: dict[str, Any], device: Any) -> tuple[Any, Any]:
    """The child side of the memory rows (see ``_memory``): (warm-up call, measured call)."""
    model = _model(spec, spec["impl"], device)

    def make(n: int) -> Any:
        ids = _ids(spec, n, device)

        def call() -> None:
            with torch.inference_mode():
                out = model(input_ids=ids, output_attentions=True)
            assert len(out.attentions) == spec["layers"]  # the weights are returned, and alive here

        return call

    return make(8), make(spec["N"])
