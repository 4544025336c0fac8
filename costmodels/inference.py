"""Latency and throughput of LLM inference: prefill (time to first token) and decode steps.

A batch of ``B`` requests with ``input_len`` prompt tokens generates ``output_len`` tokens each. One
*pass* is the batch's kernels through all layers (``compute.kernel_time_s`` per op, tensor
parallelism sharding the ops as in training with one all-reduce per attention and per MLP block)
plus ``pp − 1`` activation transfers. Static batching (``Engine.inflight_batching`` false):

    TTFT        = prefill pass of the B prompts
    TPOT        = decode step at the mean context input_len + (output_len − 1)/2
                  (a decode step's cost is affine in the context length, so the mean step is
                  the step at the mean context; exact while no roof changes within the range)
    end-to-end  = TTFT + output_len · TPOT          (the calibration schema's e2e definition)
    throughput  = B · output_len / end-to-end

Pipeline parallelism splits the batch into m = min(pp, B) micro-batches that occupy the stages
concurrently (TensorRT-LLM and vLLM schedule one micro-batch per stage). With ``pass(b)`` the
pass of one micro-batch b = B/m and ``stage(b) = kernels(b)/pp + transfer(b)`` one stage's share:

    TTFT = pass(b) + (m − 1) · stage(b)             (the last micro-batch's prompts)
    TPOT = max(pass(b), m · stage(b))               (its next token waits for its own pass and
                                                     for the first stage to serve the m others)

In-flight (continuous) batching keeps B sequences decoding while finished requests are replaced:
each step also runs the prefill of the B / output_len requests that arrive per step on average, so
the inter-token latency is ``TPOT + TTFT_static / output_len``, a new request's first token comes
after one such step plus its own prefill, and the throughput is ``B / ITL``.

An engine that launches every kernel from Python (eager PyTorch) cannot run faster than its host
issues the work: each pass takes ``max(kernels, layers · host_layer_s + host_step_s)``; engines
that replay CUDA graphs or hide the host's work behind the GPU's (TensorRT-LLM; FasterTransformer's
C++ runtime, whose few-µs launches stay below its kernels' times) have no such floor. Each kernel
costs ``Hardware.kernel_overhead_s`` on top of its roofline time when launched, and
``graph_kernel_overhead_s`` when replayed from a CUDA graph (``Engine.cuda_graphs``: decode steps
only, ``launched``); the two are fitted per hardware generation, on static engines and on
graph-replaying engines at one request (``experiments/calibrate.py``).

An encoder-decoder (T5) runs the prompt through its encoder and the decoder's first step at the
prefill; its decode steps attend to the decoder's own tokens and to the cached keys and values of
the encoded prompt. An encoder (BERT) generates nothing: ``output_len`` = 0, one forward pass of the
batch (TTFT is that pass, the end-to-end latency too), no decode step and no KV cache.

Weights or KV cache offloaded to host memory are streamed over the host link every step. A decode
step reads only the experts its tokens touch (``workload.experts_touched``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp

from costmodels.architectures import MIXER_CROSS, MIXER_ENCODER, ModelSpec
from costmodels.errors import ConfigError
from costmodels.fabric import collective_s, p2p_s
from costmodels.hardware import Hardware, activation_precision, bytes_per_element
from costmodels.memory import MemoryBreakdown, inference_memory
from costmodels.parallel import Plan
from costmodels.sharding import OpTable, op_times, shard, table_from_ops
from costmodels.workload import Batch, experts_touched, forward_ops

Array = Any


@dataclass(frozen=True)
class Engine:
    """A serving engine's scheduling: batching mode, the token budget of one step, the largest
    batch, and the host time per pass that does not hide behind the GPU."""

    name: str
    inflight_batching: bool = False
    max_num_tokens: int | None = None  # token budget of one step (None: the batch's prompts at once)
    max_batch_size: int | None = None
    host_layer_s: float = 0.0  # host time to launch one decoder layer's ops (0: CUDA graphs / hidden)
    host_step_s: float = 0.0  # host time per pass outside the layers (embedding, head, sampling)
    # steps replay captured CUDA graphs: each kernel costs the device's graph-replay overhead
    # (``Hardware.graph_kernel_overhead_s``) instead of a host launch's (``kernel_overhead_s``)
    cuda_graphs: bool = False


STATIC = Engine("static batch")

# TensorRT-LLM: ``max_num_tokens`` 8192 and ``max_batch_size`` 2048, the defaults of its LLM API
# (``tensorrt_llm`` BuildConfig and KV-cache manager; docs "Tuning Max Batch Size and Max Num
# Tokens"); decode steps replay CUDA graphs and the overlap scheduler (on by default) runs the
# host's per-step work behind the GPU's ("Overlap Scheduler" page), so no host time is exposed.
# trtllm-bench sizes its own token budget from the KV-cache capacity (2,048 to 32,768), which this
# preset does not follow. Static-batching benchmarks (FasterTransformer, TensorRT-LLM's
# gptSessionBenchmark) run the batch they are given.
# PyTorch eager (``transformers`` ``generate``): every op is launched from Python. Measured with
# torch 2.11 and transformers 5.17 on an H200 machine (experiments/device/eager_decode.py: greedy
# decode of a Llama with tiny kernels, 8 and 16 layers): 762 µs of host time per Llama decoder
# layer and 682 µs per token outside the layers, i.e. about 65 launches of 11.7 µs per layer
# (experiments/device/launch_overhead.py; CUDA-graph replay: 0.84 µs per kernel). The figures are
# the host CPU's: a faster host lowers them, another architecture's layer launches other ops.
ENGINES: dict[str, Engine] = {
    "static": STATIC,
    "static-cuda-graphs": Engine("static batch, CUDA graphs", cuda_graphs=True),
    "tensorrt-llm": Engine("TensorRT-LLM (in-flight batching)", True, 8192, 2048, cuda_graphs=True),
    "pytorch-eager": Engine("PyTorch eager (static batch)", False, None, None, 762e-6, 682e-6),
}


def launched(hw: Hardware, engine: Engine) -> Hardware:
    """``hw`` as ``engine`` launches its kernels: under CUDA-graph replay each kernel costs
    ``graph_kernel_overhead_s`` (the host launches nothing), where the preset states it (> 0); else,
    and for engines that launch every kernel, ``kernel_overhead_s``."""
    if not engine.cuda_graphs:
        return hw
    graph = hw.graph_kernel_overhead_s
    if isinstance(graph, int | float):
        return replace(hw, kernel_overhead_s=graph) if graph > 0 else hw
    return replace(hw, kernel_overhead_s=jnp.where(graph > 0, graph, hw.kernel_overhead_s))


def prompt_launch(job: InferenceJob) -> InferenceJob:
    """``job`` as a pass with prompt tokens runs it: engines capture CUDA graphs for decode-only
    steps (TensorRT-LLM replays them for generation-only batches), so a prefill, or a step that mixes
    prompt chunks with decodes, launches its kernels one by one."""
    if not job.engine.cuda_graphs:
        return job
    return replace(job, engine=replace(job.engine, cuda_graphs=False))


def launch_assumption(hw: Hardware, engine: Engine) -> str:
    """How the figures price each kernel's launch, as printed under them."""
    eager_us, graph_us = float(hw.kernel_overhead_s) * 1e6, float(hw.graph_kernel_overhead_s) * 1e6
    if not engine.cuda_graphs:
        return f"kernels: launched one by one, {eager_us:.1f} µs launch and tail each ({hw.name})"
    prompts = f"steps with prompt tokens launch theirs, {eager_us:.1f} µs each"
    if graph_us > 0:
        return (
            f"kernels: decode-only steps replay CUDA graphs, {graph_us:.1f} µs per kernel ({hw.name}'s "
            f"graph-replay figure); {prompts}"
        )
    return (
        f"kernels: decode-only steps replay CUDA graphs, but {hw.name} states no graph-replay figure: "
        f"every kernel is priced as launched, {eager_us:.1f} µs (efficiency.graph_kernel_overhead_us)"
    )


