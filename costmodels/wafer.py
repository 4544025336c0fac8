"""A wafer-scale design: continuous knobs → the ``Hardware`` of one die, differentiably.

A wafer of ``usable_side_mm²`` is cut into a ``dies_x × dies_y`` grid (a die may span several reticle
fields, stitched across the scribe lines as Cerebras does); every die splits the area its HBM PHY
band leaves between compute, SRAM and die-to-die I/O (fractions on a simplex), tiles its compute area
with cores of ``lanes_per_core`` FMA lanes (default: the node's tensor-core SM; 4 for WSE-2-like
cores, about half the FLOP/s per mm²), runs at ``clock_hz``, and may carry ``hbm_stacks`` HBM stacks
on its edge (0: an SRAM-only design, as Cerebras WSE-2/3). The dies form a 2-D mesh (neighbour
links from the I/O area's die-to-die bandwidth, split over the four sides); several wafers are joined
by off-wafer links along the wafer edge. A power cap per wafer throttles the clock: the die runs at
min(clock_hz, f_cap), where f_cap solves dies · P(f) = cap with P the die's whole power at clock f
(dynamic ∝ f·V(f)², leakage ∝ V(f), HBM and die-to-die links independent of the clock), found by
bisection and differentiated implicitly (``jax.lax.custom_root``); a smooth min keeps the gradient
alive (temperature ``cap_smoothness``). When even the slowest clock is over the cap (HBM, links and
leakage alone exceed it) the ``power_cap_w`` constraint is violated.

The die becomes a :class:`~costmodels.hardware.Hardware` "device": main memory is HBM plus SRAM (the
capacity-weighted mean bandwidth of the two, i.e. data spread uniformly over both), the scale-up
domain is the wafer (topology ``mesh2d``), the scale-out tier is the die's share of the wafer-edge
links, and the host link (for weight streaming) is the die's share of the wafer's link to external
memory, one broadcast stream for all the dies of the wafer. Kernel-class efficiencies come from a
reference preset (the calibrated A100 fractions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import jax
import jax.numpy as jnp

from costmodels.errors import ConfigError
from costmodels.hardware import Hardware
from costmodels.technology import NODES, Node, die_figures

Array = Any


@jax.tree_util.register_dataclass
@dataclass(frozen=True, kw_only=True)
class WaferDesign:
    """The continuous knobs of one design (every field a leaf, so ``grad`` and ``vmap`` apply)."""

    compute_frac: Array = 0.6
    sram_frac: Array = 0.3
    io_frac: Array = 0.1
    clock_hz: Array = 1.0e9
    hbm_stacks: Array = 0.0  # per die
    dies_x: Array = 8.0
    dies_y: Array = 8.0
    # FMA lanes per core (costmodels.technology): None = the node's tensor-core SM (1,024 at 7nm,
    # 2,048 at 5/3nm); 4 = a Cerebras WSE-2 core. Fixed unless listed among the knobs.
    lanes_per_core: Array | None = None


# Bisection bracket of the capped clock (Hz): far below and above any DVFS range.
_CLOCK_BRACKET_HZ = (1e6, 1e11)

# The values each design field can physically take (inclusive), and what the field counts: a
# fraction of the die, a clock inside the capped clock's bisection bracket, whole-die counts.
FIELD_RANGES: dict[str, tuple[float, float, str]] = {
    "compute_frac": (0.0, 1.0, "a fraction of the die's area"),
    "sram_frac": (0.0, 1.0, "a fraction of the die's area"),
    "io_frac": (0.0, 1.0, "a fraction of the die's area"),
    "clock_hz": (*_CLOCK_BRACKET_HZ, "a clock in Hz"),
    "hbm_stacks": (0.0, math.inf, "HBM stacks per die"),
    "dies_x": (1.0, math.inf, "dies across the wafer"),
    "dies_y": (1.0, math.inf, "dies down the wafer"),
    "lanes_per_core": (1.0, math.inf, "FMA lanes per core"),
}


@dataclass(frozen=True)
class WaferSystem:
    """The static part: technology node, wafer count and budget, and what a die inherits."""

    node: str = "5nm"
    wafers: int = 1
    power_cap_w: float = 25_000.0  # per wafer
    cap_smoothness: float = 0.05
    # Per-hop latency of the on-wafer mesh: UCIe 1.0 quotes < 2 ns PHY latency (Das Sharma et al., IEEE
    # TCPMT 2022); with the router and protocol stack of a mesh hop we take 100 ns (an estimate).
    d2d_latency_s: float = 100e-9
    # Off-wafer links (SerDes + a switch hop), an estimate in line with NVLink/IB step latencies.
    off_wafer_latency_s: float = 1e-6
    reference: Hardware | None = None  # kernel-class efficiencies and overheads (e.g. the A100 preset)
    # External memory for weight streaming (Cerebras MemoryX): capacity for the whole system and the
    # bandwidth of each wafer's link to it (also capped by the wafer's edge I/O). 0: none.
    external_memory_bytes: float = 0.0
    external_bandwidth_Bps: float = 0.0

    @property
    def tech(self) -> Node:
        if self.node not in NODES:
            raise ConfigError(f"unknown technology node '{self.node}'; valid: {', '.join(NODES)}")
        return NODES[self.node]


def _smooth_min(a: Array, b: Array, t: float) -> Array:
    """min(a, b) relaxed by log-sum-exp at relative temperature t."""
    scale = jnp.maximum(jnp.minimum(a, b), 1e-30) * t
    return -scale * jnp.logaddexp(-a / scale, -b / scale)


def die_area_mm2(system: WaferSystem, design: WaferDesign) -> Array:
    """The usable wafer square split into dies_x × dies_y dies."""
    side = system.tech.usable_wafer_side_mm
    return side * side / (design.dies_x * design.dies_y)


def _figures(system: WaferSystem, design: WaferDesign) -> Any:
    """Die figures; the area fractions split what the HBM PHY band (stacks · shoreline · depth) leaves."""
    tech, area = system.tech, die_area_mm2(system, design)
    phy = design.hbm_stacks * tech.hbm_stack_shoreline_mm * tech.io_band_depth_mm / area
    rest = 1.0 - phy
    return die_figures(
        tech,
        area,
        design.compute_frac * rest,
        design.sram_frac * rest,
        design.io_frac * rest,
        design.clock_hz,
        design.hbm_stacks,
        lanes_per_core=design.lanes_per_core,
    )


def wafer_power_w(system: WaferSystem, design: WaferDesign, clock_hz: Array) -> Array:
    """The whole wafer's power with its dies at ``clock_hz``: dies_x · dies_y · P(clock_hz)."""
    return design.dies_x * design.dies_y * _figures(system, replace(design, clock_hz=clock_hz)).power_w


