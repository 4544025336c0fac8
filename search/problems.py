"""Search problems over the cost models: a discrete space, its constraint and a batched cost function.

``training_mapping_problem`` is the 3D-parallel mapping space of a training job on a fixed device
count (every factorization tp·pp·dp·cp = devices with ep, vpp, micro-batch, recompute, ZeRO stage and
sequence parallelism); ``inference_slo_problem`` is TP degree × batch size for serving under
TTFT/TPOT limits. Both return a :class:`Problem` the drivers consume: ``cost_fn`` takes a dict of
equal-length arrays and returns the metrics (``search.base.METRICS`` for training, ``SERVING_METRICS``
for serving) plus ``objective`` and ``feasible``. Pure: no Hydra, no MLflow, no printing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.hardware import Hardware
from costmodels.inference import InferenceJob, inference_step
from costmodels.metrics import system_metrics
from costmodels.parallel import Plan, recompute_name, valid_plans, with_defaults
from costmodels.training import KERNEL_FIELDS, TIME_FIELDS, TrainingJob, kernel_sums, training_step
from search.base import Problem, signed_objective

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


def _plan_columns(
    points: Mapping[str, Any], num_devices: float, global_batch: float
) -> dict[str, np.ndarray]:
    """Every Plan field as a float32 column for a batch of knob columns; dp is what the devices
    leave, N / (tp·pp·cp); a field outside ``points`` at its default."""
    n = len(next(iter(points.values())))
    values = {f.name: np.full(n, f.default, dtype=np.float32) for f in fields(Plan)}
    values |= {k: np.asarray(v, np.float32) for k, v in points.items() if k in values}
    values["dp"] = np.float32(num_devices) / (values["tp"] * values["pp"] * values["cp"])
    values["global_batch"] = np.full(n, global_batch, dtype=np.float32)
    return values


def _bucket(n: int, most: int) -> int:
    """The batch size ``n`` points are padded to: the next power of two, at most ``most`` (so that a
    run compiles one function per size class, not per count)."""
    return min(most, 1 << max(0, n - 1).bit_length())


def _padded_columns(columns: Mapping[str, np.ndarray], size: int) -> dict[str, jax.Array]:
    """``columns`` with their last row repeated to ``size`` rows, as JAX arrays."""
    n = len(next(iter(columns.values())))
    if n == size:
        return {k: jnp.asarray(v) for k, v in columns.items()}
    return {k: jnp.asarray(np.concatenate([v, np.repeat(v[-1:], size - n)])) for k, v in columns.items()}


def _padded(columns: Mapping[str, np.ndarray], size: int) -> Plan:
    """A Plan of ``size`` points: ``columns`` with their last row repeated to the size."""
    return Plan(**_padded_columns(columns, size))


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
    """
    spec, table = job.spec, job.table()

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

    batched = jax.jit(jax.vmap(metrics))
    kernels = jax.jit(jax.vmap(lambda plan: kernel_sums(hw, job, table, plan)))

    def cost_fn(points: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The metrics of every point: the kernel times once per distinct kernel tuple
        (KERNEL_FIELDS), their sums gathered per plan, and the rest of the model in chunks of
        CHUNK plans."""
        cols = _plan_columns(points, float(num_devices), float(global_batch))
        n = len(cols["tp"])
        if n == 0:  # no point: the metric columns, empty
            return {k: v[:0] for k, v in cost_fn({"tp": np.ones(1)}).items()}
        keys, kernel = _unique_rows(np.stack([cols[f] for f in KERNEL_FIELDS], 1))
        unique = {k: v[: len(keys)] for k, v in cols.items()} | dict(zip(KERNEL_FIELDS, keys.T, strict=True))
        sums = {
            k: np.take(np.asarray(v), kernel)
            for k, v in kernels(_padded(unique, _bucket(len(keys), n))).items()
        }
        size, parts = _bucket(n, CHUNK), []
        for lo in range(0, n, size):
            part = {k: v[lo : lo + size] for k, v in cols.items()}
            chunk = {k: v[lo : lo + size] for k, v in sums.items()}
            out = batched(_padded(part, size), _padded_columns(chunk, size))
            parts.append({k: np.asarray(v)[: min(size, n - lo)] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

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

    batched = jax.jit(jax.vmap(metrics))

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
