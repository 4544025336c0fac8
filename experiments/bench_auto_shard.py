"""Time the automatic-sharding pipeline on a shipped model: capture, strategies, ILP build, solve.

    python experiments/bench_auto_shard.py [--model llama3_8b] [--mesh 8 8] [--batch 8] [--seq 1024]
                                           [--forward-only]

Prints the graph node, ILP node, variable and constraint counts, the repeat groups (layers sharing ILP
variables) and each phase's seconds, with the machine's core count (the issue's target: Llama-3-8B on
an 8 × 8 mesh in ≤ 30 s on 2 cores). By default the joint forward + backward graph (cross-entropy loss,
gradients tied to their parameters) is captured; ``--forward-only`` captures the forward graph alone.
"""

from __future__ import annotations

import argparse
import os
from time import perf_counter

from dse.hardware import load_hardware
from dse.models import model_config
from search.fx_graph import capture_hf
from search.fx_sharding import MeshCosts, build_problem
from search.sharding_ilp import solve


def bench_llama(
    config_name: str = "llama3_8b",
    mesh: tuple[int, ...] = (8, 8),
    batch: int = 8,
    seq: int = 1024,
    hardware: str = "h100_sxm",
    memory_per_param_bytes: float = 16.0,
    joint: bool = True,
) -> dict[str, float]:
    """Capture (``joint``: forward + backward, else forward only), build and solve a shipped model on
    ``mesh`` under its device's HBM; print and return node/variable/constraint counts, the repeat
    groups (layers sharing variables) and the time of each phase (s). A benchmark, not a test."""
    hw = load_hardware(hardware)
    t0 = perf_counter()
    cap = capture_hf(model_config(config_name), batch, seq, joint=joint)
    t1 = perf_counter()
    costs = MeshCosts(hw, tuple(mesh))
    fx = build_problem(cap, costs, memory_per_param_bytes, memory_limit=float(hw.hbm_capacity_bytes))
    t2 = perf_counter()
    sol = solve(fx.problem)
    stats = {
        "graph_nodes": len(cap.graph.nodes),
        "nodes": len(fx.problem.nodes),
        "edges": len(fx.problem.edges),
        "repeat_groups": len(fx.problem.repeats),
        "shared_layers": sum(len(g.blocks) for g in fx.problem.repeats),
        "variables": sol.num_variables,
        "constraints": sol.num_constraints,
        "capture_s": t1 - t0,
        "strategies_s": t2 - t1,
        "build_s": sol.build_time_s,
        "solve_s": sol.solve_time_s,
        "step_time_s": sol.objective,
        "memory_per_device_bytes": sol.peak_memory,
        "total_s": perf_counter() - t0,
    }
    print(", ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3_8b")
    ap.add_argument("--mesh", type=int, nargs="+", default=[8, 8])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--hardware", default="h100_sxm")
    ap.add_argument("--forward-only", action="store_true", help="capture the forward graph only")
    args = ap.parse_args()
    graph = "forward" if args.forward_only else "joint forward + backward"
    print(
        f"machine: {os.cpu_count()} cores; {args.model}, mesh {args.mesh}, batch {args.batch} x {args.seq}, "
        f"{graph} graph"
    )
    joint = not args.forward_only
    bench_llama(args.model, tuple(args.mesh), args.batch, args.seq, args.hardware, joint=joint)


if __name__ == "__main__":
    main()
