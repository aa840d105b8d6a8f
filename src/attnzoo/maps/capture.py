"""See the weights of any ``F.scaled_dot_product_attention`` call, and of cached decoding steps.

Fused attention kernels never return their weights. This file gives
`AttentionRecorder` three pieces that make them visible without touching
a model's code (the recorder wires them together inside its ``with`` block):

* `ModuleStack`: forward pre/post hooks on every module of a model keep the stack of
  modules currently running, so a call can be named after the innermost module that made
  it (``named_modules`` naming, e.g. ``"encoder.layer.0.attention.self"``).
* `SDPACapture`: a ``TorchFunctionMode`` that lets every
  ``torch.nn.functional.scaled_dot_product_attention`` call run unchanged (the output IS the
  original call's output, so it is bit-identical), then hands the call's arguments to a
  callback. `sdpa_weights` recomputes the weights of such a call with attnzoo's lean
  path (`attnzoo.functional.attention_weights`):

  ```text
  query (*, H, L, E)   key (*, Hkv, S, E)   ->   weights (*, H, L, S)   [or (*, L, S) averaged]
  = softmax(Q Kᵀ · scale + mask), mask polarity of torch: bool True = may attend,
    float = added; is_causal top-left aligned; enable_gqa: query head h uses key head
    h // (H / Hkv). Rows that may attend to nothing are 0 (torch's kernel gives NaN).
  ```

  The weights are those before dropout (``dropout_p`` only changes the output).
* `patch_attend`: attnzoo's cached decoding (``attend_cached`` / ``attend_memory``)
  calls ``MultiHeadAttention.attend`` directly, never ``forward``, so forward hooks do not
  see it. An instance attribute ``attend`` (removed on exit) asks the original method for the
  per-head weights and hands them to a callback, one record per decoding step.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode, _pop_mode, _push_mode
from torch.utils.hooks import RemovableHandle

from ..attention import MultiHeadAttention
from .._weights import RowIndex, _row_index, attention_weights
from ..functional import fused_output
from .hooks import module_kind

__all__ = ["SDPACall", "ModuleStack", "SDPACapture", "packed_gqa", "sdpa_weights", "weights_numel", "patch_attend"]


def _sdpa_signature(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False) -> None:
    """The signature of ``F.scaled_dot_product_attention`` (binds a call's arguments)."""


_SIGNATURE = inspect.signature(_sdpa_signature)


class SDPACall(NamedTuple):
    """The arguments of one ``F.scaled_dot_product_attention`` call (value omitted)."""

    query: Tensor  # (*, H, L, E)
    key: Tensor  # (*, Hkv, S, E)
    attn_mask: Tensor | None
    is_causal: bool
    scale: float | None
    enable_gqa: bool

    @classmethod
    def bind(cls, args: tuple, kwargs: dict) -> SDPACall:
        a = _SIGNATURE.bind(*args, **kwargs)
        a.apply_defaults()
        p = a.arguments
        return cls(p["query"], p["key"], p["attn_mask"], bool(p["is_causal"]), p["scale"], bool(p["enable_gqa"]))


def packed_gqa(call: SDPACall, module: nn.Module) -> int:
    """How many query heads ``transformers`` folded into the query-length axis of this call, else 1.

    For a one-token step of a GQA model (``num_key_value_groups`` g > 1) ``transformers`` may
    call SDPA with the g query heads sharing a key/value head as g query rows: query
    (B, H/g, g, E), key (B, H/g, S, E). That is this call when the calling module has
    g > 1, its config's ``num_attention_heads`` is H, and the query has H/g heads and g rows.
    """
    g = getattr(module, "num_key_value_groups", None)
    heads = getattr(getattr(module, "config", None), "num_attention_heads", None)
    q, k = call.query, call.key
    if not isinstance(g, int) or g < 2 or not isinstance(heads, int) or call.enable_gqa or q.dim() < 3:
        return 1
    return g if q.size(-2) == g and q.size(-3) == k.size(-3) and q.size(-3) * g == heads else 1


def weights_numel(call: SDPACall, *, average_heads: bool, rows: RowIndex, groups: int = 1) -> int:
    """Elements of the weights ``sdpa_weights`` returns, known before computing them."""
    q = call.query
    L, S = (1 if groups > 1 else q.size(-2)), call.key.size(-2)
    n_rows = L if rows is None else _row_index(rows, L, torch.device("cpu"), name="rows").numel()
    if q.dim() < 3:
        return n_rows * S
    heads = 1 if average_heads else q.size(-3) * groups
    return math.prod(q.shape[:-3]) * heads * n_rows * S


def sdpa_weights(call: SDPACall, *, average_heads: bool = False, rows: RowIndex = None, groups: int = 1) -> Tensor:
    """softmax(Q Kᵀ · scale + mask) of one SDPA call: (*, H, R, S), or (*, R, S) head-averaged.

    ``R`` is the number of query ``rows`` chosen (all L by default), as ``weights_for``.
    ``groups`` > 1 (see ``packed_gqa``): the call's (*, H/g, g, S) weights are unfolded to
    (*, H, 1, S), query head h = key/value head h // g, as the model's own layout; ``rows``
    is then ignored (one query row).
    """
    q, k, mask = call.query, call.key, call.attn_mask
    if call.enable_gqa and q.dim() >= 3 and q.size(-3) != k.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)  # (*, H, S, E)
    if mask is not None and mask.dim() < 2:  # (S,) or a scalar: give it a row dim
        mask = mask.reshape(1, -1)
    if groups > 1:
        w = attention_weights(q, k, mask, call.is_causal, call.scale)  # (*, H/g, g, S)
        w = w.reshape(*w.shape[:-3], w.size(-3) * groups, 1, w.size(-1))  # (*, H, 1, S)
        return w.mean(dim=-3) if average_heads else w
    average = average_heads and q.dim() >= 3
    return attention_weights(q, k, mask, call.is_causal, call.scale, average_heads=average, rows=rows)


