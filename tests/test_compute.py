"""Tests for costmodels.compute: the kernel roofline, wave/tile quantization and smooth_max.

Unless a test says otherwise the device is the A100 80GB SXM preset made an *ideal roofline*: every
efficiency 1, no kernel overhead, no latencies and ``compute_units = 0`` (no wave quantization). Its
figures: bf16/fp16 peak P = 312e12 FLOP/s, fp32 (vector) peak 19.5e12 FLOP/s, HBM B = 2.039e12 B/s,
GEMM tiles 128×256 (the preset's cuBLAS tile; tile *padding* still applies, so GEMM shapes below are
multiples of the tile unless padding is what a test checks).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from costmodel_helpers import A100, IDEAL
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodels.compute import (
    KIND_ATTENTION,
    KIND_ELEMENTWISE,
    KIND_EMBEDDING,
    KIND_FLASH,
    KIND_MATMUL,
    KINDS,
    SPLIT_K_MIN_DEPTH,
    kernel_time_s,
    smooth_max,
    wave_efficiency,
)
from costmodels.hardware import Hardware

WAVES = dataclasses.replace(IDEAL, compute_units=108.0)  # the A100's 108 SMs, 128×256 tiles
P, P32, BW = 312e12, 19.5e12, 2.039e12


def _close(actual, expected, rtol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), expected, rtol=rtol, atol=0.0)


# --------------------------------------------------------------------------------------------
# The roofline on the ideal device


def test_ideal_device_figures():
    """The constants the hand derivations below use are the preset's."""
    assert (IDEAL.peak_flops_bf16, IDEAL.peak_flops_fp32) == (P, P32)
    _close(IDEAL.hbm_bandwidth_Bps, BW)
    assert (IDEAL.matmul_tile_m, IDEAL.matmul_tile_n, A100.compute_units) == (128.0, 256.0, 108.0)


def test_matmul_compute_bound_is_flops_over_peak():
    """A 4096³ GEMM: 2·4096³ = 1.374e11 FLOPs, bytes 3·4096²·2 = 1.007e8. Compute 1.374e11/312e12 =
    440.5 µs > memory 1.007e8/2.039e12 = 49.4 µs, so the time is FLOPs/peak (tiles divide 4096)."""
    n = 4096.0
    flops, bytes_ = 2 * n**3, 3 * n * n * 2
    t = kernel_time_s(IDEAL, P, KIND_MATMUL, flops, bytes_, n, n, 1.0, n)
    _close(t, flops / P)
    _close(t, 440.509e-6, rtol=1e-5)


def test_matmul_memory_bound_is_bytes_over_bandwidth():
    """A GEMV-like 4096×4096 weight read by 256 tokens: FLOPs 2·256·4096² = 8.59e9 → 27.5 µs at peak;
    bytes (4096² + 2·256·4096)·2 = 3.775e7 → 18.5 µs. Compute-bound; with 16 tokens FLOPs 5.37e8 →
    1.72 µs and bytes (4096² + 2·16·4096)·2 = 3.38e7 → 16.6 µs: memory-bound. (16 and 256 rows are
    whole tiles: 16 is the smallest tile, 256 two 128-row tiles.)"""
    n = 4096.0
    for m in (256.0, 16.0):
        flops, bytes_ = 2 * m * n * n, (n * n + 2 * m * n) * 2
        t = kernel_time_s(IDEAL, P, KIND_MATMUL, flops, bytes_, m, n, 1.0, n)
        _close(t, max(flops / P, bytes_ / BW))
    t16 = kernel_time_s(IDEAL, P, KIND_MATMUL, 2 * 16 * n * n, (n * n + 32 * n) * 2, 16.0, n, 1.0, n)
    _close(t16, (n * n + 32 * n) * 2 / BW)  # the memory roof binds


