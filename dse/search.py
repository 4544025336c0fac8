"""``python -m dse.search``: run a search driver over a cost model, print the best design, log to MLflow.

    python -m dse.search +experiment=gpu_cluster
    python -m dse.search +experiment=inference_slo search=optuna search.n_trials=200
    python -m dse.search -m +experiment=gpu_cluster hardware=a100_80gb,h100_sxm model=llama3_8b,llama3_70b

Wiring only: config → model, hardware and problem (``search/problems.py``) → driver (``search/``) →
summary on stdout and an MLflow run (``dse/tracking.py``) with the best design's metrics, one child run
per grid top-k design / Optuna trial, the results table (CSV), the Pareto and breakdown plots (PNG),
and the best design (YAML).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from costmodels.deployment import ServingPlan
from costmodels.errors import ConfigError
from costmodels.hardware import Hardware
from costmodels.inference import engine_preset
from costmodels.parallel import CHOICE, FLAG, RECOMPUTE, knobs
from costmodels.training import TIME_FIELDS, TrainingJob
from dse import schema
from dse._app import format_table, json_text, print_json, progress_callback, run_app
from dse.calc import command_line
from dse.checks import check_results
from dse.hardware import hardware_from_config, hbm_gib
from dse.models import load_model, model_assumptions
from dse.tracking import JobRun, location_lines, run_location, sweep_dir, sweep_label, swept_keys, write_csv
from dse.units import (
    binds,
    fmt_breakdown,
    fmt_cell,
    fmt_metric,
    fmt_metric_cell,
    memory_phrase,
    metric_header,
    metric_label,
    step_shares,
)
from search import drivers
from search.base import METRICS, Problem, Result
from search.problems import (
    OBJECTIVES,
    SERVING_METRICS,
    SERVING_OBJECTIVES,
    inference_slo_problem,
    training_mapping_problem,
)

schema.register()
TRAINING_KNOBS = tuple(name for name, m in knobs().items() if m["searched"])  # the Plan fields marked so
INFERENCE_KNOBS = ("tp", "pp", "batch_size")
# the metrics a search reports, per workload kind (training: search.base.METRICS less the objective)
SUMMARY = {"training": tuple(m for m in METRICS if m != "objective"), "inference": SERVING_METRICS}


# the values a knob takes, from the plan field's kind (None: a degree, any positive integer)
KNOB_VALUES: dict[str, tuple[Any, ...] | None] = {
    name: (0, 1) if m["kind"] == FLAG else tuple(range(len(m["names"]))) if m["kind"] == CHOICE else None
    for name, m in knobs().items()
}


def _knob_value(knob: str, value: Any) -> float:
    """One candidate value of ``parallelism.<knob>`` as a float, or a ConfigError naming the knob."""
    if knob == "recompute" and isinstance(value, str):
        if value not in RECOMPUTE:
            valid = ", ".join(RECOMPUTE)
            raise ConfigError(f"parallelism.recompute: unknown value {value!r}; valid: {valid}")
        return float(RECOMPUTE[value])
    if isinstance(value, bool) and KNOB_VALUES.get(knob) == (0, 1):  # a flag: true / false
        return float(value)
    allowed = KNOB_VALUES.get(knob)
    integral = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    if allowed is not None and not (integral and value in allowed):
        names = ", ".join(str(v) for v in allowed)
        raise ConfigError(f"parallelism.{knob}: {value!r} is not one of {names}")
    if allowed is None and not (integral and value >= 1):
        raise ConfigError(f"parallelism.{knob}: {value!r} is not a positive integer")
    return float(value)


def _space(cfg: DictConfig, knobs: tuple[str, ...]) -> dict[str, list[float]]:
    """Candidate values per knob from ``cfg.parallelism``; unknown knobs and values out of a knob's
    domain are an error naming them."""
    values = OmegaConf.to_container(cfg.parallelism, resolve=True)
    if not isinstance(values, dict):
        raise ConfigError("parallelism must map knob names to lists of candidate values")
    unknown = sorted(set(values) - set(knobs))
    if unknown:
        raise ConfigError(
            f"unknown parallelism knob(s) {', '.join(unknown)} for a {cfg.workload.kind} "
            f"search; valid: {', '.join(knobs)}"
        )
    space = {}
    for knob, vals in values.items():
        vals = vals if isinstance(vals, list) else [vals]
        if not vals:
            raise ConfigError(f"parallelism.{knob} is an empty list: give at least one candidate value")
        space[knob] = sorted({_knob_value(knob, v) for v in vals})
    return space


def _check_objectives(cfg: DictConfig, hw: Hardware) -> None:
    """The objective(s) and Pareto axes exist for this workload kind, and a cost objective has a price."""
    s, kind = cfg.search, cfg.workload.kind
    valid = OBJECTIVES if kind == "training" else SERVING_OBJECTIVES
    for key, names in (
        ("search.objective", [s.objective]),
        ("search.objectives", list(s.get("objectives") or [])),
    ):
        for name in names:
            if name not in valid:
                raise ConfigError(
                    f"{key}: '{name}' is not an objective for {kind}; valid: {', '.join(valid)}"
                )
            _check_price(key, name, hw)
    metrics = SUMMARY[kind] + (TIME_FIELDS if kind == "training" else ())
    for axis in s.pareto:
        if axis not in metrics:
            raise ConfigError(
                f"search.pareto: '{axis}' is not a metric of {kind}; valid: {', '.join(metrics)}"
            )
        _check_price("search.pareto", axis, hw)


def _check_price(key: str, metric: str, hw: Hardware) -> None:
    """A cost metric needs the hardware's price (a preset without one reports cost as unknown)."""
    if metric == "cost_usd_per_mtoken" and not float(hw.price_usd_per_hour) > 0:
        preset = HydraConfig.get().runtime.choices.get("hardware") if HydraConfig.initialized() else hw.name
        raise ConfigError(
            f"{key} uses cost_usd_per_mtoken, and hardware '{preset}' has no price: set "
            "hardware.price_usd_per_hour=<USD per device-hour> or choose another metric"
        )