def engine_preset(name: str, key: str = "engine") -> Engine:
    """The ``ENGINES`` preset called ``name``; :class:`ConfigError` naming ``key`` otherwise."""
    if name not in ENGINES:
        raise ConfigError(f"{key}: unknown engine {name!r}; valid: {', '.join(ENGINES)}")
    return ENGINES[name]


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
    # the serving engine: batching mode, token budget of one step (TensorRT-LLM ``max_num_tokens``,
    # vLLM ``max_num_batched_tokens``: chunked prefill, so the activation peak is one such step, not
    # the whole batch's prompts at once) and host launch time
    engine: Engine = STATIC
    # attention kernels' type; None: the run's 16-bit type (``hardware.activation_precision``)
    attention_precision: str | None = None

    def __post_init__(self) -> None:
        if not self.spec.causal and self.output_len != 0:
            raise ConfigError(
                f"{self.spec.model_type} is an encoder: it generates no tokens; set output_len=0 "
                "(inference.output_len=0) to price one forward pass of the input"
            )
        if self.spec.causal and self.output_len < 1:
            raise ConfigError(
                f"output_len (inference.output_len) must be >= 1 for {self.spec.model_type}, a decoder; "
                f"got {self.output_len}"
            )

    @property
    def generates(self) -> bool:
        """Whether the model decodes tokens after its prefill (False: an encoder's forward pass)."""
        return self.output_len > 0

    @property
    def host_pass_s(self) -> float:
        """The host time under which no pass runs: layers · host_layer_s + host_step_s (``Engine``)."""
        return self.spec.num_layers * self.engine.host_layer_s + self.engine.host_step_s

    @property
    def prompt_tokens(self) -> int:
        """Tokens the decoder prefills: the prompt, or an encoder-decoder's one start token (its
        prompt goes through the encoder)."""
        return 1 if self.spec.encoder_layers else self.input_len

    @property
    def source_tokens(self) -> int:
        """Encoder tokens each decoder query attends to: the prompt of an encoder-decoder, else 0."""
        return self.input_len if self.spec.encoder_layers else 0

    @property
    def mean_context(self) -> float:
        """Decoder tokens in the cache at the mean decode step: prompt + (output_len − 1)/2."""
        return self.prompt_tokens + (self.output_len - 1) / 2.0

    def reductions(self, prefill: bool) -> tuple[tuple[float, float], ...]:
        """The h-wide tensor-parallel all-reduces of one query's prefill or decode step as (how
        many, tokens each): ``tp_reductions`` of its new tokens; an encoder-decoder's prefill adds
        its encoder's, of ``input_len`` tokens each."""
        spec, new = self.spec, float(self.prompt_tokens) if prefill else 1.0
        if not spec.encoder_layers:
            return ((spec.tp_reductions, new),)
        decoder = (spec.stack(MIXER_CROSS).tp_reductions, new)
        if not prefill:
            return (decoder,)
        return (spec.stack(MIXER_ENCODER).tp_reductions, float(self.input_len)), decoder

    def tables(self) -> tuple[OpTable, OpTable]:
        """(prefill table of one query, decode-step table of one query at the mean context)."""

        def table(cached: float, new: int) -> OpTable:
            pairs = new * cached + new * (new + 1) / 2.0
            batch = Batch(float(new), cached + new, pairs, 1, 1.0, ((cached, float(new), 1.0),))
            if self.source_tokens:  # the encoder runs at the prefill; decode steps read its cache
                batch = batch.with_source([self.source_tokens], [cached == 0])
            ops = forward_ops(
                self.spec,
                batch,
                self.precision,
                kv_precision=self.kv_precision,
                fused_attention=self.fused_attention,
                mla_absorb=self.mla_absorb,
            )
            return table_from_ops(ops, self.spec, float(new), cached + new)

        prefill = table(0.0, self.prompt_tokens)
        return prefill, table(self.mean_context, 1) if self.generates else prefill


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


