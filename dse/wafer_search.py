"""The ``wafer_arch`` experiment: a search over a wafer design, compared with reference designs.

Called by ``dse.search`` for ``problem=wafer``: builds the wafer system and knobs from
``cfg.wafer``, runs the configured driver (``search.drivers``: gradient descent on
``search.wafer.wafer_problem``'s loss by default, or random search or Optuna on its exact
evaluation), scores the answer exactly, evaluates the reference designs (an SRAM-only wafer in the
style of Cerebras WSE-2/3, the DeepFlow-style 20-die wafer with 4 HBM stacks per die) with the same
model, and a GPU cluster of the same power with its best mapping (grid search), then logs all of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from costmodels.errors import ConfigError
from costmodels.parallel import recompute_name
from costmodels.training import TrainingJob
from costmodels.wafer import FIELD_RANGES, WaferDesign, WaferSystem
from dse._app import format_table, progress_callback
from dse.hardware import load_hardware
from dse.models import load_model
from dse.tracking import JobRun
from dse.units import (
    fmt_breakdown,
    fmt_bytes,
    fmt_count,
    fmt_metric_cell,
    fmt_power,
    memory_phrase,
    metric_header,
    step_shares,
)
from search import drivers
from search.grid import grid_search
from search.problems import training_mapping_problem
from search.space import Knob
from search.wafer import DESIGN_METRICS, WaferProblem, wafer_problem

# Reference designs, in the same knobs (the node, wafer count and power cap are the experiment's).
REFERENCES = {
    # Cerebras WSE-2 (Hot Chips 2021): 84 reticle fields (12 x 7) of cores with 40 GB SRAM, no HBM; we
    # cut the same square into 12 x 8 so the die count splits into power-of-two data parallelism. Its
    # cores are 4 FMA lanes wide (costmodels/technology.py).
    "wse_style_sram_only": {
        "compute_frac": 0.45,
        "sram_frac": 0.5,
        "io_frac": 0.05,
        "clock_hz": 1.1e9,
        "hbm_stacks": 0.0,
        "dies_x": 12.0,
        "dies_y": 8.0,
        "lanes_per_core": 4.0,
    },
    # DeepFlow (Ardalani et al. 2021) style: 20 large dies, 4 HBM stacks each.
    "deepflow_20_die_4_hbm": {
        "compute_frac": 0.6,
        "sram_frac": 0.25,
        "io_frac": 0.15,
        "clock_hz": 1.2e9,
        "hbm_stacks": 4.0,
        "dies_x": 5.0,
        "dies_y": 4.0,
    },
}
GPU_SPACE = {
    "tp": [1, 2, 4, 8],
    "pp": [1, 2, 4, 8, 16],
    "cp": [1, 2],
    "ep": [1],
    "vpp": [1, 2],
    "microbatch": [1, 2],
    "recompute": [0, 1, 2],
    "zero_stage": [1],
    "sequence_parallel": [0, 1],
}


def knobs_of(cfg: DictConfig) -> dict[str, Knob]:
    """Knob bounds from ``cfg.wafer.knobs``; unknown knobs and impossible simplex minimums are errors."""
    valid = set(WaferDesign.__dataclass_fields__)
    out = {}
    for name, spec in OmegaConf.to_container(cfg.wafer.knobs, resolve=True).items():
        if name not in valid:
            raise ConfigError(f"unknown wafer knob '{name}'; valid: {', '.join(sorted(valid))}")
        out[name] = Knob(**spec)
        _check_range(f"wafer.knobs.{name}.low", name, out[name].low)
        _check_range(f"wafer.knobs.{name}.high", name, out[name].high)
    groups: dict[str, list[str]] = {}
    for name, k in out.items():
        if k.group:
            groups.setdefault(k.group, []).append(name)
    for names in groups.values():
        low = sum(out[n].low for n in names)
        if low > 1.0:
            raise ConfigError(
                f"area fractions cannot sum to 1: the minimums {' + '.join(names)} = {low:.3g} > 1; "
                f"lower wafer.knobs.<name>.low"
            )
    return out


def system_of(cfg: DictConfig) -> WaferSystem:
    w = cfg.wafer
    if w.power_cap_w <= 0 or w.wafers < 1:
        raise ConfigError("wafer.power_cap_w must be > 0 and wafer.wafers >= 1")
    external = {k: float(w.get(k) or 0.0) for k in ("external_memory_bytes", "external_bandwidth_Bps")}
    for k, v in external.items():
        if v < 0:
            raise ConfigError(f"wafer.{k} = {v:g} must be >= 0 (0: no external memory)")
    return WaferSystem(
        node=w.node,
        wafers=int(w.wafers),
        power_cap_w=float(w.power_cap_w),
        reference=load_hardware(w.reference),
        **external,
    )


def fixed_of(cfg: DictConfig) -> dict[str, float]:
    """Design fields held fixed during the search: ``wafer.lanes_per_core`` unless it is a knob."""
    lanes = cfg.wafer.get("lanes_per_core")
    if lanes is None or "lanes_per_core" in cfg.wafer.knobs:
        return {}
    _check_range("wafer.lanes_per_core", "lanes_per_core", float(lanes))
    return {"lanes_per_core": float(lanes)}


def _check_range(key: str, name: str, value: float) -> None:
    """``value`` of design field ``name`` (set at ``key``) must be one it can physically take
    (``costmodels.wafer.FIELD_RANGES``)."""
    low, high, what = FIELD_RANGES[name]
    if not low <= value <= high:
        bounds = f">= {low:g}" if high == np.inf else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"{key} = {value:g} must be {bounds} ({what})")


def _check_power(problem: WaferProblem, system: WaferSystem, fixed: dict[str, float]) -> None:
    """The cap must run some design: the smallest one (every knob at its lower bound) at the node's
    lowest-voltage clock must fit under it, else the power cap is the binding constraint."""
    low = {**fixed, **{n: k.low for n, k in problem.knobs.items()}}
    low["clock_hz"] = min(low.get("clock_hz", np.inf), system.tech.min_voltage_clock_hz)
    needed = problem.figures(low)["uncapped_power_w"]
    if needed > system.power_cap_w:
        raise ConfigError(
            f"wafer.power_cap_w = {system.power_cap_w:g} W cannot run any design: the smallest "
            f"one at the lowest-voltage clock needs {needed:.4g} W per wafer; raise the cap"
        )


def gpu_cluster(cfg: DictConfig, job: TrainingJob, system: WaferSystem) -> dict[str, Any]:
    """The best mapping of the job on GPUs of the same total power: the largest 8·2^k GPUs (whole
    8-GPU nodes, a count that splits into power-of-two data parallelism) whose TDP fits the budget."""
    gpu = load_hardware(cfg.wafer.compare_gpu)
    budget = int(system.wafers * system.power_cap_w / float(gpu.power_w))
    if budget < 8:
        return {"feasible": False, "reason": f"power budget buys fewer than 8 {cfg.wafer.compare_gpu}"}
    n = 8 * 2 ** int(np.log2(budget // 8))
    problem = training_mapping_problem(gpu, job, n, cfg.workload.global_batch, GPU_SPACE)
    try:
        res = grid_search(problem.space, problem.cost_fn, constraint=problem.constraint, top_k=1)
    except ConfigError as exc:
        return {"feasible": False, "reason": str(exc)}
    m = res.metrics
    return {
        "feasible": True,
        "devices": n,
        "mapping": problem.describe(res.best),
        "step_time_s": m["step_time_s"],
        "tokens_per_s": m["tokens_per_s"],
        "power_w": m["power_w"],
        "mfu": m["mfu"],
        "memory_gib": m["memory_gib"],
        "global_batch": float(cfg.workload.global_batch),
        "tokens_per_joule": 1.0 / m["energy_j_per_token"],
    }


def run(cfg: DictConfig, run_: JobRun) -> dict[str, Any]:
    """Gradient descent, the exact score of its answer, and the comparison table (JSON-ready)."""
    if cfg.get("wafer") is None:
        raise ConfigError("problem=wafer needs a wafer system: use +experiment=wafer_arch")
    s, system, knobs, fixed = cfg.search, system_of(cfg), knobs_of(cfg), fixed_of(cfg)
    job = TrainingJob(
        load_model(cfg.model),
        cfg.workload.seq_len,
        cfg.workload.precision,
        cfg.workload.fused_attention,
        cfg.workload.optimizer,
    )
    problem = wafer_problem(
        system,
        job,
        cfg.workload.global_batch,
        knobs,
        fixed=fixed,
        objective=s.objective,
        **({"temperature": s.temperature} if "temperature" in s else {}),  # gradient descent's soft-min
    )
    _check_power(problem, system, fixed)
    from dse.search import driver_options

    generic = problem.problem()
    drivers.check(s.driver, generic, "problem=wafer")
    options = driver_options(cfg, run_, generic, DESIGN_METRICS)
    driver = drivers.DRIVERS[s.driver]
    progress = progress_callback(bool(cfg.get("progress")), s.driver, driver.unit)
    result = drivers.run(s.driver, generic, options, seed=cfg.seed, progress=progress)
    best = problem.evaluate(result.best)
    design = {**fixed, **result.best}
    if not best["feasible"]:
        raise ConfigError(f"no feasible wafer design found: {_why_infeasible(best)}")
    found = driver.title.lower().replace(" ", "_")  # its row in the comparison: gradient_descent, ...
    rows = {found: best} | {k: problem.evaluate(v) for k, v in REFERENCES.items()}
    rows[f"{cfg.wafer.compare_gpu}_cluster_equal_power"] = gpu_cluster(cfg, job, system)
    breakdown = step_breakdown(best)
    _log(run_, result, design, best, rows, breakdown)
    hardware = _hardware_summary(problem, design)
    return {
        "driver": s.driver,
        "found_by": driver.title,
        "evaluations": result.evaluations,
        "warnings": _warnings(result.best, knobs, best, int(cfg.workload.global_batch)),
        "design": design,
        "best": best,
        "comparison": rows,
        "hardware": hardware,
        "breakdown": breakdown,
        "why": _why(best, breakdown, rows, design, hardware, system.power_cap_w, found),
    }


def _why(
    best: dict[str, Any],
    breakdown: dict[str, float],
    rows: dict[str, dict[str, Any]],
    design: dict[str, float],
    hardware: dict[str, float],
    power_cap_w: float,
    found: str,
) -> str:
    """What binds the design found (row ``found`` of ``rows``): where its step goes, its memory per
    die, whether the power cap throttles the clock (capped below the chosen clock), and its
    throughput against the best feasible reference of the comparison."""
    parts = step_shares(breakdown["step_time_s"], breakdown)
    parts.append(memory_phrase(best["memory_gib"], best["capacity_gib"], "die"))
    capped, chosen = hardware["clock_hz"], design.get("clock_hz", hardware["clock_hz"])
    if capped < 0.999 * chosen:
        parts.append(
            f"the {fmt_power(power_cap_w)} per-wafer power cap holds the clock at {fmt_count(capped, 'Hz')} "
            f"of {fmt_count(chosen, 'Hz')} (binds)"
        )
    else:
        parts.append(f"the clock runs at {fmt_count(chosen, 'Hz')}, under the {fmt_power(power_cap_w)} cap")
    refs = {k: r for k, r in rows.items() if k != found and r.get("feasible")}
    if refs:
        name = max(refs, key=lambda k: refs[k]["tokens_per_s"])
        ratio = best["tokens_per_s"] / refs[name]["tokens_per_s"]
        parts.append(f"{ratio:.2f}x the tokens/s of the best reference ({name})")
    return "; ".join(parts)


def _warnings(
    values: dict[str, float], knobs: dict[str, Knob], best: dict[str, Any], batch: int
) -> list[str]:
    """Knobs whose optimum sits on a bound of their range (within 1 % of the range: the optimum may
    lie beyond it), and a global batch that the mapping rounded."""
    out = []
    edges = []
    for name, v in values.items():
        k = knobs[name]
        for side, edge in (("lower", k.low), ("upper", k.high)):
            if abs(v - edge) <= 0.01 * (k.high - k.low):
                value = fmt_count(v, "Hz") if name == "clock_hz" else f"{v:.4g}"
                edges.append(f"{name} = {value} ({side})")
    if edges:
        out.append(
            f"on a bound of its range: {', '.join(edges)}; the optimum may lie beyond: where a bound is "
            "not physical, widen wafer.knobs.<name>.low/high"
        )
    rounded = round(float(best["global_batch"]))
    if rounded != batch:
        out.append(
            f"global batch rounded from {batch} to {rounded} sequences to fit the mapping "
            "(dp x micro-batch); the step figures are for the rounded batch"
        )
    return out


def step_breakdown(best: dict[str, Any]) -> dict[str, float]:
    """Where the step time of an evaluated design's best mapping goes: ``step_time_s`` and its parts
    (``costmodels.training.TIME_FIELDS``, the ``TrainingBreakdown`` times that sum to it)."""
    return {"step_time_s": best["step_time_s"], **best["breakdown"]}


def _hardware_summary(problem: WaferProblem, values: dict[str, float]) -> dict[str, float]:
    """One die of the design: its clock under the power cap and its Hardware figures."""
    figures = problem.figures(values)
    return {"clock_hz": figures["clock_hz"], **figures["hardware"]}


def _log(
    run_: JobRun,
    result: Any,
    design: dict[str, float],
    best: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    breakdown: dict[str, float],
) -> None:
    metrics = ("step_time_s", "tokens_per_s", "power_w", "tokens_per_joule", "mfu", "memory_gib", "objective")
    run_.log_metrics({k: best[k] for k in metrics if k in best})
    by_restart: dict[int, list[dict[str, float]]] = {}
    for r in result.trajectory if "restart" in result.table else ():  # gradient descent's restarts
        by_restart.setdefault(int(r["restart"]), []).append(r)
    for restart, steps in by_restart.items():
        run_.child(
            f"restart-{restart}",
            params={"restart": restart},
            metrics={"loss": steps[-1]["loss"]},
            step_rows=steps,
        )
    run_.log_dict({"design": design, "best": best}, "best_design.yaml")
    run_.log_dict({k: v for k, v in rows.items()}, "comparison.yaml")
    if run_.keeps_artifacts:
        import matplotlib.pyplot as plt

        from dse.search import breakdown_figure

        for fig, name in (
            (_area_figure(design), "area_split.png"),
            (
                breakdown_figure(breakdown, f"wafer design found by {drivers.DRIVERS[result.driver].title}"),
                "breakdown.png",
            ),
        ):
            run_.log_figure(fig, name)
            plt.close(fig)


def _area_figure(design: dict[str, float]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {k: design[k] for k in ("compute_frac", "sram_frac", "io_frac") if k in design}
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.pie(list(parts.values()), labels=[k.removesuffix("_frac") for k in parts], autopct="%1.0f%%")
    ax.set_title("die area split")
    return fig


_AREA = {"compute_frac": "compute", "sram_frac": "SRAM", "io_frac": "I/O"}


def _design_text(design: dict[str, float]) -> str:
    """'die area: compute 80%, SRAM 17%, I/O 3%; clock 1.60 GHz, 4 HBM stacks per die, 6 x 6 dies per
    wafer'; a field without a reading of its own as name=value."""
    area = ", ".join(f"{label} {design[k]:.0%}" for k, label in _AREA.items() if k in design)
    rest = []
    if "clock_hz" in design:
        rest.append(f"clock {fmt_count(design['clock_hz'], 'Hz')}")
    if "hbm_stacks" in design:
        rest.append(f"{design['hbm_stacks']:.3g} HBM stacks per die")
    if "dies_x" in design and "dies_y" in design:
        rest.append(f"{design['dies_x']:.3g} x {design['dies_y']:.3g} dies per wafer")
    known = {*_AREA, "clock_hz", "hbm_stacks", "dies_x", "dies_y"}
    rest += [f"{k}={v:.4g}" for k, v in design.items() if k not in known]
    return "; ".join(x for x in (f"die area: {area}" if area else "", ", ".join(rest)) if x)