def build_problem(cfg: DictConfig) -> tuple[Problem, Hardware]:
    """The search problem the config describes."""
    spec, hw = load_model(cfg.model), hardware_from_config(cfg.hardware)
    w, objective = cfg.workload, cfg.search.objective
    if w.kind not in SUMMARY:
        raise ConfigError(f"workload.kind must be training or inference, got '{w.kind}'")
    _check_objectives(cfg, hw)
    if w.kind == "training":
        if cfg.num_devices < 1:
            raise ConfigError(f"num_devices must be >= 1, got {cfg.num_devices}")
        space = {"ep": [1.0], "cp": [1.0], "vpp": [1.0]} | _space(cfg, TRAINING_KNOBS)
        job = TrainingJob(spec, w.seq_len, w.precision, w.fused_attention, w.optimizer)
        return training_mapping_problem(hw, job, cfg.num_devices, w.global_batch, space, objective), hw
    space = {"pp": [1.0]} | _space(cfg, INFERENCE_KNOBS)
    engine_preset(w.engine, "workload.engine")  # the preset's name, checked under its key
    plan = ServingPlan(
        launch=w.engine,
        kv_precision=w.kv_precision,
        attention_precision=w.attention_precision,
    )
    job = plan.job(spec, w.precision, w.input_len, w.output_len)
    ttft = None if w.ttft_limit_ms is None else w.ttft_limit_ms / 1e3
    return inference_slo_problem(hw, job, space, w.tpot_limit_ms / 1e3, objective, ttft), hw


def _memory_reason(metrics: dict[str, np.ndarray]) -> str:
    return f"none fits in memory; the smallest footprint is {float(np.min(metrics['memory_gib'])):.1f} GiB"


def driver_options(
    cfg: DictConfig, run: JobRun, problem: Problem, reported: tuple[str, ...]
) -> dict[str, Any]:
    """The ``search`` group's options for ``search.drivers``; Optuna also gets its study (named and
    stored so the same command resumes it) and a child run per trial (its point and ``reported``)."""
    options: dict[str, Any] = OmegaConf.to_container(cfg.search, resolve=True)  # type: ignore[assignment]
    if cfg.search.driver == "optuna":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study_name, storage = study_location(cfg)
        print(
            f"optuna: study {study_name} in {storage}; the same command resumes it, "
            "search.study_name=<new name> starts afresh",
            file=sys.stderr,
        )

        def on_trial(number: int, values: dict) -> None:
            run.child(
                f"trial-{number}",
                params={k: v for k, v in values.items() if k in problem.space},
                metrics={k: v for k, v in values.items() if k in reported and np.isfinite(v)},
            )

        options |= {"study_name": study_name, "storage": storage, "on_trial": on_trial}
    return options


def run_driver(cfg: DictConfig, problem: Problem, run: JobRun) -> Result:
    """Run the configured driver (``search.drivers``) on the mapping problem."""
    name = cfg.search.driver
    options = driver_options(cfg, run, problem, SUMMARY[cfg.workload.kind])
    options["infeasible_reason"] = _memory_reason
    progress = progress_callback(cfg.progress, name, drivers.DRIVERS[name].unit)  # checked in task
    return drivers.run(name, problem, options, seed=cfg.seed, progress=progress)


# the options that define a study's question; the others (trials, time, output) may change on resume
_STUDY_KEYS = ("model", "hardware", "workload", "parallelism", "num_devices")
_STUDY_OPTIONAL_KEYS = ("wafer",)  # part of the question where the config has it (problem=wafer)
_STUDY_SEARCH_KEYS = ("objective", "objectives", "sampler")


