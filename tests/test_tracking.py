"""dse.tracking: JobRun in process against a SQLite store, and Hydra multiruns (basic and joblib
launchers) whose jobs nest under one sweep run. Every store is an absolute ``sqlite:////`` URI in
tmp_path; MLFLOW_TRACKING_URI is set with monkeypatch only (mlflow.set_tracking_uri would leak it
into os.environ for the rest of the session)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from costmodels.errors import ConfigError
from dse.mlflow_store import TrackingError, ensure_store
from dse.tracking import ENV_SWEEP_RUN_ID, JobRun, SweepCallback, flatten_config, resolve_uri
from dse.tracking_process import ORPHANED

CONF_TRACKING_DIR = Path(__file__).resolve().parents[1] / "conf" / "tracking"

APP = """
import hydra
from omegaconf import DictConfig

from dse.tracking import JobRun


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with JobRun(cfg, name="toy") as run:
        if cfg.fail_on == cfg.x:
            raise ValueError(f"x={cfg.x} is bad")
        run.log_metrics({"y": 10.0 * cfg.x})


if __name__ == "__main__":
    main()
"""

CONFIG = """
defaults:
  - tracking: sqlite
  - _self_
x: 0
fail_on: null
hydra:
  callbacks:
    mlflow_sweep:
      _target_: dse.tracking.SweepCallback
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the in-process tests (creating one takes seconds); tests differ by
    experiment name."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    ensure_store(uri)
    return uri


@pytest.fixture
def use_store(store: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``mlflow.search_runs`` reads ``store``; no sweep run id leaks in from the environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv(ENV_SWEEP_RUN_ID, raising=False)
    return store


def _cfg(uri: str | None, experiment: str, enabled: bool = True, **extra: object) -> DictConfig:
    return OmegaConf.create({"tracking": {"enabled": enabled, "uri": uri, "experiment": experiment}, **extra})


def _runs(experiment: str, filter_string: str = "") -> pd.DataFrame:
    return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string)


# --------------------------------------------------------------------------- pure functions


def test_resolve_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    on = {"enabled": True, "uri": None}
    assert resolve_uri({"enabled": False, "uri": "sqlite:////x.db"}) is None
    assert resolve_uri(None) is None
    assert resolve_uri(on, cwd=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert (
        resolve_uri({**on, "uri": "sqlite:///runs/a.db"}, cwd=tmp_path) == f"sqlite:///{tmp_path}/runs/a.db"
    )
    assert resolve_uri({**on, "uri": "sqlite:////abs/a.db"}, cwd=tmp_path) == "sqlite:////abs/a.db"
    assert resolve_uri({**on, "uri": "http://host:5000"}, cwd=tmp_path) == "http://host:5000"
    assert resolve_uri({**on, "uri": "b.db"}, cwd=tmp_path) == f"sqlite:///{tmp_path}/b.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert resolve_uri(on, cwd=tmp_path) == "http://server:5000"
    # the shipped options
    conf = {p.stem: OmegaConf.load(p) for p in CONF_TRACKING_DIR.glob("*.yaml")}
    assert conf["sqlite"].enabled and conf["sqlite"].uri is None and not conf["none"].enabled


def test_flatten_config() -> None:
    cfg = OmegaConf.create(
        {"a": {"b": {"c": 1}, "l": [1, 2], "s": "${a.b.c}"}, "e": {}, "long": "x" * 7000, "k(1)": None}
    )
    flat = flatten_config(cfg)
    assert flat["a.b.c"] == "1" and flat["a.l"] == "[1, 2]" and flat["a.s"] == "1" and flat["e"] == "{}"
    assert flat["k_1_"] == "None"
    assert len(flat["long"]) == 6000


# --------------------------------------------------------------------------- JobRun in process


IN_PROCESS = [pytest.param(False, id="here"), pytest.param(True, id="tracking-process")]


@pytest.mark.parametrize("process", IN_PROCESS)
def test_job_run_logs_everything(use_store: str, tmp_path: Path, process: bool) -> None:
    """The same run whether its MLflow calls are made in this process or in the tracking process."""
    experiment = f"inproc-{process}"
    cfg = _cfg(use_store, experiment, model={"name": "llama3_8b", "layers": [1, 2]}, lr=0.1)
    params = {f"p{i}": i for i in range(150)}  # more than one params batch of 100
    with JobRun(cfg, name="job", process=process) as run:
        run.log_params(params)
        run.log_metrics({"step_time_s": np.float32(1.5), "feasible": True, "mfu": None})
        run.log_trajectory([{"step": s, "objective": 10.0 - s} for s in range(5)], prefix="gd/")
        for i in range(3):
            assert run.child(f"trial-{i}", {"tp": 2**i}, {"objective": float(i)}, [{"value": i}]) is None
        run.log_table_csv({"tp": np.array([1, 2]), "objective": np.array([0.5, 0.25])}, "tables/grid.csv")
        run.log_dict({"best": {"tp": np.int64(2)}}, "best.yaml")
        run.log_text("hello", "notes.txt")
        fig = Figure()
        fig.add_subplot().plot([0, 1], [1, 0])
        run.log_figure(fig, "pareto.png")

    job = _runs(experiment, f"attributes.run_id = '{run.run_id}'").iloc[0]
    assert job.status == "FINISHED" and job["tags.mlflow.runName"] == "job"
    assert job["params.model.name"] == "llama3_8b" and job["params.model.layers"] == "[1, 2]"
    assert job["params.lr"] == "0.1" and job["params.p149"] == "149"
    assert job["metrics.step_time_s"] == 1.5 and job["metrics.feasible"] == 1.0
    assert job["metrics.gd/objective"] == 6.0  # the last step
    client = MlflowClient(use_store)
    assert [m.step for m in client.get_metric_history(run.run_id, "gd/objective")] == list(range(5))

    children = _runs(experiment, f"tags.mlflow.parentRunId = '{run.run_id}'")
    assert sorted(children["tags.mlflow.runName"]) == ["trial-0", "trial-1", "trial-2"]
    assert (children.status == "FINISHED").all() and (children["tags.dse.kind"] == "child").all()
    assert [m.value for m in client.get_metric_history(children.run_id.iloc[0], "value")] in ([0], [1], [2])
    assert sorted(children["metrics.objective"]) == [0.0, 1.0, 2.0]
    assert sorted(children["params.tp"]) == ["1", "2", "4"]

    top = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "best.yaml", "notes.txt", "pareto.png", "tables"} <= top
    assert [a.path for a in client.list_artifacts(run.run_id, "tables")] == ["tables/grid.csv"]
    csv = Path(client.download_artifacts(run.run_id, "tables/grid.csv", str(tmp_path))).read_text()
    assert csv.splitlines() == ["tp,objective", "1,0.5", "2,0.25"]
    assert job["tags.mlflow.source.name"] == sys.argv[0]  # the command's, not the tracking process's


