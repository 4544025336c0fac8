"""Co-design of a wafer-scale training system: hardware knobs by gradient descent, mapping inside.

The loss of a design is the training step time (or cost per token, or energy per token) of the best
parallel mapping on it: every mapping of a static grid (tp, pp, cp, vpp, micro-batch, recompute,
ZeRO, sequence parallelism, weight streaming; dp = devices / (tp·pp·cp) from the die count) is scored
in one ``vmap`` and combined by a soft minimum (log-sum-exp at a relative temperature), so the
gradient flows to the hardware knobs through the mapping choice. Constraint violations (area
simplex with the HBM PHY band, HBM shoreline, clock range, power cap) and memory overflow add penalties
proportional to their normalised size, so an infeasible start still has a slope toward feasibility.
Pure: no Hydra, no MLflow.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.architectures import ModelSpec
from costmodels.errors import ConfigError
from costmodels.memory import GiB
from costmodels.metrics import system_metrics
from costmodels.parallel import Plan, valid_plans, with_defaults
from costmodels.training import TIME_FIELDS, TrainingJob, training_step
from costmodels.wafer import (
    WaferDesign,
    WaferSystem,
    capped_clock_hz,
    constraints,
    wafer_hardware,
    wafer_power_w,
)
from search.base import Problem
from search.space import Knob
from search.xla import jit_few_calls

Array = Any
# pp includes 3, 5, 6, 7, 10, 12, 14 so die counts with odd factors still split into power-of-two dp
# (uneven pipeline stages are allowed, as everywhere: costmodels.parallel.RULES).
MAPPING_GRID = {
    "tp": (1, 2, 4, 8, 16, 32, 64),  # a wafer mesh can split a layer over many dies
    "pp": (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16),
    "cp": (1, 2),
    "vpp": (1, 2),
    "microbatch": (1, 2, 4),
    "recompute": (0, 1, 2),
    "zero_stage": (1,),
    "sequence_parallel": (1,),
    "weight_streaming": (0, 1),  # streamed layer by layer: only with pp = vpp = 1
}
WAFER_OBJECTIVES = ("step_time_s", "joules_per_token")
_NORMALISERS = {"area_fractions": 0.01, "hbm_shoreline_mm": 10.0, "clock_hz": 1e8, "power_cap_w": 1e3}


# the metrics of a design that a driver's table holds (the best mapping's; NaN where infeasible)
DESIGN_METRICS = ("step_time_s", "mfu", "tokens_per_s", "memory_gib", "power_w", "joules_per_token")
# the Hardware figures of a die that ``WaferProblem.figures`` reports
HARDWARE_FIELDS = (
    "peak_flops_bf16",
    "hbm_capacity_bytes",
    "hbm_bandwidth_Bps",
    "sram_capacity_bytes",
    "sram_bandwidth_Bps",
    "scale_up_domain_size",
    "scale_up_bandwidth_Bps",
    "scale_out_bandwidth_Bps",
    "power_w",
)


@dataclass(frozen=True)
class WaferProblem:
    """Knobs, a differentiable loss of the knob values, an exact evaluator of a design, and the
    figures of a design's die."""

    knobs: dict[str, Knob]
    loss: Any  # dict[str, jax.Array] -> jax.Array
    evaluate: Any  # dict[str, float] -> dict[str, Any]: exact metrics of the best mapping
    figures: Any  # dict[str, float] -> dict[str, Any]: constraints, clocks, power and die hardware

    def problem(self) -> Problem:
        """The same problem for any driver (``search.drivers``): the knobs as boxes, the loss for
        gradient descent and its exact re-score, and a cost function that scores design columns one
        design at a time (each design is a batch over the mapping grid already)."""

        def cost_fn(points: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            rows = [
                self.evaluate({k: float(v[i]) for k, v in points.items()}) for i in range(_length(points))
            ]
            out = {m: np.array([r.get(m, np.nan) for r in rows], float) for m in DESIGN_METRICS}
            out["feasible"] = np.array([r["feasible"] for r in rows], bool)
            out["objective"] = np.array([r["objective"] for r in rows], float)
            return out

        return Problem(
            dict(self.knobs), cost_fn, loss=self.loss, rescore=lambda v: self.evaluate(v)["objective"]
        )


def _length(columns: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(columns.values())))


