"""Time of one training step for a model, hardware and parallel mapping (pure JAX, vmap-able).

The forward ops of one sequence (``workload.forward_ops``) become a static table of arrays
(:class:`OpTable`); a :class:`~costmodels.parallel.Plan` (possibly a batch of plans) scales and
shards it and the compute and network models price it. The schedule is Megatron-LM's (Narayanan et
al. 2021, "Efficient large-scale language model training on GPU clusters using Megatron-LM"):

    step = (m + (p−1)/v) · t_microbatch  +  exposed DP reduction  +  optimizer step

with ``m`` micro-batches per pipeline, ``p`` stages, ``v`` interleaved chunks (the bubble fraction
``(p−1)/(v·m)``, Sec. 2.2), and ``t_microbatch`` the slowest stage's forward + backward (+ recompute)
time of one micro-batch including its exposed tensor-, context-, expert- and pipeline-parallel
communication. Tensor parallelism (Shoeybi et al. 2019): column-parallel QKV / MLP-up, row-parallel
attention-out / MLP-down, one all-reduce per block in the forward and one in the backward pass (a
reduce-scatter + all-gather pair with sequence parallelism, Korthikanti et al. 2022, Sec. 4.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import jax
import jax.numpy as jnp

from costmodels import network
from costmodels.architectures import ModelSpec
from costmodels.compute import KIND_ATTENTION, KIND_FLASH
from costmodels.fabric import collective_s, links, p2p_s
from costmodels.hardware import (
    LOW_PRECISIONS,
    Hardware,
    activation_precision,
    bytes_per_element,
    peak_flops,
)
from costmodels.memory import MemoryBreakdown, stage_parameters, training_memory
from costmodels.metrics import model_flops_per_sequence, recompute_flops_per_sequence
from costmodels.parallel import Plan, stage_layers
from costmodels.sharding import GROUP_FIRST, GROUP_LAST, GROUP_LAYER, OpTable, op_times, shard, table_from_ops
from costmodels.workload import forward_ops, moe_dispatch_bytes, training_batch

Array = Any


def op_table(spec: ModelSpec, seq_len: int, precision: str = "bf16", fused_attention: bool = True) -> OpTable:
    """The forward ops of one training sequence (with dropout and the loss) as a table.

    FP8/FP4 training (Transformer Engine) keeps 16-bit weights and activations between kernels and
    quantizes only the GEMM inputs, so the table's bytes are those of ``activation_precision``."""
    precision = activation_precision(precision)
    # An unfused (eager / Megatron-2022) attention computes and stores the full s×s score matrix,
    # the causal mask only zeroes half of it; a fused flash kernel skips the masked blocks.
    ops = forward_ops(
        spec,
        training_batch(spec, 1, seq_len, causal=fused_attention),
        precision,
        fused_attention=fused_attention,
        with_loss=True,
        dropout=True,
    )
    return table_from_ops(ops, spec, float(seq_len), float(seq_len))


# --------------------------------------------------------------------------------------------
# The step


def _part(note: str) -> dict[str, str]:
    """The metadata of a field of the step's breakdown that adds to ``step_time_s``: what it is."""
    return {"part": note}


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainingBreakdown:
    """Step time and where it goes (seconds per step, per device on the critical path), with
    MFU/HFU, throughput and memory. ``compute_s`` is forward + backward kernels of all micro-batches
    of the slowest stage; ``bubble_s`` the pipeline fill/drain; the ``*_comm_s`` the exposed parts."""

    step_time_s: Array
    # the parts of the step (``part`` metadata: what each one is; TIME_FIELDS lists them)
    compute_s: Array = field(metadata=_part("forward + backward kernels, all micro-batches, slowest stage"))
    recompute_s: Array = field(metadata=_part("forward re-run in the backward pass"))
    tp_comm_s: Array = field(metadata=_part("exposed tensor-parallel collectives"))
    cp_comm_s: Array = field(
        metadata=_part("exposed context-parallel exchange (ring K,V or Ulysses all-to-all)")
    )
    ep_comm_s: Array = field(metadata=_part("MoE all-to-all dispatch / combine"))
    pp_comm_s: Array = field(metadata=_part("stage-boundary send / recv"))
    dp_comm_s: Array = field(metadata=_part("exposed gradient reduction"))
    zero3_comm_s: Array = field(metadata=_part("exposed ZeRO-3 weight gathers"))
    stream_s: Array = field(metadata=_part("exposed weight streaming (weights in, gradients out)"))
    bubble_s: Array = field(metadata=_part("pipeline fill / drain: (pp-1)/vpp micro-batch times"))
    optimizer_s: Array = field(metadata=_part("optimizer step (memory-bound)"))
    mfu: Array  # model FLOPs (no recompute, causal attention: metrics) / (time · devices · peak) ≤ 1
    hfu: Array  # hardware FLOPs (with the recomputed forward) / (time · devices · peak)
    tokens_per_s: Array
    memory: MemoryBreakdown

    @property
    def feasible(self) -> Array:
        return self.memory.feasible


