"""Time the automatic-sharding pipeline on a shipped model: capture, strategies, ILP build, solve.

    python experiments/bench_auto_shard.py [--model llama3_8b] [--mesh 8 8] [--batch 8] [--seq 1024]

Prints the graph node, ILP variable and constraint counts and each phase's seconds, with the machine's
core count (the issue's target: Llama-3-8B on an 8 × 8 mesh in ≤ 30 s on 2 cores).
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
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} cores; {args.model}, mesh {args.mesh}, batch {args.batch} x {args.seq}"
    )
    bench_llama(args.model, tuple(args.mesh), args.batch, args.seq, args.hardware)


if __name__ == "__main__":
    main()
