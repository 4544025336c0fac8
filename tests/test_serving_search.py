"""The serving deployment search (``+experiment=serving``): the goodput-rate search against a brute
force, the pool split, and the experiment end to end (grid and Optuna, result files, MLflow)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.serving import BISECTIONS, max_rate, split

SMALL = [
    "+experiment=serving",
    "serving.requests.count=120",
    "serving.space.tp=[4,8]",
    "serving.space.max_num_seqs=[64]",
    "serving.space.max_num_batched_tokens=[2048]",
    "serving.space.prefill_share=[0.0,0.5]",
    "progress=false",
]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.search", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.parametrize("threshold", [0.013, 0.7, 3.3, 41.0, 1000.0])
def test_max_rate_brackets_the_threshold_as_a_brute_force_does(threshold: float) -> None:
    """An attainment that is 1 up to a threshold rate and 0 past it: the search returns the largest
    probed rate at or below it, within the bracket's 2^-BISECTIONS (a dense brute-force scan of
    rates agrees), and that probe's metrics."""
    probes = []

    def attain(rate: float) -> dict[str, float]:
        probes.append(rate)
        return {"slo_attainment": 1.0 if rate <= threshold else 0.0, "rate": rate}

    rate, metrics = max_rate(attain, 0.25, 0.9)
    brute = max(r for r in np.geomspace(1e-3, 1e4, 20000) if r <= threshold)
    assert rate <= threshold and metrics["rate"] == rate
    assert threshold - rate <= threshold / 2**BISECTIONS + 1e-12
    assert abs(rate - brute) <= threshold / 2**BISECTIONS
    assert len(probes) <= 16 + BISECTIONS


def test_no_rate_above_the_capacity_counts_however_short_the_trace() -> None:
    """A trace short enough to drain within the SLOs as one burst meets them at any rate; a rate
    above the deployment's capacity still never counts (none is run), so the search stops within
    2^-BISECTIONS below the capacity."""
    probes = []

    def attain(rate: float) -> dict[str, float]:
        probes.append(rate)
        return {"slo_attainment": 1.0}

    rate, _ = max_rate(attain, 0.25, 0.9, ceiling=3.3)
    assert 3.3 * (1 - 2.0**-BISECTIONS) <= rate <= 3.3
    assert max(probes) <= 3.3


def test_max_rate_is_zero_when_no_rate_meets_the_goal() -> None:
    assert max_rate(lambda r: {"slo_attainment": 0.5}, 1.0, 0.9) == (0.0, {})


@pytest.mark.parametrize(
    ("gpus", "tp", "share", "expected"),
    [
        (8, 2, 0.0, (0, 4)),
        (8, 2, 0.25, (1, 3)),
        (8, 2, 0.5, (2, 2)),
        (8, 4, 0.25, (1, 1)),
        (8, 8, 0.5, (0, 0)),
    ],
)
def test_the_pool_splits_into_prefill_and_decode_replicas(gpus, tp, share, expected) -> None:
    assert split(gpus, tp, share) == expected


