"""Predict a validation case (``experiments/validation/SCHEMA.md``) with the cost models.

``predict_case(case, hardware_table)`` returns ``(quantity, value, reason)``: the case's measured
quantity, our prediction in the same unit, or ``None`` and the reason it is not covered.
``explain_case`` returns the same with the assumptions the prediction made (attention kernel, the
options it chose where the case leaves them open).

* **Unstated options are tuned choices.** Where a training case leaves an option ``null`` —
  micro-batch size, interleaving degree ``vpp``, ZeRO stage (0 or the distributed optimizer, 1),
  recomputation (none / selective / full), sequence parallelism (with tp > 1), and whether the
  embedding and the loss count as pipeline layers (Megatron-Core's uneven split options) — the
  prediction is the fastest memory-feasible combination, as the published runs were tuned. A stated
  value is always respected. ``batch_size: null`` with ``batch_size_policy: max_feasible`` takes the
  largest batch that fits in memory.
* **Attention kernel.** Read from the model config where given (MPT ``attn_config.attn_impl``, a
  Hugging Face ``_attn_implementation``) or a case's ``flash_attention`` flag; otherwise the
  framework default of the hardware generation: fused flash attention on Hopper and newer (every
  current Megatron-Core, NeMo, TensorRT-LLM and vLLM release), the unfused attention of the
  Megatron-LM releases of the A100-era training runs, fused kernels in inference engines.
* **Overlap and FSDP.** Megatron-Core / NeMo overlap the data-parallel gradient reduce-scatter and
  parameter all-gather with the backward pass by default (``overlap_grad_reduce``,
  ``overlap_param_gather``), prefetch the next layer's ZeRO-3 gather behind compute, and run it
  hierarchically over every rail; the Megatron-LM / DeepSpeed of the A100-era runs reduced after the
  backward pass and gathered ZeRO-3 shards in one NIC ring. The same generation rule decides it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.architectures import ModelSpec, parse_hf_config
from costmodels.deployment import ServingPlan
from costmodels.errors import ConfigError
from costmodels.hardware import Hardware, kv_cache_precision, peak_flops
from costmodels.inference import ENGINES, InferenceJob, inference_step, launch_assumption, step_memory
from costmodels.memory import GiB, training_memory
from costmodels.parallel import (
    RECOMPUTE,
    Plan,
    check_plan,
    make_plan,
    padded_plan,
    plan_violations,
    with_defaults,
)
from costmodels.training import TrainingJob, training_step
from dse.hardware import available_hardware, load_hardware

TRAINING = (
    "iteration_time_s",
    "tokens_per_s_per_gpu",
    "model_tflops_per_gpu",
    "memory_gib_params_optimizer",
    "memory_gib_activations",
)
INFERENCE = ("latency_ms", "ttft_ms", "itl_ms", "output_tokens_per_s", "output_tokens_per_s_per_gpu")
# serving cases (a request stream at a stated rate or concurrency): the simulator's metric of each
SERVING = {
    "ttft_ms": "ttft_{statistic}_ms",
    "tpot_ms": "tpot_{statistic}_ms",
    "itl_ms": "itl_{statistic}_ms",
    "e2e_ms": "e2e_{statistic}_ms",
    "output_tokens_per_s": "throughput_tokens_per_s",
    "requests_per_s": "throughput_requests_per_s",
}
# each engine's scheduling defaults: (max_num_seqs, max_num_batched_tokens, KV admission); vLLM's V1
# engine and TensorRT-LLM's LLM API (2,048 sequences, 8,192 tokens), both with chunked prefill; vLLM
# admits to the KV cache on demand (preempting when blocks run out), TensorRT-LLM only when the whole
# sequence fits (GUARANTEED_NO_EVICT, its default capacity policy)
SERVING_ENGINES = {
    "vllm": (256, 8192, "on_demand"),
    "tensorrt": (2048, 8192, "reserve"),
    "trt-llm": (2048, 8192, "reserve"),
    "nim": (2048, 8192, "reserve"),
}
SERVING_REQUESTS = 1000  # vLLM benchmark_serving's default num_prompts, where the case does not say
# serving cases of one model, hardware and precision share their step tables (ServingPlan.deploy)
_STEP_TABLES: dict[tuple[str, str, str], dict[tuple[Any, ...], Any]] = {}
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
    quantity, value, reason, _ = explain_case(case, hardware_table)
    return quantity, value, reason


def explain_case(
    case: dict[str, Any], hardware_table: dict[str, Any]
) -> tuple[str, float | None, str | None, list[str]]:
    """``predict_case`` plus the assumptions it made: the attention kernel, overlap, and each option
    it chose where the case left it open."""
    quantity = _quantity(case)
    notes: list[str] = []
    if quantity in TRAINING and case.get("kind") == "training":
        return quantity, _training(case, quantity, notes), None, notes
    if quantity in INFERENCE and case.get("kind") == "inference":
        return quantity, _inference(case, quantity, notes), None, notes
    if quantity in SERVING and case.get("kind") == "serving":
        return quantity, _serving(case, quantity, notes), None, notes
    return quantity, None, f"no model for {case.get('kind')} quantity '{quantity}'", notes


def case_model(case: dict[str, Any]) -> tuple[Hardware, Callable[[Hardware], Any]]:
    """(the case's hardware preset, a jit-able function of the hardware giving the prediction) with
    the discrete choices (plan options, batch) fixed at the preset's: for fitting efficiencies
    (``experiments/calibrate.py``)."""
    quantity, notes = _quantity(case), []
    if case.get("kind") == "training" and quantity in TRAINING and not quantity.startswith("memory"):
        return _hardware(case["hardware"]), _training(case, quantity, notes, as_function=True)
    if case.get("kind") == "inference" and quantity in INFERENCE:
        return _hardware(case["hardware"]), _inference(case, quantity, notes, as_function=True)
    raise ConfigError(f"case {case.get('id')}: no hardware-dependent model for '{quantity}'")


# --------------------------------------------------------------------------------------------
# Training


def _hopper_or_newer(hw: Hardware) -> bool:
    """The generation rule for framework defaults: a device with FP8 tensor cores (Hopper, Ada,
    Blackwell, MI300) runs a current framework release."""
    return float(hw.peak_flops_fp8) > 0


def attention_kernel(case: dict[str, Any], hw: Hardware) -> tuple[bool, str]:
    """(fused flash attention?, why): the model config's own setting, then the case's
    ``flash_attention``, then the framework default of the hardware generation and the case kind."""
    model = case.get("model") or {}
    impl = (model.get("attn_config") or {}).get("attn_impl") or model.get("_attn_implementation")
    if impl is not None:
        fused = str(impl).lower() not in ("eager", "torch")
        return fused, f"attention {'flash' if fused else 'eager'} (model config: {impl})"
    if case.get("flash_attention") is not None:
        fused = bool(case["flash_attention"])
        return fused, f"attention {'flash' if fused else 'eager'} (case flash_attention)"
    if case.get("kind") == "inference":
        return True, "attention flash (inference engines' fused kernels)"
    if _hopper_or_newer(hw):
        return True, "attention flash (default of current Megatron-Core / NeMo on Hopper and newer)"
    return False, "attention eager (Megatron-LM of the A100-era runs: unfused softmax)"


def _choices(stated: Any, open_: list[Any]) -> list[Any]:
    return open_ if stated is None else [stated]


def _plans(case: dict[str, Any], spec: ModelSpec, hw: Hardware | None = None) -> list[dict[str, Any]]:
    """The case's mapping; every null option expands to its choices, and the combinations that break
    no mapping rule (``costmodels.parallel.RULES``) are the options (see module doc). None left: the
    first combination's broken rule is the error."""
    p, b = case["parallelism"], case["batch"]
    current = hw is not None and _hopper_or_newer(hw)
    base = {k: p[k] for k in ("tp", "pp", "dp", "cp")} | {"ep": p.get("ep") or 1}
    base |= {"global_batch": b["global_batch_size"], "dp_overlap": float(current)}
    if current:  # next-layer prefetch hides the ZeRO-3 gathers behind compute
        base["zero3_overlap"] = 1.0
    open_ = {
        "microbatch": _choices(b.get("micro_batch_size"), [1, 2, 4, 8, 16]),
        "vpp": _choices(p.get("vpp"), list(range(1, 9))),
        "zero_stage": _choices(p.get("zero_stage"), [0, 1]),
        "recompute": [RECOMPUTE[r] for r in _choices(p.get("recompute"), list(RECOMPUTE))],
        "sequence_parallel": [float(bool(x)) for x in _choices(p.get("sequence_parallel"), [False, True])],
        "pipeline_edge_layers": [0, 1] if p["pp"] > 1 else [0],
    }
    rows = [base | dict(zip(open_, combo, strict=True)) for combo in itertools.product(*open_.values())]
    cols = with_defaults({k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]})
    seq, devices = case["batch"]["seq_len"], float(case["num_devices"])
    broken = plan_violations(cols, spec, seq, devices)
    ok = ~np.any(np.stack(list(broken.values())), axis=0)
    if not ok.any():
        if broken["pipeline_chunks"].all():
            raise ConfigError(
                f"no pipeline split of the {spec.num_layers} layers over pp={p['pp']} stages with vpp="
                f"{p.get('vpp')} chunks each (pp·vpp must be at most the layer count, +2 with the "
                "embedding and loss as pipeline layers)"
            )
        check_plan(make_plan(**rows[0]), spec, case["num_devices"], seq)  # raises the broken rule's line
    return [r for r, keep in zip(rows, ok, strict=True) if keep]