def study_location(cfg: DictConfig) -> tuple[str, str]:
    """(study name, storage) of an Optuna search. Defaults are stable, so running the same command
    again resumes the study: the name is ``<experiment>-<model>-<hardware>-<digest of the question>``
    and the storage ``<launch dir>/optuna/<name>.journal``."""
    s = cfg.search
    name = s.study_name
    if name is None:
        choices = HydraConfig.get().runtime.choices
        plain = OmegaConf.to_container(cfg, resolve=True)
        question = {k: plain.get(k) for k in _STUDY_KEYS}
        question |= {k: plain[k] for k in _STUDY_OPTIONAL_KEYS if plain.get(k) is not None}
        question["search"] = {k: plain["search"].get(k) for k in _STUDY_SEARCH_KEYS}
        digest = hashlib.sha256(json.dumps(question, sort_keys=True, default=str).encode()).hexdigest()[:8]
        parts = [choices.get("experiment") or "search", choices.get("model"), choices.get("hardware"), digest]
        name = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(p)) for p in parts if p)
    if s.storage is not None:
        return name, s.storage
    folder = Path(HydraConfig.get().runtime.cwd) / "optuna"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the Optuna study folder {folder}: {exc.strerror}; set search.storage=<path>"
        ) from None
    return name, str(folder / f"{name}.journal")


# --------------------------------------------------------------------------------------------
# Reporting


def calc_command(cfg: DictConfig, design: dict[str, Any]) -> str:
    """The ``dse.calc`` override line that evaluates the best design on its own."""
    choices = HydraConfig.get().runtime.choices
    model = cfg.model.source if choices.get("model") == "path" else choices.get("model")
    w = cfg.workload
    settings: dict[str, Any] = {"model": model, "hardware": choices.get("hardware")}
    if w.kind == "training":
        settings |= {
            "num_devices": cfg.num_devices,
            "seq_len": w.seq_len,
            "global_batch": w.global_batch,
            "precision": w.precision,
            "fused_attention": w.fused_attention,
            "optimizer": w.optimizer,
        }
        settings |= {f"parallelism.{k}": v for k, v in design.items()}
    else:
        settings |= {
            "mode": "inference",
            "num_devices": design["tp"] * design.get("pp", 1),
            "precision": w.precision,
            "parallelism.tp": design["tp"],
            "parallelism.pp": design.get("pp", 1),
            "inference.batch_size": design["batch_size"],
            "inference.input_len": w.input_len,
            "inference.output_len": w.output_len,
        }
        settings |= {f"inference.{k}": w[k] for k in ("kv_precision", "attention_precision") if w[k]}
        if w.engine != "static":
            settings["inference.engine"] = w.engine
    return command_line(settings)


def _fixed(problem: Problem) -> dict[str, Any]:
    """Knobs with one candidate value (not chosen by the search), in the user's words."""
    one = {k: v[0] for k, v in problem.space.items() if len(v) == 1}
    full = problem.describe({k: v[0] for k, v in problem.space.items()})
    return {k: full[k] for k in one if k in full}


def question(cfg: DictConfig, problem: Problem, hw: Hardware) -> dict[str, Any]:
    """What is searched: model, hardware, devices, workload, space, driver, objective, constraints."""
    choices = HydraConfig.get().runtime.choices
    w, s = cfg.workload, cfg.search
    capacity_gib = hbm_gib(hw)
    if w.kind == "training":
        workload = {"seq_len": w.seq_len, "global_batch": w.global_batch, "precision": w.precision}
        constraints = [f"fits in {capacity_gib:.0f} GiB per device", "Megatron mapping rules"]
        limits = {}
    else:
        workload = {"input_len": w.input_len, "output_len": w.output_len, "precision": w.precision,
                    "engine": w.engine}  # fmt: skip
        constraints = [f"fits in {capacity_gib:.0f} GiB per device", f"TPOT <= {w.tpot_limit_ms:g} ms"]
        limits = {"tpot_s": w.tpot_limit_ms / 1e3}
        if w.ttft_limit_ms is not None:
            constraints.append(f"TTFT <= {w.ttft_limit_ms:g} ms")
            limits["ttft_s"] = w.ttft_limit_ms / 1e3
    objective = str(s.objective)
    metric = objective.removeprefix("neg_")
    return {
        "experiment": _experiment_name(),
        "kind": w.kind,
        "model": cfg.model.source if choices.get("model") == "path" else choices.get("model"),
        "hardware": choices.get("hardware"),
        "devices": int(cfg.num_devices) if w.kind == "training" else None,
        "workload": workload,
        "space_size": int(np.prod([len(v) for v in problem.space.values()])),
        "knobs": [k for k, v in problem.space.items() if len(v) > 1],
        "fixed": _fixed(problem),
        "driver": str(s.driver),
        "budget": s.get("n_samples") or s.get("n_trials"),  # random and Optuna: points it will score
        "objective": {"metric": metric, "goal": "maximize" if objective.startswith("neg_") else "minimize"},
        "constraints": constraints,
        "limits": limits,  # metric → the largest value a feasible design may have
    }


