"""Capture a PyTorch module as an aten-level FX graph on the meta device, and the placement algebra
(DTensor's ``Replicate`` / ``Shard(dim)`` / ``Partial`` per mesh axis) the sharding ILP is built from.

**Capture.** ``make_fx`` in fake mode over ``torch.func.functional_call`` makes every parameter and
buffer a placeholder, so nothing is allocated (the module lives on ``meta``); this is AutoParallel's
front end (Meta, github.com/meta-pytorch/autoparallel). By default (``joint=True``) the traced function
is a training step: forward, a scalar loss (a Hugging Face model's own next-token cross-entropy, else
the mean square of the output) and ``torch.autograd.grad(loss, params)``, so the graph holds the
backward ops too and outputs ``(loss, *grads)``; ``Captured.grads`` maps each gradient output to its
parameter. ``joint=False`` traces the forward pass alone. Decoder layers (module paths matching
``repeat_pattern``) are tagged on every node through ``torch.fx.traceback.annotate``: from module
hooks in the forward pass and, for the backward, from autograd hooks on each layer's output and input
gradients (:class:`_LayerTags`), so identical layers, forward and backward, can share ILP variables.

**Placements.** One placement per mesh axis: ``R`` (replicate), ``P`` (partial sum), or
``("S", dim, sf)``: shard ``dim`` where ``sf`` > 1 means a *strided* shard (DTensor's
``_StridedShard(dim, split_factor=sf)``): the sharded coordinate lies after ``sf`` major elements of
the dim — what a merge ``[b, H] -> [b*H]`` of a head-sharded tensor gives. Tracking ``sf`` lets a
later split ``[b*H] -> [b, H]`` put the shard back on ``H`` (GSPMD's reshape sharding propagation,
Xu et al. 2021, §3.5, and DTensor's view rules do the same with dim groups).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from math import prod
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = [
    "Captured",
    "P",
    "Placement",
    "R",
    "Spec",
    "broadcast_dims",
    "capture",
    "capture_hf",
    "data_args",
    "follow_axis",
    "is_follower",
    "nbytes_of",
    "row_all_reduces",
    "shape_of",
    "spec_str",
]

Placement = tuple  # ("R",) | ("P",) | ("S", dim, sf)
Spec = tuple  # one Placement per mesh axis
R: Placement = ("R",)
P: Placement = ("P",)

aten = torch.ops.aten
VIEWS = {
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.alias.default,
}
# views and layout changes that launch no kernel: a consumer reads their input's values
FREE = VIEWS | {
    aten.t.default,
    aten.transpose.int,
    aten.permute.default,
    aten.expand.default,
    aten.slice.Tensor,
    aten.detach.default,
}
COPIES = {aten.clone.default, aten._to_copy.default, aten.detach.default, aten.lift_fresh_copy.default}
LINEAR_UNARY = {aten.neg.default, aten.mul.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar}
SUMS = {aten.mean.dim, aten.sum.dim_IntList, aten.mean.default, aten.sum.default}  # linear reductions
SOFTMAXES = {aten._softmax.default, aten._safe_softmax.default, aten._log_softmax.default}
SOFTMAX_BACKWARDS = {aten._softmax_backward_data.default, aten._log_softmax_backward_data.default}
REDUCTIONS = SUMS | SOFTMAXES | {aten.amax.default}
FACTORIES = {
    aten.ones_like.default,
    aten.zeros_like.default,
    aten.empty_like.default,
    aten.full_like.default,
    aten.new_ones.default,
    aten.new_zeros.default,
    aten.new_empty.default,
    aten.new_full.default,
}


@dataclass(frozen=True)
class Captured:
    """A captured graph; ``params`` maps placeholder name -> parameter/buffer FQN (the rest are
    inputs); ``layer`` maps node name -> repeated-layer index (absent outside any layer). A joint
    graph also has ``loss`` (the name of the scalar loss node, graph output 0) and ``grads``: graph
    output node name -> the placeholder name of the parameter it is the gradient of."""

    graph: torch.fx.Graph
    params: dict[str, str]
    buffers: frozenset[str]
    layer: dict[str, int]
    grads: dict[str, str] = field(default_factory=dict)
    loss: str | None = None

    @property
    def joint(self) -> bool:
        """Whether this is a forward + backward graph."""
        return bool(self.grads)


class _LayerTags:
    """Tags traced nodes with ``custom["layer"] = i`` while layer ``i`` runs, forward and backward.

    Forward: module pre/post hooks. Backward (``joint``): autograd hooks on the layer's output tensor
    (its gradient is ready when layer ``i``'s backward starts) and input tensor (ready when it ends).
    The hidden state between two layers carries layer ``i - 1``'s "enter" hook before layer ``i``'s
    "exit" hook, so tags do not nest: entering a layer closes the open one, and an exit only closes
    its own layer."""

    def __init__(self) -> None:
        self.open: tuple[int, Any] | None = None

    def enter(self, i: int) -> None:
        from torch.fx import traceback as fx_traceback

        self.exit(None)
        ctx = fx_traceback.annotate({"layer": i})
        ctx.__enter__()
        self.open = (i, ctx)

    def exit(self, i: int | None) -> None:
        if self.open is not None and (i is None or self.open[0] == i):
            self.open[1].__exit__(None, None, None)
            self.open = None


def _first_tensor(value: Any) -> torch.Tensor | None:
    value = value[0] if isinstance(value, (tuple, list)) and value else value
    return value if isinstance(value, torch.Tensor) and value.requires_grad else None


def _layer_hooks(module: torch.nn.Module, pattern: str, tags: _LayerTags, joint: bool) -> list[Any]:
    """Hooks tagging nodes created inside ``module.<...>layers.<i>`` (module docstring of
    :class:`_LayerTags`); in ``joint`` mode also the backward nodes of the layer."""
    handles = []
    for name, sub in module.named_modules():
        match = re.search(pattern + "$", name)
        if not match:
            continue

        def pre(_m: Any, args: Any, i: int = int(match.group(1))) -> None:
            if joint and (x := _first_tensor(args)) is not None:
                x.register_hook(lambda _g: tags.exit(i))
            tags.enter(i)

        def post(_m: Any, _a: Any, out: Any, i: int = int(match.group(1))) -> None:
            tags.exit(i)
            if joint and (y := _first_tensor(out)) is not None:
                y.register_hook(lambda _g: tags.enter(i))

        handles += [sub.register_forward_pre_hook(pre), sub.register_forward_hook(post)]
    return handles


def _default_loss(out: Any, pick: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """The model's own loss when it returns one (Hugging Face ``labels=``), else the float32 mean of
    the squared picked output (a regression loss against zero: nonlinear, so its gradient needs the
    complete output, unlike a plain sum or mean, which a partial output could feed directly)."""
    loss = getattr(out, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else pick(out).float().pow(2).mean()


def capture(
    module: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    kwargs: dict | None = None,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    repeat_pattern: str = r"layers\.(\d+)",
    joint: bool = True,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
) -> Captured:
    """Trace ``module(*inputs, **kwargs)`` (meta tensors) to an aten graph with parameters (and the
    inputs and tensor-valued ``kwargs``) as placeholders.

    ``joint=False``: the forward graph; its output is ``output_fn(out)`` (default: ``logits``, the
    first tuple element, or the output itself). ``joint=True``: forward, a scalar loss
    ``loss_fn(out)`` (default: the model's own ``out.loss`` when it has one, e.g. a Hugging Face
    model called with ``labels=``, else the float32 mean of the squared picked output) and
    ``torch.autograd.grad(loss, params)`` of every parameter that requires grad, all traced by
    ``make_fx`` in fake mode: the graph outputs ``(loss, *grads)`` and ``Captured.grads`` says which
    output is which parameter's gradient."""
    from torch.fx import traceback as fx_traceback

    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    trainable = [k for k, v in module.named_parameters() if v.requires_grad] if joint else []
    pick = output_fn or (lambda out: getattr(out, "logits", out[0] if isinstance(out, tuple) else out))

    kwargs = dict(kwargs or {})
    traced = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}  # become placeholders too
    n_in = len(inputs)

    def forward(state: dict, *args: torch.Tensor) -> Any:
        kw = {**kwargs, **dict(zip(traced, args[n_in:], strict=True))}
        return torch.func.functional_call(module, state, args[:n_in], kw)

    def fn(state: dict, *args: torch.Tensor) -> Any:
        return pick(forward(state, *args))

    def joint_fn(state: dict, *args: torch.Tensor) -> Any:
        out = forward(state, *args)
        loss = loss_fn(out) if loss_fn else _default_loss(out, pick)
        grads = torch.autograd.grad(loss, [state[k] for k in trainable], allow_unused=True)
        return (loss, *grads)

    tags = _LayerTags()
    handles = _layer_hooks(module, repeat_pattern, tags, joint)
    try:
        with fx_traceback.preserve_node_meta(), torch.enable_grad():
            try:
                gm = make_fx(joint_fn if joint else fn, tracing_mode="fake")(state, *inputs, *traced.values())
            finally:  # a tag still open (a first layer whose input needs no gradient never exits)
                tags.exit(None)  # closes inside the node-metadata context that opened it
    finally:
        for h in handles:
            h.remove()
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    params = {n.name: fqn for n, fqn in zip(holders, state, strict=False)}
    layer = {n.name: n.meta["custom"]["layer"] for n in gm.graph.nodes if "layer" in n.meta.get("custom", {})}
    for n in holders[: len(state)]:
        if match := re.search(repeat_pattern + r"\.", params[n.name]):
            layer[n.name] = int(match.group(1))
    grads, loss = {}, None
    if joint:
        outs = torch.utils._pytree.tree_leaves(next(iter(gm.graph.find_nodes(op="output"))).args)
        by_fqn = {fqn: name for name, fqn in params.items()}
        loss = outs[0].name
        for grad, fqn in zip(outs[1:], trainable, strict=True):
            if isinstance(grad, torch.fx.Node) and grad.name not in grads:
                grads[grad.name] = by_fqn[fqn]
    return Captured(gm.graph, params, frozenset(dict(module.named_buffers())), layer, grads, loss)


