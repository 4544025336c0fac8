"""Topology-aware placement: which device runs which rank of a TP·CP·EP·DP·PP job.

Traffic model. Ranks are numbered by the job's nesting order (default Megatron's: tp innermost,
then cp, ep, dp, pp outermost). A group of type t holds the ranks that differ only in coordinate
t, in coordinate order, and runs a **ring**: neighbours in group order talk, the last back to the
first (a pipeline (pp) and any 2-rank group are a chain, no wrap-around). Each neighbour pair moves

    wire_bytes_t = bus_factor(collective_t, n_t) · S_t          [NCCL bus bandwidth factors]

with S_t = ``Job.bytes_per_step[t]`` the collective's buffer per rank per step and factor
2(n-1)/n for all-reduce (tp, cp, dp), (n-1)/n for all-to-all (ep), 1 for send/recv (pp).
Placement π: rank → device. With H the tier-weighted hop-cost matrix (``search.topology``):

    cost_sum(π) = Σ_groups Σ_(a,b) ring pairs wire_bytes · H[π(a), π(b)]
    cost_max(π) = max_groups Σ_(a,b) ring pairs wire_bytes · H[π(a), π(b)]   (largest group span)

and the third objective, ``time``, is :func:`evaluate`'s communication time per step, which sees
links shared by concurrent groups (a 2:1 oversubscribed spine is free until its uplinks fill).

Solvers: :func:`rank_order` (ranks onto available devices in device order), :func:`tree_heuristic`
(dlcalc's ``topoassign`` idea: walk the topology tree depth first, fill a node, then its leaf, ...,
each TP group whole inside one scale-up domain), and :func:`cp_sat` (OR-Tools CP-SAT; exact for
small instances, decomposed by the topology's levels like Arnold's MIP placement (units onto
leaves, onto nodes, then devices) for large ones, started from the best of the baselines and of
:func:`nesting_starts`; it never returns worse than the better baseline that obeys the same rule).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import networkx as nx
import numpy as np
from ortools.sat.python import cp_model

from costmodels.errors import ConfigError
from costmodels.network import Link, all_reduce_time_s, all_to_all_time_s
from costmodels.parallel import Plan
from costmodels.training import group_collectives
from search.topology import DEVICE_KINDS, Topology, ecmp_split, hop_cost_matrix, route

GROUP_TYPES = ("tp", "cp", "ep", "dp", "pp")
# the collective each group type runs under the default plan (ring CP); a Job carries its plan's
COLLECTIVE: Mapping[str, str] = MappingProxyType(group_collectives(Plan()))
COLLECTIVE_KINDS = ("all_reduce", "all_to_all", "send_recv")  # what bus_factor prices


@dataclass(frozen=True)
class Job:
    """Parallel degrees, nesting order (innermost first) and S_t, bytes per rank per step by type.

    EP is an axis of its own here (N = tp·cp·ep·dp·pp): ``dp`` counts the replicas outside the expert
    groups, Megatron's data-parallel degree divided by ep (``dse.placement_search.placement_job``
    converts); :meth:`as_dict` reports Megatron's degree, dp·ep, as the rest of dse does.
    ``collectives``: the collective each group type runs, from the training plan
    (``costmodels.training.group_collectives``: all-to-all for Ulysses CP, say).
    """

    tp: int = 1
    cp: int = 1
    ep: int = 1
    dp: int = 1
    pp: int = 1
    bytes_per_step: Mapping[str, float] = field(default_factory=dict)
    order: tuple[str, ...] = GROUP_TYPES
    collectives: Mapping[str, str] = field(default_factory=lambda: dict(COLLECTIVE))

    def __post_init__(self) -> None:
        if sorted(self.order) != sorted(GROUP_TYPES):
            raise ConfigError(f"Job.order must be a permutation of {GROUP_TYPES}, got {self.order}")
        for t in GROUP_TYPES:
            if not (isinstance(self.degree(t), int) and self.degree(t) >= 1):
                raise ConfigError(f"Job.{t} must be an int >= 1, got {self.degree(t)!r}")
        for t, s in self.bytes_per_step.items():
            if t not in GROUP_TYPES or not s >= 0:
                raise ConfigError(f"bytes_per_step[{t!r}] = {s!r}: keys in {GROUP_TYPES}, values >= 0")
        got = dict(self.collectives)
        if sorted(got) != sorted(GROUP_TYPES) or not set(got.values()) <= set(COLLECTIVE_KINDS):
            raise ConfigError(f"Job.collectives must map {GROUP_TYPES} to {COLLECTIVE_KINDS}, got {got}")

    def degree(self, t: str) -> int:
        return getattr(self, t)

    def collective(self, t: str) -> str:
        """The collective a group of type ``t`` runs (:attr:`collectives`)."""
        return self.collectives[t]

    @property
    def n_ranks(self) -> int:
        return int(np.prod([self.degree(t) for t in GROUP_TYPES]))

    def as_dict(self) -> dict:
        """JSON-ready: the degrees (dp as Megatron counts it), nesting order, rank count and bytes
        per step."""
        return {
            **{t: self.degree(t) for t in ("tp", "pp", "cp", "ep")},
            "dp": self.dp * self.ep,  # Megatron's data-parallel degree, the expert ranks included
            "order": list(self.order),
            "collectives": dict(self.collectives),
            "n_ranks": self.n_ranks,
            "bytes_per_step": dict(self.bytes_per_step),
        }


def groups(job: Job) -> dict[str, list[tuple[int, ...]]]:
    """Rank groups per type of degree > 1; rank = Σ_t coord_t · stride_t, strides by nesting order."""
    stride, s = {}, 1
    for t in job.order:
        stride[t], s = s, s * job.degree(t)
    ranks = np.arange(job.n_ranks)
    out = {}
    for t in GROUP_TYPES:
        if job.degree(t) > 1:
            base = ranks[(ranks // stride[t]) % job.degree(t) == 0]
            out[t] = [tuple(int(b + k * stride[t]) for k in range(job.degree(t))) for b in base]
    return out


def ring_pairs(kind: str, group: Sequence[int]) -> list[tuple[int, int]]:
    """Neighbour pairs that talk: a ring, or a chain for pp and for 2-rank groups."""
    pairs = list(itertools.pairwise(group))
    return [*pairs, (group[-1], group[0])] if kind != "pp" and len(group) > 2 else pairs


def bus_factor(collective: str, n: int) -> float:
    """NCCL's bus bandwidth factor of ``collective`` over ``n`` ranks: the bytes each ring pair moves
    per byte of buffer."""
    return {"all_reduce": 2 * (n - 1) / n, "all_to_all": (n - 1) / n, "send_recv": 1.0}[collective]


def wire_bytes(job: Job, kind: str) -> float:
    """Bytes each ring pair moves per step: NCCL bus factor × S_t (see the module docstring)."""
    return bus_factor(job.collective(kind), job.degree(kind)) * float(job.bytes_per_step.get(kind, 0.0))


@dataclass(frozen=True)
class Traffic:
    """Flat ring-pair arrays: pair k joins ranks a[k], b[k], moves w[k] bytes, in group g[k]."""

    a: np.ndarray
    b: np.ndarray
    w: np.ndarray
    g: np.ndarray
    kinds: tuple[str, ...]  # type of each group index
    members: tuple[tuple[int, ...], ...]  # ranks of each group index


def traffic(job: Job) -> Traffic:
    rows, kinds, members = [], [], []
    for kind, gs in groups(job).items():
        for grp in gs:
            rows += [(a, b, wire_bytes(job, kind), len(kinds)) for a, b in ring_pairs(kind, grp)]
            kinds.append(kind)
            members.append(grp)
    arr = np.array(rows, dtype=float).reshape(-1, 4)
    return Traffic(
        arr[:, 0].astype(int),
        arr[:, 1].astype(int),
        arr[:, 2],
        arr[:, 3].astype(int),
        tuple(kinds),
        tuple(members),
    )


def placement_cost(tr: Traffic, h: np.ndarray, devices: Sequence[int], objective: str = "sum") -> float:
    """cost_sum or cost_max of the module docstring for ``devices[rank]`` (indices into H)."""
    dev = np.asarray(devices)
    per_pair = tr.w * h[dev[tr.a], dev[tr.b]]
    if objective == "sum":
        return float(per_pair.sum())
    if objective == "max":
        return float(np.bincount(tr.g, per_pair, minlength=len(tr.kinds)).max(initial=0.0))
    raise ConfigError(f"objective must be 'sum' or 'max', got {objective!r}")


OBJECTIVES = ("sum", "max", "time")


def score(
    job: Job,
    topo: Topology,
    devices: Sequence[int],
    objective: str = "sum",
    tier_weights: Mapping[str, float] | None = None,
) -> float:
    """A placement's cost under ``objective``: cost_sum, cost_max (hop costs, module docstring) or
    "time", the evaluator's communication time per step with shared links (:func:`evaluate`)."""
    if objective == "time":
        return float(evaluate(job, topo, devices, tier_weights)["comm_time_s"])
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return placement_cost(traffic(job), hop_cost_matrix(topo, tier_weights), devices, objective)