@pytest.mark.parametrize("process", IN_PROCESS)
@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (ValueError("bad design\nmore detail"), "FAILED", "ValueError: bad design"),
        (SystemExit(2), "FAILED", "SystemExit: 2"),
        (SystemExit(0), "FINISHED", None),
        (KeyboardInterrupt(), "KILLED", "KeyboardInterrupt"),
    ],
)
def test_job_run_exception_sets_status(
    use_store: str, exc: BaseException, status: str, error: str | None, process: bool
) -> None:
    with pytest.raises(type(exc)), JobRun(_cfg(use_store, "errors"), name="boom", process=process) as run:
        raise exc
    client = MlflowClient(use_store)
    got = client.get_run(run.run_id)
    assert got.info.status == status
    assert got.data.tags.get("dse.error") == error
    logged = {a.path for a in client.list_artifacts(run.run_id)}
    assert ("error.txt" in logged) == (error is not None)


@pytest.mark.parametrize("process", IN_PROCESS)
def test_a_write_the_store_refuses_fails_the_run(use_store: str, process: bool) -> None:
    """MLflow refuses to change a logged parameter: the job stops with the store's error (here at
    once; from the tracking process at the next call, or when the run ends) and the run is FAILED
    with that error, never FINISHED."""
    cfg = _cfg(use_store, "refused")
    with pytest.raises(Exception, match="lr") as caught, JobRun(cfg, process=process) as run:
        run.log_params({"lr": 0.1})
        run.log_params({"lr": 0.2})
        run.log_metrics({"after": 1.0})
    assert isinstance(caught.value, TrackingError) == process
    got = MlflowClient(use_store).get_run(run.run_id)
    assert got.info.status == "FAILED" and "lr" in got.data.tags["dse.error"]
    assert "after" not in got.data.metrics


@pytest.mark.parametrize("process", IN_PROCESS)
def test_deleted_experiment_is_a_config_error_with_the_fix(use_store: str, process: bool) -> None:
    client = MlflowClient(use_store)
    client.delete_experiment(client.create_experiment(f"gone-{process}"))
    fix, cfg = r"is deleted: restore it .* or pass tracking.experiment=", _cfg(use_store, f"gone-{process}")
    with pytest.raises(ConfigError, match=fix), JobRun(cfg, process=process) as run:
        run.log_metrics({"a": 1.0})