PLAN_BATCH = 256  # the size a case's options are padded to (more options: the next power of two)


def _plan_batch(options: list[dict[str, Any]]) -> Plan:
    """The options as one batched :class:`Plan` (every other field at its default), padded with the
    last option to :data:`PLAN_BATCH` rows: the model runs op by op, and cases of one padded size
    reuse each op's compiled program, where a new size costs about a thousand new ones (1.2 s of
    compiling or reading the cache; a case's own run is 0.25 s)."""
    cols = with_defaults({k: np.array([o[k] for o in options], dtype=np.float64) for k in options[0]})
    return padded_plan(cols, max(PLAN_BATCH, 1 << (len(options) - 1).bit_length()))


def _describe(values: dict[str, Any], case: dict[str, Any]) -> str:
    """The options the prediction chose where the case left them open."""
    p, b = case["parallelism"], case["batch"]
    chosen = []
    if b.get("micro_batch_size") is None:
        chosen.append(f"micro_batch_size={values['microbatch']:g}")
    for key, name in (("vpp", "vpp"), ("zero_stage", "zero_stage")):
        if p.get(key) is None:
            chosen.append(f"{name}={values[key]:g}")
    if p.get("recompute") is None:
        chosen.append("recompute=" + {v: k for k, v in RECOMPUTE.items()}[values["recompute"]])
    if p.get("sequence_parallel") is None and p["tp"] > 1:
        chosen.append(f"sequence_parallel={bool(values['sequence_parallel'])}")
    if p["pp"] > 1:
        chosen.append(f"embedding/loss as pipeline layers={bool(values['pipeline_edge_layers'])}")
    return "chose " + ", ".join(chosen) if chosen else ""