def op_seconds(
    hw: Hardware, job: InferenceJob, table: OpTable, plan: Plan, seqs: Array, tokens: Array
) -> Array:
    """Forward time of each op of ``table`` for ``seqs`` sequence-equivalents (a scalar, or one per op)
    sharded by ``plan``; a MoE reads only the experts ``tokens`` tokens touch (uniform top-k routing:
    E·(1 − (1 − k/E)^tokens), ``workload.experts_touched``)."""
    spec = job.spec
    s = shard(table, plan, seqs)
    if spec.moe is not None:  # only the experts these tokens touch are read
        touched = experts_touched(spec.moe.num_experts, spec.moe.top_k, tokens)
        s = s.__class__(
            **{
                **s.__dict__,
                "weight": jnp.where(table.expert > 0, s.weight * touched / spec.moe.num_experts, s.weight),
            }
        )
    fwd, _ = op_times(
        launched(hw, job.engine), job.precision, table, s, attention_precision=job.attention_precision
    )
    return fwd


def _pass_s(
    hw: Hardware, job: InferenceJob, table: OpTable, tp: Array, pp: Array, batch: Array, prefill: bool
) -> tuple[Array, Array, Array]:
    """(kernel time, TP all-reduce time, one PP transfer) of ``batch`` queries' prefill or decode
    step through all layers; the kernels are at least the host's launches of them."""
    new_tokens = float(job.prompt_tokens) if prefill else 1.0  # through the decoder (or the only stack)
    job = prompt_launch(job) if prefill else job
    spec = job.spec
    fwd = op_seconds(hw, job, table, Plan(tp=tp, pp=pp, microbatch=batch), batch, batch * new_tokens)
    kernels = jnp.maximum(jnp.sum(fwd * table.layers), job.host_pass_s)
    # tensor-parallel all-reduces move 16-bit activations whatever the weights' precision
    act_b = bytes_per_element(activation_precision(job.precision))
    tp_comm = sum(
        count * collective_s("all_reduce", hw, batch * tokens * spec.hidden_size * act_b, 1.0, tp)
        for count, tokens in job.reductions(prefill)
    )
    return kernels, tp_comm, stage_transfer_s(hw, job, tp, batch * new_tokens)


