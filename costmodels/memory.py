"""Per-device memory footprint of training and inference, as pure JAX functions.

``training_memory(spec, plan, seq_len, hw)`` and ``inference_memory(spec, tp, pp, ...)`` return a
:class:`MemoryBreakdown` (bytes per device). Plan and hardware leaves may be traced (``jit``/``vmap``);
the model, sequence length, precisions and optimizer are static Python values.

Sources: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
(arXiv:2205.05198) for activations; Rajbhandari et al. 2020, "ZeRO" (arXiv:1910.02054) for model
states; Megatron-LM for what each rank holds (vocab-parallel embedding, fp32 ``main_grad``).

Training models the most loaded pipeline stage: both the first stage (embedding, the most micro-batches
in flight) and the last stage (LM head and fp32 logits) are computed and the one with the larger device
total is returned (with pp = 1 they are the same device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.architectures import MLP_MOE, MLP_NONE, ModelSpec
from costmodels.errors import ConfigError
from costmodels.hardware import (
    LOW_PRECISIONS,
    Hardware,
    activation_precision,
    bytes_per_element,
    kv_cache_precision,
    weight_bytes_per_element,
)
from costmodels.parallel import DEGREE, Plan, knobs
from costmodels.sharding import RULE_REPLICATED, RULE_ROW, tp_rule
from costmodels.workload import (
    STAGE_FIRST,
    STAGE_LAST,
    TP_REPLICATED,
    TP_VOCAB,
    Op,
    forward_ops,
    training_batch,
)

Scalar = Any  # float or jax.Array
GiB = 2.0**30

TRAINING_PRECISIONS: dict[str, float] = {"fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 2.0}
OPTIMIZER_MOMENT_BYTES: dict[str, float] = {"adam": 8.0, "sgd": 0.0}  # fp32 m and v; plain SGD none
GRAD_BYTES = 4.0  # Megatron accumulates gradients in an fp32 main_grad buffer
MASTER_BYTES = 4.0  # fp32 master weights, only when the working weights are 16-bit
LOGIT_BYTES = 4.0  # fp32 logits for the loss (Korthikanti Sec. 4.3: 4sbv/t)
SOFTMAX_STATS_BYTES = 4.0  # flash attention keeps an fp32 log-sum-exp per head and query
ZERO3_GATHERED_LAYERS = 2.0  # ZeRO-3/FSDP: the running layer's gathered weights plus one prefetched
_CATEGORIES = ("weights", "gradients", "optimizer", "activations", "kv_cache", "workspace")


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per device. ``total_bytes`` is what stays on the device; ``offloaded_bytes`` is in host
    memory (``host_capacity_bytes``: this device's share of host DRAM)."""

    weights_bytes: Scalar
    gradients_bytes: Scalar
    optimizer_bytes: Scalar
    activations_bytes: Scalar
    kv_cache_bytes: Scalar
    workspace_bytes: Scalar
    offloaded_bytes: Scalar
    total_bytes: Scalar
    capacity_bytes: Scalar
    host_capacity_bytes: Scalar

    @property
    def feasible(self) -> jax.Array:
        """Device total ≤ HBM capacity and offloaded bytes ≤ host memory (bool array)."""
        on_device = self.total_bytes <= self.capacity_bytes
        return jnp.logical_and(on_device, self.offloaded_bytes <= self.host_capacity_bytes)


def _workspace(hw: Hardware, workspace_bytes: Scalar | None) -> Scalar:
    """The runtime reserve per device: ``workspace_bytes`` if given, else the hardware's."""
    return hw.workspace_bytes if workspace_bytes is None else workspace_bytes


