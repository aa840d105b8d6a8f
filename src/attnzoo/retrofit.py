"""Put attention gates into an existing CNN without editing its code.

>>> model = transformers.ResNetForImageClassification(config)        # any CNN
>>> az.add_attention(model, "se", where="blocks", init="identity")   # SE-ResNet, in place
>>> [name for name, gate in az.find_attention(model)]

``add_attention(model, kind, where=..., init=..., **kwargs)`` builds one gate
``create_attention(kind, C, **kwargs)`` per place (kind: a gate key of ``create_attention``,
``KINDS``; C = the channel count at that place) and applies it to the output there:
a forward hook on the module whose output is gated replaces that output ``y`` by
``gate(y)``. Gates act on (B, C, *spatial) feature maps. C is read without a forward pass:
a module's own ``out_channels``/``num_features``/``out_features``, else those of its last
registered layer that has one (for a residual branch, the nearest such module upstream of
the addition); if that reading is wrong, the first forward fails naming the place. The
spatial rank follows the same layer (``Conv1d`` -> a gate built with ``dims=1``,
``BatchNorm3d`` -> ``dims=3``); after a layer that does not tell (``GroupNorm``, ``Linear``)
it is that of the convolutions of the block (or selected module), else of the whole model,
when they all agree; otherwise pass ``dims=``. A module reached under two names (one conv
shared by two blocks) gets one gate, which its hook applies once on each of its calls.

Where (``where=``):

* ``"blocks"``: one gate on the residual branch of every residual block, just before the
  addition: ``act(gate(F(x)) + shortcut(x))``, the SE-ResNet placement (Hu et al. 2018,
  fig. 3). How blocks are found, in any architecture: every module that contains a
  convolution is traced with ``torch.fx`` (its children kept opaque), and a module is a
  residual block when its forward adds two tensors that both depend on its input, one of
  them through more convolutions than the other (the branch; the other is the shortcut,
  the input itself or a projection). The gate goes after the module that produces the
  branch operand of the addition. This is the structure of a residual block whatever
  its class or child names (it finds the blocks of ``transformers``' ResNet and
  ConvNeXt, torchvision's and timm's layouts alike); names such as "shortcut" or
  "downsample" were not used because a block without a projection often has no such
  child at all (ConvNeXt, or torchvision's ``downsample=None``). A module fx cannot
  trace (data-dependent ``if``) gets no gate; when it may be a residual block (it holds no
  block found and more than one conv, or one that keeps its channel count), an
  ``UntracedModuleWarning`` names it, and ``strict=True`` makes that a ``ValueError``.
  Untraceable stems, stages and model roots around found blocks are skipped silently.
* ``"convs"``: after every convolution (``nn.Conv1d/2d/3d`` and transposed): the "add SE
  after every convolution" of the attention survey (which warns that it may overfit).
* a callable ``(qualified name, module) -> bool``: after every selected module.

Init (``init=``): ``"default"`` keeps the gate's own initialisation (the gate then scales
features by about 0.5 at first, like an SE network trained from scratch). ``"identity"``
makes every gate exactly the identity at insertion, so a trained network's outputs are
unchanged bit for bit: each gate's ``init_identity()`` does it (for SE, ``fc2`` of a
channel gate, ``conv`` of a spatial gate, the gate's last layer is zeroed and its sigmoid
becomes ``2 * sigmoid``, whose value at 0 is exactly 1.0: range (0, 2), the scaled sigmoid
of NFNet's SE blocks; each gate's docstring says what it does). A gate that cannot start
as the identity (the parameter-free Gather-Excite) raises ``ValueError`` and the model is
left unchanged. The zeroed layer
gets a gradient at once (the others from the second step, as with any zero-initialised
last layer), so the gates learn during fine-tuning.

Where the gate lives: as a child ``attnzoo_gate`` of the gated module, so the original
parameter names (and pretrained state dicts) are unchanged; when the gated module is a
container whose forward would run a new child (``nn.Sequential``, ``ModuleList``,
``ModuleDict``), the gate is a child of the nearest ancestor that is not one, named
``attnzoo_gate_<path>`` (``<path>`` is the gated module's path below it, dots made
underscores). ``find_attention(model)`` lists every attnzoo gate by that name, and the name
says what it gates: ``a.b.attnzoo_gate`` gates ``a.b``; ``a.attnzoo_gate_layer`` gates
``a.layer``, an ``nn.Sequential`` (``a.attnzoo_gate_layer_1``: ``a.layer.1``, a nested one).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx, nn

from .factory import create_attention
from .gates import GATES, SelectiveKernel, SplitAttention
from .gates._act import ScaledSigmoid

__all__ = ["add_attention", "find_attention", "ScaledSigmoid", "UntracedModuleWarning"]

KINDS = ("se", "channel", "spatial", "cbam", "eca", "ese", "ge", "coord", "bam", "triplet", "srm", "gc", "nonlocal",
         "simam")
#: conv units that replace a convolution instead of gating one (their class says why)
_CONV_UNITS = {"sk": SelectiveKernel, "splat": SplitAttention}
INITS = ("default", "identity")
GATE_TYPES = GATES
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ADDS = {operator.add, operator.iadd, torch.add}


class _ApplyGate:
    """Forward hook replacing a module's output ``y`` by ``gate(y)`` (picklable, deep-copyable)."""

    def __init__(self, gate: nn.Module, place: str) -> None:
        self.gate, self.place = gate, place

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        try:
            return self.gate(output)
        except (TypeError, ValueError) as e:  # say which place's gate, not only what went wrong
            raise type(e)(f"the {type(self.gate).__name__} that add_attention put after {self.place!r}: {e}") from e


