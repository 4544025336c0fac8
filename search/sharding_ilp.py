"""Auto-sharding as an integer linear program: one strategy per node, least node + edge cost, under a
memory limit over liveness intervals.

**Problem** (the generic node/edge/interval form of the IOPDDL contest — Moffitt & Fegade, "The
ASPLOS 2025 / EuroSys 2025 Contest on Intra-Operator Parallelism for Distributed Deep Learning",
ASPLOS 2025, pp. 5-17; instances and format at github.com/google/iopddl). Node ``v`` picks one
strategy ``i`` of its own, at cost ``c_v[i]`` and memory ``m_v[i]``; edge ``(u, v)`` adds
``C_uv[i, j]`` (resharding) for the pair of choices; ``m_v`` counts at every integer time step of the
half-open liveness interval ``[start, end)``; at every step the live total must be ``<= M``.

**Formulation** — Alpa's intra-operator ILP (Zheng et al. 2022, "Alpa", OSDI, §4.2: one-hot ``s_v``,
quadratic resharding term linearised by a binary ``e_uv``); here ``e = s_u s_vᵀ`` is linearised in the
marginal (transportation) form, not by ``e <= s_u, e <= s_v, Σe = 1``::

    min  Σ_v c_v·s_v + Σ_(u,v) Σ_ij C_uv[i,j]·e_uv[i,j]
    s.t. Σ_i s_v[i] = 1,  s_v[i] ∈ {0, 1}                         one strategy per node
         Σ_j e_uv[i,j] = s_u[i],  Σ_i e_uv[i,j] = s_v[j],  e >= 0   e = s_u s_vᵀ
         Σ_(v live at t) m_v·s_v <= M   for t ∈ T*                  memory

``e`` may be continuous: with one-hot ``s`` only row ``i*`` and column ``j*`` have mass, so
``e[i*, j*] = 1`` is forced; the marginal rows imply the three-inequality form, so the LP relaxation
is at least as tight.

**Reductions.** (1) Memory steps ``T*``: a live set only grows at an interval start, so every live
set is contained in the one at the latest start ``<= t``; that one is in turn contained in the next
start's set unless some interval ends in between. ``T*`` = starts followed by an end before the next
start (the maximal cliques of the interval graph); steps whose total cannot vary, and rows equal to
one already there (repeat instances), are dropped.
(2) An edge with a one-strategy endpoint, or between two copies of one node, is linear: no ``e``.

**Repeat groups** (identical layers): ``RepeatGroup(blocks)`` says node ``blocks[k][i]`` is a copy of
``blocks[0][i]`` (same strategies, costs, memory and internal edges); copies share their
representative's variables, node costs and edge matrices add up per representative (a block's cost
counts k times), and each copy's memory counts at its *own* interval with the shared variables. So
every instance makes the same choice: exact when the unrolled optimum is symmetric, else an upper
bound. Units: costs in one unit of the caller's choosing (seconds from our cost models; abstract
integers in IOPDDL), memory in bytes (or the instance's unit), time in integer steps.

PuLP is imported inside functions: PuLP itself loads ``highspy`` when imported, and highspy 1.15
cannot share a process with ortools 9.15 (DESIGN.md), so importing this module loads neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from costmodels.errors import ConfigError

__all__ = [
    "Edge",
    "Evaluation",
    "Node",
    "RepeatGroup",
    "ShardingProblem",
    "ShardingSolution",
    "evaluate",
    "live_steps",
    "load_iopddl",
    "memory_lower_bound",
    "representatives",
    "solve",
]


@dataclass(frozen=True)
class Node:
    """One op/tensor. ``costs[i]``, ``usages[i]`` (>= 0) for strategy ``i``; live on ``[start, end)``."""

    costs: tuple[float, ...]
    usages: tuple[float, ...]
    interval: tuple[int, int] = (0, 0)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.costs or len(self.costs) != len(self.usages):
            raise ConfigError(f"node {self.name!r}: needs >= 1 strategy and one usage per cost")
        if min(self.usages) < 0 or self.interval[0] > self.interval[1]:
            raise ConfigError(f"node {self.name!r}: usages must be >= 0 and interval start <= end")


@dataclass(frozen=True)
class Edge:
    """Edge ``u -> v``; ``costs`` is the ``(len(u.costs), len(v.costs))`` matrix, row-major."""

    u: int
    v: int
    costs: tuple[float, ...]


@dataclass(frozen=True)
class RepeatGroup:
    """Identical blocks: ``blocks[k][i]`` is a copy of ``blocks[0][i]`` and shares its variables."""

    blocks: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, eq=False)
class ShardingProblem:
    """Nodes, edges, an optional memory limit (same unit as usages) and optional repeat groups."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...] = ()
    memory_limit: float | None = None
    repeats: tuple[RepeatGroup, ...] = ()

    def __post_init__(self) -> None:
        for e in self.edges:
            if not (0 <= e.u < len(self.nodes) and 0 <= e.v < len(self.nodes)):
                raise ConfigError(f"edge ({e.u}, {e.v}): node index out of range 0..{len(self.nodes) - 1}")
            nu, nv = len(self.nodes[e.u].costs), len(self.nodes[e.v].costs)
            if len(e.costs) != nu * nv:
                raise ConfigError(f"edge ({e.u}, {e.v}): {len(e.costs)} costs, expected {nu}x{nv}")
        _check_repeats(self)

    def edge_matrix(self, e: Edge) -> np.ndarray:
        """The edge's cost matrix, shape (strategies of u, strategies of v)."""
        return np.asarray(e.costs, float).reshape(len(self.nodes[e.u].costs), len(self.nodes[e.v].costs))