def test_kernel_overhead_is_added_once_and_idle_kernels_cost_nothing():
    """time = max(compute, memory) + overhead for a busy kernel; a kernel with no FLOPs and no bytes
    (an op sharded away) costs 0, not the overhead."""
    hw = dataclasses.replace(IDEAL, kernel_overhead_s=11.4e-6)
    flops, bytes_ = 1e9, 1e9  # 3.205 µs compute, 490.4 µs memory
    t = kernel_time_s(hw, P, KIND_MATMUL, flops, bytes_, 4096.0, 4096.0, 1.0, 4096.0)
    _close(t, bytes_ / BW + 11.4e-6)
    assert float(kernel_time_s(hw, P, KIND_MATMUL, 0.0, 0.0)) == 0.0
    kinds = jnp.array([KIND_MATMUL, KIND_ELEMENTWISE, KIND_FLASH])
    times = kernel_time_s(hw, P, kinds, jnp.array([0.0, 1.0, 0.0]), jnp.array([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(np.asarray(times), [0.0, 1.0 / P32 + 11.4e-6, 0.0], rtol=1e-6)


def test_matmul_efficiency_scales_the_compute_roof_and_memory_efficiency_the_memory_roof():
    """matmul_efficiency 0.5 doubles a compute-bound GEMM; memory_efficiency 0.8 stretches a memory-bound
    one by 1/0.8 (GEMMs stream at memory_efficiency, not elementwise_efficiency)."""
    hw = dataclasses.replace(IDEAL, matmul_efficiency=0.5, memory_efficiency=0.8, elementwise_efficiency=0.3)
    n = 4096.0
    t_compute = kernel_time_s(hw, P, KIND_MATMUL, 2 * n**3, 1.0, n, n, 1.0, n)
    _close(t_compute, 2 * n**3 / (P * 0.5))
    t_memory = kernel_time_s(hw, P, KIND_MATMUL, 1.0, 1e9, n, n, 1.0, n)
    _close(t_memory, 1e9 / (BW * 0.8))


def test_elementwise_kernels_use_elementwise_efficiency_and_the_fp32_vector_peak():
    """Elementwise / norm / embedding kernels: memory roof at elementwise_efficiency·B, compute roof at
    the fp32 vector peak (19.5e12 on the A100, not the 312e12 tensor-core peak passed in). A device
    without an fp32 figure (peak_flops_fp32 = 0, e.g. TPU v5p) falls back to the peak passed in."""
    hw = dataclasses.replace(IDEAL, elementwise_efficiency=0.5, memory_efficiency=0.8)
    assert KINDS["norm"] == KINDS["elementwise"] == KIND_ELEMENTWISE
    for kind in (KIND_ELEMENTWISE, KIND_EMBEDDING):
        _close(kernel_time_s(hw, P, kind, 1.0, 1e9), 1e9 / (BW * 0.5))  # 980.9 µs
        _close(kernel_time_s(hw, P, kind, 1e12, 1.0), 1e12 / P32)  # 51.28 ms, not 3.2 ms
    no_fp32 = dataclasses.replace(hw, peak_flops_fp32=0.0)
    _close(kernel_time_s(no_fp32, P, KIND_ELEMENTWISE, 1e12, 1.0), 1e12 / P)


def test_attention_kernels_use_their_own_efficiencies_without_waves():
    """Unfused attention GEMMs run at attention_efficiency, a fused kernel at flash_attention_efficiency;
    neither gets the GEMM wave factor (a 1×1 'geometry' would otherwise pad it 256-fold) and both stream
    at memory_efficiency."""
    hw = dataclasses.replace(
        WAVES, attention_efficiency=0.25, flash_attention_efficiency=0.5, memory_efficiency=0.8
    )
    flops = 1e12
    _close(kernel_time_s(hw, P, KIND_ATTENTION, flops, 1.0), flops / (P * 0.25))
    _close(kernel_time_s(hw, P, KIND_FLASH, flops, 1.0), flops / (P * 0.5))
    _close(kernel_time_s(hw, P, KIND_FLASH, 1.0, 1e9), 1e9 / (BW * 0.8))


def test_kernel_time_vectorizes_over_ops():
    """An array of kinds prices each op by its own class: the same (FLOPs, bytes) = (1e12, 1e9) is
    3.205 ms as a GEMM, 51.28 ms as an elementwise kernel (fp32 peak)."""
    kinds = jnp.array([KIND_MATMUL, KIND_ELEMENTWISE, KIND_ATTENTION, KIND_FLASH])
    times = kernel_time_s(IDEAL, P, kinds, jnp.full(4, 1e12), jnp.full(4, 1e9), 4096.0, 4096.0, 1.0, 4096.0)
    np.testing.assert_allclose(np.asarray(times), [1e12 / P, 1e12 / P32, 1e12 / P, 1e12 / P], rtol=1e-6)


def test_grad_of_kernel_time_goes_to_the_binding_roof():
    """Compute-bound: d t / d peak = −F/P² and d t / d B = 0; memory-bound: d t / d B = −bytes/B²."""

    def t(peak, bw, flops, bytes_):
        hw = dataclasses.replace(IDEAL, hbm_bandwidth_Bps=bw)
        return kernel_time_s(hw, peak, KIND_MATMUL, flops, bytes_, 4096.0, 4096.0, 1.0, 4096.0)

    d_peak, d_bw = jax.grad(t, argnums=(0, 1))(P, BW, 1e12, 1e6)
    _close(d_peak, -1e12 / P**2, rtol=1e-4)
    assert float(d_bw) == 0.0
    d_peak, d_bw = jax.grad(t, argnums=(0, 1))(P, BW, 1e6, 1e9)
    assert float(d_peak) == 0.0
    _close(d_bw, -1e9 / BW**2, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Wave and tile quantization (NVIDIA "Matrix multiplication background", wave quantization)


@pytest.mark.parametrize(
    ("reduce", "expected"),
    [
        # 1024×1024 output, 128×256 tiles: 8·4 = 32 tiles on 108 SMs. Split-K may give each tile
        # floor(108/32) = 3 slices, but only while a slice keeps >= 256 of the reduction:
        (256.0, 32 / 108),  # K = 256: floor(256/256) = 1 slice → 32 work units, one wave of 108
        (512.0, 64 / 108),  # K = 512: 2 slices → 64 units
        (1024.0, 96 / 108),  # K = 1024: min(3, 4) = 3 slices → 96 units
        (65536.0, 96 / 108),  # deep K: still 3 (floor(108/32)), never more units than SMs
    ],
)
def test_wave_efficiency_small_gemm_with_split_k(reduce, expected):
    _close(wave_efficiency(WAVES, 1024.0, 1024.0, 1.0, reduce), expected)


def test_wave_efficiency_when_waves_matter():
    """Llama-2-13B MLP width 13824 (gate_up 2·13824 = 27648 columns) with 2048 tokens:
    * 2048 × 13824: 16 · 54 = 864 tiles = exactly 8 waves of 108 → 1.0;
    * 2048 × 1728 (13824 / tp 8): 256-wide tiles would pad 1728 to 1792; 64-wide tiles fit exactly
      (27 of them): 16·27 = 432 tiles = exactly 4 waves of 108 → 1.0;
    * 2048 × 5120 (GPT-3 2.7B h=2560, 2h): 16·20 = 320 tiles → 3 waves: 320/324."""
    _close(wave_efficiency(WAVES, 2048.0, 13824.0, 1.0, 5120.0), 1.0)
    _close(wave_efficiency(WAVES, 2048.0, 1728.0, 1.0, 5120.0), 1.0)
    _close(wave_efficiency(WAVES, 2048.0, 5120.0, 1.0, 2560.0), 320 / 324)


def test_wave_efficiency_tiny_m_gemm_split_k_fills_the_units():
    """Decode-like GEMMs with 16 rows (the smallest tile, no padding):
    * 16 × 4096, K = 4096: tiles 16×256, 1·16 = 16 tiles; split-K min(floor(108/16) = 6, 4096/256 = 16)
      = 6 → 96 units in one wave: 96/108 (without split-K it would be 16/108);
    * 16 × 256, K = 16384: 1 tile; split min(108, 64) = 64 → 64/108;
    * 16 × 256, K = 65536: 1 tile; split min(108, 256) = 108 → 108/108 = 1: the units are filled."""
    _close(wave_efficiency(WAVES, 16.0, 4096.0, 1.0, 4096.0), 96 / 108)
    _close(wave_efficiency(WAVES, 16.0, 256.0, 1.0, 16384.0), 64 / 108)
    _close(wave_efficiency(WAVES, 16.0, 256.0, 1.0, 65536.0), 1.0)


def test_wave_efficiency_grouped_gemm_and_narrow_tiles():
    """8 expert GEMMs of 256 × 1024: 2·4·8 = 64 tiles, split floor(108/64) = 1 → 64/108.
    A 100-column output pads least with 32-, 64- or 128-wide tiles (all 100/128; ties go to the larger,
    128): 16 × 100 × K = 256: 1 tile, no split (K/256 = 1) → 100/128 · 1/108."""
    _close(wave_efficiency(WAVES, 256.0, 1024.0, 8.0, 4096.0), 64 / 108)
    _close(wave_efficiency(WAVES, 16.0, 100.0, 1.0, 256.0), (100 / 128) / 108)
    assert SPLIT_K_MIN_DEPTH == 256.0


def test_no_wave_quantization_without_compute_units():
    """compute_units = 0 turns waves off; tile padding stays: 1024×1024 → 1.0, 2048×1728 → 1.0 (64-wide
    tiles), 2048×100 → 100/128."""
    _close(wave_efficiency(IDEAL, 1024.0, 1024.0, 1.0, 256.0), 1.0)
    _close(wave_efficiency(IDEAL, 2048.0, 1728.0, 1.0, 5120.0), 1.0)
    _close(wave_efficiency(IDEAL, 2048.0, 100.0, 1.0, 5120.0), 100 / 128)


def test_matmul_time_includes_the_wave_factor():
    """The 1024² GEMM with K = 256 on 108 SMs runs at 32/108 of peak: 2·1024²·256 = 5.37e8 FLOPs →
    5.37e8 / (312e12 · 32/108) = 5.81 µs (memory (2·1024·256 + 1024²)·2 = 3.1e6 B → 1.54 µs)."""
    flops, bytes_ = 2 * 1024 * 1024 * 256.0, (2 * 1024 * 256 + 1024 * 1024) * 2.0
    t = kernel_time_s(WAVES, P, KIND_MATMUL, flops, bytes_, 1024.0, 1024.0, 1.0, 256.0)
    _close(t, flops / (P * 32 / 108))
    _close(t, 5.8072e-6, rtol=1e-4)


def _brute_force_efficiency(rows: int, cols: int, gemms: int, reduce: int, units: int, tm: int, tn: int):
    """The documented rule, counted with integers and loops: tile edge = among largest, largest/2,
    largest/4, largest/8 the one padding the extent least (ties: the larger); extents below 16 take one
    unpadded tile; split-K = as many slices as fit into the idle units, each >= 256 deep; waves by
    dealing work units to the compute units one wave at a time."""

    def edge(extent: int, largest: int) -> int:
        if extent < 16:
            return extent
        best, best_pad = largest, -1.0
        for e in (largest // 8, largest // 4, largest // 2, largest):
            pad = extent / (math.ceil(extent / e) * e)
            if pad >= best_pad:
                best, best_pad = e, pad
        return best

    em, en = edge(rows, tm), edge(cols, tn)
    tiles = math.ceil(rows / em) * math.ceil(cols / en) * gemms
    split = 1
    while tiles * (split + 1) <= units and (split + 1) * 256 <= reduce:
        split += 1
    work, waves = tiles * split, 0
    remaining = work
    while remaining > 0:
        remaining -= units
        waves += 1
    pad = rows * cols / (math.ceil(rows / em) * em * math.ceil(cols / en) * en)
    return pad * work / (waves * units)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 9000),
    cols=st.integers(1, 9000),
    gemms=st.integers(1, 16),
    reduce=st.integers(1, 20000),
    units=st.sampled_from([8, 108, 132, 304]),
)
def test_wave_efficiency_matches_brute_force(rows, cols, gemms, reduce, units):
    hw = dataclasses.replace(WAVES, compute_units=float(units))
    got = wave_efficiency(hw, float(rows), float(cols), float(gemms), float(reduce))
    _close(got, _brute_force_efficiency(rows, cols, gemms, reduce, units, 128, 256), rtol=1e-5)
    assert 0.0 < float(got) <= 1.0


def test_skinny_gemm_is_not_padded_in_rows():
    """A GEMM of fewer than 16 rows (a decode GEMV, 1 row) is not padded in rows: on a device without
    waves, 1 × 4096 (whole column tiles) has efficiency 1."""
    _close(wave_efficiency(IDEAL, 1.0, 4096.0, 1.0, 4096.0), 1.0)


# --------------------------------------------------------------------------------------------
# smooth_max


def test_smooth_max_is_max_at_zero_temperature():
    assert float(smooth_max(3.0, 5.0)) == 5.0
    assert float(smooth_max(5.0, 3.0, 0.0)) == 5.0
    np.testing.assert_array_equal(np.asarray(smooth_max(jnp.array([1.0, 4.0]), 2.0)), [2.0, 4.0])


def test_smooth_max_converges_to_max_from_above():
    """s = t·max(a, b); s·log(e^(a/s) + e^(b/s)) = max + s·log(1 + e^(−|a−b|/s)) >= max. For a = b
    the excess is exactly s·log 2 = t·a·log 2; for a = 1, b = 2 at t = 0.01 it is
    0.02·log(1 + e^(−50)) ≈ 3.9e−24, i.e. max to float precision."""
    a, b = 1.0, 2.0
    previous = math.inf
    for t in (0.5, 0.2, 0.1, 0.05, 0.02, 0.01):
        value = float(smooth_max(a, b, t))
        assert value >= b
        excess = value - b
        expected = 2.0 * t * math.log1p(math.exp(-1.0 / (2.0 * t)))  # s = 2t, |a − b| = 1
        assert excess == pytest.approx(expected, rel=1e-3, abs=1e-6)
        assert excess <= previous
        previous = excess
    assert abs(float(smooth_max(a, b, 0.01)) - b) < 1e-6
    for t in (0.3, 0.1, 0.01):
        _close(smooth_max(2.0, 2.0, t), 2.0 * (1.0 + t * math.log(2.0)), rtol=1e-5)


def test_smooth_max_is_scale_invariant_and_symmetric():
    """The temperature is relative: smooth_max(k·a, k·b, t) = k·smooth_max(a, b, t) (checked at
    kernel-time magnitudes, 1e-6 s), and it is symmetric in its arguments."""
    a, b, t = 3.0, 4.0, 0.1
    base = float(smooth_max(a, b, t))
    _close(smooth_max(a * 1e-6, b * 1e-6, t), base * 1e-6, rtol=1e-5)
    _close(smooth_max(b, a, t), base, rtol=1e-7)


def test_kernel_time_with_temperature_is_a_smooth_upper_bound():
    """kernel_time_s(temperature > 0) >= the exact roofline, tends to it as t → 0, and its gradient with
    respect to both roofs is non-zero (a smooth surrogate for gradient descent)."""
    flops, bytes_ = 1e12, 5e9  # 3.205 ms compute vs 2.452 ms memory: near the ridge
    exact = float(kernel_time_s(IDEAL, P, KIND_MATMUL, flops, bytes_, 4096.0, 4096.0, 1.0, 4096.0))
    for t in (0.2, 0.05, 0.01):
        smooth = float(kernel_time_s(IDEAL, P, KIND_MATMUL, flops, bytes_, 4096.0, 4096.0, 1.0, 4096.0, t))
        assert smooth >= exact
    assert smooth - exact < 1e-3 * exact

    def t_of(peak, bw):
        hw = dataclasses.replace(IDEAL, hbm_bandwidth_Bps=bw)
        return kernel_time_s(hw, peak, KIND_MATMUL, flops, bytes_, 4096.0, 4096.0, 1.0, 4096.0, 0.2)

    d_peak, d_bw = jax.grad(t_of, argnums=(0, 1))(P, BW)
    assert float(d_peak) < 0.0 and float(d_bw) < 0.0
    assert np.isfinite(float(d_peak)) and np.isfinite(float(d_bw))


def test_hardware_is_a_pytree_for_kernel_time():
    """kernel_time_s vmaps over a stacked batch of devices: bandwidths 1, 2, 4 TB/s → a memory-bound
    kernel of 1e9 bytes takes 1, 0.5, 0.25 ms."""
    bws = jnp.array([1e12, 2e12, 4e12])
    hws = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x, float), (3,)), IDEAL)
    hws = dataclasses.replace(hws, hbm_bandwidth_Bps=bws)
    assert isinstance(hws, Hardware)
    times = jax.vmap(lambda hw: kernel_time_s(hw, P, KIND_MATMUL, 1.0, 1e9, 4096.0, 4096.0, 1.0, 4096.0))(hws)
    np.testing.assert_allclose(np.asarray(times), [1e-3, 0.5e-3, 0.25e-3], rtol=1e-6)
