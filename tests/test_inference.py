"""Tests for costmodels.inference: TTFT, TPOT, end-to-end latency and throughput derived by hand.

Unless a test says otherwise:

* the device is the A100 80GB SXM preset made an *ideal roofline* (every efficiency 1, no kernel
  overhead, no latencies, no wave quantization): P = 312e12 FLOP/s (fp16), fp32 vector peak 19.5e12,
  B = 2.039e12 B/s HBM, NVLink B_up = 300e9 B/s, host link 32e9 B/s;
* the model is Llama-2-7B in fp16 (h = 4096, 32 layers, 32 heads of 128, no GQA, SwiGLU width 11008,
  V = 32000, untied head; 6,738,415,616 parameters), batch 1, a 2048-token prompt and 129 output
  tokens: the mean decode step has 2048 + (129 − 1)/2 = 2112 tokens cached and attends 2113 keys.

A decode step at batch 1 reads every weight once except the token embedding, of which it gathers
one row: (6,738,415,616 − 32000·4096 + 4096)·2 B = 13,214,695,424 B; and the KV cache of the 2113 keys,
32 layers · 2·4096 elements · 2 B · 2113 = 1,107,820,544 B.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from costmodel_helpers import A100, IDEAL, padded

from costmodels.inference import ENGINES, InferenceJob, inference_step
from costmodels.sharding import OpTable
from costmodels.workload import inference_ops, parameter_count
from dse.hardware import load_hardware
from dse.models import available_models, load_model

IDEAL_LAT = dataclasses.replace(IDEAL, scale_up_latency_s=0.6e-6)  # the preset's NVLink step latency
P, P32, BW, B_UP, HOST = 312e12, 19.5e12, 2.039e12, 300e9, 32e9

LLAMA = load_model("llama2_7b")
LLAMA_PARAMS = 6_738_415_616
INPUT, OUTPUT, CACHED = 2048, 129, 2112
WEIGHT_READ = (LLAMA_PARAMS - 32000 * 4096 + 4096) * 2
KV_READ = 32 * 2 * 4096 * 2 * (CACHED + 1)
PAD_TO = 40  # ops; every shipped model has fewer (T5-Small's prefill: 33)


def _padded(table: OpTable, n: int = PAD_TO) -> OpTable:
    """``table`` padded with idle ops to ``PAD_TO`` (see ``costmodel_helpers.padded``)."""
    return padded(table, n)


@functools.cache
def _tables(job: InferenceJob) -> tuple[OpTable, OpTable]:
    prefill, decode = job.tables()
    return _padded(prefill), _padded(decode)


JOB = InferenceJob(LLAMA, INPUT, OUTPUT)


def _run(hw=IDEAL, job: InferenceJob = JOB, tp=1.0, pp=1.0, batch=1.0, **kwargs):
    return inference_step(hw, job, tp, pp, batch, tables=_tables(job), **kwargs)


def _f(x) -> float:
    return float(np.asarray(x))


def _close(actual, expected, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, rtol=rtol, atol=0.0)


def _roofline_s(op, hw=IDEAL) -> float:
    """Ideal-device time of one workload op: GEMMs and attention at the fp16 peak, elementwise / norm /
    embedding on the fp32 vector units, all at full HBM bandwidth."""
    peak = hw.peak_flops_fp32 if op.kind in ("elementwise", "norm", "embedding") else hw.peak_flops_fp16
    return max(op.flops / peak, op.bytes / hw.hbm_bandwidth_Bps)


def test_hand_counts():
    assert parameter_count(LLAMA) == LLAMA_PARAMS
    assert JOB.mean_context == CACHED
    assert WEIGHT_READ == 13_214_695_424 and KV_READ == 1_107_820_544


def test_padding_the_op_tables_changes_nothing():
    raw = inference_step(A100, JOB, 2.0, 1.0, 4.0, tables=JOB.tables())
    padded = inference_step(A100, JOB, 2.0, 1.0, 4.0, tables=_tables(JOB))
    for a, b in zip(jax.tree_util.tree_leaves(raw), jax.tree_util.tree_leaves(padded), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Decode: memory-bound


def test_decode_tpot_is_bytes_over_bandwidth():
    """Batch-1 decode is memory-bound in every kernel: TPOT = Σ bytes / B over the step's workload ops
    (``workload.inference_ops`` with 2112 cached tokens and 1 new, fused attention), and that is the
    weights read + the KV cache read + a few MB of activations:
    (13,214,695,424 + 1,107,820,544) / 2.039e12 = 7.024 ms, within 1 % of the model's 7.029 ms."""
    ops = inference_ops(LLAMA, [CACHED], [1], "fp16", fused_attention=True)
    assert all(_roofline_s(op) == op.bytes / IDEAL.hbm_bandwidth_Bps for op in ops)  # all on the memory roof
    total_bytes = sum(op.bytes * op.count for op in ops)
    b = _run()
    _close(b.tpot_s, total_bytes / BW)
    _close(b.tpot_s, (WEIGHT_READ + KV_READ) / BW, rtol=1e-2)
    assert 0 < total_bytes - WEIGHT_READ - KV_READ < 0.01 * total_bytes  # activations: small
    assert _f(b.decode_comm_s) == 0.0 and _f(b.offload_s) == 0.0


