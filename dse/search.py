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

import hashlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from costmodels.errors import ConfigError
from costmodels.hardware import Hardware
from costmodels.inference import InferenceJob, engine_preset
from costmodels.parallel import RECOMPUTE
from costmodels.training import TIME_FIELDS, TrainingJob
from dse import schema
from dse._app import format_table, print_json, run_app
from dse.calc import command_line
from dse.checks import check_results
from dse.hardware import hardware_from_config
from dse.models import load_model
from dse.tracking import JobRun
from dse.units import fmt_breakdown, fmt_cell
from search.base import Result
from search.grid import grid_search
from search.optuna_driver import optuna_search
from search.problems import (
    OBJECTIVES,
    Problem,
    inference_slo_problem,
    signed_objective,
    training_mapping_problem,
)

schema.register()
TRAINING_KNOBS = ("tp", "pp", "cp", "ep", "vpp", "microbatch", "recompute", "zero_stage", "sequence_parallel")
INFERENCE_KNOBS = ("tp", "pp", "batch_size")
SUMMARY = ("objective", "step_time_s", "mfu", "tokens_per_s", "memory_gib", "power_w", "cost_usd_per_mtoken")


KNOB_VALUES: dict[str, tuple[Any, ...] | None] = {  # None: any positive integer
    "zero_stage": (0, 1, 2, 3),
    "sequence_parallel": (0, 1),
    "recompute": tuple(RECOMPUTE.values()),
}


def _knob_value(knob: str, value: Any) -> float:
    """One candidate value of ``parallelism.<knob>`` as a float, or a ConfigError naming the knob."""
    if knob == "recompute" and isinstance(value, str):
        if value not in RECOMPUTE:
            valid = ", ".join(RECOMPUTE)
            raise ConfigError(f"parallelism.recompute: unknown value {value!r}; valid: {valid}")
        return float(RECOMPUTE[value])
    if isinstance(value, bool) and knob == "sequence_parallel":
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


