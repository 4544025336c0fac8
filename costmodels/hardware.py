"""The accelerator a cost model runs on: one device and the two network tiers around it.

:class:`Hardware` is a frozen dataclass registered as a JAX pytree. Every numeric field is a leaf (a
Python float, or a JAX array once stacked or traced), so ``jax.vmap`` over a batch of hardware and
``jax.grad`` with respect to hardware knobs work directly; ``name`` and ``topology`` are static
metadata (part of the treedef, hashed into the ``jit`` cache key).

Units are SI and carried in the field names (``_bytes``, ``_Bps``, ``_s``, ``_w``). All figures are
per device: bandwidths are one direction, peaks are dense (no 2:4 sparsity). A precision a device
lacks, or a figure that is unknown / not modelled, is ``0.0``.

The structure stays a plain container: range checks live in :func:`validate_hardware` (called by the
loader), not in ``__post_init__``, because JAX also builds ``Hardware`` objects whose leaves are
tracers, cotangents or ``vmap`` axis specs (``0`` / ``None``) that no range check would accept.

Adding a field: give it a default (every field after the essentials has one), then add one row to the
YAML schema table in ``dse/hardware.py``. Presets that do not mention it keep the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.errors import ConfigError

Scalar = Any  # float, or a jax.Array leaf (stacked presets, tracers under jit/vmap/grad)

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "fp4")

# Storage size of one element. tf32 is stored as fp32 (only the tensor-core multiply is 19-bit);
# fp4 packs two elements per byte (NVIDIA NVFP4 / OCP MXFP4 element size; block scales not counted).
_BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "fp4": 0.5,
}

# Precisions whose GEMMs quantize their inputs (Transformer Engine FP8; NVFP4 / MXFP4): activations
# between kernels, the attention kernel and the tensor-parallel collectives stay 16-bit.
LOW_PRECISIONS: tuple[str, ...] = ("fp8", "fp4")

# Block-scale bytes per weight element: NVFP4 stores one E4M3 scale per 16 FP4 values (NVIDIA,
# "Introducing NVFP4", 2025; TensorRT-LLM / ModelOpt FP4 checkpoints), i.e. 1/16 B per element.
_SCALE_BYTES_PER_ELEMENT: dict[str, float] = {"fp4": 1.0 / 16.0}

TOPOLOGIES: tuple[str, ...] = ("switched", "torus3d", "fully_connected", "mesh2d")

# Framework overhead per GPU: CUDA context and kernel images, measured at 1343 MB by Hugging Face
# ("Model training anatomy", transformers docs: "kernels alone take up 1.3GB"), plus NCCL communicator
# buffers and cuBLAS workspaces; we round to 2 GiB (``Hardware.workspace_bytes``).
WORKSPACE_BYTES = 2.0 * 2.0**30


def _static() -> Any:
    return field(metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclass(frozen=True, kw_only=True)
class Hardware:
    """One accelerator with its scale-up and scale-out networks (SI units, per device)."""

    # --- essentials (no default) ---
    name: str = _static()
    peak_flops_bf16: Scalar  # dense FLOP/s
    hbm_capacity_bytes: Scalar
    hbm_bandwidth_Bps: Scalar

    # --- other precisions: dense FLOP/s, 0.0 where the device has no such tensor-core path ---
    peak_flops_fp32: Scalar = 0.0
    peak_flops_tf32: Scalar = 0.0
    peak_flops_fp16: Scalar = 0.0
    peak_flops_fp8: Scalar = 0.0
    peak_flops_fp4: Scalar = 0.0

    # --- on-chip SRAM (the last-level cache / scratchpad, e.g. GPU L2); 0.0 = unknown ---
    sram_capacity_bytes: Scalar = 0.0
    sram_bandwidth_Bps: Scalar = 0.0

    # --- scale-up tier (NVLink / XGMI / ICI): domain size in devices, bandwidth one direction ---
    scale_up_domain_size: Scalar = 1.0
    scale_up_bandwidth_Bps: Scalar = 0.0
    scale_up_latency_s: Scalar = 0.0

    # --- scale-out tier (InfiniBand / RoCE / DCN), per device, one direction ---
    scale_out_bandwidth_Bps: Scalar = 0.0
    scale_out_latency_s: Scalar = 0.0
    scale_out_oversubscription: Scalar = 1.0  # >= 1; 1 = non-blocking fat tree

    # --- host (offload target): this device's share of host DRAM and its link to it, one direction ---
    host_memory_bytes: Scalar = 0.0
    host_bandwidth_Bps: Scalar = 0.0
    # devices whose host-link shares carry one broadcast stream (a wafer's dies behind its external
    # link: each weight shard crosses it once for all replicas there); 1: a private link per device
    host_broadcast_devices: Scalar = 1.0
    workspace_bytes: Scalar = WORKSPACE_BYTES  # runtime reserve of device memory (context, workspaces)

    # --- achievable fractions and overheads (per hardware or kernel class; 1.0 / 0 = ideal roofline) ---
    compute_units: Scalar = 0.0  # SMs / CUs that matmul tiles are spread over (0: no wave quantization)
    matmul_tile_m: Scalar = 128.0  # output tile rows of the GEMM kernels (wave quantization)
    matmul_tile_n: Scalar = 128.0  # output tile columns
    matmul_efficiency: Scalar = 1.0  # fraction of the 16-bit peak a large bf16/fp16 GEMM sustains
    matmul_efficiency_fp8: Scalar = 0.0  # fraction of the fp8 peak a large fp8 GEMM sustains (0: as 16-bit)
    matmul_efficiency_fp4: Scalar = 0.0  # fraction of the fp4 peak a large fp4 GEMM sustains (0: as 16-bit)
    attention_efficiency: Scalar = 1.0  # fraction of peak of unfused attention batched GEMMs (QKᵀ, AV)
    flash_attention_efficiency: Scalar = 1.0  # fraction of peak a fused (flash) attention forward sustains
    flash_attention_bwd_efficiency: Scalar = 1.0  # the same for its backward (scores recomputed)
    memory_efficiency: Scalar = 1.0  # fraction of HBM bandwidth a GEMM streaming its weights sustains
    elementwise_efficiency: Scalar = 1.0  # fraction of HBM bandwidth elementwise / norm kernels sustain
    collective_efficiency: Scalar = 1.0  # achieved bus bandwidth / link bandwidth (NCCL busbw)
    collective_base_latency_s: Scalar = 0.0  # fixed cost of one collective call (NCCL baseLat + launch)
    kernel_overhead_s: Scalar = 0.0  # launch + tail time added to every kernel
    # the same for a kernel replayed from a CUDA graph (no host launch; 0: as kernel_overhead_s)
    graph_kernel_overhead_s: Scalar = 0.0

    # --- power and cost ---
    power_w: Scalar = 0.0  # TDP per device
    price_usd_per_hour: Scalar = 0.0  # on-demand cloud price per device; 0.0 = unknown

    topology: str = field(default="switched", metadata={"static": True})


def data_fields() -> tuple[str, ...]:
    """Names of the numeric (leaf) fields of :class:`Hardware`, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(Hardware) if not f.metadata.get("static", False))


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def bytes_per_element(precision: str) -> float:
    """Bytes to store one element in ``precision`` (fp4: 0.5)."""
    return _BYTES_PER_ELEMENT[_check_precision(precision)]


