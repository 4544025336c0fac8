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

Solvers: :func:`rank_order` (ranks onto available devices in device order), :func:`tree_heuristic`
(dlcalc's ``topoassign`` idea: walk the topology tree depth first, fill a node, then its leaf, ...,
each TP group whole inside one scale-up domain), and :func:`cp_sat` (OR-Tools CP-SAT; exact for
small instances, hierarchical like Arnold's MIP placement (units onto domains, then inside) for
large ones; it never returns worse than the better baseline that obeys the same rule).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from ortools.sat.python import cp_model

from costmodels.errors import ConfigError
from costmodels.network import Link, all_reduce_time_s, all_to_all_time_s, send_recv_time_s
from search.topology import Topology, hop_cost_matrix, route

GROUP_TYPES = ("tp", "cp", "ep", "dp", "pp")
COLLECTIVE: Mapping[str, str] = MappingProxyType(
    {"tp": "all_reduce", "cp": "all_reduce", "ep": "all_to_all", "dp": "all_reduce", "pp": "send_recv"}
)


@dataclass(frozen=True)
class Job:
    """Parallel degrees, nesting order (innermost first) and S_t, bytes per rank per step by type.

    EP is an axis of its own here (N = tp·cp·ep·dp·pp); for Megatron's EP carved out of DP pass
    ``dp = dp_total / ep``.
    """

    tp: int = 1
    cp: int = 1
    ep: int = 1
    dp: int = 1
    pp: int = 1
    bytes_per_step: Mapping[str, float] = field(default_factory=dict)
    order: tuple[str, ...] = GROUP_TYPES

    def __post_init__(self) -> None:
        if sorted(self.order) != sorted(GROUP_TYPES):
            raise ConfigError(f"Job.order must be a permutation of {GROUP_TYPES}, got {self.order}")
        for t in GROUP_TYPES:
            if not (isinstance(self.degree(t), int) and self.degree(t) >= 1):
                raise ConfigError(f"Job.{t} must be an int >= 1, got {self.degree(t)!r}")
        for t, s in self.bytes_per_step.items():
            if t not in GROUP_TYPES or not s >= 0:
                raise ConfigError(f"bytes_per_step[{t!r}] = {s!r}: keys in {GROUP_TYPES}, values >= 0")

    def degree(self, t: str) -> int:
        return getattr(self, t)

    @property
    def n_ranks(self) -> int:
        return int(np.prod([self.degree(t) for t in GROUP_TYPES]))


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


def wire_bytes(job: Job, kind: str) -> float:
    """Bytes each ring pair moves per step: NCCL bus factor × S_t (see the module docstring)."""
    n, s = job.degree(kind), float(job.bytes_per_step.get(kind, 0.0))
    factor = {"all_reduce": 2 * (n - 1) / n, "all_to_all": (n - 1) / n, "send_recv": 1.0}
    return factor[COLLECTIVE[kind]] * s


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
    return Traffic(arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2], arr[:, 3].astype(int),
                   tuple(kinds), tuple(members))


def placement_cost(tr: Traffic, h: np.ndarray, devices: Sequence[int], objective: str = "sum") -> float:
    """cost_sum or cost_max of the module docstring for ``devices[rank]`` (indices into H)."""
    dev = np.asarray(devices)
    per_pair = tr.w * h[dev[tr.a], dev[tr.b]]
    if objective == "sum":
        return float(per_pair.sum())
    if objective == "max":
        return float(np.bincount(tr.g, per_pair, minlength=len(tr.kinds)).max(initial=0.0))
    raise ConfigError(f"objective must be 'sum' or 'max', got {objective!r}")