def _breakdown(hw: Hardware, **parts: Scalar) -> MemoryBreakdown:
    """A breakdown from the category parts (missing ones 0); the total sums the on-device ones."""
    values = {f"{c}_bytes": jnp.asarray(parts.get(c, 0.0), dtype=float) for c in (*_CATEGORIES, "offloaded")}
    total = sum(values[f"{c}_bytes"] for c in _CATEGORIES)
    return MemoryBreakdown(
        **values,
        total_bytes=total,
        capacity_bytes=jnp.asarray(hw.hbm_capacity_bytes, dtype=float),
        host_capacity_bytes=jnp.asarray(hw.host_memory_bytes, dtype=float),
    )


def overflow(mem: MemoryBreakdown) -> list[str]:
    """What overflows in a concrete breakdown: if the device does, its categories largest first in
    GiB (``['activations 61.2 GiB', 'optimizer 20.1 GiB', ...]``); if the host does, one line for it."""
    out = []
    if float(np.max(mem.total_bytes)) > float(np.min(mem.capacity_bytes)):
        sizes = {c: float(np.max(getattr(mem, f"{c}_bytes"))) for c in _CATEGORIES}
        ranked = sorted(sizes.items(), key=lambda item: -item[1])
        out = [f"{c.replace('_', ' ')} {v / GiB:.1f} GiB" for c, v in ranked if v > 0]
    offloaded, host = float(np.max(mem.offloaded_bytes)), float(np.min(mem.host_capacity_bytes))
    if offloaded > host:
        out.append(f"offloaded to host {offloaded / GiB:.1f} GiB > host memory {host / GiB:.1f} GiB")
    return out


def overflow_message(mem: MemoryBreakdown) -> str:
    """``"needs 93.1 GiB > 80.0 GiB: activations 61.2 GiB, optimizer 20.1 GiB, ..."``; "" if it fits."""
    parts = overflow(mem)
    total, cap = float(np.max(mem.total_bytes)), float(np.min(mem.capacity_bytes))
    if total <= cap:
        return "; ".join(parts)
    return f"needs {total / GiB:.1f} GiB > {cap / GiB:.1f} GiB: " + ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Parameters, grouped by how Megatron-LM shards them


@dataclass(frozen=True)
class ParamCounts:
    """Whole-model parameter counts by sharding: ``*_tp`` split over tp, ``*_replicated`` copied on
    every TP rank (norms, MoE router, learned positions), ``experts`` split over ep·tp."""

    layers_tp: float
    layers_replicated: float
    experts: float
    embed_tp: float
    embed_replicated: float
    head_tp: float
    head_replicated: float
    tied: bool


def _layer_split(op: Op) -> tuple[float, float]:
    """(TP-split, replicated) parameters of a layer op, by Megatron's sharding rule
    (``sharding.tp_rule``): column-parallel and head-split ops split everything; a row-parallel
    linear splits its weight and keeps its bias whole; norms, routers and MLA down-projections are
    replicated."""
    rule = tp_rule(op)
    params = float(op.params * op.count)
    if rule == RULE_ROW and op.mnk is not None:
        weight = float(op.mnk[1] * op.mnk[2] * op.count)
        return weight, params - weight
    return (0.0, params) if rule == RULE_REPLICATED else (params, 0.0)


@cache
def param_counts(spec: ModelSpec) -> ParamCounts:
    """Sum of ``params·count`` of ``forward_ops`` per sharding group (works for every model_type)."""
    sums = {f.name: 0.0 for f in fields(ParamCounts) if f.name != "tied"}
    for op in forward_ops(spec, training_batch(spec, 1, 1)):
        params = float(op.params * op.count)
        if op.stage == STAGE_FIRST:
            sums["embed_tp" if op.tp == TP_VOCAB else "embed_replicated"] += params
        elif op.stage == STAGE_LAST:
            sums["head_replicated" if op.tp == TP_REPLICATED else "head_tp"] += params
        elif op.expert:
            sums["experts"] += params
        else:
            split, replicated = _layer_split(op)
            sums["layers_tp"] += split
            sums["layers_replicated"] += replicated
    return ParamCounts(**sums, tied=spec.tie_embeddings)