def weight_bytes_per_element(precision: str) -> float:
    """Bytes of one stored weight in ``precision``, block scales included (fp4: 0.5 + 1/16)."""
    return bytes_per_element(precision) + _SCALE_BYTES_PER_ELEMENT.get(precision, 0.0)


def activation_precision(precision: str) -> str:
    """The 16-bit type activations (and attention) keep in a ``precision`` run: bf16 for fp8/fp4."""
    return "bf16" if _check_precision(precision) in LOW_PRECISIONS else precision


def kv_cache_precision(precision: str, kv_precision: str | None = None) -> str:
    """The KV cache's type: ``kv_precision`` where given, else fp8 for an fp8 or fp4 checkpoint
    (TensorRT-LLM and vLLM serve FP4 checkpoints with an FP8 KV cache), else the weights' type."""
    if kv_precision is not None:
        return _check_precision(kv_precision)
    return "fp8" if _check_precision(precision) in LOW_PRECISIONS else precision


def matmul_efficiency(hw: Hardware, precision: str) -> Scalar:
    """Fraction of ``precision``'s dense peak a large GEMM sustains: the ``matmul_efficiency_fp8`` /
    ``_fp4`` field for those precisions where it is set (> 0), else the 16-bit ``matmul_efficiency``."""
    own = {"fp8": hw.matmul_efficiency_fp8, "fp4": hw.matmul_efficiency_fp4}.get(_check_precision(precision))
    if own is None:
        return hw.matmul_efficiency
    if isinstance(own, int | float):
        return own if own > 0 else hw.matmul_efficiency
    return jnp.where(jnp.asarray(own) > 0, own, hw.matmul_efficiency)


