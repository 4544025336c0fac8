"""Kernel time on one device: the roofline with achievable efficiencies and a per-kernel overhead.

    time = max(FLOPs / (peak · efficiency), bytes / (HBM bandwidth · memory_efficiency)) + overhead

The efficiency depends on the kernel class (Hardware fields):

* **matmul** — ``matmul_efficiency`` for a large GEMM, times the *wave quantization* factor of the
  output tiles (a GEMM of ``T`` tiles on ``U`` compute units runs ``ceil(T/U)`` waves: efficiency
  ``T / (ceil(T/U)·U)``; NVIDIA "Matrix multiplication background" user's guide, Sec. "Wave
  quantization") and the *tile quantization* factor of the output (rows and columns padded to whole
  tiles of the size, among the library tile and its halves, quarters and eighths, that pads least; GEMMs of
  fewer than 16 rows are GEMV-like and not padded), with split-K for GEMMs of too few tiles.
* **attention** — the unfused score (QKᵀ) and AV batched GEMMs of an eager implementation, with
  their small reduction (the head width), at ``attention_efficiency``; a fused flash kernel
  (Dao 2023; Shah et al. 2024) at ``flash_attention_efficiency`` forward and
  ``flash_attention_bwd_efficiency`` backward, always at the 16-bit peak (attention stays bf16 in an
  fp8/fp4 run).
* **precision** — a GEMM in precision p sustains ``matmul_efficiency`` (16-bit) or
  ``matmul_efficiency_fp8`` / ``_fp4`` of p's own dense peak.
* **elementwise / norm / embedding** — memory-bound at ``elementwise_efficiency`` of HBM bandwidth
  (their FLOPs run on the vector units at the fp32 peak where it is known); GEMMs and attention
  kernels stream at ``memory_efficiency``. Eager elementwise kernels (several passes, fp32
  upcasts, reductions) reach a smaller fraction of the bandwidth than a GEMM streaming its weights.

All arguments may be JAX arrays; ``jnp.maximum`` passes the gradient to the binding roof, so
``grad`` with respect to peak FLOP/s and bandwidth is finite (a subgradient at the kink). The
``ceil`` of the quantization factors acts on shapes, never on hardware knobs, so it blocks no
gradient we take. ``smooth_max`` is the relaxation the gradient-descent driver can switch on.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from costmodels.hardware import Hardware, activation_precision, matmul_efficiency
from costmodels.hardware import peak_flops as precision_peak_flops

Array = Any

KIND_MATMUL, KIND_ATTENTION, KIND_FLASH, KIND_ELEMENTWISE, KIND_EMBEDDING, KIND_FLASH_BWD = 0, 1, 2, 3, 4, 5
KINDS = {
    "matmul": KIND_MATMUL,
    "attention": KIND_ATTENTION,
    "flash": KIND_FLASH,
    "elementwise": KIND_ELEMENTWISE,
    "norm": KIND_ELEMENTWISE,
    "embedding": KIND_EMBEDDING,
}


def smooth_max(a: Array, b: Array, temperature: float = 0.0) -> Array:
    """max(a, b), or its log-sum-exp relaxation ``t·log(e^(a/t) + e^(b/t))`` at relative temperature t."""
    if temperature <= 0.0:
        return jnp.maximum(a, b)
    scale = jnp.maximum(jnp.maximum(a, b), 1e-30) * temperature
    return scale * jnp.logaddexp(a / scale, b / scale)


def _padding(extent: Array, largest: Array) -> tuple[Array, Array]:
    """(tiles, padding efficiency) of an output extent: the library picks, among the tile edges
    ``largest``, ``largest/2``, ``largest/4`` and ``largest/8``, the one that pads the extent least
    (ties: the larger). Extents below 16 (a GEMV-like skinny GEMM) are not padded."""
    best_eff, best_tiles = jnp.zeros_like(extent * 1.0), jnp.ones_like(extent * 1.0)
    for div in (8.0, 4.0, 2.0, 1.0):  # larger tiles last, so they win ties
        edge = largest / div
        tiles = jnp.ceil(extent / edge)
        eff = extent / (tiles * edge)
        better = eff >= best_eff
        best_eff, best_tiles = jnp.where(better, eff, best_eff), jnp.where(better, tiles, best_tiles)
    small = extent < 16.0
    return jnp.where(small, 1.0, best_tiles), jnp.where(small, 1.0, best_eff)


SPLIT_K_MIN_DEPTH = 256.0  # smallest slice of the reduction a split-K GEMM gives one compute unit


def wave_efficiency(hw: Hardware, rows: Array, cols: Array, gemms: Array = 1.0, reduce: Array = 1.0) -> Array:
    """Tile and wave quantization of a (grouped) GEMM with a ``rows × cols`` output per GEMM: the
    output is padded to whole tiles (see :func:`_padding`), a GEMM with fewer tiles than compute units
    splits its reduction over idle units (split-K, in slices of at least 256), and the work units run
    in whole waves over the compute units."""
    tiles_m, pad_m = _padding(rows, hw.matmul_tile_m)
    tiles_n, pad_n = _padding(cols, hw.matmul_tile_n)
    pad = pad_m * pad_n
    units_ = jnp.maximum(hw.compute_units, 1.0)
    output_tiles = tiles_m * tiles_n * gemms
    split_k = jnp.clip(
        jnp.floor(units_ / output_tiles), 1.0, jnp.maximum(jnp.floor(reduce / SPLIT_K_MIN_DEPTH), 1.0)
    )
    tiles = output_tiles * split_k
    units = jnp.maximum(hw.compute_units, 1.0)
    waves = jnp.where(hw.compute_units > 0, tiles / (jnp.ceil(tiles / units) * units), 1.0)
    return pad * waves


def kernel_time_s(
    hw: Hardware,
    peak_flops: Array,
    kind: Array,
    flops: Array,
    bytes_: Array,
    rows: Array = 1.0,
    cols: Array = 1.0,
    gemms: Array = 1.0,
    reduce: Array = 1.0,
    temperature: float = 0.0,
    quantize: bool = True,
    precision: str = "bf16",
    attention_precision: str | None = None,
) -> Array:
    """Time of a kernel of class ``kind`` (one of the KIND_* codes, may be an array over ops).

    ``peak_flops`` is the dense peak of the GEMM ``precision``; a GEMM sustains
    ``hardware.matmul_efficiency(hw, precision)`` of it. Attention kernels run at their own 16-bit
    type (``hardware.activation_precision``: bf16 in an fp8/fp4 run), or ``attention_precision`` where
    the run says so (FP8 attention), at that type's peak. ``quantize=False``
    skips the tile/wave factor, for callers whose ``kind`` holds no matmul."""
    waves = wave_efficiency(hw, rows, cols, gemms, reduce) if quantize else 1.0
    matmul_eff = matmul_efficiency(hw, precision) * waves
    efficiency = jnp.select(
        [kind == KIND_MATMUL, kind == KIND_ATTENTION, kind == KIND_FLASH, kind == KIND_FLASH_BWD],
        [
            matmul_eff,
            hw.attention_efficiency,
            hw.flash_attention_efficiency,
            hw.flash_attention_bwd_efficiency,
        ],
        1.0,
    )
    # the one rule: fp8/fp4 runs keep attention bf16 unless the run chooses its attention's type
    attention = attention_precision or activation_precision(precision)
    attention_peak = peak_flops if attention == precision else precision_peak_flops(hw, attention)
    vector = (kind == KIND_ELEMENTWISE) | (kind == KIND_EMBEDDING)
    vector_peak = jnp.where(hw.peak_flops_fp32 > 0, hw.peak_flops_fp32, peak_flops)
    compute_peak = jnp.where(vector, vector_peak, jnp.where(kind == KIND_MATMUL, peak_flops, attention_peak))
    compute_s = flops / (compute_peak * efficiency)
    bandwidth_eff = jnp.where(vector, hw.elementwise_efficiency, hw.memory_efficiency)
    memory_s = bytes_ / (hw.hbm_bandwidth_Bps * bandwidth_eff)
    busy = flops + bytes_ > 0
    return jnp.where(busy, smooth_max(compute_s, memory_s, temperature) + hw.kernel_overhead_s, 0.0)
