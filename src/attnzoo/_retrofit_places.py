"""Where `add_attention` (`attnzoo.retrofit`) puts its gates, read from the model without a forward pass.

`find_places(model, where, gates)` lists each module whose output gets a gate, as a `Place`:
`(qualified name, module, layer, scopes)`, where `layer` is the layer that sets the channel
count C after it (None when none does) and `scopes` are the modules (innermost first) whose
convolutions tell the spatial rank when `layer` does not. `own_channels(layer)` then reads C
and `spatial_dims(layer, scopes)` the rank (1, 2 or 3) of the (B, C, *spatial) maps there.

* `where="blocks"`: every module that contains a convolution is traced with `torch.fx`, its
  children kept opaque (`_Opaque`); it is a residual block when its forward adds two tensors
  that both depend on its input, one of them through more convolutions than the other (the
  branch). The place is the module that produces the branch operand (`_residual_branches`);
  a branch that ends in a function, or in a module called more than once, raises
  `ValueError`. The modules fx cannot trace that may be blocks (`_may_be_block`) come back as
  descriptions, for the caller to warn or raise; none found at all raises `ValueError`.
* `where="convs"`: every convolution (`nn.Conv1d/2d/3d` and transposed).
* a callable `(name, module) -> bool`: every selected module.

`gates` are the qualified names of the gates already in the model; nothing inside them is a
place. The rules as users see them are in the docstring of `attnzoo.retrofit`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import fx, nn

_ADDS = {operator.add, operator.iadd, torch.add}


def own_channels(m: nn.Module) -> int | None:
    """Channel count C of the maps `m` outputs, where its type says (conv, norm, `Linear`), else None."""
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
    """Spatial dims of the maps `m` outputs, where its type says (Conv1d/2d/3d, BatchNorm2d, ...)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return len(m.kernel_size)
    for dims, types in ((1, (nn.BatchNorm1d, nn.InstanceNorm1d)), (2, (nn.BatchNorm2d, nn.InstanceNorm2d)),
                        (3, (nn.BatchNorm3d, nn.InstanceNorm3d))):
        if isinstance(m, types):
            return dims
    return None


def _out_layer(m: nn.Module) -> nn.Module | None:
    """The layer that sets `m`'s output channels: `m` itself, else its last registered layer with some."""
    for sub in [m, *reversed(list(m.modules())[1:])]:
        if own_channels(sub) is not None:
            return sub
    return None


def spatial_dims(layer: nn.Module | None, scopes: list[nn.Module]) -> int | None:
    """Spatial dims of the maps after `layer`: its own (a conv, a BatchNorm2d, ...), else those of
    every convolution in the first of `scopes` (innermost first) that has any, when they agree."""
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


Place = tuple[str, nn.Module, "nn.Module | None", list[nn.Module]]  # name, module, channel layer, dims scopes


def find_places(model: nn.Module, where: str | Callable[[str, nn.Module], bool], gates: list[str]
                ) -> tuple[list[Place], list[str]]:
    """Each module whose output gets a gate, and (for "blocks") the untraced modules that may be blocks;
    modules in `gates` (the qualified names of the gates already there) and inside them are skipped."""
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
