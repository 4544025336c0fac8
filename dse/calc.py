"""``python -m dse.calc``: the 3D-parallel calculator for one training mapping or inference deployment.

    python -m dse.calc model=llama3_70b hardware=h100_sxm num_devices=64 parallelism.tp=8 \\
        parallelism.pp=2 parallelism.recompute=selective parallelism.sequence_parallel=true \\
        global_batch=256 seq_len=8192 [format=json]
    python -m dse.calc mode=inference model=llama3_70b num_devices=4 parallelism.tp=4 inference.batch_size=8

Training prints the memory per device (most loaded pipeline stage), every
:class:`~costmodels.training.TrainingBreakdown` time with its share of the step, MFU and HFU, tokens/s,
tokens/day, samples/s, achieved TFLOP/s per device and feasibility; inference prints TTFT, TPOT,
end-to-end latency, output tokens/s and the serving memory (KV cache). A mapping that does not fit in
memory is reported in full, marked ``feasible: no``, and exits with status 1. The last line of the
table is the command that reproduces the run (:func:`command_line`, shared with ``dse.search``).
Numbers are computed in float64 (``jax.enable_x64``) so the breakdown sums to the step time exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

import jax
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from costmodels.architectures import ModelSpec
from costmodels.deployment import ServingPlan
from costmodels.errors import ConfigError
from costmodels.hardware import PRECISIONS, Hardware, activation_precision, kv_cache_precision, peak_flops
from costmodels.inference import engine_preset, inference_step, launch_assumption
from costmodels.memory import MemoryBreakdown, overflow, overflow_message
from costmodels.metrics import model_flops_per_sequence, recompute_flops_per_sequence, tokens_per_day
from costmodels.parallel import FLAG, check_plan, knobs, make_plan, option_defaults
from costmodels.training import TIME_FIELDS, TIME_NOTES, TrainingJob, training_step
from costmodels.workload import parameter_count
from dse._app import format_table, print_json, run_app
from dse.checks import check_results, plan_options
from dse.checks import flag as _flag
from dse.checks import fraction as _fraction
from dse.checks import positive_int as _positive_int
from dse.hardware import hardware_from_config
from dse.models import SOURCE_OPTION, load_model, model_assumptions
from dse.units import fmt_bytes, fmt_count, fmt_time
from search.xla import jit_few_calls

CONFIG_NAME = "calc"
PARALLELISM_KEYS = tuple(option_defaults())  # every plan field but the workload's (global batch)
# Parallelism values that mean "off" (the plan fields' neutral values); command_line leaves them out
# (zero3_overlap has none: it matters only at ZeRO-3).
_NEUTRAL = {k: m["neutral"] for k, m in knobs().items() if m["neutral"] is not None}
MFU_NOTE = "model FLOPs: fwd+bwd GEMMs + causal attention, no recompute (NeMo / Megatron-Bridge)"
HFU_NOTE = "hardware FLOPs: model FLOPs + the recomputed forward"


# --------------------------------------------------------------------------------------------
# Configuration → checked values


def parallelism(cfg: DictConfig) -> dict[str, Any]:
    """The ``parallelism`` group, type-checked by each plan field's kind (:func:`plan_options`),
    unknown keys rejected, ``dp`` derived when null."""
    par = OmegaConf.to_container(cfg.parallelism, resolve=True)
    unknown = sorted(set(par) - set(PARALLELISM_KEYS))
    if unknown:
        names = ", ".join(f"parallelism.{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {names}; valid: {', '.join(PARALLELISM_KEYS)}")
    out = plan_options(par, "parallelism.")
    out["dp"] = _derived_dp(out["dp"], out, _positive_int(cfg.num_devices, "num_devices"))
    return out


def _derived_dp(dp: Any, par: Mapping[str, Any], num_devices: int) -> int:
    """``dp`` as given, or num_devices / (tp·pp·cp) when null."""
    if dp is not None:
        return _positive_int(dp, "parallelism.dp")
    inner = par["tp"] * par["pp"] * par["cp"]
    if num_devices % inner:
        raise ConfigError(
            f"num_devices = {num_devices} is not a multiple of tp·pp·cp = {par['tp']}·{par['pp']}·{par['cp']}"
            f" = {inner}: change the degrees or num_devices"
        )
    return num_devices // inner


# --------------------------------------------------------------------------------------------
# Reports (JSON-ready dicts, SI units)


def _floats(obj: Any) -> dict[str, Any]:
    """A breakdown dataclass as a dict of Python floats (nested dataclasses as dicts)."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    return {k: _floats(v) if is_dataclass(v) else float(np.asarray(v)) for k, v in values.items()}