def stage_parameters(
    spec: ModelSpec, tp: Scalar, pp: Scalar, ep: Scalar = 1.0
) -> tuple[Scalar, Scalar, Scalar]:
    """Parameters per device: (non-expert on the first stage, non-expert on the last stage, experts).

    Layers: (layers_tp/tp + layers_replicated)/pp, experts/(ep·tp·pp). First stage: + embedding
    (vocab-parallel, /tp). Last stage: + LM head (/tp) and final norm; a tied head is a second copy of
    the embedding shard there when pp > 1 (Megatron). With pp = 1 both are the one device.
    """
    c = param_counts(spec)
    layers = (c.layers_tp / tp + c.layers_replicated) / pp
    head = c.head_tp / tp + c.head_replicated
    embed = c.embed_tp / tp + c.embed_replicated
    first = layers + embed + jnp.where(pp > 1, 0.0, head)
    last = layers + head + (c.embed_tp / tp if c.tied else 0.0)
    return first, jnp.where(pp > 1, last, first), c.experts / (ep * tp * pp)


# --------------------------------------------------------------------------------------------
# Activations per token per layer (Korthikanti et al. 2022, Sec. 4, generalised term by term)


def _dropout(spec: ModelSpec, dropout: bool | None) -> tuple[float, float]:
    """(attention, hidden) dropout on (1.0) or off, from the config's probabilities (GPT-2 / Megatron
    0.1; Llama-family 0.0) unless ``dropout`` overrides both. A mask is stored only when p > 0."""
    if dropout is not None:
        return float(dropout), float(dropout)
    return float(spec.attention_dropout > 0), float(spec.hidden_dropout > 0)


def _mlp_terms(spec: ModelSpec, width: int, e: float, gemm_in: float | None = None) -> float:
    """Stored MLP intermediates per token: plain 2·I (activation input, down_proj input: the 8+8 of
    Korthikanti's 34 for I = 4h); gated 3·I: Megatron-Core's fused SwiGLU (``bias_swiglu_fusion``, on
    by default) keeps the gate and up outputs (2·I) and recomputes the activation in its backward, and
    the down_proj keeps its input, the product (I). The down_proj input is kept at ``gemm_in`` bytes
    (an FP8 copy under Transformer Engine), the rest at ``e``."""
    gemm_in = e if gemm_in is None else gemm_in
    return width * (e * (2.0 if spec.gated_mlp else 1.0) + gemm_in)


def _attention_terms(spec: ModelSpec, e: float) -> tuple[float, float, float]:
    """(replicated, sharded, per-KV-head) bytes per token of attention without the scores.
    Q and the out-proj input are sharded (Korthikanti 4sbh + 2sbh of the 24/t part, with q width
    nh·head_dim); K, V are 2·head_dim per KV head (GQA); qk-norm inputs add Q and K again.
    MLA (DeepSeek-V2 Sec. 2.1): per-head decompressed K, V and Q are sharded, the latents
    (q_a / kv_a norm inputs and outputs, k_rope) are replicated."""
    nh, hd = spec.num_heads, spec.head_dim
    if spec.mla is not None:
        m = spec.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        latent = 2 * m.q_lora_rank + 2 * m.kv_lora_rank + m.qk_rope_head_dim
        return e * latent, e * nh * (2 * qk + 2 * m.v_head_dim), 0.0
    qk_norm = 1.0 if spec.qk_norm else 0.0
    gate = 1.0 if spec.attn_output_gate else 0.0  # Qwen3-Next's output gate input
    return 0.0, e * nh * hd * (2.0 + qk_norm + gate), e * hd * (2.0 + qk_norm)