def _training(case: dict[str, Any], quantity: str, notes: list[str], as_function: bool = False) -> Any:
    spec = parse_hf_config(case["model"])
    hw = _hardware(case["hardware"])
    seq = case["batch"]["seq_len"]
    fused, why = attention_kernel(case, hw)
    notes.append(why)
    current = _hopper_or_newer(hw)
    notes.append("dp/fsdp overlap on, fsdp hierarchical" if current else "dp overlap off, zero-3 flat ring")
    job = TrainingJob(spec, seq, case["precision"], fused_attention=fused, fsdp_hierarchical=current)
    options = _plans(case, spec, hw)
    plans = _plan_batch(options)
    n = len(options)
    if quantity.startswith("memory_gib"):
        mem = jax.vmap(lambda q: training_memory(spec, q, seq, hw, case["precision"]))(plans)
        if quantity == "memory_gib_activations":
            return float(mem.activations_bytes[0]) / GiB
        return float(mem.weights_bytes[0] + mem.gradients_bytes[0] + mem.optimizer_bytes[0]) / GiB
    table = job.table()
    gbs, devices = case["batch"]["global_batch_size"], case["num_devices"]
    peak_tflops = float(peak_flops(hw, case["precision"])) / 1e12

    def value(step: Any, mfu: Any) -> Any:
        if quantity == "iteration_time_s":
            return step
        if quantity == "tokens_per_s_per_gpu":
            return gbs * seq / step / devices
        return mfu * peak_tflops

    if as_function:  # the fastest memory-feasible plan (memory does not depend on efficiencies)
        feasible = np.asarray(jax.vmap(lambda q: training_step(hw, job, q, table).feasible)(plans))[:n]
        kept = jax.tree.map(lambda x: x[:n][feasible], plans)

        def best(h: Hardware) -> Any:
            out = jax.vmap(lambda q: training_step(h, job, q, table))(kept)
            i = jnp.argmin(out.step_time_s)
            return value(out.step_time_s[i], out.mfu[i])

        return best
    out = jax.tree.map(lambda x: x[:n], jax.vmap(lambda q: training_step(hw, job, q, table))(plans))
    times = np.where(np.asarray(out.feasible), np.asarray(out.step_time_s), np.inf)
    if not np.isfinite(times).any():
        i = int(np.argmin(np.asarray(out.memory.total_bytes)))
        need = float(out.memory.total_bytes[i]) / GiB
        raise ConfigError(
            f"infeasible: memory — the smallest of {len(options)} admissible plans needs {need:.1f} GiB "
            f"per device, the {case['hardware']} has {float(hw.hbm_capacity_bytes) / GiB:.0f} GiB"
        )
    i = int(np.argmin(times))
    chosen = _describe(options[i], case)
    if chosen:
        notes.append(chosen)
    return float(value(float(times[i]), float(out.mfu[i])))


