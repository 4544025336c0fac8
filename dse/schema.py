"""Structured-config schemas for ``python -m dse.search`` (registered in Hydra's ConfigStore).

Each YAML option of the ``workload`` and ``search`` groups starts its defaults list with its
schema, and the primary config with ``schema``; Hydra then validates types and rejects unknown keys
(struct mode), so ``workload.seq_lne=8192`` is an error naming the key, not a silent default. The
``model`` group holds Hugging Face configs (free-form), ``hardware`` is checked by its own loader
(``dse/hardware.py``), and ``parallelism`` (candidate values per knob) by ``dse/search.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TrainingWorkload:
    kind: str = "training"
    seq_len: int = 4096
    global_batch: int = 512
    precision: str = "bf16"
    fused_attention: bool = True
    optimizer: str = "adam"


@dataclass
class InferenceWorkload:
    kind: str = "inference"
    input_len: int = 2048
    output_len: int = 256
    precision: str = "bf16"
    kv_precision: str | None = None
    tpot_limit_ms: float = 50.0


@dataclass
class GridSearch:
    driver: str = "grid"
    objective: str = "step_time_s"
    top_k: int = 10
    chunk_size: int = 262_144
    pareto: list[str] = field(default_factory=lambda: ["step_time_s", "memory_gib"])


@dataclass
class OptunaSearch:
    driver: str = "optuna"
    objective: str = "step_time_s"
    objectives: list[str] | None = None
    n_trials: int = 200
    timeout_s: float | None = None
    sampler: str = "auto"
    storage: str | None = None
    study_name: str = "dse"
    top_k: int = 10
    pareto: list[str] = field(default_factory=lambda: ["step_time_s", "memory_gib"])


@dataclass
class GradientSearch:
    driver: str = "gd"
    objective: str = "step_time_s"
    steps: int = 60
    learning_rate: float = 0.08
    restarts: int = 3
    temperature: float = 0.02
    top_k: int = 5
    pareto: list[str] = field(default_factory=lambda: ["step_time_s", "power_w"])


@dataclass
class IlpSearch:
    driver: str = "ilp"
    solver: str = "cbc"
    time_limit_s: float | None = None
    batch: int = 8
    joint: bool = True  # forward + backward graph (False: forward only)
    memory_per_param_bytes: float = 16.0
    count_activations: bool = False
    memory_limit_gib: float | None = None
    pins: Any = None  # {value: DTensor spec}
    top_k: int = 1
    pareto: list[str] = field(default_factory=lambda: ["step_time_s", "memory_gib"])
    objective: str = "step_time_s"


@dataclass
class CpsatSearch:
    driver: str = "cpsat"
    objective: str = "time"
    time_limit_s: float = 60.0
    workers: int = 8
    keep_tp_in_domain: bool = True
    method: str = "auto"


@dataclass
class SearchConfig:
    """The top level of ``conf/config.yaml``; the groups are typed by their own schemas."""

    model: Any = None
    hardware: Any = None
    workload: Any = None
    parallelism: Any = None
    search: Any = None
    tracking: Any = None
    wafer: Any = None  # the wafer_arch experiment's system and knob bounds
    mesh: Any = None  # the auto_shard experiment's device mesh, e.g. [8, 8]
    topology: Any = None  # the placement experiment's network topology (conf/topology/)
    placement: Any = None  # the placement experiment's job: model mapping and traffic
    num_devices: int = 64
    format: str = "table"
    seed: int = 0
    progress: bool = True


def register() -> None:
    """Store the schemas (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=SearchConfig)
    cs.store(group="workload", name="training_schema", node=TrainingWorkload)
    cs.store(group="workload", name="inference_schema", node=InferenceWorkload)
    cs.store(group="search", name="grid_schema", node=GridSearch)
    cs.store(group="search", name="optuna_schema", node=OptunaSearch)
    cs.store(group="search", name="gd_schema", node=GradientSearch)
    cs.store(group="search", name="ilp_schema", node=IlpSearch)
    cs.store(group="search", name="cpsat_schema", node=CpsatSearch)