def question_line(q: dict[str, Any]) -> str:
    """'gpu_cluster: train llama3_70b on 1024 × h100_sxm (seq_len 8192, ...)'."""
    verb = "train" if q["kind"] == "training" else "serve"
    where = f"{q['devices']:,} × {q['hardware']}" if q["devices"] else f"tp·pp × {q['hardware']}"
    workload = ", ".join(f"{k} {fmt_cell(v)}" for k, v in q["workload"].items())
    return f"{q['experiment']}: {verb} {q['model']} on {where} ({workload})"


def search_line(q: dict[str, Any]) -> str:
    """'grid over 5,598 designs of tp, pp, ...; objective: minimize step time; subject to ...'."""
    fixed = ", ".join(f"{k}={fmt_cell(v)}" for k, v in q["fixed"].items())
    goal = f"{q['objective']['goal']} {metric_label(q['objective']['metric'])}"
    budget = f" ({q['budget']:,} of them)" if q.get("budget") else ""
    knobs = ", ".join(q["knobs"]) or "nothing"
    return (
        f"{q['driver']} over {q['space_size']:,} candidate designs{budget} of {knobs}"
        + (f" (fixed: {fixed})" if fixed else "")
        + f"; objective: {goal}; subject to: {', '.join(q['constraints'])}"
    )


def _why(cfg: DictConfig, hw: Hardware, metrics: dict[str, float], top: list[dict[str, Any]],
         best: dict[str, Any], objective: dict[str, str]) -> str:  # fmt: skip
    """What binds the winner: where its time goes, its memory headroom or latency limit, and how
    much the runner-up loses (the knobs it changes)."""
    if cfg.workload.kind == "training":
        parts = step_shares(metrics["step_time_s"], metrics)
    else:
        limit_s = cfg.workload.tpot_limit_ms / 1e3
        tpot = metrics["tpot_s"]
        parts = [
            f"TPOT {fmt_metric('tpot_s', tpot)} of the {cfg.workload.tpot_limit_ms:g} ms limit"
            + binds(tpot, limit_s)
        ]
        if cfg.workload.ttft_limit_ms is not None:
            parts.append(
                f"TTFT {fmt_metric('ttft_s', metrics['ttft_s'])} of {cfg.workload.ttft_limit_ms:g} ms"
                + binds(metrics["ttft_s"], cfg.workload.ttft_limit_ms / 1e3)
            )
    parts.append(memory_phrase(metrics["memory_gib"], hbm_gib(hw)))
    if len(top) > 1:
        metric, runner = objective["metric"], top[1]
        change = ", ".join(f"{k}={fmt_cell(runner[k])}" for k in best if k in runner and runner[k] != best[k])
        a, b = metrics[metric], runner[metric]
        worse = (a - b) / a if objective["goal"] == "maximize" else (b - a) / a
        gap = (
            f"is {worse:.1%} worse in {metric_label(metric)}"
            if worse > 0
            else f"ties on {metric_label(metric)}"
        )
        parts.append(f"the runner-up ({change}) {gap}")
    return "; ".join(parts)


def _warnings(
    cfg: DictConfig, problem: Problem, hw: Hardware, best: dict[str, Any], q: dict[str, Any]
) -> list[str]:
    """What a user would want to know: an unknown price, a winner on the edge of its candidates."""
    out = []
    if not float(hw.price_usd_per_hour) > 0:
        out.append(f"cost unknown: hardware '{q['hardware']}' has no price; set hardware.price_usd_per_hour")
    for knob in ("batch_size", "microbatch"):
        values = problem.space.get(knob, ())
        if len(values) > 1 and best.get(knob) == int(max(values)):
            out.append(
                f"the best {knob}={best[knob]} is the largest candidate: a larger one may do better; "
                f"add larger values to parallelism.{knob}"
            )
    return out


