"""Kernel efficiency per precision, the run's attention kernel, uneven pipelines, tuned options and
serving-engine limits (the fidelity issue): each against a hand derivation or a brute force."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from costmodels.architectures import parse_hf_config
from costmodels.compute import KIND_FLASH, KIND_MATMUL, kernel_time_s
from costmodels.errors import ConfigError
from costmodels.hardware import (
    Hardware,
    activation_precision,
    kv_cache_precision,
    matmul_efficiency,
    weight_bytes_per_element,
)
from costmodels.parallel import check_plan, make_plan, stage_layers
from costmodels.sharding import op_times, shard
from costmodels.training import TrainingJob, op_table, training_step
from dse.predict import explain_case, precision_options

HW = Hardware(
    name="test",
    peak_flops_bf16=1000e12,
    peak_flops_fp8=2000e12,
    peak_flops_fp32=60e12,
    hbm_capacity_bytes=80 * 2.0**30,
    hbm_bandwidth_Bps=3e12,
    matmul_efficiency=0.8,
    matmul_efficiency_fp8=0.6,
    flash_attention_efficiency=0.5,
    flash_attention_bwd_efficiency=0.4,
    memory_efficiency=0.9,
    elementwise_efficiency=0.75,
    kernel_overhead_s=5e-6,
    scale_up_domain_size=8.0,
    scale_up_bandwidth_Bps=450e9,
    scale_out_bandwidth_Bps=50e9,
)
LLAMA = {
    "model_type": "llama",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "num_hidden_layers": 6,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}


def _close(actual, expected, rtol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, rtol=rtol, atol=0.0)


# --------------------------------------------------------------------------------------------
# Precision


def test_precision_storage_rules():
    """NVFP4 weights: 0.5 B + one E4M3 scale per 16 elements = 0.5625 B; an fp4 or fp8 checkpoint
    serves an fp8 KV cache unless told otherwise; activations stay 16-bit in fp8/fp4 runs."""
    assert weight_bytes_per_element("fp4") == 0.5625
    assert weight_bytes_per_element("fp8") == 1.0
    assert kv_cache_precision("fp4") == "fp8"
    assert kv_cache_precision("fp8") == "fp8"
    assert kv_cache_precision("bf16") == "bf16"
    assert kv_cache_precision("fp4", "fp16") == "fp16"
    assert activation_precision("fp8") == "bf16"
    assert activation_precision("fp16") == "fp16"


def test_matmul_efficiency_is_per_precision():
    """fp8 GEMMs take their own fraction (0.6 of the fp8 peak); a precision without one (fp4 here,
    field 0) takes the 16-bit fraction."""
    assert float(matmul_efficiency(HW, "fp8")) == 0.6
    assert float(matmul_efficiency(HW, "bf16")) == 0.8
    assert float(matmul_efficiency(HW, "fp4")) == 0.8


def test_kernel_time_by_precision_and_kind():
    """A compute-bound fp8 GEMM of 1e12 FLOPs: 1e12 / (2000e12 · 0.6) + 5 µs = 838.33 µs. A flash
    attention kernel in the same fp8 run runs at the bf16 peak: 1e12 / (1000e12 · 0.5) + 5 µs."""
    gemm = kernel_time_s(HW, 2000e12, KIND_MATMUL, 1e12, 1.0, quantize=False, precision="fp8")
    _close(gemm, 1e12 / (2000e12 * 0.6) + 5e-6)
    flash = kernel_time_s(HW, 2000e12, KIND_FLASH, 1e12, 1.0, quantize=False, precision="fp8")
    _close(flash, 1e12 / (1000e12 * 0.5) + 5e-6)


def test_flash_backward_is_2_5x_forward_at_its_own_efficiency():
    """Flash backward recomputes the scores: 2.5 × forward FLOPs at ``flash_attention_bwd_efficiency``
    (0.4 here vs 0.5 forward): compute-bound, backward / forward ≈ 2.5 · 0.5 / 0.4 = 3.125."""
    spec = parse_hf_config(LLAMA)
    table = op_table(spec, 4096, "bf16", fused_attention=True)
    i = table.names.index("attn.sdpa")
    fwd, bwd = op_times(HW, "bf16", table, shard(table, make_plan(), 1.0))
    overhead = HW.kernel_overhead_s
    _close((float(bwd[i]) - overhead) / (float(fwd[i]) - overhead), 3.125, rtol=1e-3)


def test_fp8_training_adds_one_cast_pass_per_gemm_input_and_output_gradient():
    """Transformer Engine casts each GEMM's 16-bit input before the forward GEMM (read 2 B, write the
    fp8 copy and its transpose: 4 B per element = 2 × the table's 16-bit bytes) and the output
    gradient before the backward GEMMs: + 2·x/(bw · 0.75) + 5 µs forward, + 2·y/(bw · 0.75) + 5 µs
    backward, per GEMM."""
    spec = parse_hf_config(LLAMA)
    table = op_table(spec, 1024, "fp8", fused_attention=True)
    s = shard(table, make_plan(), 1.0)
    plain_f, plain_b = op_times(HW, "fp8", table, s, quantize_inputs=False)
    cast_f, cast_b = op_times(HW, "fp8", table, s, quantize_inputs=True)
    mm = np.asarray(table.kind) == KIND_MATMUL
    rate = 3e12 * 0.75
    _close(np.asarray(cast_f - plain_f)[mm], 2.0 * np.asarray(s.x)[mm] / rate + 5e-6)
    _close(np.asarray(cast_b - plain_b)[mm], 2.0 * np.asarray(s.y)[mm] / rate + 5e-6)
    assert np.all(np.asarray(cast_f - plain_f)[~mm] == 0.0)


# --------------------------------------------------------------------------------------------
# Uneven pipelines


@pytest.mark.parametrize(
    ("layers", "pp", "vpp", "edge", "expected"),
    [
        (126, 8, 8, 1, 16),  # (126 + 2) / 64 = 2 layers a chunk, 8 chunks a stage
        (126, 8, 8, 0, 16),  # ceil(126 / 64) = 2
        (61, 16, 1, 0, 4),  # ceil(61 / 16)
        (61, 16, 1, 1, 4),  # ceil(63 / 16)
        (30, 4, 1, 1, 8),  # ceil(32 / 4)
        (30, 4, 1, 0, 8),  # ceil(30 / 4)
        (32, 4, 2, 0, 8),  # even split
        (6, 1, 1, 1, 6),  # pp = 1: no pipeline, no edge layers
    ],
)
def test_stage_layers(layers, pp, vpp, edge, expected):
    plan = make_plan(pp=pp, vpp=vpp, pipeline_edge_layers=edge)
    assert float(stage_layers(layers, plan)) == expected


def test_uneven_interleaved_plans_are_accepted_and_impossible_ones_named():
    """126 layers on pp = 8, vpp = 8 (64 uneven chunks) is a valid Megatron-Core split; pp·vpp = 128
    chunks needs the embedding and loss counted as layers; 130 chunks no split can hold."""
    spec = parse_hf_config(LLAMA | {"num_hidden_layers": 126})
    check_plan(make_plan(pp=8, vpp=8, global_batch=8), spec, 8, 4096)
    check_plan(make_plan(pp=8, vpp=16, global_batch=8, pipeline_edge_layers=1), spec, 8, 4096)
    with pytest.raises(ConfigError, match=r"128 pipeline chunks but the model has 126 layers"):
        check_plan(make_plan(pp=8, vpp=16, global_batch=8), spec, 8, 4096)
    with pytest.raises(ConfigError, match=r"130 pipeline chunks but the model has 126 layers \(\+2"):
        check_plan(make_plan(pp=10, vpp=13, global_batch=10, pipeline_edge_layers=1), spec, 10, 4096)


def test_uneven_stage_compute_follows_the_fullest_stage():
    """pp = 4 over 6 layers, m = 4 micro-batches: the fullest stage holds ceil(6/4) = 2 layers plus
    the larger edge (embedding, or final norm + LM head + loss); with embedding and loss counted as
    layers (8 pipeline layers, 2 a stage) an edge stage holds one layer less:
    compute = m · Σ_pass [2·layer + max(edge − e·layer, 0)], by hand from the op times."""
    spec = parse_hf_config(LLAMA)
    job = TrainingJob(spec, 1024, "bf16")
    table = job.table()
    plan = make_plan(pp=4, global_batch=4)
    times = op_times(HW, "bf16", table, shard(table, plan, 1.0))
    expected = {0: 0.0, 1: 0.0}
    for t in times:
        t = np.asarray(t)
        layer = float(np.sum(t * np.where(table.group == 1, table.layers, 0.0))) / 6
        edge = max(float(np.sum(t * (table.group == 0))), float(np.sum(t * (table.group == 2))))
        for e in (0, 1):
            expected[e] += 4 * (2 * layer + max(edge - e * layer, 0.0))
    for e in (0, 1):
        step = training_step(HW, job, make_plan(pp=4, global_batch=4, pipeline_edge_layers=e))
        _close(step.compute_s, expected[e], rtol=1e-5)
    assert expected[1] < expected[0]


# --------------------------------------------------------------------------------------------
# Validation cases: tuned options, attention kernel, engine limits, clear errors


def _training_case(**parallelism) -> dict:
    p = {"tp": 1, "pp": 1, "dp": 8, "cp": 1, "ep": 1, "vpp": 1, "sequence_parallel": False}
    p |= {"zero_stage": 0, "recompute": "none"} | parallelism
    return {
        "id": "t",
        "family": "f",
        "kind": "training",
        "model": dict(LLAMA),
        "hardware": "h100_sxm",
        "num_devices": p["tp"] * p["pp"] * p["dp"] * p["cp"],
        "parallelism": p,
        "batch": {"global_batch_size": 64, "micro_batch_size": 2, "seq_len": 4096},
        "precision": "bf16",
        "measured": {"tokens_per_s_per_gpu": 1000.0},
    }


def test_unstated_options_are_the_fastest_stated_choice():
    """recompute and zero_stage null: the prediction equals the best of the explicit choices
    (brute force over the 3 × 2 stated cases), and the notes say which it chose."""
    open_case = _training_case(recompute=None, zero_stage=None)
    _, value, _, notes = explain_case(open_case, {})
    stated = []
    for r in ("none", "selective", "full"):
        for z in (0, 1):
            stated.append(explain_case(_training_case(recompute=r, zero_stage=z), {})[1])
    _close(value, max(stated))
    assert any(n.startswith("chose ") and "recompute=" in n and "zero_stage=" in n for n in notes)


def test_attention_kernel_is_read_from_config_then_generation():
    case = _training_case()
    assert any("flash" in n and "Hopper" in n for n in explain_case(case, {})[3])
    a100 = copy.deepcopy(case) | {"hardware": "a100_80gb_sxm"}
    assert any(n.startswith("attention eager") for n in explain_case(a100, {})[3])
    eager = copy.deepcopy(case)
    eager["model"]["_attn_implementation"] = "eager"
    assert any("model config: eager" in n for n in explain_case(eager, {})[3])
    # eager attention on 4,096 tokens stores the s² scores and is slower
    assert explain_case(eager, {})[1] < explain_case(case, {})[1]


def test_no_pipeline_split_is_a_clear_error():
    case = _training_case(pp=16, dp=1, vpp=None)
    with pytest.raises(ConfigError, match=r"no pipeline split of the 6 layers over pp=16"):
        explain_case(case, {})


def test_max_feasible_serving_batch_stops_at_the_engine_limit():
    """Llama-3-8B-like FP4 on one B200 at 128 + 128 tokens: ~4.5 GB of weights and 64 KiB of fp8 KV
    per token leave room for ~10,000 sequences, but TensorRT-LLM schedules at most 2,048."""
    model = LLAMA | {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32}
    model |= {"num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256}
    case = {
        "id": "s",
        "family": "f",
        "kind": "inference",
        "model": model,
        "hardware": "b200",
        "num_devices": 1,
        "parallelism": {"tp": 1, "pp": 1, "dp": 1, "cp": 1, "ep": 1, "vpp": 1},
        "batch": {"batch_size": None, "input_len": 128, "output_len": 128},
        "batch_size_policy": "max_feasible",
        "engine": "TensorRT-LLM (v1.0-era, PyTorch backend)",
        "precision": "fp4",
        "measured": {"output_tokens_per_s": 1000.0},
    }
    notes = explain_case(case, {})[3]
    assert "kv cache fp8 (default for fp4)" in notes
    assert any(n.startswith("batch 2048 ") for n in notes)


def test_fp8_training_saves_fp8_copies_of_gemm_only_inputs():
    """Transformer Engine keeps the tensors whose only use is a GEMM input as FP8 copies: the two
    norm outputs (2h) and the down-projection input (I) at 1 B instead of 2, plus an FP8 copy of the
    attention output (nh·hd) that flash attention also keeps in 16 bits. Per token per layer the
    saving is 2·1024 + 4096 − 1024 = 5,120 B; for one 4,096-token sequence 20,971,520 B."""
    from costmodels.memory import layer_activation_bytes

    spec = parse_hf_config(LLAMA)
    plan = make_plan()
    bf16 = layer_activation_bytes(spec, plan, 4096, "bf16", fused_attention=True)
    fp8 = layer_activation_bytes(spec, plan, 4096, "fp8", fused_attention=True)
    _close(float(bf16) - float(fp8), 4096 * (2 * 1024 + 4096 - 1024))


def test_every_collective_call_pays_the_base_latency_once():
    """NCCL's fixed cost per call (tuning.cc baseLat, Ring LL 6.6 µs) is added once to a collective
    over n > 1 ranks, whatever tiers it spans; a group of one rank costs nothing."""
    import dataclasses

    from costmodels.fabric import collective_s

    with_base = dataclasses.replace(HW, collective_base_latency_s=6.6e-6)
    for stride, n in ((1.0, 8.0), (1.0, 16.0), (8.0, 4.0)):
        plain = float(collective_s("all_reduce", HW, 1e8, stride, n))
        _close(float(collective_s("all_reduce", with_base, 1e8, stride, n)), plain + 6.6e-6)
    assert float(collective_s("all_reduce", with_base, 1e8, 1.0, 1.0)) == 0.0


def test_tensor_parallel_all_reduces_stay_16_bit_in_fp8_and_fp4_serving():
    """The all-reduces after the row-parallel GEMMs carry 16-bit activations whatever the weights'
    precision: an fp8 or fp4 decode step communicates exactly what a bf16 one does on tp = 2."""
    from costmodels.inference import InferenceJob, inference_step

    hw = dataclasses.replace(HW, peak_flops_fp4=4000e12)
    spec = parse_hf_config(LLAMA)
    comm = {
        p: float(inference_step(hw, InferenceJob(spec, 128, 128, p), 2.0, 1.0, 8.0).decode_comm_s)
        for p in ("bf16", "fp8", "fp4")
    }
    assert comm["bf16"] > 0
    _close(comm["fp8"], comm["bf16"])
    _close(comm["fp4"], comm["bf16"])


@pytest.mark.parametrize(
    ("preset", "field", "achieved", "peak"),
    [
        # stas00/ml-engineering "Maximum Achievable Matmul FLOPS" table (commit 744d01e), bf16
        ("h100_sxm", "matmul_efficiency", 794.5, 989.0),
        ("b200", "matmul_efficiency", 1745.0, 2250.0),
        ("gb200", "matmul_efficiency", 1822.0, 2500.0),
        # FlashAttention-3 repo chart: FP16 forward, causal, head dim 128, 16k tokens
        ("h100_sxm", "flash_attention_efficiency", 616.0, 989.0),
        # FlashMLA README, B200 dense MHA prefill: forward and backward
        ("b200", "flash_attention_efficiency", 1460.0, 2250.0),
        ("b200", "flash_attention_bwd_efficiency", 1000.0, 2250.0),
    ],
)
def test_sourced_preset_fractions_match_their_sources(preset, field, achieved, peak):
    """Each sourced fraction is the published TFLOP/s over the dense peak, to its two or three digits."""
    from dse.hardware import load_hardware

    assert abs(float(getattr(load_hardware(preset), field)) - achieved / peak) < 0.005


def test_a100_flash_backward_reproduces_flashattention2_forward_plus_backward():
    """FlashAttention-2's chart (A100, causal, head dim 128, 16k): forward + backward at 189 of 312
    TFLOP/s. With the forward at 0.6 and the backward 2.5× its FLOPs at ``flash_attention_bwd``, the
    pair runs at 3.5 / (1/0.6 + 2.5/bwd) of peak."""
    from dse.hardware import load_hardware

    hw = load_hardware("a100_80gb_sxm")
    fwd, bwd = float(hw.flash_attention_efficiency), float(hw.flash_attention_bwd_efficiency)
    assert abs(3.5 / (1 / fwd + 2.5 / bwd) - 189.0 / 312.0) < 0.01


def test_nccl_base_latency_is_tuning_cc_ring_ll():
    """NVIDIA/nccl src/graph/tuning.cc: baseLat for Ring / LL is 6.6 µs."""
    from dse.hardware import load_hardware

    for preset in ("a100_80gb_sxm", "h100_sxm", "b200", "gb200"):
        assert abs(float(load_hardware(preset).collective_base_latency_s) - 6.6e-6) < 1e-12


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("FP8 (weights/activations; fp8 KV cache)", ("fp8", None)),
        ("FP8, default granularity (25.09; precision column absent)", (None, None)),
        ("FP4 weights, FP8 attention (FMHA), fp16 KV cache", ("fp16", "fp8")),
        ("FP8 FMHA", (None, "fp8")),
        (None, (None, None)),
    ],
)
def test_precision_detail_states_the_kv_cache_and_attention_types(detail, expected):
    """A case's ``precision_detail`` overrides the KV-cache default (fp8 for fp8/fp4 weights) and the
    16-bit attention where it names them; a phrase never reaches across a comma or semicolon."""
    assert precision_options({"precision_detail": detail}) == expected
