"""Automatic sharding of a captured FX graph on a 1-D or 2-D device mesh, as a :mod:`search.sharding_ilp`
problem, and reading the optimum back as DTensor placements.

Each *anchor* node (placeholder, ``mm``/``addmm``/``bmm``, ``embedding``, n-ary pointwise op, or an
unsupported op) is one ILP node whose strategies are an output placement per mesh axis with the
input placements it needs; *followers* (views, copies, unary pointwise ops, reductions) get no
variable and map their input's placement per strategy (Alpa's operator merging, Zheng et al. 2022,
"Alpa", OSDI, §4.2; AutoParallel's strategy propagation). Rules, per mesh axis (Megatron-LM /
GSPMD, Xu et al. 2021): ``mm`` ``S(0)×R→S(0)`` (data), ``R×S(1)→S(1)`` (column),
``S(1)×S(0)→P`` (row), ``R×R→R``; ``bmm`` adds the batch dim; pointwise ops need the output's
placement on every input (broadcast dims replicated; ``Partial`` passes ``add``/``sub``, and ``mul``
by a replicated factor); reductions keep shards of dims they do not reduce, and a sum/mean over a
sharded dim gives ``P``; ``embedding`` is vocab-parallel (``P``), hidden-parallel or follows the ids.
Backward ops: pointwise ones (``threshold_backward``, ``silu_backward``, ...) as above;
``_softmax_backward_data`` / ``_log_softmax_backward_data`` shard any dim (see below for the softmax dim);
``slice_backward`` and ``constant_pad_nd`` any dim they do not pad; ``nll_loss_forward/backward``
tokens (partial loss) or classes; ``embedding_dense_backward`` ``P`` from batch-sharded ids, hidden-
or vocab-sharded; ``*_like`` factories read no data. A broadcasting ``expand`` (RMSNorm's backward
``[b, s, 1] -> [b, s, h]``) is an anchor: it passes shards and ``Partial`` and may cut a broadcast dim
of a replicated input for free. Unsupported ops replicate everything (resharding
cost included) and are listed in the result.

**Vocab-parallel softmax** (Megatron-LM's cross-entropy, Shoeybi et al. 2019, §3: the LM head's
logits stay split over the vocabulary, no all-gather of them). A softmax or log-softmax over a dim
sharded on mesh axis ``a`` keeps the output sharded like the input, and the strategy is charged the
collectives its kernel needs, :func:`search.fx_graph.row_all_reduces`: two all-reduces (row max, then
row sum of ``exp(x - max)``) of one float32 scalar per row, ``t = 2 · all_reduce_time_s(rows · 4, n_a,
link_a)`` with ``rows`` the per-device rows (the product of the other dims' local extents); the
backward (``_log_softmax_backward_data``: ``g - exp(out) Σ g``; ``_softmax_backward_data``:
``out (g - Σ g out)``) needs one, ``t = all_reduce_time_s(rows · 4, n_a, link_a)``. These are
*implicit* collectives: added to the strategy's cost (of the follower's anchor for a forward softmax,
of the backward op's own anchor) and listed in the plan as ``"_log_softmax -> 1024 row maxes:
all-reduce(axis 0)"``. ``nll_loss_forward`` then gathers ``logp[n, target[n]]`` from a class-sharded
``logp`` with a replicated target as a ``Partial`` loss (each device only where the target falls in
its slice; the total weight, a count of targets, stays replicated), and ``nll_loss_backward`` writes
its class slice locally.

**Joint graph.** A gradient output is tied to its parameter: an edge from the gradient's producer to
the parameter's node costs the reshard from the gradient's placement to the parameter's (``P -> R``
all-reduce: data parallelism; ``P -> S`` reduce-scatter: FSDP/ZeRO; a parameter stored sharded and
used replicated pays an all-gather per use, forward and backward), instead of the default "outputs
must not stay Partial" all-reduce; the scalar loss may stay Partial (reducing it for logging is off
the critical path). Input placeholders cost the HBM write of their per-device slice (which makes a
batch-sharded input preferable to a replicated one sliced for free).

Costs in seconds: an anchor's compute is :func:`costmodels.compute.kernel_time_s` of its per-device
FLOPs and bytes; an edge costs the collectives that turn the producer's placement into the one the
consumer needs, per mesh axis (``S→R`` all-gather, ``P→R`` all-reduce, ``P→S`` reduce-scatter,
``S(i)→S(j)`` all-to-all, also between two split factors of one dim, ``R→S``/``R→P`` free), on
that axis's :class:`~costmodels.network.Link`.
The objective is the predicted step time: forward + backward for a joint graph, forward alone
otherwise (no overlap of communication with compute is assumed). Memory per strategy: parameter
bytes per device (times ``memory_per_param_bytes / element size`` to count gradient and optimizer
states, whose placement is tied to the parameter's), and optionally activations over liveness
intervals.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from math import prod
from time import perf_counter
from typing import Any

import jax
import numpy as np
import torch

from costmodels.compute import KIND_ATTENTION, KIND_ELEMENTWISE, KIND_EMBEDDING, KIND_MATMUL, kernel_time_s
from costmodels.errors import ConfigError
from costmodels.fabric import links
from costmodels.hardware import Hardware, peak_flops
from costmodels.network import (
    Link,
    all_gather_time_s,
    all_reduce_time_s,
    all_to_all_time_s,
    reduce_scatter_time_s,
)
from search.fx_graph import (
    FREE,
    Captured,
    P,
    Placement,
    R,
    Spec,
    data_args,
    follow_axis,
    is_follower,
    nbytes_of,
    op_strategies,
    placeholder_specs,
    row_all_reduces,
    shape_of,
    spec_str,
    tensor_args,
)
from search.sharding_ilp import Edge, Node, RepeatGroup, ShardingProblem, ShardingSolution, solve

__all__ = [
    "FxSharding",
    "MeshCosts",
    "ShardingPlan",
    "build_problem",
    "default_links",
    "read_solution",
]

aten = torch.ops.aten


def default_links(hw: Hardware, ndim: int) -> tuple[Link, ...]:
    """Last mesh axis = scale-up (NVLink), the one before it = scale-out (NIC per device): the
    preset's links (``costmodels.fabric.links``) as plain numbers."""
    up, out = (Link(float(x.bandwidth_Bps), float(x.latency_s), float(x.efficiency)) for x in links(hw))
    return (out,) * (ndim - 1) + (up,)