def test_the_serving_experiment_end_to_end(tmp_path: Path) -> None:
    """A small grid (tp 4 or 8, colocated or half the replicas prefilling) on the default model and
    pool: the best design's goodput per GPU is its goodput rate over 8 GPUs, the colocated and the
    disaggregated best are both reported with their attainment curves, and the run is in MLflow."""
    proc = run(*SMALL, "format=json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    best = rep["best"]
    assert best["goodput_per_gpu"] == pytest.approx(best["max_rate_per_s"] / 8)
    assert rep["best_colocated"]["prefill"] == 0 and rep["best_disaggregated"]["prefill"] == 1
    assert set(rep["curves"]) == {"colocated", "disaggregated"}
    for curve in rep["curves"].values():  # attainment falls as the rate rises past the goodput rate
        assert curve["slo_attainment"][0] >= 0.9 > curve["slo_attainment"][-1]
    assert {"attainment.png", "designs.csv", "result.json"} <= set(rep["results"]["files"])
    assert (Path(rep["results"]["output_dir"]) / "attainment.png").stat().st_size > 0
    db = tmp_path / "mlflow.db"
    assert db.exists()
    with sqlite3.connect(db) as con:
        names = {row[0] for row in con.execute("select key from metrics")}
    assert {"goodput_per_gpu", "max_rate_per_s"} <= names


def test_optuna_drives_the_serving_problem_too(tmp_path: Path) -> None:
    proc = run(*SMALL, "search=optuna", "search.n_trials=4", "search.objective=neg_goodput_per_gpu",
               "tracking=none", "format=json", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["driver"] == "optuna" and rep["best"]["goodput_per_gpu"] > 0


def _setup(*overrides: str):
    from hydra import compose, initialize_config_dir

    from dse import schema
    from dse._app import CONF_DIR
    from dse.serving_search import setup_from_config

    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=[o for o in SMALL if o != "progress=false"] + list(overrides)
        )
    return setup_from_config(cfg)


@pytest.mark.parametrize(("acceptance", "faster"), [(0.0, False), (0.9, True)])
def test_speculation_is_a_searched_knob_whose_gain_follows_acceptance(acceptance, faster) -> None:
    """Speculative tokens are a knob of the serving search. With an n-gram proposer (no draft cost):
    at acceptance 0 every step verifies 3 tokens and keeps one, so a speculating design is never
    faster per token nor has more goodput than the same design without; at acceptance 0.9 a step
    keeps 1 + 0.9 + 0.81 + 0.73 ≈ 3.4 tokens for a little more than one step's time, so its mean TPOT
    at a light load falls."""
    from costmodels.requests import serving_metrics
    from search.serving import _Designs, serving_problem

    setup, space = _setup(
        "serving.space.speculative_tokens=[0,3]", f"serving.speculative.acceptance={acceptance}"
    )
    assert space["speculative_tokens"] == [0.0, 3.0]
    designs = _Designs(setup, space)
    design = {"tp": 8, "max_num_seqs": 64, "max_num_batched_tokens": 2048, "prefill_share": 0.0}
    plain, speculating = (designs.evaluate(design | {"speculative_tokens": k}) for k in (0, 3))
    tpot = []
    for k in (0, 3):
        deployment = designs.deploy(designs.plan(design | {"speculative_tokens": k}))
        w = setup.workload(0.5)
        tpot.append(
            serving_metrics(deployment.simulate(w), w, setup.slo, deployment.kv_blocks)["tpot_p50_ms"]
        )
    assert (tpot[1] < 0.6 * tpot[0]) if faster else (tpot[1] >= tpot[0])
    if not faster:
        assert speculating["goodput_per_gpu"] <= plain["goodput_per_gpu"]
    problem, _ = serving_problem(setup, space)
    assert problem.describe(design | {"speculative_tokens": 3})["speculative_tokens"] == 3


def test_pipeline_stages_are_a_searched_knob() -> None:
    """serving.space.pp = [1, 2] on 8 GPUs with tp 4: the pipelined design is one replica of 4 × 2
    devices running two engines. Its engines take the requests round robin as the two tp-4 replicas
    of the unpipelined design do, each step is that design's plus one send of its tokens' hidden
    states (microseconds), and each engine has more KV cache than a tp-4 replica (a device holds half
    the weights), which a 120-request run never fills: the two goodputs per GPU agree to the rate
    search's resolution. A pipelined design neither splits off prefill replicas nor speculates
    (the constraint drops those points)."""
    from search.serving import _Designs, serving_problem

    setup, space = _setup(
        "serving.space.tp=[4]", "serving.space.pp=[1,2]", "serving.space.prefill_share=[0.0]"
    )
    designs = _Designs(setup, space)
    design = {"tp": 4, "max_num_seqs": 64, "max_num_batched_tokens": 2048, "prefill_share": 0.0}
    plan = designs.plan(design | {"pp": 2})
    assert (plan.tp, plan.pp, plan.replicas, plan.devices) == (4, 2, 1, 8)
    flat, piped = (designs.evaluate(design | {"pp": pp}) for pp in (1, 2))
    assert flat["devices"] == piped["devices"] == 8
    assert piped["goodput_per_gpu"] == pytest.approx(flat["goodput_per_gpu"], rel=2.0**-BISECTIONS)
    problem, _ = serving_problem(setup, space)
    points = {k: np.array([v, v, v]) for k, v in design.items()} | {
        "pp": np.array([2, 2, 2]),
        "prefill_share": np.array([0.0, 0.5, 0.0]),
        "speculative_tokens": np.array([0, 0, 3]),
    }
    assert problem.constraint(points).tolist() == [True, False, False]


def test_a_bad_speculation_setting_is_one_line() -> None:
    from costmodels.errors import ConfigError

    with pytest.raises(ConfigError, match=r"serving.space.speculative_tokens must hold integers >= 0"):
        _setup("serving.space.speculative_tokens=[-1]")
    with pytest.raises(ConfigError, match=r"serving.speculative.acceptance must be in \[0, 1\], got 2"):
        _setup("serving.speculative.acceptance=2")
    with pytest.raises(
        ConfigError, match=r"serving.engine.preemption must be one of recompute, swap, got 'x'"
    ):
        _setup("serving.engine.preemption=x")


def test_expert_parallel_designs_need_experts_and_single_device_engines() -> None:
    """serving.space.ep: on the default dense Llama-3-70B no design spreads experts; on
    Qwen3-30B-A3B one does, with tp = 1, colocated and without speculation."""
    from search.serving import serving_problem

    base = {"tp": 1, "pp": 1, "max_num_seqs": 64, "max_num_batched_tokens": 2048, "speculative_tokens": 0}
    points = {k: np.array([v] * 4) for k, v in base.items()} | {
        "ep": np.array([2, 2, 2, 1]),
        "tp": np.array([1, 2, 1, 2]),
        "prefill_share": np.array([0.0, 0.0, 0.5, 0.0]),
    }
    dense, space = _setup("serving.space.ep=[1,2]")
    assert serving_problem(dense, space)[0].constraint(points).tolist() == [False, False, False, True]
    moe, space = _setup("serving.space.ep=[1,2]", "model=qwen3_30b_a3b")
    assert serving_problem(moe, space)[0].constraint(points).tolist() == [True, False, False, True]