def find_attention(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every attnzoo gate in ``model`` (any class of ``attnzoo.gates.GATES``; a CBAM's parts are not
    listed separately), as ``(qualified name, module)`` in ``named_modules`` order.

    The name of a gate from ``add_attention`` says which module's output it gates:
    ``a.b.attnzoo_gate`` gates ``a.b``; ``a.attnzoo_gate_layer`` gates ``a.layer``, a
    container (``nn.Sequential``) that would run a child of its own as a layer, so its gate
    lives in ``a``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, GATE_TYPES) and not any(name.startswith(f"{g}.") for g, _ in found):
            found.append((name, m))
    return found


def _own_channels(m: nn.Module) -> int | None:
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    if isinstance(m, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*
        return m.num_features
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.LayerNorm):
        return m.normalized_shape[-1]
    return None


def _own_dims(m: nn.Module) -> int | None:
    """Spatial dims of the maps ``m`` outputs, where its type says (Conv1d/2d/3d, BatchNorm2d, ...)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return len(m.kernel_size)
    for dims, types in ((1, (nn.BatchNorm1d, nn.InstanceNorm1d)), (2, (nn.BatchNorm2d, nn.InstanceNorm2d)),
                        (3, (nn.BatchNorm3d, nn.InstanceNorm3d))):
        if isinstance(m, types):
            return dims
    return None


def _out_layer(m: nn.Module) -> nn.Module | None:
    """The layer that sets ``m``'s output channels: ``m`` itself, else its last registered layer with some."""
    for sub in [m, *reversed(list(m.modules())[1:])]:
        if _own_channels(sub) is not None:
            return sub
    return None


def _spatial_dims(layer: nn.Module | None, scopes: list[nn.Module]) -> int | None:
    """Spatial dims of the maps after ``layer``: its own (a conv, a BatchNorm2d, ...), else those of
    every convolution in the first of ``scopes`` (innermost first) that has any, when they agree."""
    if layer is not None and (dims := _own_dims(layer)) is not None:
        return dims
    for scope in scopes:
        found = {len(c.kernel_size) for c in scope.modules() if isinstance(c, nn.modules.conv._ConvNd)}
        if found:
            return found.pop() if len(found) == 1 else None
    return None


class _BranchError(ValueError):
    """A residual branch was found but no gate can be attached to it."""