def mapping_columns(
    spec: ModelSpec, seq_len: int, grid: Mapping[str, Sequence[float]] = MAPPING_GRID
) -> dict[str, np.ndarray]:
    """Every combination of the mapping grid that the mapping rules allow for this model
    (``costmodels.parallel.RULES``: interleaving needs a pipeline, weight streaming runs without one,
    every pipeline chunk holds a layer, ...), as float columns; dp and the batch are set per design."""
    rows = np.array(list(itertools.product(*grid.values())), dtype=np.float64).reshape(-1, len(grid))
    cols = {k: rows[:, i] for i, k in enumerate(grid)}
    ok = valid_plans(with_defaults(cols, derived=("dp", "global_batch")), spec, seq_len)
    return {k: v[ok].astype(np.float32) for k, v in cols.items()}


def _plans(
    cols: dict[str, np.ndarray], devices: Array, global_batch: float, relaxed: bool
) -> tuple[Any, Array]:
    """Plans for ``devices`` dies and their validity.

    Exact (``relaxed=False``): dp = N / (tp·pp·cp) must be a whole number; the global batch is rounded
    to the nearest multiple of dp·micro-batch (at least one micro-batch per replica), as one sizes a
    batch for a machine. Relaxed (the gradient-descent loss): dp is the continuous N / (tp·pp·cp) ≥ 1,
    so the loss is smooth in the die count; the answer is re-scored exactly.
    """
    n = len(cols["tp"])
    dp = devices / (cols["tp"] * cols["pp"] * cols["cp"])
    valid = dp >= 1.0  # the rest of the rules hold on every row (mapping_columns)
    if not relaxed:
        valid &= jnp.abs(dp - jnp.round(dp)) < 1e-3
        dp = jnp.maximum(jnp.round(dp), 1.0)
        unit = dp * cols["microbatch"]
        global_batch = jnp.maximum(jnp.round(global_batch / unit), 1.0) * unit
    # every plan field a column of n: the grid's, the derived dp and batch, the rest at their defaults
    values = {f.name: jnp.full(n, float(f.default)) for f in fields(Plan)}
    values |= {k: jnp.asarray(v) for k, v in cols.items() if k in values}
    values |= {"dp": jnp.maximum(dp, 1.0), "global_batch": jnp.broadcast_to(global_batch, (n,))}
    return Plan(**values), valid


def design_metrics(
    system: WaferSystem,
    job: TrainingJob,
    global_batch: int,
    cols: dict[str, np.ndarray],
    design: WaferDesign,
    relaxed: bool = False,
) -> dict[str, Array]:
    """Per-mapping metrics of a design (arrays over the mapping grid) and its validity mask."""
    hw = wafer_hardware(system, design)
    devices = system.wafers * design.dies_x * design.dies_y
    plan, valid = _plans(cols, devices, float(global_batch), relaxed)
    table = job.table()
    out = jax.vmap(lambda p: training_step(hw, job, p, table))(plan)
    ok = valid & out.feasible
    system = system_metrics(devices, hw, out.tokens_per_s, out.memory.total_bytes)
    return {
        "step_time_s": out.step_time_s,
        **{k: getattr(out, k) for k in TIME_FIELDS},  # the parts of the step, which sum to it
        "mfu": out.mfu,
        "tokens_per_s": out.tokens_per_s,
        "memory_gib": system["memory_gib"],
        "power_w": system["power_w"],  # a design has no price: no cost per token
        "tokens_per_joule": 1.0 / system["energy_j_per_token"],
        "joules_per_token": system["energy_j_per_token"],
        "feasible": ok,
        "valid": valid,
        "memory_ratio": out.memory.total_bytes / out.memory.capacity_bytes,
        "capacity_gib": out.memory.capacity_bytes / GiB,
        "external_ok": out.memory.offloaded_bytes <= out.memory.host_capacity_bytes,
        "global_batch": plan.global_batch,
    }


def _design_figures(system: WaferSystem, design: WaferDesign) -> dict[str, Any]:
    """A design's constraint values (≤ 0 satisfied), the clock it runs at under the power cap, the
    wafer's power at the design's own clock (uncapped), and its die's Hardware figures."""
    hw = wafer_hardware(system, design)
    return {
        "constraints": constraints(system, design),
        "clock_hz": capped_clock_hz(system, design),
        "uncapped_power_w": wafer_power_w(system, design, design.clock_hz),
        "hardware": {k: getattr(hw, k) for k in HARDWARE_FIELDS},
    }