def summary(
    cfg: DictConfig, problem: Problem, result: Result, hw: Hardware, q: dict[str, Any]
) -> dict[str, Any]:
    """The JSON-ready summary of a search: the question, the best design (in the user's words) and
    its metrics, why it wins, the distinct top-k designs and the Pareto front; ``q`` is
    :func:`question`."""
    reported = SUMMARY[cfg.workload.kind]
    design = problem.describe(result.best)
    knobs = tuple(problem.space)

    def metrics_of(row: dict[str, Any]) -> dict[str, float]:
        return {m: float(row[m]) for m in reported if m in row and np.isfinite(row[m])}

    top = [
        problem.describe({k: r[k] for k in knobs}) | metrics_of(r)
        for r in result.top(cfg.search.top_k, distinct=knobs)
    ]
    front = [
        {k: float(np.asarray(result.table[k])[i]) for k in (*knobs, *result.pareto_axes)}
        for i in result.pareto
    ]
    metrics = metrics_of(result.metrics)
    if cfg.workload.kind == "training":
        metrics |= {k: float(result.metrics[k]) for k in TIME_FIELDS if k in result.metrics}
    feasible = np.asarray(result.table.get("feasible", np.ones(result.rows, bool)), bool)
    rep = {
        "question": q,
        "driver": result.driver,
        "evaluations": result.evaluations,
        "distinct_designs": result.distinct_designs(knobs),
        "infeasible": int(np.sum(~feasible)),
        "objective": q["objective"],
        "best": design,
        "chosen": [k for k in design if k not in q["fixed"]],
        "metrics": metrics,
        "why": _why(cfg, hw, metrics, top, design, q["objective"]),
        "assumptions": list(model_assumptions(load_model(cfg.model), cfg.workload.kind)),
        "top": top,
        "pareto_axes": list(result.pareto_axes),
        "pareto": front,
        "warnings": _warnings(cfg, problem, hw, design, q),
        "reproduce": calc_command(cfg, design),
    }
    check_results({"metrics": rep["metrics"], "top": top}, f"the design {rep['reproduce']}")
    return rep


KNOB_HEADERS = {"sequence_parallel": "seq_par"}  # column headers of knobs whose names are long


def render(rep: dict[str, Any]) -> str:
    """The report a person reads: what was searched, the winner in human units and why, the
    distinct top-k, warnings, the reproduce line and where the results are."""
    q, m = rep["question"], rep["metrics"]
    chosen = ", ".join(f"{k}={fmt_cell(rep['best'][k])}" for k in rep["chosen"])
    rows = [[metric_label(k), fmt_metric(k, v)] for k, v in m.items() if k not in TIME_FIELDS]
    parts = {k: m[k] for k in TIME_FIELDS if k in m}
    breakdown = [f"step breakdown: {fmt_breakdown(m['step_time_s'], parts)}"] if parts else []
    keys = [k for k in rep["top"][0] if k not in q["fixed"]] if rep["top"] else []
    top = format_table(
        [KNOB_HEADERS.get(k, metric_header(k)) for k in keys],
        [[fmt_metric_cell(k, r[k]) if k in r else "" for k in keys] for r in rep["top"]],
    )
    counted = (
        f"{rep['evaluations']:,} evaluations, {rep['distinct_designs']:,} distinct designs, "
        f"{rep['infeasible']:,} infeasible"
    )
    axes = " vs ".join(metric_label(a) for a in rep["pareto_axes"])
    lines = [
        question_line(q),
        search_line(q),
        counted,
        "",
        f"best: {chosen}",
        format_table(["metric", "value"], rows, align="lr"),
        *breakdown,
        f"why: {rep['why']}",
        *(f"assumes: {line}" for line in rep.get("assumptions", ())),
        "",
        f"top {len(rep['top'])} distinct designs:",
        top,
        "",
        f"Pareto front ({axes}): {len(rep['pareto'])} designs",
        *(f"warning: {w}" for w in rep["warnings"]),
        f"reproduce: {rep['reproduce']}",
    ]
    return "\n".join(lines + location_lines(rep.get("results", {})))


def _figure_title(rep: dict[str, Any]) -> str:
    q = rep["question"]
    where = f"{q['devices']:,} × {q['hardware']}" if q["devices"] else q["hardware"]
    return f"{q['experiment']}: {q['model']} on {where}"


