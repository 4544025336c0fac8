"""Search problems over the cost models: a discrete space, its constraint and a batched cost function.

``training_mapping_problem`` is the 3D-parallel mapping space of a training job on a fixed device
count (every factorization tp·pp·dp·cp = devices with ep, vpp, micro-batch, recompute, ZeRO stage and
sequence parallelism); ``inference_slo_problem`` is TP degree × batch size for serving under
TTFT/TPOT limits. Both return a :class:`Problem` the drivers consume: ``cost_fn`` takes a dict of
equal-length arrays and returns the metrics (``search.base.METRICS`` for training, ``SERVING_METRICS``
for serving) plus ``objective`` and ``feasible``. Pure: no Hydra, no MLflow, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.hardware import Hardware
from costmodels.inference import InferenceJob, inference_step
from costmodels.metrics import system_metrics
from costmodels.parallel import Plan, padded_plan, recompute_name, valid_plans, with_defaults
from costmodels.training import (
    KERNEL_FIELDS,
    KERNEL_SUMS,
    TIME_FIELDS,
    TrainingJob,
    kernel_sums,
    training_step,
)
from search.base import Problem, signed_objective
from search.xla import jit_few_calls

OBJECTIVES = ("step_time_s", "cost_usd_per_mtoken", "neg_mfu", "neg_tokens_per_s")  # training
SERVING_METRICS = (
    "ttft_s",
    "tpot_s",
    "latency_s",
    "tokens_per_s",
    "memory_gib",
    "power_w",
    "cost_usd_per_mtoken",
    "energy_j_per_token",
)
SERVING_OBJECTIVES = ("neg_tokens_per_s", "tpot_s", "ttft_s", "latency_s", "cost_usd_per_mtoken")


def _bucket(n: int, most: int) -> int:
    """The batch size ``n`` points are padded to: the next power of two, at most ``most`` (so that a
    run compiles one function per size class, not per count)."""
    return min(most, 1 << max(0, n - 1).bit_length())


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows, each row's index among them), as ``np.unique(rows, axis=0,
    return_inverse=True)`` but through one integer key per row, mixed radix over each column's
    distinct values (a knob has a handful), mapped to ids through a dense table: no sort of row
    records, which took 0.5 s for 2·10⁵ rows."""
    key, size = np.zeros(len(rows), np.int64), 1
    for column in rows.T:
        values = np.unique(column)
        key, size = key * len(values) + np.searchsorted(values, column), size * len(values)
        if size > 1 << 24:  # too sparse for a table: renumber the keys so far
            key = np.unique(key, return_inverse=True)[1].ravel()
            size = int(key.max()) + 1
    present = np.zeros(size, bool)
    present[key] = True
    ids = np.cumsum(present) - 1
    inverse = ids[key]
    first = np.empty(int(present.sum()), np.int64)
    first[inverse] = np.arange(len(rows))  # a row of each id (all of its rows are equal)
    return rows[first], inverse


CHUNK = 32768  # plans per compiled call: any number of points streams through one function, flat memory
GRID_MOST = 1 << 14  # kernel tuples: the whole grid of the space's values up to this many, else the points'