def _mlp_block_terms(spec: ModelSpec, kind: str, e: float, gemm_in: float) -> tuple[float, float]:
    """(replicated, sharded) MLP bytes per token. MoE: fp32 router probabilities (4·E), the top_k
    dispatched copies of the input and of the expert outputs (the all-to-all buffers, 2·top_k·h), the
    routed copies' expert intermediates (top_k × expert width) and the shared experts."""
    if kind == MLP_NONE:
        return 0.0, 0.0
    if kind != MLP_MOE:
        return 0.0, _mlp_terms(spec, spec.intermediate_size, e, gemm_in)
    moe = spec.moe
    replicated = 4.0 * moe.num_experts + 2.0 * e * moe.top_k * spec.hidden_size
    sharded = moe.top_k * _mlp_terms(spec, moe.expert_intermediate, e, gemm_in)
    return replicated, sharded + _mlp_terms(spec, moe.shared_intermediate, e, gemm_in)


def _ssm_terms(spec: ModelSpec, e: float) -> tuple[float, float]:
    """(replicated, sharded) bytes per token a state-space mixer keeps for its backward pass: the
    in_proj output, the convolution's output, the scan output y and the gated norm's output (the
    out_proj input), as mamba_ssm's fused Mamba-2 / Mamba kernels save them; Mamba also keeps Δ
    (d_inner) and x_proj's replicated Δ, B, C (dt_rank + 2N). Heads and groups split over tp."""
    m = spec.ssm
    if m is None:
        return 0.0, 0.0
    di, gn, heads = m.inner, m.groups * m.state, m.heads
    if m.kind == "mamba":
        return e * (m.dt_rank + 2 * m.state), e * (2 * di + di + di + di)
    projected = 2 * di + 2 * gn + (heads if m.kind == "mamba2" else 2 * heads)
    return 0.0, e * (projected + m.conv_channels + di + di)


@cache
def _layer_terms(spec: ModelSpec, e: float, drop: float, gemm_in: float) -> tuple[float, float, float]:
    """(replicated, sharded, per-KV-head) bytes per token, averaged over the layer kinds. Norm inputs
    (1 in a parallel block, else 2; +2 for Gemma-2's post-norms) and the outputs of the norms that feed
    GEMMs (a post-norm's output feeds a residual add and is not kept) and h-wide dropout masks
    (attention and MLP outputs, 1 B) are replicated: Korthikanti's 10sbh for GPT (4 + 4 + 2).

    ``gemm_in``: bytes of a saved tensor whose only use is as a GEMM input — the norm outputs and the
    MLP down-projection input. FP8 training (Transformer Engine) saves these as the FP8 copies its
    GEMMs read (1 B) and adds an FP8 copy of the attention output (the out-projection's input, which
    flash attention keeps in 16 bits for its own backward); otherwise ``gemm_in`` = ``e``.

    An encoder-decoder's cross-attention block stores what a self-attention block does (its keys
    and values come from as many source tokens as there are target tokens in training), plus its
    norm's output and its dropout mask."""
    h, n = spec.hidden_size, spec.num_layers
    cross = spec.cross_layers / n
    post = 2 if spec.norms_per_layer == 4 else 0  # Gemma-2's post-norms: inputs saved, outputs feed adds
    norm_in = e * h * (spec.sublayers / n + post)  # one norm input per block (one in a parallel block)
    norms = norm_in + gemm_in * h * (spec.norms_per_layer - post + cross) + (2.0 + cross) * drop * h
    rep, shard, kv_head = _attention_terms(spec, e)
    if gemm_in < e:
        shard += gemm_in * spec.num_heads * spec.head_dim
    attention, ssm = (spec.attention_layers + spec.cross_layers) / n, spec.ssm_layers / n  # shares
    rep, shard, kv_head = rep * attention, shard * attention, kv_head * attention
    ssm_rep, ssm_shard = _ssm_terms(spec, e)
    rep, shard = rep + ssm_rep * ssm, shard + ssm_shard * ssm
    for kind, count in spec.layer_kinds:
        mlp_rep, mlp_shard = _mlp_block_terms(spec, kind, e, gemm_in)
        rep, shard = rep + mlp_rep * count / n, shard + mlp_shard * count / n
    return norms + rep, shard, kv_head