def test_job_run_nests_under_env_sweep_run(use_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside Hydra the sweep parent comes from $DSE_MLFLOW_SWEEP_RUN_ID."""
    with JobRun(_cfg(use_store, "env"), process=True) as parent:  # its id is waited for
        monkeypatch.setenv(ENV_SWEEP_RUN_ID, parent.run_id)
        with JobRun(_cfg(use_store, "env")) as job:
            pass
    assert MlflowClient(use_store).get_run(job.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_sweep_callback_closes_from_children(use_store: str, tmp_path: Path) -> None:
    """on_multirun_end: FAILED when a job run failed (here the task caught its own error), and a
    job run left RUNNING (its process died) is closed FAILED; the env var is removed."""
    config = OmegaConf.create(
        {
            "tracking": {"enabled": True, "uri": use_store, "experiment": "callback"},
            "hydra": {
                "runtime": {"cwd": str(tmp_path)},
                "sweep": {"dir": "sweep"},
                "overrides": {"task": ["x=1,2"]},
            },
        }
    )
    callback = SweepCallback()
    callback.on_multirun_start(config)
    sweep_id = os.environ[ENV_SWEEP_RUN_ID]
    assert (tmp_path / "sweep" / "mlflow_sweep_run_id").read_text().strip() == sweep_id
    job_cfg = _cfg(use_store, "callback")
    with JobRun(job_cfg) as ok:
        pass
    with contextlib.suppress(ValueError), JobRun(job_cfg) as bad:
        raise ValueError("caught by the task")
    client = MlflowClient(use_store)
    dead = client.create_run(callback.experiment_id, tags={"mlflow.parentRunId": sweep_id}).info.run_id
    callback.on_multirun_end(config)

    assert ENV_SWEEP_RUN_ID not in os.environ
    sweep = client.get_run(sweep_id)
    assert sweep.info.status == "FAILED" and sweep.data.tags["dse.failed_jobs"] == "2"
    assert sweep.data.tags["override.x"] == "1,2"
    assert [client.get_run(r).info.status for r in (ok.run_id, bad.run_id, dead)] == [
        "FINISHED",
        "FAILED",
        "FAILED",
    ]


def test_disabled_is_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for cfg in (_cfg(None, "off", enabled=False), OmegaConf.create({"x": 1}), None):
        with JobRun(cfg, name="off") as run:
            run.log_params({"a": 1})
            run.log_metrics({"m": 1.0})
            run.log_trajectory([{"step": 0, "m": 1.0}])
            assert run.child("c", {"a": 1}, {"m": 1.0}) is None
            run.log_text("t", "t.txt")
            run.log_dict({"a": 1}, "a.yaml")
            run.log_table_csv({"a": np.arange(2)}, "t.csv")
            run.log_figure(Figure(), "f.png")
        assert run.run_id is None and not run.enabled
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the tracking process

JOB = """
import sys, time
from omegaconf import OmegaConf
from dse import tracking, tracking_process
from dse.tracking import JobRun

uri, experiment, mode, children = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = OmegaConf.create({"tracking": {"enabled": True, "uri": uri, "experiment": experiment}})
tracking.prestart(cfg)  # as dse's apps do for a single run
with JobRun(cfg, name=mode) as run:
    run.log_metrics({"m": 1.0})
    run.log_text("notes", "notes.txt")
    for i in range(children):
        run.child(f"c{i}", {"i": i}, {"m": float(i)})
    waiting = len(tracking_process._WAITING)
    print(run.run_id, run._worker._proc.pid, "mlflow" in sys.modules, waiting, run._staging, flush=True)
    if mode != "finish":
        time.sleep(600)
"""


def _job(store: str, experiment: str, mode: str, children: int = 0, **popen: object) -> subprocess.Popen:
    args = [sys.executable, "-c", JOB, store, experiment, mode, str(children)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _children(store: str, run_id: str) -> int:
    client = MlflowClient(store)
    experiment = client.get_run(run_id).info.experiment_id
    return len(client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'", max_results=5000))


def test_a_job_without_mlflow_imported_logs_through_the_prestarted_tracking_process(store: str) -> None:
    """The job's process never imports MLflow: it takes over the tracking process started ahead of
    it, and the run is complete when the ``with`` block ends."""
    proc = _job(store, "default", "finish", children=3)
    out, err = proc.communicate(timeout=120)
    run_id, pid, imported, waiting, staging = out.split()
    assert proc.returncode == 0, err
    assert (imported, waiting) == ("False", "0")
    got = MlflowClient(store).get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.metrics == {"m": 1.0}
    assert int(pid) != proc.pid and _children(store, run_id) == 3
    assert not Path(staging).exists()


def _status(store: str, run_id: str) -> str:
    return MlflowClient(store).get_run(run_id).info.status


def test_sigkilled_job_run_is_closed_failed_by_the_tracking_process(store: str) -> None:
    """SIGKILL cannot be caught by the job: its tracking process sees the pipe close, drops the child
    runs still queued, closes the run FAILED, saying why (in process, it stayed RUNNING), and removes
    the job's staging directory of artifacts."""
    proc = _job(store, "sigkill", "kill", children=500)
    run_id, *_, staging = proc.stdout.readline().split()
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _status(store, run_id) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    got = MlflowClient(store).get_run(run_id)
    assert got.info.status == "FAILED" and got.data.tags["dse.error"] == ORPHANED
    assert _children(store, run_id) < 500
    deadline = time.monotonic() + 10  # the run is closed just before the directory goes
    while Path(staging).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(staging).exists()


def test_ctrl_c_to_the_process_group_gives_a_killed_run_fast(store: str) -> None:
    """Ctrl-C reaches the job and its tracking process (one process group): the tracking process
    ignores it, closes the run KILLED on the job's word and drops the 2,000 queued child runs
    (20 ms each), so the job ends within seconds."""
    proc = _job(store, "ctrl-c", "ctrl-c", children=2000, start_new_session=True)
    run_id = proc.stdout.readline().split()[0]
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 10.0, err
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert _status(store, run_id) == "KILLED"
    assert MlflowClient(store).get_run(run_id).data.tags["dse.error"] == "KeyboardInterrupt"
    assert _children(store, run_id) < 2000


# --------------------------------------------------------------------------- Hydra multiruns


def _write_app(root: Path) -> None:
    (root / "conf").mkdir(parents=True)
    shutil.copytree(CONF_TRACKING_DIR, root / "conf" / "tracking")
    (root / "conf" / "config.yaml").write_text(CONFIG)
    (root / "app.py").write_text(APP)


def _sweep(root: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ENV_SWEEP_RUN_ID)}
    return subprocess.run(
        [sys.executable, "app.py", "-m", "x=1,2,3", f"tracking.uri={uri}", *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _sweep_runs(uri: str, experiment: str) -> tuple[pd.Series, pd.DataFrame]:
    """The one sweep run of ``experiment`` and the job runs under it."""
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name(experiment).experiment_id], max_results=100
    )
    frame = pd.DataFrame(
        [
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "parent": r.data.tags.get("mlflow.parentRunId"),
                "kind": r.data.tags.get("dse.kind"),
                "y": r.data.metrics.get("y"),
                "error": r.data.tags.get("dse.error"),
            }
            for r in runs
        ]
    )
    sweeps = frame[frame.parent.isna()]
    assert len(sweeps) == 1, frame
    sweep = sweeps.iloc[0]
    assert sweep.kind == "sweep"
    jobs = frame[frame.parent == sweep.run_id]
    assert len(jobs) == 3 and len(frame) == 4, frame
    return sweep, jobs


