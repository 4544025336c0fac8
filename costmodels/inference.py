"""Latency and throughput of LLM inference: prefill (time to first token) and decode steps.

A request batch of ``B`` sequences with ``input_len`` prompt tokens generates ``output_len`` tokens:

    TTFT        = prefill(B queries of input_len new tokens)
    TPOT        = decode step with the mean context input_len + (output_len − 1)/2
                  (a decode step's cost is affine in the context length, so the mean step is
                  the step at the mean context; exact while no roof changes within the range)
    end-to-end  = TTFT + output_len · TPOT          (the calibration schema's e2e definition)
    throughput  = B · output_len / end-to-end

Each step is the sum of its ops' kernel times on one device (``compute.kernel_time_s``) with
tensor parallelism sharding the ops as in training (Megatron-style; one all-reduce per attention
and per MLP block), pipeline parallelism passing one batch through all ``pp`` stages in turn (a
single batch has no pipelining: latency adds the stages and ``pp − 1`` activation transfers), and
weights or KV cache offloaded to host memory streamed over the host link every step. A decode step
reads only the experts its tokens touch (``workload.experts_touched``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from costmodels.architectures import ModelSpec
from costmodels.hardware import Hardware, activation_precision, bytes_per_element
from costmodels.memory import MemoryBreakdown, inference_memory
from costmodels.parallel import Plan
from costmodels.sharding import OpTable, collective_s, op_times, p2p_s, shard, table_from_ops
from costmodels.workload import Batch, forward_ops

Array = Any


@dataclass(frozen=True)
class Engine:
    """A serving engine's scheduling limits: the token budget of one step and the largest batch."""

    name: str
    max_num_tokens: int | None
    max_batch_size: int | None


# TensorRT-LLM: ``max_num_tokens`` 8192 and ``max_batch_size`` 2048, the defaults of its LLM API
# (``tensorrt_llm`` BuildConfig and KV-cache manager; docs "Tuning Max Batch Size and Max Num
# Tokens"). trtllm-bench sizes its own token budget from the KV-cache capacity (2,048 to 32,768),
# which this preset does not follow. Static-batching benchmarks (FasterTransformer, TensorRT-LLM's
# gptSessionBenchmark) run the batch they are given.
ENGINES: dict[str, Engine] = {
    "tensorrt-llm": Engine("TensorRT-LLM (in-flight batching)", 8192, 2048),
}


@dataclass(frozen=True)
class InferenceJob:
    """The static part of an inference evaluation: model, lengths, precisions, kernels."""

    spec: ModelSpec
    input_len: int
    output_len: int
    precision: str = "fp16"
    kv_precision: str | None = None
    fused_attention: bool = True
    mla_absorb: bool = True
    # tokens one engine step processes at most (TensorRT-LLM ``max_num_tokens``, vLLM
    # ``max_num_batched_tokens``: chunked prefill): the activation peak is one such step, not the
    # whole batch's prompts at once. None: the batch's prompts in one step.
    max_num_tokens: int | None = None

    @property
    def mean_context(self) -> float:
        """Tokens in the cache at the mean decode step: input_len + (output_len − 1)/2."""
        return self.input_len + (self.output_len - 1) / 2.0

    def tables(self) -> tuple[OpTable, OpTable]:
        """(prefill table of one query, decode-step table of one query at the mean context)."""

        def table(cached: float, new: int) -> OpTable:
            batch = Batch(float(new), cached + new, new * cached + new * (new + 1) / 2.0, 1, 1.0)
            ops = forward_ops(
                self.spec,
                batch,
                self.precision,
                kv_precision=self.kv_precision,
                fused_attention=self.fused_attention,
                mla_absorb=self.mla_absorb,
            )
            return table_from_ops(ops, self.spec, float(new), cached + new)

        return table(0.0, self.input_len), table(self.mean_context, 1)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class InferenceBreakdown:
    """Latencies (s), throughput and memory of one batch of requests on ``tp·pp`` devices."""

    ttft_s: Array
    tpot_s: Array
    latency_s: Array  # end to end: prefill + output_len decode steps
    output_tokens_per_s: Array  # all devices
    prefill_compute_s: Array
    decode_compute_s: Array
    decode_comm_s: Array  # TP all-reduces and PP transfers of one decode step
    offload_s: Array  # host-link streaming of one decode step
    memory: MemoryBreakdown

    @property
    def feasible(self) -> Array:
        return self.memory.feasible


def _step_s(
    hw: Hardware, job: InferenceJob, table: OpTable, tp: Array, pp: Array, batch: Array, new_tokens: float
) -> tuple[Array, Array]:
    """(kernel time, communication time) of one step of ``batch`` queries with ``new_tokens`` each."""
    spec = job.spec
    plan = Plan(tp=tp, pp=pp, microbatch=batch)
    s = shard(table, plan, batch)
    if spec.moe is not None:  # only the experts these tokens touch are read
        touched = spec.moe.num_experts * (
            1.0 - (1.0 - spec.moe.top_k / spec.moe.num_experts) ** (batch * new_tokens)
        )
        s = s.__class__(
            **{
                **s.__dict__,
                "weight": jnp.where(table.expert > 0, s.weight * touched / spec.moe.num_experts, s.weight),
            }
        )
    fwd, _ = op_times(hw, job.precision, table, s)
    kernels = jnp.sum(fwd * table.layers)
    # tensor-parallel all-reduces move 16-bit activations whatever the weights' precision
    size = batch * new_tokens * spec.hidden_size * bytes_per_element(activation_precision(job.precision))
    blocks = 1.0 if spec.parallel_block else 2.0
    tp_comm = blocks * spec.num_layers * collective_s("all_reduce", hw, size, 1.0, tp)
    pp_comm = (pp - 1.0) * p2p_s(hw, size / tp, tp)
    return kernels, tp_comm + pp_comm


def inference_step(
    hw: Hardware,
    job: InferenceJob,
    tp: Array,
    pp: Array,
    batch: Array,
    offload_weights: Array = 0.0,
    offload_kv: Array = 0.0,
    tables: tuple[OpTable, OpTable] | None = None,
) -> InferenceBreakdown:
    """TTFT, time per output token, end-to-end latency and throughput of ``batch`` requests."""
    prefill_table, decode_table = job.tables() if tables is None else tables
    prefill_k, prefill_c = _step_s(hw, job, prefill_table, tp, pp, batch, float(job.input_len))
    decode_k, decode_c = _step_s(hw, job, decode_table, tp, pp, batch, 1.0)
    prompts = batch * job.input_len
    memory = inference_memory(
        job.spec,
        tp,
        pp,
        batch,
        job.input_len + job.output_len,
        hw,
        job.precision,
        job.kv_precision,
        offload_weights=offload_weights,
        offload_kv=offload_kv,
        prefill_tokens=prompts if job.max_num_tokens is None else jnp.minimum(prompts, job.max_num_tokens),
    )
    host_bw = jnp.maximum(hw.host_bandwidth_Bps, 1.0)
    offload = memory.offloaded_bytes / host_bw  # every step streams the offloaded share in
    ttft = prefill_k + prefill_c + offload
    tpot = decode_k + decode_c + offload
    latency = ttft + job.output_len * tpot
    return InferenceBreakdown(
        ttft_s=ttft,
        tpot_s=tpot,
        latency_s=latency,
        output_tokens_per_s=batch * job.output_len / latency,
        prefill_compute_s=prefill_k,
        decode_compute_s=decode_k,
        decode_comm_s=decode_c,
        offload_s=offload,
        memory=memory,
    )
