"""The wafer design space and the wafer_arch experiment."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from report_helpers import E_NOTATION

from costmodels.errors import ConfigError
from costmodels.parallel import make_plan
from costmodels.technology import NODES, flops_per_mm2
from costmodels.training import TIME_FIELDS, TrainingJob, training_step
from costmodels.wafer import (
    FIELD_RANGES,
    WaferDesign,
    WaferSystem,
    _figures,
    capped_clock_hz,
    constraints,
    wafer_hardware,
)
from dse.hardware import load_hardware
from dse.models import load_model
from dse.wafer_search import REFERENCES, knobs_of, step_breakdown
from search.gd import gradient_descent
from search.space import Knob
from search.wafer import MAPPING_GRID, wafer_problem

A100 = load_hardware("a100_80gb_sxm")
SYSTEM = WaferSystem(node="5nm", wafers=1, power_cap_w=25_000.0, reference=A100)
DESIGN = WaferDesign(
    compute_frac=0.5, sram_frac=0.35, io_frac=0.15, clock_hz=1.0e9, hbm_stacks=4.0, dies_x=8.0, dies_y=8.0
)


def test_design_maps_to_die_hardware() -> None:
    """8 × 8 dies of (215 mm)² / 64 = 722 mm²; 4 HBM3 stacks of 16 GiB; the wafer is the scale-up mesh."""
    hw = wafer_hardware(SYSTEM, DESIGN)
    assert hw.topology == "mesh2d" and float(hw.scale_up_domain_size) == 64.0
    assert float(hw.hbm_capacity_bytes) >= 4 * 16 * 2**30  # HBM plus the SRAM
    assert all(float(v) <= 0 for v in constraints(SYSTEM, DESIGN).values())
    assert float(hw.power_w) * 64 <= 25_000.0 * 1.01


def test_power_cap_throttles_the_clock_to_the_cap() -> None:
    """The capped clock f* is where the wafer's whole power (dynamic ∝ f·V², leakage ∝ V, HBM and links
    flat) meets the cap: checked against a brute-force scan of 20,001 clocks, and every figure of the
    die is the die's at f* (peak, SRAM bandwidth, power)."""
    hot = WaferDesign(compute_frac=0.8, sram_frac=0.1, io_frac=0.1, clock_hz=2.0e9, hbm_stacks=4.0)
    system = WaferSystem(power_cap_w=20_000.0, reference=A100)
    f_cap = float(capped_clock_hz(system, hot))
    clocks = np.linspace(0.3e9, 2.0e9, 20_001)
    power = np.array(jax.vmap(lambda f: 64 * _figures(system, replace(hot, clock_hz=f)).power_w)(clocks))
    brute = clocks[np.nonzero(power <= 20_000.0)[0].max()]
    assert f_cap == pytest.approx(brute, abs=2 * (clocks[1] - clocks[0]))
    hw, at = wafer_hardware(system, hot), _figures(system, replace(hot, clock_hz=f_cap))
    assert 64 * float(hw.power_w) == pytest.approx(20_000.0, rel=1e-3)
    assert float(hw.peak_flops_bf16) == pytest.approx(float(at.peak_flops_bf16), rel=1e-5)
    assert float(hw.sram_bandwidth_Bps) == pytest.approx(float(at.sram_bandwidth_Bps), rel=1e-5)
    # a cap above the design's power leaves the clock alone
    free = WaferSystem(power_cap_w=1e6, reference=A100)
    assert float(capped_clock_hz(free, hot)) == pytest.approx(2.0e9, rel=1e-3)


def test_power_cap_below_the_static_power_is_a_violation() -> None:
    """64 dies x 6 HBM3 stacks x 18.6 W = 7.2 kW before any compute: a 5 kW cap cannot be met."""
    heavy = WaferDesign(compute_frac=0.5, sram_frac=0.3, io_frac=0.1, clock_hz=1e9, hbm_stacks=6.0)
    system = WaferSystem(power_cap_w=5_000.0, reference=A100)
    assert 64 * 6 * NODES["5nm"].hbm_stack_power_w > 7_000.0
    assert float(constraints(system, heavy)["power_cap_w"]) > 2_000.0