class SDPACapture(TorchFunctionMode):
    """While active (``with``), calls ``on_call(SDPACall)`` after every SDPA call has run.

    The call itself runs first and unchanged; its output is returned as is. Everything
    ``on_call`` computes runs with this mode switched off, so it is not intercepted again.
    """

    def __init__(self, on_call: Callable[[SDPACall], None]) -> None:
        super().__init__()
        self.on_call = on_call

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            self.on_call(SDPACall.bind(args, kwargs))
        return out


class ModuleStack:
    """The modules of ``model`` now running, outermost first, kept by forward pre/post hooks.

    ``top()`` is the innermost ``(name, module)`` or None outside the model's forward.
    ``covered`` counts running modules whose attention is recorded some other way (attnzoo's
    ``MultiHeadAttention`` and ``nn.MultiheadAttention``, recorded by their own hooks, and
    gates, recorded as their ``gate`` map: `attnzoo.maps.hooks`), so
    their internal SDPA calls are not recorded a second time. While such a module runs,
    ``mode`` (the recorder's `SDPACapture`, once set) is switched off when it is the
    innermost mode, so the module runs exactly as unrecorded: ``nn.MultiheadAttention``, for
    one, leaves its fast path when it sees any torch-function mode.

    Only the thread that built the stack is tracked (``mine()``); the hooks let other threads'
    calls pass untouched, so their modules never enter this stack nor touch this ``mode``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[tuple[str, nn.Module, bool, bool]] = []  # (name, module, mode switched off, covered)
        self.covered = 0
        self.mode: TorchFunctionMode | None = None
        self.thread = threading.get_ident()
        self._handles: list[RemovableHandle] = []
        try:
            for name, module in model.named_modules():
                # prepend: of nested recorders, the inner (newer) one switches its mode off first
                self._handles.append(module.register_forward_pre_hook(self._push(name, _covered(module)),
                                                                      prepend=True))
                self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        except BaseException:
            self.remove()
            raise

    def _push(self, name: str, covered: bool) -> Callable:
        def pre(module: nn.Module, args: tuple) -> None:
            if not self.mine():
                return
            off = covered and self.mode is not None and _get_current_function_mode() is self.mode
            if off:
                _pop_mode()
            self.stack.append((name, module, off, covered))
            self.covered += covered
        return pre

    def _pop(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self.mine():
            return
        for i in range(len(self.stack) - 1, -1, -1):  # normally the last entry
            if self.stack[i][1] is module:
                if self.stack[i][2]:
                    _push_mode(self.mode)
                self.covered -= self.stack[i][3]
                del self.stack[i]
                return

    def mine(self) -> bool:
        """Whether the calling thread is the one this stack tracks."""
        return threading.get_ident() == self.thread

    def leave_mode(self) -> None:
        """Pop ``mode`` (entered by the owner) off the owner thread's function-mode stack."""
        if self.mode is None:
            return
        if not self.mine():
            raise RuntimeError("an AttentionRecorder must be left in the thread that entered it "
                               f"(entered in thread {self.thread}, left in {threading.get_ident()})")
        if _get_current_function_mode() is not self.mode:
            raise RuntimeError("AttentionRecorder: its SDPA capture is not the innermost torch function mode "
                               "on leaving; leave modes entered inside the recorder's with block first")
        self.mode, mode = None, self.mode
        mode.__exit__(None, None, None)

    def top(self) -> tuple[str, nn.Module] | None:
        return self.stack[-1][:2] if self.stack else None

    def running(self, module: nn.Module) -> bool:
        return any(entry[1] is module for entry in self.stack)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.stack.clear()
        self.covered = 0