# The parts of TrainingBreakdown that add up to step_time_s, and what each one is.
TIME_NOTES: dict[str, str] = {
    f.name: f.metadata["part"] for f in fields(TrainingBreakdown) if "part" in f.metadata
}
TIME_FIELDS: tuple[str, ...] = tuple(TIME_NOTES)


@dataclass(frozen=True)
class TrainingJob:
    """The static part of a training cost evaluation: model, sequence length, precision."""

    spec: ModelSpec
    seq_len: int
    precision: str = "bf16"
    fused_attention: bool = True
    optimizer: str = "adam"
    # ZeRO-3 gathers and scatters across nodes: True, hierarchical and striped over every rail, as
    # NCCL runs Megatron-FSDP / PyTorch FSDP today; False, one ring whose every hop crosses the
    # device's own NIC, as DeepSpeed's stage 3 behaved in Narayanan et al. 2021, Table 2.
    fsdp_hierarchical: bool = True

    def table(self) -> OpTable:
        return op_table(self.spec, self.seq_len, self.precision, self.fused_attention)


def _grad_reduce_bytes(precision: str) -> float:
    """Megatron-LM reduces gradients in its fp32 main-grad buffer for bf16 (and fp32/fp8) training,
    in fp16 for fp16 training (``accumulate_allreduce_grads_in_fp32`` defaults)."""
    return 2.0 if precision == "fp16" else 4.0


# The plan fields the per-op kernel times read (``sharding.shard``: tp, sequence parallelism, ep and
# the micro-batch's mb / cp sequences): plans equal in these run the same kernels, so a batch of
# plans needs kernel_sums once per distinct tuple of them (a mapping grid has ~10² among 10⁴–10⁶).
KERNEL_FIELDS = ("tp", "sequence_parallel", "ep", "microbatch", "cp")
# What a stage's time reads of the kernel times (kernel_sums): one layer's forward and backward, its
# attention core's forward (selective recomputation), its attention forward (what ring CP hides),
# and the first and last stages' edge work, forward and backward.
KERNEL_SUMS = ("fwd", "bwd", "core", "attention", "fwd_first", "fwd_last", "bwd_first", "bwd_last")


def kernel_times(hw: Hardware, job: TrainingJob, t: OpTable, plan: Plan) -> tuple[Array, Array]:
    """(forward, backward) time of each op of ``t`` on one device for one micro-batch of ``plan``
    (``sharding.op_times`` of ``sharding.shard``); reads only :data:`KERNEL_FIELDS` of the plan."""
    s = shard(t, plan, plan.microbatch / plan.cp)
    return op_times(hw, job.precision, t, s, quantize_inputs=job.precision in LOW_PRECISIONS)


def kernel_sums(hw: Hardware, job: TrainingJob, t: OpTable, plan: Plan) -> dict[str, Array]:
    """:func:`kernel_times` reduced to :data:`KERNEL_SUMS`: a layer op's time counts
    ``layers of its kind / L`` (one average layer), an edge op's once on its stage; reads only
    :data:`KERNEL_FIELDS` of the plan."""
    fwd, bwd = kernel_times(hw, job, t, plan)
    per_layer = jnp.where(t.group == GROUP_LAYER, t.layers / job.spec.num_layers, 0.0)
    first, last = (jnp.where(t.group == g, 1.0, 0.0) for g in (GROUP_FIRST, GROUP_LAST))
    attention = jnp.where((t.kind == KIND_ATTENTION) | (t.kind == KIND_FLASH), 1.0, t.attention_core)
    return {
        "fwd": jnp.sum(fwd * per_layer),
        "bwd": jnp.sum(bwd * per_layer),
        "core": jnp.sum(fwd * per_layer * t.attention_core),
        "attention": jnp.sum(fwd * per_layer * attention),
        "fwd_first": jnp.sum(fwd * first),
        "fwd_last": jnp.sum(fwd * last),
        "bwd_first": jnp.sum(bwd * first),
        "bwd_last": jnp.sum(bwd * last),
    }