# model types whose decoder layers are all alike (no per-layer pattern in the code or the config):
# their graph is traced with UNROLL_FROM layers and unrolled (:func:`unroll`)
UNIFORM_LAYERS = ("llama", "mistral", "qwen2", "qwen3")
UNROLL_FROM = 3  # a first layer, a middle layer (the template) and a last layer


def capture_hf(
    config: dict, batch: int, seq: int, dtype: torch.dtype = torch.bfloat16, joint: bool = True
) -> Captured:
    """A Hugging Face causal LM built from a config dict on ``meta`` (no hub access), traced on
    ``input_ids`` of shape ``(batch, seq)`` with eager SDPA math (``use_cache=False``). ``joint``: the
    loss is the model's own next-token cross-entropy with ``labels=input_ids`` (float32 log-softmax
    and NLL, mean over tokens), and the graph holds the backward (:func:`capture`). A model of
    ``UNIFORM_LAYERS`` with more than ``UNROLL_FROM`` layers and no per-layer list in its config is
    traced with ``UNROLL_FROM`` layers and unrolled to all of them (:func:`unroll`: the same graph,
    node for node, in a tenth of the time for 32 layers); a trace whose layers turn out not alike is
    traced again in full."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    layers = int(config.get("num_hidden_layers") or 0)
    per_layer = any(isinstance(v, list | tuple) and len(v) == layers for v in config.values())
    short = config.get("model_type") in UNIFORM_LAYERS and layers > UNROLL_FROM and not per_layer

    def trace(n: int) -> Captured:
        cfg = AutoConfig.for_model(**(config | {"num_hidden_layers": n}))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
        ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
        return capture(model, [ids], {"use_cache": False, **({"labels": ids} if joint else {})}, joint=joint)

    if short:
        unrolled = unroll(trace(UNROLL_FROM), layers)
        if unrolled is not None:
            return unrolled
    return trace(layers)


def _layer_runs(cap: Captured) -> dict[tuple[int, str], list[Any]] | None:
    """Each layer's placeholders (``param``), forward nodes (``fwd``) and backward nodes (``bwd``),
    each one contiguous run of the graph, the runs of a kind in layer order (backward: descending);
    None when the graph is not so laid out."""
    runs: list[tuple[int, str, list[Any]]] = []
    for node in cap.graph.nodes:
        i = cap.layer.get(node.name)
        if i is None:
            continue
        kind = "param" if node.op == "placeholder" else "op"
        if runs and runs[-1][:2] == (i, kind) and runs[-1][2][-1].next is node:
            runs[-1][2].append(node)
        else:
            runs.append((i, kind, [node]))
    out: dict[tuple[int, str], list[Any]] = {}
    for i, kind, nodes in runs:
        if kind == "op":
            kind = "bwd" if (i, "fwd") in out else "fwd"
        if (i, kind) in out:
            return None
        out[(i, kind)] = nodes
    layers = sorted({i for i, _ in out})
    for kind, step in (("param", 1), ("fwd", 1), ("bwd", -1)):
        order = [i for i, k in out if k == kind]  # in graph order
        if order and order != layers[::step]:
            return None
    return out


def _leaves(node: Any) -> list[Any]:
    return torch.utils._pytree.tree_leaves((node.args, node.kwargs))


def _signature(node: Any, at: dict[Any, tuple[int, str, int]]) -> tuple:
    """What makes two layers' nodes at one position alike: op, target (a placeholder's is only its
    name), value's shape and dtype, and per argument its layer offset, kind and position (a node of a
    layer), the node itself (outside any layer) or its value."""
    i = at[node][0]
    val = node.meta.get("val")
    out: list[Any] = [
        node.op,
        "" if node.op == "placeholder" else str(node.target),
        tuple(getattr(val, "shape", ()) or ()),
        str(getattr(val, "dtype", "")),
    ]
    for leaf in _leaves(node):
        if isinstance(leaf, torch.fx.Node):
            out.append(("layer", at[leaf][0] - i, *at[leaf][1:]) if leaf in at else ("outside", leaf.name))
        else:
            out.append(("value", repr(leaf)))
    return tuple(out)


def unroll(cap: Captured, layers: int) -> Captured | None:
    """The graph of the same model with ``layers`` decoder layers, from ``cap``, traced with
    ``UNROLL_FROM`` (a first, a middle and a last layer). The middle layer's placeholders, forward and
    backward nodes are copied for layers 1 .. layers − 2, each copy's arguments moved by the layer
    offset the middle layer's own have (an argument in traced layer j of a node in traced layer i
    becomes layer t + j − i of copy t); the last layer becomes layer ``layers − 1``; every other node
    is kept, in the order the full trace has (forward layers ascending, backward descending). None
    when the traced layers are not alike: the same ops on the same shapes position by position, the
    same arguments outside the layers, and the same layer offsets, but where the first layer reads
    the prefix instead of a previous layer or the last layer reads the head instead of a next one."""
    runs = _layer_runs(cap)
    if runs is None or {i for i, _ in runs} != set(range(UNROLL_FROM)) or layers <= UNROLL_FROM:
        return None
    at = {node: (i, kind, p) for (i, kind), nodes in runs.items() for p, node in enumerate(nodes)}
    kinds = sorted({k for _, k in runs})
    for kind in kinds:
        first, middle, last = (runs.get((i, kind), []) for i in range(UNROLL_FROM))
        if not len(first) == len(middle) == len(last):
            return None
        for a, b, c in zip(first, middle, last, strict=True):
            sig_a, sig_b, sig_c = (_signature(n, at) for n in (a, b, c))
            if not (_edge_alike(sig_a, sig_b, -1) and _edge_alike(sig_c, sig_b, +1)):
                return None
    graph = torch.fx.Graph()
    new: dict[tuple[int, str, int], Any] = {}  # (layer of the unrolled graph, kind, position) -> node
    kept: dict[Any, Any] = {}  # a node outside the layers -> its copy
    last = layers - 1
    moved = {0: 0, 1: None, 2: last}  # traced layer -> unrolled layer, for nodes outside the layers

    def copy(node: Any, t: int) -> Any:
        i = at[node][0] if node in at else None

        def arg(b: Any) -> Any:
            if b not in at:
                return kept[b]
            j, kind, p = at[b]
            target = t + j - i if i is not None else moved[j]
            if target is None:
                raise _NotUnrollable
            return new[(target, kind, p)]

        return graph.node_copy(node, arg)

    layer: dict[str, int] = {}
    params: dict[str, str] = {}
    buffers: set[str] = set()
    pattern = re.compile(r"layers\.(\d+)\.")

    def holds(copied: Any, old: Any, t: int | None) -> None:
        """``copied`` is the placeholder of ``old``'s parameter or buffer in layer ``t``."""
        if old.name in cap.params:
            fqn = cap.params[old.name]
            params[copied.name] = fqn if t is None else pattern.sub(f"layers.{t}.", fqn, count=1)
            if fqn in cap.buffers:
                buffers.add(params[copied.name])

    try:
        done: set[tuple[int, str]] = set()
        out_node = None
        for node in cap.graph.nodes:
            if node.op == "output":
                out_node = node
                continue
            if node not in at:
                kept[node] = copy(node, 0)
                holds(kept[node], node, None)
                continue
            i, kind, _ = at[node]
            if (i, kind) in done:
                continue
            done.add((i, kind))
            targets = {0: [0], 2: [last]}.get(i) or list(range(1, last))
            for t in targets[::-1] if kind == "bwd" else targets:
                for p, old in enumerate(runs[(i, kind)]):
                    new[(t, kind, p)] = copy(old, t)
                    layer[new[(t, kind, p)].name] = t
                    holds(new[(t, kind, p)], old, t)
        if out_node is None:
            return None
        leaves = torch.utils._pytree.tree_leaves(out_node.args)
        middle = [
            k for k, b in enumerate(leaves) if isinstance(b, torch.fx.Node) and at.get(b, (None,))[0] == 1
        ]
        if middle and middle != list(range(middle[0], middle[-1] + 1)):
            return None
        outputs, grads = [], {}
        for k, b in enumerate(leaves):
            if middle and k == middle[0]:
                block = leaves[middle[0] : middle[-1] + 1]
                pairs = [(old, new[(t, *at[old][1:])], t) for t in range(1, last) for old in block]
            elif middle and middle[0] < k <= middle[-1]:
                continue
            elif isinstance(b, torch.fx.Node):
                target = (moved[at[b][0]], *at[b][1:]) if b in at else None
                pairs = [(b, new[target] if target else kept[b], None)]
            else:
                outputs.append(b)
                continue
            for old, copied, t in pairs:
                outputs.append(copied)
                holder = cap.grads.get(old.name)
                if holder is None or copied.name in grads:
                    continue
                ph = next(n for n in cap.graph.nodes if n.name == holder)
                if ph in at:
                    j, kind, p = at[ph]
                    grads[copied.name] = new[(t if j == 1 else moved[j], kind, p)].name
                else:
                    grads[copied.name] = kept[ph].name
        graph.output(tuple(outputs))
    except _NotUnrollable:
        return None
    loss = kept[next(n for n in cap.graph.nodes if n.name == cap.loss)].name if cap.loss else None
    return Captured(graph, params, frozenset(buffers), layer, grads, loss)


