"""Evaluations per second of the training-step model over a vectorized grid of mappings (and hardware).

    python experiments/bench_eval_throughput.py [--model llama3_70b] [--devices 1024] [--points 1000000]

Builds the mapping space of ``--model`` on ``--devices`` GPUs (every factorization into tp·pp·dp·cp
with ep, vpp, micro-batch, recompute, ZeRO stage and sequence parallelism), tiles it up to
``--points`` plans, and times ``jit(vmap(training_step))`` over it after one warm-up call (compile
excluded, reported separately); then the same over a batch of hardware presets. The last line is
``evaluations_per_s: <number>`` (the mapping grid on one hardware preset).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.parallel import RECOMPUTE, Plan
from costmodels.training import TrainingJob, training_step
from dse.hardware import load_hardware
from dse.models import load_model


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


def timed(fn, *args, repeats: int = 3) -> tuple[float, float]:
    """(compile + first call seconds, best steady-state seconds)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best


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
    plans = plans_of(cols, args.points, args.global_batch)
    step = jax.jit(jax.vmap(lambda p: training_step(hw, job, p, table).step_time_s))
    first, best = timed(step, plans)
    print(f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}")
    print(
        f"model {args.model}, {args.devices} devices, seq {args.seq_len}: {len(cols['tp'])} mappings "
        f"tiled to {args.points} plans"
    )
    print(f"mapping grid: compile + first call {first:.2f} s, steady call {best:.3f} s")

    presets = ["a100_80gb_sxm", "h100_sxm", "h200", "b200"]
    from costmodels.hardware import stack_hardware

    hws = stack_hardware([load_hardware(n) for n in presets])
    n = args.points // len(presets)
    sub = plans_of(cols, n, args.global_batch)
    both = jax.jit(jax.vmap(lambda h: jax.vmap(lambda p: training_step(h, job, p, table).step_time_s)(sub)))
    hw_first, hw_best = timed(both, hws)
    print(
        f"hardware x mapping grid ({len(presets)} presets x {n} plans): compile {hw_first:.2f} s, "
        f"steady {hw_best:.3f} s, {len(presets) * n / hw_best:,.0f} evaluations/s"
    )
    print(f"evaluations_per_s: {args.points / best:.0f}")


if __name__ == "__main__":
    main()
