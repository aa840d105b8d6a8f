"""Record the attention maps of any model during forward passes, without touching its code.

>>> import torch, attnzoo as az
>>> model = torch.nn.Sequential(az.SelfAttention(16, num_heads=4))
>>> with az.AttentionRecorder(model) as rec:
...     out, _ = model(torch.randn(2, 5, 16))
>>> rec["0"][0].shape                     # module "0": one tensor per call
torch.Size([2, 4, 5, 5])
>>> [(m.name, m.kind, m.module, m.call) for m in rec.maps]
[('0', 'attention', 'SelfAttention', 0)]

What is captured (``AttentionMap.tensor``) for each module found by recursion (which
modules: `attnzoo.maps.hooks`):

* kind ``"attention"``: ``attnzoo.MultiHeadAttention`` (and subclasses) and
  ``torch.nn.MultiheadAttention``: per-head weights (B, H, L, S); unbatched: (H, L, S).
  A pre-hook forces ``need_weights=True, average_attn_weights=False`` (keyword or
  positional); a hook returns to the caller what it asked for: ``None``, the head average
  ``weights.mean(dim=-3)`` or the per-head weights. attnzoo's ``weights_for`` stays as
  the caller set it, so only those query rows are recorded: (B, H, len(rows), S).
* gates: any module with a ``gate(x) -> Tensor`` method (the map its forward multiplies
  ``x`` by; SE, channel and spatial attention, your own): the gate, kind ``"channel"``
  (B, C, 1, 1), ``"spatial"`` (B, 1, H, W), or the class's ``gate_kind``. A gate made of
  gates (``CBAM``) gives records for its parts, ``<name>.channel`` and ``<name>.spatial``;
  a direct ``module.gate(x)`` is recorded too. ``NonLocal``, whose forward never forms
  its (B, N, M) map, is recorded as ``gate(x)`` of each forward's input (see
  `attnzoo.maps.hooks`), the same map with and without autograd.
* ``"temporal"``: ``TemporalAttention``: its weights over time, (B, T) or (B, Q, T).

Outputs do not change: where the caller did not ask for weights, attnzoo modules still
compute the output with the fused kernel (``attnzoo.functional.fused_output``), and
where it did, by the same route as unrecorded; so they are bit-identical (except in training
with dropout > 0: the output then comes from the dropped-out weights, which are recorded).
``nn.MultiheadAttention`` uses another kernel when weights are asked for (and
``nn.TransformerEncoderLayer`` leaves its fast path when hooked), so its outputs agree to
float rounding. Hooks exist only inside ``with`` (removed on exit, also on an exception).
Recorders nest; re-entering one starts a fresh recording.

Threads: a recorder records only the thread that entered its ``with`` block. Other threads
may run the same model meanwhile: they run exactly as unrecorded (every hook and patch
passes their calls through, the SDPA capture is a function mode of the entering thread
only) and add no records. Leaving ``with`` removes every hook, patch and mode it added. Two
threads may not record the same modules at once (``RuntimeError`` on entering the second).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..attention import MultiHeadAttention
from .._weights import RowIndex, _row_index
from .capture import ModuleStack, SDPACapture, packed_gqa, patch_attend, sdpa_weights, weights_numel
from .hooks import claim_modules, gate_after_forward, gate_kind, hook_attention, module_kind, patch_gate
from .store import load_maps, save_maps

__all__ = ["AttentionMap", "AttentionRecorder"]


@dataclass(frozen=True)
class AttentionMap:
    """One record: ``name`` (qualified), ``kind``, ``module`` (type name), ``call`` (0, 1, ...), ``tensor``."""

    name: str
    kind: str
    module: str
    call: int
    tensor: Tensor


class AttentionRecorder:
    """Context manager recording the attention maps of every attention module in ``model``.

    Args:
        model: any ``nn.Module``, searched recursively (``model.named_modules()``).
        include: optional ``include(name, module) -> bool`` choosing among the modules found.
        detach: store ``tensor.detach()`` (default); ``False`` keeps the autograd graph.
        to_cpu: move stored tensors to the CPU (default: keep them on their device).
        max_calls: record at most this many calls per module; later calls run unrecorded
            (and attention modules then compute no extra weights).
        sdpa: also record every ``F.scaled_dot_product_attention`` call made inside the
            model's forward (any model: Hugging Face, timm, your own blocks), named after the
            innermost module that made it; see "Any model" below.
        average_heads: store attention weights averaged over heads, (B, L, S), not (B, H, L, S).
        rows: record only these query rows (index tensor, slice or range, as ``weights_for``):
            SDPA calls and attnzoo modules then compute only those rows (a caller's own
            ``weights_for`` wins); calls with one query row (cached decoding steps) are
            recorded whole. Each entry must be a row (-L..L-1); a slice's start too (its stop
            is clamped); else ``ValueError`` naming ``rows``, raised by the call.
        max_bytes: a cap on the bytes stored; the record that would pass it raises a
            ``RuntimeError`` naming the module and what to change (before any SDPA weights
            are computed).
        dtype: store tensors in this dtype (e.g. ``torch.float32`` with ``to_cpu=True``: float32
            CPU copies of bfloat16 CUDA weights).

    Results (kept after the ``with`` block): ``maps``, the ``AttentionMap`` list in call
    order; ``rec[name]``, that module's tensors, one per call; ``names``, the hooked
    modules' qualified names (the root model is ``""``), then those whose SDPA calls were
    recorded, in first-call order; ``name in rec``; ``clear()``
    drops the records. ``save(path)`` / ``AttentionRecorder.load(path)`` keep them on disk.

    Any model: with ``sdpa=True`` a ``TorchFunctionMode`` (active only inside ``with``) sees
    each SDPA call; the call runs unchanged (outputs bit-identical) and its weights are
    recomputed from its own q, k, mask, ``is_causal``, ``scale`` and ``enable_gqa`` by
    ``attnzoo.functional.attention_weights``: kind ``"attention"``, (B, H, L, S), before
    dropout. ``transformers``' one-token GQA steps, which fold the query heads sharing a
    key/value head into the query-length axis, are recorded unfolded: (B, H, 1, S). Calls inside attnzoo/torch attention modules are not recorded twice. attnzoo's
    cached decoding (``Seq2SeqTransformer.generate``) calls ``MultiHeadAttention.attend``
    directly; an instance attribute ``attend`` (removed on exit) records each step: the
    self-attention over the cache (B, H, 1, t+1) and the cross-attention (B, H, 1, S).
    """

    def __init__(self, model: nn.Module, *, include: Callable[[str, nn.Module], bool] | None = None,
                 detach: bool = True, to_cpu: bool = False, max_calls: int | None = None,
                 sdpa: bool = True, average_heads: bool = False, rows: RowIndex = None,
                 max_bytes: int | None = None, dtype: torch.dtype | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if max_calls is not None and (isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1):
            raise ValueError(f"max_calls must be a positive int or None, got {max_calls!r}")
        self.model, self.include, self.detach, self.to_cpu, self.max_calls = model, include, detach, to_cpu, max_calls
        self._check_options(rows, max_bytes, dtype)
        self.sdpa, self.average_heads, self.rows, self.max_bytes, self.dtype = sdpa, average_heads, rows, max_bytes, dtype
        self._undo: list[Callable[[], None]] = []  # claims, hooks, patches, module stack, SDPA capture
        self._stack: Any = None
        self._owner: int | None = None  # the thread inside this recorder's ``with``, else None
        self._lock = threading.Lock()
        self._bytes = 0
        self.maps: list[AttentionMap] = []
        self.names: list[str] = []  # the hooked modules' qualified names, in model order
        self._calls: dict[str, int] = {}
        self._requests: dict[str, list] = {}  # per hooked module: its callers' requests, innermost last

    def __enter__(self) -> AttentionRecorder:
        if self.model is None:
            raise RuntimeError("this AttentionRecorder was loaded from a file and has no model to record")
        with self._lock:
            if self._owner is not None:
                raise RuntimeError("this AttentionRecorder is already active; nest a second one instead")
            self._owner = threading.get_ident()
        try:
            self._undo.append(claim_modules(self.model))
            self.clear()
            self.names = []
            for name, module in self.model.named_modules():
                kind = module_kind(module)
                if kind is None or (self.include is not None and not self.include(name, module)):
                    continue
                if kind == "attention":
                    try:
                        self._requests[name] = hook_attention(self, name, module)
                    except KeyError:  # a subclass whose forward takes no need_weights: skip it
                        continue
                elif kind == "temporal":
                    self._add_hook(module.gate_act.register_forward_hook(self._temporal_hook(name, module)))
                else:
                    record = self._gate_record(name, module)
                    self._undo.append(patch_gate(module, record))
                    hook = gate_after_forward(module, lambda n=name: self._mine() and not self._full(n), record)
                    if hook is not None:  # forward never forms the map (NonLocal): gate(x) after it
                        self._add_hook(hook)
                self.names.append(name)
            self._start_capture()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Undo everything ``__enter__`` added, newest first, even if one undo fails."""
        error = None
        try:
            while self._undo:
                try:
                    self._undo.pop()()
                except Exception as e:  # keep undoing; raise the first failure at the end
                    error = error or e
        finally:
            self._owner = None
        if error is not None:
            raise error

    def _mine(self) -> bool:
        """Whether the calling thread is the one recording (see "Threads" in the module docstring)."""
        return threading.get_ident() == self._owner

    def _add_hook(self, handle: RemovableHandle) -> None:
        self._undo.append(handle.remove)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the records to ``path`` (``.npz``: arrays + JSON metadata), atomically."""
        return save_maps(self.maps, path, names=self.names)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AttentionRecorder:
        """A recorder holding the records saved by ``save`` (``maps``, ``names``, ``rec[name]``).

        It has no model (``model`` is None), so it cannot be entered again. ``ValueError``
        naming the file (and the field) if it is not a recording ``save`` wrote.
        """
        records, names = load_maps(path)
        rec = cls(nn.Module())
        rec.model, rec.names = None, names
        rec.maps = [AttentionMap(**r) for r in records]
        return rec

    def clear(self) -> None:
        """Drop every record and restart the call counts."""
        self.maps.clear()
        self._calls.clear()
        self._bytes = 0

    def __getitem__(self, name: str) -> list[Tensor]:
        """The tensors recorded for module ``name``, one per call, in call order."""
        if name not in self.names:
            raise KeyError(f"no attention module named {name!r} was hooked; hooked: {self.names}")
        return [m.tensor for m in self.maps if m.name == name]

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def _full(self, name: str) -> bool:
        return self.max_calls is not None and self._calls.get(name, 0) >= self.max_calls

    def _store(self, name: str, kind: str, module: nn.Module, t: Tensor, *, shaped: bool = False) -> None:
        if kind == "attention" and self.average_heads and not shaped:
            t = t.mean(dim=-3)
        self._reserve(name, t.numel(), t.dtype)
        t = t.detach() if self.detach else t
        t = t.to("cpu") if self.to_cpu else t
        t = t.to(self.dtype) if self.dtype is not None else t
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        self.maps.append(AttentionMap(name, kind, type(module).__name__, call, t))

    def _rows_of(self, L: int, device: torch.device) -> Tensor | None:
        """The recorder's ``rows`` of ``L`` query rows as an index (None: all; one row: whole)."""
        return None if self.rows is None or L == 1 else _row_index(self.rows, L, device, name="rows")

    def _gate_record(self, name: str, module: nn.Module) -> Callable[[Any, Tensor], None]:
        def record(x: Any, gate: Tensor) -> None:
            if self._mine() and not self._full(name):
                self._store(name, gate_kind(module, x, gate), module, gate)
        return record

    def _temporal_hook(self, name: str, module: nn.Module) -> Callable:
        def hook(act: nn.Module, args: tuple, weights: Tensor) -> None:
            if self._mine() and not self._full(name):
                self._store(name, "temporal", module, weights)
        return hook

    # ------------------------------------------------------------------ any model, decoding
    def _check_options(self, rows: RowIndex, max_bytes: int | None, dtype: torch.dtype | None) -> None:
        if rows is not None and not isinstance(rows, (slice, range, Tensor)):
            raise TypeError(f"rows must be a slice, range or integer index tensor, got {type(rows).__name__}")
        if isinstance(rows, slice) and rows.step == 0:
            raise ValueError(f"rows must be a slice with a nonzero step, got {rows!r}")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")

    def _reserve(self, name: str, numel: int, dtype: torch.dtype, *, count: bool = True) -> None:
        """Count ``numel`` more stored elements against ``max_bytes``; raise if they do not fit."""
        size = numel * (self.dtype or dtype).itemsize
        if self.max_bytes is not None and self._bytes + size > self.max_bytes:
            mib = 2**20
            raise RuntimeError(
                f"AttentionRecorder: recording {name!r} (call {self._calls.get(name, 0)}) needs "
                f"{size / mib:.1f} MiB more, {self._bytes / mib:.1f} MiB are stored and max_bytes="
                f"{self.max_bytes} ({self.max_bytes / mib:.1f} MiB); record fewer query rows (rows=), "
                f"average_heads=True, fewer modules (include=) or raise max_bytes")
        self._bytes += size if count else 0

    def _start_capture(self) -> None:
        """The module stack, the SDPA capture and the ``attend`` patches (undone on exit)."""
        self._stack = stack = ModuleStack(self.model)
        self._undo.append(stack.remove)
        for name, module in self.model.named_modules():
            if isinstance(module, MultiHeadAttention) and name in self.names:
                want = (lambda n=name: not self._full(n))
                record = (lambda w, n=name, m=module: self._store(n, "attention", m, w))
                forced = (lambda r=self._requests[name]: bool(r) and r[-1] is not None and not r[-1][0])
                self._undo.append(patch_attend(module, stack, want, record, forced))
        if self.sdpa:
            stack.mode = mode = SDPACapture(self._on_sdpa)
            mode.__enter__()
            self._undo.append(stack.leave_mode)

    def _on_sdpa(self, call: Any) -> None:
        top = self._stack.top()
        if not self._mine() or top is None or self._stack.covered:  # outside the model, or recorded by hooks
            return
        name, module = top
        if self._full(name) or (self.include is not None and not self.include(name, module)):
            return
        groups = packed_gqa(call, module)
        L = 1 if groups > 1 else call.query.size(-2)
        rows = self._rows_of(L, torch.device("cpu"))
        # refuse before computing anything; _store counts the stored tensor itself
        self._reserve(name, weights_numel(call, average_heads=self.average_heads, rows=rows, groups=groups),
                      call.query.dtype, count=False)
        weights = sdpa_weights(call, average_heads=self.average_heads, rows=rows, groups=groups)
        if name not in self.names:
            self.names.append(name)
        self._store(name, "attention", module, weights, shaped=True)

