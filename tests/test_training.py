"""Tests for costmodels.training (with parallel.check_plan and metrics): hand-derived step times.

Unless a test says otherwise:

* the device is the A100 80GB SXM preset made an *ideal roofline* (every efficiency 1, no kernel
  overhead, no latencies, no wave quantization): P = 312e12 FLOP/s (bf16), B = 2.039e12 B/s HBM,
  NVLink B_up = 300e9 B/s one direction in 8-GPU domains, scale-out B_out = 25e9 B/s per GPU;
* the model is a small GPT-2 (h = 1024, l = 8 layers, 16 heads, V = 51200, 1024 positions, tied
  embeddings, dropout 0.1) trained on s = 1024 tokens in bf16 (activations 2 B, gradients reduced
  in fp32: 4 B per parameter). Its parameters, counted by hand: per layer 2 LayerNorms 2·2h = 4096,
  QKV h·3h + 3h = 3,148,800, out h² + h = 1,049,600, MLP up h·4h + 4h = 4,198,400, down 4h·h + h =
  4,195,328: 12,596,224; 8 layers 100,769,792 + token embedding V·h 52,428,800 + positions
  1024·h 1,048,576 + final norm 2048 = 154,249,216.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from costmodel_helpers import A100, IDEAL, padded

from costmodels.architectures import parse_hf_config
from costmodels.errors import ConfigError
from costmodels.memory import training_memory
from costmodels.metrics import model_flops_per_sequence, recompute_flops_per_sequence
from costmodels.parallel import Plan, check_plan, make_plan
from costmodels.sharding import GROUP_FIRST, GROUP_LAST, GROUP_LAYER, OpTable, op_times, shard
from costmodels.training import TIME_FIELDS, TrainingBreakdown, TrainingJob, training_step
from costmodels.workload import Batch, forward_ops, parameter_count, training_ops
from dse.hardware import load_hardware
from dse.models import available_models, load_model

# the ideal device with the preset's NCCL step latencies: α_up = 0.6 µs (NVLink), α_out = 2.7 µs (IB)
IDEAL_LAT = dataclasses.replace(IDEAL, scale_up_latency_s=0.6e-6, scale_out_latency_s=2.7e-6)
P, P32, BW, B_UP, B_OUT = 312e12, 19.5e12, 2.039e12, 300e9, 25e9

GPT2 = parse_hf_config(
    {
        "model_type": "gpt2",
        "n_embd": 1024,
        "n_layer": 8,
        "n_head": 16,
        "vocab_size": 51200,
        "n_positions": 1024,
    }
)
H, L, V, SEQ = 1024, 8, 51200, 1024
GPT2_PARAMS = 154_249_216
JOB = TrainingJob(GPT2, SEQ)
PAD_TO = 48  # ops; every shipped model has fewer (T5-Small, unfused attention: 43)


def _padded(table: OpTable, n: int = PAD_TO) -> OpTable:
    """``table`` padded with idle ops to ``PAD_TO`` (see ``costmodel_helpers.padded``)."""
    return padded(table, n)


TABLE = _padded(JOB.table())


def _step(plan: Plan, hw=IDEAL, job: TrainingJob = JOB, table=None) -> TrainingBreakdown:
    return training_step(hw, job, plan, TABLE if table is None and job is JOB else table)


def _f(x) -> float:
    return float(np.asarray(x))


def _close(actual, expected, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, rtol=rtol, atol=0.0)


def _op_times(plan: Plan, hw=IDEAL, table=TABLE) -> tuple[np.ndarray, np.ndarray]:
    fwd, bwd = op_times(hw, "bf16", table, shard(table, plan, _f(plan.microbatch / plan.cp)))
    return np.asarray(fwd, dtype=float), np.asarray(bwd, dtype=float)


def _roofline_s(op, hw=IDEAL) -> float:
    """Ideal-device time of one workload op, from its own FLOPs and bytes: GEMMs and attention at the
    bf16 peak, elementwise / norm / embedding on the fp32 vector units; all at full HBM bandwidth."""
    peak = hw.peak_flops_fp32 if op.kind in ("elementwise", "norm", "embedding") else hw.peak_flops_bf16
    return max(op.flops / peak, op.bytes / hw.hbm_bandwidth_Bps)


def test_gpt2_parameter_count_by_hand():
    assert parameter_count(GPT2) == GPT2_PARAMS


def test_padding_the_op_table_changes_nothing():
    """Idle ops appended to the table (see ``_padded``) leave every output of the step bit-for-bit or to
    float rounding unchanged, for plans touching every code path that reads the table."""
    plan = make_plan(tp=4, pp=2, dp=2, global_batch=8, recompute="full", zero_stage=1, dp_overlap=0.3)
    raw = jax.tree_util.tree_leaves(training_step(A100, JOB, plan, JOB.table()))
    padded = jax.tree_util.tree_leaves(training_step(A100, JOB, plan, TABLE))
    for a, b in zip(raw, padded, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert len(TABLE.names) == PAD_TO and np.all(TABLE.layers[len(JOB.table().names) :] == 0)


# --------------------------------------------------------------------------------------------
# (a) one device, one micro-batch


def test_single_device_step_is_forward_plus_backward_plus_optimizer():
    """tp = pp = dp = 1, one micro-batch: compute = Σ_ops (fwd + bwd)·executions, summed here from the
    per-op times; no communication, no bubble, no recompute; step = compute + optimizer."""
    plan = make_plan()
    b = _step(plan)
    fwd, bwd = _op_times(plan)
    _close(b.compute_s, float(np.sum((fwd + bwd) * TABLE.layers)))
    for name in ("recompute_s", "tp_comm_s", "cp_comm_s", "ep_comm_s", "pp_comm_s", "dp_comm_s", "bubble_s"):
        assert _f(getattr(b, name)) == 0.0, name
    _close(b.step_time_s, _f(b.compute_s) + _f(b.optimizer_s), rtol=1e-6)
    _close(b.tokens_per_s, SEQ / _f(b.step_time_s))


def test_forward_time_is_the_roofline_of_the_workload_ops():
    """Independent of the op table: Σ over ``workload.forward_ops`` (with loss and dropout) of
    max(FLOPs/peak, bytes/B)·count on the ideal device equals the forward kernel time the model uses
    (every GEMM shape of this model is a multiple of the 128×256 tile: no padding)."""
    batch = Batch.training(1, SEQ, causal=True)
    ops = forward_ops(GPT2, batch, "bf16", fused_attention=True, with_loss=True, dropout=True)
    expected = sum(_roofline_s(op) * op.count for op in ops)
    fwd, _ = _op_times(make_plan())
    _close(float(np.sum(fwd * TABLE.layers)), expected)


def _backward_by_class(matmul: bool) -> tuple[float, float]:
    """(model backward time, roofline of ``workload.training_ops`` backward ops) summed over the ops
    of one class: GEMMs and attention (``matmul``) or elementwise / norm / embedding."""
    ops = training_ops(GPT2, 1, SEQ, "bf16", causal=True, fused_attention=True)
    _, bwd = _op_times(make_plan())
    model = workload = 0.0
    for i, name in enumerate(TABLE.names):
        if name == "idle":
            continue
        fwd_op = next(op for op in ops if op.name == name and op.phase == "fwd")
        if (fwd_op.kind in ("matmul", "attention")) != matmul:
            continue
        model += bwd[i] * TABLE.layers[i]
        workload += sum(
            _roofline_s(op) * op.count for op in ops if op.phase != "fwd" and op.name.startswith(name + ".")
        )
    return model, workload


def test_backward_gemm_and_attention_time_matches_workload_backward_ops():
    """GEMM backward = dgrad (2mnk FLOPs, reads W and dY, writes dX) + wgrad (2mnk + bias FLOPs, reads X
    and dY, writes dW); flash attention backward = 2.5× the forward FLOPs (compute-bound, scores
    recomputed). The model's backward of these ops equals the roofline of ``workload.training_ops``'
    backward ops."""
    model, workload = _backward_by_class(matmul=True)
    _close(model, workload)


def test_backward_elementwise_time_matches_workload_backward_ops():
    """Memory-bound backward kernels read the saved input x and dY and write dX: w + 2x + y bytes against
    the forward's w + x + y: 1.5× for a LayerNorm or GELU (x = y), 5/3 for a residual add (x = 2y),
    ≈ 2× for the cross-entropy (y = x/V). ``workload.training_ops`` counts them so; the model's
    backward of these ops is priced the same way."""
    model, workload = _backward_by_class(matmul=False)
    _close(model, workload, rtol=1e-3)


def test_optimizer_step_is_30_bytes_per_parameter():
    """Adam (mixed precision): read fp32 master, m, v, grad (16 B) and write master, m, v, bf16 weight
    (14 B) = 30 B per parameter, memory-bound: 30 · 154,249,216 / 2.039e12 = 2.2695 ms."""
    b = _step(make_plan())
    _close(b.optimizer_s, 30.0 * GPT2_PARAMS / BW, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# (b) pipeline bubble


def _stage_micro_s(plan: Plan) -> float:
    """One micro-batch on the slowest stage, summed here: the stage's ceil(L/pp) layers (fwd + bwd),
    the heavier edge (first stage: embeddings; last: final norm, LM head, loss) and the stage-boundary
    send/recv of the b·s·h·2 B activation forward and its gradient backward, once per chunk (vpp)."""
    fwd, bwd = _op_times(plan)
    pp, vpp, mb = _f(plan.pp), _f(plan.vpp), _f(plan.microbatch)
    layer = TABLE.group == GROUP_LAYER
    first, last = TABLE.group == GROUP_FIRST, TABLE.group == GROUP_LAST
    layers = math.ceil(L / pp)
    compute = float(np.sum((fwd + bwd)[layer])) * layers
    compute += max(fwd[first].sum(), fwd[last].sum()) + max(bwd[first].sum(), bwd[last].sum())
    p2p = 2.0 * vpp * mb * SEQ * H * 2.0 / B_UP  # α = 0 on the ideal device; neighbours share a node
    return compute + p2p


@pytest.mark.parametrize(("pp", "vpp"), [(4, 1), (4, 2), (2, 4)])
def test_pipeline_bubble_is_pp_minus_1_over_vpp_micro_batches(pp, vpp):
    """Narayanan et al. 2021, Sec. 2.2: with m micro-batches, p stages and v chunks per stage the step
    is (m + (p−1)/v)·t_mb, the bubble (p−1)/v·t_mb, a fraction (p−1)/(v·m) of the ideal m·t_mb.
    Global batch 8, micro-batch 1, dp 1: m = 8; (4, 1): 3/8, (4, 2): 3/16, (2, 4): 1/32."""
    plan = make_plan(pp=pp, vpp=vpp, global_batch=8)
    b = _step(plan)
    t_mb = _stage_micro_s(plan)
    m = 8
    _close(b.bubble_s, (pp - 1) / vpp * t_mb)
    _close(_f(b.bubble_s) / (m * t_mb), (pp - 1) / (vpp * m))
    _close(b.pp_comm_s, m * 2.0 * vpp * SEQ * H * 2.0 / B_UP)
    _close(b.step_time_s, (m + (pp - 1) / vpp) * t_mb + _f(b.optimizer_s))


def test_uneven_pipeline_stages_take_the_largest_stage():
    """8 layers on pp = 3 stages: the slowest holds ceil(8/3) = 3 layers (1F1B tolerates uneven stages),
    so a micro-batch costs 3 layers' fwd + bwd + the heavier edge, not 8/3 layers'. m = 3."""
    plan = make_plan(pp=3, global_batch=3)
    b = _step(plan)
    fwd, bwd = _op_times(plan)
    per_layer = float(np.sum((fwd + bwd)[TABLE.group == GROUP_LAYER]))
    first, last = TABLE.group == GROUP_FIRST, TABLE.group == GROUP_LAST
    edges = max(fwd[first].sum(), fwd[last].sum()) + max(bwd[first].sum(), bwd[last].sum())
    _close(b.compute_s, 3 * (3 * per_layer + edges))
    _close(_f(b.compute_s) + _f(b.pp_comm_s), 3 * _stage_micro_s(plan))


# --------------------------------------------------------------------------------------------
# (c) activation recomputation


def test_full_recompute_adds_exactly_the_layers_forward():
    """Full recomputation (Korthikanti et al. 2022) re-runs every layer's forward in the backward pass:
    with tp = 1 (no extra collectives) step(full) − step(none) = Σ_layer ops fwd · l."""
    fwd, _ = _op_times(make_plan())
    layers_fwd = float(np.sum(np.where(TABLE.group == GROUP_LAYER, fwd * TABLE.layers, 0.0)))
    none, full = _step(make_plan()), _step(make_plan(recompute="full"))
    _close(full.recompute_s, layers_fwd)
    _close(_f(full.step_time_s) - _f(none.step_time_s), layers_fwd, rtol=1e-4)
    assert _f(full.compute_s) == _f(none.compute_s)


def test_selective_recompute_adds_the_attention_core_only():
    """Selective recomputation (Korthikanti Sec. 5) re-runs the attention core: with a fused (flash)
    kernel that is the sdpa kernel's forward time × l; unfused it is QKᵀ, softmax, attention dropout
    and AV. Nothing else (no GEMM of the layer) is recomputed."""
    fwd, _ = _op_times(make_plan())
    sdpa = TABLE.names.index("attn.sdpa")
    _close(_step(make_plan(recompute="selective")).recompute_s, fwd[sdpa] * L)

    eager = TrainingJob(GPT2, SEQ, fused_attention=False)
    table = _padded(eager.table())
    core = ("attn.scores", "attn.softmax", "attn.dropout", "attn.av")
    assert set(core) <= set(table.names)
    fwd_e, _ = _op_times(make_plan(), table=table)
    expected = sum(fwd_e[table.names.index(n)] * L for n in core)
    _close(_step(make_plan(recompute="selective"), job=eager, table=table).recompute_s, expected)


# --------------------------------------------------------------------------------------------
# (d) tensor-parallel communication


def _ring_all_reduce(size: float, n: int, bw: float, alpha: float) -> float:
    """Ring all-reduce (Patarasuk & Yuan 2009): 2(n−1)/n · S/B + 2(n−1)·α."""
    return 2 * (n - 1) / n * size / bw + 2 * (n - 1) * alpha


@pytest.mark.parametrize(("recompute", "passes"), [("none", 2), ("full", 3)])
def test_tp_comm_is_two_all_reduces_per_layer_and_pass(recompute, passes):
    """Megatron TP (Shoeybi et al. 2019): one all-reduce after attention and one after the MLP in the
    forward pass, the same two in the backward pass, and again in a fully recomputed forward. Each
    reduces the b·s·h·2 B = 1·1024·1024·2 = 2 MiB activation over tp = 8 GPUs of one NVLink domain:
    2·7/8·2097152/300e9 + 2·7·0.6 µs = 12.23 + 8.4 = 20.63 µs; × 2 blocks × passes × 8 layers."""
    plan = make_plan(tp=8, recompute=recompute)
    b = _step(plan, hw=IDEAL_LAT)
    size = 1 * SEQ * H * 2.0
    per = _ring_all_reduce(size, 8, B_UP, 0.6e-6)
    _close(per, 20.6329e-6, rtol=1e-4)
    _close(b.tp_comm_s, 2 * passes * L * per)


def test_sequence_parallel_moves_the_same_bytes_as_reduce_scatter_plus_all_gather():
    """Korthikanti Sec. 4.2.2: with sequence parallelism each all-reduce becomes a reduce-scatter and an
    all-gather of the same buffer: (n−1)/n·S/B + (n−1)α each, i.e. the same total as the ring all-reduce
    on one tier. Two micro-batch sequences double the buffer (4 MiB)."""
    size = 2 * SEQ * H * 2.0
    rs_ag = 2 * ((8 - 1) / 8 * size / B_UP + (8 - 1) * 0.6e-6)
    plan_sp = make_plan(tp=8, sequence_parallel=1, microbatch=2, global_batch=2)
    b_sp, b_ar = (
        _step(plan_sp, hw=IDEAL_LAT),
        _step(make_plan(tp=8, microbatch=2, global_batch=2), hw=IDEAL_LAT),
    )
    _close(b_sp.tp_comm_s, 2 * 2 * L * rs_ag)
    _close(b_sp.tp_comm_s, b_ar.tp_comm_s)
    assert _f(b_sp.compute_s) < _f(b_ar.compute_s)  # norms, dropout, residual adds split 8 ways


def test_tp_overlap_hides_that_fraction_of_the_collectives():
    full = _f(_step(make_plan(tp=8), hw=IDEAL_LAT).tp_comm_s)
    _close(_step(make_plan(tp=8, tp_overlap=0.75), hw=IDEAL_LAT).tp_comm_s, 0.25 * full)


# --------------------------------------------------------------------------------------------
# (e) data-parallel gradient reduction


# Gradients and optimizer states count the stage's parameters (memory.stage_parameters), tables and all.
JOB512 = TrainingJob(GPT2, 512)
TABLE512 = _padded(JOB512.table())


def _dp(plan: Plan, hw=IDEAL) -> TrainingBreakdown:
    return training_step(hw, JOB512, plan, TABLE512)


def test_dp_all_reduce_inside_one_node():
    """dp = 8 in one NVLink domain: ring all-reduce of the fp32 gradients, 4 B · 154,249,216 =
    617.0 MB: 2·7/8·616.997e6/300e9 = 3.5991 ms (α = 0)."""
    grads = 4.0 * GPT2_PARAMS
    _close(_dp(make_plan(dp=8, global_batch=8)).dp_comm_s, _ring_all_reduce(grads, 8, B_UP, 0.0))
    _close(_ring_all_reduce(grads, 8, B_UP, 0.0), 3.5991e-3, rtol=1e-4)


def _hierarchical_all_reduce(size: float, a_up: float, a_out: float) -> float:
    """dp = 16 = 2 nodes × 8 (tp = 1, stride 1): NVLink reduce-scatter of S, IB all-reduce of S/8 between
    the 2 nodes (one NIC per GPU, all rails in parallel), NVLink all-gather of S (Mikami et al. 2018):
    (7/8·S/B_up + 7·α_up) + (2·1/2·(S/8)/B_out + 2·α_out) + (7/8·S/B_up + 7·α_up)."""
    return 2 * (7 / 8 * size / B_UP + 7 * a_up) + (2 * 1 / 2 * (size / 8) / B_OUT + 2 * a_out)


def test_dp_all_reduce_across_nodes_is_hierarchical():
    """S = 4 B · 154,249,216 = 617.0 MB: 2·7/8·S/300e9 + S/8/25e9 = 3.5991 + 3.0850 = 6.6841 ms."""
    expected = _hierarchical_all_reduce(4.0 * GPT2_PARAMS, 0.0, 0.0)
    _close(_dp(make_plan(dp=16, global_batch=16)).dp_comm_s, expected)
    _close(expected, 6.6841e-3, rtol=1e-4)


def test_dp_all_reduce_latency_is_paid_once_by_a_dense_model():
    """With the preset's step latencies α_up = 0.6 µs, α_out = 2.7 µs the hierarchical all-reduce adds
    14·α_up + 2·α_out = 13.8 µs to the 6.6841 ms: 6.6979 ms. A dense model has no expert gradients to
    reduce, so nothing else is added."""
    expected = _hierarchical_all_reduce(4.0 * GPT2_PARAMS, 0.6e-6, 2.7e-6)
    _close(_dp(make_plan(dp=16, global_batch=16), hw=IDEAL_LAT).dp_comm_s, expected)


def test_dp_gradients_are_divided_by_tp():
    """tp = 8 (one node) × dp = 2: each GPU reduces its shard with its peer in the other node (stride 8 =
    a whole domain: flat over IB). Its shard, by hand (Megatron: the TP-split weights and biases /8, the
    row-parallel biases, LayerNorms and learned positions replicated, the token embedding vocab-parallel):
    per layer (12h² + 7h)/8 + 6h = 1,579,904; ×8 layers + V·h/8 + 1024·h + final LN 2h = 20,243,456
    parameters → all-reduce of 4 B each over 2 GPUs: 2·1/2·80.97e6/25e9 = 3.239 ms."""
    shard = 8 * ((12 * H * H + 7 * H) // 8 + 6 * H) + V * H // 8 + 1024 * H + 2 * H
    assert shard == 20_243_456
    s = 4.0 * shard
    _close(_dp(make_plan(tp=8, dp=2, global_batch=2)).dp_comm_s, _ring_all_reduce(s, 2, B_OUT, 0.0))
    _close(_ring_all_reduce(s, 2, B_OUT, 0.0), 3.2390e-3, rtol=1e-4)


def test_dp_gradients_with_pp_are_those_of_the_largest_stage():
    """pp = 2 × dp = 2 (tp = 1, dp stride 1: NVLink): stage 1 holds 4 layers + token embedding V·h +
    positions 1024·h = 50,384,896 + 52,428,800 + 1,048,576 = 103,862,272 parameters, stage 2 4 layers +
    the tied embedding's copy for the LM head V·h + final norm 2048 = 102,815,744. The step waits for the
    larger: all-reduce of 4 B · 103,862,272 over 2 GPUs = 415.4 MB / 300e9 = 1.385 ms."""
    first = 4 * 12_596_224 + V * H + 1024 * H
    assert first == 103_862_272
    expected = _ring_all_reduce(4.0 * first, 2, B_UP, 0.0)
    _close(_dp(make_plan(pp=2, dp=2, global_batch=4)).dp_comm_s, expected, rtol=1e-6)


def test_zero1_is_reduce_scatter_of_fp32_grads_plus_all_gather_of_bf16_weights():
    """ZeRO ≥ 1 (Megatron distributed optimizer): reduce-scatter the 4-B gradients, all-gather the 2-B
    updated weights. Hierarchical over 2 nodes × 8: RS = 7/8·S/B_up + 1/2·(S/8)/B_out with S = 4·params,
    AG = 1/2·(S'/8)/B_out + 7/8·S'/B_up with S' = 2·params. On the ideal device (α = 0) that is exactly
    3/4 of the ZeRO-0 all-reduce. The optimizer updates 1/dp of the parameters."""
    s, s_w = 4.0 * GPT2_PARAMS, 2.0 * GPT2_PARAMS
    rs = 7 / 8 * s / B_UP + 1 / 2 * (s / 8) / B_OUT
    ag = 1 / 2 * (s_w / 8) / B_OUT + 7 / 8 * s_w / B_UP
    z0, z1 = _dp(make_plan(dp=16, global_batch=16)), _dp(make_plan(dp=16, global_batch=16, zero_stage=1))
    _close(z1.dp_comm_s, rs + ag)
    _close(_f(z1.dp_comm_s) / _f(z0.dp_comm_s), 0.75)
    _close(_f(z1.optimizer_s) * 16, z0.optimizer_s)


def test_dp_overlap_hides_reduction_behind_the_backward_pass():
    """exposed = max(t_dp − overlap · (m · backward), 0): overlap 0.5 with m = 1 removes half the
    backward time from the 3.6 ms reduction; overlap 1 with m = 32 micro-batches hides it fully."""
    plan = make_plan(dp=8, global_batch=8)
    _, bwd = op_times(IDEAL, "bf16", TABLE512, shard(TABLE512, plan, 1.0))
    backward = float(np.sum(np.asarray(bwd) * TABLE512.layers))
    t_dp = _f(_dp(plan).dp_comm_s)
    assert t_dp > 0.5 * backward  # the reduction is longer than half the backward pass
    _close(_dp(make_plan(dp=8, global_batch=8, dp_overlap=0.5)).dp_comm_s, t_dp - 0.5 * backward)
    assert _f(_dp(make_plan(dp=8, global_batch=256, dp_overlap=1.0)).dp_comm_s) == 0.0


# --------------------------------------------------------------------------------------------
# (f) MFU / HFU


def _megatron_flops(s: int, layers: int, h: int, vocab: int) -> float:
    """Narayanan et al. 2021, Eq. 3 without the recompute term: 72·s·l·h²·(1 + s/(6h) + V/(12·l·h))."""
    return 72.0 * s * layers * h * h * (1.0 + s / (6.0 * h) + vocab / (12.0 * layers * h))


def _causal_flops(s: int, layers: int, h: int, vocab: int) -> float:
    """The same with causal attention ((s+1)/2 keys per query): 72·s·l·h²·(1 + (s+1)/(12h) + V/(12·l·h))."""
    return 72.0 * s * layers * h * h * (1.0 + (s + 1) / (12.0 * h) + vocab / (12.0 * layers * h))


def test_model_flops_equal_the_megatron_formula():
    """For this GPT-2: 72·1024·8·1024²·(1 + 1/6 + 51200/98304) = 6.1848e11 · 1.6875 = 1.04368e12 with
    full-square attention, and 6.1848e11 · (1 + 1025/12288 + 51200/98304) = 9.9219e11 with causal
    attention (the default). Also for every shipped GPT-2-type model (plain 4h MLP, multi-head attention)."""
    _close(model_flops_per_sequence(GPT2, SEQ, attention="full"), _megatron_flops(SEQ, L, H, V), rtol=1e-12)
    _close(_megatron_flops(SEQ, L, H, V), 1.0436770e12, rtol=1e-7)
    _close(model_flops_per_sequence(GPT2, SEQ), _causal_flops(SEQ, L, H, V), rtol=1e-12)
    for name in ("gpt3_175b", "megatron_gpt_22b", "megatron_gpt_175b"):
        spec = load_model(name)
        assert spec.model_type == "gpt2" and spec.intermediate_size == 4 * spec.hidden_size
        expected = _megatron_flops(2048, spec.num_layers, spec.hidden_size, spec.vocab_size)
        _close(model_flops_per_sequence(spec, 2048, attention="full"), expected, rtol=1e-12)
        causal = _causal_flops(2048, spec.num_layers, spec.hidden_size, spec.vocab_size)
        _close(model_flops_per_sequence(spec, 2048), causal, rtol=1e-12)


def test_mfu_is_model_flops_over_time_devices_peak():
    """tp 2 × dp 4 = 8 GPUs, global batch 16, micro-batch 2 (m = 2): MFU = 16·F/(step·8·312e12), F
    the causal model FLOPs."""
    plan = make_plan(tp=2, dp=4, microbatch=2, global_batch=16)
    b = _step(plan)
    expected = 16 * _causal_flops(SEQ, L, H, V) / (_f(b.step_time_s) * 8 * P)
    _close(b.mfu, expected)
    assert 0.0 < _f(b.mfu) < 1.0


def test_hfu_adds_the_recomputed_forward():
    """Full recompute re-runs the layers' forward: per sequence 24·s·h²·l (GEMMs) + 2·s·(s+1)·h·l
    (causal attention) = (24 + 2·1025/1024)·s·h²·l at s = h = 1024, against model FLOPs
    (72 + 6·1025/1024 + 6V/(l·h))·s·h²·l = (78.006 + 37.5)·s·h²·l: HFU/MFU = 1 + 26.002/115.506.
    Selective adds the attention core only, 2·s·(s+1)·h·l: 1 + 2.002/115.506."""
    full, selective = _step(make_plan(recompute="full")), _step(make_plan(recompute="selective"))
    attention = 2.0 * (SEQ + 1) / H
    model = 72.0 + 3.0 * attention + 6.0 * V / (L * H)
    _close(_f(full.hfu) / _f(full.mfu), 1.0 + (24.0 + attention) / model)
    _close(_f(selective.hfu) / _f(selective.mfu), 1.0 + attention / model)
    none = _step(make_plan())
    assert _f(none.hfu) == _f(none.mfu)


def test_hfu_over_mfu_tends_to_four_thirds_for_large_models():
    """Megatron's 96·B·s·l·h²(…) with recompute = 4/3 × the 72·B·s·l·h²(…) without it, for a large h
    (GPT-3 175B: h = 12288, s = 2048, the LM head is 0.3 % of the FLOPs): 1 + 1/3 · 0.9966."""
    spec = load_model("gpt3_175b")
    ratio = recompute_flops_per_sequence(spec, 2048, "full") / model_flops_per_sequence(spec, 2048)
    assert 1.0 + ratio == pytest.approx(4.0 / 3.0, rel=3e-3)
    assert 1.0 + ratio < 4.0 / 3.0


# --------------------------------------------------------------------------------------------
# (g) vmap over plans, no recompilation under jit

PLANS = [
    make_plan(),
    make_plan(tp=2, pp=2, dp=2, microbatch=2, global_batch=16),
    make_plan(tp=8, sequence_parallel=1, recompute="full", global_batch=4),
    make_plan(pp=4, vpp=2, global_batch=8, recompute="selective"),
    make_plan(dp=16, global_batch=32, zero_stage=1, dp_overlap=0.5),
    make_plan(dp=16, global_batch=16, zero_stage=3),
]


def _stack(plans: list[Plan]) -> Plan:
    return jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v, float) for v in x]), *plans)


def test_vmap_over_plans_equals_per_plan_calls():
    """One vmapped call over six stacked plans (TP, PP, VPP, SP, recompute, ZeRO 1 and 3, DP overlap) on
    the A100 preset gives, leaf by leaf (times, MFU, memory), what six separate calls give."""
    batched = jax.jit(jax.vmap(lambda plan: _step(plan, hw=A100)))(_stack(PLANS))
    paths_and_leaves = jax.tree_util.tree_leaves_with_path(batched)
    for i, plan in enumerate(PLANS):
        single = jax.tree_util.tree_leaves(_step(plan, hw=A100))
        assert len(single) == len(paths_and_leaves)
        for (path, stacked), leaf in zip(paths_and_leaves, single, strict=True):
            np.testing.assert_allclose(
                np.asarray(stacked)[i], np.asarray(leaf), rtol=2e-5, err_msg=f"plan {i} {path}"
            )


def test_jit_does_not_recompile_for_new_plan_or_hardware_values():
    traces = []

    @jax.jit
    def step_time(hw, plan):
        traces.append(1)  # runs only while tracing
        return training_step(hw, JOB, plan, TABLE).step_time_s

    a = step_time(A100, PLANS[1])
    b = step_time(A100, PLANS[2])
    c = step_time(dataclasses.replace(A100, hbm_bandwidth_Bps=3e12), PLANS[2])
    assert len(traces) == 1
    _close(a, _step(PLANS[1], hw=A100).step_time_s)
    _close(b, _step(PLANS[2], hw=A100).step_time_s)
    assert _f(c) < _f(b)


# --------------------------------------------------------------------------------------------
# (h) gradients with respect to hardware knobs


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@functools.cache
def _jitted_step_time():
    """(step time, its gradient w.r.t. the hardware) of (hardware, plan), jitted once (x64 callers)."""

    def step_time(hw, plan):
        return training_step(hw, JOB, plan, TABLE).step_time_s

    return jax.jit(jax.value_and_grad(step_time))


GRAD_CASES = [
    # (plan, knobs): tp = 8 in one node exercises NVLink; dp = 16 over two nodes also IB
    (dict(tp=8, global_batch=4), ("hbm_bandwidth_Bps", "peak_flops_bf16", "scale_up_bandwidth_Bps")),
    (
        dict(dp=16, global_batch=32),
        ("hbm_bandwidth_Bps", "peak_flops_bf16", "scale_up_bandwidth_Bps", "scale_out_bandwidth_Bps"),
    ),
]


@pytest.mark.parametrize(("plan_kwargs", "knobs"), GRAD_CASES)
def test_grad_of_step_time_matches_central_difference(x64, plan_kwargs, knobs):
    """The A100 preset (real efficiencies, 11.4 µs overheads, 108 SMs): no op sits on a roof kink,
    so d step / d knob equals (f(x(1+ε)) − f(x(1−ε)))/(2εx), ε = 1e-4, within 1e-3; every derivative
    is negative (more bandwidth or FLOP/s → a shorter step)."""
    plan = make_plan(**plan_kwargs)
    f = _jitted_step_time()
    _, grads = f(A100, plan)
    eps = 1e-4
    for knob in knobs:
        x = getattr(A100, knob)
        up = _f(f(dataclasses.replace(A100, **{knob: x * (1 + eps)}), plan)[0])
        down = _f(f(dataclasses.replace(A100, **{knob: x * (1 - eps)}), plan)[0])
        fd = (up - down) / (2 * eps * x)
        g = _f(getattr(grads, knob))
        assert np.isfinite(g) and g < 0.0, knob
        assert g == pytest.approx(fd, rel=1e-3), knob


# --------------------------------------------------------------------------------------------
# (i) every shipped model × hardware presets

PRESETS = [load_hardware(n) for n in ("a100_80gb_sxm", "h100_sxm", "mi300x", "tpu_v5p")]


def _smallest_tp(spec) -> int:
    """The smallest tp > 1 that divides the attention heads (and the KV heads where they are >= tp)
    and the state-space heads and B/C groups, where the model has them."""
    ssm = math.gcd(spec.ssm.heads, spec.ssm.groups) if spec.ssm is not None else 0
    for tp in range(2, max(spec.num_heads, ssm) + 1):
        heads = spec.num_heads % tp == 0 and (spec.num_kv_heads < tp or spec.num_kv_heads % tp == 0)
        if heads and ssm % tp == 0:
            return tp
    raise AssertionError(spec)


@pytest.mark.parametrize("name", available_models())
def test_every_shipped_model_on_every_preset_is_finite(name):
    """tp = 1 and the smallest tp > 1 dividing the heads; pp = dp = 1, micro-batch 1, s = 512, bf16
    (TPU v5p has no fp16): the plans are valid and step time, MFU and memory are finite and positive."""
    spec = load_model(name)
    job = TrainingJob(spec, 512)
    table = _padded(job.table())
    for tp in (1, _smallest_tp(spec)):
        plan = make_plan(tp=tp)
        check_plan(plan, spec, num_devices=tp, seq_len=512)
        for hw in PRESETS:
            b = training_step(hw, job, plan, table)
            for path, leaf in jax.tree_util.tree_leaves_with_path(b):
                assert np.all(np.isfinite(np.asarray(leaf))), (name, tp, hw.name, path)
            assert _f(b.step_time_s) > 0 and _f(b.memory.total_bytes) > 0, (name, tp, hw.name)
            assert 0 < _f(b.mfu) < 1 and _f(b.hfu) >= _f(b.mfu), (name, tp, hw.name)
            assert _f(b.step_time_s) >= _f(b.compute_s) + _f(b.optimizer_s) * (1 - 1e-6)


# --------------------------------------------------------------------------------------------
# (j) check_plan


@pytest.mark.parametrize(
    ("kwargs", "devices", "match"),
    [
        (dict(tp=2, dp=2, global_batch=2), 8, r"num_devices = 8"),
        (dict(tp=3, dp=1), 3, r"tp = 3 does not divide num_attention_heads = 16"),
        (dict(dp=2, ep=2, global_batch=2), 2, r"ep = 2 but gpt2 has no experts"),
        (dict(sequence_parallel=1), 1, r"sequence_parallel needs tp > 1"),
        (dict(vpp=2), 1, r"vpp > 1 .* needs pp > 1"),
        (dict(tp=0), 0, r"parallelism\.tp must be a positive integer, got 0"),
        (dict(pp=-2), -2, r"parallelism\.pp must be a positive integer, got -2"),
        (dict(dp=1.5), 1, r"parallelism\.dp must be a positive integer, got 1\.5"),
        (dict(microbatch=0), 1, r"parallelism\.microbatch must be a positive integer"),
        (dict(dp=2, global_batch=3), 2, r"dp·microbatch = 2 does not divide global_batch = 3"),
        (dict(pp=16), 16, r"pp·vpp = 16·1 = 16 pipeline chunks but the model has 8 layers"),
        (dict(zero_stage=4), 1, r"zero_stage must be 0, 1, 2 or 3"),
        (dict(tp_overlap=1.5), 1, r"parallelism\.tp_overlap is a fraction"),
    ],
)
def test_check_plan_rejects_bad_plans_naming_the_field(kwargs, devices, match):
    with pytest.raises(ConfigError, match=match):
        check_plan(make_plan(**kwargs), GPT2, num_devices=devices, seq_len=SEQ)


def test_check_plan_accepts_valid_plans_and_make_plan_names_unknown_options():
    check_plan(make_plan(tp=8, pp=2, dp=4, global_batch=64, sequence_parallel=1), GPT2, 64, SEQ)
    check_plan(make_plan(pp=2, vpp=4, global_batch=8), GPT2, 2, SEQ)
    with pytest.raises(ConfigError, match=r"unknown parallelism option.*tensor_parallel"):
        make_plan(tensor_parallel=2)
    with pytest.raises(ConfigError, match="recompute must be one of"):
        make_plan(recompute="some")


# --------------------------------------------------------------------------------------------
# (k) mixture of experts

MIXTRAL = load_model("mixtral_8x7b")
EXPERT_PARAMS = 32 * 8 * 3 * 4096 * 14336  # layers · experts · (gate, up, down) · h · expert width


def test_expert_parallelism_all_to_all_and_expert_weight_memory():
    """Mixtral 8x7B, s = 512, dp = 2: ep = 2 shards the 8 experts over the two data-parallel GPUs.
    Token dispatch + combine: 2 all-to-alls forward, 2 backward per MoE layer, each of the top-2 routed
    copies b·s·k·h·2 B = 512·2·4096·2 = 8 MiB, over 2 GPUs on NVLink (stride tp·cp = 1):
    (2−1)/2·8388608/300e9 = 13.98 µs; × 4 × 32 layers = 1.790 ms. ep = 1: no all-to-all.
    Memory: expert parameters 32·8·3·4096·14336 = 45,097,156,608 per replica; ep = 2 holds half of
    them: weights (2 B), gradients (4 B) and Adam states (12 B) each drop by that many bytes × E/2."""
    job = TrainingJob(MIXTRAL, 512)
    table = _padded(job.table())
    ep1, ep2 = make_plan(dp=2, global_batch=2), make_plan(dp=2, ep=2, global_batch=2)
    check_plan(ep2, MIXTRAL, num_devices=2, seq_len=512)
    b1, b2 = training_step(IDEAL, job, ep1, table), training_step(IDEAL, job, ep2, table)
    assert _f(b1.ep_comm_s) == 0.0
    _close(b2.ep_comm_s, 4 * 32 * (1 / 2) * 512 * 2 * 4096 * 2 / B_UP)
    assert EXPERT_PARAMS == 45_097_156_608
    for field, per_param in (("weights_bytes", 2.0), ("gradients_bytes", 4.0), ("optimizer_bytes", 12.0)):
        drop = _f(getattr(b1.memory, field)) - _f(getattr(b2.memory, field))
        _close(drop, per_param * EXPERT_PARAMS / 2, rtol=1e-5)
    mem1 = training_memory(MIXTRAL, ep1, 512, IDEAL)
    _close(mem1.weights_bytes, b1.memory.weights_bytes)


# --------------------------------------------------------------------------------------------
# weight streaming


def _streaming(host_bw: float, broadcast: float = 1.0, **plan: float) -> TrainingBreakdown:
    hw = dataclasses.replace(
        IDEAL, host_bandwidth_Bps=host_bw, host_memory_bytes=1e12, host_broadcast_devices=broadcast
    )
    return _step(make_plan(weight_streaming=1, **plan), hw=hw)


def test_weight_streaming_exposes_what_the_compute_does_not_hide():
    """One device, m = 4 micro-batches: per micro-batch the weights come in twice (bf16, 2 B) and the
    fp32 gradients go out once (4 B): 154,249,216 · 8 B = 1.234 GB. At 1 GB/s that is 1.234 s against
    a micro-batch's compute c, so the step is 4·max(1.234 s, c) + nothing for DP or the optimizer
    (the external memory reduces and updates); at 1 PB/s the stream hides entirely."""
    volume = GPT2_PARAMS * 8.0
    slow = _streaming(1e9, global_batch=4)
    c = _f(slow.compute_s) / 4
    assert volume / 1e9 > c
    _close(slow.stream_s, 4 * (volume / 1e9 - c))
    _close(slow.step_time_s, 4 * volume / 1e9, rtol=1e-5)
    assert _f(slow.optimizer_s) == 0.0 and _f(slow.dp_comm_s) == 0.0
    fast = _streaming(1e15, global_batch=4)
    assert _f(fast.stream_s) == 0.0
    _close(fast.step_time_s, _f(fast.compute_s), rtol=1e-6)


def test_weight_streaming_broadcast_is_shared_by_the_replicas_behind_one_link():
    """8 devices behind one broadcast link, tp = 2, dp = 4: each tp shard (77.1 M params + the
    replicated norms/biases) is streamed once for its 4 replicas, so the per-device time is the private
    link's divided by r = 8 / (tp·pp) = 4, capped at dp·cp."""
    private = _streaming(1e9, tp=2, dp=4, global_batch=16)
    shared = _streaming(1e9, broadcast=8.0, tp=2, dp=4, global_batch=16)
    c = _f(private.compute_s) / 4
    _close(shared.stream_s + 4 * c, (_f(private.stream_s) + 4 * c) / 4, rtol=1e-5)
    capped = _streaming(1e9, broadcast=64.0, tp=2, dp=4, global_batch=16)  # r = min(32, dp·cp = 4)
    _close(capped.stream_s, shared.stream_s)


def test_weight_streaming_keeps_two_layers_on_the_device_and_the_state_outside():
    """Memory: weights and fp32 gradients of the running and the prefetched layer (2 · 12,596,224
    params · 2 B and · 4 B); no optimizer state on the device. One copy of the whole state, 2 + 4 + 12
    = 18 B per parameter (bf16 weight, fp32 gradient, Adam master + moments), is in external memory;
    this device's share is 1/(dp·cp) of it. A host smaller than that share is infeasible."""
    hw = dataclasses.replace(IDEAL, host_bandwidth_Bps=1e9, host_memory_bytes=1e12)
    plan = make_plan(weight_streaming=1, dp=2, global_batch=2)
    mem = training_memory(GPT2, plan, SEQ, hw, "bf16", "adam")
    layer = 12_596_224
    _close(mem.weights_bytes, 2 * layer * 2.0)
    _close(mem.gradients_bytes, 2 * layer * 4.0)
    assert _f(mem.optimizer_bytes) == 0.0
    _close(mem.offloaded_bytes, 18.0 * GPT2_PARAMS / 2)
    small_host = dataclasses.replace(hw, host_memory_bytes=1e9)
    assert not bool(training_memory(GPT2, plan, SEQ, small_host, "bf16", "adam").feasible)


@pytest.mark.parametrize(
    "plan",
    [
        {},
        {"tp": 2, "pp": 2, "dp": 2, "vpp": 2, "global_batch": 16, "recompute": 2, "dp_overlap": 0.5},
        {"dp": 4, "zero_stage": 3, "global_batch": 8},
        {"weight_streaming": 1, "global_batch": 4},
    ],
    ids=["single", "3d", "zero3", "streaming"],
)
def test_time_fields_add_up_to_the_step(plan: dict) -> None:
    """``TIME_FIELDS`` is what reports and plots show as the breakdown: it must sum to the step."""
    hw = dataclasses.replace(IDEAL, host_bandwidth_Bps=1e9, host_memory_bytes=1e12)
    b = _step(make_plan(**plan), hw=hw)
    _close(sum(_f(getattr(b, k)) for k in TIME_FIELDS), b.step_time_s, rtol=1e-5)


def test_ulysses_context_parallelism_by_hand():
    """Llama-3-8B (32 heads of 128, 8 KV heads), 32,768 tokens, tp 2, cp 4 on one H100 node, bf16:
    each all-to-all over the 4 cp ranks (inside the node) carries S = 32768/4 tokens · 2 B / tp 2 ·
    width: Q,K,V (32 + 2·8)·128 = 6,144 → 50,331,648 B, the output 32·128 = 4,096 → 33,554,432 B;
    ring all-to-all of 4: 3α + 3/4·S/B, plus one library call each. Forward and backward: ×2, full
    recomputation ×3; 32 layers on one stage. Ring CP prices its K,V passing instead; a head count
    tp·cp does not divide is the rule's error."""
    from costmodels.network import Link, all_to_all_time_s
    from dse.hardware import load_hardware
    from dse.models import load_model

    hw, spec = load_hardware("h100_sxm"), load_model("llama3_8b")
    job = TrainingJob(spec, 32768, "bf16", True, "adam")
    link = Link(hw.scale_up_bandwidth_Bps, hw.scale_up_latency_s, hw.collective_efficiency)
    a2a = [all_to_all_time_s(s, 4, link) + hw.collective_base_latency_s for s in (50_331_648, 33_554_432)]
    per_layer = float(sum(a2a))
    for recompute, passes in ((0, 2.0), (2, 3.0)):
        plan = make_plan(tp=2, cp=4, global_batch=1, cp_a2a=1, recompute=recompute)
        got = float(training_step(hw, job, plan).cp_comm_s)
        assert got == pytest.approx(passes * per_layer * 32, rel=1e-5)
    ring = float(training_step(hw, job, make_plan(tp=2, cp=4, global_batch=1)).cp_comm_s)
    assert ring != pytest.approx(2 * per_layer * 32)
    with pytest.raises(ConfigError, match=r"cp_a2a \(Ulysses\) splits the attention heads over tp·cp = 24"):
        check_plan(make_plan(tp=8, cp=3, global_batch=1, cp_a2a=1), spec, 24, 32760)