def _score_bytes(spec: ModelSpec, seq_len: int, e: float, drop: float, fused: bool) -> float:
    """Per token (before /t): softmax output e, dropout mask 1 and dropout output e per head and key,
    Korthikanti's 5as for GPT (2as without dropout); fused (flash) attention: fp32 softmax stats only."""
    attention = (spec.attention_layers + spec.cross_layers) / spec.num_layers  # attention blocks per layer
    if fused:
        return SOFTMAX_STATS_BYTES * spec.num_heads * attention
    return spec.num_heads * seq_len * (e + drop * (1.0 + e)) * attention


def layer_activation_bytes(
    spec: ModelSpec,
    plan: Plan,
    seq_len: int,
    precision: str = "bf16",
    *,
    fused_attention: bool = False,
    dropout: bool | None = None,
) -> Scalar:
    """Bytes one layer stores for one micro-batch on one device (Korthikanti Sec. 4.2 and 5):
    GPT: sbh(10 + 24/t + 5as/(ht)) with TP; sbh(34 + 5as/h)/t with TP+SP; selective recompute drops the
    score term; full recompute keeps the layer input 2sbh (/t with SP). Tokens per device b·s/cp.
    Other architectures term by term: see ``_layer_terms``, ``_attention_terms``, ``_mlp_block_terms``."""
    e, (attn_drop, hidden_drop) = _training_bytes(precision), _dropout(spec, dropout)
    gemm_in = bytes_per_element(precision) if precision in LOW_PRECISIONS else e
    rep, shard, kv_head = _layer_terms(spec, e, hidden_drop, gemm_in)
    t = plan.tp
    t_sp = jnp.where(plan.sequence_parallel > 0, t, 1.0)
    kv_heads = jnp.maximum(spec.num_kv_heads / t, 1.0)  # a KV head is never split: replicated if kv < t
    score = _score_bytes(spec, seq_len, e, attn_drop, fused_attention) / t
    stored = rep / t_sp + shard / t + kv_heads * kv_head + jnp.where(plan.recompute >= 1, 0.0, score)
    per_token = jnp.where(plan.recompute >= 2, e * spec.hidden_size / t_sp, stored)
    return plan.microbatch * seq_len / plan.cp * per_token


def _in_flight(plan: Plan, num_layers: int) -> tuple[Scalar, Scalar, Scalar]:
    """(layer·micro-batches on the first stage, on the last stage, micro-batches on the first stage).
    1F1B: the first stage holds pp micro-batches of L/pp layers (L in all); interleaved (vpp > 1) it
    holds pp·vpp + pp − 1 chunks of L/(pp·vpp) layers = L·(1 + (pp−1)/(pp·vpp)) (Korthikanti Sec.
    4.2.3; Megatron's warm-up count), the last stage (vpp−1)·pp + 1 chunks. Never more than exist."""
    pp, vpp = plan.pp, plan.vpp
    chunks = plan.microbatches * vpp
    first = jnp.minimum(jnp.where(vpp > 1, pp * vpp + pp - 1, pp), chunks)
    last = jnp.minimum(jnp.where(vpp > 1, (vpp - 1) * pp + 1, 1.0), chunks)
    per_chunk = num_layers / (pp * vpp)
    return first * per_chunk, last * per_chunk, first / vpp