class MeshCosts:
    """Cached kernel and collective times (s) on a mesh whose axis ``a`` has size ``mesh[a]``."""

    def __init__(
        self,
        hw: Hardware,
        mesh: tuple[int, ...],
        links: tuple[Link, ...] | None = None,
        precision: str = "bf16",
    ) -> None:
        self.hw, self.mesh, self.peak = hw, tuple(mesh), float(peak_flops(hw, precision))
        self._shards: dict[Spec, int] = {}
        self.links = links or default_links(hw, len(mesh))
        if len(self.links) != len(self.mesh):
            raise ConfigError(f"axis_links: {len(self.links)} links for a {len(self.mesh)}-D mesh")
        kernel = jax.jit(kernel_time_s)
        self.kernel = cache(
            lambda kind, fl, by, rows=1.0, cols=1.0, gemms=1.0, red=1.0: float(
                kernel(hw, self.peak, kind, fl, by, rows, cols, gemms, red)
            )
        )
        fns = {
            "all-gather": all_gather_time_s,
            "all-reduce": all_reduce_time_s,
            "reduce-scatter": reduce_scatter_time_s,
            "all-to-all": all_to_all_time_s,
        }
        self.collective = cache(
            lambda kind, size, axis: float(fns[kind](size, self.mesh[axis], self.links[axis]))
        )

    def shards(self, spec: Spec) -> int:
        """Number of pieces a tensor with ``spec`` is cut into (Partial does not cut)."""
        if (pieces := self._shards.get(spec)) is None:
            pieces = self._shards[spec] = prod(n for n, p in zip(self.mesh, spec, strict=True) if p[0] == "S")
        return pieces

    def reshard(self, src: Spec, dst: Spec, nbytes: float) -> tuple[float, list[str]]:
        """Time and names of the per-axis collectives taking ``src`` to ``dst`` (GSPMD/Alpa rules).
        Shards of one dim with different split factors (``_StridedShard(0, 8)`` of a merged
        ``[b*H]`` cut by heads vs ``Shard(0)`` cut by batch) hold different elements: an all-to-all."""
        total, names = 0.0, []
        for a, (s, d) in enumerate(zip(src, dst, strict=True)):
            if s in (d, R) or d == P:
                continue
            full = nbytes * self.mesh[a] / self.shards(src) if s[0] == "S" else nbytes / self.shards(src)
            kind = {
                ("S", "R"): "all-gather",
                ("P", "R"): "all-reduce",
                ("P", "S"): "reduce-scatter",
                ("S", "S"): "all-to-all",
            }[(s[0], d[0])]
            total += self.collective(kind, full / self.mesh[a] if kind == "all-to-all" else full, a)
            names.append(f"{kind}(axis {a})")
        return total, names