def _grid_columns(values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The Cartesian product of ``values`` as columns, the last varying fastest (row-major mixed radix:
    the row of the tuple with indices (i₀, i₁, …) is ((i₀·n₁ + i₁)·n₂ + i₂)…)."""
    return [g.ravel() for g in np.meshgrid(*values, indexing="ij")]


def training_mapping_problem(
    hw: Hardware,
    job: TrainingJob,
    num_devices: int,
    global_batch: int,
    space: Mapping[str, Sequence[float]],
    objective: str = "step_time_s",
) -> Problem:
    """The mapping space of ``job`` on ``num_devices`` devices of ``hw``.

    ``space`` gives candidate values for tp, pp, cp, ep, vpp, microbatch, recompute (0/1/2),
    zero_stage and sequence_parallel (0/1); dp is derived. The constraint keeps the points that
    break none of the mapping rules (``costmodels.parallel.RULES``; a field outside ``space`` at its
    default).

    The cost function evaluates the per-op kernel model once per kernel tuple (``KERNEL_FIELDS``):
    over the grid of the space's values of those fields (cached, so repeated calls reuse it), or over
    the points' distinct tuples when that grid is large or a point lies outside it. The rest of the
    model runs in chunks of ``CHUNK`` points through one compiled function that takes the searched
    knob columns (the Plan's other fields enter as scalars), gathers each point's kernel sums by its
    tuple's row and returns the metric columns.
    """
    spec, table = job.spec, job.table()
    defaults = {f.name: np.float32(f.default) for f in fields(Plan)}

    def constraint(c: dict[str, np.ndarray]) -> np.ndarray:
        dp = num_devices / (c["tp"] * c["pp"] * c["cp"])
        cols = with_defaults({**c, "dp": dp, "global_batch": np.full(dp.shape, float(global_batch))})
        return valid_plans(cols, spec, job.seq_len, float(num_devices))

    def metrics(plan: Plan, sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
        out = training_step(hw, job, plan, table, sums)
        m = {
            "step_time_s": out.step_time_s,
            "mfu": out.mfu,
            "tokens_per_s": out.tokens_per_s,
            **system_metrics(plan.num_devices, hw, out.tokens_per_s, out.memory.total_bytes),
            "feasible": out.feasible,
        }
        m |= {k: getattr(out, k) for k in TIME_FIELDS}  # where the step time goes
        m["objective"] = jnp.where(out.feasible, signed_objective(m, objective), jnp.inf)
        return m

    def plan_of(names: tuple[str, ...], x: jax.Array, constants: dict[str, jax.Array]) -> Plan:
        """One point's Plan: ``x`` holds the ``names`` knobs, ``constants`` every other field but dp,
        which is what the devices leave, N / (tp·pp·cp)."""
        v = constants | {k: x[i] for i, k in enumerate(names)}
        return Plan(**v, dp=jnp.float32(num_devices) / (v["tp"] * v["pp"] * v["cp"]))

    def run(names, x, constants, sums, grid, rows):
        """The metrics of a chunk of points (``x``: knobs × points) and the number of points outside
        ``grid``. A point's kernel sums are row ``rows`` of ``sums``, or with ``grid`` (each kernel
        field's sorted values) the row of its tuple in that grid. The metrics leave as separate
        arrays: stacking them into one stops XLA fusing the model (3.6× slower)."""

        def one(x, row):
            plan = plan_of(names, x, constants)
            hit = jnp.bool_(True)
            if grid is not None:
                row = 0
                for f, values in zip(KERNEL_FIELDS, grid, strict=True):
                    value = getattr(plan, f)
                    i = jnp.minimum(jnp.sum(values < value), len(values) - 1)
                    row, hit = row * len(values) + i, hit & (values[i] == value)
            return metrics(plan, dict(zip(KERNEL_SUMS, sums[row], strict=True))), ~hit

        out, miss = jax.vmap(one, in_axes=(1, None if rows is None else 0))(x, rows)
        return out, jnp.sum(miss)

    # a chunk smaller than CHUNK: all the points there are, in one call (or a few, from a driver
    # that asks for a handful at a time), so the program compiles for few calls (search.xla)
    run_chunks, run_once = jax.jit(run, static_argnums=0), jit_few_calls(run, static_argnums=0)
    kernels = jit_few_calls(jax.vmap(lambda plan: kernel_sums(hw, job, table, plan)))  # once per grid

    def sums_of(tuples: Sequence[np.ndarray]) -> jax.Array:
        """The kernel sums (tuples × KERNEL_SUMS) of the kernel tuples given as KERNEL_FIELDS columns."""
        n = len(tuples[0])
        cols = {k: np.full(n, v) for k, v in defaults.items()} | dict(zip(KERNEL_FIELDS, tuples, strict=True))
        out = kernels(padded_plan(cols, _bucket(n, 1 << 30)))
        return jnp.stack([out[k][:n] for k in KERNEL_SUMS], axis=1)

    grids: dict[tuple[tuple[float, ...], ...], jax.Array] = {}  # grid values → its kernel sums

    def evaluate(names, columns, n, constants, sums, grid, rows) -> tuple[dict[str, np.ndarray], int]:
        """``run`` over the points in chunks, the next chunk dispatched before the last one is read."""
        size = _bucket(n, CHUNK)
        out: dict[str, np.ndarray] = {}
        misses = 0

        def dispatch(lo: int):
            hi = min(n, lo + size)
            x = np.stack([c[lo:hi] for c in columns])
            r = None if rows is None else rows[lo:hi]
            if hi - lo < size:  # pad the last chunk with its last point
                x = np.concatenate([x, np.repeat(x[:, -1:], size - (hi - lo), axis=1)], axis=1)
                r = None if r is None else np.concatenate([r, np.repeat(r[-1:], size - (hi - lo))])
            return lo, hi, (run_chunks if size == CHUNK else run_once)(names, x, constants, sums, grid, r)

        pending = dispatch(0)
        while pending is not None:
            lo, hi, (metrics_, miss) = pending
            pending = dispatch(hi) if hi < n else None
            for k, v in metrics_.items():
                v = np.asarray(v)
                out.setdefault(k, np.empty(n, v.dtype))[lo:hi] = v[: hi - lo]
            misses += int(miss)
        return out, misses

    def cost_fn(points: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The metrics of every point: the kernel sums once per kernel tuple, the rest in chunks."""
        n = len(next(iter(points.values())))
        names = tuple(f for f in defaults if (f in points or f == "tp") and f not in ("dp", "global_batch"))
        columns = [
            np.asarray(points[f], np.float32) if f in points else np.full(n, defaults[f]) for f in names
        ]
        if n == 0:  # no point: the metric columns, empty
            return {k: v[:0] for k, v in cost_fn({"tp": np.ones(1)}).items()}
        constants = {k: jnp.asarray(v) for k, v in defaults.items() if k not in names and k != "dp"}
        constants["global_batch"] = jnp.float32(global_batch)
        values = tuple(
            tuple(sorted({np.float32(v) for v in space[f]})) if f in names and f in space else (defaults[f],)
            for f in KERNEL_FIELDS
        )
        if (
            all(f in space or f not in names for f in KERNEL_FIELDS)
            and math.prod(map(len, values)) <= GRID_MOST
        ):
            if values not in grids:
                grids[values] = sums_of(_grid_columns([np.array(v, np.float32) for v in values]))
            grid = tuple(jnp.asarray(np.array(v, np.float32)) for v in values)
            result, misses = evaluate(names, columns, n, constants, grids[values], grid, None)
            if not misses:
                return result
        # a large grid, or points outside it: the points' distinct kernel tuples
        full = {
            f: (columns[names.index(f)] if f in names else np.full(n, defaults[f])) for f in KERNEL_FIELDS
        }
        keys, rows = _unique_rows(np.stack(list(full.values()), 1))
        result, _ = evaluate(names, columns, n, constants, sums_of(list(keys.T)), None, rows.astype(np.int32))
        return result

    def describe(point: dict[str, float]) -> dict[str, Any]:
        d = {k: int(v) for k, v in point.items() if k not in ("sequence_parallel",)}
        d["dp"] = int(num_devices // (d["tp"] * d["pp"] * d["cp"]))
        d["recompute"] = recompute_name(point["recompute"])
        d["sequence_parallel"] = bool(point.get("sequence_parallel", 0))
        return d

    return Problem(
        {k: tuple(float(v) for v in vals) for k, vals in space.items()},
        cost_fn,
        constraint=constraint,
        describe=describe,
    )


def inference_slo_problem(
    hw: Hardware,
    job: InferenceJob,
    space: Mapping[str, Sequence[float]],
    tpot_limit_s: float,
    objective: str = "neg_tokens_per_s",
    ttft_limit_s: float | None = None,
) -> Problem:
    """TP degree (and pp) × batch size for serving ``job`` under latency limits.

    Feasible: the batch's weights and KV cache fit in memory, TPOT ≤ ``tpot_limit_s`` and (when
    given) TTFT ≤ ``ttft_limit_s``. Metrics: ``ttft_s`` (time to first token), ``tpot_s`` (time per
    output token), ``latency_s`` (a request end to end), ``tokens_per_s`` (output tokens/s over all
    devices), memory, power and cost; serving has no MFU and no training step.
    """
    spec, tables = job.spec, job.tables()
    ttft_limit = np.inf if ttft_limit_s is None else float(ttft_limit_s)

    def constraint(c: dict[str, np.ndarray]) -> np.ndarray:
        """The mapping rules on tp and pp (heads, KV heads, a layer per stage); no dp or batch split."""
        cols = {"tp": c["tp"], "pp": c.get("pp", np.ones_like(c["tp"]))}
        return valid_plans(with_defaults(cols, derived=("dp", "global_batch")), spec, 1)

    def metrics(tp: jax.Array, pp: jax.Array, batch: jax.Array) -> dict[str, jax.Array]:
        out = inference_step(hw, job, tp, pp, batch, tables=tables)
        feasible = out.feasible & (out.tpot_s <= tpot_limit_s) & (out.ttft_s <= ttft_limit)
        m = {
            "ttft_s": out.ttft_s,
            "tpot_s": out.tpot_s,
            "latency_s": out.latency_s,
            "tokens_per_s": out.output_tokens_per_s,
            **system_metrics(tp * pp, hw, out.output_tokens_per_s, out.memory.total_bytes),
            "feasible": feasible,
        }
        m["objective"] = jnp.where(feasible, signed_objective(m, objective), jnp.inf)
        return m

    batched = jit_few_calls(jax.vmap(metrics))  # the whole space (tp, pp, batch sizes) in one call

    def cost_fn(points: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tp = jnp.asarray(points["tp"], jnp.float32)
        pp = jnp.asarray(points.get("pp", np.ones_like(points["tp"])), jnp.float32)
        out = batched(tp, pp, jnp.asarray(points["batch_size"], jnp.float32))
        return {k: np.asarray(v) for k, v in out.items()}

    def describe(point: dict[str, float]) -> dict[str, Any]:
        return {k: int(v) for k, v in point.items()}

    return Problem(
        {k: tuple(float(v) for v in vals) for k, vals in space.items()},
        cost_fn,
        constraint=constraint,
        describe=describe,
    )