def _training_activations(
    spec: ModelSpec, plan: Plan, seq_len: int, precision: str, fused: bool, dropout: bool | None
) -> tuple[Scalar, Scalar]:
    """(first stage, last stage) activation bytes. Korthikanti Sec. 4.3: the embedding dropout mask
    sbh/t_sp per micro-batch in flight on the first stage; on the last stage the final-norm input and
    LM-head input 2sbh/t_sp each and fp32 logits 4sbv/t (with pp = 1 the one stage holds both)."""
    e, (_, drop) = _training_bytes(precision), _dropout(spec, dropout)
    layer = layer_activation_bytes(spec, plan, seq_len, precision, fused_attention=fused, dropout=dropout)
    first_layers, last_layers, first_mb = _in_flight(plan, spec.num_layers)
    tokens = plan.microbatch * seq_len / plan.cp
    t_sp = jnp.where(plan.sequence_parallel > 0, plan.tp, 1.0)
    embed = drop * tokens * spec.hidden_size / t_sp * first_mb
    head = tokens * (2.0 * e * spec.hidden_size / t_sp + LOGIT_BYTES * spec.vocab_size / plan.tp)
    first = layer * first_layers + embed + jnp.where(plan.pp > 1, 0.0, head)
    return first, layer * last_layers + head


# --------------------------------------------------------------------------------------------
# Model states: weights, gradients, optimizer (mixed precision; ZeRO stages)


def _training_bytes(precision: str) -> float:
    """Weight/activation bytes for training; fp8 (Transformer Engine) keeps bf16 weights and
    activations between GEMMs (its fp8 copies are not counted)."""
    if precision not in TRAINING_PRECISIONS:
        valid = ", ".join(TRAINING_PRECISIONS)
        raise ConfigError(f"unknown training precision {precision!r}; valid: {valid}")
    return TRAINING_PRECISIONS[precision]


def _optimizer_bytes(optimizer: str, weight_bytes: float) -> float:
    """Optimizer-state bytes per parameter: fp32 master (16-bit weights only) + moments; Adam: 4 + 8.
    With 2-byte weights and the 4-byte fp32 main_grad that is 18 B/param, Megatron-LM's convention and
    Korthikanti's (Sec. 6, Fig. 1); ZeRO (Rajbhandari Sec. 3.1) counts 16 with 2-byte gradients. We take
    18: Megatron accumulates gradients in fp32 (bf16 training needs it), and Fig. 1 is computed so."""
    if optimizer not in OPTIMIZER_MOMENT_BYTES:
        raise ConfigError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZER_MOMENT_BYTES)}")
    return (MASTER_BYTES if weight_bytes < 4 else 0.0) + OPTIMIZER_MOMENT_BYTES[optimizer]


def _model_states(
    dense: Scalar, experts: Scalar, gathered: Scalar, plan: Plan, weight_bytes: float, opt_bytes: float
) -> tuple[Scalar, Scalar, Scalar, Scalar]:
    """(weights, gradients, optimizer, external) bytes. ZeRO (Rajbhandari et al. 2020, Sec. 5): stage ≥ 1
    shards optimizer states, ≥ 2 gradients, 3 weights over the data-parallel group (dp·cp, Megatron's
    distributed optimizer; experts over dp·cp/ep); stage 3 adds ``gathered`` weight bytes in flight.
    Weight streaming keeps only the ``gathered`` layers' weights and gradients on the device; one copy
    of the whole state (weights, gradients, optimizer) lives in external memory, shared by the dp·cp
    replicas: ``external`` is this device's share of it."""
    zd = plan.dp * plan.cp
    share = dense / zd + experts * plan.ep / zd

    def held(stage: int) -> Scalar:
        return jnp.where(plan.zero_stage >= stage, share, dense + experts)

    streamed = plan.weight_streaming > 0
    weights = weight_bytes * held(3) + jnp.where(plan.zero_stage >= 3, gathered, 0.0)
    weights = jnp.where(streamed, gathered, weights)
    grads = jnp.where(streamed, gathered * GRAD_BYTES / weight_bytes, GRAD_BYTES * held(2))
    opt = jnp.where(streamed, 0.0, opt_bytes * held(1))
    external = jnp.where(streamed, (weight_bytes + GRAD_BYTES + opt_bytes) * share, 0.0)
    return weights, grads, opt, external