@dataclass(frozen=True)
class Placement:
    """rank → device index (into ``Topology.devices``), its cost, and how it was found; ``bound``: a
    lower bound on the cost of any placement the solver could have returned (the exact model's
    proven bound, or :func:`time_lower_bound` for the time objective), None when none is known."""

    devices: tuple[int, ...]
    cost: float
    method: str
    status: str = "heuristic"
    bound: float | None = None
    solve_time_s: float = 0.0


def _check(job: Job, topo: Topology, keep_tp_in_domain: bool) -> None:
    """ConfigError for more ranks than available devices, or TP groups that cannot stay in domains."""
    n_avail = int(topo.available.sum())
    if job.n_ranks > n_avail:
        raise ConfigError(f"job has {job.n_ranks} ranks but {topo.name} has {n_avail} available devices")
    if not keep_tp_in_domain or job.tp == 1:
        return
    size = np.bincount(topo.domain_of)
    if job.tp > size.max():
        raise ConfigError(
            f"tp={job.tp} is larger than any scale-up domain (largest: {size.max()} devices); "
            "lower tp or pass keep_tp_in_domain=False"
        )
    slots = int((np.bincount(topo.domain_of, topo.available) // job.tp).sum())
    if slots < job.n_ranks // job.tp:
        raise ConfigError(
            f"only {slots} of {job.n_ranks // job.tp} TP groups (tp={job.tp}) fit inside "
            "scale-up domains with enough available devices; pass keep_tp_in_domain=False"
        )


def tp_in_domain(job: Job, topo: Topology, devices: Sequence[int]) -> bool:
    """Whether every TP group sits inside one scale-up domain."""
    dom = topo.domain_of[np.asarray(devices)]
    return all(len(set(dom[list(g)])) == 1 for g in groups(job).get("tp", []))


def rank_order(job: Job, topo: Topology, objective: str = "sum", tier_weights=None) -> Placement:
    """Baseline: rank r onto the r-th available device in device order."""
    _check(job, topo, keep_tp_in_domain=False)
    dev = tuple(int(d) for d in np.flatnonzero(topo.available)[: job.n_ranks])
    return Placement(dev, score(job, topo, dev, objective, tier_weights), "rank_order")


def _tree_slots(topo: Topology, unit: int) -> list[list[int]]:
    """Chunks of ``unit`` available devices inside one domain, domains depth-first by their tree."""
    first = [topo.devices[int(np.argmax(topo.domain_of == d))] for d in range(len(topo.domains))]
    order = sorted(range(len(topo.domains)), key=lambda d: (topo.graph.nodes[first[d]]["tree"], d))
    slots = []
    for d in order:
        free = np.flatnonzero((topo.domain_of == d) & topo.available).tolist()
        slots += [free[i : i + unit] for i in range(0, len(free) - unit + 1, unit)]
    return slots


def tree_heuristic(
    job: Job, topo: Topology, objective: str = "sum", tier_weights=None, keep_tp_in_domain: bool = True
) -> Placement:
    """topoassign-style: TP groups, by first rank, onto TP-sized slots of domains taken depth first."""
    _check(job, topo, keep_tp_in_domain)
    unit = job.tp if keep_tp_in_domain else 1
    units = groups(job).get("tp", []) if unit > 1 else [(r,) for r in range(job.n_ranks)]
    dev = np.empty(job.n_ranks, dtype=int)
    for grp, slot in zip(sorted(units), _tree_slots(topo, unit), strict=False):
        dev[list(grp)] = slot
    devices = tuple(int(d) for d in dev)
    return Placement(devices, score(job, topo, devices, objective, tier_weights), "tree_heuristic")


def _coords(job: Job, rank: int) -> dict[str, int]:
    """A rank's coordinate per group type under the job's nesting order."""
    out, stride = {}, 1
    for t in job.order:
        out[t], stride = (rank // stride) % job.degree(t), stride * job.degree(t)
    return out


def nesting_starts(
    job: Job,
    topo: Topology,
    objective: str = "sum",
    tier_weights=None,
    keep_tp_in_domain: bool = True,
    limit: int = 24,
) -> list[Placement]:
    """Starting points for CP-SAT: the tree heuristic's slots filled with the units (TP groups, or
    ranks) sorted by every nesting of the other parallel axes of degree > 1 (at most ``limit``), e.g.
    pipeline stages innermost, so that a replica's stages share a leaf, or outermost as Megatron
    numbers them. Which is best depends on the traffic and the topology; each is scored."""
    _check(job, topo, keep_tp_in_domain)
    unit = job.tp if keep_tp_in_domain else 1
    units = sorted(groups(job).get("tp", [])) if unit > 1 else [(r,) for r in range(job.n_ranks)]
    axes = [t for t in GROUP_TYPES if job.degree(t) > 1 and (t != "tp" or unit == 1)]
    slots = _tree_slots(topo, unit)
    out = []
    for perm in itertools.islice(itertools.permutations(axes), limit):  # innermost first
        key = [tuple(_coords(job, grp[0])[t] for t in reversed(perm)) for grp in units]
        dev = np.empty(job.n_ranks, dtype=int)
        for u, slot in zip(sorted(range(len(units)), key=key.__getitem__), slots, strict=False):
            dev[list(units[u])] = slot
        devices = tuple(int(d) for d in dev)
        out.append(
            Placement(
                devices, score(job, topo, devices, objective, tier_weights), f"nesting {'·'.join(perm)}"
            )
        )
    return out


def _ints(x: np.ndarray, digits: int = 6) -> tuple[np.ndarray, float]:
    """Integer copy of x ≥ 0 for CP-SAT and its scale: exact for integers, else 10^digits relative."""
    if np.allclose(x, np.round(x)) and x.max(initial=0) < 1e9:
        return np.round(x).astype(np.int64), 1.0
    scale = 10.0**digits / max(x.max(initial=0), 1e-300)
    return np.round(x * scale).astype(np.int64), scale


class _Incumbents(cp_model.CpSolverSolutionCallback):
    """Tells ``say`` of CP-SAT's improving solutions: the n-th, its relative gap to the proven bound
    (objective − bound) / objective, which needs no scale, and the solver's wall time; at most one
    line per ``every_s`` seconds after the first."""

    def __init__(self, say: Callable[[str], None], stage: str, every_s: float = 2.0) -> None:
        super().__init__()
        self.say, self.stage, self.every_s = say, stage, every_s
        self.count, self.last_s = 0, -math.inf

    def on_solution_callback(self) -> None:
        self.count += 1
        now = self.wall_time
        if now - self.last_s < self.every_s:
            return
        self.last_s = now
        gap = gap_text(self.objective_value, self.best_objective_bound)
        self.say(f"{self.stage}: solution {self.count}, {gap} at {now:.1f} s")


def gap_text(objective: float, bound: float) -> str:
    """'gap 12.5 %' = (objective − bound) / objective, 'optimal' at 0; 'no bound yet' while unknown."""
    if not math.isfinite(bound) or not objective > 0:
        return "no bound yet" if objective > 0 else "gap 0 %"
    gap = max(objective - bound, 0.0) / objective
    return "gap 0 % (optimal)" if gap < 1e-9 else f"gap {gap:.1%}"


def _solve(
    model: cp_model.CpModel,
    time_limit_s: float,
    workers: int,
    seed: int,
    on_solution: Callable[[str], None] | None = None,
    stage: str = "CP-SAT",
) -> tuple[cp_model.CpSolver, str]:
    """Solve; the status as a lower-case name (optimal, feasible, infeasible, unknown). ``on_solution``
    hears of improving solutions (:class:`_Incumbents`)."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = int(workers)
    solver.parameters.random_seed = int(seed)
    # presolve's symmetry and dual reductions may cut off the hinted placement; keep it reachable
    solver.parameters.keep_all_feasible_solutions_in_presolve = True
    callback = _Incumbents(on_solution, stage) if on_solution else None
    status = solver.solve(model, callback)
    return solver, solver.status_name(status).lower()


def _assignment_model(
    n_items: int,
    n_bins: int,
    pair_w: np.ndarray,
    pairs: np.ndarray,
    cost: np.ndarray,
    group: np.ndarray,
    objective: str,
):
    """x[i] ∈ bins; pair cost c_k = AddElement(x[a]·B + x[b], cost), objective Σ or max over groups."""
    m = cp_model.CpModel()
    x = [m.new_int_var(0, n_bins - 1, f"x{i}") for i in range(n_items)]
    table, h_scale = _ints(cost)
    w, w_scale = _ints(pair_w)
    terms = []
    for k, (a, b) in enumerate(pairs):
        c = m.new_int_var(0, int(table.max(initial=0)), f"c{k}")
        m.add_element(x[a] * n_bins + x[b], table.ravel().tolist(), c)
        terms.append((int(w[k]), c, int(a), int(b)))
    if objective == "max":
        z = m.new_int_var(0, int(w.sum() * table.max(initial=0)), "z")
        for gi in np.unique(group):
            m.add(z >= sum(wk * c for (wk, c, *_), gk in zip(terms, group, strict=True) if gk == gi))
        m.minimize(z)
    else:
        m.minimize(sum(wk * c for wk, c, *_ in terms))
    return m, x, terms, w_scale * h_scale


def _hint(m: cp_model.CpModel, x: list, terms: list, values: Sequence[int], table: np.ndarray) -> None:
    """Hint the positions and every pair-cost variable (a complete hint CP-SAT can take as is)."""
    for v, val in zip(x, values, strict=True):
        m.add_hint(v, int(val))
    for _, c, a, b in terms:
        m.add_hint(c, int(table[values[a], values[b]]))


def _exact(
    job: Job,
    topo: Topology,
    tr: Traffic,
    h: np.ndarray,
    hint: Placement,
    keep_tp: bool,
    objective: str,
    opts: dict,
) -> tuple[tuple[int, ...] | None, str, float | None]:
    """Exact model on available devices: AllDifferent positions, TP groups share a domain."""
    avail = np.flatnonzero(topo.available)
    local = {int(d): i for i, d in enumerate(avail)}
    pairs = np.stack([tr.a, tr.b], axis=1)
    sub = h[np.ix_(avail, avail)]
    m, x, terms, scale = _assignment_model(job.n_ranks, len(avail), tr.w, pairs, sub, tr.g, objective)
    m.add_all_different(x)
    if keep_tp and job.tp > 1:
        dom = topo.domain_of[avail].tolist()
        for gi, grp in enumerate(groups(job)["tp"]):
            d = m.new_int_var(0, len(topo.domains) - 1, f"dom{gi}")
            for r in grp:
                m.add_element(x[r], dom, d)
    _hint(m, x, terms, [local[d] for d in hint.devices], _ints(sub)[0])
    solver, status = _solve(m, **opts, stage="CP-SAT exact model")
    if status not in ("optimal", "feasible"):
        return None, status, None
    devices = tuple(int(avail[solver.value(v)]) for v in x)
    return devices, status, solver.best_objective_bound / scale


def _units(job: Job, keep_tp: bool) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Placement units (TP groups when they stay in a domain, else single ranks) and each rank's unit."""
    units = sorted(groups(job)["tp"]) if keep_tp and job.tp > 1 else [(r,) for r in range(job.n_ranks)]
    unit_of = np.empty(job.n_ranks, dtype=int)
    for u, grp in enumerate(units):
        unit_of[list(grp)] = u
    return units, unit_of


def _unit_pairs(tr: Traffic, unit_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ring pairs between different units, merged per unordered unit pair: (pairs, weights, group of
    the first merged pair — for cost_max, whose groups never merge across types)."""
    ua, ub = unit_of[tr.a], unit_of[tr.b]
    merged: dict[tuple[int, int, int], float] = {}
    for x, y, w, g in zip(ua, ub, tr.w, tr.g, strict=True):
        if x != y:
            key = (int(min(x, y)), int(max(x, y)), int(g))
            merged[key] = merged.get(key, 0.0) + float(w)
    keys = list(merged)
    pairs = np.array([k[:2] for k in keys], dtype=int).reshape(-1, 2)
    return pairs, np.array([merged[k] for k in keys]), np.array([k[2] for k in keys], dtype=int)


def _bins(topo: Topology, cap: np.ndarray) -> list[np.ndarray]:
    """Domains with room, grouped by their innermost switch group (the leaf of a GPU cluster, the
    innermost network node of an instance topology); one bin per domain when devices carry no tree."""
    by_key: dict[object, list[int]] = {}
    for d in np.flatnonzero(cap > 0):
        tree = topo.graph.nodes[topo.devices[int(np.argmax(topo.domain_of == d))]]["tree"]
        by_key.setdefault(tree[-1] if tree else ("domain", int(d)), []).append(int(d))
    return [np.array(v) for v in by_key.values()]


def _bin_costs(h: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """Cost of a unit pair split over two bins: the cheapest device pair between them; inside one
    bin, the cheapest pair of distinct devices (optimistic when two units cannot share a domain)."""
    c = np.empty((len(members), len(members)))
    for i, fi in enumerate(members):
        for j, fj in enumerate(members):
            sub = h[np.ix_(fi, fj)].astype(float)
            if i == j:
                np.fill_diagonal(sub, np.inf)
            c[i, j] = float(sub.min()) if np.isfinite(sub).any() else 0.0
    return c


def _partition_model(n_units: int, n_bins: int, pairs: np.ndarray, w: np.ndarray, near: float, far: float):
    """Bins at one uniform distance (a flat spine): cost Σ w·far − (far − near)·Σ w·[same bin], so
    maximise the weight kept inside bins; s_k ⇒ x[a] = x[b]. Far lighter than element tables."""
    m = cp_model.CpModel()
    x = [m.new_int_var(0, n_bins - 1, f"x{i}") for i in range(n_units)]
    wi, _ = _ints(w)
    same = []
    for k, (a, b) in enumerate(pairs):
        s_k = m.new_bool_var(f"s{k}")
        m.add(x[int(a)] == x[int(b)]).only_enforce_if(s_k)
        same.append(s_k)
    m.maximize(sum(int(wk) * s_k for wk, s_k in zip(wi, same, strict=True)) if far > near else 0)
    return m, x, same


def _capacity(m: cp_model.CpModel, x: list, caps: Sequence[int]) -> list[list]:
    """At most caps[j] items in bin j (x[i] = j ⇔ in[j][i]; Σ_i in[j][i] ≤ cap); returns ``in``."""
    member = []
    for j, cap in enumerate(caps):
        in_j = [m.new_bool_var(f"in{i}_{j}") for i in range(len(x))]
        for xi, b in zip(x, in_j, strict=True):
            m.add(xi == j).only_enforce_if(b)
            m.add(xi != j).only_enforce_if(~b)
        m.add(sum(in_j) <= int(cap))
        member.append(in_j)
    return member


def _time_terms(
    m: cp_model.CpModel,
    member: list[list],
    pairs: np.ndarray,
    w: np.ndarray,
    hint: Sequence[int],
    kinds: np.ndarray,
    uplink_Bps: np.ndarray,
    floor_s: Mapping[int, float],
):
    """The "time" objective on bins (docstring of :func:`_hierarchical`): y[k][b] ≥ |in_a,b − in_c,b|
    marks pair k leaving bin b; per group type t, T_t ≥ floor_t and 2·U_b·T_t ≥ Σ_k∈t w_k·y_kb (half
    a pair's bytes leave each end's bin: a ring leaves a bin as often as it enters it, a pipeline pair
    sends half each way); T_t is the drain time :func:`evaluate` charges. Every variable is hinted
    from ``hint``. Returns Σ_t T_t, the crossing weight Σ w·y (the tie-break) and the weight that
    makes the first dominate, all as integers."""
    wi = np.maximum(np.round(w / (w.max() / 1000.0)), 1).astype(int)
    ui = np.maximum(np.round(uplink_Bps / (uplink_Bps.max() / 1000.0)), 1).astype(int)
    tau = (w.max() / 1000.0) / (uplink_Bps.max() / 1000.0)  # seconds per unit of T
    for b, in_b in enumerate(member):
        for u, var in enumerate(in_b):
            m.add_hint(var, hint[u] == b)
    cross, load, hinted = [], {}, {}
    for k, (a, c) in enumerate(pairs):
        for b, in_b in enumerate(member):
            y = m.new_bool_var(f"y{k}_{b}")
            m.add(y >= in_b[int(a)] - in_b[int(c)])
            m.add(y >= in_b[int(c)] - in_b[int(a)])
            leaves = (hint[a] == b) != (hint[c] == b)
            m.add_hint(y, leaves)
            cross.append(int(wi[k]) * y)
            load.setdefault((int(kinds[k]), b), []).append(int(wi[k]) * y)
            hinted[(int(kinds[k]), b)] = hinted.get((int(kinds[k]), b), 0) + int(wi[k]) * leaves
    total = []
    for t in sorted(set(kinds.tolist())):
        top = int(wi[kinds == t].sum())
        low = min(int(np.ceil(floor_s.get(t, 0.0) / tau)), top)
        t_var = m.new_int_var(low, top, f"T{t}")
        need = [-(-hinted[(t, b)] // (2 * int(ui[b]))) for b in range(len(member)) if (t, b) in load]
        m.add_hint(t_var, max([low, *need]))
        for b in range(len(member)):
            if (t, b) in load:
                m.add(2 * int(ui[b]) * t_var >= sum(load[(t, b)]))
        total.append(t_var)
    return sum(total), sum(cross), 2 * int(wi.sum()) * len(member) + 1


def _assign(
    n_units: int,
    pairs: np.ndarray,
    w: np.ndarray,
    g: np.ndarray,
    cost: np.ndarray,
    caps: Sequence[int],
    hint: Sequence[int],
    objective: str,
    opts: dict,
    time_model: tuple | None = None,
) -> tuple[list[int], str]:
    """Units onto capacitated bins minimising Σ (or max over groups) w·cost[bin_a, bin_b], by CP-SAT
    from ``hint``; the partition model when every off-diagonal cost and every diagonal cost is equal
    (cost_sum only); objective "time": ``time_model`` = (kinds, uplink_Bps, floor_s) of
    :func:`_time_terms`. Returns the hint itself when CP-SAT finds nothing better in time."""
    nb = len(caps)
    off = cost[~np.eye(nb, dtype=bool)]
    uniform = nb > 1 and np.ptp(off) == 0 and np.ptp(np.diag(cost)) == 0
    if not len(pairs) or nb == 1:
        return list(hint), "trivial"
    if objective == "time":
        m = cp_model.CpModel()
        x = [m.new_int_var(0, nb - 1, f"x{i}") for i in range(n_units)]
        for v, val in zip(x, hint, strict=True):
            m.add_hint(v, int(val))
        total, cross, big = _time_terms(m, _capacity(m, x, caps), pairs, w, hint, *time_model)
        m.minimize(big * total + cross)
        solver, status = _solve(m, **opts)
        if status not in ("optimal", "feasible"):
            return list(hint), status
        return [int(solver.value(v)) for v in x], status
    if objective == "sum" and uniform:
        m, x, same = _partition_model(n_units, nb, pairs, w, float(cost[0, 0]), float(off[0]))
        for v, val in zip(x, hint, strict=True):
            m.add_hint(v, int(val))
        for s_k, (a, b) in zip(same, pairs, strict=True):
            m.add_hint(s_k, hint[a] == hint[b])
    else:
        m, x, terms, _ = _assignment_model(n_units, nb, w, pairs, cost, g, objective)
        _hint(m, x, terms, hint, _ints(cost)[0])
    _capacity(m, x, caps)
    solver, status = _solve(m, **opts)
    if status not in ("optimal", "feasible"):
        return list(hint), status
    return [int(solver.value(v)) for v in x], status


def _bin_uplinks(topo: Topology, members: list[np.ndarray]) -> np.ndarray:
    """Bandwidth (B/s, one direction) of the spine-tier links leaving each bin's part of the network,
    the part its devices reach without a spine-tier link (a leaf with its nodes; a rail group's rail
    leaves). A part shared by two bins has no uplink of its own: ConfigError."""
    g = topo.graph
    local = nx.Graph()
    local.add_nodes_from(g.nodes)
    local.add_edges_from((u, v) for u, v, t in g.edges(data="tier") if t != "spine")
    part = {n: k for k, comp in enumerate(nx.connected_components(local)) for n in comp}
    owner: dict[int, int] = {}
    out = np.zeros(len(members))
    for b, devs in enumerate(members):
        for c in {part[topo.devices[int(d)]] for d in devs}:
            if owner.setdefault(c, b) != b:
                raise ConfigError(
                    "objective 'time' needs switch groups joined only by spine-tier links; "
                    "use objective=sum on this topology"
                )
    for u, v, a in g.edges(data=True):
        if a["tier"] == "spine" and part[u] != part[v]:
            for end in (u, v):
                if part[end] in owner:
                    out[owner[part[end]]] += a["bandwidth_Bps"]
    return np.maximum(out, 1e-300)


def _node_floor_s(topo: Topology, tr: Traffic, devices: Sequence[int]) -> dict[int, float]:
    """Per group type (index into GROUP_TYPES): the largest bytes a scale-up domain sends to other
    domains over the bandwidth of its own links out (its NICs), for ``devices``: the time no
    placement of whole TP groups beats, since those bytes leave the node wherever the peers sit."""
    dev = np.asarray(devices)
    dom_a, dom_b = topo.domain_of[dev[tr.a]], topo.domain_of[dev[tr.b]]
    index = {dom: k for k, dom in enumerate(topo.domains)}  # a domain's switch node has the domain's id
    where = {n: index.get(a.get("domain", n)) for n, a in topo.graph.nodes(data=True)}
    nic = np.zeros(len(topo.domains))
    for u, v, a in topo.graph.edges(data=True):
        if where[u] != where[v]:
            for end in (u, v):
                if where[end] is not None:
                    nic[where[end]] += a["bandwidth_Bps"]
    floor = {}
    for t, kind in enumerate(GROUP_TYPES):
        sel = np.isin(tr.g, [gi for gi, k in enumerate(tr.kinds) if k == kind]) & (dom_a != dom_b)
        if sel.any():
            sent = np.bincount(dom_a[sel], tr.w[sel], minlength=len(topo.domains))
            if COLLECTIVE[kind] == "send_recv":  # half each way (see evaluate)
                sent = (sent + np.bincount(dom_b[sel], tr.w[sel], minlength=len(topo.domains))) / 2
            floor[t] = float((sent / np.maximum(nic, 1e-300)).max())
    return floor


def _hierarchical(
    job: Job,
    topo: Topology,
    tr: Traffic,
    h: np.ndarray,
    hint: Placement,
    keep_tp: bool,
    objective: str,
    opts: dict,
) -> tuple[tuple[int, ...] | None, str, float | None]:
    """Decomposition by the topology's levels, CP-SAT at each (Arnold-style: units onto switch
    groups, then onto domains, then devices):

    1. units (TP groups, or single ranks) onto bins = switch groups (:func:`_bins`) with capacity
       Σ ⌊available/unit⌋ of their domains, pair cost :func:`_bin_costs`; ring pairs merged per unit
       pair, so a 1,024-GPU job with TP 8 is ~100 units on 16 bins;
    2. inside each bin, its units onto its domains (same model, the bin's internal pairs);
    3. each domain's devices filled in order, then swap descent on cost_sum inside domains.

    Objective "time" (stage 1; stages 2-3 use cost_sum): the estimated communication time of the
    types that cross nodes, Σ_t T_t, where T_t is the larger of the node floor (the bytes a node sends
    out over its NICs, :func:`_node_floor_s`) and, for every bin, the bytes its pairs of type t send
    out of the bin over the bin's spine uplinks (:func:`_bin_uplinks`); crossing a 2:1 oversubscribed
    spine is free until the uplinks fill, then it costs time — what the hop cost cannot see. Ties go
    to the fewer bytes crossing bins.

    Stage 1 gets half the time limit, stage 2 a third shared by the bins, stage 3 the rest."""
    t0 = time.perf_counter()
    units, unit_of = _units(job, keep_tp)
    size = len(units[0])
    cap = np.bincount(topo.domain_of, topo.available, minlength=len(topo.domains)).astype(int) // size
    bins = _bins(topo, cap)
    free = {int(d): np.flatnonzero((topo.domain_of == d) & topo.available) for d in np.flatnonzero(cap > 0)}
    devs_of = [np.concatenate([free[int(d)] for d in b]) for b in bins]
    pairs, w, g = _unit_pairs(tr, unit_of)
    bin_of_domain = {int(d): i for i, b in enumerate(bins) for d in b}
    hint_dom = [int(topo.domain_of[hint.devices[grp[0]]]) for grp in units]
    limit = opts["time_limit_s"]
    o1 = opts | {"time_limit_s": limit / 2, "stage": "CP-SAT stage 1 (units onto switch groups)"}
    time_model = None
    if objective == "time":
        kinds = np.array([GROUP_TYPES.index(tr.kinds[gi]) for gi in g], dtype=int)
        time_model = (kinds, _bin_uplinks(topo, devs_of), _node_floor_s(topo, tr, hint.devices))
    stage1, status = _assign(
        len(units),
        pairs,
        w,
        g,
        _bin_costs(h, devs_of),
        [int(cap[b].sum()) for b in bins],
        [bin_of_domain[d] for d in hint_dom],
        objective,
        o1,
        time_model,
    )
    objective = "sum" if objective == "time" else objective
    domain_of_unit = np.empty(len(units), dtype=int)
    o2 = opts | {"time_limit_s": max(limit / 3 / len(bins), 0.05), "on_solution": None}
    for i, b in enumerate(bins):
        mine = [u for u in range(len(units)) if stage1[u] == i]
        if not mine:
            continue
        local = {u: k for k, u in enumerate(mine)}
        inside = [k for k, (a, c) in enumerate(pairs) if a in local and c in local]
        sub_pairs = np.array([[local[pairs[k][0]], local[pairs[k][1]]] for k in inside], dtype=int)
        sub_pairs = sub_pairs.reshape(-1, 2)
        costs = _bin_costs(h, [free[int(d)] for d in b])
        # the hint: units keep their hinted domain when it is in this bin and has room, else fill
        left = {int(d): int(cap[d]) for d in b}
        start = []
        for u in mine:
            d = hint_dom[u] if left.get(hint_dom[u], 0) > 0 else max(left, key=left.get)
            left[d] -= 1
            start.append(list(b).index(d))
        chosen, _ = _assign(
            len(mine), sub_pairs, w[inside], g[inside], costs, [int(cap[d]) for d in b], start, objective, o2
        )
        for u, k in zip(mine, chosen, strict=True):
            domain_of_unit[u] = int(b[k])
    dev = np.empty(job.n_ranks, dtype=int)
    for d, positions in free.items():
        mine = [r for u, grp in enumerate(units) if domain_of_unit[u] == d for r in grp]
        dev[mine] = positions[: len(mine)]
    deadline = t0 + limit
    return _swap_descent(tr, h, dev, list(free.values()), deadline), f"stage1 {status}", None


def _swap_descent(
    tr: Traffic, h: np.ndarray, dev: np.ndarray, free: list[np.ndarray], deadline: float
) -> tuple[int, ...]:
    """First-improvement descent on cost_sum: swap the occupants (or an occupant and a hole) of two
    available devices of one domain, until no swap helps or the deadline passes."""
    incident = [np.flatnonzero((tr.a == r) | (tr.b == r)) for r in range(len(dev))]
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for positions in free:
            for i, p in enumerate(positions):
                for q in positions[i + 1 :]:
                    improved |= _try_swap(tr, h, dev, incident, int(p), int(q))
    return tuple(int(d) for d in dev)


def _try_swap(
    tr: Traffic, h: np.ndarray, dev: np.ndarray, incident: list[np.ndarray], p: int, q: int
) -> bool:
    """Swap what sits on devices p and q if that lowers cost_sum; report whether it did."""
    rp, rq = np.flatnonzero(dev == p), np.flatnonzero(dev == q)
    if not len(rp) and not len(rq):
        return False
    idx = np.unique(np.concatenate([incident[r] for r in [*rp, *rq]]))
    before = float((tr.w[idx] * h[dev[tr.a[idx]], dev[tr.b[idx]]]).sum())
    dev[rp], dev[rq] = q, p
    if float((tr.w[idx] * h[dev[tr.a[idx]], dev[tr.b[idx]]]).sum()) < before - 1e-9 * abs(before):
        return True
    dev[rp], dev[rq] = p, q
    return False


def cp_sat(
    job: Job,
    topo: Topology,
    *,
    time_limit_s: float = 30,
    workers: int = 2,
    objective: str = "sum",
    keep_tp_in_domain: bool = True,
    seed: int = 0,
    method: str = "auto",
    exact_max_devices: int = 16,
    tier_weights: Mapping[str, float] | None = None,
    on_solution: Callable[[str], None] | None = None,
) -> Placement:
    """CP-SAT placement. ``method``: "exact" (x[r] ∈ available devices, AllDifferent, each ring
    pair's cost by AddElement(x[a]·M + x[b], H); proves optimality up to ~16 devices: CP-SAT expands
    each element into M² literals, so at 24 devices presolve alone takes seconds), "hierarchical"
    (:func:`_hierarchical`), or "auto" (hierarchical, then exact from its answer when at most
    ``exact_max_devices`` are available; the time limit is split between the runs). Every run is
    hinted with the best placement so far, starting from the better baseline; the result is the best
    of the runs and the baselines that obey ``keep_tp_in_domain`` (ties go to CP-SAT). ``objective``
    "sum" / "max": hop costs; "time": the evaluator's communication time, optimised by the
    hierarchical model (:func:`_hierarchical`; not by "exact"). ``on_solution(message)`` hears of the
    improving solutions of the exact model and of the hierarchy's first stage (:class:`_Incumbents`)."""
    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "time" and method == "exact":
        raise ConfigError(
            "objective 'time' is optimised by the hierarchical model; use method=auto or "
            "hierarchical, or objective=sum for the exact one"
        )
    _check(job, topo, keep_tp_in_domain)
    tr, h = traffic(job), hop_cost_matrix(topo, tier_weights)
    base = [
        tree_heuristic(job, topo, objective, tier_weights, keep_tp_in_domain),
        rank_order(job, topo, objective, tier_weights),
    ]
    base = [b for b in base if not keep_tp_in_domain or tp_in_domain(job, topo, b.devices)]
    starts = nesting_starts(job, topo, objective, tier_weights, keep_tp_in_domain)
    hint = min([*base, *starts], key=lambda p: p.cost)
    if not len(tr.a):
        return Placement(hint.devices, hint.cost, hint.method, "no traffic", 0.0, time.perf_counter() - t0)
    if method not in ("auto", "exact", "hierarchical"):
        raise ConfigError(f"cp_sat method must be auto, exact or hierarchical, got {method!r}")
    small = topo.available.sum() <= exact_max_devices
    runs = {
        "exact": [_exact],
        "hierarchical": [_hierarchical],
        "auto": [_hierarchical, _exact] if small and objective != "time" else [_hierarchical],
    }[method]
    opts = {
        "time_limit_s": time_limit_s / len(runs),
        "workers": workers,
        "seed": seed,
        "on_solution": on_solution,
    }
    found, bound = [], None
    for solve in runs:  # each run starts from the best placement so far
        devices, status, b = solve(job, topo, tr, h, hint, keep_tp_in_domain, objective, opts)
        if devices is None:  # no solution within the time limit (not even the hint accepted)
            continue
        if solve is _exact and b is not None:  # a stage of the hierarchy bounds only its stage
            bound = b
        found.append(
            Placement(
                devices,
                score(job, topo, devices, objective, tier_weights),
                f"cp_sat{solve.__name__}",
                status,
                b,
            )
        )
        hint = min([hint, found[-1]], key=lambda p: p.cost)
    best = min([*found[::-1], *base, *starts], key=lambda p: p.cost)
    if best in found or best in base:
        method, status = best.method, best.status if best in found else "baseline kept"
    else:
        method, status = "cp_sat", f"start kept ({best.method})"
    if objective == "time":
        bound = time_lower_bound(job, topo, keep_tp_in_domain)["total"]
    return Placement(best.devices, best.cost, method, status, bound, time.perf_counter() - t0)


def _ring_time_s(collective: str, s_bytes: float, n: int, link: Link) -> float:
    """Ring all-reduce / pairwise all-to-all of S bytes over n ranks on ``link`` [costmodels.network]."""
    fn = all_reduce_time_s if collective == "all_reduce" else all_to_all_time_s
    return float(fn(s_bytes, n, link))


Loads = dict[tuple[str, str], float]  # directed link (u, v) -> bytes or share


def _phase_loads(
    topo: Topology, tr: Traffic, dev: np.ndarray, kind: str, tier_weights
) -> tuple[Loads, dict[int, Loads]]:
    """Bytes on each directed link while every group of ``kind`` runs at once, and each pair's (by
    index k) share of its w[k] bytes per directed link: a ring pair sends all of it from dev[a] to
    dev[b]; a pipeline pair half each way (activations forward, their gradients back), ECMP-split."""
    load: Loads = {}
    splits: dict[int, Loads] = {}
    both = COLLECTIVE[kind] == "send_recv"
    for k in np.flatnonzero(np.isin(tr.g, [gi for gi, t in enumerate(tr.kinds) if t == kind])):
        a, b = int(dev[tr.a[k]]), int(dev[tr.b[k]])
        split = {e: f / 2 if both else f for e, f in ecmp_split(topo, a, b, tier_weights).items()}
        if both:
            split |= {e: f / 2 for e, f in ecmp_split(topo, b, a, tier_weights).items()}
        for e, f in split.items():
            load[e] = load.get(e, 0.0) + float(tr.w[k]) * f
        splits[int(k)] = split
    return load, splits


def evaluate(
    job: Job,
    topo: Topology,
    placement: Placement | Sequence[int],
    tier_weights: Mapping[str, float] | None = None,
) -> dict:
    """Score a placement: per group type its span (devices, nodes, leaves crossed), hops, bytes per
    tier, hop cost and communication time per step; overall both costs, bytes per tier, the
    busiest link and the summed communication time.

    Time model (flow level, one phase per group type: all groups of a type run at once, types one
    after another, no overlap with compute). Every ring pair a → b sends its wire bytes over the
    cheapest paths, split by ECMP (:func:`search.topology.ecmp_split`); a pipeline pair sends half each
    way (activations forward, gradients back; every boundary of a pipeline busy at once in steady
    state). Link L (one direction) carries load_L bytes in the phase and drains in
    T_L = load_L / bandwidth_L. A ring finishes when the most loaded link on its paths has drained:
    it sees B_g = wire bytes / max_(L on g's paths) T_L (its bottleneck bandwidth when it shares no
    link) and takes the ring collective's time over Link(B_g, its longest path latency); a pipeline
    takes max_(L on g's paths) T_L plus that latency. ``time_s``: the phase, the slowest group;
    ``time_s_alone``: the slowest group with the network to itself; their ratio is the contention
    factor (e.g. 2 when every NIC of a 2:1 oversubscribed leaf sends across the spine).
    """
    dev = np.asarray(placement.devices if isinstance(placement, Placement) else placement)
    tr, h, by_type = traffic(job), hop_cost_matrix(topo, tier_weights), {}
    busy: dict[tuple[str, str], float] = {}  # link → Σ over phases of T_L
    moved: dict[tuple[str, str], float] = {}
    for kind in dict.fromkeys(tr.kinds):
        load, splits = _phase_loads(topo, tr, dev, kind, tier_weights)
        drain = {e: b / topo.graph.edges[e]["bandwidth_Bps"] for e, b in load.items()}
        for e, t in drain.items():
            busy[e], moved[e] = busy.get(e, 0.0) + t, moved.get(e, 0.0) + load[e]
        st = {
            "groups": 0,
            "devices": job.degree(kind),
            "max_nodes": 0,
            "max_leaves": 0,
            "total_hops": 0,
            "max_hops": 0,
            "bytes_by_tier": {},
            "cost": 0.0,
            "time_s": 0.0,
            "time_s_alone": 0.0,
        }
        for gi in (gi for gi, t in enumerate(tr.kinds) if t == kind):
            grp, bw, lat, worst, leaves, own = tr.members[gi], np.inf, 0.0, 0.0, set(), {}
            for k in np.flatnonzero(tr.g == gi):
                i, j, split = int(dev[tr.a[k]]), int(dev[tr.b[k]]), splits[int(k)]
                path = route(topo, i, j, tier_weights)
                links = list(itertools.pairwise(path))
                attrs = [topo.graph.edges[e] for e in links]
                bw = min(bw, *(a["bandwidth_Bps"] for a in attrs)) if attrs else bw
                lat = max(lat, sum(a["latency_s"] for a in attrs))
                worst = max(worst, *(drain[e] for e in split)) if split else worst
                st["total_hops"] += len(links)
                st["max_hops"] = max(st["max_hops"], len(links))
                st["cost"] += float(tr.w[k] * h[i, j])
                for e, f in split.items():
                    tier = topo.graph.edges[e]["tier"]
                    st["bytes_by_tier"][tier] = st["bytes_by_tier"].get(tier, 0.0) + float(tr.w[k]) * f
                    own[e] = own.get(e, 0.0) + float(tr.w[k]) * f
                leaves |= {v for v in path if topo.graph.nodes[v]["kind"] == "leaf"}
            s_bytes, n = float(job.bytes_per_step.get(kind, 0.0)), len(grp)
            if not np.isfinite(bw):  # the whole group on one device
                alone = t = 0.0
            elif COLLECTIVE[kind] == "send_recv":
                alone = max(b / topo.graph.edges[e]["bandwidth_Bps"] for e, b in own.items()) + lat
                t = worst + lat
            else:
                w = wire_bytes(job, kind)
                shared_bw = min(bw, w / worst) if worst > 0 else bw
                alone = _ring_time_s(job.collective(kind), s_bytes, n, Link(float(bw), lat))
                t = _ring_time_s(job.collective(kind), s_bytes, n, Link(float(shared_bw), lat))
            st.update(
                groups=st["groups"] + 1,
                time_s=max(st["time_s"], t),
                time_s_alone=max(st["time_s_alone"], alone),
                max_nodes=max(st["max_nodes"], len(set(topo.domain_of[dev[list(grp)]]))),
                max_leaves=max(st["max_leaves"], len(leaves)),
            )
        st["contention"] = st["time_s"] / st["time_s_alone"] if st["time_s_alone"] > 0 else 1.0
        by_type[kind] = st
    tiers: dict[str, float] = {}
    for st in by_type.values():
        for tier, b in st["bytes_by_tier"].items():
            tiers[tier] = tiers.get(tier, 0.0) + b
    hot = max(busy, key=busy.get) if busy else None
    return {
        "cost_sum": placement_cost(tr, h, dev, "sum"),
        "cost_max": placement_cost(tr, h, dev, "max"),
        "comm_time_s": sum(st["time_s"] for st in by_type.values()),
        "bytes_by_tier": tiers,
        "max_link": hot,
        "max_link_bytes": float(moved[hot]) if hot else 0.0,
        "max_link_busy_s": float(busy[hot]) if hot else 0.0,
        "tp_in_domain": tp_in_domain(job, topo, dev),
        "by_type": by_type,
    }


def _regions(topo: Topology) -> dict[str, str | None]:
    """Each graph node's scale-up domain: a device's own; a switch's when every device it links to
    is of one domain (a node's NVSwitch); None for a switch between domains (leaf, spine)."""
    g, out = topo.graph, {}
    for v, attrs in g.nodes(data=True):
        if attrs["kind"] in DEVICE_KINDS:
            out[v] = attrs["domain"]
        else:
            near = {g.nodes[u]["domain"] for u in g[v] if g.nodes[u]["kind"] in DEVICE_KINDS}
            out[v] = near.pop() if len(near) == 1 else None
    return out


def time_lower_bound(job: Job, topo: Topology, keep_tp_in_domain: bool = True) -> dict[str, float]:
    """A lower bound on :func:`evaluate`'s ``comm_time_s`` over every placement of ``job`` on
    ``topo`` (with TP groups inside scale-up domains when ``keep_tp_in_domain``), per group type and
    in ``total``: the optimality gap of any placement is at most (its time − bound) / its time.

    Per type: a phase takes at least its slowest group's time alone (link sharing only slows it), and
    a group's members sit in distinct TP groups (Megatron's axes are orthogonal), so with TP kept in
    its domains a group of n members spans at least ⌈n / k⌉ domains, k the most TP groups any domain
    holds (⌊available / tp⌋; without the constraint, k the most available devices of a domain).
    A ring that must span two or more domains has a link out of a domain on its paths, so its
    bandwidth is at most the fastest such link's (a domain holds its devices and the switches that
    link only to them, such as a node's NVSwitch; a link out of it joins it to anything else, such as
    a GPU's NIC link to its leaf); a ring that may stay inside one is at most the fastest link's.
    Its time is the ring collective's at that bandwidth with no latency. A pipeline pair that must
    cross domains sends half its wire bytes each way across its domain's links out, at most their
    summed bandwidth; one that may stay inside is bounded by 0."""
    region, g = _regions(topo), topo.graph
    fastest, between, boundary = 0.0, 0.0, {}  # boundary: domain -> its links out, summed
    for u, v, a in g.edges(data=True):
        bw = float(a["bandwidth_Bps"])
        fastest = max(fastest, bw)
        if region[u] == region[v]:
            continue  # inside a domain, or between two switches outside any
        between = max(between, bw)  # a link out of a domain: every path between domains takes one
        for r in {region[u], region[v]} - {None}:
            boundary[r] = boundary.get(r, 0.0) + bw
    avail = np.bincount(topo.domain_of[topo.available], minlength=len(topo.domains))
    tp = job.degree("tp")
    out: dict[str, float] = {}
    for kind in dict.fromkeys(traffic(job).kinds):
        n = job.degree(kind)
        inside_tp = kind == "tp" and keep_tp_in_domain
        per_domain = int(avail.max()) if inside_tp or not keep_tp_in_domain else int(np.max(avail // tp))
        crosses = not inside_tp and n > max(per_domain, 1) and between > 0
        if COLLECTIVE[kind] == "send_recv":
            w = wire_bytes(job, kind)
            out[kind] = (w / 2.0) / max(boundary.values()) if crosses and boundary else 0.0
        else:
            bw = between if crosses else fastest
            s_bytes = float(job.bytes_per_step.get(kind, 0.0))
            out[kind] = _ring_time_s(job.collective(kind), s_bytes, n, Link(float(bw), 0.0)) if n > 1 else 0.0
    out["total"] = sum(out.values())
    return out
