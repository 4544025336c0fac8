"""``python -m dse.search`` end to end: experiments, the reproduce line, MLflow, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from costmodels.training import TIME_FIELDS
from dse import schema
from dse._app import CONF_DIR

SMALL = [
    "model=llama3_8b",
    "num_devices=16",
    "workload.seq_len=2048",
    "workload.global_batch=64",
    "parallelism.tp=[1,2,4,8]",
    "parallelism.pp=[1,2]",
    "parallelism.cp=[1]",
    "parallelism.vpp=[1]",
    "parallelism.microbatch=[1,2]",
    "parallelism.zero_stage=[1]",
]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.search", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", experiments())
def test_every_experiment_composes(name: str) -> None:
    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}", "tracking=none"])
    assert cfg.search.driver in ("grid", "optuna", "gd", "ilp", "cpsat")
    assert cfg.workload.kind in ("training", "inference")


def test_typo_in_a_group_is_an_error() -> None:
    schema.register()
    with (
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
        pytest.raises(Exception, match="seq_lne"),
    ):
        compose("config", overrides=["workload.seq_lne=3", "tracking=none"])


def test_grid_search_and_its_reproduce_line(tmp_path: Path) -> None:
    """The best design's step time printed by dse.search equals what dse.calc computes for it."""
    proc = run(*SMALL, "tracking=none", "format=json", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["driver"] == "grid" and rep["evaluations"] > 10
    assert rep["best"]["tp"] * rep["best"]["pp"] * rep["best"]["dp"] == 16
    steps = [r["step_time_s"] for r in rep["top"]]
    assert steps == sorted(steps) and rep["metrics"]["step_time_s"] == pytest.approx(steps[0])
    calc = subprocess.run(
        [sys.executable, "-m", "dse.calc", *rep["reproduce"].split()[3:], "format=json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert calc.returncode == 0, calc.stderr
    calc_rep = json.loads(calc.stdout)
    assert calc_rep["step_time_s"] == pytest.approx(rep["metrics"]["step_time_s"], rel=1e-4)
    # the search reports the same breakdown as dse.calc, and it adds up to the step
    for k in TIME_FIELDS:
        assert rep["metrics"][k] == pytest.approx(calc_rep[k], rel=1e-4, abs=1e-9), k
    total = sum(rep["metrics"][k] for k in TIME_FIELDS)
    assert total == pytest.approx(rep["metrics"]["step_time_s"], rel=1e-5)


def test_inference_slo_respects_the_tpot_limit(tmp_path: Path) -> None:
    proc = run(
        "+experiment=inference_slo",
        "model=llama3_8b",
        "parallelism.tp=[1,2]",
        "parallelism.batch_size=[1,8,64,256]",
        "workload.tpot_limit_ms=20",
        "tracking=none",
        "format=json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["metrics"]["step_time_s"] <= 0.020
    assert all(r["step_time_s"] <= 0.020 for r in rep["top"])
    best_rate = rep["metrics"]["tokens_per_s"]
    assert all(r["tokens_per_s"] <= best_rate for r in rep["top"])


@pytest.mark.parametrize("driver", ["grid", "optuna"])
def test_inference_slo_with_each_driver_reports_tokens_per_s(tmp_path: Path, driver: str) -> None:
    """The serving search maximises tokens/s (objective neg_tokens_per_s, a signed figure that is
    negative by design) with the grid and with Optuna; the reported throughput is positive."""
    proc = run(
        "+experiment=inference_slo", f"search={driver}", "model=llama3_8b", "parallelism.tp=[1,2]",
        "parallelism.batch_size=[1,8,64]", "tracking=none", "format=json",
        *(["search.n_trials=6"] if driver == "optuna" else []),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["metrics"]["tokens_per_s"] > 0 and rep["metrics"]["objective"] < 0


def _runs(uri: str, monkeypatch: pytest.MonkeyPatch) -> list:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.search_runs(experiment_names=["dse"], output_format="list")


def test_multirun_is_logged_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-job sweep: one sweep parent run, two FINISHED job runs under it with the shared metrics,
    their top-k child runs, and the artifacts (config, table, plots, best design)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run(
        "-m",
        *SMALL,
        "hardware=a100_80gb,h100_sxm",
        "search.top_k=3",
        f"tracking.uri={uri}",
        "progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    runs = _runs(uri, monkeypatch)
    kinds = {}
    for r in runs:
        kinds.setdefault(r.data.tags.get("dse.kind"), []).append(r)
    (sweep,) = kinds["sweep"]
    jobs = kinds["job"]
    assert len(jobs) == 2 and sweep.info.status == "FINISHED"
    for job in jobs:
        assert job.info.status == "FINISHED"
        assert job.data.tags["mlflow.parentRunId"] == sweep.info.run_id
        assert {"step_time_s", "mfu", "tokens_per_s", "memory_gib", "objective"} <= set(job.data.metrics)
        children = [r for r in kinds["child"] if r.data.tags["mlflow.parentRunId"] == job.info.run_id]
        assert len(children) == 3
        artifacts = {a.path for a in MlflowClient(uri).list_artifacts(job.info.run_id)}
        assert {"config.yaml", "results.csv", "pareto.png", "breakdown.png", "best.yaml"} <= artifacts


def test_no_feasible_point_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama-3-70B on 8 GPUs without model parallelism or ZeRO cannot fit: a one-line error naming the
    memory, exit ≠ 0, and the MLflow run FAILED, never FINISHED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run(
        "model=llama3_70b",
        "num_devices=8",
        "parallelism.tp=[1]",
        "parallelism.pp=[1]",
        "parallelism.cp=[1]",
        "parallelism.zero_stage=[0]",
        f"tracking.uri={uri}",
        "progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "infeasible" in proc.stderr and "GiB" in proc.stderr
    (job,) = _runs(uri, monkeypatch)
    assert job.info.status == "FAILED"


def test_unknown_experiment_and_bad_storage(tmp_path: Path) -> None:
    proc = run("+experiment=no_such_experiment", "tracking=none", cwd=tmp_path)
    assert proc.returncode != 0 and "no_such_experiment" in proc.stderr
    proc = run(
        *SMALL,
        "search=optuna",
        "search.n_trials=3",
        f"search.storage={tmp_path}/missing/dir/s.journal",
        "tracking=none",
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "error:" in proc.stderr