def _block_edges(problem: ShardingProblem, block: tuple[int, ...]) -> list[tuple[int, int, tuple]]:
    """Edges inside ``block`` in block-local positions, sorted, for comparing blocks."""
    pos = {n: i for i, n in enumerate(block)}
    return sorted((pos[e.u], pos[e.v], e.costs) for e in problem.edges if e.u in pos and e.v in pos)


def _check_repeats(problem: ShardingProblem) -> None:
    """Blocks of a group are disjoint, equally long, and identical in nodes and internal edges."""
    seen: set[int] = set()
    for group in problem.repeats:
        first = group.blocks[0]
        for block in group.blocks:
            if len(block) != len(first) or seen & set(block) or len(set(block)) != len(block):
                raise ConfigError(f"repeat block {list(block)}: blocks must be disjoint and of equal length")
            seen |= set(block)
            for a, b in zip(first, block, strict=True):
                na, nb = problem.nodes[a], problem.nodes[b]
                if (na.costs, na.usages) != (nb.costs, nb.usages):
                    raise ConfigError(f"repeat group: node {b} differs from node {a} it copies")
            if _block_edges(problem, block) != _block_edges(problem, first):
                raise ConfigError(f"repeat block {list(block)}: internal edges differ from {list(first)}")


def load_iopddl(path: str | Path) -> ShardingProblem:
    """Read an IOPDDL JSON instance (``nodes``: interval/costs/usages, ``edges``: nodes/costs,
    ``usage_limit``); an optional ``repeats`` key holds lists of blocks of node ids."""
    data = json.loads(Path(path).read_text())
    nodes = tuple(
        Node(tuple(n["costs"]), tuple(n["usages"]), tuple(n["interval"]), str(k))
        for k, n in enumerate(data["nodes"])
    )
    edges = tuple(Edge(e["nodes"][0], e["nodes"][1], tuple(e["costs"])) for e in data.get("edges", []))
    repeats = tuple(RepeatGroup(tuple(tuple(b) for b in g)) for g in data.get("repeats", []))
    return ShardingProblem(nodes, edges, data.get("usage_limit"), repeats)


def representatives(problem: ShardingProblem) -> list[int]:
    """``rep[n]``: the node whose variables ``n`` uses (itself unless a repeat copy)."""
    rep = list(range(len(problem.nodes)))
    for group in problem.repeats:
        for block in group.blocks[1:]:
            for a, b in zip(group.blocks[0], block, strict=True):
                rep[b] = a
    return rep


def live_steps(problem: ShardingProblem) -> list[tuple[int, list[int]]]:
    """``(t, live nodes)`` for the steps ``T*`` that dominate all others (module docstring), the
    live nodes in node order. Computed once per problem (the solver, its bound and the evaluation of
    its answer all read them)."""
    return _live_steps(problem)