def _penalty(system: WaferSystem, design: WaferDesign) -> Array:
    c = constraints(system, design)
    return sum(jax.nn.relu(c[k] / _NORMALISERS[k]) for k in c)


def wafer_problem(
    system: WaferSystem,
    job: TrainingJob,
    global_batch: int,
    knobs: Mapping[str, Knob],
    fixed: Mapping[str, float] | None = None,
    objective: str = "step_time_s",
    temperature: float = 0.02,
    grid: Mapping[str, Sequence[float]] = MAPPING_GRID,
) -> WaferProblem:
    """The gradient-descent problem of ``system`` for ``job``: knobs are WaferDesign fields."""
    if objective not in WAFER_OBJECTIVES:
        raise ConfigError(f"wafer objective must be step_time_s or joules_per_token, got '{objective}'")
    cols = mapping_columns(job.spec, job.seq_len, grid)
    fixed = dict(fixed or {})

    def design_of(values: Mapping[str, Array]) -> WaferDesign:
        return WaferDesign(**{**fixed, **values})

    def loss(values: dict[str, Array]) -> Array:
        design = design_of(values)
        m = design_metrics(system, job, global_batch, cols, design, relaxed=True)
        usable = m["valid"] & m["external_ok"]  # streamed state must fit the external memory
        overflow = jax.nn.relu(jnp.where(usable, m["memory_ratio"], 1.0) - 1.0)
        value = jnp.where(usable, m[objective], 1.0)  # no NaN from unused branches into the gradient
        score = jnp.where(usable, value * (1.0 + 10.0 * overflow), 1e6)
        scale = jnp.min(score) * temperature
        soft = -scale * jax.nn.logsumexp(-score / scale)
        return soft * (1.0 + 10.0 * _penalty(system, design))

    # each compiled once and called a few dozen times (the candidates, the reference designs)
    batched = jit_few_calls(lambda d: design_metrics(system, job, global_batch, cols, d))
    figured = jit_few_calls(lambda d: _design_figures(system, d))

    # an unset lanes_per_core means the node's reference core: given as that value, every design
    # (a reference with 4-lane cores too) has the same structure and runs one compiled program
    lanes = {"lanes_per_core": system.tech.reference_lanes_per_core}

    def exact_design(values: Mapping[str, float]) -> WaferDesign:
        return WaferDesign(**{k: jnp.asarray(float(v)) for k, v in {**lanes, **fixed, **values}.items()})

    def figures(values: Mapping[str, float]) -> dict[str, Any]:
        return jax.tree.map(float, figured(exact_design(values)))

    def evaluate(values: Mapping[str, float]) -> dict[str, Any]:
        design = exact_design(values)
        m = {k: np.asarray(v) for k, v in batched(design).items()}
        viol = {k: v for k, v in figures(values)["constraints"].items() if v > 1e-6}
        if not m["feasible"].any() or viol:
            fits_outside = m["valid"] & m["external_ok"]  # mappings whose external state (if any) fits
            return {
                "feasible": False,
                "violations": viol,
                "objective": float("inf"),
                "min_memory_gib": float(np.min(np.where(fits_outside, m["memory_gib"], np.inf))),
                "capacity_gib": float(np.max(m["capacity_gib"])),
            }
        # a rounded batch changes the work per step: compare step times per nominal batch
        per_batch = m[objective] * (global_batch / m["global_batch"] if objective == "step_time_s" else 1.0)
        i = int(np.argmin(np.where(m["feasible"], per_batch, np.inf)))
        mapping = {k: int(v[i]) for k, v in cols.items()}
        devices = system.wafers * float(design.dies_x) * float(design.dies_y)
        mapping["dp"] = round(devices / (mapping["tp"] * mapping["pp"] * mapping["cp"]))
        at = {k: float(np.broadcast_to(v, m["feasible"].shape)[i]) for k, v in m.items()}
        return {
            "feasible": True,
            "objective": float(per_batch[i]),
            "mapping": mapping,
            **{k: v for k, v in at.items() if k not in (*TIME_FIELDS, "feasible", "valid", "external_ok")},
            "breakdown": {k: at[k] for k in TIME_FIELDS},  # the parts of step_time_s
        }

    return WaferProblem(dict(knobs), jax.jit(loss), evaluate, figures)