def _feasibility(values: Mapping[str, float]) -> dict[str, Any]:
    """``feasible`` and, when not, what overflows (``costmodels.memory.overflow``)."""
    memory = MemoryBreakdown(**values)
    return {
        "feasible": bool(np.all(np.asarray(memory.feasible))),
        "overflow": overflow(memory),
        "overflow_message": overflow_message(memory),
    }


def training_report(cfg: DictConfig, spec: ModelSpec, hw: Hardware) -> dict[str, Any]:
    """Memory, step-time breakdown, MFU/HFU and throughput of one training mapping."""
    seq_len = _positive_int(cfg.seq_len, "seq_len")
    global_batch = _positive_int(cfg.global_batch, "global_batch")
    par = parallelism(cfg)
    plan = make_plan(**par, global_batch=global_batch)
    check_plan(plan, spec, int(cfg.num_devices), seq_len)
    job = TrainingJob(spec, seq_len, cfg.precision, bool(cfg.fused_attention), cfg.optimizer)
    with jax.enable_x64(True):  # one compiled program (not one per operation), called once
        result = _floats(jit_few_calls(lambda h, p: training_step(h, job, p))(hw, plan))
    peak = float(peak_flops(hw, cfg.precision))
    return {
        "mode": "training",
        **_setup(cfg, hw, spec),
        "seq_len": seq_len,
        "global_batch": global_batch,
        "plan": par | {"global_batch": global_batch, "microbatches": int(plan.microbatches)},
        **result,
        "step_shares": {k: result[k] / result["step_time_s"] for k in TIME_FIELDS},
        **_throughput(result, spec, par, seq_len, global_batch, peak),
        "assumptions": list(model_assumptions(spec, "training")),
        **_feasibility(result["memory"]),
    }


def _throughput(
    result: Mapping[str, Any], spec: ModelSpec, par: Mapping[str, Any], seq_len: int, batch: int, peak: float
) -> dict[str, float]:
    """samples/s, tokens/day and achieved FLOP/s per device: model FLOPs (MFU's numerator) and
    hardware FLOPs (HFU's: + recomputed forward), from costmodels.metrics."""
    step, devices = result["step_time_s"], par["tp"] * par["pp"] * par["dp"] * par["cp"]
    samples_per_s = batch / step
    model_flops = batch * model_flops_per_sequence(spec, seq_len)
    hardware_flops = model_flops + batch * recompute_flops_per_sequence(spec, seq_len, par["recompute"])
    return {
        "samples_per_s": samples_per_s,
        "tokens_per_day": tokens_per_day(samples_per_s, seq_len),
        "model_flops_per_step": model_flops,
        "hardware_flops_per_step": hardware_flops,
        "model_flops_per_s_per_device": model_flops / step / devices,
        "hardware_flops_per_s_per_device": hardware_flops / step / devices,
        "peak_flops": peak,
    }


