"""Technology model under a (wafer-scale) design space: what an area of silicon on a node buys.

:class:`Node` holds per-node constants (TSMC N7 / N5-N4 / N3E class) as Python floats; it is a JAX
pytree (``name`` static) so ``grad`` with respect to a constant works too. :func:`die_figures` turns
a die (area, area split, clock, HBM stacks) into peak FLOP/s, SRAM, HBM, die-to-die bandwidth, power
and constraint values; :func:`yield_fraction` and :func:`wafer_die_grid` cover manufacturing. All
pure JAX, SI units (MB = 1e6 B), differentiable in areas, fractions, clock and stack counts.

Compute area is tiled with cores of ``lanes_per_core`` bf16 FMA lanes each. A core's area is a fixed
part (instruction issue, control, its network port) plus a part per lane (multiplier-adder, operand
registers and buffers): A_core = core_overhead_mm2 + lanes · lane_area_mm2, so FLOP/s per mm² =
2 · lanes · f / A_core. Wide tensor-core SMs (A100: 1,024 lanes, H100: 2,048) amortise the fixed part;
Cerebras WSE-2 cores (4 lanes) spend about half their logic on it. The two 7nm constants are solved
from those two cores; 5nm takes its lane area from the H100 SM and its fixed part from 7nm's by TSMC's
logic shrink. Dynamic compute power is per mm² of compute area (P = α·C·V²·f with C ∝ area), so a
narrow core also spends more energy per FLOP. SRAM bandwidth per mm² is calibrated on the WSE-2's
small-bank scratchpad, the fine-grained end: caches with large banks (GPU L2, AMD Infinity Cache)
deliver 3-9x less per mm². "sram" is the software-visible on-chip memory level (GPU L2, WSE core
SRAM); SRAM inside the cores (register files, L1) is part of the compute area.

Derived constants are computed below from their published inputs, so each derivation can be audited.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import betainc

Scalar = Any  # float or jax.Array

# ---------------------------------------------------------------------------------------------- HBM


@dataclass(frozen=True)
class HBMStack:
    """One HBM stack as shipped: capacity, bandwidth (pins x rate / 8), edge length it takes, energy."""

    capacity_bytes: float
    bandwidth_Bps: float
    shoreline_mm: float
    pj_per_byte: float


_GIB = 2.0**30
# Shoreline: stacks sit beside the die with their long side (JEDEC HBM2/2e KGSD 7.75 x 11.87 mm, HBM3
# 11 x 11 mm) along its edge; A100/H100 place 3 stacks along each ~33 mm long edge -> ~11 mm per stack.
_SHORE_MM = 11.0
# Energy: HBM2 3.9 pJ/bit (O'Connor et al., "Fine-Grained DRAM", MICRO 2017); HBM2e assumed the same;
# HBM3 3.5 and HBM3e 3.2 pJ/bit are our estimates (HBM3 lowers VDDQ to 0.4 V, JESD238; vendors claim
# ~10 % better pJ/bit per generation). Rates are the pin rates of shipping parts, below JEDEC maxima.
HBM_GENERATIONS: dict[str, HBMStack] = {
    # 2.4 Gb/s x 1024: TPU v4 (4 stacks, 32 GiB, 1.2 TB/s; Jouppi et al., ISCA 2023).
    "hbm2": HBMStack(8 * _GIB, 2.4e9 * 1024 / 8, _SHORE_MM, 3.9 * 8),
    # 3.2 Gb/s x 1024 = 410 GB/s: A100 80GB (5 stacks, 2.039 TB/s; NVIDIA A100 datasheet).
    "hbm2e": HBMStack(16 * _GIB, 3.2e9 * 1024 / 8, _SHORE_MM, 3.9 * 8),
    # 5.2 Gb/s x 1024 = 666 GB/s: H100 SXM (5 x 16 GB, 3.35 TB/s), MI300X (8 x 24 GB, 5.3 TB/s).
    # JEDEC HBM3 allows 6.4 Gb/s (819 GB/s); no shipping accelerator ran it that fast.
    "hbm3": HBMStack(16 * _GIB, 5.2e9 * 1024 / 8, _SHORE_MM, 3.5 * 8),
    "hbm3_12hi": HBMStack(24 * _GIB, 5.2e9 * 1024 / 8, _SHORE_MM, 3.5 * 8),  # MI300X: 192 GB / 8
    # 8 Gb/s x 1024 = 1.02 TB/s: B200 (8 x 24 GB, 8 TB/s) and, 12-high, AMD MI355X on N3P
    # (8 x 36 GB = 288 GB, 8 TB/s; AMD Instinct MI350 series launch, 2025).
    "hbm3e_8hi": HBMStack(24 * _GIB, 8.0e9 * 1024 / 8, _SHORE_MM, 3.2 * 8),
    "hbm3e": HBMStack(36 * _GIB, 8.0e9 * 1024 / 8, _SHORE_MM, 3.2 * 8),
}


def _hbm(generation: str) -> dict[str, float]:
    s = HBM_GENERATIONS[generation]
    return {
        "hbm_stack_capacity_bytes": s.capacity_bytes,
        "hbm_stack_bandwidth_Bps": s.bandwidth_Bps,
        "hbm_stack_shoreline_mm": s.shoreline_mm,
        "pj_per_byte_hbm": s.pj_per_byte,
    }


# ------------------------------------------------------------------------------------------ the node


def _static() -> Any:
    return field(metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclass(frozen=True, kw_only=True)
class Node:
    """Per-node constants (SI units; MB = 1e6 B; bandwidths one direction). Sources: ``NODES``."""

    name: str = _static()
    lane_area_mm2: float  # compute area per bf16 FMA lane of a core (datapath, operand storage)
    core_overhead_mm2: float  # compute area per core whatever its width (issue, control, network port)
    reference_lanes_per_core: float  # width of the calibration core; pj_per_flop_bf16 holds at it
    sram_mb_per_mm2: float  # MB per mm² of SRAM macro area (cells + periphery)
    sram_bandwidth_Bps_per_mm2: float  # read+write B/s per mm² of SRAM at reference_clock_hz
    pj_per_flop_bf16: float  # at reference_lanes_per_core and reference_voltage_v; scales with (V / V_ref)²
    pj_per_byte_sram: float  # at reference_voltage_v; scales with (V / V_ref)²
    pj_per_byte_d2d: float
    pj_per_byte_hbm: float
    pj_per_byte_off_wafer: float
    reference_clock_hz: float
    min_voltage_v: float
    min_voltage_clock_hz: float  # clock reached at min_voltage_v (low end of the V-f line)
    max_clock_hz: float
    leakage_w_per_mm2: float  # at reference_voltage_v; scales with V / V_ref
    hbm_stack_capacity_bytes: float
    hbm_stack_bandwidth_Bps: float
    hbm_stack_shoreline_mm: float
    d2d_bandwidth_Bps_per_mm: float  # per mm of die edge given to d2d PHYs
    off_wafer_bandwidth_Bps_per_mm: float  # per mm of wafer edge
    defect_density_per_cm2: float
    # Nominal core supply, ~0.75 V for N7/N5/N3 (our estimate of the usual quoted operating point).
    reference_voltage_v: float = 0.75
    reticle_limit_mm2: float = 858.0  # 26 x 33 mm exposure field (ASML/TSMC)
    wafer_diameter_mm: float = 300.0
    # Largest square of dies used on a 300 mm wafer: Cerebras WSE-2, 46,225 mm² = 215 x 215 mm (its
    # corners are clipped: the inscribed square is 300/sqrt(2) = 212 mm).
    usable_wafer_side_mm: float = 215.0
    # Depth of an edge I/O band: UCIe 1.0 advanced package, 1317 GB/s per mm of shoreline over
    # 1350 GB/s per mm² of area (Das Sharma et al., IEEE TCPMT 2022) -> a ~1 mm deep PHY band.
    io_band_depth_mm: float = 1.0

    @property
    def flops_per_mm2_bf16(self) -> jax.Array:
        """Dense bf16 FLOP/s per mm² of compute area of the reference core at the reference clock."""
        return flops_per_mm2(self, self.reference_lanes_per_core)

    @property
    def hbm_stack_power_w(self) -> float:
        """Stack power at full bandwidth: pJ/byte x bandwidth."""
        return self.pj_per_byte_hbm * 1e-12 * self.hbm_stack_bandwidth_Bps


def with_hbm(node: Node, generation: str) -> Node:
    """``node`` with its HBM stack fields replaced by ``HBM_GENERATIONS[generation]``."""
    return dataclasses.replace(node, **_hbm(generation))


# --- compute density: a core of `lanes` FMA lanes takes core_overhead + lanes x lane_area ---
# SM-array share of the die: ~50 % for GA100 and GH100. Our estimate from the published die images
# (Choquette et al., ISSCC 2021, A100 die micrograph; NVIDIA H100 whitepaper die shot): the GPCs fill
# about half of each die, L2 + crossbar, HBM/NVLink PHYs and the rest the other half. Not a
# measurement: +-10 points move the densities by -+20 %.
_SM_SHARE = 0.50
# A100 SM: 826 mm² die, 128 SMs on the die (108 enabled); 4 tensor cores x 256 dense fp16/bf16 FMA per
# clock = 1,024 lanes (108 x 2,048 FLOP x 1.41 GHz = 312 TFLOP/s; NVIDIA A100 whitepaper).
_A100_SM_MM2, _A100_SM_LANES = 826.0 * _SM_SHARE / 128, 1024.0
# WSE-2 core logic: 850,000 cores; tiles over ~90 % of the 46,225 mm² wafer (our estimate: per-die
# clocking, test, edge I/O), half of each tile logic, half SRAM (Cerebras, Hot Chips 34). 4 fp16 FMAC
# lanes: 850,000 x 8 FLOP x 1.1 GHz is the often quoted 7.5 PFLOP/s (Cerebras publishes neither the
# lane count nor the clock; this is the figure's own basis).
_WSE2_CORE_MM2, _WSE2_CORE_LANES = 0.9 * 0.5 * 46225.0 / 850_000, 4.0
_N7_LANE_MM2 = (_A100_SM_MM2 - _WSE2_CORE_MM2) / (_A100_SM_LANES - _WSE2_CORE_LANES)  # 3.14e-3 mm²
_N7_CORE_MM2 = _WSE2_CORE_MM2 - _WSE2_CORE_LANES * _N7_LANE_MM2  # 1.19e-2 mm²: 49 % of a WSE-2 core
# H100 SM: 814 mm² die, 144 SMs on the die (132 enabled), 4,096 dense bf16 FLOP per clock = 2,048
# lanes (132 x 4,096 x 1.83 GHz = 989.4 TFLOP/s; H100 whitepaper). Its fixed part: 7nm's shrunk by
# TSMC's N5 logic density gain of 1.84x (TSMC, 2020) and 4N's further ~6 % (TSMC N4 announcement).
_H100_SM_MM2, _H100_SM_LANES = 814.0 * _SM_SHARE / 144, 2048.0
_N5_CORE_MM2 = _N7_CORE_MM2 / (1.84 * 1.06)
_N5_LANE_MM2 = (_H100_SM_MM2 - _N5_CORE_MM2) / _H100_SM_LANES  # 1.38e-3 mm²
# N3E: 1.6x logic density vs N5 (TSMC), /1.06 as H100's 4N already has N4's shrink; same clock
# (iso-speed), so no clock factor.
_N3_SHRINK = 1.6 / 1.06


# --- SRAM: HD bit cell x macro efficiency ---
# Macro efficiency 0.5 (cells / macro area incl. decoders, sense amps, redundancy). Bounds: the N5/N3E
# array density of 31.8 Mib/mm² (WikiChip on TSMC IEDM 2022) is 0.70 of the raw cell density; AMD's
# 3D V-Cache die (64 MB in 41 mm², N7; Wuu et al., ISSCC 2022) is ~0.35 of raw, TSVs and control included.
def _sram_mb_per_mm2(cell_um2: float, efficiency: float = 0.5) -> float:
    return 1e6 / cell_um2 * efficiency / 8 / 1e6


_N7_SRAM = _sram_mb_per_mm2(0.027)  # N7 0.027 µm² (TSMC, IEDM 2016): 2.31 MB/mm²
_N5_SRAM = _sram_mb_per_mm2(0.021)  # N5 0.021 µm² (Yeap et al., IEDM 2019): 2.98 MB/mm²
_N3_SRAM = _sram_mb_per_mm2(0.021)  # N3E 0.021 µm², no shrink over N5 (TSMC IEDM 2022 via WikiChip)

# --- SRAM bandwidth: Cerebras WSE-2, 20 PB/s from 40 GB of 48 KB core SRAMs (Cerebras, 2021). SRAM area:
# half of each core tile (Cerebras, Hot Chips 34: "half of the area is logic, half SRAM"), tiles over
# ~90 % of the 46,225 mm² wafer (our estimate) -> 20,800 mm²; clock ~1.1 GHz (not published by Cerebras;
# the figure behind the often quoted 7.5 PFLOP/s). Expressed in B/clk/mm², scaled by bank count (SRAM
# density) and each node's reference clock.
_WSE2_SRAM_B_PER_CLK_MM2 = 20e15 / (0.5 * 0.9 * 46225.0) / 1.1e9  # 874 B/clk/mm²

# --- energy per FLOP: what the TDP leaves after HBM and leakage, at the peak clock ---
# Leakage: 10 % of TDP spread over the die (our estimate; 10-20 % is typical of hot 7/5 nm GPUs).
# An upper bound on core energy (includes NoC, L2, NVLink), and optimistic where the part throttles
# below its peak clock at TDP.
_N7_LEAK = 0.10 * 400.0 / 826.0  # A100 SXM 400 W
_N5_LEAK = 0.10 * 700.0 / 814.0  # H100 SXM 700 W
_N7_PJ_FLOP = (400.0 - 0.10 * 400.0 - 5 * 3.9 * 8 * 409.6e9 * 1e-12) / 312e12 * 1e12  # 0.95 pJ
_N5_PJ_FLOP = (700.0 - 0.10 * 700.0 - 5 * 3.5 * 8 * 665.6e9 * 1e-12) / 989.4e12 * 1e12  # 0.54 pJ

# UCIe 1.0 advanced package (Das Sharma et al., IEEE TCPMT 2022; UCIe 1.0 spec): up to 1317 GB/s per
# mm of shoreline at 32 GT/s, counted over both directions -> 658 GB/s/mm one way; 0.25 pJ/bit at
# <= 16 GT/s, 0.3 pJ/bit above (Das Sharma, Hot Interconnects 2025). Cross-check: B200's two dies
# exchange 10 TB/s over one ~30 mm edge (NVIDIA Blackwell NV-HBI) = 330 GB/s/mm.
_UCIE_32G_BPS_PER_MM = 1317e9 / 2

NODES: dict[str, Node] = {
    "7nm": Node(
        name="7nm",
        lane_area_mm2=_N7_LANE_MM2,
        core_overhead_mm2=_N7_CORE_MM2,
        reference_lanes_per_core=_A100_SM_LANES,
        sram_mb_per_mm2=_N7_SRAM,
        sram_bandwidth_Bps_per_mm2=_WSE2_SRAM_B_PER_CLK_MM2 * 1.41e9,
        pj_per_flop_bf16=_N7_PJ_FLOP,
        # Horowitz, ISSCC 2014: 8 KB SRAM, 64-bit read 10 pJ at 45 nm = 1.25 pJ/B; /5 to 7 nm (our estimate).
        pj_per_byte_sram=0.25,
        pj_per_byte_d2d=0.25 * 8,  # UCIe-A at 16 GT/s
        pj_per_byte_off_wafer=7.0 * 8,  # 56G PAM4 long-reach SerDes ~7 pJ/bit (our estimate)
        reference_clock_hz=1.41e9,  # A100 boost clock, its 312 TFLOP/s operating point
        min_voltage_v=0.55,  # our estimate: N7 DVFS floors ~0.55 V at about half the peak clock
        min_voltage_clock_hz=0.705e9,
        max_clock_hz=2.0e9,  # N7 GPU logic: AMD Navi 21 boosts to 2.25 GHz; 2.0 GHz sustained (estimate)
        leakage_w_per_mm2=_N7_LEAK,
        **_hbm("hbm2e"),
        d2d_bandwidth_Bps_per_mm=_UCIE_32G_BPS_PER_MM / 2,  # 16 GT/s
        # SerDes beachfront: ~2.7 lanes per mm (a 4-lane macro ~1.5 mm wide) x 56 Gb/s (our estimate).
        off_wafer_bandwidth_Bps_per_mm=20e9,
        defect_density_per_cm2=0.09,  # TSMC N7 three quarters into HVM (VLSI Symposium 2019, AnandTech)
    ),
    "5nm": Node(
        name="5nm",
        lane_area_mm2=_N5_LANE_MM2,
        core_overhead_mm2=_N5_CORE_MM2,
        reference_lanes_per_core=_H100_SM_LANES,
        sram_mb_per_mm2=_N5_SRAM,
        sram_bandwidth_Bps_per_mm2=_WSE2_SRAM_B_PER_CLK_MM2 * (_N5_SRAM / _N7_SRAM) * 1.83e9,
        pj_per_flop_bf16=_N5_PJ_FLOP,
        pj_per_byte_sram=0.20,  # 7nm x 0.8: TSMC N5 -30 % power vs N7, SRAM scaling less (estimate)
        pj_per_byte_d2d=0.3 * 8,  # UCIe-A at 32 GT/s
        pj_per_byte_off_wafer=6.0 * 8,  # 112G PAM4 long-reach SerDes ~6 pJ/bit (our estimate)
        reference_clock_hz=1.83e9,  # H100 SXM clock of its 989 TFLOP/s figure
        min_voltage_v=0.50,  # our estimate
        min_voltage_clock_hz=0.915e9,
        max_clock_hz=2.5e9,  # AMD Navi 31 (N5) boosts to 2.5 GHz; H100 max boost 1.98 GHz
        leakage_w_per_mm2=_N5_LEAK,
        **_hbm("hbm3"),
        d2d_bandwidth_Bps_per_mm=_UCIE_32G_BPS_PER_MM,
        off_wafer_bandwidth_Bps_per_mm=40e9,  # 112 Gb/s lanes at the same beachfront
        defect_density_per_cm2=0.10,  # TSMC N5 0.10-0.11 (2020 Technology Symposium, AnandTech)
    ),
    "3nm": Node(
        name="3nm",
        lane_area_mm2=_N5_LANE_MM2 / _N3_SHRINK,
        core_overhead_mm2=_N5_CORE_MM2 / _N3_SHRINK,
        reference_lanes_per_core=_H100_SM_LANES,
        sram_mb_per_mm2=_N3_SRAM,
        sram_bandwidth_Bps_per_mm2=_WSE2_SRAM_B_PER_CLK_MM2 * (_N3_SRAM / _N7_SRAM) * 1.83e9,
        pj_per_flop_bf16=_N5_PJ_FLOP * 0.68,  # TSMC N3E: -32 % power at iso-speed vs N5
        pj_per_byte_sram=0.17,  # 5nm x 0.85 (estimate; the bit cell did not shrink)
        pj_per_byte_d2d=0.3 * 8,
        pj_per_byte_off_wafer=5.0 * 8,  # 224G SerDes / co-packaged optics ~5 pJ/bit (our estimate)
        reference_clock_hz=1.83e9,  # iso-speed with 5nm (N3E's +18 % speed spent on power instead)
        min_voltage_v=0.50,
        min_voltage_clock_hz=0.915e9,
        max_clock_hz=2.6e9,  # our estimate; AMD MI355X (N3P) boosts to 2.4 GHz
        # ~1.5x the transistors per mm² of 5nm at ~0.65x leakage each (our estimate)
        leakage_w_per_mm2=_N5_LEAK * 1.5 * 0.65,
        **_hbm("hbm3e"),
        d2d_bandwidth_Bps_per_mm=_UCIE_32G_BPS_PER_MM,
        off_wafer_bandwidth_Bps_per_mm=80e9,  # 224 Gb/s lanes
        defect_density_per_cm2=0.15,  # early-ramp estimate (N3 D0 not published)
    ),
}


# ---------------------------------------------------------------------------------------- functions


def voltage_for_clock(node: Node, clock_hz: Scalar) -> jax.Array:
    """Supply voltage for ``clock_hz``: the line through (min_voltage_clock_hz, min_voltage_v) and
    (reference_clock_hz, reference_voltage_v), clipped to [min_voltage_v, V(max_clock_hz)]."""
    slope = (node.reference_voltage_v - node.min_voltage_v) / (
        node.reference_clock_hz - node.min_voltage_clock_hz
    )
    f = jnp.clip(jnp.asarray(clock_hz, dtype=float), node.min_voltage_clock_hz, node.max_clock_hz)
    return node.min_voltage_v + slope * (f - node.min_voltage_clock_hz)


def core_area_mm2(node: Node, lanes_per_core: Scalar) -> jax.Array:
    """Compute area of one core: core_overhead_mm2 + lanes · lane_area_mm2."""
    return node.core_overhead_mm2 + jnp.asarray(lanes_per_core, dtype=float) * node.lane_area_mm2


def flops_per_mm2(node: Node, lanes_per_core: Scalar) -> jax.Array:
    """Dense bf16 FLOP/s per mm² of compute area at the reference clock: 2 · lanes · f_ref / A_core."""
    lanes = jnp.asarray(lanes_per_core, dtype=float)
    return 2.0 * lanes * node.reference_clock_hz / core_area_mm2(node, lanes)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DieFigures:
    """What one die delivers at full utilisation (SI units, bandwidths one direction).

    Constraint values are <= 0 when met: ``area_check - 1``, ``shoreline_violation_mm``,
    ``clock_violation_hz``, ``reticle_violation_mm2`` (the last is not part of :attr:`feasible`:
    wafer-scale designs stitch across reticles)."""

    peak_flops_bf16: jax.Array
    cores: jax.Array  # compute area / core area (continuous)
    sram_capacity_bytes: jax.Array
    sram_bandwidth_Bps: jax.Array
    hbm_capacity_bytes: jax.Array
    hbm_bandwidth_Bps: jax.Array
    d2d_bandwidth_Bps: jax.Array
    d2d_edge_mm: jax.Array
    voltage_v: jax.Array
    compute_power_w: jax.Array
    sram_power_w: jax.Array
    leakage_power_w: jax.Array
    hbm_power_w: jax.Array
    d2d_power_w: jax.Array
    power_w: jax.Array
    area_check: jax.Array  # compute + sram + io + HBM-PHY fractions of the die; must be <= 1
    shoreline_violation_mm: jax.Array  # HBM shoreline - die perimeter
    clock_violation_hz: jax.Array  # clock - max_clock_hz
    reticle_violation_mm2: jax.Array  # area - reticle limit

    @property
    def feasible(self) -> jax.Array:
        """Area split fits, HBM stacks fit on the edge, clock within the node's range (bool array)."""
        fits = (self.area_check <= 1.0) & (self.shoreline_violation_mm <= 0.0)
        return fits & (self.clock_violation_hz <= 0.0)