def _concrete(value: Scalar) -> np.ndarray | None:
    """``value`` as a NumPy array, or None while it is traced (jit/vmap/grad)."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def supported_precisions(hw: Hardware) -> tuple[str, ...]:
    """Precisions with a positive peak (all members positive, for a stacked batch)."""
    out = []
    for p in PRECISIONS:
        arr = _concrete(getattr(hw, f"peak_flops_{p}"))
        if arr is None or bool(np.all(arr > 0)):
            out.append(p)
    return tuple(out)


def peak_flops(hw: Hardware, precision: str) -> Scalar:
    """Dense peak FLOP/s of ``hw`` in ``precision``.

    Raises :class:`ConfigError` when a concrete ``hw`` has no such precision (peak 0); under tracing
    the value is returned as is.
    """
    value = getattr(hw, f"peak_flops_{_check_precision(precision)}")
    arr = _concrete(value)
    if arr is not None and bool(np.any(arr <= 0)):
        have = ", ".join(supported_precisions(hw)) or "none"
        raise ConfigError(f"hardware {hw.name!r} has no {precision} peak (0 FLOP/s); it supports: {have}")
    return value


def validate_hardware(hw: Hardware) -> Hardware:
    """Check the invariants of a concrete ``hw`` and return it; raises :class:`ConfigError`."""
    if not isinstance(hw.name, str) or not hw.name:
        raise ConfigError("hardware name must be a non-empty string")
    if hw.topology not in TOPOLOGIES:
        raise ConfigError(
            f"hardware {hw.name!r}: unknown topology {hw.topology!r}; valid: {', '.join(TOPOLOGIES)}"
        )
    for name in data_fields():
        arr = _concrete(getattr(hw, name))
        if arr is None:
            continue
        if not np.all(np.isfinite(arr)) or bool(np.any(arr < 0)):
            raise ConfigError(
                f"hardware {hw.name!r}: {name} must be a finite number >= 0, got {arr.tolist()}"
            )
    for name in ("scale_up_domain_size", "scale_out_oversubscription"):
        arr = _concrete(getattr(hw, name))
        if arr is not None and bool(np.any(arr < 1)):
            raise ConfigError(f"hardware {hw.name!r}: {name} must be >= 1, got {arr.tolist()}")
    return hw


def stack_hardware(hws: Sequence[Hardware]) -> Hardware:
    """Stack presets along a new leading axis, for ``jax.vmap`` over hardware.

    The static fields become one treedef: names are joined with ``+``; the topologies must agree.
    """
    if not hws:
        raise ConfigError("stack_hardware needs at least one Hardware")
    topologies = sorted({hw.topology for hw in hws})
    if len(topologies) > 1:
        raise ConfigError(f"cannot stack hardware of different topologies: {', '.join(topologies)}")
    name = "+".join(hw.name for hw in hws)
    same = [dataclasses.replace(hw, name=name) for hw in hws]
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *same)