def test_gradient_through_the_capped_clock_matches_finite_differences() -> None:
    """d peak / d compute_frac under a binding cap: more compute area draws more power, so the capped
    clock falls; the implicit derivative must agree with a central difference."""
    system = WaferSystem(power_cap_w=15_000.0, reference=A100)

    def peak(c: jax.Array) -> jax.Array:
        return wafer_hardware(system, replace(DESIGN, compute_frac=c, clock_hz=1.6e9)).peak_flops_bf16

    g = float(jax.grad(peak)(jnp.asarray(0.5)))
    h = 1e-2
    fd = (float(peak(jnp.asarray(0.5 + h))) - float(peak(jnp.asarray(0.5 - h)))) / (2 * h)
    assert float(capped_clock_hz(system, replace(DESIGN, clock_hz=1.6e9))) < 1.5e9  # the cap binds
    assert g == pytest.approx(fd, rel=0.02)


def test_core_width_sets_flops_per_area_not_power() -> None:
    """WSE-2-like 4-lane cores against the 5nm node's 2,048-lane SM on the same dies: the peak falls by
    flops_per_mm2(4) / flops_per_mm2(2048); power (∝ switched area) and everything else stay."""
    narrow = wafer_hardware(SYSTEM, replace(DESIGN, lanes_per_core=4.0))
    wide = wafer_hardware(SYSTEM, DESIGN)
    n5 = NODES["5nm"]
    ratio = float(flops_per_mm2(n5, 4.0) / flops_per_mm2(n5, n5.reference_lanes_per_core))
    assert float(narrow.peak_flops_bf16 / wide.peak_flops_bf16) == pytest.approx(ratio, rel=1e-5)
    assert float(narrow.power_w) == pytest.approx(float(wide.power_w), rel=1e-6)
    assert float(narrow.hbm_bandwidth_Bps) == pytest.approx(float(wide.hbm_bandwidth_Bps), rel=1e-6)
    assert 0.4 < ratio < 0.6


def test_hardware_is_differentiable_in_the_knobs() -> None:
    def peak(c: jax.Array) -> jax.Array:
        return wafer_hardware(
            SYSTEM, WaferDesign(compute_frac=c, sram_frac=0.35, io_frac=0.15)
        ).peak_flops_bf16

    assert float(jax.grad(peak)(jnp.asarray(0.5))) > 0


