"""Which modules the recorder records, and the per-module hooks it puts on them.

What a module is (``module_kind``), checked in this order:

* ``"attention"``: attnzoo's ``MultiHeadAttention`` (and subclasses) and
  ``torch.nn.MultiheadAttention``; recorded by forward hooks asking for per-head weights
  (B, H, L, S) (``hook_attention``).
* ``"temporal"``: ``TemporalAttention``; its weights over time (B, T) or (B, Q, T) are the
  output of its submodule ``gate_act`` (a masked softmax), recorded by a forward hook there.
* a gate, by protocol, not by class: any module whose class defines a method
  ``gate(x) -> Tensor``, the map that ``forward`` multiplies ``x`` by, and which has no
  such gate among its submodules (a gate made of gates, like ``CBAM``, is recorded through
  its parts). ``patch_gate`` wraps the method (an instance attribute, removed on exit), so
  ``forward`` and direct ``module.gate(x)`` calls are both recorded. The kind is the
  class attribute ``gate_kind`` when it has one, else read off the shapes: ``"channel"``
  when the gate keeps x's channels (dim 1) and is 1 everywhere after, (B, C, 1, 1);
  ``"spatial"`` when it has one channel, (B, 1, H, W); ``"gate"`` otherwise. A new gate
  class is so recorded without the recorder naming it. A class whose ``forward`` never
  forms its map (``NonLocal``: a fused kernel, no (N, M) matrix) says so with the class
  attribute ``forward_calls_gate = False``; its ``gate`` must then read only parameters
  (no running statistics), and the recorder calls it on the input of each forward
  (`gate_after_forward`). Either way a gate's own SDPA calls are not recorded again
  (`attnzoo.maps.capture.ModuleStack`): in and out of ``torch.no_grad()``, one record.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..attention import MultiHeadAttention
from ..temporal import TemporalAttention

__all__ = ["module_kind", "gate_kind", "patch_gate", "gate_after_forward", "hook_attention", "Flag", "claim_modules"]


def _is_gate(module: nn.Module) -> bool:
    """Whether ``module``'s class defines a ``gate`` method (a function, not a submodule)."""
    return inspect.isfunction(getattr(type(module), "gate", None)) and "gate" not in module._modules


def module_kind(module: nn.Module) -> str | None:
    """``"attention"``, ``"temporal"``, ``"gate"`` (a gate, see ``gate_kind``) or None (not recorded)."""
    if isinstance(module, (MultiHeadAttention, nn.MultiheadAttention)):
        return "attention"
    if isinstance(module, TemporalAttention):
        return "temporal"
    if _is_gate(module) and not any(_is_gate(m) for m in module.modules() if m is not module):
        return "gate"
    return None


def gate_kind(module: nn.Module, x: Any, gate: Tensor) -> str:
    """The kind of a gate record: the class's ``gate_kind``, else read off the shapes (see above)."""
    declared = getattr(type(module), "gate_kind", None)
    if isinstance(declared, str):
        return declared
    if isinstance(x, Tensor) and gate.dim() == x.dim() >= 2:
        if gate.size(1) == x.size(1) and all(n == 1 for n in gate.shape[2:]):
            return "channel"  # (B, C, 1, ...)
        if gate.size(1) == 1:
            return "spatial"  # (B, 1, *spatial)
    return "gate"


def patch_gate(module: nn.Module, record: Callable[[Any, Tensor], None]) -> Callable[[], None]:
    """Make ``module.gate(x)`` hand ``(x, gate)`` to ``record`` after it ran; returns the undo.

    The caller gets the gate unchanged. ``record`` decides whether to keep it (thread, calls).
    """
    previous = module.__dict__.get("gate")
    inner = module.gate  # the bound method, or an enclosing recorder's patch

    def gate(x: Any, *args: Any, **kwargs: Any) -> Any:
        out = inner(x, *args, **kwargs)
        if isinstance(out, Tensor):
            record(x, out)
        return out

    module.__dict__["gate"] = gate

    def undo() -> None:
        if previous is None:
            module.__dict__.pop("gate", None)
        else:
            module.__dict__["gate"] = previous
    return undo


def gate_after_forward(module: nn.Module, want: Callable[[], bool],
                       record: Callable[[Any, Tensor], None]) -> RemovableHandle | None:
    """For a gate whose ``forward`` does not call ``gate`` (class attribute ``forward_calls_gate =
    False``): a forward hook handing ``(x, type(module).gate(module, x))`` to ``record`` when
    ``want()``; None for any other module.

    ``x`` is the forward's first argument (or keyword ``x``). The class's own method is called,
    not the instance's patches: each recorder (nested ones too) records one map per forward.
    """
    if getattr(type(module), "forward_calls_gate", True) is not False:
        return None
    gate = type(module).gate

    def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        x = args[0] if args else kwargs.get("x")
        if isinstance(x, Tensor) and want():
            record(x, gate(mod, x))

    return module.register_forward_hook(hook, with_kwargs=True)