def _covered(module: nn.Module) -> bool:
    return isinstance(module, (MultiHeadAttention, nn.MultiheadAttention)) or module_kind(module) == "gate"


def patch_attend(module: MultiHeadAttention, stack: ModuleStack, want: Callable[[], bool],
                 record: Callable[[Tensor], None], forced: Callable[[], bool]) -> Callable[[], None]:
    """Make ``module.attend`` hand its per-head weights (B, H, L, S) to ``record``.

    Only calls from outside the module's ``forward`` (cached decoding) are recorded, and only
    while ``want()``; inside ``forward`` the recorder's forward hooks already record, so the
    call passes through, inside `attnzoo.functional.fused_output` when ``forced()``
    (the hooks asked for weights its caller did not want), which keeps the output the one
    an unrecorded call computes. The caller still gets exactly what it asked for. Returns
    the function that undoes the patch (restoring a previous instance attribute, if any).
    """
    previous = module.__dict__.get("attend")
    inner = module.attend  # the bound method, or an outer recorder's patch

    def attend(q: Tensor, k: Tensor, v: Tensor, *, need_weights: bool = False,
               average_attn_weights: bool = True, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        if not stack.mine():  # another thread: as unrecorded
            return inner(q, k, v, need_weights=need_weights, average_attn_weights=average_attn_weights, **kwargs)
        if stack.running(module) or not want():
            with fused_output() if stack.running(module) and forced() else contextlib.nullcontext():
                return inner(q, k, v, need_weights=need_weights, average_attn_weights=average_attn_weights, **kwargs)
        stack.covered += 1  # its SDPA call is this record, not a second one
        try:
            with fused_output() if not need_weights else contextlib.nullcontext():
                out, weights = inner(q, k, v, need_weights=True, average_attn_weights=False, **kwargs)
        finally:
            stack.covered -= 1
        record(weights)
        return out, (None if not need_weights else weights.mean(dim=-3) if average_attn_weights else weights)

    module.attend = attend

    def undo() -> None:
        if previous is None:
            module.__dict__.pop("attend", None)
        else:
            module.attend = previous
    return undo
