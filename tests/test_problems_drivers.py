"""What is explored vs how: one :class:`Problem` type, one driver registry (``search.drivers``), the
``problem=`` and ``search=`` groups chosen apart. Every driver is checked on a problem whose answer
is known (a quadratic bowl; brute force on a discrete space), and a driver a problem cannot feed is
one line naming those that can."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodels.errors import ConfigError
from costmodels.training import TrainingJob
from dse.hardware import load_hardware
from dse.models import load_model
from search import drivers
from search.base import Problem
from search.problems import training_mapping_problem
from search.space import Knob, sample

OPTIONS = {
    "grid": {"top_k": 3},
    "random": {"n_samples": 400},
    "optuna": {"n_trials": 80, "sampler": "tpe", "objective": "objective"},
    "gd": {"steps": 80, "learning_rate": 0.1, "restarts": 2},
}


def _bowl_metrics(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    value = (x - 0.3) ** 2 + (y - 0.6) ** 2
    return {"objective": value, "feasible": np.ones_like(value, bool), "value": value}


def bowl(discrete: bool = False) -> Problem:
    """(x − 0.3)² + (y − 0.6)² on [0, 1]²: the minimum is 0 at (0.3, 0.6); on the grid of tenths too."""
    if discrete:
        tenths = tuple(np.round(np.linspace(0, 1, 11), 1))
        return Problem({"x": tenths, "y": tenths}, lambda p: _bowl_metrics(p["x"], p["y"]))
    return Problem(
        {"x": Knob(0.0, 1.0), "y": Knob(0.0, 1.0)},
        lambda p: _bowl_metrics(np.asarray(p["x"]), np.asarray(p["y"])),
        loss=lambda v: (v["x"] - 0.3) ** 2 + (v["y"] - 0.6) ** 2,
    )


@pytest.mark.parametrize("name", ["random", "optuna", "gd"])
def test_every_continuous_driver_finds_the_bottom_of_the_bowl(name: str) -> None:
    result = drivers.run(name, bowl(), OPTIONS[name], seed=0)
    assert abs(result.best["x"] - 0.3) < 0.08 and abs(result.best["y"] - 0.6) < 0.08, (name, result.best)


@pytest.mark.parametrize("name", ["grid", "random", "optuna"])
def test_every_discrete_driver_finds_the_grid_point_of_the_minimum(name: str) -> None:
    """121 points: grid scores all, random search draws all 121 (n_samples ≥ the valid points, without
    replacement), Optuna finds (0.3, 0.6) within 80 trials of TPE on this bowl."""
    options = OPTIONS[name] | ({"n_trials": 120} if name == "optuna" else {})
    result = drivers.run(name, bowl(discrete=True), options, seed=0)
    assert (result.best["x"], result.best["y"]) == (0.3, 0.6)
    if name == "random":
        assert result.evaluations == 121


def test_random_search_on_the_mapping_space_equals_grid_search_when_it_draws_every_valid_point() -> None:
    """Llama-3-8B on 8 H100s over a small space: random search with more samples than valid mappings
    scores each valid mapping once, so it finds grid search's best exactly."""
    job = TrainingJob(load_model("llama3_8b"), 2048)
    space = {
        "tp": (1.0, 2.0, 4.0, 8.0),
        "pp": (1.0, 2.0),
        "cp": (1.0,),
        "microbatch": (1.0, 2.0),
        "recompute": (0.0, 2.0),
    }
    problem = training_mapping_problem(load_hardware("h100_sxm"), job, 8, 64, space)
    grid = drivers.run("grid", problem, {})
    rand = drivers.run("random", problem, {"n_samples": 10_000}, seed=3)
    assert rand.evaluations == grid.evaluations and rand.best == grid.best


