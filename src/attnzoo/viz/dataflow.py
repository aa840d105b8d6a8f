"""A module's data flow as a small graph: operations, and the tensors between them with shapes.

`mechanism_graph(module, example_input)` traces `module` with `torch.fx`, runs
`torch.fx.passes.shape_prop.ShapeProp` on the example input and returns a
`DataflowGraph`: nodes are the operations the traced code runs (module calls such as
`Linear 64→4`, functions and tensor methods such as `sigmoid`, `mul`, `mean`), edges are
the tensors passed between them, each labelled with its shape. The drawing
(`attnzoo.viz.diagram.mechanism_diagram`) is made from this graph only, and the graph
only from the trace, so the picture shows what the code does for that input.

Shapes: a dimension that equals the example's batch size `b` and becomes `b + 1` when
the example is re-run with one more sample is written `B` (`2B` for twice the batch, and
so on); every other dimension is the concrete size. So `(B, 64, 1, 1)` is the shape for
any batch, while a dimension that happens to equal `b` (e.g. CBAM's stacked avg/max pair
when `b = 2`) stays a number.

Folded, never invented: layout-only steps are drawn as part of the edge that passes
through them, not as nodes; the edge's shape is the one the next operation receives.
These are `view`, `view_as`, `reshape`, `flatten`, `unflatten`, `squeeze`, `unsqueeze`,
`contiguous`, `expand`, `expand_as`, the reading of tuple items and attributes
(`getitem`, `getattr`, e.g. `max(...).values`), anything that is not a tensor (sizes,
`dim()`, shape arithmetic), parameters and what is computed from parameters alone (a
slice of a packed weight appears in the label of the operation that uses it), dropout
that is inactive (eval mode or `p = 0`), and MultiHeadAttention's layout helpers (which
only move the batch dimension first and back). Transposes and permutes move data and
stay as nodes. Submodules of attnzoo are traced through (CBAM shows its channel and
spatial parts); `torch.nn` layers and attnzoo's activation modules are single nodes;
MultiHeadAttention's attention core is one node, "scaled dot-product attention".

Arguments of `forward` after the example inputs take their default values while
tracing (e.g. `padding_mask=None`, `need_weights=False`).
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

__all__ = ["DataflowGraph", "mechanism_graph"]

_LAYOUT = {"view", "view_as", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "contiguous",
           "expand", "expand_as", "getitem", "getattr"}
_DIM_OPS = {"mean", "sum", "max", "amax", "min", "amin", "std", "var", "softmax", "log_softmax", "cat", "stack",
            "cumsum", "norm", "logsumexp"}
_NAMES = {"_sdpa_pair": "scaled dot-product attention", "sdpa": "scaled dot-product attention",
          "scaled_dot_product_attention": "scaled dot-product attention",
          "_gaussian_attention": "softmax attention"}
_SHORT = {"truediv": "div"}
# Functions that only bring MHA's inputs to (B, L, E) and back: output i is argument i.
_QUIET = {"keepdim", "inplace", "out", "return_indices", "align_corners"}  # kwargs not shown
_PASS_THROUGH = {"_batch_first_inputs", "_restore_layout"}
_LEAVES = ("MaskedSoftmax", "ScaledSigmoid")  # attnzoo modules drawn as one operation


@dataclass(frozen=True)
class DataflowGraph:
    """Nodes `(id, label)` in trace order (inputs first, outputs last) and edges
    `(src, dst, shape)`; `to_json()` is the committed description of a diagram."""

    title: str
    nodes: list[tuple[str, str]] = field(default_factory=list)
    edges: list[tuple[str, str, str]] = field(default_factory=list)

    def labels(self) -> list[str]:
        """The node labels in order."""
        return [label for _, label in self.nodes]

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, one trailing newline)."""
        d = asdict(self)
        d["nodes"] = [list(n) for n in self.nodes]
        d["edges"] = [list(e) for e in self.edges]
        return json.dumps(d, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DataflowGraph:
        """Inverse of `to_json`."""
        d = json.loads(text)
        return cls(d["title"], [tuple(n) for n in d["nodes"]], [tuple(e) for e in d["edges"]])


class _Tracer(torch.fx.Tracer):
    """torch.nn layers and attnzoo's activations are leaves; other attnzoo modules are traced."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__name__ in _LEAVES or super().is_leaf_module(m, qualname)


def _inputs(example_input: Any) -> tuple[Tensor, ...]:
    xs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not xs or not all(isinstance(t, Tensor) for t in xs):
        raise TypeError("example_input must be a tensor or a tuple of tensors, got "
                        f"{type(example_input).__name__}" + (" with non-tensor items" if xs else " (empty)"))
    return tuple(xs)


def _trace(module: nn.Module, xs: tuple[Tensor, ...]) -> torch.fx.GraphModule:
    name = type(module).__name__
    params = list(inspect.signature(module.forward).parameters.values())
    concrete = {p.name: p.default for p in params[len(xs):] if p.default is not inspect.Parameter.empty}
    try:
        graph = _Tracer().trace(module, concrete_args=concrete or None)
    except Exception as exc:  # TraceError, or a check that needs real tensors
        raise ValueError(f"module {name} cannot be traced with torch.fx, so it cannot be diagrammed: "
                         f"{type(exc).__name__}: {exc}") from exc
    return torch.fx.GraphModule(module, graph, name)


def _shapes(gm: torch.fx.GraphModule, xs: tuple[Tensor, ...]) -> dict[str, Any]:
    with torch.no_grad():
        ShapeProp(gm).propagate(*xs)
    return {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}


def _fmt_shape(a: tuple[int, ...], b: tuple[int, ...] | None, batch: int) -> str:
    dims = []
    for i, d in enumerate(a):
        e = None if b is None else b[i]
        if e is not None and e != d and d % batch == 0 and e == d // batch * (batch + 1):
            k = d // batch
            dims.append("B" if k == 1 else f"{k}B")
        else:
            dims.append(str(d))
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _target_name(n: torch.fx.Node) -> str:
    if n.op == "call_function":
        return getattr(n.target, "__name__", str(n.target))
    return str(n.target)


def _fmt_arg(a: Any) -> str:
    if isinstance(a, float):
        return f"{a:.4g}"
    if isinstance(a, (tuple, list)):
        return "(" + ", ".join(_fmt_arg(x) for x in a) + ")"
    return str(a)


def _module_label(m: nn.Module) -> str:
    name = type(m).__name__
    if isinstance(m, nn.Linear):
        return f"{name} {m.in_features}→{m.out_features}"
    if isinstance(m, nn.modules.conv._ConvNd):
        k = "×".join(map(str, m.kernel_size))
        extra = [f"k {k}"] if set(m.kernel_size) != {1} else []
        extra += [f"dilation {m.dilation[0]}"] if set(m.dilation) != {1} else []
        extra += [f"groups {m.groups}"] if m.groups != 1 else []
        return f"{name} {m.in_channels}→{m.out_channels}" + ("\n" + ", ".join(extra) if extra else "")
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
        return name
    if isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return f"{name}({_fmt_arg(m.output_size)})"
    if isinstance(m, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd)):
        return f"{name}(k {_fmt_arg(m.kernel_size)}, stride {_fmt_arg(m.stride)})"
    if isinstance(m, nn.Softmax):
        return f"softmax dim={m.dim}"
    return name


def _call_label(n: torch.fx.Node, meta: dict[str, Any]) -> str:
    name = _target_name(n)
    if name in _NAMES or name.startswith("_"):
        return _NAMES.get(name, name.lstrip("_"))
    label = _SHORT.get(name, name)
    extra, weight = [], None
    # args[0] is the tensor (or the tuple for cat/stack), except in e.g. `1 + x`: add(1, x)
    rest = n.args[1:] if n.op == "call_method" or (n.args and _has_node(n.args[0])) else n.args
    for i, a in enumerate(rest):
        if _has_node(a):
            tm = meta.get(a.name) if isinstance(a, torch.fx.Node) else None
            if name == "linear" and i == 0 and isinstance(tm, TensorMetadata):
                weight = tuple(tm.shape)
            continue
        if a is not None:
            extra.append(("dim=" if i == 0 and name in _DIM_OPS else "") + _fmt_arg(a))
    extra += [f"{k}={_fmt_arg(v)}" for k, v in n.kwargs.items()
              if k not in _QUIET and not k.startswith("_") and v is not None and not _has_node(v)]
    if weight is not None:
        return f"linear {weight[1]}→{weight[0]}"
    return f"{label} " + ", ".join(extra) if extra else label


def _has_node(a: Any) -> bool:
    if isinstance(a, (tuple, list)):
        return any(_has_node(x) for x in a)
    return isinstance(a, torch.fx.Node)


def _is_tensor(tm: Any) -> bool:
    return isinstance(tm, TensorMetadata)


def mechanism_graph(module: nn.Module, example_input: Tensor | tuple[Tensor, ...], *,
                    title: str | None = None) -> DataflowGraph:
    """Trace `module` on `example_input` (a tensor or a tuple of `forward`'s leading tensor
    arguments) and return its `DataflowGraph`; see the module docstring for what is folded.

    `module` itself is not run or changed (a copy is traced and run).
    Raises `TypeError` for a non-module or a non-tensor example, and `ValueError` naming
    the module's class when `torch.fx` cannot trace it or the example does not run.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    xs = _inputs(example_input)
    gm = _trace(copy.deepcopy(module), xs)  # a copy: running it must not move BatchNorm statistics
    cls = type(module).__name__
    try:
        meta = _shapes(gm, xs)
        batch = xs[0].shape[0] if xs[0].dim() > 0 else 0
        bigger = None
        if batch > 0 and all(t.dim() > 0 and t.shape[0] == batch for t in xs):
            bigger = _shapes(gm, tuple(torch.cat([t, t[:1]]) for t in xs))
    except Exception as exc:
        raise ValueError(f"module {cls} does not run on example_input under torch.fx "
                         f"({type(exc).__name__}: {exc})") from exc
    mods = dict(gm.named_modules())
    nodes: list[tuple[str, str]] = []
    edges: list[tuple[str, str, str]] = []
    kept: dict[str, str] = {}  # fx node name -> diagram node id
    src: dict[str, Any] = {}  # fx node name -> kept fx name it passes through (or None), or a list for tuples

    def shape(n: torch.fx.Node, item: int | None = None) -> str:
        tm, tb = meta.get(n.name), None if bigger is None else bigger.get(n.name)
        if item is not None:
            tm, tb = tm[item], None if tb is None else tb[item]
        return _fmt_shape(tuple(tm.shape), None if tb is None else tuple(tb.shape), batch or 1)

    def resolve(a: torch.fx.Node) -> str | None:
        s = src.get(a.name)
        return s if isinstance(s, str) or s is None else None

    def add(n: torch.fx.Node, label: str) -> None:
        nid = f"n{len(nodes)}"
        nodes.append((nid, label))
        kept[n.name] = nid
        src[n.name] = n.name
        for a in n.all_input_nodes:
            p = resolve(a)
            if p is not None and _is_tensor(meta.get(a.name)):
                e = (kept[p], nid, shape(a))
                if e not in edges:
                    edges.append(e)

    for n in gm.graph.nodes:
        tm = meta.get(n.name)
        tensor_ins = [a for a in n.all_input_nodes if src.get(a.name) is not None]
        if n.op == "placeholder":
            if _is_tensor(tm):
                add(n, n.target.lstrip("*"))
            else:
                src[n.name] = None
            continue
        if n.op == "output":
            outs = n.args[0] if isinstance(n.args[0], (tuple, list)) else (n.args[0],)
            for i, a in enumerate(outs):
                if isinstance(a, torch.fx.Node) and resolve(a) is not None and _is_tensor(meta.get(a.name)):
                    nid = f"n{len(nodes)}"
                    nodes.append((nid, "output" if len(outs) == 1 else f"output {i}"))
                    edges.append((kept[resolve(a)], nid, shape(a)))
            continue
        if n.op == "get_attr" or not tensor_ins:
            src[n.name] = None  # parameters, constants, sizes: no data from the input
            continue
        name = _target_name(n)
        if name in _PASS_THROUGH:
            firsts = [a for a in n.args if isinstance(a, torch.fx.Node)]
            mapped, last = [], None
            for a in firsts[:4]:
                last = resolve(a) if resolve(a) is not None and _is_tensor(meta.get(a.name)) else last
                mapped.append(last)
            src[n.name] = mapped
            continue
        if name in ("getitem", "getattr") and isinstance(src.get(n.args[0].name), list):
            items = src[n.args[0].name]
            src[n.name] = items[n.args[1]] if isinstance(n.args[1], int) and n.args[1] < len(items) else None
            continue
        if not _is_tensor(tm) and not isinstance(tm, (tuple, list)):
            src[n.name] = None  # shape arithmetic on a tensor's sizes
            continue
        module_ = mods.get(n.target) if n.op == "call_module" else None
        if name in _LAYOUT or (isinstance(module_, nn.Dropout) and (not module_.training or module_.p == 0)):
            src[n.name] = resolve(tensor_ins[0])
            continue
        add(n, _module_label(module_) if module_ is not None else _call_label(n, meta))
    used = {e[0] for e in edges} | {e[1] for e in edges}
    nodes = [nd for nd in nodes if nd[0] in used]
    return DataflowGraph(title or cls, nodes, edges)
