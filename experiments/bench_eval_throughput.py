"""Evaluations per second of the mapping search's cost function over a grid of mappings (and hardware).

    python experiments/bench_eval_throughput.py [--model llama3_70b] [--devices 1024] [--points 1000000]

Builds the mapping space of ``--model`` on ``--devices`` GPUs (every factorization into tp·pp·dp·cp
with ep, vpp, micro-batch, recompute, ZeRO stage and sequence parallelism), tiles it up to
``--points`` mappings and times the search path: ``search.problems.training_mapping_problem``'s cost
function, which returns what a search reports (step time and its breakdown, memory and feasibility,
MFU, power and cost), after one warm-up call (compilation reported separately). Also the step time
alone (``jit(vmap(training_step))``) and a batch of hardware presets. Each figure is printed per
wall second and per CPU second, beside a fixed reference workload (a float32 NumPy matmul) so that a
figure from a noisy machine can be read as a ratio. The last line is ``evaluations_per_s: <number>``
(the search cost function on one hardware preset).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.parallel import RECOMPUTE, Plan
from costmodels.training import KERNEL_FIELDS, TrainingJob, training_step
from dse.hardware import load_hardware
from dse.models import load_model
from search.problems import training_mapping_problem


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def mapping_grid(devices: int, heads: int, layers: int, global_batch: int) -> dict[str, np.ndarray]:
    """Every valid (tp, pp, dp, cp, vpp, microbatch, recompute, zero, sp) combination, as columns."""
    rows = []
    for tp, pp, cp in itertools.product(divisors(devices), repeat=3):
        if devices % (tp * pp * cp) or heads % tp or tp > 64:
            continue
        dp = devices // (tp * pp * cp)
        for vpp, mb, rc, zero, sp in itertools.product(
            (1, 2, 4), (1, 2, 4, 8), RECOMPUTE.values(), (0, 1, 3), (0, 1)
        ):
            if layers % (pp * vpp) or (vpp > 1 and pp == 1) or (sp and tp == 1) or global_batch % (dp * mb):
                continue
            rows.append((tp, pp, dp, cp, vpp, mb, rc, zero, sp))
    cols = np.array(rows, dtype=np.float32).T
    names = ("tp", "pp", "dp", "cp", "vpp", "microbatch", "recompute", "zero_stage", "sequence_parallel")
    return dict(zip(names, cols, strict=True))


def plans_of(cols: dict[str, np.ndarray], points: int, global_batch: int) -> Plan:
    """A batch of ``points`` plans: the grid tiled, every other field at its default."""
    reps = -(-points // len(cols["tp"]))
    values = {f.name: np.full(points, f.default, dtype=np.float32) for f in dataclasses.fields(Plan)}
    values |= {k: np.tile(v, reps)[:points] for k, v in cols.items()}
    values["global_batch"] = np.full(points, float(global_batch), dtype=np.float32)
    return Plan(**{k: jnp.asarray(v) for k, v in values.items()})


def timed(fn, *args, repeats: int = 3) -> tuple[float, float, float]:
    """(compile + first call seconds, best steady-state wall seconds, its CPU seconds)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, time.process_time() - c0
    return first, best, cpu


def reference_gflops(size: int = 512, repeats: int = 40) -> float:
    """A fixed workload for reading the figures as ratios: float32 NumPy matmuls, GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ a
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 * repeats / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3_70b")
    ap.add_argument("--hardware", default="h100_sxm")
    ap.add_argument("--devices", type=int, default=1024)
    ap.add_argument("--global-batch", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--points", type=int, default=1_000_000)
    args = ap.parse_args()

    spec = load_model(args.model)
    job = TrainingJob(spec, args.seq_len, "bf16")
    table = job.table()
    hw = load_hardware(args.hardware)
    cols = mapping_grid(args.devices, spec.num_heads, spec.num_layers, args.global_batch)
    reference = reference_gflops()
    print(f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}")
    print(f"reference: float32 512x512 NumPy matmul at {reference:.1f} GFLOP/s")
    print(
        f"model {args.model}, {args.devices} devices, seq {args.seq_len}: {len(cols['tp'])} mappings "
        f"tiled to {args.points} points"
    )

    knobs = {k: np.tile(v, -(-args.points // len(v)))[: args.points] for k, v in cols.items() if k != "dp"}
    knobs["ep"] = np.ones(args.points, np.float32)  # a dense model: no expert parallelism
    space = {k: sorted(set(v.tolist())) for k, v in knobs.items()}
    problem = training_mapping_problem(hw, job, args.devices, args.global_batch, space)
    tuples = len(np.unique(np.stack([knobs[f] for f in KERNEL_FIELDS], 1), axis=0))
    first, best, cpu = timed(problem.cost_fn, knobs)
    rate = args.points / best
    grid = math.prod(len(space[f]) for f in KERNEL_FIELDS)
    print(f"kernel tuples: {tuples} distinct among the points, {grid} in the grid of the space's values")
    print(
        f"search cost function (step time, breakdown, memory, feasibility, MFU, power, cost): "
        f"compile + first call {first:.2f} s, steady {best:.3f} s: {rate:,.0f} evaluations/s, "
        f"{args.points / cpu:,.0f} per CPU-second, {rate / reference:,.0f} per reference GFLOP/s"
    )

    plans = plans_of(cols, args.points, args.global_batch)
    step = jax.jit(jax.vmap(lambda p: training_step(hw, job, p, table).step_time_s))
    first, step_best, cpu = timed(step, plans)
    print(
        f"step time alone, every op model per plan (jit(vmap(training_step))): compile + first call "
        f"{first:.2f} s, steady {step_best:.3f} s: {args.points / step_best:,.0f} evaluations/s"
    )

    presets = ["a100_80gb_sxm", "h100_sxm", "h200", "b200"]
    from costmodels.hardware import stack_hardware

    hws = stack_hardware([load_hardware(n) for n in presets])
    n = args.points // len(presets)
    sub = plans_of(cols, n, args.global_batch)
    both = jax.jit(jax.vmap(lambda h: jax.vmap(lambda p: training_step(h, job, p, table).step_time_s)(sub)))
    hw_first, hw_best, _ = timed(both, hws)
    print(
        f"hardware x mapping grid, step time alone ({len(presets)} presets x {n} plans): compile "
        f"{hw_first:.2f} s, steady {hw_best:.3f} s, {len(presets) * n / hw_best:,.0f} evaluations/s"
    )
    print(f"evaluations_per_s: {rate:.0f}")


if __name__ == "__main__":
    main()