def _hardware_text(hw: dict[str, float]) -> str:
    """One die at its power-capped clock in human units."""
    rate = {k: fmt_count(v, "B/s") for k, v in hw.items() if k.endswith("_Bps")}
    return ", ".join(
        [
            f"clock {fmt_count(hw['clock_hz'], 'Hz')}",
            f"{fmt_count(hw['peak_flops_bf16'], 'FLOP/s')} bf16",
            f"HBM {fmt_bytes(hw['hbm_capacity_bytes'])} at {rate['hbm_bandwidth_Bps']}",
            f"SRAM {fmt_bytes(hw['sram_capacity_bytes'])} at {rate['sram_bandwidth_Bps']}",
            f"scale-up {hw['scale_up_domain_size']:.0f} dies at {rate['scale_up_bandwidth_Bps']}",
            f"scale-out {rate['scale_out_bandwidth_Bps']}",
            fmt_power(hw["power_w"]),
        ]
    )


_COLUMNS = ("step_time_s", "tokens_per_s", "power_w", "tokens_per_joule", "mfu", "memory_gib", "global_batch")


def render(rep: dict[str, Any]) -> str:
    """The design, the die it makes, the mapping, the step, why it wins, the warnings, and the
    comparison with the reference designs (each row's mapping under the table)."""
    rows = [
        [name, *(fmt_metric_cell(c, r[c]) for c in _COLUMNS)]
        if r.get("feasible")
        else [name, "infeasible", *[""] * (len(_COLUMNS) - 1)]
        for name, r in rep["comparison"].items()
    ]
    parts = {k: v for k, v in rep["breakdown"].items() if k != "step_time_s"}
    return "\n".join(
        [
            f"{rep['found_by']} over the wafer design ({rep['evaluations']} evaluations)",
            f"design: {_design_text(rep['design'])}",
            f"per die, at the power-capped clock: {_hardware_text(rep['hardware'])}",
            f"mapping: {_mapping_text(rep['best']['mapping'])}",
            f"step breakdown: {fmt_breakdown(rep['breakdown']['step_time_s'], parts)}",
            f"why: {rep['why']}",
            "",
            *(f"warning: {w}" for w in rep["warnings"]),
            "",
            format_table(["design", *map(metric_header, _COLUMNS)], rows, align="lrrrrrrr"),
            *(
                f"{name}: {_mapping_text(r['mapping'])}"
                if r.get("feasible")
                else f"{name}: infeasible, {_why_infeasible(r)}"
                for name, r in rep["comparison"].items()
            ),
        ]
    )


