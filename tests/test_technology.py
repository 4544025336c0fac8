"""Tests for costmodels.technology: real chips against published figures, yield, gradients, V-f.

Real-chip table. Each chip gets its public die area, node and clock plus an area split stated and
justified below. Each compared figure carries a basis:
  cal   a node constant was derived from this chip (agreement is by construction: the 7nm lane area
        and per-core area are solved from the A100 SM and the WSE-2 core, 5nm's lane area from the
        H100 SM),
  pred  out of sample: neither the constant nor the split was set from this figure,
  cons  consistency only: the SRAM array share of GPU dies is not published, we state a round
        estimate of the L2/LLC data-array share that is compatible with the die photos,
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from costmodels.technology import (
    CLUSTERING_ALPHA,
    HBM_GENERATIONS,
    NODES,
    DieFigures,
    Node,
    core_area_mm2,
    die_figures,
    flops_per_mm2,
    voltage_for_clock,
    wafer_die_grid,
    with_hbm,
    yield_fraction,
)

MIB = 2.0**20
N7, N5 = NODES["7nm"], NODES["5nm"]


@dataclasses.dataclass(frozen=True)
class Dies:
    """``count`` identical dies; fractions are of this die's area."""

    count: int
    node: Node
    area_mm2: float
    compute_frac: float
    sram_frac: float
    clock_hz: float
    hbm_stacks: float
    lanes_per_core: float  # bf16 FMA lanes of one core (SM, CU, WSE core)


# Splits. GPUs: compute = enabled share of the SM array, taken as 50 % of the die (the estimate behind
# the 7nm/5nm constants); SRAM = L2 data arrays, ~2.5 % of the die (estimate, 'cons'); the NVLink/PCIe
# SerDes are not UCIe-class d2d I/O, so io_frac = 0 and they fall in the unassigned rest. Lanes: dense
# bf16 FMA per clock of one SM / CU / core.
CHIPS: dict[str, list[Dies]] = {
    # A100 SXM 80GB: TSMC N7, 826 mm², 1.41 GHz, 108/128 SMs, 40 MB L2, 5 HBM2e stacks.
    "A100": [Dies(1, N7, 826.0, 0.50 * 108 / 128, 0.025, 1.41e9, 5, 1024)],
    # H100 SXM: TSMC 4N (5nm class), 814 mm², 1.83 GHz (the clock of 989 TFLOP/s), 132/144 SMs, 50 MB L2.
    "H100": [Dies(1, N5, 814.0, 0.50 * 132 / 144, 0.025, 1.83e9, 5, 2048)],
    # WSE-2: TSMC N7, 46,225 mm², 850,000 cores of 48 KB SRAM. Cerebras, Hot Chips 34: half of a core's
    # area is logic, half SRAM; core tiles cover ~90 % of the wafer (our estimate: per-die clocking,
    # test, edge I/O). The whole logic half counts as compute, like a GPU SM with its control and
    # L1. Clock 1.1 GHz and 4 fp16 FMAC lanes: not published by Cerebras; 850,000 x 8 FLOP/clk x
    # 1.1 GHz is the often quoted 7.5 PFLOP/s.
    "WSE-2": [Dies(1, N7, 46225.0, 0.45, 0.45, 1.1e9, 0, 4)],
    # MI300X: 8 XCDs on TSMC N5 (~115 mm² each, AMD ISSCC 2024 as reported; 38 of 40 CUs, 2.1 GHz) over
    # 4 IODs on N6 (7nm class: N7 SRAM cell; ~370 mm² each; 64 MB Infinity Cache and 2 HBM3 12-high
    # stacks each). XCD: CU array ~60 % of the die (estimate: no PHYs on the XCD, the rest is 4 MB L2,
    # command processors, the hybrid-bond interface). IOD: cache arrays ~8 % (estimate, 'cons'); its
    # clock is taken as the node reference (fabric clock not published). A CDNA 3 CU does 2,048 dense
    # bf16 FLOP per clock: 1,024 lanes (1307.4 TFLOP/s / 304 CUs / 2.1 GHz; CDNA 3 whitepaper).
    "MI300X": [
        Dies(8, N5, 115.0, 0.60 * 38 / 40, 0.0, 2.1e9, 0, 1024),
        Dies(4, with_hbm(N7, "hbm3_12hi"), 370.0, 0.0, 0.08, 1.41e9, 2, 1024),
    ],
}