def _check_store(db: Path) -> None:
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert len(con.execute("SELECT * FROM alembic_version").fetchall()) == 1


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_nests_jobs(tmp_path: Path, store: str, launcher: str) -> None:
    """Three jobs under one sweep run. joblib (two job processes at once) gets a brand-new store,
    which the launching process must create before the jobs; basic reuses the module's store."""
    _write_app(tmp_path)
    if launcher == "joblib":
        uri, extra = (
            f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}",
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        )
    else:
        uri, extra = store, []
    proc = _sweep(tmp_path, uri, f"tracking.experiment={launcher}", *extra)
    assert proc.returncode == 0, proc.stderr

    sweep, jobs = _sweep_runs(uri, launcher)
    assert sweep.status == "FINISHED" and (jobs.status == "FINISHED").all()
    assert sorted(jobs.y) == [10.0, 20.0, 30.0]
    (id_file,) = tmp_path.glob("multirun/*/*/mlflow_sweep_run_id")
    assert id_file.read_text().strip() == sweep.run_id
    assert "multirun.yaml" in {a.path for a in MlflowClient(uri).list_artifacts(sweep.run_id)}
    _check_store(Path(uri.removeprefix("sqlite:///")))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_sweep_with_failing_job(tmp_path: Path, store: str) -> None:
    """One job raises: its run FAILED with the error, the others FINISHED, the sweep run FAILED
    (Hydra re-raises the job's error before on_multirun_end; the atexit hook closes the sweep)."""
    _write_app(tmp_path)
    proc = _sweep(tmp_path, store, "fail_on=2", "tracking.experiment=failing")
    assert proc.returncode != 0 and "x=2 is bad" in proc.stderr

    sweep, jobs = _sweep_runs(store, "failing")
    assert sweep.status == "FAILED"
    by_y = jobs.set_index(jobs.y.fillna(0.0))
    assert list(by_y.sort_index().status) == ["FAILED", "FINISHED", "FINISHED"]
    assert by_y.loc[0.0, "error"] == "ValueError: x=2 is bad"
