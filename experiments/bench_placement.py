"""Placement benchmark: CP-SAT against rank order and the tree heuristic on fragmented DGX H100 clusters.

    python experiments/bench_placement.py [--objective time] [--time-limit 30] [--time-limit-4k 120]
                                          [--workers 2] [--skip-4k | --only-4k] [--out bench.json]

Cases (Llama-3-70B, seq 8,192, global batch 1,024; traffic from ``dse.placement_search.bytes_per_step``;
tp 8 · pp 4 · the largest dp that fits, unless stated):

* ``1k-nodes``: 128 nodes × 8 (16 leaves, 2:1 spine), 10 % of the nodes down at random; the host
  list in topology order (hostnames that follow the racks), so rank order is already leaf-local.
* ``1k-shuffled``: the same allocation with the host list in random order, as a cloud provider's
  instance list or a scheduler without topology plugin hands it out: rank order crosses the spine.
* ``1k-scattered``: the same cluster with 10 % of the GPUs down one by one (holes inside nodes);
  tp 4, the more fragmented allocation.
* ``4k``: 512 nodes × 8 (64 leaves, 32 spines), 10 % of the nodes down; hierarchical CP-SAT.

CP-SAT minimises ``--objective`` (default ``time``, the product's). Printed per case: the hop-matrix
time (shortest paths, shared by all solvers), CP-SAT's solve time
and their total, cost_sum against both baselines, and the DP+PP communication time
(``search.placement.evaluate``: ring collectives, links shared by concurrent groups, ECMP) with its
reduction against rank order.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from dse.models import load_model
from dse.placement_search import bytes_per_step, drop_random, fit_dp, solver_row
from search.placement import Job, Placement, cp_sat, evaluate, rank_order, tree_heuristic
from search.topology import Topology, gpu_cluster, hop_cost_matrix, mark_unavailable, shuffle_hosts

WORKLOAD = {"seq_len": 8192, "global_batch": 1024, "precision": "bf16"}


def make_job(topo: Topology, tp: int, pp: int) -> Job:
    """tp · pp · the largest dp that fits, with Llama-3-70B traffic."""
    d = fit_dp({"tp": tp, "pp": pp, "cp": 1, "ep": 1, "dp": 10**6}, topo)
    return Job(**d, bytes_per_step=bytes_per_step(load_model("llama3_70b"), WORKLOAD, d))


def scattered(topo: Topology, fraction: float, seed: int) -> Topology:
    """Single GPUs down at random (holes inside nodes)."""
    k = round(fraction * len(topo.devices))
    off = np.random.default_rng(seed).choice(len(topo.devices), size=k, replace=False)
    return mark_unavailable(topo, [topo.devices[i] for i in sorted(off)])


def compare(
    name: str, job: Job, topo: Topology, best: Placement, hop_s: float, objective: str = "time"
) -> dict[str, Any]:
    """Evaluate CP-SAT's placement and both baselines; gains vs rank order."""
    rows = {}
    for label, p in (
        ("rank_order", rank_order(job, topo)),
        ("tree_heuristic", tree_heuristic(job, topo)),
        ("cp_sat", best),
    ):
        rows[label] = solver_row(p, evaluate(job, topo, p) | {"solve_time_s": p.solve_time_s})
    base, ours = rows["rank_order"], rows["cp_sat"]
    return {
        "case": name,
        "ranks": job.n_ranks,
        "tp": job.tp,
        "pp": job.pp,
        "dp": job.dp,
        "available": int(topo.available.sum()),
        "hop_matrix_s": hop_s,
        "objective": objective,
        "solve_time_s": best.solve_time_s,
        "total_s": hop_s + best.solve_time_s,
        "status": best.status,
        "lower_bound_s": best.bound,  # search.placement.time_lower_bound (objective time)
        "gap": ours["gap"],  # CP-SAT's placement is at most this far above the best possible
        **{
            f"{k}_{m}": r[m]
            for k, r in rows.items()
            for m in ("cost_sum", "comm_time_s", "dp_pp_comm_time_s")
        },
        "dp_pp_reduction": 1 - ours["dp_pp_comm_time_s"] / base["dp_pp_comm_time_s"],
        "cost_reduction_vs_rank_order": 1 - ours["cost_sum"] / base["cost_sum"],
        "cost_reduction_vs_tree": 1 - ours["cost_sum"] / rows["tree_heuristic"]["cost_sum"],
    }


def case(
    name: str, topo: Topology, tp: int, pp: int, time_limit_s: float, workers: int, objective: str
) -> dict:
    job = make_job(topo, tp, pp)
    t0 = time.perf_counter()
    hop_cost_matrix(topo)  # shortest paths, shared by every solver and the evaluator
    hop_s = time.perf_counter() - t0
    best = cp_sat(job, topo, time_limit_s=time_limit_s, workers=workers, objective=objective)
    row = compare(name, job, topo, best, hop_s, objective)
    print(json.dumps(row, indent=1), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objective", default="time", choices=["time", "sum", "max"])
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--time-limit-4k", type=float, default=120.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-4k", action="store_true")
    ap.add_argument("--only-4k", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    if not a.only_4k:
        base = gpu_cluster(128, 8, nodes_per_leaf=8, spines=8)
        nodes_down = drop_random(base, 0.1, seed=0)
        run = {"time_limit_s": a.time_limit, "workers": a.workers, "objective": a.objective}
        rows.append(case("1k-nodes", nodes_down, 8, 4, **run))
        rows.append(case("1k-shuffled", shuffle_hosts(nodes_down, seed=1), 8, 4, **run))
        rows.append(case("1k-scattered", scattered(base, 0.1, seed=0), 4, 4, **run))
    if not a.skip_4k:
        big = drop_random(gpu_cluster(512, 8, nodes_per_leaf=8, spines=32), 0.1, seed=0)
        rows.append(case("4k", big, 8, 4, a.time_limit_4k, a.workers, a.objective))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
