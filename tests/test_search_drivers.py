"""Search drivers against independent references: brute-force loops, O(n²) dominance, fine grids.

The mapping problem is llama3-8B on 64 H100s (global batch 256, sequence 4096) over tp × pp × dp ×
micro-batch × recompute with tp·pp·dp = 64: 108 valid plans, some over the 80 GB of HBM.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import multiprocessing
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest

from costmodels.errors import ConfigError
from costmodels.parallel import Plan
from costmodels.training import TrainingJob, training_step
from dse.hardware import load_hardware
from dse.models import load_model
from search import Knob, gradient_descent, grid_search, open_storage, optuna_search, space_size

DEVICES, GLOBAL_BATCH, SEQ_LEN = 64, 256, 4096
SPACE = {
    "tp": [1, 2, 4, 8],
    "pp": [1, 2, 4],
    "dp": [d for d in range(1, DEVICES + 1) if DEVICES % d == 0],
    "microbatch": [1, 2, 4],
    "recompute": [0, 1, 2],
}
GiB = 2.0**30


class Mapping:
    """The test problem: model, hardware, a scalar model call (``one``) and the batched cost function
    the grid uses (``cost``), which records its batch sizes and how often it was traced."""

    def __init__(self) -> None:
        self.spec = load_model("llama3_8b")
        self.job = TrainingJob(self.spec, SEQ_LEN)
        self.hw, self.table = load_hardware("h100_sxm"), self.job.table()
        self.one = jax.jit(lambda p: training_step(self.hw, self.job, p, self.table))
        self.sizes: list[int] = []
        self.traces: list[int] = []

    @functools.cached_property
    def _batched(self):
        @jax.jit
        def metrics(cols):
            self.traces.append(len(cols["tp"]))  # runs only while tracing
            b = jax.vmap(lambda p: training_step(self.hw, self.job, p, self.table))(Plan(**cols))
            return {"objective": b.step_time_s, "step_time_s": b.step_time_s,
                    "memory_gib": b.memory.total_bytes / GiB, "feasible": b.feasible}  # fmt: skip

        return metrics

    @staticmethod
    def plan(**degrees: float) -> Plan:
        """One plan of float leaves (so the scalar model compiles once)."""
        return Plan(**{k: float(v) for k, v in degrees.items()}, global_batch=float(GLOBAL_BATCH))

    def cost(self, points):
        n = len(points["tp"])
        self.sizes.append(n)
        cols = {f.name: np.full(n, f.default, dtype=np.float32) for f in dataclasses.fields(Plan)}
        cols |= {k: np.asarray(v, np.float32) for k, v in points.items()}
        cols["global_batch"] = np.full(n, GLOBAL_BATCH, np.float32)
        return self._batched(cols)


def valid(c: dict[str, np.ndarray]) -> np.ndarray:
    """tp·pp·dp = devices, pp divides the layers, dp·micro-batch divides the global batch."""
    return (
        (c["tp"] * c["pp"] * c["dp"] == DEVICES)
        & (32 % c["pp"] == 0)
        & (GLOBAL_BATCH % (c["dp"] * c["microbatch"]) == 0)
    )


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return Mapping()


@pytest.fixture(scope="module")
def brute(mapping: Mapping) -> list[tuple[dict, float, float, bool]]:
    """Every valid plan scored one at a time (a plain loop over the scalar model, no vmap, no
    chunks, no masks): (point, step time, GiB, feasible)."""
    rows = []
    for tp, pp, dp, mb, rc in itertools.product(*SPACE.values()):
        if tp * pp * dp != DEVICES or 32 % pp or GLOBAL_BATCH % (dp * mb):
            continue
        b = mapping.one(mapping.plan(tp=tp, pp=pp, dp=dp, microbatch=mb, recompute=rc))
        point = {"tp": tp, "pp": pp, "dp": dp, "microbatch": mb, "recompute": rc}
        rows.append((point, float(b.step_time_s), float(b.memory.total_bytes) / GiB, bool(b.feasible)))
    return rows


@pytest.fixture(scope="module")
def grid(mapping: Mapping):
    """The grid in chunks of 64: one full chunk and one of 44 padded to 64."""
    result = grid_search(SPACE, mapping.cost, constraint=valid, top_k=5, chunk_size=64)
    result.extras["calls"] = (list(mapping.sizes), list(mapping.traces))
    return result


# --------------------------------------------------------------------------------------------
# grid


def test_grid_best_equals_brute_force(grid, brute):
    feasible = [r for r in brute if r[3]]
    point, time_s, _, _ = min(feasible, key=lambda r: r[1])
    assert grid.evaluations == len(brute) == 108 and space_size(SPACE) == 4 * 3 * 7 * 3 * 3
    assert grid.best == {k: float(v) for k, v in point.items()}
    assert grid.metrics["objective"] == pytest.approx(time_s, rel=1e-6)
    assert grid.extras["n_feasible"] == len(feasible) < len(brute)  # the memory limit bites


def test_grid_infeasible_points_masked(grid, brute):
    by_point = {tuple(r[0].values()): r for r in brute}
    for i in range(grid.evaluations):
        key = tuple(int(grid.table[k][i]) for k in SPACE)
        _, time_s, mem, ok = by_point[key]
        assert bool(grid.table["feasible"][i]) == ok
        assert grid.table["objective"][i] == (pytest.approx(time_s, rel=1e-6) if ok else math.inf)
        assert grid.table["memory_gib"][i] == pytest.approx(mem, rel=1e-6)


def test_grid_pareto_equals_quadratic_dominance(grid):
    t, m, ok = grid.table["step_time_s"], grid.table["memory_gib"], grid.table["feasible"]
    idx = np.flatnonzero(ok)
    front = set()
    for i in idx:
        dominated = any(
            (t[j] <= t[i] and m[j] <= m[i] and (t[j] < t[i] or m[j] < m[i]))
            or (t[j] == t[i] and m[j] == m[i] and j < i)
            for j in idx
        )
        if not dominated:
            front.add(int(i))
    assert set(grid.pareto) == front and len(front) >= 2
    assert list(t[grid.pareto]) == sorted(t[grid.pareto])


def test_grid_top_k_sorted(grid, brute):
    top = grid.extras["top"]
    expected = sorted(r[1] for r in brute if r[3])[:5]
    assert [r["objective"] for r in top] == pytest.approx(expected, rel=1e-6)
    assert all(r["feasible"] for r in top) and top[0]["objective"] == grid.metrics["objective"]


def test_grid_chunks_pad_and_compile_once(grid):
    assert grid.extras["calls"] == ([64, 64], [64])  # 108 points: 64 + 44 padded; traced once
    assert len(grid.table["objective"]) == 108


def test_grid_errors_name_the_cause(mapping):
    with pytest.raises(ConfigError, match="no point satisfies the constraints"):
        grid_search(SPACE, mapping.cost, constraint=lambda c: c["tp"] * c["pp"] * c["dp"] == 1000)

    def over_capacity(points):  # as if HBM were 1 GiB: every plan infeasible
        out = dict(mapping.cost(points))
        return out | {"feasible": np.asarray(out["memory_gib"]) <= 1.0}

    with pytest.raises(ConfigError, match=r"all 108 evaluated points are infeasible: memory: the smallest"):
        grid_search(
            SPACE,
            over_capacity,
            constraint=valid,
            chunk_size=64,
            infeasible_reason=lambda m: f"memory: the smallest footprint is {m['memory_gib'].min():.1f} GiB",
        )


# --------------------------------------------------------------------------------------------
# gradient descent

AREA = {"hbm_area": Knob(0.05, 0.95, group="area"), "compute_area": Knob(0.05, 0.95, group="area")}


def _area_step_time(mapping: Mapping):
    """Step time of one plan when a fixed die area is split between HBM interface (bandwidth up to
    10 TB/s) and tensor cores (up to 2 PFLOP/s), both linear in their area fraction."""
    plan = Plan(tp=2, pp=1, dp=32, microbatch=1, recompute=1, global_batch=GLOBAL_BATCH)

    def loss(x):
        hw = dataclasses.replace(
            mapping.hw, hbm_bandwidth_Bps=1e13 * x["hbm_area"], peak_flops_bf16=2e15 * x["compute_area"]
        )
        return training_step(hw, mapping.job, plan, mapping.table).step_time_s

    return loss


def test_gd_area_split_reaches_fine_grid_optimum(mapping):
    loss = _area_step_time(mapping)
    fractions = np.linspace(0.05, 0.95, 9001)
    fine = jax.jit(jax.vmap(lambda a: loss({"hbm_area": a, "compute_area": 1.0 - a})))(jnp.asarray(fractions))
    reference = float(np.min(fine))
    result = gradient_descent(loss, AREA, steps=200, restarts=4, seed=0)
    assert result.metrics["objective"] <= reference * 1.01
    assert result.best["hbm_area"] + result.best["compute_area"] == pytest.approx(1.0, abs=1e-6)
    assert abs(result.best["hbm_area"] - fractions[np.argmin(fine)]) < 0.02


def test_gd_integer_rounding_and_neighbourhood_find_brute_force_optimum():
    centres, weights = np.array([3.4, 6.6, 12.45]), np.array([1.0, 2.0, 0.5])
    knobs = {"a": Knob(0, 10, integer=True), "b": Knob(0, 10, integer=True), "c": Knob(1, 20, integer=True)}

    def loss(x):
        v = jnp.stack([x["a"], x["b"], x["c"]])
        return jnp.sum(weights * (v - centres) ** 2) + 0.3 * jnp.abs(x["a"] - 4.0)

    brute = min(
        itertools.product(range(0, 11), range(0, 11), range(1, 21)),
        key=lambda p: float(loss(dict(zip("abc", map(float, p), strict=True)))),
    )
    seen = []
    result = gradient_descent(loss, knobs, steps=150, restarts=3, rescore=lambda p: seen.append(p) or loss(p))
    assert tuple(result.best[k] for k in "abc") == brute
    assert result.metrics["objective"] == pytest.approx(float(loss(result.best)), rel=1e-6)
    assert seen and all(float(v).is_integer() for p in seen for v in p.values())
    assert result.extras["rescored"] == len(seen) <= 3 * 2**3


def test_gd_bounds_log_knobs_seeding_and_trajectory():
    knobs = {
        "rate": Knob(1.0, 1e4, log=True),  # optimum 10**2.3 inside the range
        "size": Knob(0.0, 1.0),  # optimum beyond the upper bound: reached exactly by projection
        "f1": Knob(0.1, 0.6, group="g"),  # wants 0.7: held at its bound, the group sums to 1
        "f2": Knob(0.1, 0.9, group="g"),
    }

    def loss(x):
        return (jnp.log10(x["rate"]) - 2.3) ** 2 + (x["size"] - 1.5) ** 2 + (x["f1"] - 0.7) ** 2

    one = gradient_descent(loss, knobs, steps=200, restarts=3, seed=7)
    again = gradient_descent(loss, knobs, steps=200, restarts=3, seed=7)
    other = gradient_descent(loss, knobs, steps=200, restarts=3, seed=8)
    assert one.best == again.best and one.trajectory == again.trajectory
    assert one.trajectory[0] != other.trajectory[0]
    assert one.best["rate"] == pytest.approx(10**2.3, rel=1e-2)
    assert one.best["size"] == 1.0 and one.best["f1"] == pytest.approx(0.6, abs=1e-6)
    assert one.best["f1"] + one.best["f2"] == pytest.approx(1.0, abs=1e-6)
    assert len(one.trajectory) == 3 * 201 and set(one.trajectory[0]) == {"restart", "step", "loss", *knobs}
    losses = [r["loss"] for r in one.trajectory if r["restart"] == 0]
    assert losses[-1] < losses[0]


def test_gd_rejects_bad_knobs():
    with pytest.raises(ConfigError, match="low < high"):
        Knob(1.0, 1.0)
    with pytest.raises(ConfigError, match="simplex group 'g'"):
        gradient_descent(lambda x: x["a"], {"a": Knob(0.6, 0.9, group="g"), "b": Knob(0.6, 0.9, group="g")})


# --------------------------------------------------------------------------------------------
# optuna


def test_optuna_mapping_within_5_percent_of_grid(mapping, grid):
    """dp is derived (dp = devices / (tp·pp)), the way a mapping space is best handed to TPE: an
    equality constraint left to the sampler wastes most trials on invalid points."""

    def evaluate(x):
        dp = DEVICES / (x["tp"] * x["pp"])
        b = mapping.one(mapping.plan(**x, dp=dp))
        t = float(b.step_time_s)
        return {"objective": t, "step_time_s": t, "memory_gib": float(b.memory.total_bytes) / GiB,
                "feasible": bool(b.feasible)}  # fmt: skip

    space = {k: v for k, v in SPACE.items() if k != "dp"}
    result = optuna_search(space, evaluate, n_trials=200, seed=0)
    assert result.evaluations == 200 and result.extras["sampler"] == "TPESampler"
    assert result.metrics["objective"] <= 1.05 * grid.metrics["objective"]
    assert result.metrics["feasible"] and result.pareto


def _constrained(x):
    """Minimum of (x−0.2)² + (y−0.1)² subject to x + y ≥ 1 (a user constraint) and y ≤ 0.8 (the
    evaluation's own feasibility): the unconstrained optimum is infeasible; the answer is (0.55, 0.45)."""
    return {"objective": (x["x"] - 0.2) ** 2 + (x["y"] - 0.1) ** 2, "feasible": x["y"] <= 0.8}


def test_optuna_never_returns_an_infeasible_best():
    space = {"x": Knob(0.0, 1.0), "y": Knob(0.0, 1.0)}
    result = optuna_search(
        space, _constrained, n_trials=120, seed=1, constraints=lambda d: [1 - d["x"] - d["y"]]
    )
    t = result.table
    ok = (t["x"] + t["y"] >= 1) & (t["y"] <= 0.8)
    np.testing.assert_array_equal(t["feasible"], ok)
    assert (~ok).any() and np.all(np.isinf(t["objective"][~ok]))
    assert result.best["x"] + result.best["y"] >= 1 and result.best["y"] <= 0.8
    assert result.metrics["objective"] == pytest.approx(np.min(np.where(ok, t["objective"], np.inf)))
    assert result.metrics["objective"] < 0.25 + 0.01  # optimum 2·0.35² = 0.245


def test_optuna_multi_objective_front_is_non_dominated():
    space = {"x": Knob(0.0, 1.0)}
    evaluate = lambda p: {"a": p["x"], "b": (1 - p["x"]) ** 2 + 0.1}  # noqa: E731
    result = optuna_search(space, evaluate, objectives=("a", "b"), n_trials=60, seed=0)
    a, b = result.table["a"], result.table["b"]
    for i in result.pareto:
        assert not np.any((a <= a[i]) & (b <= b[i]) & ((a < a[i]) | (b < b[i])))
    assert result.pareto_axes == ("a", "b") and result.extras["sampler"] == "NSGAIISampler"


def _quadratic(p):
    time.sleep(0.02)  # long enough that the two workers overlap
    return {"objective": (p["x"] - 0.3) ** 2 + (p["y"] + 0.2) ** 2, "pid": float(os.getpid())}


def _worker(storage: str, seed: int, barrier) -> None:
    barrier.wait()
    space = {"x": Knob(-1.0, 1.0), "y": Knob(-1.0, 1.0)}
    optuna_search(space, _quadratic, n_trials=40, seed=seed, storage=storage, study_name="shared")


def _two_workers(storage: str) -> list[optuna.trial.FrozenTrial]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(storage, seed, barrier)) for seed in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    return optuna.load_study(study_name="shared", storage=open_storage(storage)).get_trials()


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_optuna_two_processes_share_one_study(tmp_path, kind):
    if kind == "journal":
        storage = str(tmp_path / "study.log")
    else:
        storage = f"sqlite:///{tmp_path / 'study.db'}"
        open_storage(storage)  # create the schema once in the parent (DESIGN.md)
    trials = _two_workers(storage)
    assert len(trials) == 40 and sorted(t.number for t in trials) == list(range(40))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["metrics"]["pid"] for t in trials}) == 2  # both workers ran trials


def test_optuna_resumed_study_runs_only_missing_trials(tmp_path):
    storage, space = str(tmp_path / "study.journal"), {"x": Knob(-1.0, 1.0), "y": (-0.2, 0.0, 0.2)}
    first = optuna_search(space, _quadratic, n_trials=5, storage=storage)
    second = optuna_search(space, _quadratic, n_trials=8, storage=storage, seed=1)
    assert (first.extras["trials_run"], second.extras["trials_run"], second.evaluations) == (5, 3, 8)
    assert optuna_search(space, _quadratic, n_trials=8, storage=storage).extras["trials_run"] == 0


@pytest.mark.parametrize("url", ["/no/such/dir/study.log", "sqlite:////no/such/dir/study.db", "sqlite:/bad",
                                 "postgresql://nohost:1/db", "study.txt"])  # fmt: skip
def test_optuna_unopenable_storage_is_a_config_error(url):
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="Optuna storage"):
        optuna_search({"x": (0.0, 1.0)}, lambda p: {"objective": p["x"]}, n_trials=1, storage=url)
    assert time.monotonic() - t0 < 15