@dataclass
class _Var:
    """One ILP node: the fx node it anchors, output spec and input specs per strategy, costs."""

    name: str
    kind: str
    specs: list[Spec]
    inputs: list[tuple[Spec, ...]]
    compute: np.ndarray
    comm: np.ndarray
    usage: np.ndarray
    start: int
    end: int
    layer: int | None = None


@dataclass
class FxSharding:
    """The ILP built from a graph: ``vars[k]`` is problem node ``k``; ``place[fx name]`` the spec of
    every fx value per strategy of its anchor ``anchor[fx name]``; ``edges[k]`` = (arg fx name, input
    position) of problem edge ``k``."""

    problem: ShardingProblem
    vars: list[_Var]
    anchor: dict[str, int]
    place: dict[str, list[Spec]]
    edge_args: list[tuple[str, str, int]]
    unsupported: list[str]
    implicit: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    grad_params: frozenset[str] = frozenset()


def _local(shape: tuple[int, ...], spec: Spec, mesh: tuple[int, ...]) -> list[float]:
    """Per-device extent of each dim."""
    out = [float(s) for s in shape]
    for n, p in zip(mesh, spec, strict=True):
        if p[0] == "S":
            out[p[1]] /= n
    return out


def _anchor_time(node: Any, out: Spec, ins: tuple[Spec, ...], costs: MeshCosts) -> float:
    """Kernel time of an anchor op on one device under one strategy."""
    args, mesh = data_args(node), costs.mesh
    moved = sum(nbytes_of(a) / costs.shards(s) for a, s in zip(args, ins, strict=True))
    moved += nbytes_of(node) / costs.shards(out)
    t = node.target
    if t == aten.expand.default:  # a view: its consumer reads the (local) values
        return 0.0
    if t in (aten.mm.default, aten.addmm.default, aten.bmm.default):
        a, b = _local(shape_of(args[-2]), ins[-2], mesh), _local(shape_of(args[-1]), ins[-1], mesh)
        m, k, n, gemms = a[-2], a[-1], b[-1], (a[0] if len(a) == 3 else 1.0)
        kind = KIND_ATTENTION if t == aten.bmm.default else KIND_MATMUL
        return costs.kernel(kind, 2.0 * gemms * m * k * n, moved, m, n, gemms, k)
    if t == aten.embedding.default:
        return costs.kernel(KIND_EMBEDDING, 0.0, 2.0 * nbytes_of(node) / costs.shards(out))
    numel = prod(_local(shape_of(node), out, mesh))
    return costs.kernel(KIND_ELEMENTWISE, numel, moved)