class Flag:
    """A bool argument of ``module.forward``, given by keyword, position or not; KeyError if none."""

    def __init__(self, module: nn.Module, name: str) -> None:
        params = list(inspect.signature(module.forward).parameters.values())
        p = {p.name: p for p in params}[name]
        self.name, self.default = name, p.default
        self.pos = params.index(p) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else len(params)

    def get(self, args: tuple, kwargs: dict) -> bool:
        return bool(args[self.pos] if self.pos < len(args) else kwargs.get(self.name, self.default))

    def set(self, args: tuple, kwargs: dict, value: bool) -> tuple[tuple, dict]:
        if self.pos < len(args):
            return args[: self.pos] + (value,) + args[self.pos + 1:], kwargs
        return args, {**kwargs, self.name: value}


# Modules being recorded, and the thread recording them: recorders nest within a thread, but
# two threads may not record the same module at once (their patches would undo each other's).
_CLAIMS: weakref.WeakKeyDictionary[nn.Module, tuple[int, int]] = weakref.WeakKeyDictionary()
_CLAIMS_LOCK = threading.Lock()


def claim_modules(model: nn.Module) -> Callable[[], None]:
    """Mark ``model``'s modules as recorded by this thread; returns the release.

    RuntimeError if another thread records one of them now.
    """
    me = threading.get_ident()
    modules = list(model.modules())
    with _CLAIMS_LOCK:
        for m in modules:
            owner = _CLAIMS.get(m)
            if owner is not None and owner[0] != me:
                raise RuntimeError(
                    f"AttentionRecorder: {type(m).__name__} modules of this model are being recorded in another "
                    f"thread (id {owner[0]}); a recorder records the thread that entered it, one thread per "
                    "model at a time (other threads may run the model meanwhile, unrecorded)")
        for m in modules:
            _CLAIMS[m] = (me, _CLAIMS.get(m, (me, 0))[1] + 1)

    def release() -> None:
        with _CLAIMS_LOCK:
            for m in modules:
                owner = _CLAIMS.get(m)
                if owner is not None and owner[1] > 1:
                    _CLAIMS[m] = (owner[0], owner[1] - 1)
                else:
                    _CLAIMS.pop(m, None)
    return release


def hook_attention(rec: Any, name: str, module: nn.Module) -> list:
    """Forward pre/post hooks on attention ``module`` for recorder ``rec`` -> its request stack.

    The pre-hook forces per-head weights (keeping each caller's own request on the returned
    stack, innermost last), the post-hook records them and returns what the caller asked
    for. Only ``rec``'s thread is touched. KeyError if ``forward`` has no ``need_weights``.
    """
    need_weights, average = Flag(module, "need_weights"), Flag(module, "average_attn_weights")
    has_rows = "weights_for" in inspect.signature(module.forward).parameters
    requests: list[tuple[bool, bool, bool] | None] = []  # callers' (need, average, slice rows), innermost last

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not rec._mine():
            return None
        if rec._full(name):
            requests.append(None)
            return None
        need, avg = need_weights.get(args, kwargs), average.get(args, kwargs)
        rows = rec.rows is not None and kwargs.get("weights_for") is None  # the recorder's rows apply
        if rows and has_rows and not need:  # compute only those rows
            L = _query_len(mod, args, kwargs)
            index = rec.rows if L is None else rec._rows_of(L, torch.device("cpu"))
            kwargs, rows = ({**kwargs, "weights_for": index} if index is not None else kwargs), False
        requests.append((need, avg, rows))
        return average.set(*need_weights.set(args, kwargs, True), False)

    def post(mod: nn.Module, args: tuple, output: Any) -> Any:
        if not rec._mine() or not requests or (request := requests.pop()) is None:
            return None
        out, weights = output
        need, avg, rows = request
        index = rec._rows_of(weights.size(-2), weights.device) if rows else None
        rec._store(name, "attention", mod, weights if index is None else weights[..., index, :])
        return out, (None if not need else weights.mean(dim=-3) if avg else weights)

    rec._add_hook(module.register_forward_pre_hook(pre, with_kwargs=True))
    # prepend: a recorder entered later (inner) restores its caller's request first
    rec._add_hook(module.register_forward_hook(post, prepend=True))
    return requests


def _query_len(module: nn.Module, args: tuple, kwargs: dict) -> int | None:
    """The number of query rows of an attention module's call, or None if it cannot tell."""
    q = args[0] if args else kwargs.get("query", kwargs.get("x"))
    if not isinstance(q, Tensor) or q.is_nested or q.dim() not in (2, 3):
        return None
    return q.size(0) if q.dim() == 2 or not getattr(module, "batch_first", True) else q.size(1)