# Published figures (dense bf16; bytes as the vendor counts them) and the basis of each comparison.
PUBLISHED: dict[str, dict[str, tuple[float, str]]] = {
    "A100": {  # NVIDIA A100 whitepaper / datasheet
        "peak_flops_bf16": (312e12, "cal"),
        "cores": (108, "cal"),  # SMs
        "sram_capacity_bytes": (40 * MIB, "cons"),
        "hbm_bandwidth_Bps": (2.039e12, "cal"),
        "power_w": (400.0, "cal"),
    },
    "H100": {  # NVIDIA H100 whitepaper / datasheet
        "peak_flops_bf16": (989e12, "cal"),
        "cores": (132, "cal"),
        "sram_capacity_bytes": (50 * MIB, "cons"),
        "hbm_bandwidth_Bps": (3.35e12, "cal"),
        "power_w": (700.0, "cal"),
    },
    "WSE-2": {  # Cerebras WSE-2 announcement (2021): 40 GB, 20 PB/s; 15 kW; 7.5 PFLOP/s fp16 (see above)
        "peak_flops_bf16": (7.5e15, "cal"),
        "cores": (850_000, "cal"),
        "sram_capacity_bytes": (40e9, "pred"),
        "sram_bandwidth_Bps": (20e15, "cal"),
        "power_w": (15e3, "pred"),
    },
    "MI300X": {  # AMD CDNA 3 whitepaper / MI300X datasheet
        "peak_flops_bf16": (1307.4e12, "pred"),
        "cores": (304, "pred"),  # CUs
        "sram_capacity_bytes": (256 * MIB, "cons"),
        "hbm_bandwidth_Bps": (5.3e12, "pred"),
        "hbm_capacity_bytes": (192 * 2.0**30, "pred"),
    },
}

# Printed, not asserted: figures the model is not meant to match (see the module docstring).
INFO: dict[str, dict[str, float]] = {
    "A100": {"sram_bandwidth_Bps": 7.2e12},  # L2: 5120 B/clk x 1.41 GHz (A100 whitepaper)
    "MI300X": {"power_w": 750.0, "sram_bandwidth_Bps": 17.2e12},  # TDP; Infinity Cache peak (CDNA 3 WP)
}
TOLERANCE = 0.25


def chip_figures(dies: list[Dies]) -> dict[str, float]:
    """Sum of the figures of all dies of a chip (bandwidths and capacities add up)."""
    total: dict[str, float] = {}
    for d in dies:
        fig = die_figures(
            d.node,
            d.area_mm2,
            d.compute_frac,
            d.sram_frac,
            0.0,
            d.clock_hz,
            d.hbm_stacks,
            lanes_per_core=d.lanes_per_core,
        )
        for f in dataclasses.fields(DieFigures):
            total[f.name] = total.get(f.name, 0.0) + d.count * float(getattr(fig, f.name))
    return total


@pytest.fixture(scope="module")
def modelled() -> dict[str, dict[str, float]]:
    return {chip: chip_figures(dies) for chip, dies in CHIPS.items()}


def test_real_chips_table(modelled: dict[str, dict[str, float]], capsys: pytest.CaptureFixture) -> None:
    rows = []
    for chip, figures in PUBLISHED.items():
        for name, (published, basis) in figures.items():
            rows.append((chip, name, published, modelled[chip][name], basis))
        for name, published in INFO.get(chip, {}).items():
            rows.append((chip, name, published, modelled[chip][name], "info"))
    with capsys.disabled():
        print(f"\n{'chip':7} {'figure':20} {'published':>11} {'modelled':>11} {'error':>8}  basis")
        for chip, name, pub, mod, basis in rows:
            print(f"{chip:7} {name:20} {pub:11.4g} {mod:11.4g} {100 * (mod / pub - 1):+7.1f}%  {basis}")
    for chip, name, pub, mod, basis in rows:
        ratio = mod / pub
        if basis != "info":
            assert abs(ratio - 1) <= TOLERANCE, f"{chip} {name}: modelled {mod:.4g} vs published {pub:.4g}"


def test_real_chip_splits_fit_their_dies() -> None:
    for chip, dies in CHIPS.items():
        for d in dies:
            fig = die_figures(d.node, d.area_mm2, d.compute_frac, d.sram_frac, 0.0, d.clock_hz, d.hbm_stacks)
            assert bool(fig.feasible), chip


# ------------------------------------------------------------------------------------ core width