def die_figures(
    node: Node,
    area_mm2: Scalar,
    compute_frac: Scalar,
    sram_frac: Scalar,
    io_frac: Scalar,
    clock_hz: Scalar,
    hbm_stacks: Scalar,
    *,
    aspect_ratio: Scalar = 1.0,
    lanes_per_core: Scalar | None = None,
) -> DieFigures:
    """Figures of one die of ``area_mm2`` (width / height = ``aspect_ratio``) on ``node`` whose compute
    area is tiled with cores of ``lanes_per_core`` FMA lanes (default: the node's reference core).

    With s = clock / f_ref, V = :func:`voltage_for_clock`, e = (V / V_ref)², A_c = A · compute_frac:
      peak = :func:`flops_per_mm2` (lanes) · A_c · s;   SRAM = sram_mb_per_mm2 · A · sram_frac;
      SRAM bandwidth = sram_bandwidth_per_mm2 · A · sram_frac · s;  HBM = stacks · stack figures;
      perimeter P = 2(w + h);  HBM shoreline H = stacks · hbm_stack_shoreline_mm;
      d2d edge = min(io_frac · A / io_band_depth_mm, max(P - H, 0)), d2d bandwidth = edge · per-mm rate;
      power = e · (A_c · s · flops_per_mm2(ref lanes) · pJ/FLOP + SRAM bandwidth · pJ/B)
              + leakage · A · V/V_ref + stacks · hbm_stack_power_w + d2d bandwidth · pJ/B(d2d)
      (dynamic ∝ C·V²·f with C ∝ area: a core narrower than the reference spends more per FLOP);
      area_check = compute_frac + sram_frac + io_frac + H · io_band_depth_mm / A (HBM PHY band).
    The rest of the die (1 - area_check) is NoC, control, SerDes, spares. Spare cores for yield are
    part of compute_frac: scale by (1 - redundancy) for usable FLOP/s.
    """
    a = jnp.asarray(area_mm2, dtype=float)
    clock = jnp.asarray(clock_hz, dtype=float)
    stacks = jnp.asarray(hbm_stacks, dtype=float)
    v = voltage_for_clock(node, clock)
    e = (v / node.reference_voltage_v) ** 2
    s = clock / node.reference_clock_hz
    lanes = node.reference_lanes_per_core if lanes_per_core is None else lanes_per_core
    compute_mm2 = a * compute_frac
    peak = flops_per_mm2(node, lanes) * compute_mm2 * s
    sram_mm2 = a * sram_frac
    sram_bw = node.sram_bandwidth_Bps_per_mm2 * sram_mm2 * s
    width = jnp.sqrt(a * aspect_ratio)
    perimeter = 2.0 * (width + a / width)
    shoreline = stacks * node.hbm_stack_shoreline_mm
    d2d_edge = jnp.minimum(io_frac * a / node.io_band_depth_mm, jnp.maximum(perimeter - shoreline, 0.0))
    d2d_bw = d2d_edge * node.d2d_bandwidth_Bps_per_mm
    powers = {
        "compute_power_w": e
        * compute_mm2
        * s
        * flops_per_mm2(node, node.reference_lanes_per_core)
        * node.pj_per_flop_bf16
        * 1e-12,
        "sram_power_w": e * sram_bw * node.pj_per_byte_sram * 1e-12,
        "leakage_power_w": node.leakage_w_per_mm2 * a * v / node.reference_voltage_v,
        "hbm_power_w": stacks * node.hbm_stack_power_w,
        "d2d_power_w": d2d_bw * node.pj_per_byte_d2d * 1e-12,
    }
    return DieFigures(
        peak_flops_bf16=peak,
        cores=compute_mm2 / core_area_mm2(node, lanes),
        sram_capacity_bytes=node.sram_mb_per_mm2 * 1e6 * sram_mm2,
        sram_bandwidth_Bps=sram_bw,
        hbm_capacity_bytes=stacks * node.hbm_stack_capacity_bytes,
        hbm_bandwidth_Bps=stacks * node.hbm_stack_bandwidth_Bps,
        d2d_bandwidth_Bps=d2d_bw,
        d2d_edge_mm=d2d_edge,
        voltage_v=v,
        **powers,
        power_w=sum(powers.values()),
        area_check=compute_frac + sram_frac + io_frac + shoreline * node.io_band_depth_mm / a,
        shoreline_violation_mm=shoreline - perimeter,
        clock_violation_hz=clock - node.max_clock_hz,
        reticle_violation_mm2=a - node.reticle_limit_mm2,
    )


