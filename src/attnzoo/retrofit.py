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

import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ._retrofit_places import find_places, own_channels, spatial_dims
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


class UntracedModuleWarning(UserWarning):
    """``add_attention(where="blocks")`` skipped a module that torch.fx could not trace
    although it may be a residual block (``strict=True`` makes this an error)."""


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
    found, untraced = find_places(model, where, [name for name, _ in find_attention(model)])
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
        dims = kwargs.get("dims", spatial_dims(layer, scopes))
        if dims is None:
            raise ValueError(f"cannot tell whether the feature maps after {name!r} ({type(target).__name__}) are "
                             "1-, 2- or 3-D: pass dims=1, 2 or 3")
        if any(isinstance(h, _ApplyGate) for h in target._forward_hooks.values()):
            raise ValueError(f"{name!r} already has a gate from add_attention")
        places.append((name, target, own_channels(layer), dims))
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