class _NotUnrollable(Exception):
    """A node outside the layers reads the middle layer: the graph does not unroll."""


def _edge_alike(edge_sig: tuple, middle_sig: tuple, side: int) -> bool:
    """An end layer's node signature against the middle layer's: equal, but an argument the end
    layer reads from outside the layers may be one the middle layer reads at offset ``side``."""
    if len(edge_sig) != len(middle_sig):
        return False
    for a, b in zip(edge_sig, middle_sig, strict=True):
        if a != b and not (a[0] == "outside" and b[0] == "layer" and b[1] == side):
            return False
    return True


def shape_of(node: Any) -> tuple[int, ...]:
    """Shape of an fx node's value (``()`` for non-tensors); kept in ``node.meta`` after the first
    call (the builder asks for it about a million times on Llama-3-8B)."""
    meta = getattr(node, "meta", None)
    if meta is None:
        return ()
    if "dse_shape" not in meta:
        val = meta.get("val")
        meta["dse_shape"] = tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else ()
    return meta["dse_shape"]


def nbytes_of(node: Any) -> float:
    """Bytes of an fx node's (global) value; kept in ``node.meta`` after the first call."""
    meta = node.meta
    if "dse_nbytes" not in meta:
        val = meta.get("val")
        meta["dse_nbytes"] = float(val.numel() * val.element_size()) if isinstance(val, torch.Tensor) else 0.0
    return meta["dse_nbytes"]