def _setup(cfg: DictConfig, hw: Hardware, spec: ModelSpec) -> dict[str, Any]:
    """Keys common to both modes: what was run, and the command that reproduces it."""
    choices, extra = run_context(cfg)
    return {
        "model": _model_name(cfg, choices),
        "model_type": spec.model_type,
        "hardware": choices.get("hardware", hw.name),
        "hardware_name": hw.name,
        "params": parameter_count(spec),
        "num_devices": int(cfg.num_devices),
        "precision": cfg.precision,
        "command": command_line(reproduce_settings(cfg, choices), extra),
    }


def inference_report(cfg: DictConfig, spec: ModelSpec, hw: Hardware) -> dict[str, Any]:
    """TTFT, TPOT, latency, throughput and serving memory of one replica on tp·pp devices."""
    inf, (tp, pp) = cfg.inference, _inference_degrees(cfg)
    batch = _positive_int(inf.batch_size, "inference.batch_size")
    input_len = _positive_int(inf.input_len, "inference.input_len")
    # an encoder generates nothing (0); InferenceJob says which a model needs
    output_len = _positive_int(inf.output_len, "inference.output_len", minimum=0)
    offload = [_fraction(inf[k], f"inference.{k}") for k in ("offload_weights", "offload_kv")]
    for key in ("kv_precision", "attention_precision"):
        if inf[key] is not None and inf[key] not in PRECISIONS:
            valid = ", ".join(PRECISIONS)
            raise ConfigError(f"inference.{key} must be null or one of {valid}, got {inf[key]!r}")
    check_plan(
        make_plan(tp=tp, pp=pp, dp=1, global_batch=batch), spec, int(cfg.num_devices), input_len + output_len
    )
    engine_preset(inf.engine, "inference.engine")  # the preset's name, checked under its key
    plan = ServingPlan(
        tp=tp,
        pp=pp,
        launch=inf.engine,
        kv_precision=inf.kv_precision,
        attention_precision=inf.attention_precision,
        fused_attention=bool(cfg.fused_attention),
        offload_weights=offload[0],
        offload_kv=offload[1],
    )
    job = plan.job(spec, cfg.precision, input_len, output_len)
    with jax.enable_x64(True):
        step = inference_step(
            hw, job, float(tp), float(pp), float(batch), plan.offload_weights, plan.offload_kv
        )
        result: dict[str, Any] = _floats(step)
    return {
        "mode": "inference",
        **_setup(cfg, hw, spec),
        "plan": {"tp": tp, "pp": pp, "dp": 1},
        "batch_size": batch,
        "input_len": input_len,
        "output_len": output_len,
        "engine": job.engine.name,
        "inflight_batching": job.engine.inflight_batching,
        "kv_cache_precision": kv_cache_precision(cfg.precision, inf.kv_precision),
        "attention_precision": inf.attention_precision or activation_precision(cfg.precision),
        **result,
        "output_tokens_per_s_per_device": result["output_tokens_per_s"] / (tp * pp),
        "input_tokens_per_s": batch * input_len / result["latency_s"],
        "assumptions": [*model_assumptions(spec, "inference"), launch_assumption(hw, job.engine)],
        **_feasibility(result["memory"]),
    }


def _inference_degrees(cfg: DictConfig) -> tuple[int, int]:
    """(tp, pp) of the replica; dp, cp and ep are training-only here and must stay 1 (dp: or null)."""
    par = cfg.parallelism
    for key in ("cp", "ep"):
        if par[key] != 1:
            raise ConfigError(f"mode=inference models tp and pp only: set parallelism.{key}=1")
    if par.dp not in (None, 1):
        raise ConfigError("mode=inference models one replica: parallelism.dp must be 1 or null")
    tp, pp = _positive_int(par.tp, "parallelism.tp"), _positive_int(par.pp, "parallelism.pp")
    if tp * pp != cfg.num_devices:
        raise ConfigError(
            f"mode=inference runs one replica on tp·pp = {tp}·{pp} = {tp * pp} devices but num_devices = "
            f"{cfg.num_devices}: set num_devices={tp * pp} or change parallelism.tp / parallelism.pp"
        )
    return tp, pp


