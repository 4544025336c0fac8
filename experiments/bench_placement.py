"""Placement benchmark: CP-SAT against rank order and the tree heuristic on fragmented DGX H100 clusters.

    python experiments/bench_placement.py [--time-limit 60] [--workers 8] [--skip-4k] [--out bench.json]

Cases (Llama-3-70B, seq 8,192, global batch 1,024; traffic from ``dse.placement_search.bytes_per_step``):

* ``1k-nodes``: 128 nodes × 8 (16 leaves, 2:1 spine), 10 % of the nodes down at random; tp 8 · pp 4 ·
  dp fitted to what is left (dp 28 = 896 ranks), CP-SAT (hierarchical) with a 60 s budget.
* ``1k-scattered``: the same cluster with 10 % of the GPUs down one by one (holes inside nodes);
  tp 4 · pp 4 · dp fitted, the harder, more fragmented allocation.
* ``4k-decomposed``: 512 nodes × 8 (64 leaves), 10 % of the nodes down; tp 8 · pp 4 · dp fitted. A
  single CP-SAT model over ~460 domains would hold one 460² element table per pair, so the job is
  split by DP replicas into blocks of 8 leaves, each block solved by ``cp_sat`` on its own
  sub-topology, and the whole placement scored on the full cluster.

Printed per case: solve time, cost_sum vs both baselines, and the DP+PP comm time reduction vs rank
order (``search.placement.evaluate``: ring collectives over each group's bottleneck link).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from dse.models import load_model
from dse.placement_search import bytes_per_step, drop_random, fit_dp, solver_row
from search.placement import (
    Job,
    Placement,
    cp_sat,
    evaluate,
    placement_cost,
    rank_order,
    traffic,
    tree_heuristic,
)
from search.topology import Topology, gpu_cluster, hop_cost_matrix, mark_unavailable

WORKLOAD = {"seq_len": 8192, "global_batch": 1024, "precision": "bf16"}


def make_job(topo: Topology, tp: int, pp: int, dp: int = 10**6) -> Job:
    """tp · pp · the largest dp (≤ ``dp``) that fits, with Llama-3-70B traffic."""
    d = fit_dp({"tp": tp, "pp": pp, "cp": 1, "ep": 1, "dp": dp}, topo)
    return Job(**d, bytes_per_step=bytes_per_step(load_model("llama3_70b"), WORKLOAD, d))


def scattered(topo: Topology, fraction: float, seed: int) -> Topology:
    """Single GPUs down at random (holes inside nodes)."""
    k = round(fraction * len(topo.devices))
    off = np.random.default_rng(seed).choice(len(topo.devices), size=k, replace=False)
    return mark_unavailable(topo, [topo.devices[i] for i in sorted(off)])


def compare(name: str, job: Job, topo: Topology, best: Placement, solve_s: float) -> dict[str, Any]:
    """Evaluate CP-SAT's placement and both baselines; gains vs rank order."""
    rows = {}
    for label, p in (
        ("rank_order", rank_order(job, topo)),
        ("tree_heuristic", tree_heuristic(job, topo)),
        ("cp_sat", best),
    ):
        rows[label] = solver_row(p, evaluate(job, topo, p) | {"solve_time_s": p.solve_time_s})
    rows["cp_sat"]["solve_time_s"] = solve_s
    base, ours = rows["rank_order"], rows["cp_sat"]
    return {
        "case": name,
        "ranks": job.n_ranks,
        "tp": job.tp,
        "pp": job.pp,
        "dp": job.dp,
        "available": int(topo.available.sum()),
        "solve_time_s": solve_s,
        "status": best.status,
        **{
            f"{k}_{m}": r[m]
            for k, r in rows.items()
            for m in ("cost_sum", "comm_time_s", "dp_pp_comm_time_s")
        },
        "dp_pp_reduction": 1 - ours["dp_pp_comm_time_s"] / base["dp_pp_comm_time_s"],
        "cost_reduction_vs_rank_order": 1 - ours["cost_sum"] / base["cost_sum"],
        "cost_reduction_vs_tree": 1 - ours["cost_sum"] / rows["tree_heuristic"]["cost_sum"],
    }