def _mapping_text(mapping: dict[str, Any]) -> str:
    """A row's mapping on one line: degrees, micro-batch, recompute, weight streaming when on."""
    m = dict(mapping)
    recompute = m.get("recompute", 0)
    parts = [f"{k}={m[k]}" for k in ("tp", "pp", "cp", "dp", "vpp") if k in m]
    parts.append(f"micro-batch {m.get('microbatch', 1)}")
    parts.append(f"recompute {recompute_name(recompute)}")
    if m.get("zero_stage"):
        parts.append(f"ZeRO-{m['zero_stage']}")
    if m.get("sequence_parallel"):
        parts.append("sequence parallel")
    if m.get("weight_streaming"):
        parts.append("weight streaming")
    return ", ".join(parts)


def _why_infeasible(row: dict[str, Any]) -> str:
    """One line: the violated constraints, the memory shortfall, or the stated reason."""
    if row.get("violations"):
        return ", ".join(f"{k} over by {v:.3g}" for k, v in row["violations"].items())
    if "min_memory_gib" in row:
        return (
            f"no mapping fits memory (the smallest needs {row['min_memory_gib']:.4g} GiB per die, "
            f"a die has {row['capacity_gib']:.4g} GiB)"
        )
    return str(row.get("reason", "no feasible mapping"))