def test_core_area_model_reproduces_its_two_7nm_cores() -> None:
    """A100 SM: 826 mm² · 0.5 / 128 SMs = 3.2266 mm² for 1,024 lanes; WSE-2 core logic: 46,225 mm² ·
    0.9 · 0.5 / 850,000 = 0.024472 mm² for 4 lanes. A0 + n·a must give both."""
    assert float(core_area_mm2(N7, 1024)) == pytest.approx(826.0 * 0.5 / 128, rel=1e-6)
    assert float(core_area_mm2(N7, 4)) == pytest.approx(46225.0 * 0.45 / 850_000, rel=1e-6)
    # and the H100 SM at 5nm: 814 mm² · 0.5 / 144 for 2,048 lanes
    assert float(core_area_mm2(N5, 2048)) == pytest.approx(814.0 * 0.5 / 144, rel=1e-6)
    # the fixed part shrinks from 7nm by TSMC's N5 logic gain (1.84x) and 4N's 6 %
    assert N5.core_overhead_mm2 * 1.84 * 1.06 == pytest.approx(N7.core_overhead_mm2, rel=1e-6)


@pytest.mark.parametrize("node", list(NODES.values()), ids=list(NODES))
def test_density_rises_with_core_width_toward_the_lane_limit(node: Node) -> None:
    """2·n·f / (A0 + n·a) rises in n and tends to 2·f / a; at n = A0 / a it is half that limit."""
    lanes = jnp.array([1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 2048.0, 1e6])
    d = flops_per_mm2(node, lanes)
    assert bool(jnp.all(jnp.diff(d) > 0))
    limit = 2 * node.reference_clock_hz / node.lane_area_mm2
    assert float(d[-1]) == pytest.approx(limit, rel=1e-3)
    assert float(flops_per_mm2(node, node.core_overhead_mm2 / node.lane_area_mm2)) == pytest.approx(limit / 2)
    assert float(node.flops_per_mm2_bf16) == pytest.approx(
        float(flops_per_mm2(node, node.reference_lanes_per_core))
    )


def test_narrow_cores_burn_the_same_power_per_mm2_for_fewer_flops() -> None:
    """Dynamic power ∝ switched area: a 4-lane die and a 1,024-lane die of the same compute area and
    clock draw the same compute power, so energy per FLOP grows by density(1024) / density(4)."""
    wide = die_figures(N7, 800.0, 0.5, 0.2, 0.0, 1.2e9, 0, lanes_per_core=1024)
    narrow = die_figures(N7, 800.0, 0.5, 0.2, 0.0, 1.2e9, 0, lanes_per_core=4)
    assert float(narrow.compute_power_w) == pytest.approx(float(wide.compute_power_w), rel=1e-6)
    ratio = float(flops_per_mm2(N7, 1024) / flops_per_mm2(N7, 4))
    assert float(wide.peak_flops_bf16 / narrow.peak_flops_bf16) == pytest.approx(ratio, rel=1e-6)
    assert 1.9 < ratio < 2.1  # WSE-2-like cores: about half the FLOP/s of tensor-core SMs per mm²
    assert float(narrow.cores) == pytest.approx(400.0 / float(core_area_mm2(N7, 4)), rel=1e-6)


def test_grad_of_peak_with_respect_to_core_width() -> None:
    """d/dn [2·n·f·A_c / (A0 + n·a)] = 2·f·A_c·A0 / (A0 + n·a)² at f = f_ref."""
    area_c, n = 400.0, 16.0
    g = jax.grad(
        lambda lanes: (
            die_figures(
                N5, 800.0, 0.5, 0.2, 0.0, N5.reference_clock_hz, 0, lanes_per_core=lanes
            ).peak_flops_bf16
        )
    )(n)
    core = N5.core_overhead_mm2 + n * N5.lane_area_mm2
    expected = 2 * N5.reference_clock_hz * area_c * N5.core_overhead_mm2 / core**2
    assert float(g) == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------------- die figures


def test_hbm_stacks_take_shoreline_and_edge_caps_d2d() -> None:
    # 100 mm² square die: perimeter 40 mm. Four 11 mm stacks need 44 mm -> violated by 4 mm.
    fig = die_figures(N5, 100.0, 0.3, 0.2, 0.2, 1.83e9, 4)
    assert float(fig.shoreline_violation_mm) == pytest.approx(4.0, rel=1e-5)
    assert not bool(fig.feasible)
    # io band 0.2 x 100 mm² / 1 mm = 20 mm of edge wanted; with 2 stacks 40 - 22 = 18 mm is left.
    fig = die_figures(N5, 100.0, 0.3, 0.2, 0.2, 1.83e9, 2)
    assert float(fig.d2d_edge_mm) == pytest.approx(18.0, rel=1e-5)
    assert float(fig.d2d_bandwidth_Bps) == pytest.approx(18.0 * N5.d2d_bandwidth_Bps_per_mm, rel=1e-5)
    assert float(fig.area_check) == pytest.approx(0.3 + 0.2 + 0.2 + 22 * 1.0 / 100, rel=1e-5)