@dataclass(frozen=True)
class Placement:
    """rank → device index (into ``Topology.devices``), its cost, and how it was found."""

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
        raise ConfigError(f"tp={job.tp} is larger than any scale-up domain (largest: {size.max()} devices); "
                          "lower tp or pass keep_tp_in_domain=False")
    slots = int((np.bincount(topo.domain_of, topo.available) // job.tp).sum())
    if slots < job.n_ranks // job.tp:
        raise ConfigError(f"only {slots} of {job.n_ranks // job.tp} TP groups (tp={job.tp}) fit inside "
                          "scale-up domains with enough available devices; pass keep_tp_in_domain=False")


def tp_in_domain(job: Job, topo: Topology, devices: Sequence[int]) -> bool:
    """Whether every TP group sits inside one scale-up domain."""
    dom = topo.domain_of[np.asarray(devices)]
    return all(len(set(dom[list(g)])) == 1 for g in groups(job).get("tp", []))


def rank_order(job: Job, topo: Topology, objective: str = "sum", tier_weights=None) -> Placement:
    """Baseline: rank r onto the r-th available device in device order."""
    _check(job, topo, keep_tp_in_domain=False)
    dev = tuple(int(d) for d in np.flatnonzero(topo.available)[: job.n_ranks])
    return Placement(dev, placement_cost(traffic(job), hop_cost_matrix(topo, tier_weights), dev, objective),
                     "rank_order")


def _tree_slots(topo: Topology, unit: int) -> list[list[int]]:
    """Chunks of ``unit`` available devices inside one domain, domains depth-first by their tree."""
    first = [topo.devices[int(np.argmax(topo.domain_of == d))] for d in range(len(topo.domains))]
    order = sorted(range(len(topo.domains)), key=lambda d: (topo.graph.nodes[first[d]]["tree"], d))
    slots = []
    for d in order:
        free = np.flatnonzero((topo.domain_of == d) & topo.available).tolist()
        slots += [free[i:i + unit] for i in range(0, len(free) - unit + 1, unit)]
    return slots


def tree_heuristic(job: Job, topo: Topology, objective: str = "sum", tier_weights=None,
                   keep_tp_in_domain: bool = True) -> Placement:
    """topoassign-style: TP groups, by first rank, onto TP-sized slots of domains taken depth first."""
    _check(job, topo, keep_tp_in_domain)
    unit = job.tp if keep_tp_in_domain else 1
    units = groups(job).get("tp", []) if unit > 1 else [(r,) for r in range(job.n_ranks)]
    dev = np.empty(job.n_ranks, dtype=int)
    for grp, slot in zip(sorted(units), _tree_slots(topo, unit), strict=False):
        dev[list(grp)] = slot
    devices = tuple(int(d) for d in dev)
    return Placement(devices, placement_cost(traffic(job), hop_cost_matrix(topo, tier_weights), devices,
                                             objective), "tree_heuristic")


def _ints(x: np.ndarray, digits: int = 6) -> tuple[np.ndarray, float]:
    """Integer copy of x ≥ 0 for CP-SAT and its scale: exact for integers, else 10^digits relative."""
    if np.allclose(x, np.round(x)) and x.max(initial=0) < 1e9:
        return np.round(x).astype(np.int64), 1.0
    scale = 10.0**digits / max(x.max(initial=0), 1e-300)
    return np.round(x * scale).astype(np.int64), scale


def _solve(model: cp_model.CpModel, time_limit_s: float, workers: int,
           seed: int) -> tuple[cp_model.CpSolver, str]:
    """Solve; the status as a lower-case name (optimal, feasible, infeasible, unknown)."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = int(workers)
    solver.parameters.random_seed = int(seed)
    status = solver.solve(model)
    return solver, solver.status_name(status).lower()


def _assignment_model(n_items: int, n_bins: int, pair_w: np.ndarray, pairs: np.ndarray,
                      cost: np.ndarray, group: np.ndarray, objective: str):
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


def _exact(job: Job, topo: Topology, tr: Traffic, h: np.ndarray, hint: Placement, keep_tp: bool,
           objective: str, opts: dict) -> tuple[tuple[int, ...] | None, str, float | None]:
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
    solver, status = _solve(m, **opts)
    if status not in ("optimal", "feasible"):
        return None, status, None
    devices = tuple(int(avail[solver.value(v)]) for v in x)
    return devices, status, solver.best_objective_bound / scale


def _hierarchical(job: Job, topo: Topology, tr: Traffic, h: np.ndarray, hint: Placement, keep_tp: bool,
                  objective: str, opts: dict) -> tuple[tuple[int, ...] | None, str, float | None]:
    """Stage 1 (CP-SAT, exact for its abstraction): units (TP groups, or single ranks) onto domains
    with capacity ⌊available/unit⌋, pair cost = cheapest device pair of the two domains. Stage 2
    (heuristic): fill each domain's devices in order, then swap descent inside domains."""
    units = sorted(groups(job)["tp"]) if keep_tp and job.tp > 1 else [(r,) for r in range(job.n_ranks)]
    unit_of = np.empty(job.n_ranks, dtype=int)
    for u, grp in enumerate(units):
        unit_of[list(grp)] = u
    avail_per_domain = np.bincount(topo.domain_of, topo.available, minlength=len(topo.domains))
    cap = avail_per_domain.astype(int) // len(units[0])
    doms = np.flatnonzero(cap > 0)
    free = [np.flatnonzero((topo.domain_of == d) & topo.available) for d in doms]
    dh = np.array([[_min_cost(h, fi, fj) for fj in free] for fi in free])
    cross = unit_of[tr.a] != unit_of[tr.b]
    pairs = np.stack([unit_of[tr.a][cross], unit_of[tr.b][cross]], axis=1)
    m, x, terms, _ = _assignment_model(len(units), len(doms), tr.w[cross], pairs, dh, tr.g[cross], objective)
    for j, d in enumerate(doms):
        in_j = [m.new_bool_var(f"u{u}d{j}") for u in range(len(units))]
        for u, b in enumerate(in_j):
            m.add(x[u] == j).only_enforce_if(b)
            m.add(x[u] != j).only_enforce_if(~b)
        m.add(sum(in_j) <= int(cap[d]))
    where = {int(d): j for j, d in enumerate(doms)}
    _hint(m, x, terms, [where.get(int(topo.domain_of[hint.devices[g[0]]]), 0) for g in units], _ints(dh)[0])
    solver, status = _solve(m, **opts)
    if status not in ("optimal", "feasible"):
        return None, status, None
    dev = np.empty(job.n_ranks, dtype=int)
    for j in range(len(doms)):
        mine = [r for u, grp in enumerate(units) if solver.value(x[u]) == j for r in grp]
        dev[mine] = free[j][: len(mine)]
    deadline = time.perf_counter() + opts["time_limit_s"]
    return _swap_descent(tr, h, dev, free, deadline), f"stage1 {status}", None


def _min_cost(h: np.ndarray, fi: np.ndarray, fj: np.ndarray) -> float:
    """Cheapest hop cost between two device sets (distinct devices; 0 for a single device)."""
    sub = h[np.ix_(fi, fj)].astype(float)
    if fi is fj:
        np.fill_diagonal(sub, np.inf)
    return float(sub.min()) if np.isfinite(sub).any() else 0.0


def _swap_descent(tr: Traffic, h: np.ndarray, dev: np.ndarray, free: list[np.ndarray],
                  deadline: float) -> tuple[int, ...]:
    """First-improvement descent on cost_sum: swap the occupants (or an occupant and a hole) of two
    available devices of one domain, until no swap helps or the deadline passes."""
    incident = [np.flatnonzero((tr.a == r) | (tr.b == r)) for r in range(len(dev))]
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for positions in free:
            for i, p in enumerate(positions):
                for q in positions[i + 1:]:
                    improved |= _try_swap(tr, h, dev, incident, int(p), int(q))
    return tuple(int(d) for d in dev)


def _try_swap(tr: Traffic, h: np.ndarray, dev: np.ndarray, incident: list[np.ndarray], p: int,
              q: int) -> bool:
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


def cp_sat(job: Job, topo: Topology, *, time_limit_s: float = 30, workers: int = 2, objective: str = "sum",
           keep_tp_in_domain: bool = True, seed: int = 0, method: str = "auto",
           exact_max_devices: int = 16, tier_weights: Mapping[str, float] | None = None) -> Placement:
    """CP-SAT placement. ``method``: "exact" (x[r] ∈ available devices, AllDifferent, each ring
    pair's cost by AddElement(x[a]·M + x[b], H); proves optimality up to ~16 devices: CP-SAT expands
    each element into M² literals, so at 24 devices presolve alone takes seconds), "hierarchical"
    (:func:`_hierarchical`), or "auto" (hierarchical, then exact from its answer when at most
    ``exact_max_devices`` are available; the time limit is split between the runs). Every run is
    hinted with the best placement so far, starting from the better baseline; the result is the best
    of the runs and the baselines that obey ``keep_tp_in_domain`` (ties go to CP-SAT)."""
    t0 = time.perf_counter()
    if objective not in ("sum", "max"):
        raise ConfigError(f"objective must be 'sum' or 'max', got {objective!r}")
    _check(job, topo, keep_tp_in_domain)
    tr, h = traffic(job), hop_cost_matrix(topo, tier_weights)
    base = [tree_heuristic(job, topo, objective, tier_weights, keep_tp_in_domain),
            rank_order(job, topo, objective, tier_weights)]
    base = [b for b in base if not keep_tp_in_domain or tp_in_domain(job, topo, b.devices)]
    hint = min(base, key=lambda p: p.cost)
    if not len(tr.a):
        return Placement(hint.devices, hint.cost, hint.method, "no traffic", 0.0, time.perf_counter() - t0)
    if method not in ("auto", "exact", "hierarchical"):
        raise ConfigError(f"cp_sat method must be auto, exact or hierarchical, got {method!r}")
    small = topo.available.sum() <= exact_max_devices
    runs = {"exact": [_exact], "hierarchical": [_hierarchical],
            "auto": [_hierarchical, _exact] if small else [_hierarchical]}[method]
    opts = {"time_limit_s": time_limit_s / len(runs), "workers": workers, "seed": seed}
    found, bound = [], None
    for solve in runs:  # each run starts from the best placement so far
        devices, status, b = solve(job, topo, tr, h, hint, keep_tp_in_domain, objective, opts)
        if devices is None:  # no solution within the time limit (not even the hint accepted)
            continue
        bound = b if b is not None else bound
        found.append(Placement(devices, placement_cost(tr, h, devices, objective), f"cp_sat{solve.__name__}",
                               status, b))
        hint = min([hint, found[-1]], key=lambda p: p.cost)
    best = min([*found[::-1], *base], key=lambda p: p.cost)
    return Placement(best.devices, best.cost, best.method, best.status if best in found else "baseline kept",
                     bound, time.perf_counter() - t0)


def _pair_stats(topo: Topology, i: int, j: int, tier_weights) -> tuple[list[tuple[str, str]], float, float]:
    """Links of the charged route i → j, its bottleneck bandwidth and summed latency."""
    path = route(topo, i, j, tier_weights)
    links = [tuple(sorted(e)) for e in itertools.pairwise(path)]
    attrs = [topo.graph.edges[e] for e in links]
    return links, min(a["bandwidth_Bps"] for a in attrs), sum(a["latency_s"] for a in attrs)


def _group_time_s(kind: str, s_bytes: float, n: int, link: Link) -> float:
    """Ring all-reduce / pairwise all-to-all over the ring's bottleneck link [costmodels.network];
    a pipeline crosses its n-1 boundaries once each: (n-1) · send_recv."""
    collective = COLLECTIVE[kind]
    if collective == "send_recv":
        return (n - 1) * float(send_recv_time_s(s_bytes, link))
    fn = all_reduce_time_s if collective == "all_reduce" else all_to_all_time_s
    return float(fn(s_bytes, n, link))


def evaluate(job: Job, topo: Topology, placement: Placement | Sequence[int],
             tier_weights: Mapping[str, float] | None = None) -> dict:
    """Per group type: span (devices, nodes, leaves), hops, bytes per tier, cost, comm time per step
    (Σ over the type's groups, and the slowest group); overall: both costs, bytes per tier, the
    most loaded link (wire bytes routed on the charged paths, one route per pair, no ECMP)."""
    dev = np.asarray(placement.devices if isinstance(placement, Placement) else placement)
    tr, h, load, by_type = traffic(job), hop_cost_matrix(topo, tier_weights), {}, {}
    for gi, (kind, grp) in enumerate(zip(tr.kinds, tr.members, strict=True)):
        st = by_type.setdefault(kind, {"groups": 0, "devices": len(grp), "max_nodes": 0, "max_leaves": 0,
                                       "total_hops": 0, "max_hops": 0, "bytes_by_tier": {}, "cost": 0.0,
                                       "time_s": 0.0, "time_s_max": 0.0})
        bw, lat, leaves = np.inf, 0.0, set()
        for k in np.flatnonzero(tr.g == gi):
            links, b, la = _pair_stats(topo, int(dev[tr.a[k]]), int(dev[tr.b[k]]), tier_weights)
            bw, lat = min(bw, b), max(lat, la)
            st["total_hops"] += len(links)
            st["max_hops"] = max(st["max_hops"], len(links))
            st["cost"] += float(tr.w[k] * h[dev[tr.a[k]], dev[tr.b[k]]])
            for e in links:
                load[e] = load.get(e, 0.0) + tr.w[k]
                tier = topo.graph.edges[e]["tier"]
                st["bytes_by_tier"][tier] = st["bytes_by_tier"].get(tier, 0.0) + float(tr.w[k])
                leaves |= {v for v in e if topo.graph.nodes[v]["kind"] == "leaf"}
        t = _group_time_s(kind, float(job.bytes_per_step.get(kind, 0.0)), len(grp), Link(float(bw), lat))
        st.update(groups=st["groups"] + 1, time_s=st["time_s"] + t, time_s_max=max(st["time_s_max"], t),
                  max_nodes=max(st["max_nodes"], len(set(topo.domain_of[dev[list(grp)]]))),
                  max_leaves=max(st["max_leaves"], len(leaves)))
    tiers: dict[str, float] = {}
    for st in by_type.values():
        for tier, b in st["bytes_by_tier"].items():
            tiers[tier] = tiers.get(tier, 0.0) + b
    hot = max(load, key=load.get) if load else None
    return {"cost_sum": placement_cost(tr, h, dev, "sum"), "cost_max": placement_cost(tr, h, dev, "max"),
            "comm_time_s": sum(st["time_s"] for st in by_type.values()), "bytes_by_tier": tiers,
            "max_link": hot, "max_link_bytes": float(load[hot]) if hot else 0.0,
            "tp_in_domain": tp_in_domain(job, topo, dev), "by_type": by_type}