def _pareto_figure(result: Result, rep: dict[str, Any], hw: Hardware) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = result.pareto_axes
    t = result.table
    ok = np.asarray(t["feasible"], bool) & np.isfinite(t[x]) & np.isfinite(t[y])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(np.asarray(t[x])[ok], np.asarray(t[y])[ok], s=6, alpha=0.3, label="feasible designs")
    front = np.array(result.pareto, dtype=int)
    if front.size:
        fx, fy = np.asarray(t[x])[front], np.asarray(t[y])[front]
        ax.plot(fx, fy, "r.-", label="Pareto front")
        designs = {k: np.asarray(t[k])[front] for k in rep["chosen"] if k in t}
        varying = [k for k, v in designs.items() if len(set(v.tolist())) > 1]  # what changes along the front
        span = max(float(np.ptp(fy)), 1e-12)
        last_y = np.inf
        for i, (px, py) in enumerate(zip(fx, fy, strict=True)):
            if abs(py - last_y) < 0.07 * span:  # keep labels apart: skip points close to the last labelled
                continue
            last_y = py
            point = problem_label({k: designs[k][i] for k in varying})
            ax.annotate(point, (px, py), fontsize=6, xytext=(4, 2), textcoords="offset points")
    bx, by = rep["metrics"].get(x), rep["metrics"].get(y)
    if bx is not None and by is not None:
        ax.scatter(
            [bx], [by], marker="*", s=160, color="gold", edgecolor="k", zorder=5, label="chosen design"
        )
    limits = rep["question"]["limits"] | {"memory_gib": hbm_gib(hw)}
    for line, name in ((ax.axvline, x), (ax.axhline, y)):
        if name in limits:
            line(limits[name], color="k", ls="--", lw=1, label=f"limit: {metric_label(name)}")
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    ax.set_title(f"{_figure_title(rep)}: {metric_label(x)} vs {metric_label(y)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


AXIS_UNITS = {
    "memory_gib": "GiB per device",
    "power_w": "W",
    "tokens_per_s": "tokens/s",
    "mfu": "fraction of peak",
    "cost_usd_per_mtoken": "USD per million tokens",
    "energy_j_per_token": "J per token",
}


def _axis_label(name: str) -> str:
    unit = AXIS_UNITS.get(name) or ("s" if name.endswith("_s") else "")
    return f"{metric_label(name)} ({unit})" if unit else metric_label(name)


def problem_label(design: dict[str, Any]) -> str:
    """A short mapping label for a plot point (``tp4 pp4 mb1``)."""
    short = {"microbatch": "mb", "batch_size": "b", "zero_stage": "z", "sequence_parallel": "sp"}
    names = {"recompute": ("no-rc", "sel-rc", "full-rc")}
    return " ".join(
        names[k][int(v)] if k in names else f"{short.get(k, k)}{int(v)}" for k, v in design.items()
    )


def breakdown_figure(metrics: dict[str, float], title: str) -> Any:
    """Bars of the step-time parts (``TIME_FIELDS``) of ``metrics`` with their shares of
    ``step_time_s``; None when there are none (serving)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {k: metrics[k] for k in TIME_FIELDS if metrics.get(k, 0.0) > 0}
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [k.removesuffix("_s").replace("_", " ") for k in parts]
    ax.barh(labels, list(parts.values()), color="tab:blue")
    for i, v in enumerate(parts.values()):
        ax.annotate(f"{v / metrics['step_time_s']:.1%}", (v, i), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)  # fmt: skip
    ax.set_xlabel("seconds per step")
    ax.set_title(f"{title}: where the step time goes", fontsize=9)
    fig.tight_layout()
    return fig


def log_result(run: JobRun, cfg: DictConfig, problem: Problem, result: Result, rep: dict[str, Any],
               hw: Hardware, out_dir: Path) -> list[str]:  # fmt: skip
    """The best design as ``best.*`` params and its metrics, top-k child runs (grid), the table and
    plots; each file is written to ``out_dir`` (the Hydra output directory) and logged to MLflow.
    Returns the file names."""
    import matplotlib.pyplot as plt

    run.log_params({f"best.{k}": v for k, v in rep["best"].items()})
    run.log_metrics(rep["metrics"])
    run.log_metrics({"evaluations": float(result.evaluations)})
    if result.driver == "grid":
        for rank, r in enumerate(rep["top"], start=1):
            run.child(
                f"top-{rank}",
                params={k: r[k] for k in rep["best"] if k in r},
                metrics={k: r[k] for k in SUMMARY[cfg.workload.kind] if k in r},
            )
    if result.trajectory:
        run.log_trajectory(result.trajectory)
    files = {"results.csv": lambda p: write_csv(result.table, p)}
    files["best.yaml"] = lambda p: p.write_text(
        OmegaConf.to_yaml({"best": rep["best"], "metrics": rep["metrics"], "reproduce": rep["reproduce"]})
    )
    for fig, name in (
        (_pareto_figure(result, rep, hw), "pareto.png"),
        (breakdown_figure(rep["metrics"], f"{_figure_title(rep)}, best design"), "breakdown.png"),
    ):
        if fig is not None:
            files[name] = lambda p, fig=fig: (fig.savefig(p, dpi=120), plt.close(fig))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, write in files.items():
        write(out_dir / name)
        run.log_file(out_dir / name)
    return ["result.json", *files]


def _experiment_name() -> str:
    choices = HydraConfig.get().runtime.choices
    return str(choices.get("experiment") or "search")


def run_name(q: dict[str, Any], label: str | None) -> str:
    """'gpu_cluster · llama3_70b · h100_sxm × 1024'; a sweep job adds its swept values other than the
    model and hardware ('... · 8192' for a sweep over workload.seq_len)."""
    devices = f" × {q['devices']}" if q["devices"] else ""
    name = f"{q['experiment']} · {q['model']} · {q['hardware']}{devices}"
    rest = [v for v in (label or "").split(" / ") if v and v not in (q["model"], q["hardware"])]
    return " · ".join([name, *rest])


def _emit(cfg: DictConfig, rep: dict[str, Any]) -> None:
    """The report on stdout: text, one JSON document, or in a multirun one JSON line per job (JSON
    Lines), written under a lock so that parallel jobs do not interleave."""
    hc = HydraConfig.get()
    if cfg.format != "json" and hc.mode == RunMode.MULTIRUN and not cfg.job_report:
        metric = rep["objective"]["metric"]
        chosen = " ".join(f"{k}={fmt_cell(rep['best'][k])}" for k in rep["chosen"])
        value = fmt_metric(metric, rep["metrics"][metric])
        print(f"{rep['job']['label']}: {chosen}, {metric_label(metric)} {value}", file=sys.stderr, flush=True)
        return
    if cfg.format != "json":
        print(render(rep), flush=True)
        return
    if hc.mode != RunMode.MULTIRUN:
        print_json(rep)
        return
    line = json_text(rep, indent=None) + "\n"
    with open(sweep_dir(hc) / ".stdout.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sys.stdout.write(line)
        sys.stdout.flush()


# What is explored (``problem=``, conf/problem/): the parallel mapping of a training or serving job
# (workload.kind) is run here; the others by their module (its ``run`` and its reporter ``render``):
# a serving deployment under request-level simulation is ``serving``.
PROBLEMS: dict[str, str | None] = {
    "mapping": None,
    "wafer": "wafer_search",
    "auto_shard": "shard_search",
    "placement": "placement_search",
    "serving": "serving_search",
}
# problems solved by the solver of the model they build (an ILP over an FX graph, a CP-SAT placement)
SOLVERS = {"auto_shard": "ilp", "placement": "cpsat"}


def problem_of(cfg: DictConfig) -> str:
    """The configured problem, checked against the driver: one line naming the fix when they do not
    go together (a generic driver the problem cannot feed is caught by ``search.drivers.run``)."""
    name, driver = str(cfg.problem.name), str(cfg.search.driver)
    if name not in PROBLEMS:
        raise ConfigError(f"problem={name} is not a problem: use one of {', '.join(PROBLEMS)}")
    if name in SOLVERS and driver != SOLVERS[name]:
        raise ConfigError(f"problem={name} is solved by its own model's solver: use search={SOLVERS[name]}")
    return name  # the other problems take the drivers of search.drivers that they can feed


def task(cfg: DictConfig) -> None:
    schema.check_config(cfg)
    module_name = PROBLEMS[problem_of(cfg)]
    if module_name is not None:  # hardware co-design, automatic sharding, topology-aware placement
        import importlib

        module = importlib.import_module(f"dse.{module_name}")
        choices = HydraConfig.get().runtime.choices
        what = f"{_experiment_name()}: {choices.get('model')}, driver {cfg.search.driver}"
        print(f"dse.search: {what}", file=sys.stderr, flush=True)
        tags = {"dse.model": str(choices.get("model")), "dse.experiment": _experiment_name()}
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        name = f"{_experiment_name()} · {choices.get('model')}"
        with JobRun(cfg, name=name, tags=tags, mirror_dir=out_dir) as run:  # artifacts also in out_dir
            rep = module.run(cfg, run)
            files = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.endswith(".log"))
            rep["results"] = run_location(run, out_dir, ["result.json", *files])
            (out_dir / "result.json").write_text(json_text(rep) + "\n")
        print_json(rep) if cfg.format == "json" else print(
            "\n".join([module.render(rep), *location_lines(rep["results"])])
        )
        return
    problem, hw = build_problem(cfg)  # bad input stops here, before a run is opened
    drivers.check(cfg.search.driver, problem, "problem=mapping")
    q = question(cfg, problem, hw)
    label = sweep_label()
    if cfg.job_report or label is None:
        print(f"dse.search: {question_line(q)}\n  {search_line(q)}", file=sys.stderr, flush=True)
    tags = {
        "dse.model": str(q["model"]),
        "dse.hardware": str(q["hardware"]),
        "dse.experiment": q["experiment"],
    }
    if q["devices"]:
        tags["dse.devices"] = str(q["devices"])
    if label:
        tags["dse.label"] = label
    slurm_job = os.environ.get("SLURM_JOB_ID")  # a sweep job that SLURM runs (hydra/launcher=submitit_slurm)
    if slurm_job:
        tags["dse.slurm_job_id"] = slurm_job
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with JobRun(cfg, name=run_name(q, label), tags=tags) as run:
        result = run_driver(cfg, problem, run)
        rep = summary(cfg, problem, result, hw, q)
        if label:
            rep["job"] = {"num": HydraConfig.get().job.num, "label": label,
                          "overrides": list(HydraConfig.get().overrides.task)}  # fmt: skip
        files = log_result(run, cfg, problem, result, rep, hw, out_dir)
        rep["results"] = run_location(run, out_dir, files)
        if slurm_job:
            rep["results"]["slurm_job_id"] = slurm_job
        (out_dir / "result.json").write_text(json_text(rep) + "\n")
        run.log_file(out_dir / "result.json")
    _emit(cfg, rep)


# --------------------------------------------------------------------------------------------
# The combined table of a multirun


def sweep_rows(directory: Path) -> list[dict[str, Any]]:
    """One row per finished job of a multirun (its ``result.json``), in job order: the job's label
    and overrides, its winning design and its metrics."""
    rows = []
    for path in directory.glob("*/result.json"):
        rep = json.loads(path.read_text())
        if "question" not in rep:  # a gd/ilp/cpsat job: its own report, no winning mapping to line up
            continue
        job = rep.get("job") or {"num": path.parent.name, "label": path.parent.name, "overrides": []}
        design = " ".join(f"{k}={fmt_cell(rep['best'][k])}" for k in rep["chosen"])
        rows.append({"job": job["num"], "label": job["label"], "overrides": " ".join(job["overrides"]),
                     "design": design, "kind": rep["question"]["kind"], **rep["metrics"]})  # fmt: skip
    return sorted(rows, key=lambda r: int(r["job"]) if str(r["job"]).isdigit() else 0)


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side text table of a multirun's jobs (human units)."""
    kinds = {r["kind"] for r in rows}
    metrics = [m for k in SUMMARY if k in kinds for m in SUMMARY[k]]
    metrics = [m for m in dict.fromkeys(metrics) if any(m in r for r in rows)]
    body = [
        [r["label"], r["design"], *(fmt_metric_cell(m, r[m]) if m in r else "" for m in metrics)]
        for r in rows
    ]
    return format_table(["job", "best design", *(metric_header(m) for m in metrics)], body)


def sweep_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Throughput against cost per million tokens (power where a job has no price), one labelled
    point per job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_name = "cost_usd_per_mtoken" if all("cost_usd_per_mtoken" in r for r in rows) else "power_w"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        ax.scatter(r["tokens_per_s"], r[y_name], s=40, label=r["label"])
        ax.annotate(
            r["label"], (r["tokens_per_s"], r[y_name]), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
    rates = [r["tokens_per_s"] for r in rows]
    if max(rates) > 20 * min(rates):
        ax.set_xscale("log")
    ax.set_xlabel(_axis_label("tokens_per_s"))
    ax.set_ylabel(_axis_label(y_name))
    ax.set_title(title, fontsize=10)
    if len(rows) <= 12:
        ax.legend(fontsize=7, title="job (swept values)")
    fig.tight_layout()
    return fig


class SweepTable(Callback):
    """Hydra callback: at the end of a multirun, the jobs' winning designs side by side, printed
    (stdout; stderr under ``format=json``, whose stdout is JSON Lines) and written to the sweep
    directory as ``sweep.csv`` and ``sweep.png``, both also logged to the sweep's MLflow run.
    Registered after the MLflow callback, so it runs before that one closes the sweep run."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dse.tracking import SWEEP_RUN_ID_FILE, resolve_uri

        directory = sweep_dir(config.hydra)
        rows = sweep_rows(directory)
        if not rows:
            return
        swept = sorted(swept_keys(directory))
        title = f"sweep over {', '.join(swept) or 'one job'}: {len(rows)} jobs, best design of each"
        stream = sys.stderr if config.get("format") == "json" else sys.stdout
        print(f"\n{title}\n{sweep_table(rows)}", file=stream, flush=True)
        import matplotlib.pyplot as plt

        columns = dict.fromkeys(k for r in rows for k in r)
        write_csv({k: [r.get(k, float("nan")) for r in rows] for k in columns}, directory / "sweep.csv")
        fig = sweep_figure(rows, title)
        fig.savefig(directory / "sweep.png", dpi=120)
        plt.close(fig)
        print(f"sweep table: {directory / 'sweep.csv'}, {directory / 'sweep.png'}", file=stream, flush=True)
        run_file, uri = (
            directory / SWEEP_RUN_ID_FILE,
            resolve_uri(config.get("tracking"), cwd=config.hydra.runtime.cwd),
        )
        if uri is not None and run_file.is_file():
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
            for name in ("sweep.csv", "sweep.png"):
                client.log_artifact(run_file.read_text().strip(), str(directory / name))


def main() -> None:
    run_app(task, "config", check=schema.check_config)


if __name__ == "__main__":
    main()