def test_power_is_the_sum_of_its_parts() -> None:
    fig = die_figures(NODES["3nm"], 600.0, 0.5, 0.2, 0.05, 2.0e9, 4)
    parts = ("compute_power_w", "sram_power_w", "leakage_power_w", "hbm_power_w", "d2d_power_w")
    assert float(fig.power_w) == pytest.approx(sum(float(getattr(fig, p)) for p in parts), rel=1e-5)
    assert float(fig.hbm_power_w) == pytest.approx(4 * NODES["3nm"].hbm_stack_power_w, rel=1e-5)


@pytest.mark.parametrize("wrt", ["clock_hz", "compute_frac"])
def test_grad_of_peak_and_power_is_finite_and_positive(wrt: str) -> None:
    args = {"area_mm2": 800.0, "compute_frac": 0.5, "sram_frac": 0.2, "io_frac": 0.05, "hbm_stacks": 4.0}
    args["clock_hz"] = 1.6e9

    def out(x: jax.Array, field: str) -> jax.Array:
        return getattr(die_figures(N5, **{**args, wrt: x}), field)

    for field in ("peak_flops_bf16", "power_w"):
        g = jax.grad(out)(jnp.float32(args[wrt]), field)
        assert bool(jnp.isfinite(g)) and float(g) > 0, (field, wrt, g)


def test_jit_vmap_over_a_design_grid() -> None:
    fracs = jnp.linspace(0.1, 0.8, 16)
    fn = jax.jit(jax.vmap(lambda c: die_figures(N7, 800.0, c, 0.9 - c, 0.05, 1.4e9, 4)))
    figs = fn(fracs)
    assert figs.peak_flops_bf16.shape == (16,)
    assert bool(jnp.all(jnp.diff(figs.peak_flops_bf16) > 0))
    assert bool(jnp.all(jnp.diff(figs.sram_capacity_bytes) < 0))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(figs))


def test_node_is_a_pytree_so_constants_are_differentiable() -> None:
    """peak = 2·n·f·A_c / (A0 + n·a) at f = f_ref, so d peak / d a = -2·n²·f·A_c / (A0 + n·a)²."""
    n, area_c = N7.reference_lanes_per_core, 800.0 * 0.5
    g = jax.grad(lambda node: die_figures(node, 800.0, 0.5, 0.2, 0.0, 1.41e9, 0).peak_flops_bf16)(N7)
    core = N7.core_overhead_mm2 + n * N7.lane_area_mm2
    expected = -2 * n * n * N7.reference_clock_hz * area_c / core**2
    assert float(g.lane_area_mm2) == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------------------- V-f


@pytest.mark.parametrize("node", list(NODES.values()), ids=list(NODES))
def test_voltage_for_clock_monotone_and_clipped(node: Node) -> None:
    f = jnp.linspace(0.1e9, 4e9, 200)
    v = voltage_for_clock(node, f)
    assert bool(jnp.all(jnp.diff(v) >= 0))
    assert float(v[0]) == pytest.approx(node.min_voltage_v)
    assert float(voltage_for_clock(node, node.reference_clock_hz)) == pytest.approx(node.reference_voltage_v)
    assert float(v[-1]) == pytest.approx(float(voltage_for_clock(node, node.max_clock_hz)))
    assert float(v[-1]) < 1.0  # a plausible overdrive for these nodes


def test_energy_per_flop_scales_with_voltage_squared() -> None:
    def pj_per_flop(clock: float) -> tuple[float, float]:
        fig = die_figures(N5, 800.0, 0.5, 0.2, 0.0, clock, 0)
        return float(fig.compute_power_w / fig.peak_flops_bf16) * 1e12, float(fig.voltage_v)

    e_ref, v_ref = pj_per_flop(N5.reference_clock_hz)
    assert e_ref == pytest.approx(N5.pj_per_flop_bf16, rel=1e-5)
    for clock in (1.0e9, 1.4e9, 2.3e9):
        e, v = pj_per_flop(clock)
        assert e / e_ref == pytest.approx((v / v_ref) ** 2, rel=1e-5)