def _stage_times(
    hw: Hardware, job: TrainingJob, t: OpTable, plan: Plan, sums: dict[str, Array] | None = None
) -> dict[str, Array]:
    """Forward, backward and recompute kernel time of one micro-batch on the slowest stage
    (``sums``: :func:`kernel_sums` of the plan, when the caller has them).

    The fullest stage holds ``k = stage_layers(L, plan)`` layers; with pp > 1 the edge work (the
    embedding on the first stage, the final norm, LM head and loss on the last) adds to it, less one
    layer where the embedding and loss count as pipeline layers (``pipeline_edge_layers``):
    ``k·layer + max(edge − e·layer, 0)``."""
    s = kernel_sums(hw, job, t, plan) if sums is None else sums
    k = stage_layers(job.spec.num_layers, plan)
    edge_layer = jnp.where(plan.pp > 1, plan.pipeline_edge_layers, 0.0)

    def edge(first: Array, last: Array, one_layer: Array) -> Array:
        staged = jnp.maximum(first, last) - edge_layer * one_layer
        return jnp.where(plan.pp > 1, jnp.maximum(staged, 0.0), first + last)

    layer_fwd = k * s["fwd"]
    recompute = jnp.where(plan.recompute >= 2, layer_fwd, jnp.where(plan.recompute >= 1, k * s["core"], 0.0))
    return {
        "fwd": layer_fwd + edge(s["fwd_first"], s["fwd_last"], s["fwd"]),
        "bwd": k * s["bwd"] + edge(s["bwd_first"], s["bwd_last"], s["bwd"]),
        "recompute": recompute,
        "attention_fwd": k * s["attention"],
    }


def _stage_layers(spec: ModelSpec, plan: Plan) -> Array:
    """Layers on the slowest pipeline stage (``parallel.stage_layers``)."""
    return stage_layers(spec.num_layers, plan)


def _tp_messages(job: TrainingJob, plan: Plan, act_bytes: float) -> tuple[Array, Array]:
    """(bytes, messages per micro-batch on the fullest stage) of the TP collectives: one h-wide
    activation buffer per block per layer (attention or state-space mixer, MLP; one for a parallel
    block: ``ModelSpec.tp_reductions``) in the forward pass, one in the backward pass and one more
    in a fully recomputed forward."""
    spec = job.spec
    size = plan.microbatch / plan.cp * job.seq_len * spec.hidden_size * act_bytes
    passes = 2.0 + jnp.where(plan.recompute >= 2, 1.0, 0.0)
    return size, spec.tp_reductions / spec.num_layers * passes * _stage_layers(spec, plan)


def _tp_comm(hw: Hardware, job: TrainingJob, plan: Plan, act_bytes: float) -> Array:
    """Exposed TP collectives of one micro-batch on one stage (:func:`_tp_messages`): all-reduces,
    or with sequence parallelism a reduce-scatter + all-gather pair of the same volume each
    (Korthikanti et al. 2022, Sec. 4.2.2)."""
    size, messages = _tp_messages(job, plan, act_bytes)
    all_reduce = collective_s("all_reduce", hw, size, 1.0, plan.tp)
    rs_ag = collective_s("reduce_scatter", hw, size, 1.0, plan.tp) + collective_s(
        "all_gather", hw, size, 1.0, plan.tp
    )
    per_block = jnp.where(plan.sequence_parallel > 0, rs_ag, all_reduce)
    return per_block * messages * (1.0 - plan.tp_overlap)


def _ep_messages(job: TrainingJob, plan: Plan, act_bytes: float) -> tuple[Array, Array]:
    """(bytes, all-to-alls per micro-batch on the fullest stage) of MoE token dispatch and combine:
    two per MoE layer forward, two backward (and two more when recomputed), each of the routed
    tokens' hidden states (top_k copies per token; 1/tp of them with sequence parallelism)."""
    spec = job.spec
    moe_layers = spec.mlp_layers("moe")
    size = moe_dispatch_bytes(spec, plan.microbatch / plan.cp * job.seq_len, act_bytes)
    size = size / jnp.where(plan.sequence_parallel > 0, plan.tp, 1.0)
    passes = 4.0 + jnp.where(plan.recompute >= 2, 2.0, 0.0)
    return size, passes * moe_layers * _stage_layers(spec, plan) / spec.num_layers


