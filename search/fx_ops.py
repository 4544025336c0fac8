"""A captured FX graph as the op model's ops: any ``nn.Module`` FX can trace (a CNN, an LSTM, a chain
of GEMMs, a transformer) gets the per-op roofline and kernel-time estimate the transformer families
get from ``costmodels.workload``.

Each aten node of :func:`search.fx_graph.capture`'s graph becomes one :class:`costmodels.workload.Op`
(nodes with the same target and shapes merge into one op with a ``count``):

* ``mm`` / ``addmm`` (``m×k`` by ``k×n``): a GEMM, ``2·m·k·n`` FLOPs (+ ``m·n`` for the bias add),
  geometry (m, n, k); ``bmm`` / ``baddbmm``: ``b`` such GEMMs (kind ``attention``: batched, no
  weights, as the attention matmuls of the transformer model);
* ``convolution`` (N, C_in, spatial in → N, C_out, spatial out, kernel K, g groups): as its implicit
  GEMM, ``g`` GEMMs of (N·spatial_out) × (C_out/g) reduced over (C_in/g)·K, ``2·N·C_out·spatial_out·
  (C_in/g)·K`` FLOPs (+ N·C_out·spatial_out for a bias); ``convolution_backward``: the input gradient
  and the weight gradient it is asked for, each a GEMM of the same FLOPs (the transposed geometries),
  and the bias gradient a reduction;
* ``scaled_dot_product_*attention``: ``4·B·H·L_q·L_k·D`` FLOPs and a softmax of 5 per score (fused
  kernels: kind ``flash``; their backward ``FLASH_BACKWARD_FLOPS``×);
* ``embedding``: a gather (the rows it reads, written out);
* views, transposes, slices, ``getitem`` and ``detach``: free (no kernel);
* every other tensor op: elementwise, one FLOP per output element (softmax 5, a reduction one per
  input element), reading its tensor inputs and writing its output.

Bytes are the tensors' own sizes (their dtypes); an input that is a parameter or buffer is counted
as weight bytes. The graph's dtypes are the module's: build it in the dtype of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from math import prod
from typing import Any

import torch

from costmodels.workload import FLASH_BACKWARD_FLOPS, SOFTMAX_FLOPS, Op
from search.fx_graph import FREE as FX_FREE
from search.fx_graph import SOFTMAXES, SUMS, Captured, nbytes_of, shape_of, tensor_args

aten = torch.ops.aten
FREE = FX_FREE | {  # and the ops that split a tensor into views of it
    aten.select.int,
    aten.unbind.int,
    aten.split.Tensor,
    aten.unsafe_split.Tensor,
    aten.split_with_sizes.default,
    aten.as_strided.default,
}
GEMMS = {aten.mm.default, aten.addmm.default}
BATCHED = {aten.bmm.default, aten.baddbmm.default}
SDPA = {
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten.scaled_dot_product_attention.default,
}
SDPA_BACKWARD = {
    aten._scaled_dot_product_efficient_attention_backward.default,
    aten._scaled_dot_product_flash_attention_backward.default,
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
}


def _output_bytes(node: Any) -> float:
    """Bytes of a node's tensor output(s) (a tuple for the multi-output kernels)."""
    vals = node.meta.get("val")
    outs = vals if isinstance(vals, tuple | list) else (vals,)
    return sum(float(v.numel() * v.element_size()) for v in outs if isinstance(v, torch.Tensor))


def _is_weight(arg: Any, weights: set[str]) -> bool:
    """Whether ``arg`` is a parameter or buffer, directly or through free views (``W.t()``)."""
    while arg.op == "call_function" and arg.target in FREE and tensor_args(arg):
        arg = tensor_args(arg)[0]
    return arg.name in weights


def _inputs(node: Any, weights: set[str]) -> tuple[float, float]:
    """(weight bytes, other input bytes) of a node's tensor arguments."""
    args = tensor_args(node)
    weight = sum(nbytes_of(a) for a in args if _is_weight(a, weights))
    return weight, sum(nbytes_of(a) for a in args) - weight


def _gemm(node: Any, weights: set[str]) -> Op:
    a, b = (shape_of(x) for x in tensor_args(node)[-2:])
    batch = a[0] if node.target in BATCHED else 1
    m, k, n = a[-2], a[-1], b[-1]
    bias = float(m * n * batch) if node.target in (aten.addmm.default, aten.baddbmm.default) else 0.0
    weight, other = _inputs(node, weights)
    kind = "attention" if node.target in BATCHED else "matmul"
    return Op(
        str(node.target), kind, 2.0 * batch * m * k * n + bias, weight, other, nbytes_of(node),
        mnk=(float(m), float(n), float(k)), gemms=float(batch),
    )  # fmt: skip


def _conv_geometry(inp: Sequence[int], weight: Sequence[int], out: Sequence[int], groups: int) -> tuple:
    """(FLOPs, (m, n, k), gemms) of a convolution as its implicit GEMM."""
    n_batch, spatial_out = out[0], prod(out[2:])
    c_out, c_in_per_group, kernel = weight[0], weight[1], prod(weight[2:])
    m, n, k = n_batch * spatial_out, c_out // groups, c_in_per_group * kernel
    return 2.0 * m * n * k * groups, (float(m), float(n), float(k)), float(groups)