def test_decode_reads_the_weights_once_per_batch_and_the_kv_cache_per_sequence():
    """Batch 8: the weights are read once, the KV cache of each of the 8 sequences once:
    TPOT ≈ (13.21e9 + 8 · 1.108e9) / 2.039e12 = 10.83 ms, within 1 % (activations 8× too)."""
    _close(_run(batch=8.0).tpot_s, (WEIGHT_READ + 8 * KV_READ) / BW, rtol=1e-2)


def test_kv_cache_precision_only_changes_the_kv_bytes():
    """An fp8 KV cache halves the KV bytes: TPOT drops by 1,107,820,544 / 2 / 2.039e12 = 271.7 µs."""
    fp8 = InferenceJob(LLAMA, INPUT, OUTPUT, kv_precision="fp8")
    _close(_f(_run().tpot_s) - _f(_run(job=fp8).tpot_s), KV_READ / 2 / BW, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Prefill: compute-bound


def test_prefill_ttft_is_compute_bound():
    """A 2048-token prefill: 2.764e13 FLOPs (≈ 2 · 6.6e9 weights · 2048 + causal attention). Its GEMMs
    and attention kernels are compute-bound, so their time is their FLOPs / 312e12 = 88.6 ms (within
    2 %: the LM head runs on the last token only and is memory-bound, 0.13 ms). The unfused elementwise
    kernels (RMSNorm, rotary, SwiGLU act·mul, residual adds: 2048·h-sized tensors through HBM) are
    memory-bound and add ≈ 5.9 ms: TTFT = Σ over ops of its roofline time = 94.5 ms, 6.7 % above
    FLOPs / peak."""
    ops = inference_ops(LLAMA, [0], [INPUT], "fp16", fused_attention=True)
    gemm = [op for op in ops if op.kind in ("matmul", "attention")]
    gemm_flops = sum(op.flops * op.count for op in gemm)
    _close(sum(_roofline_s(op) * op.count for op in gemm), gemm_flops / P, rtol=2e-2)
    b = _run()
    _close(b.ttft_s, sum(_roofline_s(op) * op.count for op in ops))
    flops = sum(op.flops * op.count for op in ops)
    _close(flops, 2.7645e13, rtol=1e-4)
    assert 1.0 < _f(b.ttft_s) / (flops / P) < 1.08
    assert _f(b.prefill_compute_s) == _f(b.ttft_s)


def test_latency_and_throughput_identities():
    """e2e = TTFT + output_len · TPOT exactly (the calibration schema's definition); throughput =
    batch · output_len / e2e, at batch 1 and 4."""
    for batch in (1.0, 4.0):
        b = _run(batch=batch)
        _close(b.latency_s, _f(b.ttft_s) + OUTPUT * _f(b.tpot_s), rtol=1e-6)
        _close(b.output_tokens_per_s, batch * OUTPUT / _f(b.latency_s), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Tensor and pipeline parallelism


def test_tp2_halves_the_weight_bytes_but_adds_all_reduces():
    """tp = 2: each GPU reads half of every sharded weight and half the KV heads, so the decode kernels
    take ≈ half (norms are replicated: a hair over half). Each layer adds two all-reduces of the 1·h·2 B
    = 8192 B activation over 2 GPUs: 2·(1/2)·8192/300e9 + 2·0.6 µs = 1.2273 µs, × 64 = 78.5 µs. With it
    TPOT(tp 2) / TPOT(tp 1) = 0.511, between 0.5 and 0.6; without latencies it is still above 0.5."""
    one, two = _run(hw=IDEAL_LAT), _run(hw=IDEAL_LAT, tp=2.0)
    per = 2 * (1 / 2) * 8192 / B_UP + 2 * 0.6e-6
    _close(two.decode_comm_s, 64 * per)
    _close(per, 1.2273e-6, rtol=1e-4)
    assert 0.5 < _f(two.decode_compute_s) / _f(one.decode_compute_s) < 0.501
    ratio = _f(two.tpot_s) / _f(one.tpot_s)
    assert 0.5 < ratio < 0.6
    _close(ratio, (_f(two.decode_compute_s) + 64 * per) / _f(one.tpot_s), rtol=1e-6)
    no_latency = _f(_run(tp=2.0).tpot_s) / _f(_run().tpot_s)
    assert 0.5 < no_latency < ratio


def test_pp2_adds_one_activation_transfer_per_step():
    """A single batch passes both stages in turn: the kernels are the same as on one device and one
    send/recv of the 8192-B activation is added: α + S/B = 0.6 µs + 27.3 ns per step."""
    one, two = _run(hw=IDEAL_LAT), _run(hw=IDEAL_LAT, pp=2.0)
    _close(two.decode_compute_s, one.decode_compute_s, rtol=1e-6)
    _close(two.decode_comm_s, 0.6e-6 + 8192 / B_UP)


def test_pp2_pipelines_two_micro_batches():
    """Batch 2 on pp = 2: two micro-batches of 1 occupy the stages concurrently. With K the kernels
    of one request's pass (batch-1 prefill or decode on one device) and X = 0.6 µs + S/B_up the
    stage-to-stage send (S = 2048·4096·2 B for a prompt, 8192 B for a token):

        TTFT = pass + stage = (K + X) + (K/2 + X) = 1.5·K + 2·X   (the second micro-batch's prompt)
        TPOT = max(pass, 2·stage) = K + 2·X                        (its next token waits for stage 1)
    """
    one, two = _run(hw=IDEAL_LAT), _run(hw=IDEAL_LAT, pp=2.0, batch=2.0)
    send_prompt, send_token = 0.6e-6 + INPUT * 4096 * 2 / B_UP, 0.6e-6 + 8192 / B_UP
    _close(two.ttft_s, 1.5 * _f(one.prefill_compute_s) + 2 * send_prompt, rtol=1e-6)
    _close(two.tpot_s, _f(one.decode_compute_s) + 2 * send_token, rtol=1e-6)
    _close(two.output_tokens_per_s, 2 * OUTPUT / (_f(two.ttft_s) + OUTPUT * _f(two.tpot_s)), rtol=1e-6)


def test_pp4_batch_8_splits_into_four_micro_batches():
    """pp = 4, batch 8: m = 4 micro-batches of 2. TTFT = pass(2) + 3·stage(2) with stage = pass's
    kernels / 4 + one send: (K₂ + 3X) + 3·(K₂/4 + X) = 1.75·K₂ + 6X; TPOT = 4·stage(2) = K₂ + 4X."""
    two, four = _run(hw=IDEAL_LAT, batch=2.0), _run(hw=IDEAL_LAT, pp=4.0, batch=8.0)
    send_prompt, send_token = 0.6e-6 + 2 * INPUT * 4096 * 2 / B_UP, 0.6e-6 + 2 * 8192 / B_UP
    _close(four.ttft_s, 1.75 * _f(two.prefill_compute_s) + 6 * send_prompt, rtol=1e-6)
    _close(four.tpot_s, _f(two.decode_compute_s) + 4 * send_token, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Serving engines


def test_inflight_batching_spreads_the_arrivals_prefill_over_the_decode_steps():
    """In-flight batching at batch 8: each step carries the prefill of 8/129 arriving requests, so
    ITL = TPOT + TTFT_static/129; a request's first token comes after one such step plus its own
    prefill (the batch-1 TTFT); throughput = 8 / ITL, which equals the static 8·129/(TTFT + 129·TPOT)."""
    static = _run(batch=8.0)
    job = dataclasses.replace(JOB, engine=ENGINES["tensorrt-llm"])
    inflight = inference_step(IDEAL, job, 1.0, 1.0, 8.0, tables=_tables(JOB))
    itl = _f(static.tpot_s) + _f(static.ttft_s) / OUTPUT
    _close(inflight.tpot_s, itl, rtol=1e-6)
    _close(inflight.ttft_s, itl + _f(_run().ttft_s), rtol=1e-6)
    _close(inflight.output_tokens_per_s, 8.0 / itl, rtol=1e-6)
    _close(inflight.output_tokens_per_s, static.output_tokens_per_s, rtol=1e-6)


def test_eager_engine_is_bound_by_its_host_launches():
    """PyTorch eager decode at batch 1: the GPU needs 7.03 ms (bytes / bandwidth) but the host needs
    32 layers · 762 µs + 682 µs = 25.066 ms to launch the step (the measured per-layer figure), so
    TPOT = 25.066 ms. A 2048-token prefill (94.5 ms on the GPU) is above that floor and unchanged."""
    job = dataclasses.replace(JOB, engine=ENGINES["pytorch-eager"])
    eager = inference_step(IDEAL, job, 1.0, 1.0, 1.0, tables=_tables(JOB))
    _close(eager.tpot_s, 32 * 762e-6 + 682e-6, rtol=1e-6)
    _close(eager.ttft_s, _run().ttft_s, rtol=1e-6)
    assert _f(_run().tpot_s) < 0.3 * _f(eager.tpot_s)


def test_cuda_graph_replay_prices_each_kernel_at_the_graph_figure():
    """A kernel launched from the host costs ``kernel_overhead_s`` on top of its roofline time (here
    10 µs), one replayed from a CUDA graph ``graph_kernel_overhead_s`` (here 2 µs). The batch-1 decode
    step runs N kernels, N = Σ count over the step's workload ops (``workload.inference_ops``), so
    TPOT = 7.029 ms + N · 10 µs launched and 7.029 ms + N · 2 µs replayed. A preset that states no
    graph figure (0) prices a replayed kernel as a launched one, never at zero."""
    ops = inference_ops(LLAMA, [CACHED], [1], "fp16", fused_attention=True)
    kernels = sum(op.count for op in ops if op.flops + op.bytes > 0)
    assert 32 * 8 < kernels < 32 * 16  # a Llama layer's decode: norms, GEMMs, RoPE, attention, adds
    hw = dataclasses.replace(IDEAL, kernel_overhead_s=10e-6, graph_kernel_overhead_s=2e-6)
    roofline = _f(_run().tpot_s)
    launched = _f(_run(hw).tpot_s)
    replayed = inference_step(
        hw, dataclasses.replace(JOB, engine=ENGINES["static-cuda-graphs"]), 1.0, 1.0, 1.0, tables=_tables(JOB)
    )
    _close(launched, roofline + kernels * 10e-6, rtol=1e-6)
    _close(replayed.tpot_s, roofline + kernels * 2e-6, rtol=1e-6)
    unstated = dataclasses.replace(hw, graph_kernel_overhead_s=0.0)
    graphs = dataclasses.replace(JOB, engine=ENGINES["static-cuda-graphs"])
    _close(inference_step(unstated, graphs, 1.0, 1.0, 1.0, tables=_tables(JOB)).tpot_s, launched, rtol=1e-9)
    # traced hardware (calibration, gradients) takes the same branch as concrete
    traced = jax.jit(lambda h: inference_step(h, graphs, 1.0, 1.0, 1.0, tables=_tables(JOB)).tpot_s)
    _close(traced(hw), _f(replayed.tpot_s), rtol=1e-6)
    _close(traced(unstated), launched, rtol=1e-6)


def test_fp8_attention_runs_the_attention_kernels_at_the_fp8_peak():
    """FP8 attention (``attention_precision="fp8"``) on the H100 preset: the prefill's compute-bound
    flash-attention kernels (F = 32 layers · 3.47e10 FLOPs, causal, from the op table) run at the fp8
    peak (1978.9e12) instead of the 16-bit one (989.4e12), at the same flash fraction η; nothing else
    changes: Δ TTFT = F/(989.4e12·η) − F/(1978.9e12·η)."""
    h100 = load_hardware("h100_sxm")
    bf16 = InferenceJob(LLAMA, INPUT, OUTPUT, "bf16")
    fp8 = dataclasses.replace(bf16, attention_precision="fp8")
    ops = inference_ops(LLAMA, [0], [INPUT], "bf16", fused_attention=True)
    flops = sum(op.flops * op.count for op in ops if op.kind == "attention")
    _close(flops, 32 * 34_712_223_744)
    ttft = [_f(inference_step(h100, job, 1.0, 1.0, 1.0).ttft_s) for job in (bf16, fp8)]
    eta = h100.flash_attention_efficiency
    expected = flops / (h100.peak_flops_bf16 * eta) - flops / (h100.peak_flops_fp8 * eta)
    _close(ttft[0] - ttft[1], expected, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Mixture of experts

MIXTRAL = load_model("mixtral_8x7b")
MIXTRAL_EXPERTS = 32 * 8 * 3 * 4096 * 14336  # layers · experts · (gate, up, down) · h · expert width
# per layer: QKV 4096·(32 + 2·8)·128 + out 4096² + router 4096·8 + 2 norms 2·4096 = 41,984,000
MIXTRAL_DENSE_READ = 32 * 41_984_000 + 32000 * 4096 + 4096 + 4096  # + LM head, final norm, 1 embedding row
MIXTRAL_KV_READ = 32 * 2 * 8 * 128 * 2 * (CACHED + 1)  # GQA: 8 KV heads


def test_moe_decode_reads_only_the_routed_experts():
    """Mixtral 8x7B decode at batch 1: one token routed to top-2 of 8 experts touches
    8·(1 − (1 − 2/8)^1) = 2 experts. Bytes: non-expert 1,474,568,192 params · 2 B + experts
    45,097,156,608 · 2/8 · 2 B + KV 276,955,136 B = 25.77e9 B → 12.64 ms, within 1 %. Reading all 8
    experts would cost (2.949e9 + 90.19e9 + 0.277e9) / 2.039e12 = 45.8 ms: 3.6× more, below the 8/2 = 4×
    of the experts alone because the attention weights are read either way."""
    job = InferenceJob(MIXTRAL, INPUT, OUTPUT)
    assert parameter_count(MIXTRAL) == 32 * 41_984_000 + 2 * 32000 * 4096 + 4096 + MIXTRAL_EXPERTS
    touched = (2 * MIXTRAL_DENSE_READ + 2 * MIXTRAL_EXPERTS * 2 / 8 + MIXTRAL_KV_READ) / BW
    all_experts = (2 * MIXTRAL_DENSE_READ + 2 * MIXTRAL_EXPERTS + MIXTRAL_KV_READ) / BW
    tpot = _f(_run(job=job).tpot_s)
    _close(tpot, touched, rtol=1e-2)
    assert 3.0 < all_experts / tpot < 4.0


# --------------------------------------------------------------------------------------------
# Offload


def test_weight_offload_streams_the_offloaded_bytes_every_step():
    """offload_weights = 0.5: half of the 2 · 6,738,415,616 B of weights live in host memory and cross
    the 32 GB/s host link every step: 6.738e9 / 32e9 = 210.6 ms added to TTFT and to every TPOT."""
    base, off = _run(), _run(offload_weights=0.5)
    added = 0.5 * 2 * LLAMA_PARAMS / HOST
    _close(off.offload_s, added)
    _close(_f(off.tpot_s) - _f(base.tpot_s), added, rtol=1e-5)
    _close(_f(off.ttft_s) - _f(base.ttft_s), added, rtol=1e-5)
    _close(_f(off.latency_s) - _f(base.latency_s), (1 + OUTPUT) * added, rtol=1e-5)
    _close(off.memory.offloaded_bytes, 0.5 * 2 * LLAMA_PARAMS, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Gradients


def test_grad_of_latency_wrt_hbm_bandwidth():
    """d latency / d B is finite and negative. Decode is memory-bound in every kernel, so TPOT = bytes/B
    and d TPOT / d B = −TPOT / B exactly; the prefill is mostly compute-bound, so d TTFT / d B is only
    the elementwise kernels' share."""

    def metric(bw, name):
        return getattr(_run(hw=dataclasses.replace(IDEAL, hbm_bandwidth_Bps=bw)), name)

    d_latency = _f(jax.grad(metric)(BW, "latency_s"))
    assert np.isfinite(d_latency) and d_latency < 0
    tpot = _f(_run().tpot_s)
    _close(jax.grad(metric)(BW, "tpot_s"), -tpot / BW, rtol=1e-4)
    d_ttft = _f(jax.grad(metric)(BW, "ttft_s"))
    assert -_f(_run().ttft_s) / BW < d_ttft < 0


def test_vmap_over_batch_and_tp_under_jit_equals_single_calls():
    """tp and batch are traced leaves: one jitted, vmapped call over (tp, batch) ∈ {(1, 1), (2, 4),
    (4, 16)} equals three separate calls, and a second call with other values does not retrace."""
    traces = []

    @jax.jit
    def tpot(tp, batch):
        traces.append(1)  # runs only while tracing
        return jax.vmap(lambda t, b: _run(hw=A100, tp=t, batch=b).tpot_s)(tp, batch)

    got = tpot(jnp.array([1.0, 2.0, 4.0]), jnp.array([1.0, 4.0, 16.0]))
    for i, (tp, batch) in enumerate(((1.0, 1.0), (2.0, 4.0), (4.0, 16.0))):
        _close(got[i], _run(hw=A100, tp=tp, batch=batch).tpot_s)
    tpot(jnp.array([8.0, 1.0, 2.0]), jnp.array([2.0, 2.0, 2.0]))
    assert len(traces) == 1


# --------------------------------------------------------------------------------------------
# Every shipped model × presets

PRESETS = [load_hardware(n) for n in ("a100_80gb_sxm", "h100_sxm", "mi300x", "tpu_v5p")]


DECODERS = [name for name in available_models() if load_model(name).causal]  # encoders: test_encoders.py


@pytest.mark.parametrize("name", DECODERS)
def test_every_shipped_model_on_every_preset_is_finite(name):
    """bf16 (TPU v5p has no fp16), batch 1 and 8, 512 + 65 tokens, tp = 1: TTFT, TPOT, latency,
    throughput and memory are finite and positive, and a larger batch never lowers the step times."""
    job = InferenceJob(load_model(name), 512, 65, precision="bf16")
    for hw in PRESETS:
        one = inference_step(hw, job, 1.0, 1.0, 1.0, tables=_tables(job))
        eight = inference_step(hw, job, 1.0, 1.0, 8.0, tables=_tables(job))
        for b in (one, eight):
            for path, leaf in jax.tree_util.tree_leaves_with_path(b):
                assert np.all(np.isfinite(np.asarray(leaf))), (name, hw.name, path)
            for field in ("ttft_s", "tpot_s", "latency_s", "output_tokens_per_s"):
                assert _f(getattr(b, field)) > 0, (name, hw.name, field)
            assert _f(b.memory.total_bytes) > 0
        assert _f(eight.tpot_s) >= _f(one.tpot_s) and _f(eight.ttft_s) >= _f(one.ttft_s)
        assert _f(eight.output_tokens_per_s) > _f(one.output_tokens_per_s)