def _ep_comm(hw: Hardware, job: TrainingJob, plan: Plan, act_bytes: float) -> Array:
    """MoE all-to-alls of one micro-batch on one stage (:func:`_ep_messages`)."""
    if job.spec.moe is None:
        return jnp.zeros_like(plan.ep)
    size, messages = _ep_messages(job, plan, act_bytes)
    return collective_s("all_to_all", hw, size, plan.tp * plan.cp, plan.ep) * messages


def _ring_chunk(job: TrainingJob, plan: Plan, act_bytes: float) -> Array:
    """Bytes of the K,V chunk a ring-attention rank passes on: its s/cp tokens' keys and values
    (the MLA latent for DeepSeek) of the KV heads on its TP rank."""
    spec = job.spec
    kv_width = (
        spec.kv_cache_elements_per_token if spec.mla is not None else 2 * spec.num_kv_heads * spec.head_dim
    )
    return (
        plan.microbatch
        * job.seq_len
        / plan.cp
        * kv_width
        / jnp.minimum(plan.tp, spec.num_kv_heads)
        * act_bytes
    )


def _cp_comm(hw: Hardware, job: TrainingJob, plan: Plan, act_bytes: float, attention_fwd: Array) -> Array:
    """Ring attention (Liu et al. 2023; Megatron context parallelism): each device passes its K,V
    chunk around the ring, cp−1 steps per layer forward and twice that (K,V and their gradients) in
    the backward pass, overlapped with the attention kernels; only the excess is exposed."""
    spec = job.spec
    steps = plan.cp - 1.0
    per_layer_fwd = steps * p2p_s(hw, _ring_chunk(job, plan, act_bytes), plan.tp)
    attn_layer = attention_fwd / jnp.maximum(_stage_layers(spec, plan), 1.0)
    exposed = jnp.maximum(per_layer_fwd - attn_layer, 0.0) + jnp.maximum(
        2.0 * per_layer_fwd - 2.0 * attn_layer, 0.0
    )
    ring = exposed * _stage_layers(spec, plan)
    return jnp.where(
        plan.cp > 1, jnp.where(plan.cp_a2a > 0, _ulysses_comm(hw, job, plan, act_bytes), ring), 0.0
    )


def _ulysses_messages(job: TrainingJob, plan: Plan, act_bytes: float) -> tuple[Array, Array, Array]:
    """(Q,K,V bytes, output bytes, all-to-all pairs per micro-batch) of DeepSpeed-Ulysses (Jacobs et
    al. 2023): per layer an all-to-all over the cp ranks turns the sequence-split Q, K, V (widths
    nh·d, 2·nkv·d; K,V of fewer heads than tp·cp are replicated) into head-split ones, and one turns
    the attention output back; each is micro-batch · s/cp · width/tp bytes per device. The backward
    pass repeats them (gradients), full recomputation once more."""
    spec = job.spec
    tokens = plan.microbatch * job.seq_len / plan.cp * act_bytes / plan.tp
    kv_heads = jnp.maximum(spec.num_kv_heads, plan.tp * plan.cp)  # replicated up to one per device
    qkv = tokens * (spec.num_heads + 2.0 * kv_heads) * spec.head_dim
    out = tokens * spec.num_heads * spec.head_dim
    passes = 2.0 + jnp.where(plan.recompute >= 2, 1.0, 0.0)
    return qkv, out, passes * _stage_layers(spec, plan)


def _ulysses_comm(hw: Hardware, job: TrainingJob, plan: Plan, act_bytes: float) -> Array:
    """Ulysses' all-to-alls of one micro-batch on one stage (:func:`_ulysses_messages`); the
    attention kernels cannot hide them (they wait on their inputs)."""
    qkv, out, pairs = _ulysses_messages(job, plan, act_bytes)
    per_layer = collective_s("all_to_all", hw, qkv, plan.tp, plan.cp) + collective_s(
        "all_to_all", hw, out, plan.tp, plan.cp
    )
    return pairs * per_layer


