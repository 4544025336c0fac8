"""Shared by the cost-model tests: an ideal-roofline device and op tables padded to one length."""

from __future__ import annotations

import dataclasses

import numpy as np

from costmodels.compute import KIND_ELEMENTWISE
from costmodels.sharding import GROUP_LAYER, OpTable
from dse.hardware import load_hardware

A100 = load_hardware("a100_80gb_sxm")
# The A100 preset with every efficiency 1, no overheads, no waves, no latencies: the plain roofline.
IDEAL = dataclasses.replace(
    A100,
    matmul_efficiency=1.0,
    memory_efficiency=1.0,
    elementwise_efficiency=1.0,
    attention_efficiency=1.0,
    flash_attention_efficiency=1.0,
    flash_attention_bwd_efficiency=1.0,
    collective_efficiency=1.0,
    collective_base_latency_s=0.0,
    kernel_overhead_s=0.0,
    graph_kernel_overhead_s=0.0,
    compute_units=0.0,
    scale_up_latency_s=0.0,
    scale_out_latency_s=0.0,
)


def padded(table: OpTable, n: int) -> OpTable:
    """``table`` with idle ops appended (no FLOPs, no bytes, no weights, 0 executions) up to ``n`` ops.

    A test-speed device only: eager JAX compiles each primitive once per array shape, so tables of one
    length share those compilations across models. An idle op costs exactly 0 (``kernel_time_s`` is 0
    for a kernel with no FLOPs and no bytes); the padding tests of the model modules check it."""
    k = n - len(table.names)
    fill = {
        "group": GROUP_LAYER,
        "kind": KIND_ELEMENTWISE,
        "rows": 1.0,
        "cols": 1.0,
        "reduce": 1.0,
        "gemms": 1.0,
    }
    arrays = {
        f.name: np.concatenate([a := getattr(table, f.name), np.full(k, fill.get(f.name, 0), dtype=a.dtype)])
        for f in dataclasses.fields(table)
        if f.name != "names"
    }
    return OpTable(**arrays, names=table.names + ("idle",) * k)