# --------------------------------------------------------------------------------------------
# Inference


def _inference(case: dict[str, Any], quantity: str, notes: list[str], as_function: bool = False) -> Any:
    spec = parse_hf_config(case["model"])
    hw = _hardware(case["hardware"])
    p, b = case["parallelism"], case["batch"]
    if p.get("dp", 1) != 1 or p.get("cp", 1) != 1:
        raise ConfigError("inference with dp or cp > 1 is not modelled")
    kv, attention = precision_options(case)
    plan = ServingPlan(
        tp=p["tp"], pp=p["pp"], launch=serving_launch(case), kv_precision=kv, attention_precision=attention
    )
    job = plan.job(spec, case["precision"], b["input_len"], b["output_len"])
    engine = job.engine
    source = "precision_detail" if kv else "default for " + str(case["precision"])
    notes.append(f"kv cache {kv_cache_precision(case['precision'], kv)} ({source})")
    if attention:
        notes.append(f"attention {attention} (precision_detail)")
    tables = job.tables()
    batch = b.get("batch_size")
    if batch is None:
        limit = engine.max_batch_size or 65536
        batch = _max_batch(hw, job, p["tp"], p["pp"], limit)
        cap = f", engine limit {limit}" if engine.max_batch_size else ""
        notes.append(f"batch {batch} (largest that fits{cap})")
    if engine.max_num_tokens is not None:
        notes.append(f"engine {engine.name}: {engine.max_num_tokens} tokens per step")
    if engine.cuda_graphs:
        notes.append(launch_assumption(hw, engine))
    devices = p["tp"] * p["pp"]

    def step(h: Hardware) -> Any:
        return inference_step(h, job, float(p["tp"]), float(p["pp"]), float(batch), tables=tables)

    def quantity_of(r: Any) -> Any:
        return {
            "latency_ms": r.latency_s * 1e3,
            "ttft_ms": r.ttft_s * 1e3,
            "itl_ms": r.tpot_s * 1e3,
            "output_tokens_per_s": r.output_tokens_per_s,
            "output_tokens_per_s_per_gpu": r.output_tokens_per_s / devices,
        }[quantity]

    r = step(hw)
    if not bool(r.feasible):
        raise ConfigError(
            f"infeasible: memory — batch {batch} needs {float(r.memory.total_bytes) / GiB:.1f} GiB per "
            f"device on tp={p['tp']}, pp={p['pp']}; the {case['hardware']} has "
            f"{float(hw.hbm_capacity_bytes) / GiB:.0f} GiB"
        )
    return (lambda h: quantity_of(step(h))) if as_function else float(quantity_of(r))