def _pp_message(job: TrainingJob, plan: Plan, act_bytes: float) -> Array:
    """Bytes of one stage-boundary send: a micro-batch's activations, already split t ways with
    sequence parallelism (the scatter/gather optimisation of Narayanan et al. 2021, Sec. 4.1, sends
    1/t over the slow tier likewise)."""
    return plan.microbatch / plan.cp * job.seq_len * job.spec.hidden_size * act_bytes / plan.tp


def _pp_comm(hw: Hardware, job: TrainingJob, plan: Plan, act_bytes: float) -> Array:
    """Stage-boundary send/recv per micro-batch: the activation forward, its gradient backward, at
    every one of the ``vpp`` chunk boundaries (Narayanan et al. 2021, Sec. 2.2.2: interleaving
    multiplies the communication by v)."""
    stride = plan.tp * plan.cp * plan.dp
    return jnp.where(plan.pp > 1, 2.0 * plan.vpp * p2p_s(hw, _pp_message(job, plan, act_bytes), stride), 0.0)


def _params_per_device(job: TrainingJob, plan: Plan) -> tuple[Array, Array]:
    """(parameters on the largest stage, of which routed-expert parameters), per device
    (``memory.stage_parameters``: the first stage holds the embedding, the last the LM head)."""
    first, last, experts = stage_parameters(job.spec, plan.tp, plan.pp, plan.ep)
    return jnp.maximum(first, last) + experts, experts


def _dp_and_optimizer(
    hw: Hardware, job: TrainingJob, plan: Plan, backward_s: Array
) -> tuple[Array, Array, Array]:
    """(exposed DP gradient reduction, ZeRO-3 gather/scatter time per step, optimizer step time).

    DP: all-reduce of the gradients (ZeRO 0), or reduce-scatter of gradients + all-gather of the
    updated bf16 weights (ZeRO ≥ 1, the distributed optimizer), over the dp ranks (stride tp·cp);
    expert gradients over dp/ep ranks. ZeRO-3 (Rajbhandari et al. 2020) gathers the weights for the
    forward and the backward pass of every micro-batch and reduce-scatters the gradients.
    Optimizer: Adam reads fp32 master, m, v and the gradient and writes master, m, v and the bf16
    weight: 30 bytes per parameter it owns (all of them, or 1/dp with ZeRO ≥ 1), memory-bound."""
    params, experts = _params_per_device(job, plan)
    dense = params - experts
    grad_b, w_b = _grad_reduce_bytes(job.precision), bytes_per_element(job.precision)
    stride = plan.tp * plan.cp
    dense_dp, expert_dp = plan.dp, plan.dp / plan.ep

    def reduction(count: Array, n: Array, inner_stride: Array) -> Array:
        ar = collective_s("all_reduce", hw, count * grad_b, inner_stride, n)
        rs_ag = collective_s("reduce_scatter", hw, count * grad_b, inner_stride, n) + collective_s(
            "all_gather", hw, count * w_b, inner_stride, n
        )
        return jnp.where(plan.zero_stage >= 1, rs_ag, ar)

    dp_s = reduction(dense, dense_dp, stride)
    if job.spec.moe is not None:  # expert gradients reduce over the dp/ep replicas of each expert
        dp_s = dp_s + reduction(experts, expert_dp, stride * plan.ep)
    exposed = jnp.maximum(dp_s - plan.dp_overlap * backward_s, 0.0)
    # ZeRO-3 gathers: hierarchical over the tiers (every rail carries its share), or (job option) one
    # ring over the dp ranks, each device's share crossing its own NIC, as DeepSpeed's stage 3 behaves
    # in Narayanan et al. 2021, Table 2 (step time flat in the GPU count).
    _, out = links(hw)
    spans_domains = stride * plan.dp > hw.scale_up_domain_size
    flat = jnp.where(spans_domains & (not job.fsdp_hierarchical), 1.0, 0.0)
    gather = jnp.where(
        flat > 0,
        network.all_gather_time_s(params * w_b, plan.dp, out),
        collective_s("all_gather", hw, params * w_b, stride, plan.dp),
    )
    scatter = jnp.where(
        flat > 0,
        network.reduce_scatter_time_s(params * grad_b, plan.dp, out),
        collective_s("reduce_scatter", hw, params * grad_b, stride, plan.dp),
    )
    zero3 = jnp.where(plan.zero_stage >= 3, plan.microbatches * (2.0 * gather + scatter), 0.0)
    exposed = jnp.where(plan.zero_stage >= 3, 0.0, exposed)  # ZeRO-3 reduces per micro-batch instead
    owned = jnp.where(plan.zero_stage >= 1, params / plan.dp, params)
    optimizer = 30.0 * owned / (hw.hbm_bandwidth_Bps * hw.memory_efficiency)
    return exposed, zero3, optimizer


