"""``python -m dse.search`` end to end: experiments, the reproduce line, MLflow, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    assert rep["metrics"]["tpot_s"] <= 0.020
    assert all(r["tpot_s"] <= 0.020 for r in rep["top"])
    best_rate = rep["metrics"]["tokens_per_s"]
    assert all(r["tokens_per_s"] <= best_rate for r in rep["top"])
    # serving names its figures: TTFT, TPOT, throughput; no training step time, no MFU
    assert {"ttft_s", "tpot_s", "latency_s", "tokens_per_s"} <= set(rep["metrics"])
    assert not {"step_time_s", "mfu", "objective"} & set(rep["metrics"])
    assert rep["objective"] == {"metric": "tokens_per_s", "goal": "maximize"}


def test_inference_ttft_limit_excludes_slow_first_tokens(tmp_path: Path) -> None:
    """A TTFT limit beside the TPOT limit: with ``workload.ttft_limit_ms`` every reported design has
    TTFT ≤ the limit, and the limit changes the winner (the largest batch's prefill is too slow)."""
    common = ["+experiment=inference_slo", "model=llama3_8b", "parallelism.tp=[1,2]", "format=json",
              "parallelism.batch_size=[1,8,64,256]", "tracking=none", "progress=false"]  # fmt: skip
    free = json.loads(run(*common, cwd=tmp_path).stdout)
    limit_s = free["metrics"]["ttft_s"] / 2
    proc = run(*common, f"workload.ttft_limit_ms={limit_s * 1e3}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["metrics"]["ttft_s"] <= limit_s and all(r["ttft_s"] <= limit_s for r in rep["top"])
    assert rep["best"] != free["best"]
    assert any(c.startswith("TTFT <= ") for c in rep["question"]["constraints"])


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
    assert rep["metrics"]["tokens_per_s"] > 0 and "objective" not in rep["metrics"]
    assert rep["objective"]["goal"] == "maximize"


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
        assert {"step_time_s", "mfu", "tokens_per_s", "memory_gib", "cost_usd_per_mtoken"} <= set(
            job.data.metrics
        )
        children = [r for r in kinds["child"] if r.data.tags["mlflow.parentRunId"] == job.info.run_id]
        assert len(children) == 3
        artifacts = {a.path for a in MlflowClient(uri).list_artifacts(job.info.run_id)}
        assert {
            "config.yaml",
            "results.csv",
            "pareto.png",
            "breakdown.png",
            "best.yaml",
            "result.json",
        } <= artifacts
        # the run says what ran; the winning design is params (MLflow's compare view), model etc. tags
        hardware = job.data.tags["dse.hardware"]
        assert job.info.run_name == f"search · llama3_8b · {hardware} × 16"
        assert job.data.tags["dse.model"] == "llama3_8b" and job.data.tags["dse.devices"] == "16"
        assert job.data.tags["dse.label"] == hardware  # the swept value
        rep = json.loads((Path(job.data.tags["dse.output_dir"]) / "result.json").read_text())
        assert {f"best.{k}": str(v) for k, v in rep["best"].items()} == {
            k: v for k, v in job.data.params.items() if k.startswith("best.")
        }
    assert sorted(j.data.tags["dse.hardware"] for j in jobs) == ["a100_80gb", "h100_sxm"]
    # the combined table: printed after the jobs, and sweep.csv / sweep.png on the sweep run
    table = proc.stdout[proc.stdout.index("sweep over hardware: 2 jobs") :]
    assert "a100_80gb" in table and "h100_sxm" in table and "step time" in table
    sweep_artifacts = {a.path for a in MlflowClient(uri).list_artifacts(sweep.info.run_id)}
    assert {"sweep.csv", "sweep.png"} <= sweep_artifacts
    import csv

    sweep_csv = Path(MlflowClient(uri).download_artifacts(sweep.info.run_id, "sweep.csv", str(tmp_path)))
    rows = list(csv.DictReader(sweep_csv.open()))
    assert [r["label"] for r in rows] == ["a100_80gb", "h100_sxm"]
    steps = {j.data.tags["dse.hardware"]: j.data.metrics["step_time_s"] for j in jobs}
    for r in rows:
        assert float(r["step_time_s"]) == pytest.approx(steps[r["label"]])


def test_multirun_json_is_json_lines(tmp_path: Path) -> None:
    """``-m ... format=json``: stdout is JSON Lines, one object per job, each naming its job's swept
    values and overrides; the combined table goes to stderr, so stdout stays parseable."""
    small = [a for a in SMALL if not a.startswith("model=")]
    proc = run("-m", *small, "hardware=a100_80gb,h100_sxm", "model=llama3_8b,qwen3_8b", "tracking=none",
               "format=json", "progress=false", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(jobs) == 4
    labels = sorted(j["job"]["label"] for j in jobs)
    assert labels == [
        "a100_80gb / llama3_8b",
        "a100_80gb / qwen3_8b",
        "h100_sxm / llama3_8b",
        "h100_sxm / qwen3_8b",
    ]
    assert all("hardware=" in " ".join(j["job"]["overrides"]) for j in jobs)
    assert "sweep over hardware, model: 4 jobs" in proc.stderr


def test_output_dir_holds_the_results_and_optuna_top_is_distinct(tmp_path: Path) -> None:
    """The Hydra output directory holds the result and the artifacts even without MLflow; Optuna's
    top-k lists each design once although the sampler repeats designs."""
    args = [*SMALL, "search=optuna", "search.n_trials=24", "tracking=none", "progress=false"]
    args.append("hydra.run.dir=out")
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    rep = json.loads((out / "result.json").read_text())
    assert {"results.csv", "best.yaml", "pareto.png", "breakdown.png"} <= {p.name for p in out.iterdir()}
    assert rep["evaluations"] == 24 and rep["distinct_designs"] <= 24
    designs = [tuple(r[k] for k in rep["chosen"]) for r in rep["top"]]
    assert len(designs) == len(set(designs)) >= 2
    assert "distinct designs" in proc.stdout and f"files: {out}" in proc.stdout


def test_unknown_price_is_never_a_zero_cost(tmp_path: Path) -> None:
    """A preset without a price (gb300): the cost is reported as unknown (a warning, no cost figure),
    and a cost objective is one line naming the key to set."""
    args = ["+experiment=inference_slo", "hardware=gb300", "model=llama3_8b", "parallelism.tp=[1,2]",
            "parallelism.batch_size=[1,8]", "tracking=none", "progress=false"]  # fmt: skip
    proc = run(*args, cwd=tmp_path)  # the experiment's Pareto axes include the cost: one line
    assert proc.returncode == 2 and "search.pareto uses cost_usd_per_mtoken" in proc.stderr
    args.append("search.pareto=[tpot_s,memory_gib]")
    proc = run(*args, "format=json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert "cost_usd_per_mtoken" not in rep["metrics"] and any("price" in w for w in rep["warnings"])
    proc = run(*args, "search.objective=cost_usd_per_mtoken", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "hardware.price_usd_per_hour" in proc.stderr and "Traceback" not in proc.stderr


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


def test_compare_puts_each_preset_at_its_best_side_by_side(tmp_path: Path) -> None:
    """``dse.compare hardware=a,b``: one search per preset; each job's winner equals a plain
    ``dse.search`` on that preset, energy per token is devices · power / tokens per s, and the
    combined table names both presets. Without ``hardware=`` it is one line."""
    small = [a for a in SMALL if not a.startswith("parallelism.microbatch")]
    args = [*small, "tracking=none", "progress=false", "format=json"]
    proc = subprocess.run(
        [sys.executable, "-m", "dse.compare", *args, "hardware=a100_80gb,h100_sxm"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobs = {j["job"]["label"]: j for j in map(json.loads, proc.stdout.splitlines())}
    assert sorted(jobs) == ["a100_80gb", "h100_sxm"]
    single = json.loads(run(*args, "hardware=h100_sxm", cwd=tmp_path).stdout)
    assert jobs["h100_sxm"]["best"] == single["best"]
    assert jobs["h100_sxm"]["metrics"]["step_time_s"] == pytest.approx(single["metrics"]["step_time_s"])
    for j in jobs.values():
        m = j["metrics"]
        assert m["energy_j_per_token"] == pytest.approx(m["power_w"] / m["tokens_per_s"], rel=1e-5)
        assert m["power_w"] == 16 * {"a100_80gb": 400, "h100_sxm": 700}[j["job"]["label"]]
    assert "sweep over hardware: 2 jobs" in proc.stderr and "J/token" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "dse.compare", "model=llama3_8b"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: give the presets to compare")


def test_search_figures_have_titles_units_legends_and_limits() -> None:
    """The Pareto plot names model, hardware and devices, labels its axes with units, marks the
    chosen design and draws the HBM capacity (80 GiB on an H100); the breakdown names the same
    job; the sweep plot labels each job's point by its swept values."""
    from omegaconf import OmegaConf

    from dse.hardware import hardware_from_config
    from dse.search import _pareto_figure, breakdown_figure, sweep_figure
    from search.base import Result

    hw = hardware_from_config(OmegaConf.load(CONF_DIR / "hardware" / "h100_sxm.yaml"))
    table = {"tp": np.array([1.0, 2.0, 4.0]), "pp": np.array([1.0, 1.0, 2.0]),
             "step_time_s": np.array([3.0, 2.0, 2.5]), "memory_gib": np.array([70.0, 40.0, 20.0]),
             "feasible": np.array([True, True, True])}  # fmt: skip
    result = Result(
        "grid", {"tp": 2.0, "pp": 1.0}, {}, table, pareto=[1, 2], pareto_axes=("step_time_s", "memory_gib")
    )
    question = {"experiment": "gpu_cluster", "model": "llama3_8b", "hardware": "h100_sxm", "devices": 16}
    metrics = {"step_time_s": 2.0, "memory_gib": 40.0, "compute_s": 1.5, "tp_comm_s": 0.5}
    rep = {"question": question | {"limits": {}}, "best": {"tp": 2, "pp": 1}, "chosen": ["tp", "pp"],
           "metrics": metrics}  # fmt: skip
    ax = _pareto_figure(result, rep, hw).axes[0]
    assert ax.get_title().startswith("gpu_cluster: llama3_8b on 16 × h100_sxm")
    assert ax.get_xlabel() == "step time (s)" and ax.get_ylabel() == "memory per device (GiB per device)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"feasible designs", "Pareto front", "chosen design", "limit: memory per device"} <= set(legend)
    limit = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
    assert limit.get_ydata()[0] == pytest.approx(80.0)  # the H100's 80 GiB
    assert any("tp4 pp2" in t.get_text() for t in ax.texts)  # front points labelled by their mapping
    assert "where the step time goes" in breakdown_figure(rep["metrics"], "gpu_cluster").axes[0].get_title()
    rows = [{"label": "a100_80gb", "tokens_per_s": 1e5, "cost_usd_per_mtoken": 3.0},
            {"label": "h100_sxm", "tokens_per_s": 3e5, "cost_usd_per_mtoken": 2.5}]  # fmt: skip
    ax = sweep_figure(rows, "sweep over hardware").axes[0]
    assert {t.get_text() for t in ax.texts} == {"a100_80gb", "h100_sxm"}
    assert ax.get_xlabel() == "throughput (tokens/s)" and "USD per million tokens" in ax.get_ylabel()


def test_sweep_table_skips_reports_without_a_winning_mapping(tmp_path: Path) -> None:
    """A wafer (gd) sweep writes its own result.json per job, with no mapping to line up: the combined
    table leaves it out instead of failing the sweep at its end."""
    from dse.search import sweep_rows

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "result.json").write_text(json.dumps({"driver": "gd", "design": {"clock_hz": 1e9}}))
    assert sweep_rows(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["progress=maybe"], "progress=maybe: Value 'maybe' is not a valid bool"),
        (["workload.seq_len=abc"], "workload.seq_len=abc: Value 'abc' of type 'str' could not be converted"),
        (["+experiment=inference_slo", "search.objective=step_time_s"], "is not an objective for inference"),
        (["search.pareto=[tpot_s,memory_gib]"], "search.pareto: 'tpot_s' is not a metric of training"),
    ],
)
def test_wrong_type_or_kind_is_one_line_naming_the_key(tmp_path: Path, args: list[str], expect: str) -> None:
    proc = run(*args, "tracking=none", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and expect in lines[-1], proc.stderr