@pytest.mark.parametrize(
    ("name", "problem", "message"),
    [
        ("grid", bowl(), "enumerates lists of values, and this problem has continuous knobs (x, y)"),
        ("gd", bowl(discrete=True), "follows the gradient of a differentiable loss"),
        ("ilp", bowl(), "does not run on"),
    ],
)
def test_a_driver_the_problem_cannot_feed_is_one_line_naming_those_that_can(
    name: str, problem: Problem, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        drivers.run(name, problem, OPTIONS.get(name, {}), problem_name="problem=bowl")
    assert message in str(err.value) and "use search=" in str(err.value) and "\n" not in str(err.value)


@settings(max_examples=40, deadline=None)
@given(
    lows=st.lists(st.floats(0.0, 0.3), min_size=2, max_size=4),
    width=st.floats(0.2, 0.7),
    integer_high=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_samples_stay_in_their_boxes_and_on_their_simplex(
    lows: list[float], width: float, integer_high: int, seed: int
) -> None:
    """Whatever the bounds: every sampled box value lies in its range, integers are integers, log
    knobs positive, and a simplex group's members lie in their bounds and sum to 1."""
    group = {f"f{i}": Knob(low, low + width + 0.05, group="g") for i, low in enumerate(lows)}
    if sum(k.low for k in group.values()) > 1.0 or sum(k.high for k in group.values()) < 1.0:
        return  # an empty simplex: Knob's own check refuses it (tested in test_search_drivers)
    space = {**group, "n": Knob(0, integer_high + 0.5, integer=True), "rate": Knob(1e-3, 1e3, log=True)}
    space |= {"choice": (1.0, 2.0, 4.0)}
    points = sample(space, 64, np.random.default_rng(seed))
    total = sum(points[name] for name in group)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    for name, knob in group.items():
        assert np.all((points[name] >= knob.low - 1e-6) & (points[name] <= knob.high + 1e-6))
    assert np.all(points["n"] == np.round(points["n"])) and np.all(
        (points["n"] >= 0) & (points["n"] <= integer_high)
    )
    assert np.all((points["rate"] >= 1e-3 * (1 - 1e-6)) & (points["rate"] <= 1e3 * (1 + 1e-6)))
    assert set(np.unique(points["choice"])) <= {1.0, 2.0, 4.0}


def test_optuna_evaluates_a_simplex_group_on_its_simplex() -> None:
    """Optuna draws the members of a group independently; each point it evaluates (and its table) is
    the projection onto the group's simplex, never a point off it."""
    seen = []

    def cost(points: dict) -> dict:
        seen.append(float(points["a"][0] + points["b"][0]))
        return {"objective": np.asarray(points["a"]), "feasible": np.ones(1, bool)}

    problem = Problem({"a": Knob(0.1, 0.8, group="g"), "b": Knob(0.1, 0.8, group="g")}, cost)
    result = drivers.run("optuna", problem, {"n_trials": 15, "objective": "objective"}, seed=0)
    np.testing.assert_allclose(seen, 1.0, atol=1e-5)
    np.testing.assert_allclose(result.table["a"] + result.table["b"], 1.0, atol=1e-5)
    assert result.best["a"] == pytest.approx(0.2, abs=0.1)  # the smallest a allowed: b ≤ 0.8


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.search", *args, "tracking=none", "progress=false"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_any_driver_on_the_wafer_problem_is_an_override(tmp_path: Path) -> None:
    """``+experiment=wafer_arch search=random``: the same report, its design found by random search
    and compared with the same references."""
    proc = run("+experiment=wafer_arch", "search=random", "search.n_samples=12", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("random search over the wafer design (12 evaluations)")
    assert "random_search " in proc.stdout and "deepflow_20_die_4_hbm" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("search=gd",),
            "search=gd follows the gradient of a differentiable loss, and this problem has none",
        ),
        (("+experiment=wafer_arch", "search=grid"), "for problem=wafer use search=random or optuna or gd"),
        (("search=ilp",), "search=ilp does not run on problem=mapping: use search=grid or random or optuna"),
        (
            ("+experiment=auto_shard", "search=optuna"),
            "problem=auto_shard is solved by its own model's solver",
        ),
    ],
)
def test_a_problem_and_a_driver_that_do_not_go_together(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[
        -2000:
    ]
    assert not (tmp_path / "mlruns").exists() and not list(tmp_path.glob("outputs/*/*/result.json"))


# --- the batch evaluation: kernel times once per distinct kernel tuple ---------------------------------

MIXTRAL_SPACE = {"tp": [1, 2, 4, 8], "pp": [1, 2, 4], "cp": [1, 2], "ep": [1, 2, 4], "vpp": [1, 2],
                 "microbatch": [1, 2], "recompute": [0, 1, 2], "zero_stage": [0, 1, 3],
                 "sequence_parallel": [0, 1]}  # fmt: skip


@pytest.mark.parametrize("path", ["grid", "distinct tuples", "points outside the space", "one call"])
def test_the_search_cost_function_is_the_direct_model_point_by_point(path: str, monkeypatch) -> None:
    """The cost function shares kernel times among plans of one kernel tuple, passes the Plan's
    unsearched fields as scalars, pads to size classes and streams chunks; on Mixtral over 64 H100s
    (every valid mapping of a 10,368-point grid, in chunks of 512 so that the last one is padded) each
    metric equals ``jax.vmap(training_step)`` of the same plans, every field a column, evaluated
    whole, to the last bit. It does so on each of its paths: kernel sums over the grid of the space's
    values, over the points' distinct tuples (a grid too large), over the distinct tuples again
    when some points lie outside the space (tp = 8 not in it), and in one call of fewer points than
    a chunk, a program compiled for few calls (``search.xla``)."""
    import itertools
    from dataclasses import fields

    import jax

    from costmodels.parallel import Plan
    from search import problems

    monkeypatch.setattr(problems, "CHUNK", 1 << 14 if path == "one call" else 512)
    if path == "distinct tuples":
        monkeypatch.setattr(problems, "GRID_MOST", 0)
    space = MIXTRAL_SPACE | ({"tp": [1, 2, 4]} if path == "points outside the space" else {})
    hw, job = load_hardware("h100_sxm"), TrainingJob(load_model("mixtral_8x7b"), 4096, "bf16")
    problem = training_mapping_problem(hw, job, 64, 256, space)
    grid = np.array(list(itertools.product(*MIXTRAL_SPACE.values())), dtype=np.float64)
    cols = {k: grid[:, i] for i, k in enumerate(MIXTRAL_SPACE)}
    keep = problem.constraint(cols)
    cols = {k: v[keep] for k, v in cols.items()}
    n = len(cols["tp"])
    assert n % 512 and n > 2 * 512 and 8 in cols["tp"]
    assert (problems._bucket(n, problems.CHUNK) < problems.CHUNK) == (path == "one call")
    got = problem.cost_fn(cols)
    from costmodels.training import training_step

    plan = {f.name: np.full(n, f.default, np.float32) for f in fields(Plan)}
    plan |= {k: v.astype(np.float32) for k, v in cols.items()} | {"global_batch": np.full(n, 256, np.float32)}
    plan["dp"] = np.float32(64) / (plan["tp"] * plan["pp"] * plan["cp"])
    direct = jax.jit(jax.vmap(lambda p: training_step(hw, job, p, job.table())))(Plan(**plan))
    for name in ("step_time_s", "mfu", "compute_s", "tp_comm_s", "ep_comm_s", "bubble_s", "dp_comm_s"):
        assert np.array_equal(got[name], np.asarray(getattr(direct, name))), name
    assert np.array_equal(got["feasible"], np.asarray(direct.feasible))
    assert problem.cost_fn({k: v[:0] for k, v in cols.items()})["step_time_s"].shape == (0,)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(*[st.sampled_from([1.0, 2.0, 4.0, 0.5])] * 3), min_size=1, max_size=60))