def _stream_s(hw: Hardware, job: TrainingJob, plan: Plan) -> Array:
    """Weight streaming, one micro-batch: the stage's weights in twice (forward, backward) and its
    gradients out once over the host link (Cerebras weight streaming, Hot Chips 34, 2022: layer by
    layer from MemoryX, gradients reduced in SwarmX). The r replicas of a shard behind one broadcast
    domain (r = host_broadcast_devices / (tp·pp), within [1, dp·cp]) share one stream:
    t = params · (2·w + g) / (r · host_bandwidth)."""
    params, _ = _params_per_device(job, plan)
    volume = params * (2.0 * bytes_per_element(job.precision) + _grad_reduce_bytes(job.precision))
    replicas = jnp.clip(hw.host_broadcast_devices / (plan.tp * plan.pp), 1.0, plan.dp * plan.cp)
    return volume / (replicas * jnp.maximum(hw.host_bandwidth_Bps, 1.0))


def _ring(n: Array) -> Array:
    """Share of a buffer each rank sends in one ring all-gather, reduce-scatter or all-to-all over
    n ranks: (n − 1)/n (an all-reduce sends twice that)."""
    return (n - 1.0) / n


def group_collectives(plan: Plan) -> dict[str, str]:
    """The collective each parallel group type runs in the step time, for one (scalar) plan: TP
    all-reduce (or reduce-scatter + all-gather, the same bytes), ring CP passes K,V chunks around
    its ring (an all-reduce's ring traffic), Ulysses CP and EP all-to-all, DP all-reduce, PP
    point-to-point sends. Placement prices each group's wires by it (``search.placement``)."""
    cp = "all_to_all" if float(plan.cp_a2a) > 0 else "all_reduce"
    return {"tp": "all_reduce", "cp": cp, "ep": "all_to_all", "dp": "all_reduce", "pp": "send_recv"}


def comm_bytes(job: TrainingJob, plan: Plan) -> dict[str, Array]:
    """Bytes each rank sends per step, by parallel group type, for the messages the step time prices
    (the same helpers, so the two cannot drift); ``m`` micro-batches per step.

    tp: m · messages · 2(tp−1)/tp · S (:func:`_tp_messages`; reduce-scatter + all-gather the same);
    pp: m · 2·vpp · S (:func:`_pp_message`, pp > 1); cp: ring m · layers · 3(cp−1) · chunk
    (:func:`_ring_chunk`), Ulysses m · pairs · (cp−1)/cp · (S_qkv + S_out); ep: m · messages ·
    (ep−1)/ep · S (:func:`_ep_messages`); dp: the stage's dense gradients over dp and its expert
    gradients over dp/ep, all-reduced (2(n−1)/n · count · 4 B) or, with ZeRO ≥ 1, reduce-scattered
    and the weights all-gathered ((n−1)/n · count · (4 + 2) B); with ZeRO-3 the gathers and the
    scatter of every micro-batch, m · (n−1)/n · params · (2·2 + 4) B; nothing with weight streaming
    (the external memory reduces the gradients)."""
    act_bytes = bytes_per_element(activation_precision(job.precision))
    m = plan.microbatches
    size, messages = _tp_messages(job, plan, act_bytes)
    tp = m * messages * 2.0 * _ring(plan.tp) * size
    pp = jnp.where(plan.pp > 1, m * 2.0 * plan.vpp * _pp_message(job, plan, act_bytes), 0.0)
    qkv, out, pairs = _ulysses_messages(job, plan, act_bytes)
    ulysses = m * pairs * _ring(plan.cp) * (qkv + out)
    ring = m * _stage_layers(job.spec, plan) * 3.0 * (plan.cp - 1.0) * _ring_chunk(job, plan, act_bytes)
    cp = jnp.where(plan.cp > 1, jnp.where(plan.cp_a2a > 0, ulysses, ring), 0.0)
    ep = jnp.zeros_like(plan.ep)
    if job.spec.moe is not None:
        size, messages = _ep_messages(job, plan, act_bytes)
        ep = m * messages * _ring(plan.ep) * size
    params, experts = _params_per_device(job, plan)
    grad_b, w_b = _grad_reduce_bytes(job.precision), bytes_per_element(job.precision)

    def reduction(count: Array, n: Array) -> Array:
        return jnp.where(
            plan.zero_stage >= 1, _ring(n) * count * (grad_b + w_b), 2.0 * _ring(n) * count * grad_b
        )

    dp = reduction(params - experts, plan.dp) + reduction(experts, plan.dp / plan.ep)
    dp = jnp.where(plan.zero_stage >= 3, m * _ring(plan.dp) * params * (2.0 * w_b + grad_b), dp)
    dp = jnp.where(plan.weight_streaming > 0, 0.0, dp)
    return {"tp": tp, "cp": cp, "ep": ep, "dp": dp, "pp": pp}


