"""Predict a validation case (``experiments/validation/SCHEMA.md``) with the cost models.

``predict_case(case, hardware_table)`` returns ``(quantity, value, reason)``: the case's measured
quantity, our prediction in the same unit, or ``None`` and the reason it is not covered. Where a
case leaves a choice open (``micro_batch_size`` or ``vpp`` null: the paper's runs were tuned), the
prediction is the fastest memory-feasible choice — micro-batches dividing the per-replica batch up
to 16, interleaving degrees dividing the layers per stage up to 8; ``batch_size: null`` with
``batch_size_policy: max_feasible`` takes the largest batch that fits in memory. Training cases use
unfused attention (the Megatron-LM of the published runs) unless a case sets ``flash_attention``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.architectures import parse_hf_config
from costmodels.errors import ConfigError
from costmodels.hardware import Hardware, peak_flops
from costmodels.inference import InferenceJob, inference_step
from costmodels.memory import training_memory
from costmodels.parallel import RECOMPUTE, check_plan, make_plan
from costmodels.training import TrainingJob, training_step
from dse.hardware import available_hardware, load_hardware

GiB = float(2**30)
TRAINING = (
    "iteration_time_s",
    "tokens_per_s_per_gpu",
    "model_tflops_per_gpu",
    "memory_gib_params_optimizer",
    "memory_gib_activations",
)
INFERENCE = ("latency_ms", "ttft_ms", "itl_ms", "output_tokens_per_s", "output_tokens_per_s_per_gpu")
_HW_CACHE: dict[str, Hardware] = {}


def _hardware(key: str) -> Hardware:
    if key not in _HW_CACHE:
        if key not in available_hardware():
            raise ConfigError(
                f"hardware '{key}' has no preset under conf/hardware/ (efficiencies uncalibrated)"
            )
        _HW_CACHE[key] = load_hardware(key)
    return _HW_CACHE[key]


def _quantity(case: dict[str, Any]) -> str:
    measured = case.get("measured") or {}
    if len(measured) != 1:
        raise ConfigError(f"case {case.get('id')}: 'measured' must hold exactly one target")
    return next(iter(measured))


def predict_case(
    case: dict[str, Any], hardware_table: dict[str, Any]
) -> tuple[str, float | None, str | None]:
    """(quantity, predicted value or None, reason when not covered) for one case."""
    quantity = _quantity(case)
    if quantity in TRAINING and case.get("kind") == "training":
        return quantity, _training(case, quantity), None
    if quantity in INFERENCE and case.get("kind") == "inference":
        return quantity, _inference(case, quantity), None
    return quantity, None, f"no model for {case.get('kind')} quantity '{quantity}'"


# --------------------------------------------------------------------------------------------
# Training


def _plans(case: dict[str, Any], num_layers: int) -> list[dict[str, Any]]:
    """The case's mapping; null micro-batch / vpp expand to every admissible choice."""
    p, b = case["parallelism"], case["batch"]
    per_replica = b["global_batch_size"] // p["dp"]
    micro = (
        [b["micro_batch_size"]]
        if b.get("micro_batch_size")
        else [m for m in (1, 2, 4, 8, 16) if per_replica % m == 0]
    )
    vpps = (
        [p["vpp"]]
        if p.get("vpp")
        else [v for v in range(1, 9) if num_layers % (p["pp"] * v) == 0 and (v == 1 or p["pp"] > 1)]
    )
    base = {k: p[k] for k in ("tp", "pp", "dp", "cp", "ep")}
    base |= {
        "sequence_parallel": float(bool(p.get("sequence_parallel"))),
        "zero_stage": p.get("zero_stage") or 0,
        "recompute": RECOMPUTE[p.get("recompute") or "none"],
        "global_batch": b["global_batch_size"],
    }
    return [base | {"microbatch": m, "vpp": v} for m in micro for v in vpps]


def _training(case: dict[str, Any], quantity: str) -> float:
    spec = parse_hf_config(case["model"])
    hw = _hardware(case["hardware"])
    seq = case["batch"]["seq_len"]
    # The validated training runs (Megatron-LM 2021-22, Megatron-DeepSpeed) used unfused attention.
    job = TrainingJob(spec, seq, case["precision"], fused_attention=bool(case.get("flash_attention", False)))
    options = _plans(case, spec.num_layers)
    for values in options:
        check_plan(make_plan(**values), spec, case["num_devices"], seq)
    plans = jax.tree.map(
        lambda *xs: jnp.stack([jnp.asarray(x, float) for x in xs]), *[make_plan(**v) for v in options]
    )
    if quantity.startswith("memory_gib"):
        mem = jax.vmap(lambda q: training_memory(spec, q, seq, hw, case["precision"]))(plans)
        if quantity == "memory_gib_activations":
            return float(mem.activations_bytes[0]) / GiB
        return float(mem.weights_bytes[0] + mem.gradients_bytes[0] + mem.optimizer_bytes[0]) / GiB
    table = job.table()
    out = jax.vmap(lambda q: training_step(hw, job, q, table))(plans)
    times = np.where(np.asarray(out.feasible), np.asarray(out.step_time_s), np.inf)
    if not np.isfinite(times).any():
        raise ConfigError("no memory-feasible micro-batch / vpp choice for this mapping")
    i = int(np.argmin(times))
    step, devices = float(times[i]), case["num_devices"]
    if quantity == "iteration_time_s":
        return step
    if quantity == "tokens_per_s_per_gpu":
        return case["batch"]["global_batch_size"] * seq / step / devices
    return float(out.mfu[i]) * float(peak_flops(hw, case["precision"])) / 1e12


# --------------------------------------------------------------------------------------------
# Inference


def _inference(case: dict[str, Any], quantity: str) -> float:
    spec = parse_hf_config(case["model"])
    hw = _hardware(case["hardware"])
    p, b = case["parallelism"], case["batch"]
    if p.get("dp", 1) != 1 or p.get("cp", 1) != 1:
        raise ConfigError("inference with dp or cp > 1 is not modelled")
    job = InferenceJob(spec, b["input_len"], b["output_len"], case["precision"])
    tables = job.tables()
    batch = b.get("batch_size") or _max_batch(hw, job, p["tp"], p["pp"], tables)
    r = inference_step(hw, job, float(p["tp"]), float(p["pp"]), float(batch), tables=tables)
    if not bool(r.feasible):
        raise ConfigError(f"batch {batch} does not fit in memory on tp={p['tp']}, pp={p['pp']}")
    devices = p["tp"] * p["pp"]
    return {
        "latency_ms": float(r.latency_s) * 1e3,
        "ttft_ms": float(r.ttft_s) * 1e3,
        "itl_ms": float(r.tpot_s) * 1e3,
        "output_tokens_per_s": float(r.output_tokens_per_s),
        "output_tokens_per_s_per_gpu": float(r.output_tokens_per_s) / devices,
    }[quantity]


def _max_batch(hw: Hardware, job: InferenceJob, tp: int, pp: int, tables: Any) -> int:
    """The largest batch (powers of two, then a bisection) whose memory fits."""

    def fits(n: int) -> bool:
        return bool(inference_step(hw, job, float(tp), float(pp), float(n), tables=tables).feasible)

    if not fits(1):
        raise ConfigError("even batch 1 does not fit in memory")
    lo, hi = 1, 2
    while hi <= 65536 and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