def test_gradient_descent_matches_a_fine_grid_on_a_reduced_problem() -> None:
    """Energy per token of Llama-3-8B training on one wafer over the clock alone (the rest fixed): an
    interior optimum (leakage per token falls with the clock, switching energy grows with V²). Gradient
    descent, mapping chosen inside, lands within 2 % of the best of 161 clocks scored exactly."""
    job = TrainingJob(load_model("llama3_8b"), 2048, "bf16")
    fixed = {
        "compute_frac": 0.5,
        "sram_frac": 0.35,
        "io_frac": 0.15,
        "hbm_stacks": 4.0,
        "dies_x": 8.0,
        "dies_y": 8.0,
    }
    knobs = {"clock_hz": Knob(low=4e8, high=2.4e9, log=True)}
    problem = wafer_problem(SYSTEM, job, 256, knobs, fixed=fixed, objective="joules_per_token")
    grid = [problem.evaluate({"clock_hz": f})["objective"] for f in np.geomspace(4e8, 2.4e9, 161)]
    result = gradient_descent(problem.loss, knobs, steps=60, learning_rate=0.1, restarts=2, seed=0)
    found = problem.evaluate(result.best)["objective"]
    assert np.isfinite(min(grid))
    assert found <= min(grid) * 1.02


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.search", "+experiment=wafer_arch", "tracking=none", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_wafer_arch_runs_and_compares(tmp_path: Path) -> None:
    proc = run(
        "search.steps=8",
        "search.restarts=1",
        "wafer.wafers=1",
        "model=llama3_8b",
        "wafer.lanes_per_core=16",
        "wafer.external_memory_bytes=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "lanes_per_core=16" in proc.stdout  # held fixed, reported with the design
    # without external memory to stream from, 8B training states (~18 B/param) exceed one SRAM-only
    # wafer: the row says why
    assert "wse_style_sram_only: infeasible, no mapping fits memory" in proc.stdout
    assert "deepflow_20_die_4_hbm: tp=" in proc.stdout  # each feasible row's mapping
    assert "step breakdown: " in proc.stdout and "tokens per" not in proc.stdout
    # why the design wins, every figure in human units
    assert "\nwhy: compute is " in proc.stdout and " per die" in proc.stdout
    assert not E_NOTATION.search(proc.stdout), E_NOTATION.findall(proc.stdout)
    # the output directory holds the run's artifacts, pictures included, with tracking off too
    files = next(line for line in proc.stdout.splitlines() if line.startswith("files: "))
    assert all(f in files for f in ("result.json", "area_split.png", "breakdown.png", "comparison.yaml"))
    for row in (
        "gradient_descent",
        "wse_style_sram_only",
        "deepflow_20_die_4_hbm",
        "h100_sxm_cluster_equal_power",
    ):
        assert row in proc.stdout


def test_sram_only_wafer_trains_by_weight_streaming_when_external_memory_exists() -> None:
    """The WSE-style reference (0.67 GiB of SRAM per die) cannot hold Llama-3-8B's training state
    (~144 GB) on one wafer; with 1 TB of external memory behind a 150 GB/s link it trains by weight
    streaming, and its step is at least the stream of every micro-batch: m · 8.03e9 params · 8 B /
    150 GB/s (one broadcast stream per wafer, weights in twice, fp32 gradients out)."""
    job = TrainingJob(load_model("llama3_8b"), 2048, "bf16")
    design = REFERENCES["wse_style_sram_only"]
    bare = WaferSystem(node="5nm", wafers=1, power_cap_w=25_000.0, reference=A100)
    assert not wafer_problem(bare, job, 256, {}).evaluate(design)["feasible"]
    streamed = replace(bare, external_memory_bytes=1e12, external_bandwidth_Bps=150e9)
    best = wafer_problem(streamed, job, 256, {}).evaluate(design)
    assert best["feasible"] and best["mapping"]["weight_streaming"] == 1
    m = best["global_batch"] / (best["mapping"]["dp"] * best["mapping"]["microbatch"])
    params = 8_030_261_248
    assert best["step_time_s"] >= m * params * 8.0 / 150e9 * (1 - 1e-4)


def test_relaxed_loss_ignores_streaming_mappings_the_external_memory_cannot_hold() -> None:
    """A fast link to a 1 GB external memory cannot hold Llama-3-8B's ~144 GB training state, so every
    weight-streaming mapping is infeasible and the gradient-descent loss of a design must equal the
    loss over the grid without weight streaming."""
    job = TrainingJob(load_model("llama3_8b"), 2048, "bf16")
    design = {k: jnp.asarray(v) for k, v in REFERENCES["wse_style_sram_only"].items()}
    bare = WaferSystem(
        node="5nm",
        wafers=1,
        power_cap_w=25_000.0,
        reference=A100,
        external_memory_bytes=1e9,
        external_bandwidth_Bps=150e9,
    )
    no_streaming = {**MAPPING_GRID, "weight_streaming": (0,)}
    with_rows = wafer_problem(bare, job, 256, {}).loss(design)
    without = wafer_problem(bare, job, 256, {}, grid=no_streaming).loss(design)
    assert float(with_rows) == pytest.approx(float(without), rel=1e-6)


def test_step_breakdown_parts_sum_to_the_step_time() -> None:
    """The printed and plotted breakdown holds only times, they add up to the step, and each is the
    training-step model's own figure for the chosen design and mapping (``training_step`` on one
    plan, apart from the batched scorer that picked it)."""
    job = TrainingJob(load_model("llama3_8b"), 2048, "bf16")
    design = REFERENCES["deepflow_20_die_4_hbm"]
    best = wafer_problem(SYSTEM, job, 256, {}).evaluate(design)
    parts = step_breakdown(best)
    step = parts.pop("step_time_s")
    assert list(parts) == list(TIME_FIELDS)
    assert sum(parts.values()) == pytest.approx(step, rel=1e-5)
    assert step == pytest.approx(best["step_time_s"], rel=1e-5)  # the evaluated mapping's step
    lanes = {"lanes_per_core": SYSTEM.tech.reference_lanes_per_core}
    hw = wafer_hardware(SYSTEM, WaferDesign(**{k: jnp.asarray(v) for k, v in {**lanes, **design}.items()}))
    alone = training_step(hw, job, make_plan(**best["mapping"], global_batch=best["global_batch"]))
    for k in TIME_FIELDS:
        assert parts[k] == pytest.approx(float(getattr(alone, k)), rel=1e-5, abs=1e-9), k


def test_figures_of_a_design_are_its_die_and_its_constraints() -> None:
    """``WaferProblem.figures``: the capped clock and the die's Hardware as ``wafer_hardware`` gives
    them, the constraints as ``constraints`` gives them, and the uncapped power: at 3 GHz the wafer
    would draw more than its cap, and the capped clock brings its 64 dies under it."""
    job = TrainingJob(load_model("llama3_8b"), 2048, "bf16")
    hot = {"compute_frac": 0.8, "sram_frac": 0.15, "io_frac": 0.05, "clock_hz": 3.0e9, "hbm_stacks": 2.0}
    hot |= {"dies_x": 8.0, "dies_y": 8.0}
    figures = wafer_problem(SYSTEM, job, 256, {}).figures(hot)
    design = WaferDesign(
        **{k: jnp.asarray(v) for k, v in hot.items()}, lanes_per_core=SYSTEM.tech.reference_lanes_per_core
    )
    hw = wafer_hardware(SYSTEM, design)
    assert figures["clock_hz"] == pytest.approx(float(capped_clock_hz(SYSTEM, design)), rel=1e-5)
    assert figures["clock_hz"] < 0.9 * hot["clock_hz"]  # the cap binds
    assert figures["hardware"]["power_w"] == pytest.approx(float(hw.power_w), rel=1e-5)
    assert figures["hardware"]["peak_flops_bf16"] == pytest.approx(float(hw.peak_flops_bf16), rel=1e-5)
    for k, v in constraints(SYSTEM, design).items():
        assert figures["constraints"][k] == pytest.approx(float(v), rel=1e-4, abs=0.1), k  # W at 25 kW: f32
    assert figures["uncapped_power_w"] > SYSTEM.power_cap_w
    assert 64 * figures["hardware"]["power_w"] <= SYSTEM.power_cap_w * (1 + 1e-4)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(FIELD_RANGES)),
    side=st.sampled_from(["low", "high"]),
    outside=st.floats(min_value=1e-3, max_value=1e3),
)
def test_a_knob_bound_no_design_can_take_is_one_line_naming_it(name: str, side: str, outside: float) -> None:
    """A knob range reaching past what its field can physically be (a negative HBM stack count, a
    fraction above 1, fewer than one die, a clock outside the capped clock's bisection bracket,
    which gave "a die has -47.82 GiB" before) is refused naming ``wafer.knobs.<name>.<side>``."""
    low, high, _ = FIELD_RANGES[name]
    if side == "low":
        bounds = {"low": low - outside * max(1.0, abs(low)), "high": min(high, max(low, 1.0) * 2)}
    elif high == np.inf:
        return  # no upper limit to pass
    else:
        bounds = {"low": low + 0.5 * (high - low), "high": high + outside * high}
    cfg = OmegaConf.create({"wafer": {"knobs": {name: bounds}}})
    with pytest.raises(ConfigError, match=rf"^wafer\.knobs\.{name}\.{side} = .* must be "):
        knobs_of(cfg)