MODES: dict[str, Callable[[DictConfig, ModelSpec, Hardware], dict[str, Any]]] = {
    "training": training_report,
    "inference": inference_report,
}


def report(cfg: DictConfig) -> dict[str, Any]:
    """The calculator's report for a composed ``calc`` config, as a JSON-ready dict (SI units)."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    _positive_int(cfg.num_devices, "num_devices")
    _flag(cfg.fused_attention, "fused_attention")
    rep = MODES[cfg.mode](cfg, load_model(cfg.model), hardware_from_config(cfg.hardware))
    check_results(rep, f"the command: {rep['command']}")
    return rep


# --------------------------------------------------------------------------------------------
# The reproducing command line


def run_context(cfg: DictConfig) -> tuple[dict[str, Any], list[str]]:
    """(config-group choices, extra ``model.*``/``hardware.*`` overrides) of this run: from the Hydra
    app, or from ``cfg.hydra`` when composed with ``return_hydra_config=True`` (tests)."""
    if "hydra" in cfg:
        runtime, task = cfg.hydra.runtime.choices, cfg.hydra.overrides.task
    elif HydraConfig.initialized():
        runtime, task = HydraConfig.get().runtime.choices, HydraConfig.get().overrides.task
    else:
        return {}, []
    extra = [o for o in task if o.startswith(("model.", "hardware.")) and not o.startswith("model.source=")]
    return dict(runtime), extra


def _model_name(cfg: DictConfig, choices: Mapping[str, Any]) -> str:
    choice = choices.get("model", "?")
    return str(cfg.model.source) if choice == SOURCE_OPTION else str(choice)


def reproduce_settings(cfg: DictConfig, choices: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that pin this run down: everything that matters to ``cfg.mode``, except
    parallelism options at their "off" value (cp=1, ep=1, vpp=1, no SP, ZeRO 0, no recompute, no
    overlap; zero3_overlap only at ZeRO-3)."""
    out: dict[str, Any] = {"model": _model_name(cfg, choices), "hardware": choices.get("hardware", "?")}
    if cfg.mode == "inference":
        out |= {k: cfg[k] for k in ("mode", "num_devices", "precision", "fused_attention")}
        out |= {"parallelism.tp": cfg.parallelism.tp, "parallelism.pp": cfg.parallelism.pp}
        neutral = {"offload_weights": 0.0, "offload_kv": 0.0}  # output_len=0 (an encoder) is kept
        kept = {k: v for k, v in cfg.inference.items() if v is not None and neutral.get(k, -1) != v}
        return out | {f"inference.{k}": v for k, v in kept.items()}
    out |= {
        k: cfg[k]
        for k in ("num_devices", "seq_len", "global_batch", "precision", "fused_attention", "optimizer")
    }
    par = parallelism(cfg)
    keep = [k for k in PARALLELISM_KEYS if k not in _NEUTRAL or par[k] != _NEUTRAL[k]]
    keep = [k for k in keep if k != "zero3_overlap" or par["zero_stage"] == 3]
    return out | {f"parallelism.{k}": par[k] for k in keep}


def command_line(settings: Mapping[str, Any], extra: Sequence[str] = (), module: str = "dse.calc") -> str:
    """``python -m dse.calc key=value ...`` with values in Hydra's override syntax."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        return f"{v:g}" if isinstance(v, float) else str(v)

    return " ".join(["python", "-m", module, *(f"{k}={value(v)}" for k, v in settings.items()), *extra])


# --------------------------------------------------------------------------------------------
# Table output


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f} %"


def _time(seconds: float) -> str:
    return "0" if seconds == 0 else fmt_time(seconds)


def _memory_table(mem: Mapping[str, float], parts: Sequence[str]) -> str:
    """Bytes per device by category, with each one's share of the device capacity."""
    cap = mem["capacity_bytes"]
    rows = [[c.replace("_", " "), fmt_bytes(mem[f"{c}_bytes"]), _pct(mem[f"{c}_bytes"] / cap)] for c in parts]
    host = fmt_bytes(mem["host_capacity_bytes"])
    rows += [
        ["total", fmt_bytes(mem["total_bytes"]), _pct(mem["total_bytes"] / cap)],
        ["capacity (HBM)", fmt_bytes(cap), ""],
        ["offloaded (host)", fmt_bytes(mem["offloaded_bytes"]), f"host memory {host}"],
    ]
    return format_table(["memory per device", "bytes", "of capacity"], rows, align="lrr")