# ------------------------------------------------------------------------------------------- yield

# Negative-binomial clustering parameter alpha = 3 (Cunningham, "The use and evaluation of yield models
# in integrated circuit manufacturing", IEEE Trans. Semicond. Manuf. 3(2), 1990: fitted alphas range
# from ~0.3 to ~5; 2-3 is the usual default for large logic dies).
CLUSTERING_ALPHA = 3.0


def _nb_cdf_raw(k: jax.Array, mean: jax.Array) -> jax.Array:
    p = CLUSTERING_ALPHA / (CLUSTERING_ALPHA + mean)
    return betainc(CLUSTERING_ALPHA, k + 1.0, p)


@jax.custom_jvp
def _nb_cdf(k: jax.Array, mean: jax.Array) -> jax.Array:
    """P(K <= k) for K ~ NegBin(alpha, mean), continuous in k: I_p(alpha, k + 1), p = alpha/(alpha + mean)."""
    return _nb_cdf_raw(k, mean)


@_nb_cdf.defjvp
def _nb_cdf_jvp(primals: tuple, tangents: tuple) -> tuple:
    # d/dmean exactly (betainc is differentiable in x); d/dk (not supported by JAX's betainc) as the
    # central difference over one defect, the CDF's natural step.
    (k, mean), (dk, dmean) = primals, tangents
    y, dy_mean = jax.jvp(lambda m: _nb_cdf_raw(k, m), (mean,), (dmean,))
    dy_dk = _nb_cdf_raw(k + 0.5, mean) - _nb_cdf_raw(jnp.maximum(k - 0.5, -0.5), mean)
    return y, dy_mean + dy_dk * dk


