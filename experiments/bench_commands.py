"""Wall time of each headline command, and where it goes: start-up and imports, JAX compilation,
MLflow, and the rest (evaluate, solve, report).

    python experiments/bench_commands.py                    # every command, cold then warm cache
    python experiments/bench_commands.py --only calc gpu_cluster --runs warm

Each command runs in a fresh interpreter with ``DSE_TIMING=1`` (``dse._app.PhaseClock`` prints its
phases on stderr) and a local SQLite MLflow store in a temporary directory, first with an empty JAX
compilation cache (``cold``) and then again with the cache the first run filled (``warm``). A fixed
reference workload (float32 NumPy matmuls) is timed first so that figures from a noisy or slower
machine can be read as ratios. The target is the issue's goal for the command on the 2-core CI
machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_eval_throughput import reference_gflops  # the same reference workload as that benchmark

REPO = Path(__file__).resolve().parents[1]
# name: (arguments of python -m, target wall seconds)
QUIET = "progress=false"
COMMANDS: dict[str, tuple[list[str], float]] = {
    "calc": (["dse.calc"], 5.0),
    "gpu_cluster": (["dse.search", "+experiment=gpu_cluster", QUIET], 6.0),
    "wafer_arch": (["dse.search", "+experiment=wafer_arch", QUIET], 15.0),
    "auto_shard": (["dse.search", "+experiment=auto_shard", QUIET], 20.0),
    "placement": (["dse.search", "+experiment=placement", QUIET], 30.0),
    "serving": (["dse.search", "+experiment=serving", QUIET], 60.0),
    "validate": (["dse.validate", QUIET], 60.0),
}


def run(args: list[str], cache: Path, workdir: Path) -> tuple[float, str]:
    """(wall seconds, the command's timing line) of one run in ``workdir`` with JAX cache ``cache``."""
    env = os.environ | {"DSE_TIMING": "1", "DSE_JAX_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", *args, f"hydra.run.dir={workdir / 'out'}"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return wall, f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("timing: ")]
    return wall, lines[-1].removeprefix("timing: ") if lines else "no timing line"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(COMMANDS), default=list(COMMANDS))
    ap.add_argument("--runs", nargs="*", choices=("cold", "warm"), default=["cold", "warm"])
    args = ap.parse_args()
    reference = reference_gflops()
    print(f"machine: {os.cpu_count()} CPU cores; reference: {reference:.1f} GFLOP/s (NumPy float32 matmul)")
    for name in args.only:
        argv, target = COMMANDS[name]
        with tempfile.TemporaryDirectory() as tmp:
            cache, workdir = Path(tmp) / "jax", Path(tmp) / "run"
            workdir.mkdir()
            for kind in ("cold", "warm"):
                wall, phases = run(argv, cache, workdir)
                if kind in args.runs:
                    print(f"{name} ({kind}): {wall:.1f} s wall, target {target:g} s — {phases}", flush=True)


if __name__ == "__main__":
    main()