def _feasible_line(rep: Mapping[str, Any]) -> str:
    mem = rep["memory"]
    if rep["feasible"]:
        used, cap = fmt_bytes(mem["total_bytes"]), fmt_bytes(mem["capacity_bytes"])
        return f"feasible: yes ({used} of {cap} per device)"
    return f"feasible: no — {rep['overflow_message']}"


def _header(rep: Mapping[str, Any]) -> str:
    """'llama3_8b (llama, 8.03 B parameters) on 8 × NVIDIA H100 SXM5 80GB, training, bf16'."""
    n = rep["params"]
    count = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"
    return (
        f"{rep['model']} ({rep['model_type']}, {count} parameters) on {rep['num_devices']} × "
        f"{rep['hardware_name']}, {rep['mode']}, {rep['precision']}"
    )


def _options_on(plan: Mapping[str, Any]) -> str:
    """', ' + the description of each plan flag the plan line does not show otherwise that is on,
    from the Plan's metadata: ', weight streaming, Ulysses (all-to-all) context parallelism'."""
    on = [m["doc"] for k, m in knobs(FLAG).items() if k != "sequence_parallel" and plan.get(k)]
    return "".join(f", {doc}" for doc in on)


def render_training(rep: Mapping[str, Any]) -> str:
    """The training report as text tables."""
    p, step = rep["plan"], rep["step_time_s"]
    plan = (
        f"plan: tp={p['tp']} pp={p['pp']} dp={p['dp']} cp={p['cp']} ep={p['ep']} vpp={p['vpp']}, "
        f"sequence parallel {'on' if p['sequence_parallel'] else 'off'}, ZeRO-{p['zero_stage']}, "
        f"recompute {p['recompute']}{_options_on(p)}"
        f"\nbatch: {rep['global_batch']} sequences × {rep['seq_len']} tokens, "
        f"micro-batch {p['microbatch']}, {p['microbatches']} micro-batches per pipeline per step"
    )
    times = [
        [k.removesuffix("_s").replace("_", " "), _time(rep[k]), _pct(rep["step_shares"][k]), TIME_NOTES[k]]
        for k in TIME_FIELDS
    ]
    times.append(["step", fmt_time(step), _pct(1.0), "sum of the above"])
    time_table = format_table(["step time", "seconds", "share", "what"], times, align="lrrl")
    return "\n\n".join(
        [
            f"{_header(rep)}\n{plan}{_assumption_lines(rep)}",
            _memory_table(rep["memory"], ("weights", "gradients", "optimizer", "activations", "workspace")),
            time_table,
            _training_summary(rep),
            f"{_feasible_line(rep)}\nreproduce: {rep['command']}",
        ]
    )


def _training_summary(rep: Mapping[str, Any]) -> str:
    peak = fmt_count(rep["peak_flops"], "FLOP/s")
    rows = [
        ["MFU", _pct(rep["mfu"]), MFU_NOTE],
        ["HFU", _pct(rep["hfu"]), HFU_NOTE],
        ["tokens/s", fmt_count(rep["tokens_per_s"]), "global_batch · seq_len / step"],
        ["tokens/day", fmt_count(rep["tokens_per_day"]), "tokens/s · 86,400"],
        ["samples/s", f"{rep['samples_per_s']:.3f}", "sequences per second"],
        ["model TFLOP/s/device", f"{rep['model_flops_per_s_per_device'] / 1e12:.1f}", f"of {peak} peak"],
        ["hardware TFLOP/s/device", f"{rep['hardware_flops_per_s_per_device'] / 1e12:.1f}", "with recompute"],
    ]
    return format_table(["throughput", "value", "definition"], rows, align="lrl")