class _Builder:
    """Walks the graph once in topological order and collects anchors, followers and edges."""

    def __init__(self, captured: Captured, costs: MeshCosts, param_factor: float | None, acts: bool) -> None:
        self.cap, self.costs, self.param_factor, self.acts = captured, costs, param_factor, acts
        self.vars: list[_Var] = []
        self.anchor: dict[str, int] = {}
        self.place: dict[str, list[Spec]] = {}
        self.edge_args: list[tuple[str, str, int]] = []
        self.unsupported: list[str] = []
        self.implicit: dict[tuple[int, int], list[str]] = {}  # (anchor, strategy) -> collectives
        self.pos = {n.name: k for k, n in enumerate(captured.graph.nodes)}
        self.grad_of = {param: grad for grad, param in captured.grads.items()}
        self.end = len(self.pos) + 1

    def new_var(self, node: Any, kind: str, strategies: list[tuple[Spec, tuple]]) -> None:
        """Add an anchor with its strategies' compute cost and memory."""
        specs = [s for s, _ in strategies]
        if kind == "op":
            compute = [_anchor_time(node, s, ins, self.costs) for s, ins in strategies]
        elif kind == "input":  # the device's slice of the batch lands in its memory (one HBM write)
            compute = [
                self.costs.kernel(KIND_ELEMENTWISE, 0.0, nbytes_of(node) / self.costs.shards(s))
                for s in specs
            ]
        else:
            compute = [0.0] * len(specs)
        usage = [self._usage(node, kind, s) for s in specs]
        start = 0 if kind == "param" else self.pos[node.name]
        var = _Var(
            node.name,
            kind,
            specs,
            [ins for _, ins in strategies],
            np.asarray(compute, float),
            np.zeros(len(specs)),
            np.asarray(usage, float),
            start,
            start + 1,
            self.cap.layer.get(node.name),
        )
        self.anchor[node.name], self.place[node.name] = len(self.vars), specs
        self.vars.append(var)
        if kind == "param":
            var.end = self.end

    def _usage(self, node: Any, kind: str, spec: Spec) -> float:
        if kind == "param":
            val = node.meta["val"]
            factor = self.param_factor / val.element_size() if self.param_factor else 1.0
            return nbytes_of(node) * factor / self.costs.shards(spec)
        return nbytes_of(node) / self.costs.shards(spec) if self.acts and kind == "op" else 0.0

    def placeholder(self, node: Any) -> None:
        fqn = self.cap.params.get(node.name)
        fixed = fqn in self.cap.buffers or not shape_of(node)
        specs = placeholder_specs(shape_of(node), self.costs.mesh, fixed)
        kind = "param" if fqn and not fixed else "input"
        # a parameter's one "input" is its gradient, which must arrive in the parameter's own spec
        self.new_var(node, kind, [(s, (s,) if node.name in self.grad_of else ()) for s in specs])

    def follower(self, node: Any) -> None:
        """No variable: map the input's spec per strategy of its anchor; a spec that cannot follow
        is replicated first on that axis (collective added to the anchor's strategy)."""
        arg = tensor_args(node)[0]
        free = node.target in FREE
        var = self.vars[self.anchor[arg.name]]
        specs = []
        known: dict[tuple[Placement, int], Placement | None] = {}

        def follow(p: Placement, n: int) -> Placement | None:  # strategies repeat an axis's placement
            if (p, n) not in known:
                known[(p, n)] = follow_axis(node, p, n)
            return known[(p, n)]

        for i, spec in enumerate(self.place[arg.name]):
            outs = [follow(p, n) for p, n in zip(spec, self.costs.mesh, strict=True)]
            if None in outs:
                fixed = tuple(R if o is None else p for p, o in zip(spec, outs, strict=True))
                self._charge(self.anchor[arg.name], i, spec, fixed, arg, node.name)
                outs = [follow(p, n) for p, n in zip(fixed, self.costs.mesh, strict=True)]
            specs.append(tuple(outs))
            self._row_reductions(self.anchor[arg.name], i, node, specs[-1])
            if not free:
                moved = nbytes_of(arg) / self.costs.shards(spec)
                moved += nbytes_of(node) / self.costs.shards(specs[-1])
                numel = prod(_local(shape_of(node), specs[-1], self.costs.mesh))
                var.compute[i] += self.costs.kernel(KIND_ELEMENTWISE, numel, moved)
        self.anchor[node.name], self.place[node.name] = self.anchor[arg.name], specs

    def op(self, node: Any) -> None:
        """An anchor op, or an unsupported one (replicated; reported when it reads tensors)."""
        strategies = op_strategies(node, self.place, self.costs.mesh)
        args = data_args(node)
        if not strategies:
            if args:
                self.unsupported.append(f"{node.name} ({node.target})")
            strategies = [((R,) * len(self.costs.mesh), tuple((R,) * len(self.costs.mesh) for _ in args))]
        self.new_var(node, "op", strategies)
        for i, (spec, _) in enumerate(strategies):
            self._row_reductions(len(self.vars) - 1, i, node, spec)
        for k, arg in enumerate(args):
            self.edge(arg.name, node.name, k)

    def edge(self, arg: str, consumer: str, k: int) -> None:
        """Value ``arg`` feeds input ``k`` of anchor ``consumer`` (and stays live until then)."""
        self.edge_args.append((arg, consumer, k))
        src = self.vars[self.anchor[arg]]
        src.end = max(src.end, self.pos[consumer] + 1)

    def alias(self, node: Any) -> None:
        """``getitem`` of a multi-output anchor (``nll_loss_forward``): same placements, no cost; but
        the total weight ``getitem(nll_loss_forward, 1)`` counts targets, so it is ``Partial`` on the
        axes that shard the target and replicated on the others (a class-sharded loss is partial, its
        total weight is not: every device sees every target)."""
        src = node.args[0]
        self.anchor[node.name], self.place[node.name] = self.anchor[src.name], self.place[src.name]
        if src.target == aten.nll_loss_forward.default and node.args[1] == 1:
            var = self.vars[self.anchor[src.name]]
            self.place[node.name] = [tuple(P if p[0] == "S" else R for p in ins[1]) for ins in var.inputs]

    def _row_reductions(self, k: int, i: int, node: Any, spec: Spec) -> None:
        """Charge strategy ``i`` of anchor ``k`` the per-row float32 all-reduces of a softmax (or its
        backward) ``node`` with output ``spec``, on each axis sharding the softmax dim (module
        docstring, :func:`search.fx_graph.row_all_reduces`)."""
        if (rule := row_all_reduces(node)) is None:
            return
        dim, count = rule
        local = _local(shape_of(node), spec, self.costs.mesh)
        rows = prod(local) / local[dim]
        what = ("row sums",) if count == 1 else ("row maxes", "row sums")
        for a, p in enumerate(spec):
            if p[0] == "S" and p[1] == dim:
                self.vars[k].comm[i] += count * self.costs.collective("all-reduce", rows * 4.0, a)
                self.implicit.setdefault((k, i), []).extend(
                    f"{node.name} -> {rows:.0f} {w}: all-reduce(axis {a})" for w in what
                )

    def output(self, node: Any) -> None:
        """Graph outputs must not stay Partial: the all-reduce is charged to the producer. In a joint
        graph, a gradient output is instead an edge to its parameter (it must end in the parameter's
        spec: ``P -> R`` all-reduce, ``P -> S`` reduce-scatter), and the loss is left as it is (a
        partial sum per device; reducing it for logging is off the step's critical path)."""
        for arg in tensor_args(node):
            var = self.vars[self.anchor[arg.name]]
            var.end = self.end
            if arg.name in self.cap.grads:
                self.edge(arg.name, self.cap.grads[arg.name], 0)
                continue
            if arg.name == self.cap.loss:
                continue
            for i, spec in enumerate(self.place[arg.name]):
                dst = tuple(R if p == P else p for p in spec)
                self._charge(self.anchor[arg.name], i, spec, dst, arg, "output")

    def _charge(self, k: int, i: int, src: Spec, dst: Spec, arg: Any, where: str) -> None:
        """Add the collectives ``src -> dst`` of value ``arg`` to strategy ``i`` of anchor ``k``."""
        time_s, names = self.costs.reshard(src, dst, nbytes_of(arg))
        self.vars[k].comm[i] += time_s
        self.implicit.setdefault((k, i), []).extend(f"{arg.name} -> {where}: {c}" for c in names)

    def run(self) -> None:
        for node in self.cap.graph.nodes:
            if node.op == "placeholder":
                self.placeholder(node)
            elif node.op == "output":
                self.output(node)
            elif node.target is operator.getitem and getattr(node.args[0], "name", None) in self.anchor:
                self.alias(node)
            elif is_follower(node) and tensor_args(node)[0].name in self.anchor:
                self.follower(node)
            else:
                self.op(node)