def capped_clock_hz(system: WaferSystem, design: WaferDesign) -> Array:
    """The clock the dies run at: smooth min(clock_hz, f_cap), dies · P(f_cap) = power_cap_w.

    P(f) is non-decreasing in f, so f_cap is found by 60 bisection steps in log f over
    ``_CLOCK_BRACKET_HZ``; its gradient comes from the implicit function theorem,
    d f_cap = -(∂P/∂θ) dθ / (∂P/∂f). If P(lower bracket) > cap, f_cap is the lower bracket (the
    ``power_cap_w`` constraint then reports the excess)."""
    if not math.isfinite(system.power_cap_w):
        return jnp.asarray(design.clock_hz, dtype=float)

    def excess(f: Array) -> Array:  # aims 0.01 % under the cap: float32 rounding stays under it
        return wafer_power_w(system, design, f) - system.power_cap_w * (1.0 - 1e-4)

    def bisect(g: Any, _guess: Array) -> Array:
        def step(_: int, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            over = g(jnp.exp(mid)) > 0.0
            return jnp.where(over, lo, mid), jnp.where(over, mid, hi)

        lo, hi = (jnp.log(jnp.asarray(b, dtype=float)) for b in _CLOCK_BRACKET_HZ)
        lo, hi = jax.lax.fori_loop(0, 60, step, (lo, hi))
        return jnp.exp(0.5 * (lo + hi))

    guess = jnp.asarray(design.clock_hz, dtype=float)
    f_cap = jax.lax.custom_root(excess, guess, bisect, lambda g, y: y / g(1.0))
    return _smooth_min(guess, f_cap, system.cap_smoothness)


def constraints(system: WaferSystem, design: WaferDesign) -> dict[str, Array]:
    """Constraint values (≤ 0 satisfied): area (fractions + HBM PHY ≤ 1), HBM shoreline, clock range,
    wafer power at the capped clock ≤ the cap. A die may exceed one reticle field: wafer-scale designs
    stitch across the scribe lines (Cerebras)."""
    fig = _figures(system, design)
    return {
        "area_fractions": fig.area_check - 1.0,
        "hbm_shoreline_mm": fig.shoreline_violation_mm,
        "clock_hz": fig.clock_violation_hz,
        "power_cap_w": wafer_power_w(system, design, capped_clock_hz(system, design)) - system.power_cap_w,
    }


def wafer_hardware(system: WaferSystem, design: WaferDesign) -> Hardware:
    """The Hardware of one die of ``design`` (per-die figures at the capped clock; the wafer is its
    scale-up domain)."""
    tech = system.tech
    dies = design.dies_x * design.dies_y
    fig = _figures(system, replace(design, clock_hz=capped_clock_hz(system, design)))
    memory = fig.hbm_capacity_bytes + fig.sram_capacity_bytes
    bandwidth = (
        fig.hbm_bandwidth_Bps * fig.hbm_capacity_bytes + fig.sram_bandwidth_Bps * fig.sram_capacity_bytes
    ) / memory
    off_wafer_Bps = tech.off_wafer_bandwidth_Bps_per_mm * 4.0 * tech.usable_wafer_side_mm
    ref = system.reference
    base = {f.name: getattr(ref, f.name) for f in fields(Hardware)} if ref is not None else {}
    hw = (
        Hardware(**base)
        if ref is not None
        else Hardware(name="wafer", peak_flops_bf16=1.0, hbm_capacity_bytes=1.0, hbm_bandwidth_Bps=1.0)
    )
    return replace(
        hw,
        name=f"wafer-{system.node}",
        topology="mesh2d",
        peak_flops_bf16=fig.peak_flops_bf16,
        peak_flops_fp16=fig.peak_flops_bf16,
        peak_flops_fp32=fig.peak_flops_bf16 / 16.0,
        peak_flops_fp8=2.0 * fig.peak_flops_bf16,
        hbm_capacity_bytes=memory,
        hbm_bandwidth_Bps=bandwidth,
        sram_capacity_bytes=fig.sram_capacity_bytes,
        sram_bandwidth_Bps=fig.sram_bandwidth_Bps,
        scale_up_domain_size=dies,
        scale_up_bandwidth_Bps=fig.d2d_bandwidth_Bps / 4.0,
        scale_up_latency_s=system.d2d_latency_s,
        scale_out_bandwidth_Bps=off_wafer_Bps / dies,
        scale_out_latency_s=system.off_wafer_latency_s,
        scale_out_oversubscription=1.0,
        # weight streaming: each die's share of the wafer's external link, broadcast to its replicas
        host_memory_bytes=system.external_memory_bytes / (system.wafers * dies),
        host_bandwidth_Bps=jnp.minimum(system.external_bandwidth_Bps, off_wafer_Bps) / dies,
        host_broadcast_devices=dies,
        # a die has no GPU runtime (CUDA context, cuBLAS/NCCL workspaces); its program's own buffers
        # are not modelled
        workspace_bytes=0.0,
        power_w=fig.power_w,
        compute_units=0.0,
    )