def build_problem(cfg: DictConfig) -> tuple[Problem, Hardware]:
    """The search problem the config describes."""
    spec, hw = load_model(cfg.model), hardware_from_config(cfg.hardware)
    w, objective = cfg.workload, cfg.search.objective
    if objective not in OBJECTIVES:
        raise ConfigError(f"search.objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if w.kind == "training":
        if cfg.num_devices < 1:
            raise ConfigError(f"num_devices must be >= 1, got {cfg.num_devices}")
        space = {"ep": [1.0], "cp": [1.0], "vpp": [1.0]} | _space(cfg, TRAINING_KNOBS)
        job = TrainingJob(spec, w.seq_len, w.precision, w.fused_attention, w.optimizer)
        return training_mapping_problem(hw, job, cfg.num_devices, w.global_batch, space, objective), hw
    if w.kind == "inference":
        space = {"pp": [1.0]} | _space(cfg, INFERENCE_KNOBS)
        job = InferenceJob(
            spec,
            w.input_len,
            w.output_len,
            w.precision,
            w.kv_precision,
            engine=engine_preset(w.engine, "workload.engine"),
            attention_precision=w.attention_precision,
        )
        return inference_slo_problem(hw, job, space, w.tpot_limit_ms / 1e3, objective), hw
    raise ConfigError(f"workload.kind must be training or inference, got '{w.kind}'")


def _progress(enabled: bool, label: str) -> Callable[[int, int], None] | None:
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=label, unit="pt", file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _memory_reason(metrics: dict[str, np.ndarray]) -> str:
    return f"none fits in memory; the smallest footprint is {float(np.min(metrics['memory_gib'])):.1f} GiB"


def run_driver(cfg: DictConfig, problem: Problem, run: JobRun) -> Result:
    """Run the configured driver on ``problem``; Optuna trials become child runs."""
    s = cfg.search
    if s.driver == "grid":
        return grid_search(
            problem.space,
            problem.cost_fn,
            constraint=problem.constraint,
            chunk_size=s.chunk_size,
            top_k=s.top_k,
            pareto_axes=tuple(s.pareto),
            progress=_progress(cfg.progress, "grid"),
            infeasible_reason=_memory_reason,
        )
    if s.driver == "optuna":
        return _optuna(cfg, problem, run)
    raise ConfigError(f"search.driver '{s.driver}' is not one of grid, optuna, gd, ilp, cpsat")


def _optuna(cfg: DictConfig, problem: Problem, run: JobRun) -> Result:
    s = cfg.search
    objectives = list(s.objectives or [s.objective])

    def evaluate(point: dict[str, Any]) -> dict[str, float]:
        cols = {k: np.array([float(v)]) for k, v in point.items()}
        if not bool(problem.constraint(cols)[0]):  # not a valid mapping: nothing to evaluate
            return {m: float("nan") for m in SUMMARY} | {o: 1e30 for o in objectives} | {"feasible": False}
        out = {k: float(np.asarray(v)[0]) for k, v in problem.cost_fn(cols).items()}
        return out | {o: signed_objective(out, o) for o in objectives}

    def on_trial(number: int, values: dict) -> None:
        run.child(
            f"trial-{number}",
            params={k: values[k] for k in problem.space if k in values},
            metrics={k: v for k, v in values.items() if k in SUMMARY and np.isfinite(v)},
        )

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_name, storage = study_location(cfg)
    print(
        f"optuna: study {study_name} in {storage}; the same command resumes it, "
        "search.study_name=<new name> starts afresh",
        file=sys.stderr,
    )
    return optuna_search(
        {k: tuple(v) for k, v in problem.space.items()},
        evaluate,
        objectives=objectives,
        n_trials=s.n_trials,
        timeout=s.timeout_s,
        seed=cfg.seed,
        sampler=s.sampler,
        storage=storage,
        study_name=study_name,
        on_trial=on_trial,
        pareto_axes=tuple(s.pareto),
    )


# the options that define a study's question; the others (trials, time, output) may change on resume
_STUDY_KEYS = ("model", "hardware", "workload", "parallelism", "num_devices")
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


def summary(cfg: DictConfig, problem: Problem, result: Result) -> dict[str, Any]:
    """The JSON-ready summary of a search: best design (in the user's words), metrics, top-k, front."""
    design = problem.describe(result.best)
    top = [
        problem.describe({k: r[k] for k in problem.space}) | {m: r[m] for m in SUMMARY if m in r}
        for r in result.top(cfg.search.top_k)
    ]
    front = [
        {k: float(np.asarray(result.table[k])[i]) for k in (*problem.space, *result.pareto_axes)}
        for i in result.pareto
    ]
    rep = {
        "driver": result.driver,
        "evaluations": result.evaluations,
        "best": design,
        "metrics": {k: float(v) for k, v in result.metrics.items() if k in SUMMARY or k.endswith("_s")},
        "top": top,
        "pareto_axes": list(result.pareto_axes),
        "pareto": front,
        "reproduce": calc_command(cfg, design),
    }
    check_results({"metrics": rep["metrics"], "top": top}, f"the design {rep['reproduce']}", ("objective",))
    return rep


def render(cfg: DictConfig, rep: dict[str, Any]) -> str:
    best = ", ".join(f"{k}={v}" for k, v in rep["best"].items())
    m = rep["metrics"]
    metrics = format_table(
        ["metric", "value"], [[k, f"{v:.6g}"] for k, v in m.items() if k not in TIME_FIELDS], align="lr"
    )
    parts = {k: m[k] for k in TIME_FIELDS if k in m}
    breakdown = [f"step breakdown: {fmt_breakdown(m['step_time_s'], parts)}"] if parts else []
    keys = [k for k in rep["top"][0] if k not in ("objective",)] if rep["top"] else []
    top = format_table(keys, [[fmt_cell(r[k]) for k in keys] for r in rep["top"]]) if keys else ""
    return "\n".join(
        [
            f"{rep['driver']} search over {rep['evaluations']:,} designs: {cfg.workload.kind}, "
            f"objective {cfg.search.objective}",
            f"best: {best}",
            "",
            metrics,
            *breakdown,
            "",
            f"top {len(rep['top'])}:",
            top,
            "",
            f"Pareto front ({' vs '.join(rep['pareto_axes'])}): {len(rep['pareto'])} designs",
            f"reproduce: {rep['reproduce']}",
        ]
    )


def _pareto_figure(result: Result) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = result.pareto_axes
    t = result.table
    ok = np.asarray(t["feasible"], bool) & np.isfinite(t[x]) & np.isfinite(t[y])
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(np.asarray(t[x])[ok], np.asarray(t[y])[ok], s=6, alpha=0.3, label="feasible designs")
    front = np.array(result.pareto, dtype=int)
    if front.size:
        ax.plot(np.asarray(t[x])[front], np.asarray(t[y])[front], "r.-", label="Pareto front")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend()
    fig.tight_layout()
    return fig


def _breakdown_figure(metrics: dict[str, float]) -> Any:
    """Bars of the step-time parts (``TIME_FIELDS``) in ``metrics``; None when it has none (serving)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {k: metrics[k] for k in TIME_FIELDS if metrics.get(k, 0.0) > 0}
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(list(parts), list(parts.values()))
    ax.set_xlabel("seconds per step")
    ax.set_title("best design: where the step time goes")
    fig.tight_layout()
    return fig


def log_result(run: JobRun, cfg: DictConfig, problem: Problem, result: Result, rep: dict[str, Any]) -> None:
    """Metrics of the best design, top-k child runs (grid), table, plots, best design."""
    run.log_metrics({k: v for k, v in rep["metrics"].items() if np.isfinite(v)})
    run.log_metrics({"evaluations": float(result.evaluations)})
    if result.driver == "grid":
        for rank, r in enumerate(rep["top"], start=1):
            run.child(
                f"top-{rank}",
                params={k: r[k] for k in rep["best"] if k in r},
                metrics={k: r[k] for k in SUMMARY if k in r and np.isfinite(r[k])},
            )
    if result.trajectory:
        run.log_trajectory(result.trajectory)
    run.log_table_csv(result.table, "results.csv")
    run.log_dict({"best": rep["best"], "metrics": rep["metrics"], "reproduce": rep["reproduce"]}, "best.yaml")
    if run.enabled:
        import matplotlib.pyplot as plt

        missing = [a for a in result.pareto_axes if a not in result.table]
        if missing:
            raise ConfigError(
                f"search.pareto names unknown metric(s) {', '.join(missing)}; "
                f"metrics: {', '.join(k for k in result.table if k not in problem.space)}"
            )
        for fig, name in (
            (_pareto_figure(result), "pareto.png"),
            (_breakdown_figure(rep["metrics"]), "breakdown.png"),
        ):
            if fig is not None:
                run.log_figure(fig, name)
                plt.close(fig)


def _experiment_name() -> str:
    choices = HydraConfig.get().runtime.choices
    return str(choices.get("experiment") or "search")


def task(cfg: DictConfig) -> None:
    schema.check_config(cfg)
    # hardware co-design, automatic sharding, topology-aware placement
    special = {"gd": "wafer_search", "ilp": "shard_search", "cpsat": "placement_search"}
    if cfg.search.driver in special:
        import importlib

        module = importlib.import_module(f"dse.{special[cfg.search.driver]}")
        with JobRun(cfg, name=_experiment_name()) as run:
            rep = module.run(cfg, run)
        print_json(rep) if cfg.format == "json" else print(module.render(rep))
        return
    problem, _ = build_problem(cfg)  # bad input stops here, before a run is opened
    with JobRun(cfg, name=_experiment_name()) as run:
        result = run_driver(cfg, problem, run)
        rep = summary(cfg, problem, result)
        log_result(run, cfg, problem, result, rep)
    if cfg.format == "json":
        print_json(rep)
    else:
        print(render(cfg, rep))


def main() -> None:
    run_app(task, "config", check=schema.check_config)


if __name__ == "__main__":
    main()
