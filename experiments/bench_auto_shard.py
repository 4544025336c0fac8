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

from search.fx_sharding import bench_llama


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