def stage_transfer_s(hw: Hardware, job: InferenceJob, tp: Array, tokens: Array) -> Array:
    """Sending ``tokens`` tokens' hidden states (16-bit activations) from one pipeline stage to the
    next: each of the ``tp`` ranks sends its 1/tp share to its peer ``tp`` ranks away, one
    point-to-point transfer (``fabric.p2p_s``: inside the scale-up domain or across it)."""
    act_b = bytes_per_element(activation_precision(job.precision))
    return p2p_s(hw, tokens * job.spec.hidden_size * act_b / tp, tp)


def _pipelined_s(
    hw: Hardware, job: InferenceJob, table: OpTable, tp: Array, pp: Array, batch: Array, prefill: bool
) -> tuple[Array, Array, Array, Array]:
    """(first-token time, per-token time, kernels, communication) of ``batch`` queries split into
    m = min(pp, batch) micro-batches on ``pp`` stages (module docstring); kernels and communication
    are one micro-batch's pass."""
    m = jnp.maximum(jnp.floor(jnp.minimum(pp, batch)), 1.0)
    kernels, tp_comm, p2p = _pass_s(hw, job, table, tp, pp, batch / m, prefill)
    comm = tp_comm + (pp - 1.0) * p2p
    one_pass = kernels + comm
    stage = (kernels + tp_comm) / pp + jnp.where(pp > 1.0, p2p, 0.0)  # one stage and its send
    return one_pass + (m - 1.0) * stage, jnp.maximum(one_pass, m * stage), kernels, comm


def step_memory(
    hw: Hardware,
    job: InferenceJob,
    tp: Array,
    pp: Array,
    batch: Array,
    offload_weights: Array = 0.0,
    offload_kv: Array = 0.0,
) -> MemoryBreakdown:
    """The memory per device of :func:`inference_step` (its ``memory``, whose ``feasible`` is the
    step's): ``inference_memory`` of ``batch`` sequences of prompt + output tokens, the largest
    prefill step being the whole batch's prompts or the engine's token budget, whichever is less."""
    prompts = batch * job.input_len
    budget = job.engine.max_num_tokens
    return inference_memory(
        job.spec,
        tp,
        pp,
        batch,
        job.prompt_tokens + job.output_len,
        hw,
        job.precision,
        job.kv_precision,
        offload_weights=offload_weights,
        offload_kv=offload_kv,
        prefill_tokens=prompts if budget is None else jnp.minimum(prompts, budget),
        source_tokens=job.source_tokens,
    )


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
    prefill_s, _, prefill_k, _ = _pipelined_s(hw, job, prefill_table, tp, pp, batch, True)
    if job.generates:
        _, decode_s, decode_k, decode_c = _pipelined_s(hw, job, decode_table, tp, pp, batch, False)
    else:  # an encoder: the forward pass is the whole request
        decode_s = decode_k = decode_c = jnp.zeros_like(prefill_s)
    memory = step_memory(hw, job, tp, pp, batch, offload_weights, offload_kv)
    host_bw = jnp.maximum(hw.host_bandwidth_Bps, 1.0)
    offload = memory.offloaded_bytes / host_bw  # every step streams the offloaded share in
    ttft = prefill_s + offload
    tpot = decode_s + offload
    if not job.generates:
        tpot, latency, throughput = jnp.zeros_like(ttft), ttft, jnp.zeros_like(ttft)
    elif job.engine.inflight_batching:  # each step carries the prefill of the requests arriving in it
        one = jnp.ones_like(batch)
        one_prompt, _, _, _ = _pipelined_s(hw, job, prefill_table, tp, pp, one, True)
        tpot = tpot + prefill_s / job.output_len
        ttft = tpot + one_prompt
        latency = ttft + job.output_len * tpot
        throughput = batch / tpot
    else:
        latency = ttft + job.output_len * tpot
        throughput = batch * job.output_len / latency
    return InferenceBreakdown(
        ttft_s=ttft,
        tpot_s=tpot,
        latency_s=latency,
        output_tokens_per_s=throughput,
        prefill_compute_s=prefill_k,
        decode_compute_s=decode_k,
        decode_comm_s=decode_c,
        offload_s=offload,
        memory=memory,
    )