@lru_cache(maxsize=8)
def _live_steps(problem: ShardingProblem) -> list[tuple[int, list[int]]]:
    intervals = np.array([n.interval for n in problem.nodes], dtype=np.int64).reshape(-1, 2)
    ids = np.flatnonzero(intervals[:, 0] < intervals[:, 1])
    first, end = intervals[ids, 0], intervals[ids, 1]
    starts = np.unique(first).tolist()
    ends = np.sort(end)
    steps = []
    for k, t in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else np.inf
        if k + 1 == len(starts) or np.searchsorted(ends, t, "right") < np.searchsorted(ends, nxt, "right"):
            steps.append((int(t), ids[(first <= t) & (t < end)].tolist()))
    return steps


def memory_lower_bound(
    problem: ShardingProblem, pins: dict[int, int] | None = None
) -> tuple[float, int | None, list[int]]:
    """Cheap relaxation: ``max_t Σ_(v live at t) min_i m_v[i]`` (pinned nodes at their pin), with its
    step and live nodes. Any limit below it is infeasible; it is also exact for feasibility, since
    each node's least-memory strategy reaches the minimum at every step at once (repeat copies have
    equal usages, so they agree on it), hence a limit at or above it always admits a solution."""
    pins = pins or {}
    least = np.array(
        [n.usages[pins[k]] if k in pins else min(n.usages) for k, n in enumerate(problem.nodes)], float
    )
    best: tuple[float, int | None, list[int]] = (0.0, None, [])
    for t, live in live_steps(problem):
        total = float(sum(least[live].tolist()))  # in node order, as a plain sum adds them
        if best[1] is None or total > best[0]:
            best = (total, t, live)
    return best


@dataclass(frozen=True)
class Evaluation:
    """Cost (caller's unit) and memory of one assignment; ``step_usage`` over ``T*``."""

    node_cost: float
    edge_cost: float
    peak_memory: float
    peak_step: int | None
    step_usage: dict[int, float]

    @property
    def cost(self) -> float:
        """Objective: node + edge cost."""
        return self.node_cost + self.edge_cost


def evaluate(problem: ShardingProblem, strategies: list[int]) -> Evaluation:
    """Score a strategy per node exactly (no solver)."""
    node_cost = sum(n.costs[s] for n, s in zip(problem.nodes, strategies, strict=True))
    edge_cost = sum(problem.edge_matrix(e)[strategies[e.u], strategies[e.v]] for e in problem.edges)
    chosen = np.array([n.usages[s] for n, s in zip(problem.nodes, strategies, strict=True)], float)
    usage = {t: float(sum(chosen[live].tolist())) for t, live in live_steps(problem)}
    peak_step = max(usage, key=usage.__getitem__) if usage else None
    return Evaluation(float(node_cost), float(edge_cost), usage.get(peak_step, 0.0), peak_step, usage)


@dataclass
class ShardingSolution:
    """The optimum (or best found within the time limit) and how it was reached.

    ``binding_steps``: steps whose memory row is tight (usage within 1e-9 relative of the limit);
    ``memory_lower_bound`` / ``bound_step``: the relaxation of :func:`memory_lower_bound`.
    """

    objective: float
    strategies: list[int]
    status: str
    solver: str
    node_cost: float
    edge_cost: float
    memory_limit: float | None
    peak_memory: float
    peak_step: int | None
    binding_steps: list[int]
    memory_lower_bound: float
    bound_step: int | None
    build_time_s: float
    solve_time_s: float
    num_variables: int
    num_constraints: int
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_binding(self) -> bool:
        """Whether the memory limit is tight at the optimum."""
        return bool(self.binding_steps)


def _pins_by_rep(problem: ShardingProblem, rep: list[int], pins: dict[int, int]) -> dict[int, int]:
    """Pins moved to representatives (a pin on a repeat copy fixes every copy); checks ranges."""
    fixed: dict[int, int] = {}
    for n, k in pins.items():
        if not 0 <= n < len(problem.nodes) or not 0 <= k < len(problem.nodes[n].costs):
            raise ConfigError(f"pin {n}: {k} is not a valid (node, strategy) of this problem")
        if fixed.setdefault(rep[n], k) != k:
            raise ConfigError(f"pins disagree on repeat copies of node {rep[n]}: {fixed[rep[n]]} vs {k}")
    return fixed