def spec_str(spec: Spec) -> str:
    """DTensor placement list, e.g. ``[Shard(0), Replicate()]``."""

    def one(p: Placement) -> str:
        if p == R:
            return "Replicate()"
        if p == P:
            return "Partial()"
        return f"Shard({p[1]})" if p[2] == 1 else f"_StridedShard({p[1]}, split_factor={p[2]})"

    return "[" + ", ".join(one(p) for p in spec) + "]"


def tensor_args(node: Any) -> list[Any]:
    """The fx-node arguments of ``node`` (flattened one level, e.g. ``cat``'s list); kept in
    ``node.meta`` after the first call."""
    if "dse_tensor_args" not in node.meta:
        flat = [a for arg in node.args for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
        node.meta["dse_tensor_args"] = [
            a for a in flat if isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)
        ]
    return list(node.meta["dse_tensor_args"])


def is_follower(node: Any) -> bool:
    """One tensor input and a placement rule that is a function of it (views, copies, unary
    pointwise ops, reductions): Alpa's "merge simple ops" — no ILP variable of its own."""
    target = node.target
    if len(tensor_args(node)) != 1 or not isinstance(target, torch._ops.OpOverload):
        return False
    if target == aten.expand.default and broadcast_dims(node):
        return False  # an anchor: it may cut a broadcast dim of a replicated input (_expand_options)
    known = (
        VIEWS
        | COPIES
        | REDUCTIONS
        | {aten.t.default, aten.transpose.int, aten.permute.default, aten.expand.default, aten.slice.Tensor}
    )
    return target in known or torch.Tag.pointwise in target.tags