def _edges(b: _Builder) -> list[Edge]:
    """Resharding matrix of every (producer anchor, consumer anchor, input position)."""
    reshard = cache(lambda src, dst, nbytes: b.costs.reshard(src, dst, nbytes)[0])
    matrices: dict[tuple, tuple[float, ...]] = {}  # repeated layers ask for the same matrices
    nodes = {n.name: n for n in b.cap.graph.nodes}
    edges = []
    for arg, consumer, k in b.edge_args:
        u, v = b.anchor[arg], b.anchor[consumer]
        key = (tuple(b.place[arg]), tuple(ins[k] for ins in b.vars[v].inputs), nbytes_of(nodes[arg]))
        if key not in matrices:
            srcs, dsts, size = key
            matrices[key] = tuple(reshard(src, dst, size) for src in srcs for dst in dsts)
        edges.append(Edge(u, v, matrices[key]))
    return edges


def _repeat_groups(variables: list[_Var], edges: list[Edge]) -> tuple[RepeatGroup, ...]:
    """Layers whose nodes (costs, memory) and internal edges are identical share variables."""
    blocks: dict[int, list[int]] = {}
    for k, var in enumerate(variables):
        if var.layer is not None:
            blocks.setdefault(var.layer, []).append(k)
    groups: dict[tuple, list[tuple[int, ...]]] = {}
    for block in blocks.values():
        pos = {n: i for i, n in enumerate(block)}
        inner = sorted((pos[e.u], pos[e.v], e.costs) for e in edges if e.u in pos and e.v in pos)
        sig = tuple(
            (tuple(variables[n].compute + variables[n].comm), tuple(variables[n].usage)) for n in block
        )
        groups.setdefault((sig, tuple(inner)), []).append(tuple(block))
    return tuple(RepeatGroup(tuple(g)) for g in groups.values() if len(g) > 1)