def _serving(case: dict[str, Any], quantity: str, notes: list[str]) -> float:
    """A request stream simulated request by request (``costmodels/requests.py``) on dp replicas of
    tp·pp devices (a ``ServingPlan``; pp stages run pp engines): fixed prompt and output lengths,
    Poisson arrivals at the case's rate or a closed loop of its concurrency, the engine's scheduling
    defaults (``SERVING_ENGINES``) unless the case's ``engine_settings`` give them."""
    from costmodels.requests import SLO, serving_metrics, synthetic

    spec, hw = parse_hf_config(case["model"]), _hardware(case["hardware"])
    p, b, load = case["parallelism"], case["batch"], case["load"]
    name = str(case.get("engine") or "").lower()
    engine = next((v for k, v in SERVING_ENGINES.items() if k in name), None)
    if engine is None:
        raise ConfigError(
            f"engine '{case.get('engine')}' has no scheduling defaults (known: {', '.join(SERVING_ENGINES)})"
        )
    given = case.get("engine_settings") or {}
    kv, attention = precision_options(case)
    plan = ServingPlan(
        tp=int(p["tp"]),
        pp=int(p.get("pp", 1)),
        replicas=int(p.get("dp", 1)),
        kv_precision=kv,
        attention_precision=attention,
        max_num_seqs=int(given.get("max_num_seqs", engine[0])),
        max_num_batched_tokens=int(given.get("max_num_batched_tokens", engine[1])),
        kv_admission=str(given.get("kv_admission", engine[2])),
    )
    notes.append(
        f"engine: {plan.max_num_seqs} sequences, {plan.max_num_batched_tokens} tokens per step, chunked "
        f"prefill, KV {plan.kv_admission}"
    )
    inp, out = int(b["input_len"]), int(b["output_len"])
    try:
        model = (json.dumps(case["model"], sort_keys=True), case["hardware"], case["precision"])
        tables = _STEP_TABLES.setdefault(model, {})
        deployment = plan.deploy(hw, spec, case["precision"], inp, out, tables=tables)
    except ConfigError as exc:
        raise ConfigError(f"infeasible: {exc}") from None
    notes.append(launch_assumption(hw, deployment.job.engine))
    n = int(b.get("num_requests") or max(SERVING_REQUESTS, 10 * int(load.get("concurrency", 0))))
    lengths_in, lengths_out = np.full(n, inp), np.full(n, out)
    if "concurrency" in load:
        w = synthetic("closed", n, 1.0, lengths_in, lengths_out, concurrency=int(load["concurrency"]))
        notes.append(f"closed loop of {load['concurrency']} users, {n} requests")
    else:
        w = synthetic("poisson", n, float(load["request_rate_per_s"]), lengths_in, lengths_out)
        notes.append(f"Poisson arrivals, {n} requests")
    metrics = serving_metrics(deployment.simulate(w), w, SLO(), deployment.kv_blocks)
    return float(metrics[SERVING[quantity].format(statistic=case.get("statistic"))])


def serving_launch(case: dict[str, Any]) -> str:
    """The engine preset (a key of ``inference.ENGINES``) of an in-flight-batching benchmark
    (``batch_size_policy: max_feasible``) whose ``engine`` names it; static-batching benchmarks run
    the batch they state, their kernels launched one by one (``static``) or, where the case says
    ``cuda_graphs: true``, replayed from CUDA graphs (``static-cuda-graphs``: a serving engine's
    decode at concurrency 1, gptSessionBenchmark with ``--enable_cuda_graph``)."""
    name = str(case.get("engine") or "").lower()
    if case.get("batch_size_policy") != "max_feasible":
        return "static-cuda-graphs" if case.get("cuda_graphs") else "static"
    return next((key for key in ENGINES if key in name), "static")


_KV_DETAIL = re.compile(r"\b(fp8|fp16|bf16|fp32)\b[^;,)]*?\bkv\b", re.IGNORECASE)
_ATTENTION_DETAIL = re.compile(r"\b(fp8)\b[^;,)]*?\b(attention|fmha)\b", re.IGNORECASE)


def precision_options(case: dict[str, Any]) -> tuple[str | None, str | None]:
    """(KV-cache type, attention type) that a case's ``precision_detail`` states, else None (the
    defaults: ``hardware.kv_cache_precision``, 16-bit attention). "fp8 KV cache" → fp8; "FP8
    attention" or "FP8 FMHA" → fp8 attention."""
    detail = str(case.get("precision_detail") or "")
    kv, attention = _KV_DETAIL.search(detail), _ATTENTION_DETAIL.search(detail)
    return (kv.group(1).lower() if kv else None), (attention.group(1).lower() if attention else None)


def _max_batch(hw: Hardware, job: InferenceJob, tp: int, pp: int, limit: int = 65536) -> int:
    """The largest batch up to ``limit`` (powers of two, then a bisection) whose memory fits."""

    def fits(n: int) -> bool:  # the step's memory alone (``inference_step``'s feasibility)
        return bool(step_memory(hw, job, float(tp), float(pp), float(n)).feasible)

    if not fits(1):
        raise ConfigError("even batch 1 does not fit in memory")
    lo, hi = 1, 2
    if fits(limit):
        return limit
    while hi < limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
