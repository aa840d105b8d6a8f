"""Record the attention maps of any model during forward passes, without touching its code.

>>> import torch, attnzoo as az
>>> from attnzoo.record import AttentionRecorder
>>> model = torch.nn.Sequential(az.SelfAttention(16, num_heads=4))
>>> with AttentionRecorder(model) as rec:
...     out, _ = model(torch.randn(2, 5, 16))
>>> rec["0"][0].shape                     # module "0": one tensor per call
torch.Size([2, 4, 5, 5])
>>> [(m.name, m.kind, m.module, m.call) for m in rec.maps]
[('0', 'attention', 'SelfAttention', 0)]

What is captured (``AttentionMap.tensor``) for each module found by recursion:

* kind ``"attention"``: ``attnzoo.MultiHeadAttention`` (and subclasses) and
  ``torch.nn.MultiheadAttention``: per-head weights (B, H, L, S); unbatched: (H, L, S).
  A pre-hook forces ``need_weights=True, average_attn_weights=False`` (keyword or
  positional); a hook returns to the caller what it asked for: ``None``, the head average
  ``weights.mean(dim=-3)`` or the per-head weights. attnzoo's ``weights_for`` stays as
  the caller set it, so only those query rows are recorded: (B, H, len(rows), S).
* ``"channel"``: ``SqueezeExcite``, ``ChannelAttention``: the gate (B, C, 1, 1);
  ``"spatial"``: ``SpatialAttention``: the gate (B, 1, H, W). A gate is the output of
  the module's ``gate_act`` sigmoid, so a ``CBAM`` gives records for ``<name>.channel``
  and ``<name>.spatial``, and a direct ``module.gate(x)`` is recorded too.
* ``"temporal"``: ``TemporalAttention``: its weights over time, (B, T) or (B, Q, T).

Outputs do not change: attnzoo modules always compute them with the same fused kernel, so
they are bit-identical (except in training with dropout > 0: the output then comes from
the dropped-out weights, which are recorded). ``nn.MultiheadAttention`` uses another kernel
when weights are asked for (and ``nn.TransformerEncoderLayer`` leaves its fast path when
hooked), so its outputs agree to float rounding. Hooks exist only inside ``with`` (removed
on exit, also on an exception). Recorders nest; re-entering one starts a fresh recording.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .attention import MultiHeadAttention

__all__ = ["AttentionMap", "AttentionRecorder"]

_GATES = [("channel", "SqueezeExcite"), ("channel", "ChannelAttention"), ("spatial", "SpatialAttention")]  # kind = file
_GATES.append(("temporal", "TemporalAttention"))  # weights = output of its gate_act (masked softmax)


@dataclass(frozen=True)
class AttentionMap:
    """One record: ``name`` (qualified), ``kind``, ``module`` (type name), ``call`` (0, 1, ...), ``tensor``."""

    name: str
    kind: str
    module: str
    call: int
    tensor: Tensor


def _gate_classes() -> list[tuple[type, str]]:
    """The gating classes that exist (imported lazily: a missing file or class is skipped)."""
    found = []
    for kind, cls in _GATES:
        with contextlib.suppress(ImportError, AttributeError):
            found.append((getattr(importlib.import_module(f"attnzoo.{kind}"), cls), kind))
    return found


class _Flag:
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


class AttentionRecorder:
    """Context manager recording the attention maps of every attention module in ``model``.

    Args:
        model: any ``nn.Module``, searched recursively (``model.named_modules()``).
        include: optional ``include(name, module) -> bool`` choosing among the modules found.
        detach: store ``tensor.detach()`` (default); ``False`` keeps the autograd graph.
        to_cpu: move stored tensors to the CPU (default: keep them on their device).
        max_calls: record at most this many calls per module; later calls run unrecorded
            (and attention modules then compute no extra weights).

    Results (kept after the ``with`` block): ``maps``, the ``AttentionMap`` list in call
    order; ``rec[name]``, that module's tensors, one per call; ``names``, the hooked
    modules' qualified names (the root model is ``""``); ``name in rec``; ``clear()``
    drops the records.
    """

    def __init__(self, model: nn.Module, *, include: Callable[[str, nn.Module], bool] | None = None,
                 detach: bool = True, to_cpu: bool = False, max_calls: int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if max_calls is not None and (isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1):
            raise ValueError(f"max_calls must be a positive int or None, got {max_calls!r}")
        self.model, self.include, self.detach, self.to_cpu, self.max_calls = model, include, detach, to_cpu, max_calls
        self.maps: list[AttentionMap] = []
        self.names: list[str] = []  # the hooked modules' qualified names, in model order
        self._calls: dict[str, int] = {}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> AttentionRecorder:
        if self._handles:
            raise RuntimeError("this AttentionRecorder is already active; nest a second one instead")
        self.clear()
        self.names = []
        classes = [(MultiHeadAttention, "attention"), (nn.MultiheadAttention, "attention"), *_gate_classes()]
        try:
            for name, module in self.model.named_modules():
                kind = next((k for cls, k in classes if isinstance(module, cls)), None)
                if kind is None or (self.include is not None and not self.include(name, module)):
                    continue
                if kind == "attention":
                    try:
                        self._hook_attention(name, module)
                    except KeyError:  # a subclass whose forward takes no need_weights: skip it
                        continue
                else:
                    self._handles.append(module.gate_act.register_forward_hook(self._gate_hook(name, kind, module)))
                self.names.append(name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Drop every record and restart the call counts."""
        self.maps.clear()
        self._calls.clear()

    def __getitem__(self, name: str) -> list[Tensor]:
        """The tensors recorded for module ``name``, one per call, in call order."""
        if name not in self.names:
            raise KeyError(f"no attention module named {name!r} was hooked; hooked: {self.names}")
        return [m.tensor for m in self.maps if m.name == name]

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def _full(self, name: str) -> bool:
        return self.max_calls is not None and self._calls.get(name, 0) >= self.max_calls

    def _store(self, name: str, kind: str, module: nn.Module, t: Tensor) -> None:
        t = t.detach() if self.detach else t
        t = t.to("cpu") if self.to_cpu else t
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        self.maps.append(AttentionMap(name, kind, type(module).__name__, call, t))

    def _hook_attention(self, name: str, module: nn.Module) -> None:
        need_weights, average = _Flag(module, "need_weights"), _Flag(module, "average_attn_weights")
        requests: list[tuple[bool, bool] | None] = []  # the callers' (need, average), innermost last

        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            requests.append(None if self._full(name) else (need_weights.get(args, kwargs), average.get(args, kwargs)))
            return None if requests[-1] is None else average.set(*need_weights.set(args, kwargs, True), False)

        def post(mod: nn.Module, args: tuple, output: Any) -> Any:
            if not requests or (request := requests.pop()) is None:
                return None
            out, weights = output
            self._store(name, "attention", mod, weights)
            need, avg = request
            return out, (None if not need else weights.mean(dim=-3) if avg else weights)

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        # prepend: a recorder entered later (inner) restores its caller's request first
        self._handles.append(module.register_forward_hook(post, prepend=True))

    def _gate_hook(self, name: str, kind: str, module: nn.Module) -> Callable:
        def hook(act: nn.Module, args: tuple, gate: Tensor) -> None:
            if not self._full(name):
                if kind == "channel" and gate.dim() == 2:  # (B, C), in case the view comes after
                    gate = gate.reshape(*gate.shape, 1, 1)
                self._store(name, kind, module, gate)
        return hook