def _check_bound(
    problem: ShardingProblem, pins: dict[int, int], limit: float | None
) -> tuple[float, int | None]:
    """Raise the naming ConfigError when ``limit`` is below the relaxation bound."""
    bound, t, live = memory_lower_bound(problem, pins)
    if limit is not None and bound > limit:
        shown = ", ".join(map(str, live[:12])) + (", ..." if len(live) > 12 else "")
        raise ConfigError(
            f"the memory limit {limit:g} is below the smallest possible peak {bound:g} "
            f"(time step {t}, nodes {shown}); raise memory_limit or relax pins"
        )
    return bound, t


def _objective_terms(
    problem: ShardingProblem, rep: list[int]
) -> tuple[dict[int, np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """Linear cost per representative and edge matrices per representative pair (reductions (2))."""
    linear = {r: np.zeros(len(problem.nodes[r].costs)) for r in sorted(set(rep))}
    pairs: dict[tuple[int, int], np.ndarray] = {}
    for k, n in enumerate(problem.nodes):
        linear[rep[k]] += n.costs
    for e in problem.edges:
        ru, rv, mat = rep[e.u], rep[e.v], problem.edge_matrix(e)
        if ru == rv:
            linear[ru] += np.diag(mat)
        elif min(mat.shape) == 1:
            if mat.shape[1] == 1:
                linear[ru] += mat[:, 0]
            else:
                linear[rv] += mat[0]
        else:
            key, mat = ((ru, rv), mat) if ru < rv else ((rv, ru), mat.T)
            pairs[key] = pairs.get(key, 0) + mat
    return linear, pairs


def _build(problem: ShardingProblem, rep: list[int], pins: dict[int, int], limit: float | None) -> Any:
    """The PuLP model (formulation in the module docstring); returns (problem, one-hot vars)."""
    import pulp

    prob = pulp.LpProblem("sharding", pulp.LpMinimize)
    linear, pairs = _objective_terms(problem, rep)
    s = {r: [prob.add_variable(f"s_{r}_{i}", cat="Binary") for i in range(len(c))] for r, c in linear.items()}
    terms = [_dot(c, s[r]) for r, c in linear.items()]
    for r, row in s.items():
        prob += pulp.lpSum(row) == 1, f"one_{r}"
        if r in pins:
            row[pins[r]].lowBound = 1
    for (u, v), mat in pairs.items():
        e = [
            [prob.add_variable(f"e_{u}_{v}_{i}_{j}", 0) for j in range(mat.shape[1])]
            for i in range(mat.shape[0])
        ]
        terms += [_dot(mat[i], e[i]) for i in range(mat.shape[0])]
        for i in range(mat.shape[0]):
            prob += pulp.lpSum(e[i]) == s[u][i], f"row_{u}_{v}_{i}"
        for j in range(mat.shape[1]):
            prob += pulp.lpSum(e[i][j] for i in range(mat.shape[0])) == s[v][j], f"col_{u}_{v}_{j}"
    prob += pulp.lpSum(terms)
    if limit is not None and np.isfinite(limit):
        _add_memory(prob, problem, rep, s, limit)
    return prob, s


def _add_memory(prob: Any, problem: ShardingProblem, rep: list[int], s: dict, limit: float) -> None:
    """One row per step of ``T*`` whose total can vary and whose row (after copies add to their
    representative) is not already there, e.g. the same step of another repeat instance. A step's
    coefficients are one vector over all strategy variables, summed with ``np.add.at`` over its live
    nodes in node order: the order, and so the rounding, of a running sum per representative."""
    import pulp

    usages = [np.asarray(n.usages, float) for n in problem.nodes]
    varies = np.array([min(n.usages) != max(n.usages) for n in problem.nodes], bool)
    offset, size = {}, 0
    for r, row in s.items():
        offset[r], size = size, size + len(row)
    slots = [offset[rep[k]] + np.arange(len(u)) for k, u in enumerate(usages)]
    owner = np.asarray(rep)
    seen: set[tuple] = set()
    for t, live in live_steps(problem):
        if not varies[live].any():
            continue  # constant total, already checked by the bound
        coef = np.zeros(size)
        np.add.at(coef, np.concatenate([slots[n] for n in live]), np.concatenate([usages[n] for n in live]))
        present = dict.fromkeys(owner[live].tolist())  # representatives, by first appearance
        key = (tuple(sorted(present)), coef.tobytes())
        if key not in seen:
            seen.add(key)
            terms = [
                term for r in present for term in _dot(coef[offset[r] : offset[r] + len(s[r])], s[r]).items()
            ]
            prob += pulp.LpAffineExpression(terms) <= limit, f"mem_t{t}"


def _dot(coefs: np.ndarray, variables: list[Any]) -> Any:
    """Σ coefs[i]·variables[i] as one PuLP expression, zero terms left out (as ``pulp.lpDot`` does),
    built in one pass rather than term by term."""
    import pulp

    return pulp.LpAffineExpression([(v, c) for c, v in zip(coefs.tolist(), variables, strict=True) if c != 0])


def _backend(solver: str, time_limit_s: float | None, threads: int | None) -> Any:
    """PuLP's bundled CBC (default) or its HiGHS API, only if highspy can be imported."""
    import pulp

    if solver == "cbc":
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, threads=threads)
    if solver == "highs":
        if not pulp.HiGHS(msg=False).available():
            raise ConfigError(
                "solver='highs' needs highspy: pip install 'highspy<1.15' "
                "(1.15 cannot be loaded with ortools 9.15), or use solver='cbc'"
            )
        return pulp.HiGHS(msg=False, timeLimit=time_limit_s, threads=threads)
    raise ConfigError(f"unknown solver {solver!r}; choose 'cbc' or 'highs'")


def _status(prob: Any, limit: float | None, bound: float, time_limit_s: float | None) -> str:
    """'optimal' or 'feasible' (stopped by the time limit); ConfigError when none was found in time."""
    if prob.sol_status == 1:
        return "optimal"
    if prob.sol_status == 2:
        return "feasible"
    if prob.status == -1 or prob.sol_status == -1:
        raise RuntimeError(
            f"solver reports infeasible, yet the least-memory choice peaks at {bound:g} "
            f"<= limit {limit:g}: numerical trouble; try the other solver"
        )
    raise ConfigError(f"no solution found within time_limit_s={time_limit_s}; raise it")


def solve(
    problem: ShardingProblem,
    *,
    memory_limit: float | None = None,
    solver: str = "cbc",
    time_limit_s: float | None = None,
    pins: dict[int, int] | None = None,
    threads: int | None = None,
) -> ShardingSolution:
    """Least-cost strategy per node under the memory limit (``None``: the problem's own; ``math.inf``:
    none). ``pins`` maps node -> strategy. Raises :class:`ConfigError` when infeasible."""
    start = perf_counter()
    limit = problem.memory_limit if memory_limit is None else memory_limit
    limit = None if limit is None or not np.isfinite(limit) else float(limit)
    rep = representatives(problem)
    fixed = _pins_by_rep(problem, rep, pins or {})
    bound, bound_step = _check_bound(problem, {n: fixed[r] for n, r in enumerate(rep) if r in fixed}, limit)
    prob, s = _build(problem, rep, fixed, limit)
    build_s, t0 = perf_counter() - start, perf_counter()
    prob.solve(_backend(solver, time_limit_s, threads))
    solve_s = perf_counter() - t0
    status = _status(prob, limit, bound, time_limit_s)
    choice = {r: int(np.argmax([v.varValue or 0.0 for v in row])) for r, row in s.items()}
    strategies = [choice[r] for r in rep]
    ev = evaluate(problem, strategies)
    tol = 1e-9 * max(1.0, abs(limit or 0.0))
    binding = [t for t, u in ev.step_usage.items() if limit is not None and u >= limit - tol]
    return ShardingSolution(
        ev.cost,
        strategies,
        status,
        solver,
        ev.node_cost,
        ev.edge_cost,
        limit,
        ev.peak_memory,
        ev.peak_step,
        binding,
        bound,
        bound_step,
        build_s,
        solve_s,
        prob.numVariables(),
        prob.numConstraints(),
        {"solver_objective": _solver_value(prob)},
    )


def _solver_value(prob: Any) -> float:
    """The solver's objective value (includes constants)."""
    import pulp

    return float(pulp.value(prob.objective) or 0.0)