def test_unique_rows_is_numpys_unique_of_rows(rows) -> None:
    """_unique_rows gives the distinct rows and each row's index among them, as np.unique(axis=0)."""
    from search.problems import _unique_rows

    a = np.array(rows, dtype=np.float32)
    distinct, inverse = _unique_rows(a)
    assert np.array_equal(distinct[inverse], a)
    assert len(distinct) == len(np.unique(a, axis=0))


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4]), st.sampled_from([0, 1, 2]),
       st.sampled_from([0, 1, 3]), st.sampled_from([1, 2]), st.sampled_from([0.0, 1.0]))  # fmt: skip
def test_kernel_sums_read_only_the_kernel_fields(pp, vpp, recompute, zero, dp, flag) -> None:
    """Plans equal in KERNEL_FIELDS have the same per-op kernel times and sums, whatever their other
    fields: what lets a batch evaluation share them."""
    from costmodels.parallel import make_plan
    from costmodels.training import KERNEL_SUMS, kernel_sums, kernel_times

    hw, job = load_hardware("h100_sxm"), TrainingJob(load_model("mixtral_8x7b"), 4096, "bf16")
    table = job.table()
    base = make_plan(tp=2, cp=2, ep=2, microbatch=2, sequence_parallel=1, global_batch=64)
    other = make_plan(tp=2, cp=2, ep=2, microbatch=2, sequence_parallel=1, global_batch=128, pp=pp, vpp=vpp,
                      dp=dp, recompute=recompute, zero_stage=zero, cp_a2a=flag, weight_streaming=flag,
                      pipeline_edge_layers=flag, tp_overlap=0.5)  # fmt: skip
    for a, b in zip(kernel_times(hw, job, table, base), kernel_times(hw, job, table, other), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    sums, others = kernel_sums(hw, job, table, base), kernel_sums(hw, job, table, other)
    assert tuple(sums) == KERNEL_SUMS and all(float(sums[k]) == float(others[k]) for k in KERNEL_SUMS)