# ----------------------------------------------------------------------------------------- yield


def test_yield_without_redundancy_is_negative_binomial() -> None:
    for area in (100.0, 826.0, 46225.0):
        expected = (1 + area / 100 * N7.defect_density_per_cm2 / CLUSTERING_ALPHA) ** -CLUSTERING_ALPHA
        assert float(yield_fraction(N7, area)) == pytest.approx(expected, rel=1e-4)


def test_yield_decreases_with_area_and_increases_with_redundancy() -> None:
    areas = jnp.linspace(50.0, 3000.0, 30)
    for red, c in ((0.0, 1.0), (0.05, 0.7)):
        y = yield_fraction(N5, areas, red, core_area_mm2=2.0, repairable_frac=c)
        assert bool(jnp.all(jnp.diff(y) < 0)), (red, c)
    reds = jnp.linspace(0.0, 0.2, 21)
    y = jax.vmap(lambda r: yield_fraction(N5, 800.0, r, core_area_mm2=3.0, repairable_frac=0.6))(reds)
    assert bool(jnp.all(jnp.diff(y) >= 0)) and bool(jnp.all(jnp.diff(y[:5]) > 0))
    # saturates at the yield of the unrepairable 40 %: (1 + 0.4·A·D0/α)^-α
    assert float(y[-1]) == pytest.approx((1 + 0.4 * 8.0 * N5.defect_density_per_cm2 / 3) ** -3, rel=1e-4)
    g_area, g_red = jax.grad(
        lambda a, r: yield_fraction(N5, a, r, core_area_mm2=3.0, repairable_frac=0.6), argnums=(0, 1)
    )(800.0, 0.05)
    assert float(g_area) < 0 < float(g_red)


def test_wafer_scale_yield_needs_spare_cores() -> None:
    # Cerebras (Hot Chips 2019): ~1-1.5 % spare cores make a full wafer work; without them none does.
    wse = {"core_area_mm2": 46225.0 * 0.9 / 850_000}
    assert float(yield_fraction(N7, 46225.0)) < 1e-3
    assert float(yield_fraction(N7, 46225.0, 0.015, **wse)) > 0.999
    # ... unless part of the wafer cannot be repaired: 1 % unrepairable area costs a third of wafers.
    assert 0.5 < float(yield_fraction(N7, 46225.0, 0.015, repairable_frac=0.99, **wse)) < 0.8


def test_wafer_die_grid() -> None:
    nx, ny = wafer_die_grid(N7, 215.0 / 12, 215.0 / 7)  # the WSE-2's 12 x 7 dies
    assert (int(nx), int(ny)) == (12, 7)
    nx, ny = wafer_die_grid(N7, 26.0, 33.0)  # full reticle fields: 8 x 6
    assert int(nx * ny) == 48
    assert N7.reticle_limit_mm2 == 26.0 * 33.0


# ----------------------------------------------------------------------------------------- nodes


def test_nodes_are_ordered_and_hbm_is_swappable() -> None:
    n7, n5, n3 = (NODES[k] for k in ("7nm", "5nm", "3nm"))
    assert n7.flops_per_mm2_bf16 < n5.flops_per_mm2_bf16 < n3.flops_per_mm2_bf16
    assert n7.pj_per_flop_bf16 > n5.pj_per_flop_bf16 > n3.pj_per_flop_bf16
    assert n7.sram_mb_per_mm2 < n5.sram_mb_per_mm2 == n3.sram_mb_per_mm2  # N3E bit cell = N5
    assert n7.hbm_stack_bandwidth_Bps < n5.hbm_stack_bandwidth_Bps < n3.hbm_stack_bandwidth_Bps
    tpu = with_hbm(n7, "hbm2")
    assert 4 * tpu.hbm_stack_bandwidth_Bps == pytest.approx(1.2e12, rel=0.03)  # TPU v4: 4 x HBM2
    assert tpu.flops_per_mm2_bf16 == n7.flops_per_mm2_bf16
    for gen in HBM_GENERATIONS.values():
        assert 3.0 <= gen.pj_per_byte / 8 <= 4.0 and 9.0 <= gen.shoreline_mm <= 12.0  # pJ/bit, mm
    assert np.isfinite([getattr(n, f.name) for n in NODES.values() for f in dataclasses.fields(n)[1:]]).all()