def _zero3_gathered_bytes(spec: ModelSpec, plan: Plan, weight_bytes: float) -> Scalar:
    """ZeRO-3 / FSDP FULL_SHARD: the full (unsharded over dp) weights of the layer running and of the
    one being prefetched, ``ZERO3_GATHERED_LAYERS`` layers (at most the stage's L/pp)."""
    c = param_counts(spec)
    per_layer = c.layers_tp / plan.tp + c.layers_replicated + c.experts / (plan.ep * plan.tp)
    per_layer = per_layer / spec.num_layers
    return weight_bytes * per_layer * jnp.minimum(ZERO3_GATHERED_LAYERS, spec.num_layers / plan.pp)


_RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "positive": lambda a: a > 0,
    ">= 0": lambda a: a >= 0,
    "in [0, 1]": lambda a: (a >= 0) & (a <= 1),
}


def _check(rule: str, **values: Scalar) -> None:
    """ConfigError naming the first concrete value that breaks ``rule`` (traced values pass)."""
    for name, value in values.items():
        if value is None or isinstance(value, jax.core.Tracer):
            continue
        arr = np.asarray(value, dtype=float)
        if not bool(np.all(_RULES[rule](arr))):
            raise ConfigError(f"{name} must be {rule}, got {arr.tolist()}")


def training_memory(
    spec: ModelSpec,
    plan: Plan,
    seq_len: int,
    hw: Hardware,
    precision: str = "bf16",
    optimizer: str = "adam",
    offload_optimizer: bool = False,
    *,
    fused_attention: bool = False,
    dropout: bool | None = None,
    workspace_bytes: Scalar | None = None,
) -> MemoryBreakdown:
    """Memory per device of the most loaded pipeline stage (max of first and last by device total).
    ``offload_optimizer``: optimizer states live in host memory (``offloaded_bytes``); so does the
    whole training state under ``plan.weight_streaming``. ``workspace_bytes``: the runtime reserve
    (default the hardware's ``workspace_bytes``)."""
    _check("positive", seq_len=seq_len, **{f"parallelism.{d}": getattr(plan, d) for d in knobs(DEGREE)})
    w_b = _training_bytes(precision)
    opt_b = _optimizer_bytes(optimizer, w_b)
    first_p, last_p, experts = stage_parameters(spec, plan.tp, plan.pp, plan.ep)
    gathered = _zero3_gathered_bytes(spec, plan, w_b)
    act_first, act_last = _training_activations(spec, plan, seq_len, precision, fused_attention, dropout)
    stages = []
    for params, act in ((first_p, act_first), (last_p, act_last)):
        w, g, o, external = _model_states(params, experts, gathered, plan, w_b, opt_b)
        host = o if offload_optimizer else 0.0
        parts = dict(weights=w, gradients=g, optimizer=o - host, activations=act, offloaded=host + external)
        stages.append(_breakdown(hw, workspace=_workspace(hw, workspace_bytes), **parts))
    first, last = stages
    use_first = jnp.logical_or(plan.pp <= 1, first.total_bytes >= last.total_bytes)
    return jax.tree.map(lambda a, b: jnp.where(use_first, a, b), first, last)


# --------------------------------------------------------------------------------------------
# Inference


def kv_elements_per_token(spec: ModelSpec, tp: Scalar) -> Scalar:
    """KV-cache elements per token per layer on one device: 2·head_dim·max(kv_heads/tp, 1) (a KV head
    is replicated, not split, when kv_heads < tp); the MLA latent is replicated over tp."""
    if spec.mla is not None:
        return jnp.asarray(float(spec.kv_cache_elements_per_token))
    return 2.0 * spec.head_dim * jnp.maximum(spec.num_kv_heads / tp, 1.0)