def build_problem(
    captured: Captured,
    costs: MeshCosts,
    memory_per_param_bytes: float | None = None,
    count_activations: bool = False,
    memory_limit: float | None = None,
) -> FxSharding:
    """The sharding ILP of a captured graph (module docstring); repeated layers share variables."""
    b = _Builder(captured, costs, memory_per_param_bytes, count_activations)
    b.run()
    edges = _edges(b)
    nodes = tuple(
        Node(tuple((v.compute + v.comm).tolist()), tuple(v.usage.tolist()), (v.start, v.end), v.name)
        for v in b.vars
    )
    repeats = _repeat_groups(b.vars, edges)
    problem = ShardingProblem(nodes, tuple(edges), memory_limit, repeats)
    return FxSharding(
        problem, b.vars, b.anchor, b.place, b.edge_args, b.unsupported, b.implicit, frozenset(b.grad_of)
    )


@dataclass
class ShardingPlan:
    """The chosen sharding: DTensor placement strings per parameter (by FQN) and per fx value,
    collectives per edge (``"producer -> consumer[k]: all-reduce(axis 1)"``; a gradient's reduction to
    its parameter reads ``"t_74 -> grad of model.layers.0.mlp.up_proj.weight: reduce-scatter(axis 0)"``),
    the predicted step time (forward + backward for a joint graph, else forward only) with its
    compute/communication split (s) and the peak memory per device (bytes)."""

    param_placements: dict[str, str]
    placements: dict[str, str]
    collectives: list[str]
    step_time_s: float
    compute_s: float
    comm_s: float
    memory_per_device_bytes: float
    unsupported: list[str]
    solution: ShardingSolution
    timings_s: dict[str, float] = field(default_factory=dict)