def training_step(
    hw: Hardware,
    job: TrainingJob,
    plan: Plan,
    table: OpTable | None = None,
    sums: dict[str, Array] | None = None,
) -> TrainingBreakdown:
    """The step time and its breakdown for ``plan`` (a Plan of scalars or of arrays: use ``jax.vmap``);
    ``sums``: the plan's :func:`kernel_sums`, when a batch evaluation shares them among plans."""
    table = job.table() if table is None else table
    peak = peak_flops(hw, job.precision)
    act_bytes = bytes_per_element(activation_precision(job.precision))
    st = _stage_times(hw, job, table, plan, sums)
    micro_compute = st["fwd"] + st["bwd"]
    tp = _tp_comm(hw, job, plan, act_bytes)
    cp = _cp_comm(hw, job, plan, act_bytes, st["attention_fwd"])
    ep = _ep_comm(hw, job, plan, act_bytes)
    pp = _pp_comm(hw, job, plan, act_bytes)
    micro = micro_compute + st["recompute"] + tp + cp + ep + pp
    m = plan.microbatches
    bubble = (plan.pp - 1.0) / plan.vpp * micro
    dp, zero3, optimizer = _dp_and_optimizer(hw, job, plan, m * st["bwd"])
    zero3_exposed = zero3 - plan.zero3_overlap * jnp.minimum(zero3, m * micro_compute)
    # Weight streaming prefetches the next layer while this one computes, so per micro-batch only the
    # streaming beyond the compute is exposed; replicas' gradients are reduced and the optimizer runs
    # in the external memory (not on the device's critical path), so DP, ZeRO and optimizer drop out.
    streamed = plan.weight_streaming > 0
    stream = jnp.where(streamed, m * jnp.maximum(_stream_s(hw, job, plan) - micro_compute, 0.0), 0.0)
    dp, zero3_exposed, optimizer = (jnp.where(streamed, 0.0, x) for x in (dp, zero3_exposed, optimizer))
    step = m * micro + bubble + dp + zero3_exposed + optimizer + stream
    devices = plan.num_devices
    model_flops = plan.global_batch * model_flops_per_sequence(job.spec, job.seq_len)
    recomputed = plan.global_batch * jnp.where(
        plan.recompute >= 2,
        recompute_flops_per_sequence(job.spec, job.seq_len, "full"),
        jnp.where(plan.recompute >= 1, recompute_flops_per_sequence(job.spec, job.seq_len, "selective"), 0.0),
    )
    memory = training_memory(
        job.spec, plan, job.seq_len, hw, job.precision, job.optimizer, fused_attention=job.fused_attention
    )
    return TrainingBreakdown(
        step_time_s=step,
        compute_s=m * micro_compute,
        recompute_s=m * st["recompute"],
        tp_comm_s=m * tp,
        cp_comm_s=m * cp,
        ep_comm_s=m * ep,
        pp_comm_s=m * pp,
        dp_comm_s=dp,
        zero3_comm_s=zero3_exposed,
        stream_s=stream,
        bubble_s=bubble,
        optimizer_s=optimizer,
        mfu=model_flops / (step * devices * peak),
        hfu=(model_flops + recomputed) / (step * devices * peak),
        tokens_per_s=plan.global_batch * job.seq_len / step,
        memory=memory,
    )