def yield_fraction(
    node: Node,
    area_mm2: Scalar,
    redundancy: Scalar = 0.0,
    *,
    core_area_mm2: Scalar = 1.0,
    repairable_frac: Scalar = 1.0,
) -> jax.Array:
    """Fraction of dies that work: negative-binomial defects with a pool of spare cores.

    Without redundancy: Y = (1 + A·D0/α)^-α (Cunningham 1990; Stapper's model). With it: a share c =
    ``repairable_frac`` of the area is an array of cores of ``core_area_mm2`` of which a fraction
    ``redundancy`` are spares; a defect kills one core, and the die works if no defect falls in the
    other (1 - c) and at most S = redundancy · c·A / core_area defects fall in the array. Writing the
    negative binomial as a Poisson with Gamma(α, θ = A·D0/α) rate and integrating exactly:
      Y = (1 + θ(1 - c))^-α · P(NegBin(α, mean = α·θ'·c) <= S),  θ' = θ / (1 + θ(1 - c)),
    which is exactly (1 + θ)^-α at S = 0. Cerebras (Sean Lie, Hot Chips 31, 2019, WSE-1): ~1 % spare
    cores, with the fabric routing around dead ones, give every wafer a full working core array.
    """
    a = jnp.asarray(area_mm2, dtype=float)
    c = jnp.asarray(repairable_frac, dtype=float)
    theta = a * 1e-2 * node.defect_density_per_cm2 / CLUSTERING_ALPHA  # mm² -> cm²
    outside = 1.0 + theta * (1.0 - c)
    spares = redundancy * c * a / core_area_mm2
    return outside**-CLUSTERING_ALPHA * _nb_cdf(spares, CLUSTERING_ALPHA * theta / outside * c)


def wafer_die_grid(node: Node, die_w_mm: Scalar, die_h_mm: Scalar) -> tuple[jax.Array, jax.Array]:
    """Dies of ``die_w_mm`` x ``die_h_mm`` (scribe included) that fit the usable wafer square, per
    row and per column: floor(side / w), floor(side / h). Their product is the die count; the floor
    has zero gradient."""
    side = node.usable_wafer_side_mm
    nx = jnp.floor(side / jnp.asarray(die_w_mm, dtype=float) * (1 + 1e-6))  # 1e-6: float rounding
    ny = jnp.floor(side / jnp.asarray(die_h_mm, dtype=float) * (1 + 1e-6))
    return nx, ny