class _Opaque(fx.Tracer):
    """Trace one module's own forward: every submodule is a single opaque call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _convs(m: nn.Module) -> int:
    return sum(isinstance(s, nn.modules.conv._ConvNd) for s in m.modules())


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, todo = set(), [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def _branch_layer(block: nn.Module, node: fx.Node) -> nn.Module | None:
    """Walk back from the branch operand to the nearest submodule with a channel count; its layer."""
    while node.op != "placeholder":
        if node.op == "call_module" and (layer := _out_layer(block.get_submodule(node.target))) is not None:
            return layer
        inputs = [a for a in node.all_input_nodes if a.op not in ("get_attr", "placeholder")]
        if not inputs:
            return None
        node = inputs[-1] if node.op != "call_module" else inputs[0]
    return None


def _residual_branches(block: nn.Module) -> list[tuple[str, nn.Module | None]]:
    """(submodule name of each residual branch's last module, the layer setting its channels)."""
    graph = _Opaque().trace(block)
    inputs = [n for n in graph.nodes if n.op == "placeholder"][:1]
    found = []
    for n in graph.nodes:
        is_add = (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_"))
        sides = [a for a in n.args[:2] if isinstance(a, fx.Node)] if is_add else []
        if len(sides) != 2 or not inputs:
            continue
        anc = [_ancestors(s) | {s} for s in sides]
        if not all(inputs[0] in a for a in anc):
            continue
        convs = [sum(_convs(block.get_submodule(x.target)) for x in a - b if x.op == "call_module")
                 for a, b in ((anc[0], anc[1]), (anc[1], anc[0]))]
        if max(convs) == 0 or convs[0] == convs[1]:
            continue
        branch = sides[0] if convs[0] > convs[1] else sides[1]
        if branch.op != "call_module":
            raise _BranchError(
                f"the residual branch of {type(block).__name__} ends in {branch.op} {branch.target!r}, "
                "not in a module, so no gate can be attached before the addition; pass where= as a callable"
            )
        calls = sum(1 for x in graph.nodes if x.op == "call_module" and x.target == branch.target)
        if calls > 1:
            raise _BranchError(
                f"{type(block).__name__}.{branch.target} ends a residual branch but is called {calls} times "
                "in its forward; a gate after it would act on every call; pass where= as a callable"
            )
        found.append((branch.target, _branch_layer(block, branch)))
    return found


class UntracedModuleWarning(UserWarning):
    """``add_attention(where="blocks")`` skipped a module that torch.fx could not trace
    although it may be a residual block (``strict=True`` makes this an error)."""


_Place = tuple[str, nn.Module, "nn.Module | None", list[nn.Module]]  # name, module, channel layer, dims scopes


def _places(model: nn.Module, where: str | Callable[[str, nn.Module], bool]
            ) -> tuple[list[_Place], list[str]]:
    """Each module whose output gets a gate, and (for "blocks") the untraced modules that may be blocks."""
    gates = [name for name, _ in find_attention(model)]
    modules = [(n, m) for n, m in model.named_modules() if not any(n == g or n.startswith(f"{g}.") for g in gates)]
    if callable(where):
        return [(n, m, _out_layer(m), [m, model]) for n, m in modules if where(n, m)], []
    if where == "convs":
        return [(n, m, m, []) for n, m in modules if isinstance(m, nn.modules.conv._ConvNd)], []
    places, untraceable, blocks = [], [], []
    for n, m in modules:
        if isinstance(m, (nn.modules.conv._ConvNd, nn.ModuleList, nn.ModuleDict)) or _convs(m) == 0:
            continue  # a conv or a container without forward is no block
        try:
            branches = _residual_branches(m)
        except _BranchError as e:
            raise ValueError(f"add_attention(where='blocks'): block {n or type(m).__name__!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - fx cannot trace every forward; report them all
            untraceable.append((n, m, f"{n or '<root>'!r} ({type(m).__name__}: {type(e).__name__})"))
            continue
        blocks += [n] if branches else []
        for b, layer in branches:
            name = f"{n}.{b}" if n else b
            places.append((name, model.get_submodule(name), layer, [m, model]))
    if not places:
        hint = f"; torch.fx could not trace: {', '.join(u for _, _, u in untraceable[:5])}" if untraceable else ""
        raise ValueError(
            f"add_attention(where='blocks') found no residual block in {type(model).__name__}: no module's "
            f"forward adds a convolutional branch to its own input{hint}. "
            "Use where='convs' or a callable (name, module) -> bool"
        )
    return places, [u for n, m, u in untraceable if _may_be_block(n, m, blocks)]


def _may_be_block(name: str, m: nn.Module, blocks: list[str]) -> bool:
    """An untraced module may hide a residual block unless it holds found blocks (a stage, an
    encoder, the model) or its convolutions cannot add up to one: a single conv that changes
    the channel count (a stem) cannot be a branch added to its own input."""
    if any(not name or b == name or b.startswith(f"{name}.") for b in blocks):
        return False
    convs = [c for c in m.modules() if isinstance(c, nn.modules.conv._ConvNd)]
    return len(convs) > 1 or convs[0].in_channels == convs[0].out_channels


def _identity_init(gate: nn.Module, kind: str) -> None:
    """Each gate class knows how it starts as the identity (``init_identity``), or raises why not."""
    try:
        gate.init_identity()
    except ValueError as e:
        raise ValueError(f"add_attention({kind!r}, init='identity'): {e}") from None


def _host(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Module to own the gate of ``name`` and the child name: never a container (see module docstring)."""
    parts = name.split(".") if name else []
    for k in range(len(parts), -1, -1):
        host = model.get_submodule(".".join(parts[:k]))
        if not isinstance(host, _CONTAINERS):
            rest = "_".join(parts[k:])
            return host, f"attnzoo_gate_{rest}" if rest else "attnzoo_gate"
    raise ValueError(f"cannot attach a gate after {name or '<root>'!r}: it and all its parents are containers "
                     "(nn.Sequential/ModuleList/ModuleDict); wrap the model in a module first")


def add_attention(
    model: nn.Module,
    kind: str,
    *,
    where: str | Callable[[str, nn.Module], bool] = "blocks",
    init: str = "default",
    strict: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Insert a ``kind`` gate at every place ``where`` selects in ``model`` (in place); return ``model``.

    Args:
        model: any ``nn.Module`` whose feature maps are (B, C, *spatial).
        kind: "se", "channel", "spatial" or "cbam" (see ``create_attention``).
        where: "blocks" (residual branch of every residual block, before the addition),
            "convs" (after every convolution) or a callable ``(name, module) -> bool``.
        init: "default" (the gate's own init) or "identity" (exact identity at insertion).
        strict: with ``where="blocks"``, raise ``ValueError`` instead of warning
            (``UntracedModuleWarning``) when a module that may be a residual block cannot be
            traced by torch.fx; no effect otherwise.
        **kwargs: passed to the gate, e.g. ``reduction=16``, ``kernel_size=7``; ``dims=``
            overrides the spatial dims read from the model.

    Raises ``ValueError`` naming what was not found (no residual block, no selected
    module, a channel count or spatial rank that cannot be read) rather than returning an
    unchanged model; on any error the model is left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(kind, str) and kind.lower() in _CONV_UNITS:
        raise ValueError(f"kind={kind!r}: {_CONV_UNITS[kind.lower()].retrofit_error}")
    if not isinstance(kind, str) or kind.lower() not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not callable(where) and where not in ("blocks", "convs"):
        raise ValueError(f"where must be 'blocks', 'convs' or a callable (name, module) -> bool, got {where!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    found, untraced = _places(model, where)
    if untraced and strict:
        raise ValueError(f"add_attention(where='blocks', strict=True) could not trace {', '.join(untraced)} with "
                         "torch.fx; each may be a residual block: gate it with where=callable, or make its "
                         "forward traceable")
    if not found:
        what = "no convolution" if where == "convs" else "the callable selected no module"
        raise ValueError(f"add_attention(where={where!r}) found nothing to gate in {type(model).__name__}: {what}")
    places, seen = [], set()
    for name, target, layer, scopes in found:
        if id(target) in seen:
            continue  # a module reached under two names (shared by two blocks): one gate, run on each call
        seen.add(id(target))
        if layer is None:
            raise ValueError(f"cannot tell the channel count after {name!r} ({type(target).__name__}); "
                             "select modules that end in a convolution or normalisation layer")
        dims = kwargs.get("dims", _spatial_dims(layer, scopes))
        if dims is None:
            raise ValueError(f"cannot tell whether the feature maps after {name!r} ({type(target).__name__}) are "
                             "1-, 2- or 3-D: pass dims=1, 2 or 3")
        if any(isinstance(h, _ApplyGate) for h in target._forward_hooks.values()):
            raise ValueError(f"{name!r} already has a gate from add_attention")
        places.append((name, target, _own_channels(layer), dims))
    gates = []  # build every gate before touching the model, so a bad kwarg changes nothing
    for name, target, channels, dims in places:
        p = next(target.parameters(), None)
        p = next(model.parameters(), None) if p is None else p
        kw = {} if p is None else {"device": p.device, "dtype": p.dtype}
        gates.append((create_attention(kind, channels, **kw, **{**kwargs, "dims": dims}), *_host(model, name)))
        if init == "identity":
            _identity_init(gates[-1][0], kind)
    for (name, target, _, _), (gate, host, child) in zip(places, gates):
        host.add_module(child, gate)
        target.register_forward_hook(_ApplyGate(gate, name))
    for u in untraced:
        warnings.warn(f"add_attention(where='blocks') could not trace {u} with torch.fx, so it got no gate "
                      "although it may be a residual block; gate it with where=callable, or pass strict=True "
                      "to make this an error", UntracedModuleWarning, stacklevel=2)
    return model
