"""Structured-config schemas for ``python -m dse.search`` (registered in Hydra's ConfigStore).

Each YAML option of the ``workload`` and ``search`` groups starts its defaults list with its
schema, and the primary config with ``schema``; Hydra then validates types and rejects unknown keys
(struct mode), so ``workload.seq_lne=8192`` is an error naming the key, not a silent default.
Each field's metadata holds its range (``at_least``, ``above``, ``at_most``, ``one_of``, ``nonempty``)
and :func:`check_config` checks a composed config against them before anything runs or is logged:
the one place where a ``dse.search`` value is range-checked. The ``model`` group holds Hugging Face
configs (checked by ``costmodels.architectures``), ``hardware`` is checked by its own loader
(``dse/hardware.py``), and ``parallelism`` (candidate values per knob) by ``dse/search.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig

from costmodels.errors import ConfigError
from costmodels.hardware import PRECISIONS
from costmodels.inference import ENGINES
from costmodels.memory import OPTIMIZER_MOMENT_BYTES
from search.base import METRICS
from search.optuna_driver import SAMPLERS
from search.problems import OBJECTIVES, SERVING_METRICS, SERVING_OBJECTIVES
from search.serving import SERVING_SIM_OBJECTIVES
from search.wafer import WAFER_OBJECTIVES


def ranged(default: Any, **rule: Any) -> Any:
    """A dataclass field with a scalar default and its range rule in the metadata
    (see :func:`check_config`)."""
    return field(default=default, metadata=rule)


POSITIVE_INT = {"at_least": 1, "integer": True}
PRECISION = {"one_of": PRECISIONS}
# per problem and workload kind: dse/search.py, search/wafer.py
ALL_OBJECTIVES = tuple(
    dict.fromkeys(OBJECTIVES + SERVING_OBJECTIVES + WAFER_OBJECTIVES + SERVING_SIM_OBJECTIVES)
)
METRIC_NAMES = {"one_of": tuple(dict.fromkeys(METRICS + SERVING_METRICS))}


@dataclass
class TrainingWorkload:
    kind: str = "training"
    seq_len: int = ranged(4096, **POSITIVE_INT)
    global_batch: int = ranged(512, **POSITIVE_INT)
    precision: str = ranged("bf16", **PRECISION)
    fused_attention: bool = True
    optimizer: str = ranged("adam", one_of=tuple(OPTIMIZER_MOMENT_BYTES))


@dataclass
class InferenceWorkload:
    kind: str = "inference"
    input_len: int = ranged(2048, **POSITIVE_INT)
    output_len: int = ranged(256, **POSITIVE_INT)
    precision: str = ranged("bf16", **PRECISION)
    kv_precision: str | None = ranged(None, **PRECISION)
    attention_precision: str | None = ranged(None, **PRECISION)
    engine: str = ranged("static", one_of=tuple(ENGINES))
    tpot_limit_ms: float = ranged(50.0, above=0.0)
    ttft_limit_ms: float | None = ranged(None, above=0.0)


@dataclass
class GridSearch:
    driver: str = "grid"
    objective: str = ranged("step_time_s", one_of=ALL_OBJECTIVES)
    top_k: int = ranged(10, **POSITIVE_INT)
    chunk_size: int = ranged(262_144, **POSITIVE_INT)
    pareto: list[str] = field(
        default_factory=lambda: ["step_time_s", "memory_gib"], metadata={**METRIC_NAMES, "length": 2}
    )


@dataclass
class RandomSearch(GridSearch):  # grid's options (scored the same way) and how many points to draw
    driver: str = "random"
    n_samples: int = ranged(200, **POSITIVE_INT)


@dataclass
class ProblemChoice:
    name: str = "mapping"  # checked against dse.search.PROBLEMS


@dataclass
class OptunaSearch:
    driver: str = "optuna"
    objective: str = ranged("step_time_s", one_of=ALL_OBJECTIVES)
    objectives: list[str] | None = field(default=None, metadata={"one_of": ALL_OBJECTIVES})
    n_trials: int = ranged(200, **POSITIVE_INT)
    timeout_s: float | None = ranged(None, above=0.0)
    sampler: str = ranged("auto", one_of=SAMPLERS)
    storage: str | None = ranged(None, nonempty=True)
    study_name: str | None = ranged(None, nonempty=True)
    top_k: int = ranged(10, **POSITIVE_INT)
    pareto: list[str] = field(
        default_factory=lambda: ["step_time_s", "memory_gib"], metadata={**METRIC_NAMES, "length": 2}
    )


@dataclass
class GradientSearch:
    driver: str = "gd"
    objective: str = "step_time_s"
    steps: int = ranged(60, **POSITIVE_INT)
    learning_rate: float = ranged(0.08, above=0.0)
    restarts: int = ranged(3, **POSITIVE_INT)
    temperature: float = ranged(0.02, at_least=0.0)
    top_k: int = ranged(5, **POSITIVE_INT)
    pareto: list[str] = field(
        default_factory=lambda: ["step_time_s", "power_w"], metadata={**METRIC_NAMES, "length": 2}
    )


@dataclass
class IlpSearch:
    driver: str = "ilp"
    solver: str = "cbc"
    time_limit_s: float | None = ranged(None, above=0.0)
    batch: int = ranged(8, **POSITIVE_INT)
    joint: bool = True  # forward + backward graph (False: forward only)
    memory_per_param_bytes: float = ranged(16.0, at_least=0.0)
    count_activations: bool = False
    memory_limit_gib: float | None = ranged(None, above=0.0)
    pins: Any = None  # {value: DTensor spec}
    top_k: int = ranged(1, **POSITIVE_INT)
    pareto: list[str] = field(default_factory=lambda: ["step_time_s", "memory_gib"])
    objective: str = "step_time_s"


@dataclass
class CpsatSearch:
    driver: str = "cpsat"
    objective: str = "time"
    time_limit_s: float = ranged(60.0, above=0.0)
    workers: int = ranged(8, **POSITIVE_INT)
    keep_tp_in_domain: bool = True
    method: str = "auto"


@dataclass
class SearchConfig:
    """The top level of ``conf/config.yaml``; the groups are typed by their own schemas."""

    model: Any = None
    hardware: Any = None
    workload: Any = None
    parallelism: Any = None
    problem: Any = None
    search: Any = None
    tracking: Any = None
    wafer: Any = None  # the wafer_arch experiment's system and knob bounds
    mesh: Any = None  # the auto_shard experiment's device mesh, e.g. [8, 8]
    topology: Any = None  # the placement experiment's network topology (conf/topology/)
    placement: Any = None  # the placement experiment's job: model mapping and traffic
    serving: Any = None  # the serving experiment's pool, engine, requests, SLOs and searched knobs
    num_devices: int = ranged(64, **POSITIVE_INT)
    format: str = ranged("table", one_of=("table", "json"))
    seed: int = ranged(0, at_least=0, integer=True)
    progress: bool = True
    job_report: bool = True  # in a multirun, each job prints its full report (dse.compare: one line)


def register() -> None:
    """Store the schemas (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=SearchConfig)
    cs.store(group="workload", name="training_schema", node=TrainingWorkload)
    cs.store(group="workload", name="inference_schema", node=InferenceWorkload)
    cs.store(group="search", name="grid_schema", node=GridSearch)
    cs.store(group="search", name="random_schema", node=RandomSearch)
    cs.store(group="problem", name="problem_schema", node=ProblemChoice)
    cs.store(group="search", name="optuna_schema", node=OptunaSearch)
    cs.store(group="search", name="gd_schema", node=GradientSearch)
    cs.store(group="search", name="ilp_schema", node=IlpSearch)
    cs.store(group="search", name="cpsat_schema", node=CpsatSearch)


GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "workload": {"training": TrainingWorkload, "inference": InferenceWorkload},
    "search": {
        "grid": GridSearch,
        "random": RandomSearch,
        "optuna": OptunaSearch,
        "gd": GradientSearch,
        "ilp": IlpSearch,
        "cpsat": CpsatSearch,
    },
}


def _violation(value: Any, rule: dict[str, Any]) -> str | None:
    """What is wrong with ``value`` under ``rule``, or None."""
    if "one_of" in rule:
        options = rule["one_of"]
        values = list(value) if isinstance(value, list | tuple | ListConfig) else [value]
        is_list = isinstance(value, list | tuple | ListConfig)
        if "length" in rule and is_list and len(values) != rule["length"]:
            return f"must list {rule['length']} of {', '.join(options)}, got {len(values)}"
        bad = [v for v in values if v not in options]
        return f"must be one of {', '.join(options)}, got {bad[0]!r}" if bad else None
    if rule.get("nonempty"):
        ok = isinstance(value, str) and value.strip()
        return None if ok else f"must be a non-empty string, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if rule.get("integer") and int(value) != value:
        return f"must be an integer, got {value!r}"
    if "at_least" in rule and value < rule["at_least"]:
        return f"must be >= {rule['at_least']}, got {value!r}"
    if "above" in rule and value <= rule["above"]:
        return f"must be > {rule['above']}, got {value!r}"
    return None


def check_node(node: DictConfig, schema: type, prefix: str) -> None:
    """Check every field of ``node`` that ``schema`` gives a range; a null passes where the field
    defaults to null (optional). Raises :class:`ConfigError` naming ``prefix`` + the key."""
    for f in fields(schema):
        if not f.metadata or f.name not in node:
            continue
        value = node[f.name]
        if value is None and f.default is None:
            continue
        problem = _violation(value, f.metadata)
        if problem:
            raise ConfigError(f"{prefix}{f.name} {problem}")


def check_config(cfg: DictConfig) -> None:
    """Range-check a composed ``dse.search`` config: the top level, the workload, the search
    driver's options and the tracking experiment name."""
    check_node(cfg, SearchConfig, "")
    for group, schemas in GROUP_SCHEMAS.items():
        node = cfg.get(group)
        kind = node.get("kind" if group == "workload" else "driver") if node is not None else None
        if kind is not None and kind in schemas:
            check_node(node, schemas[kind], f"{group}.")
    check_tracking(cfg.get("tracking"))


def check_tracking(tracking: DictConfig | None) -> None:
    """A non-empty experiment name, and a store that works (``dse.tracking.check_store``)."""
    from dse.tracking import check_store, resolve_uri

    if tracking is None or not tracking.get("enabled", True):
        return
    name = tracking.get("experiment")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"tracking.experiment must be a non-empty name, got {name!r}; e.g. tracking.experiment=dse"
        )
    check_store(resolve_uri(tracking, cwd=Path.cwd()))