def _assumption_lines(rep: Mapping[str, Any]) -> str:
    return "".join(f"\nassumes: {line}" for line in rep.get("assumptions", ()))


def render_inference(rep: Mapping[str, Any]) -> str:
    """The inference report as text tables."""
    p = rep["plan"]
    head = (
        f"{_header(rep)}\nplan: tp={p['tp']} pp={p['pp']}, batch {rep['batch_size']} requests × "
        f"{rep['input_len']} input + {rep['output_len']} output tokens\n"
        f"engine: {rep['engine']}; kv cache {rep['kv_cache_precision']}, attention "
        f"{rep['attention_precision']}"
    )
    if rep["inflight_batching"]:
        defs = (
            "time to first token: one step of the running batch + the request's own prefill",
            "inter-token latency: decode step + the prefill of batch/output_len arriving requests",
            "batch / TPOT (steady state, finished requests replaced)",
        )
    else:
        defs = (
            "time to first token: prefill of the batch",
            "time per output token: decode step at the mean context",
            "batch · output_len / latency",
        )
    rows = [
        ["TTFT", fmt_time(rep["ttft_s"]), defs[0]],
        ["TPOT", fmt_time(rep["tpot_s"]), defs[1]],
        ["end-to-end latency", fmt_time(rep["latency_s"]), "TTFT + output_len · TPOT"],
        ["output tokens/s", f"{rep['output_tokens_per_s']:.1f}", defs[2]],
        ["output tokens/s/device", f"{rep['output_tokens_per_s_per_device']:.1f}", ""],
        ["decode comm", fmt_time(rep["decode_comm_s"]), "TP all-reduces + PP sends of one decode pass"],
        ["offload streaming", _time(rep["offload_s"]), "host-link time per step"],
    ]
    if rep["output_len"] == 0:  # an encoder: one forward pass per request
        rows = [
            ["forward latency", fmt_time(rep["latency_s"]), "one pass of the batch through the encoder"],
            ["sequences/s", f"{rep['batch_size'] / rep['latency_s']:.1f}", "batch / latency"],
            ["input tokens/s", fmt_count(rep["input_tokens_per_s"]), "batch · input_len / latency"],
            ["offload streaming", _time(rep["offload_s"]), "host-link time per step"],
        ]
    cats = ("weights", "kv_cache", "activations", "workspace")
    return "\n\n".join(
        [
            head + _assumption_lines(rep),
            format_table(["latency / throughput", "value", "definition"], rows, align="lrl"),
            _memory_table(rep["memory"], cats),
            f"{_feasible_line(rep)}\nreproduce: {rep['command']}",
        ]
    )


RENDER: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "training": render_training,
    "inference": render_inference,
}


# --------------------------------------------------------------------------------------------
# Entry point


def task(cfg: DictConfig) -> None:
    """Print the report; exit 1 after printing it when the mapping does not fit in memory (in a
    ``-m`` sweep the other points still run: each report says ``feasible``)."""
    if cfg.format not in ("table", "json"):
        raise ConfigError(f"format must be 'table' or 'json', got {cfg.format!r}")
    rep = report(cfg)
    if cfg.format == "json":
        print_json(rep)
    else:
        print("\n".join(line.rstrip() for line in RENDER[rep["mode"]](rep).splitlines()))
    if not rep["feasible"] and HydraConfig.get().mode != RunMode.MULTIRUN:
        sys.stdout.flush()
        raise SystemExit(1)


def main() -> None:
    run_app(task, CONFIG_NAME, known={"parallelism": PARALLELISM_KEYS})


if __name__ == "__main__":
    main()