def case_1k(name: str, topo: Topology, tp: int, pp: int, time_limit_s: float, workers: int) -> dict:
    job = make_job(topo, tp, pp)
    hop_cost_matrix(topo)  # shared by every solver; built once, outside the timed solve
    t0 = time.perf_counter()
    best = cp_sat(job, topo, time_limit_s=time_limit_s, workers=workers)
    return compare(name, job, topo, best, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# 4k by decomposition


def sub_topology(topo: Topology, nodes: list[str]) -> Topology:
    """The devices of ``nodes`` with their leaves and all spines, as a topology of its own."""
    g = topo.graph
    devices = [d for d in topo.devices if g.nodes[d]["domain"] in set(nodes)]
    keep = set(devices) | set(nodes) | {v for d in devices for v in g[d] if g.nodes[v]["kind"] == "leaf"}
    keep |= {v for v, k in g.nodes(data="kind") if k == "spine"}
    return Topology(g.subgraph(keep).copy(), tuple(devices), f"{topo.name}[{nodes[0]}..]")


def blocks(
    topo: Topology, job: Job, nodes_per_block: int, strict: bool = True
) -> list[tuple[list[str], int]]:
    """(nodes, dp replicas) per block: replicas by whole tp·pp slots, trimmed to job.dp in total."""
    per_replica = job.tp * job.pp
    out, left = [], job.dp
    for b in range(0, len(topo.domains), nodes_per_block):
        nodes = list(topo.domains[b : b + nodes_per_block])
        free = sum(
            int(topo.available[topo.domain_of == topo.domains.index(n)].sum()) // job.tp * job.tp
            for n in nodes
        )
        k = min(left, free // per_replica)
        out.append((nodes, k))
        left -= k
    if left and strict:
        raise RuntimeError(f"{left} replicas do not fit the blocks")
    return [(n, k) for n, k in out if k]


def global_rank(job: Job, sub: Job, r: int, dp_offset: int) -> int:
    """Sub-job rank (tp innermost, then dp, then pp) → rank of the whole job."""
    t, d, p = r % sub.tp, (r // sub.tp) % sub.dp, r // (sub.tp * sub.dp)
    return t + job.tp * (dp_offset + d) + job.tp * job.dp * p


def decomposed(
    job: Job, topo: Topology, nodes_per_block: int, time_limit_s: float, workers: int
) -> tuple[Placement, list[float]]:
    """Solve each block's sub-job with cp_sat on its sub-topology; stitch the ranks together."""
    dev, offset, times = np.empty(job.n_ranks, dtype=int), 0, []
    index = {d: i for i, d in enumerate(topo.devices)}
    for nodes, k in blocks(topo, job, nodes_per_block):
        st = sub_topology(topo, nodes)
        sub = Job(tp=job.tp, pp=job.pp, dp=k, bytes_per_step=job.bytes_per_step)
        p = cp_sat(sub, st, time_limit_s=time_limit_s, workers=workers)
        times.append(p.solve_time_s)
        for r, d in enumerate(p.devices):
            dev[global_rank(job, sub, r, offset)] = index[st.devices[d]]
        offset += k
    devices = tuple(int(d) for d in dev)
    return Placement(devices, 0.0, "cp_sat decomposed", "decomposed"), times


def case_4k(time_limit_s: float, workers: int) -> dict:
    topo = drop_random(gpu_cluster(512, 8, nodes_per_leaf=8, spines=32), 0.1, seed=0)
    job = make_job(topo, 8, 4)  # dp: what the blocks hold (whole tp·pp replicas per block)
    job = make_job(topo, 8, 4, sum(k for _, k in blocks(topo, job, 64, strict=False)))
    t0 = time.perf_counter()
    best, times = decomposed(job, topo, 64, time_limit_s, workers)
    solve_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    hop_cost_matrix(topo)
    h_s = time.perf_counter() - t1
    best = Placement(
        best.devices,
        placement_cost(traffic(job), hop_cost_matrix(topo), best.devices),
        best.method,
        best.status,
        None,
        solve_s,
    )
    row = compare("4k-decomposed", job, topo, best, solve_s)
    return row | {"block_solve_s": times, "hop_matrix_s": h_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--block-time-limit", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--skip-4k", action="store_true")
    ap.add_argument("--only-4k", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    base, rows = gpu_cluster(128, 8, nodes_per_leaf=8, spines=8), []
    if not a.only_4k:
        rows += one_k(base, a.time_limit, a.workers)
    if not a.skip_4k:
        rows.append(case_4k(a.block_time_limit, a.workers))
        print(json.dumps(rows[-1], indent=1), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


def one_k(base: Topology, time_limit_s: float, workers: int) -> list[dict]:
    """The two 1,024-GPU cases, printed as they finish."""
    rows = [case_1k("1k-nodes", drop_random(base, 0.1, seed=0), 8, 4, time_limit_s, workers)]
    print(json.dumps(rows[-1], indent=1), flush=True)
    rows.append(case_1k("1k-scattered", scattered(base, 0.1, seed=0), 4, 4, time_limit_s, workers))
    print(json.dumps(rows[-1], indent=1), flush=True)
    return rows


if __name__ == "__main__":
    main()
