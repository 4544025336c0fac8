"""Ops on one device: a static table of a model's ops, sharded by a parallel plan and priced.

:func:`table_from_ops` turns workload ops (one sequence / one query) into arrays over ops with how
tensor parallelism shards each (Megatron-LM, Shoeybi et al. 2019: column-parallel QKV / MLP-up /
LM head, row-parallel attention-out / MLP-down, heads split for attention, norms replicated or
split along the sequence with sequence parallelism, Korthikanti et al. 2022). :func:`shard` scales
and divides it for a plan (arrays, so ``vmap`` over plans works) and :func:`op_times` prices the
forward and backward kernels with the compute model. Communication is priced by
:mod:`costmodels.fabric`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from costmodels.architectures import ModelSpec
from costmodels.compute import (
    KIND_ATTENTION,
    KIND_ELEMENTWISE,
    KIND_EMBEDDING,
    KIND_FLASH,
    KIND_FLASH_BWD,
    KIND_MATMUL,
    kernel_time_s,
)
from costmodels.hardware import Hardware, peak_flops
from costmodels.parallel import Plan
from costmodels.workload import (
    FLASH_BACKWARD_FLOPS,
    STAGE_FIRST,
    STAGE_LAST,
    STAGE_LAYER,
    TP_COLUMN,
    TP_REPLICATED,
    TP_ROW,
    TP_SPLIT,
    TP_VOCAB,
    Op,
)

Array = Any

# How tensor parallelism shards an op (Megatron-LM): which of FLOPs / weight / input / output it
# divides; the table's codes of the ops' own ``tp`` marks (costmodels.workload.TP_*).
RULE_REPLICATED, RULE_COLUMN, RULE_ROW, RULE_SPLIT, RULE_VOCAB = 0, 1, 2, 3, 4
_RULES = {
    TP_REPLICATED: RULE_REPLICATED,
    TP_COLUMN: RULE_COLUMN,
    TP_ROW: RULE_ROW,
    TP_SPLIT: RULE_SPLIT,
    TP_VOCAB: RULE_VOCAB,
}
GROUP_FIRST, GROUP_LAYER, GROUP_LAST = 0, 1, 2
_GROUPS = {STAGE_FIRST: GROUP_FIRST, STAGE_LAYER: GROUP_LAYER, STAGE_LAST: GROUP_LAST}


def tp_rule(op: Op) -> int:
    """How tensor parallelism shards ``op`` (one of the RULE_* codes): the mark it was built with."""
    return _RULES[op.tp]


@dataclass(frozen=True)
class OpTable:
    """Forward ops of one sequence as arrays over ops (static: NumPy)."""

    flops: np.ndarray
    weight_bytes: np.ndarray
    input_bytes: np.ndarray
    output_bytes: np.ndarray
    layers: np.ndarray  # executions per step (layers of its kind); 1 for embedding / head ops
    group: np.ndarray  # 0 first stage, 1 every stage (layers), 2 last stage
    kind: np.ndarray
    rule: np.ndarray
    rows: np.ndarray  # GEMM output rows per sequence (tokens, or routed tokens per expert)
    cols: np.ndarray
    reduce: np.ndarray
    gemms: np.ndarray  # GEMMs per sequence (experts, or batch·heads for attention)
    expert: np.ndarray  # 1 for routed-expert ops (sharded over ep)
    attention_core: np.ndarray  # recomputed by selective recomputation
    names: tuple[str, ...]


def _attention_geometry(op: Op, spec: ModelSpec, queries: float, keys: float) -> tuple[float, ...]:
    """Batched-GEMM geometry (rows, cols, reduce, gemms) of an attention op: per head, ``queries``
    query rows against ``keys`` keys; the head width is what its FLOPs imply."""
    if op.queries_keys is not None:  # an encoder-decoder's encoder or cross-attention
        queries, keys = op.queries_keys
    if not op.name.endswith((".av", ".scores")):
        return queries, keys, float(spec.head_dim), float(spec.num_heads)
    d = op.flops / (2.0 * spec.num_heads * queries * keys) if op.flops else float(spec.head_dim)
    if op.name.endswith(".av"):
        return queries, d, keys, float(spec.num_heads)
    return queries, keys, d, float(spec.num_heads)


def table_from_ops(ops: list[Op], spec: ModelSpec, queries: float, keys: float) -> OpTable:
    """Arrays over ``ops`` (the ops of one sequence or query: ``queries`` new tokens attending ``keys``)."""
    rows = []
    for op in ops:
        group = _GROUPS[op.stage]
        kind = {"matmul": KIND_MATMUL, "attention": KIND_ATTENTION, "embedding": KIND_EMBEDDING}.get(
            op.kind, KIND_ELEMENTWISE
        )
        if op.flash:
            kind = KIND_FLASH
        geometry = (1.0, 1.0, 1.0, 1.0)
        if op.kind == "matmul":
            geometry = (op.mnk[0], op.mnk[1], op.mnk[2], op.gemms)
        elif op.kind == "attention" and op.core:  # a state-space scan has no head geometry
            geometry = _attention_geometry(op, spec, queries, keys)
        rows.append(
            (
                op.flops,
                op.weight_bytes,
                op.input_bytes,
                op.output_bytes,
                op.count,
                group,
                kind,
                tp_rule(op),
                *geometry,
                float(op.expert),
                float(op.core),
            )
        )
    cols = np.array(rows, dtype=np.float64).T
    return OpTable(
        *cols[:6],
        cols[6].astype(np.int32),
        cols[7].astype(np.int32),
        *cols[8:],
        names=tuple(op.name for op in ops),
    )


# --------------------------------------------------------------------------------------------
# Sharding the table for one plan


@dataclass(frozen=True)
class _Sharded:
    flops: Array
    weight: Array
    x: Array
    y: Array
    rows: Array
    cols: Array
    reduce: Array
    gemms: Array


def shard(t: OpTable, plan: Plan, seqs: Array) -> _Sharded:
    """Per-device quantities of each op for a micro-batch of ``seqs`` sequence-equivalents (mb / cp)."""
    tp, sp, ep = plan.tp, plan.sequence_parallel, plan.ep
    rule = t.rule
    rep_div = jnp.where(sp > 0, tp, 1.0)  # replicated ops run on s/t tokens with sequence parallelism
    flops_div = jnp.where(rule == RULE_REPLICATED, rep_div, jnp.where(rule == RULE_VOCAB, 1.0, tp))
    w_div = jnp.where((rule == RULE_COLUMN) | (rule == RULE_ROW) | (rule == RULE_VOCAB), tp, 1.0)
    x_div = jnp.where(
        (rule == RULE_ROW) | (rule == RULE_SPLIT), tp, jnp.where(rule == RULE_REPLICATED, rep_div, 1.0)
    )
    y_div = jnp.where(
        (rule == RULE_COLUMN) | (rule == RULE_SPLIT),
        tp,
        jnp.where((rule == RULE_REPLICATED) | (rule == RULE_VOCAB), rep_div, 1.0),
    )
    expert = t.expert > 0
    w_div = w_div * jnp.where(expert, ep, 1.0)
    gemms = jnp.where(expert, t.gemms / ep, t.gemms)
    rows = t.rows * seqs * jnp.where(expert, ep, 1.0)
    cols = jnp.where(rule == RULE_COLUMN, t.cols / tp, t.cols)
    reduce = jnp.where(rule == RULE_ROW, t.reduce / tp, t.reduce)
    return _Sharded(
        t.flops * seqs / flops_div,
        t.weight_bytes / w_div,
        t.input_bytes * seqs / x_div,
        t.output_bytes * seqs / y_div,
        rows,
        cols,
        reduce,
        gemms,
    )


QUANTIZE_BYTES_PER_ELEMENT = 4.0  # fp8 cast + transpose: read 16-bit, write two 8-bit copies


def op_times(
    hw: Hardware,
    precision: str,
    t: OpTable,
    s: _Sharded,
    quantize_inputs: bool = False,
    attention_precision: str | None = None,
) -> tuple[Array, Array]:
    """(forward, backward) time of each op, with the backward bytes of ``workload._backward``.

    Matmul Y = X·W: dX = dY·Wᵀ (output rows×reduce; reads W and dY, writes dX) and dW = Xᵀ·dY
    (output reduce×cols; reads X and dY, writes dW). Elementwise ops: 2× the forward FLOPs, reading
    the saved input and dY and writing dX (and a norm's gain gradient): 2x + y + w bytes. A flash
    attention backward recomputes the scores: 2.5× the forward FLOPs at its own efficiency; an
    unfused attention GEMM's backward is 2× at the forward's. Embedding: a scatter-add of dY into the
    gathered rows. ``quantize_inputs`` (fp8/fp4 training, Transformer Engine): each GEMM's 16-bit
    input is cast to 8 bits (with a transposed copy for the weight gradient) in a memory-bound pass
    before the forward GEMM, and its output gradient before the backward ones (4 B per element read
    and written); the weights' casts are cached across micro-batches and not counted.
    ``attention_precision``: the attention kernels' type (``compute.kernel_time_s``).
    """
    peak = peak_flops(hw, precision)
    is_mm = t.kind == KIND_MATMUL
    moved = s.weight + s.x + s.y

    def kernel(kind: Array, flops: Array, bytes_: Array, *geometry: Array, quantize: bool = True) -> Array:
        return kernel_time_s(
            hw,
            peak,
            kind,
            flops,
            bytes_,
            *geometry,
            quantize=quantize,
            precision=precision,
            attention_precision=attention_precision,
        )

    fwd = kernel(t.kind, s.flops, moved, s.rows, s.cols, s.gemms, s.reduce)
    gemm = 2.0 * s.rows * s.cols * s.reduce * s.gemms
    dgrad = kernel(t.kind, gemm, moved, s.rows, s.reduce, s.gemms, s.cols)
    wgrad = kernel(t.kind, s.flops, moved, s.reduce, s.cols, s.gemms, s.rows)
    emb = t.kind == KIND_EMBEDDING  # the rest: attention and elementwise ops, no GEMM tiles to quantize
    flash = t.kind == KIND_FLASH
    other = kernel(
        jnp.where(flash, KIND_FLASH_BWD, t.kind),
        jnp.where(emb, s.flops, jnp.where(flash, FLASH_BACKWARD_FLOPS, 2.0) * s.flops),
        jnp.where(emb, s.y + s.weight, moved + s.x),
        quantize=False,
    )
    bwd = jnp.where(is_mm, dgrad + wgrad, other)
    if quantize_inputs:  # bytes in the table are 16-bit: elements = bytes / 2
        casts = QUANTIZE_BYTES_PER_ELEMENT / 2.0
        fwd = fwd + jnp.where(is_mm, kernel(KIND_ELEMENTWISE, 0.0, casts * s.x, quantize=False), 0.0)
        bwd = bwd + jnp.where(is_mm, kernel(KIND_ELEMENTWISE, 0.0, casts * s.y, quantize=False), 0.0)
    return fwd, bwd