def broadcast_dims(node: Any) -> list[int]:
    """Output dims an ``expand`` broadcasts: new leading dims and size-1 dims made larger."""
    src, dst = shape_of(tensor_args(node)[0]), shape_of(node)
    off = len(dst) - len(src)
    return [d for d in range(len(dst)) if dst[d] > 1 and (d < off or src[d - off] == 1)]


def _view_shard(src: tuple[int, ...], dst: tuple[int, ...], dim: int, sf: int, n: int) -> Placement | None:
    """Map ``Shard(dim, sf)`` through a reshape ``src -> dst``: the sharded coordinate has
    ``G = prod(src[:dim]) * sf`` major elements; it lands in the dst dim that contains that offset,
    if the dim's remaining extent is divisible by the mesh size ``n`` (else None: not expressible)."""
    major = prod(src[:dim]) * sf
    outer = 1
    for j, size in enumerate(dst):
        if outer <= major < outer * size and major % outer == 0:
            sub = major // outer
            return ("S", j, sub) if size % sub == 0 and (size // sub) % n == 0 else None
        outer *= size
    return None


def follow_axis(node: Any, p: Placement, n: int) -> Placement | None:
    """Output placement of follower ``node`` on one mesh axis of size ``n`` given its input's, or
    None when no placement follows (a reduction over a sharded dim, a nonlinear op of a Partial). A
    softmax over a sharded dim stays sharded: its per-row all-reduces (:func:`row_all_reduces`) are
    the caller's to charge."""
    target, src, dst = node.target, shape_of(tensor_args(node)[0]), shape_of(node)
    if p == R:
        return R
    if p == P:
        linear = VIEWS | COPIES | LINEAR_UNARY | SUMS | {aten.expand.default}
        return P if target in linear or target in _MOVES else None
    dim, sf = p[1], p[2]
    if target in _MOVES:
        return ("S", _MOVES[target](node, len(src)).index(dim), sf)
    if target == aten.expand.default:
        return ("S", dim + len(dst) - len(src), sf)
    if target == aten.slice.Tensor:
        return p if src[dim] == dst[dim] else None
    if target in REDUCTIONS:
        return _reduce_axis(node, src, dim, sf)
    if target in VIEWS:
        return _view_shard(src, dst, dim, sf, n)
    return p if src == dst else None


def _reduce_axis(node: Any, src: tuple[int, ...], dim: int, sf: int) -> Placement | None:
    """Reductions keep a shard on a dim they do not reduce (shifted when ``keepdim`` is False); a sum
    or mean over a sharded dim is a ``Partial`` (each device reduces its slice: the bias- and
    weight-gradient pattern of data parallelism); a softmax over it stays sharded (vocab-parallel,
    :func:`row_all_reduces`); any other reduction over it has no placement."""
    dims = node.args[1] if len(node.args) > 1 and node.args[1] is not None else list(range(len(src)))
    dims = [d % len(src) for d in ([dims] if isinstance(dims, int) else dims)] or list(range(len(src)))
    if dim in dims:
        return P if node.target in SUMS else ("S", dim, sf) if node.target in SOFTMAXES else None
    keep = (
        node.target in SOFTMAXES
        or (len(node.args) > 2 and bool(node.args[2]))
        or node.kwargs.get("keepdim", False)
    )
    return ("S", dim if keep else dim - sum(d < dim for d in dims), sf)


def row_all_reduces(node: Any) -> tuple[int, int] | None:
    """``(softmax dim, k)`` of a softmax op or its backward: on each mesh axis sharding that dim, the
    op needs ``k`` all-reduces of one float32 scalar per row (per-device rows: the product of the other
    dims' local extents) over the axis, and no other collective (Megatron-LM's vocab-parallel
    cross-entropy, Shoeybi et al. 2019, §3). Forward ``softmax`` / ``log_softmax``, k = 2: the row max
    (all-reduce max, for stability) and the row sum of ``exp(x - max)`` (all-reduce sum); each device
    then normalizes its own slice. ``_log_softmax_backward_data(g, out)`` = ``g - exp(out) Σ g`` and
    ``_softmax_backward_data(g, out)`` = ``out (g - Σ g out)``, k = 1: the row sum. None for other ops."""
    if node.target in SOFTMAXES:
        return node.args[1] % len(shape_of(node)), 2
    if node.target in SOFTMAX_BACKWARDS:
        return node.args[2] % len(shape_of(node)), 1
    return None


def _permutation(node: Any, ndim: int) -> list[int]:
    """Output dim k holds input dim ``perm[k]``."""
    perm = list(range(ndim))
    if node.target == aten.permute.default:
        return [d % ndim for d in node.args[1]]
    a, b = (0, 1) if node.target == aten.t.default else (node.args[1] % ndim, node.args[2] % ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return perm


_MOVES = {aten.t.default: _permutation, aten.transpose.int: _permutation, aten.permute.default: _permutation}


# --- strategy rules of anchor ops (per mesh axis; module docstring of search.fx_sharding) ---


@lru_cache(maxsize=1 << 16)
def _valid(shape: tuple[int, ...], spec: Spec, mesh: tuple[int, ...]) -> bool:
    """Every sharded dim divides by the product of the mesh sizes sharding it (memoised: a graph of
    repeated layers asks about the same shapes and specs about 10⁵ times)."""
    for d in {p[1] for p in spec if p[0] == "S"}:
        sf = max(p[2] for p in spec if p[0] == "S" and p[1] == d)
        parts = prod(n for n, p in zip(mesh, spec, strict=True) if p[0] == "S" and p[1] == d)
        if d >= len(shape) or shape[d] % sf or (shape[d] // sf) % parts:
            return False
    return True


def _combine(options: list[tuple], mesh: tuple[int, ...]) -> list[tuple[Spec, tuple[Spec, ...]]]:
    """Per-axis options ``(out, (in_0, in_1, ...))`` -> strategies over all axes (product)."""
    out = []
    for combo in itertools.product(options, repeat=len(mesh)):
        ins = tuple(tuple(c[1][k] for c in combo) for k in range(len(combo[0][1])))
        out.append((tuple(c[0] for c in combo), ins))
    return out


def _s(dim: int, sf: int = 1) -> tuple:
    return ("S", dim, sf)


def _matmul_options(node: Any, sfs: set[int]) -> list[tuple]:
    """Megatron/Alpa matmul rules per mesh axis (module docstring); ``sfs``: batch shard factors."""
    t = node.target
    if t == aten.mm.default:
        return [(R, (R, R)), (_s(0), (_s(0), R)), (_s(1), (R, _s(1))), (P, (_s(1), _s(0)))]
    if t == aten.addmm.default:
        return [(R, (R, R, R)), (_s(0), (R, _s(0), R)), (_s(1), (_s(0), R, _s(1))), (P, (P, _s(1), _s(0)))]
    batch = [(_s(0, sf), (_s(0, sf), _s(0, sf))) for sf in sorted(sfs | {1})]
    return [(R, (R, R)), *batch, (_s(1), (_s(1), R)), (_s(2), (R, _s(2))), (P, (_s(2), _s(1)))]


def _embedding_options(node: Any) -> list[tuple]:
    """Embedding(weight, ids) per axis: replicated, ids-following, vocab-parallel (P), hidden."""
    nd = len(shape_of(node.args[1]))
    return [(R, (R, R)), *[(_s(d), (R, _s(d))) for d in range(nd)], (P, (_s(0), R)), (_s(nd), (_s(1), R))]


def _dimwise_options(node: Any, n_in: int, blocked: set[int], linear: bool) -> list[tuple]:
    """Ops whose inputs are indexed like the output (``n_in`` of them) except along ``blocked`` dims:
    shard any other dim on all inputs alike; ``Partial`` passes when the op is linear."""
    options = [(R, (R,) * n_in)] + [
        (_s(d), (_s(d),) * n_in) for d in range(len(shape_of(node))) if d not in blocked
    ]
    return options + ([(P, (P,) * n_in)] if linear else [])


def _expand_options(node: Any) -> list[tuple]:
    """A broadcasting ``expand`` per axis: shards and ``Partial`` (it is linear) of the input pass
    through, and a broadcast dim can be cut from a replicated input (each device materializes only
    its slice, no communication): what a sharded consumer of an expanded reduction needs, e.g. the
    RMSNorm backward's ``expand([b, s, 1] -> [b, s, h])`` feeding a hidden-sharded product."""
    off, cast = len(shape_of(node)) - len(shape_of(tensor_args(node)[0])), broadcast_dims(node)
    through = [(_s(d), (_s(d - off),)) for d in range(off, len(shape_of(node))) if d not in cast]
    return [(R, (R,)), *through, *[(_s(d), (R,)) for d in cast], (P, (P,))]


def _padded_dims(node: Any) -> set[int]:
    """Dims ``constant_pad_nd`` pads (its pad list runs from the last dim backwards)."""
    nd, pad = len(shape_of(node)), list(node.args[1])
    return {nd - 1 - k // 2 for k in range(len(pad)) if pad[k]}


def _nll_options(node: Any) -> list[tuple]:
    """``nll_loss_forward(logp [N, C], target [N])``: tokens or classes sharded give a partial loss.
    Tokens sharded (target alike): each device sums its tokens' terms, the total weight (count of
    non-ignored targets) is partial too. Classes sharded, target replicated (vocab-parallel): each
    device picks ``logp[n, target[n]]`` only where ``target[n]`` falls in its class slice, 0 elsewhere,
    so the loss sums over devices (``P``) while every device counts the whole total weight (``R``: the
    builder's alias rule gives ``getitem(..., 1)`` the target's sharding). ``nll_loss_backward(g,
    logp, target, total_weight)`` -> ``[N, C]``: ``-g / total_weight`` at ``(n, target[n])``, 0
    elsewhere, so each device writes its own token rows or class columns without communication."""
    if node.target == aten.nll_loss_forward.default:
        return [(R, (R, R)), (P, (_s(0), _s(0))), (P, (_s(1), R))]
    return [(R, (R, R, R, R)), (_s(0), (R, _s(0), _s(0), R)), (_s(1), (R, _s(1), R, R))]


def _embedding_backward_options(node: Any) -> list[tuple]:
    """``embedding_dense_backward(grad [..., h], ids [...])`` -> ``[V, h]``: ids-sharded tokens give a
    partial gradient (data parallel), hidden-sharded grads a hidden-sharded one, and each device may
    scatter only its vocabulary rows (vocab-parallel, inputs replicated)."""
    nd = len(shape_of(node.args[1]))
    return [
        (R, (R, R)),
        *[(P, (_s(d), _s(d))) for d in range(nd)],
        (P, (P, R)),
        (_s(1), (_s(nd), R)),
        (_s(0), (R, R)),
    ]


def data_args(node: Any) -> list[Any]:
    """The tensor arguments whose values an op reads (``*_like`` / ``new_*`` factories read none)."""
    return [] if node.target in FACTORIES else tensor_args(node)


def _pointwise_strategies(node: Any, place: dict[str, list[Spec]], mesh: tuple[int, ...]) -> list:
    """Output specs = union of the inputs' specs (mapped to the output's dims) and all-R; inputs
    need the output's spec (R on broadcast dims); Partial only through linear combinations."""
    out_shape, args = shape_of(node), tensor_args(node)
    cands = {
        tuple(_to_out(p, len(shape_of(a)), len(out_shape)) for p in spec)
        for a in args
        for spec in place[a.name]
    } | {(R,) * len(mesh)}
    result = []
    for spec in sorted(cands, key=str):
        ins = [_input_spec(spec, node, k, a) for k, a in enumerate(args)]
        if all(i is not None for i in ins) and _valid(out_shape, spec, mesh) and _cat_ok(node, spec):
            result.append((spec, tuple(ins)))
    return result


def _to_out(p: tuple, in_nd: int, out_nd: int) -> tuple:
    return ("S", p[1] + out_nd - in_nd, p[2]) if p[0] == "S" else p


def _cat_ok(node: Any, spec: Spec) -> bool:
    if node.target != aten.cat.default:
        return True
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(shape_of(node))
    return all(p[0] != "S" or p[1] != dim for p in spec)


def _input_spec(spec: Spec, node: Any, k: int, arg: Any) -> Spec | None:
    """Spec input ``k`` must have for output ``spec`` (None: this output is not allowed)."""
    shape, out_nd, linear_all = (
        shape_of(arg),
        len(shape_of(node)),
        node.target in (aten.add.Tensor, aten.sub.Tensor),
    )
    res = []
    for p in spec:
        if p == P:
            if not (linear_all or node.target in (aten.mul.Tensor, aten.div.Tensor)):
                return None
            res.append(P if linear_all or k == 0 else R)
        elif p == R:
            res.append(R)
        else:
            d = p[1] - (out_nd - len(shape))
            res.append(R if d < 0 or shape[d] == 1 else ("S", d, p[2]))
    return tuple(res)


def op_strategies(node: Any, place: dict[str, list[Spec]], mesh: tuple[int, ...]) -> list | None:
    """Valid (output spec, input specs) of an anchor op; None when the op has no rule."""
    t, args = node.target, data_args(node)
    if t in FACTORIES:
        options = [(R, ())]
    elif t in SOFTMAX_BACKWARDS:  # any dim, the softmax dim too (its row sum: row_all_reduces)
        options = _dimwise_options(node, 2, set(), False)
    elif t == aten.slice_backward.default:
        options = _dimwise_options(node, 1, {node.args[2] % len(shape_of(node))}, True)
    elif t == aten.constant_pad_nd.default:
        options = _dimwise_options(node, 1, _padded_dims(node), False)
    elif t in (aten.nll_loss_forward.default, aten.nll_loss_backward.default):
        options = _nll_options(node)
    elif t == aten.embedding_dense_backward.default:
        options = _embedding_backward_options(node)
    elif t == aten.expand.default:
        options = _expand_options(node)
    elif t in (aten.mm.default, aten.addmm.default, aten.bmm.default):
        sfs = {p[2] for spec in place[args[0].name] for p in spec if p[0] == "S" and p[1] == 0}
        options = _matmul_options(node, sfs if t == aten.bmm.default else set())
    elif t == aten.embedding.default:
        options = _embedding_options(node)
    elif isinstance(t, torch._ops.OpOverload) and (torch.Tag.pointwise in t.tags or t == aten.cat.default):
        return _pointwise_strategies(node, place, mesh)
    else:
        return None
    return [
        (out, ins)
        for out, ins in _combine(options, mesh)
        if _valid(shape_of(node), out, mesh)
        and all(_valid(shape_of(a), s, mesh) for a, s in zip(args, ins, strict=True))
    ]


def placeholder_specs(shape: tuple[int, ...], mesh: tuple[int, ...], fixed: bool) -> list[Spec]:
    """Any Replicate/Shard per axis (no Partial); buffers and scalars are replicated."""
    options = [R] + ([] if fixed else [_s(d) for d, size in enumerate(shape) if size > 1])
    return [spec for spec in itertools.product(options, repeat=len(mesh)) if _valid(shape, spec, mesh)]