def _inference_activations(spec: ModelSpec, tp: Scalar, tokens: Scalar, rows: Scalar, e: float) -> Scalar:
    """Peak live activations of one forward step (nothing kept for backward; fused attention):
    tokens·e·(2h + widest sub-block) + rows·V/tp·4 (fp32 last-token logits). The 2h are the residual
    stream and the normed input; the widest sub-block is attention (Q, K, V, O on this device) or the
    MLP (gate+up+product 3I/tp gated, up+act 2I/tp plain; MoE: top_k dispatched copies in and out
    plus their intermediates)."""
    h, nh, hd = spec.hidden_size, spec.num_heads, spec.head_dim
    attention = 2.0 * nh * hd / tp + kv_elements_per_token(spec, tp)
    mult = 3.0 if spec.gated_mlp else 2.0
    mlp = mult * spec.intermediate_size / tp
    if spec.ssm is not None:  # in_proj's output and the convolution's
        ssm_width = (2 * spec.ssm.inner + 2 * spec.ssm.groups * spec.ssm.state + spec.ssm.conv_channels) / tp
        attention = jnp.maximum(attention, ssm_width)
    if spec.moe is not None:
        moe = spec.moe
        routed = moe.top_k * (2.0 * h + mult * moe.expert_intermediate / tp)
        mlp = jnp.maximum(mlp, routed + mult * moe.shared_intermediate / tp)
    return tokens * e * (2.0 * h + jnp.maximum(attention, mlp)) + rows * LOGIT_BYTES * spec.vocab_size / tp


def inference_memory(
    spec: ModelSpec,
    tp: Scalar,
    pp: Scalar,
    batch_size: Scalar,
    context_tokens: Scalar,
    hw: Hardware,
    precision: str = "fp16",
    kv_precision: str | None = None,
    offload_weights: Scalar = 0.0,
    offload_kv: Scalar = 0.0,
    *,
    prefill_tokens: Scalar | None = None,
    workspace_bytes: Scalar | None = None,
    source_tokens: Scalar = 0.0,
    ep: Scalar = 1.0,
) -> MemoryBreakdown:
    """Serving memory per device: weights of the larger pipeline stage (all experts resident, or
    1/``ep`` of them when the experts are spread over ``ep`` devices), the KV
    cache of batch_size sequences of context_tokens over L/pp layers (a sliding-window layer keeps its
    window: ``ModelSpec.cached_layer_tokens``) and, for state-space layers, each sequence's recurrent
    state in the 16-bit activation type (vLLM's ``mamba_ssm_cache_dtype`` "auto"), the activations of
    the largest step (a
    prefill of ``prefill_tokens``, default the whole batch·context), workspace. ``offload_*``: that
    fraction of weights / KV cache lives in host memory instead. ``source_tokens``: an
    encoder-decoder's encoder input per sequence, whose keys and values each decoder layer caches."""
    _check("positive", tp=tp, pp=pp, ep=ep)
    _check(">= 0", batch_size=batch_size, context_tokens=context_tokens, prefill_tokens=prefill_tokens)
    _check("in [0, 1]", offload_weights=offload_weights, offload_kv=offload_kv)
    w_b = weight_bytes_per_element(precision)
    kv_b = bytes_per_element(kv_cache_precision(precision, kv_precision))
    first, last, experts = stage_parameters(spec, tp, pp, ep)
    weights = w_b * (jnp.maximum(first, last) + experts)
    layer_tokens = spec.cached_layer_tokens(context_tokens, source_tokens)
    kv = batch_size * layer_tokens / pp * kv_elements_per_token(spec, tp) * kv_b
    act_b = bytes_per_element(activation_precision(precision))
    if spec.ssm is not None:  # each sequence's recurrent state, split over tp with the heads
        kv = kv + batch_size * spec.state_elements / (pp * tp) * act_b
    step = batch_size * context_tokens if prefill_tokens is None else prefill_tokens
    act = _inference_activations(spec, tp, step, batch_size, act_b)
    parts = dict(weights=(1.0 - offload_weights) * weights, kv_cache=(1.0 - offload_kv) * kv, activations=act)
    offloaded = offload_weights * weights + offload_kv * kv
    return _breakdown(hw, workspace=_workspace(hw, workspace_bytes), offloaded=offloaded, **parts)