def _conv(node: Any, weights: set[str]) -> list[Op]:
    args = tensor_args(node)
    inp, weight = shape_of(args[0]), shape_of(args[1])
    groups = int(node.args[-1])
    flops, mnk, gemms = _conv_geometry(inp, weight, shape_of(node), groups)
    if len(args) > 2:  # a bias added to every output element
        flops += prod(shape_of(node))
    w_bytes, other = _inputs(node, weights)
    return [Op("aten.convolution", "matmul", flops, w_bytes, other, nbytes_of(node), mnk=mnk, gemms=gemms)]


def _conv_backward(node: Any, weights: set[str]) -> list[Op]:
    """Input gradient (dY·Wᵀ: m = N·spatial_in rows, reading dY and W) and weight gradient (Xᵀ·dY:
    the weight's shape reduced over N·spatial_out, reading dY and X) where ``output_mask`` asks for
    them, each writing its gradient; a bias gradient sums dY."""
    args = tensor_args(node)
    grad_out, inp, weight = (shape_of(a) for a in args[:3])
    dy, x, w = (nbytes_of(a) for a in args[:3])
    groups, mask = int(node.args[9]), list(node.args[10])
    flops, (m, n, k), gemms = _conv_geometry(inp, weight, grad_out, groups)
    grads = list(node.meta.get("val") or ())
    written = [float(g.numel() * g.element_size()) if isinstance(g, torch.Tensor) else 0.0 for g in grads]
    ops = []
    if mask[0]:
        rows = float(inp[0] * prod(inp[2:]))
        ops.append(
            Op("aten.convolution.dgrad", "matmul", flops, w, dy, written[0], mnk=(rows, k, n), gemms=gemms)
        )
    if mask[1]:
        ops.append(
            Op("aten.convolution.wgrad", "matmul", flops, 0.0, dy + x, written[1], mnk=(k, n, m), gemms=gemms)
        )
    if len(mask) > 2 and mask[2]:
        ops.append(Op("aten.convolution.bgrad", "elementwise", float(prod(grad_out)), 0.0, dy, written[2]))
    return ops


def _sdpa(node: Any, weights: set[str], backward: bool) -> Op:
    q, k = (shape_of(a) for a in tensor_args(node)[:2])
    batch_heads, lq, lk, d = prod(q[:-2]), q[-2], k[-2], q[-1]
    flops = 4.0 * batch_heads * lq * lk * d + SOFTMAX_FLOPS * batch_heads * lq * lk
    weight, other = _inputs(node, weights)
    name = "aten.sdpa.backward" if backward else "aten.sdpa"
    scale = FLASH_BACKWARD_FLOPS if backward else 1.0
    return Op(name, "attention", flops * scale, weight, other, _output_bytes(node), flash=True)


def _elementwise(node: Any, weights: set[str]) -> Op | None:
    val = node.meta.get("val")
    first = next(
        (v for v in (val if isinstance(val, tuple | list) else (val,)) if isinstance(v, torch.Tensor)), None
    )
    if first is None:
        return None
    out = float(first.numel())  # a multi-output kernel (max-pool with its indices): its first output
    args = tensor_args(node)
    per = SOFTMAX_FLOPS if node.target in SOFTMAXES else 1.0
    elements = max([out, *(float(prod(shape_of(a))) for a in args)]) if node.target in SUMS else out
    weight, other = _inputs(node, weights)
    kind = "embedding" if node.target == aten.embedding.default else "elementwise"
    flops = 0.0 if kind == "embedding" else per * elements
    if kind == "embedding":  # reads only the rows it gathers: as many bytes as it writes
        weight = nbytes_of(node)
    return Op(str(node.target), kind, flops, weight, other, _output_bytes(node))


def node_ops(node: Any, weights: set[str]) -> list[Op]:
    """The ops of one graph node (module docstring); none for a free node."""
    target = node.target
    if node.op != "call_function" or target in FREE or not isinstance(target, torch._ops.OpOverload):
        return []
    if target in GEMMS | BATCHED:
        return [_gemm(node, weights)]
    if target == aten.convolution.default:
        return _conv(node, weights)
    if target == aten.convolution_backward.default:
        return _conv_backward(node, weights)
    if target in SDPA | SDPA_BACKWARD:
        return [_sdpa(node, weights, target in SDPA_BACKWARD)]
    op = _elementwise(node, weights)
    return [op] if op is not None else []


def graph_ops(captured: Captured) -> list[Op]:
    """Every kernel of the captured graph as an :class:`Op`, in graph order, ops of one target and
    identical FLOPs, bytes and geometry merged into one with their ``count``."""
    weights = set(captured.params)
    merged: dict[tuple, Op] = {}
    for node in captured.graph.nodes:
        for op in node_ops(node, weights):
            key = (
                op.name,
                op.kind,
                op.flops,
                op.weight_bytes,
                op.input_bytes,
                op.output_bytes,
                op.mnk,
                op.gemms,
            )
            merged[key] = replace(merged[key], count=merged[key].count + 1) if key in merged else op
    return list(merged.values())


def parameter_count(module: torch.nn.Module) -> int:
    """Parameters of the module (what ``sum(p.numel())`` counts; tied weights once)."""
    return sum(p.numel() for p in module.parameters())