def read_solution(
    fx: FxSharding, captured: Captured, sol: ShardingSolution, costs: MeshCosts
) -> ShardingPlan:
    """Placements, collectives and the time/memory breakdown of a solved problem."""
    pick = sol.strategies
    spec = {name: specs[pick[fx.anchor[name]]] for name, specs in fx.place.items()}
    nodes = {n.name: n for n in captured.graph.nodes}
    collectives = []
    for arg, consumer, k in fx.edge_args:
        dst = fx.vars[fx.anchor[consumer]].inputs[pick[fx.anchor[consumer]]][k]
        names = costs.reshard(spec[arg], dst, nbytes_of(nodes[arg]))[1]
        to = f"grad of {captured.params[consumer]}" if consumer in fx.grad_params else f"{consumer}[{k}]"
        collectives += [f"{arg} -> {to}: {c}" for c in names]
    for k, i in enumerate(pick):
        collectives += fx.implicit.get((k, i), [])
    compute = float(sum(v.compute[s] for v, s in zip(fx.vars, pick, strict=True)))
    params = {fqn: spec_str(spec[name]) for name, fqn in captured.params.items() if name in spec}
    placements = {n: spec_str(s) for n, s in spec.items()}
    return ShardingPlan(
        params,
        placements,
        collectives,
        sol.objective,
        compute,
        sol.objective - compute,
        sol.peak_memory,
        fx.unsupported,
        sol,
    )


def resolve_pins(fx: FxSharding, captured: Captured, pins: Mapping[str, str]) -> dict[int, int]:
    """Problem-node pins from user pins ``{value: spec}``: a value is an fx node name, a parameter FQN,
    or ``input`` (every non-parameter placeholder); the spec is a DTensor string like
    ``[Shard(0), Replicate()]``. A value that is not anchored, or a spec it cannot take, is an error."""
    by_fqn = {fqn: name for name, fqn in captured.params.items()}
    inputs = [n.name for n in captured.graph.nodes if n.op == "placeholder" and n.name not in captured.params]
    out: dict[int, int] = {}
    for value, want in pins.items():
        for name in inputs if value == "input" else [by_fqn.get(value, value)]:
            if name not in fx.anchor:
                raise ConfigError(f"cannot pin '{value}': not a graph value (inputs: {', '.join(inputs)})")
            specs = [spec_str(sp) for sp in fx.place[name]]
            if want not in specs:
                raise ConfigError(
                    f"cannot pin '{value}' to {want}; its options: {', '.join(sorted(set(specs)))}"
                )
            out[fx.anchor[name]] = specs.index(want)
    return out


def plan_sharding(
    captured: Captured,
    hw: Hardware,
    mesh: tuple[int, ...],
    *,
    axis_links: tuple[Link, ...] | None = None,
    memory_per_param_bytes: float | None = None,
    count_activations: bool = False,
    memory_limit: float | None = None,
    precision: str = "bf16",
    solver: str = "cbc",
    time_limit_s: float | None = None,
    pins: Mapping[str, str] | None = None,
    phase: Callable[[str], None] | None = None,
) -> ShardingPlan:
    """Build the ILP of ``captured`` on ``mesh``, solve it (with ``pins``, see :func:`resolve_pins`),
    and read the plan back; ``phase(message)`` is told when each phase starts."""
    say = phase or (lambda _message: None)
    t0 = perf_counter()
    shape = "x".join(map(str, mesh))
    say(f"strategies and costs of {len(captured.graph.nodes):,} graph nodes on mesh {shape}")
    costs = MeshCosts(hw, tuple(mesh), axis_links, precision)
    fx = build_problem(captured, costs, memory_per_param_bytes, count_activations, memory_limit)
    t1 = perf_counter()
    limit = f", time limit {time_limit_s:g} s" if time_limit_s else ""
    size = f"{len(fx.problem.nodes):,} nodes, {len(fx.problem.edges):,} edges"
    say(f"building and solving the ILP ({size}) with {solver}{limit}")
    sol = solve(
        fx.problem, solver=solver, time_limit_s=time_limit_s, pins=resolve_pins(fx, captured, pins or {})
    )
    plan = read_solution(fx, captured, sol, costs)
    plan.timings_s = {"strategies_and_costs": t1 - t0, "build": sol.build_time_s, "solve": sol.solve_time_s}
    times = f"build {sol.build_time_s:.1f} s, solve {sol.solve_time_s:.1f} s"
    say(f"solved: {sol.num_variables:,} variables, {times}")
    return plan