def test_knob_bounds_on_the_physical_limits_are_accepted() -> None:
    """The limits themselves are physical: every field's range [min, max] passes (min + 10 standing
    in for an open top)."""
    knobs = {}
    for name, (low, high, _) in FIELD_RANGES.items():
        knobs[name] = {"low": low, "high": high if high < np.inf else low + 10}
    assert set(knobs_of(OmegaConf.create({"wafer": {"knobs": knobs}}))) == set(FIELD_RANGES)


def test_impossible_budgets_name_the_binding_constraint(tmp_path: Path) -> None:
    proc = run("wafer.knobs.compute_frac.low=0.7", "wafer.knobs.sram_frac.low=0.5", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "area fractions cannot sum to 1" in proc.stderr
    proc = run("wafer.power_cap_w=10", cwd=tmp_path)
    assert proc.returncode != 0 and "power_cap_w" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("wafer.lanes_per_core=0", cwd=tmp_path)
    assert proc.returncode != 0 and "wafer.lanes_per_core" in proc.stderr and "Traceback" not in proc.stderr


def test_warnings_name_knobs_on_a_bound_and_a_rounded_batch() -> None:
    """A gradient-descent optimum within 1 % of a bound (here 0.798 of [0.2, 0.8], and exactly the
    lower 6 of [6, 20]) may lie beyond it: one warning names both; 0.5 is inside and not named. A
    mapping that rounds 512 sequences to 513 says so; 512 kept says nothing."""
    from dse.wafer_search import _warnings
    from search.space import Knob

    knobs = {"compute_frac": Knob(0.2, 0.8), "dies_x": Knob(6, 20, integer=True), "io_frac": Knob(0.0, 1.0)}
    values = {"compute_frac": 0.798, "dies_x": 6.0, "io_frac": 0.5}
    (edges, batch) = _warnings(values, knobs, {"global_batch": 513.0}, 512)
    assert "compute_frac = 0.798 (upper)" in edges and "dies_x = 6 (lower)" in edges
    assert "io_frac" not in edges
    assert "rounded from 512 to 513" in batch
    assert _warnings({"io_frac": 0.5}, knobs, {"global_batch": 512.0}, 512) == []
