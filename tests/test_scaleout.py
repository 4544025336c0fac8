"""Scale-out on real services: several workers share one Optuna study on a PostgreSQL server and
stop together at exactly ``n_trials`` (through the driver and through ``dse.search``), a sweep
logs to an ``mlflow server`` whose backend store is that PostgreSQL server, and a sweep runs as
jobs of a real single-node SLURM cluster (Hydra's submitit launcher) that log to that server.

The fixture starts a private PostgreSQL cluster (``initdb`` + ``pg_ctl``, as the ``postgres`` user
when run as root) on a free port in a temporary directory and stops it afterwards. ``.ci/run``
installs PostgreSQL from Debian's packages and sets ``DSE_REQUIRE_SERVICES``, so CI always runs these
tests (a missing server fails there); elsewhere a machine without the server binaries skips them,
saying so. The SLURM fixture does the same with Debian's ``slurm-wlm`` and ``munge``: ``munged``,
``slurmctld`` and ``slurmd`` started as root in a temporary directory on free ports.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import Counter
from pathlib import Path

import optuna
import pytest

from search.optuna_driver import open_storage


def _unavailable(reason: str) -> None:
    """Skip, or fail where the services are required (``.ci/run`` sets ``DSE_REQUIRE_SERVICES``)."""
    if os.environ.get("DSE_REQUIRE_SERVICES"):
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable("PostgreSQL server binaries not found (.ci/run installs them with apt-get)")
    root = Path(tempfile.mkdtemp(prefix="dse-pg-"))  # not under pytest's root-only tmp folders
    data, port = root / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        if subprocess.run(["id", "postgres"], capture_output=True).returncode:
            _unavailable("no 'postgres' user to run the server as")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([*as_user, initdb, "-D", str(data), "-U", "dse", "--auth=trust"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-w", "start", "-l", str(root / "log")])
    run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "dse",
            "-d",
            "postgres",
            "-c",
            "CREATE DATABASE optuna",
        ]
    )
    yield f"postgresql+psycopg://dse@127.0.0.1:{port}/optuna"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


WORKER = textwrap.dedent(
    """
    import sys, time
    from search.optuna_driver import optuna_search

    def evaluate(p):
        time.sleep(0.02)
        return {"objective": (p["x"] - 3) ** 2, "feasible": True}

    optuna_search({"x": list(range(10))}, evaluate, n_trials=40, storage=sys.argv[1], study_name=sys.argv[2],
                  seed=int(sys.argv[3]), pareto_axes=("objective", "objective"))
    """
)


def _states(url: str, name: str) -> Counter:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def test_four_workers_stop_together_at_exactly_n_trials(postgres_url: str) -> None:
    """Four processes on one PostgreSQL study: counting the trials and creating the next one happen
    under one advisory lock, so the study ends with exactly 40 COMPLETE trials, none extra."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, "four", str(seed)]) for seed in range(4)
    ]
    assert all(p.wait(300) == 0 for p in procs)
    assert _states(postgres_url, "four") == Counter({"COMPLETE": 40})


def test_dse_search_workers_share_a_postgres_study(postgres_url: str, tmp_path: Path) -> None:
    """The README's scale-out command, twice at once with different seeds: one study, exactly 200
    trials. Its best design matches one worker's 200 trials within the sampler's noise — measured on
    this space, one worker lands 0 %, 3.7 % and 13.6 % above the grid optimum for seeds 5, 4 and 1,
    two workers 0 % for seeds (1, 2) and (3, 4); allowed: 15 % — and neither beats the grid's
    exhaustive optimum of the same space."""
    space = ["+experiment=gpu_cluster", "progress=false", "tracking=none", "format=json",
             "parallelism.tp=[1,2,4,8]", "parallelism.pp=[1,2,4]"]  # fmt: skip
    search = [sys.executable, "-m", "dse.search", *space, "search=optuna", "search.n_trials=200"]
    shared = [*search, f"search.storage={postgres_url}", "search.study_name=shared"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen([*shared, f"seed={seed}"], cwd=tmp_path, **pipes) for seed in (1, 2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    assert _states(postgres_url, "shared") == Counter({"COMPLETE": 200})

    def best_step_s(*args: str) -> float:
        proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["metrics"]["step_time_s"]

    together = best_step_s(*shared, "seed=1")  # the full study: resumes with no trial left to run
    alone = best_step_s(*search, "seed=1", "search.study_name=alone")
    optimum = best_step_s(sys.executable, "-m", "dse.search", *space)
    assert together >= optimum * (1 - 1e-6) and alone >= optimum * (1 - 1e-6)
    assert together <= 1.15 * optimum and alone <= 1.15 * optimum


@pytest.fixture(scope="module")
def mlflow_server(postgres_url: str):
    """``mlflow server`` with the PostgreSQL backend store and a local artifact root, on a free port."""
    database = postgres_url.rsplit("/", 1)[0] + "/mlflow"
    server = postgres_url.split("@", 1)[1].split("/", 1)[0]
    host, port = server.split(":")
    psql = ["psql", "-h", host, "-p", port, "-U", "dse", "-d", "postgres"]
    subprocess.run([*psql, "-c", "CREATE DATABASE mlflow"], check=True, capture_output=True)
    artifacts = Path(tempfile.mkdtemp(prefix="dse-mlflow-"))
    http_port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(http_port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.read().strip() == b"OK":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            _unavailable("mlflow server did not start")
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    shutil.rmtree(artifacts, ignore_errors=True)


def test_sweep_logs_to_an_mlflow_server_on_postgres(mlflow_server: str, tmp_path: Path) -> None:
    """A two-job sweep against the tracking server: one sweep parent run, two FINISHED job runs under
    it with the shared metrics and their artifacts, and the compare query (search_runs on a metric)
    returns both jobs ordered."""
    from mlflow.tracking import MlflowClient

    args = [
        *(sys.executable, "-m", "dse.search", "-m", "+experiment=gpu_cluster", "model=llama3_8b"),
        *(
            "hardware=a100_80gb,h100_sxm",
            "num_devices=8",
            "workload.seq_len=2048",
            "workload.global_batch=64",
        ),
        *("parallelism.tp=[1,2]", "parallelism.pp=[1]", "parallelism.cp=[1]", "parallelism.vpp=[1]"),
        *("parallelism.microbatch=[1]", "parallelism.zero_stage=[1]", "search.top_k=2", "progress=false"),
        f"tracking.uri={mlflow_server}",
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("dse").experiment_id
    runs = client.search_runs([experiment])
    kinds = Counter(r.data.tags.get("dse.kind") for r in runs)
    assert kinds["sweep"] == 1 and kinds["job"] == 2 and kinds["child"] == 4
    jobs = client.search_runs([experiment], "tags.`dse.kind` = 'job'", order_by=["metrics.step_time_s ASC"])
    assert [j.info.status for j in jobs] == ["FINISHED", "FINISHED"]
    assert jobs[0].data.metrics["step_time_s"] <= jobs[1].data.metrics["step_time_s"]
    artifacts = {a.path for a in client.list_artifacts(jobs[0].info.run_id)}
    assert {"config.yaml", "results.csv", "best.yaml"} <= artifacts


@pytest.fixture(scope="module")
def slurm_conf():
    """A single-node SLURM cluster: ``munged``, ``slurmctld`` and ``slurmd`` (Debian's slurm-wlm and
    munge) in a temporary directory on free ports; yields the path for ``SLURM_CONF``."""
    daemons = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in
               ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")}  # fmt: skip
    if not all(daemons.values()):
        _unavailable("SLURM or munge not found (.ci/run installs slurm-wlm and munge with apt-get)")
    if os.geteuid() != 0:
        _unavailable("the private SLURM cluster runs its daemons as root")
    root = Path(tempfile.mkdtemp(prefix="dse-slurm-"))
    root.chmod(0o755)  # munged requires its socket's directory to be reachable by all
    key, sock = root / "munge.key", root / "munge.sock"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    subprocess.run(
        [daemons["munged"], "--force", f"--socket={sock}", f"--key-file={key}",
         f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"],
        check=True, capture_output=True,
    )  # fmt: skip
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2  # half the machine
    (root / "state").mkdir()
    (root / "spool").mkdir()
    conf = root / "slurm.conf"
    conf.write_text(textwrap.dedent(f"""\
        ClusterName=dsetest
        SlurmctldHost={host}(127.0.0.1)
        SlurmctldPort={_free_port()}
        SlurmdPort={_free_port()}
        AuthType=auth/munge
        AuthInfo=socket={sock}
        CredType=cred/munge
        SlurmUser=root
        SlurmdUser=root
        StateSaveLocation={root}/state
        SlurmdSpoolDir={root}/spool
        SlurmctldPidFile={root}/slurmctld.pid
        SlurmdPidFile={root}/slurmd.pid
        SlurmctldLogFile={root}/slurmctld.log
        SlurmdLogFile={root}/slurmd.log
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        SchedulerType=sched/backfill
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core
        MpiDefault=none
        ReturnToService=2
        NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
        PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
        """))  # fmt: skip
    env = os.environ | {"SLURM_CONF": str(conf)}
    quiet = {
        "env": env,
        "start_new_session": True,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
    }
    procs = [
        subprocess.Popen([daemons["slurmctld"], "-D", "-i", "-f", str(conf)], **quiet),
        subprocess.Popen([daemons["slurmd"], "-D", "-N", host, "-f", str(conf)], **quiet),
    ]
    deadline = time.monotonic() + 60
    while True:
        state = subprocess.run([daemons["sinfo"], "-h", "-o", "%T"], env=env, capture_output=True, text=True)
        if state.stdout.strip() == "idle":
            break
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            _unavailable(f"SLURM did not start: {(root / 'slurmctld.log').read_text()[-500:]}")
        time.sleep(0.5)
    yield str(conf)
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
    subprocess.run([daemons["munged"], "--stop", f"--socket={sock}"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_sweep_runs_as_slurm_jobs_that_log_to_the_mlflow_server(
    slurm_conf: str, mlflow_server: str, tmp_path: Path
) -> None:
    """``-m hydra/launcher=submitit_slurm``: each sweep job runs as a SLURM job (its own job id, in a
    process that SLURM started) and logs its run to the shared MLflow server under the sweep run;
    the combined table is printed when the jobs are done, and the results equal a local run's."""
    from mlflow.tracking import MlflowClient

    common = [
        "model=llama3_8b", "num_devices=8", "workload.seq_len=2048", "workload.global_batch=64",
        "parallelism.tp=[1,2]", "parallelism.pp=[1]", "parallelism.cp=[1]", "parallelism.vpp=[1]",
        "parallelism.microbatch=[1]", "parallelism.zero_stage=[1]", "progress=false",
    ]  # fmt: skip
    args = [
        sys.executable, "-m", "dse.search", "-m", *common, "hardware=a100_80gb,h100_sxm",
        "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=10",
        "hydra.launcher.mem_gb=1", f"tracking.uri={mlflow_server}", "tracking.experiment=slurm",
    ]  # fmt: skip
    env = os.environ | {"SLURM_CONF": slurm_conf}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "sweep over hardware: 2 jobs" in proc.stdout
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("slurm").experiment_id
    (sweep,) = client.search_runs([experiment], "tags.`dse.kind` = 'sweep'")
    jobs = client.search_runs([experiment], "tags.`dse.kind` = 'job'")
    assert sorted(j.data.tags["dse.hardware"] for j in jobs) == ["a100_80gb", "h100_sxm"]
    slurm_ids = {j.data.tags["dse.slurm_job_id"] for j in jobs}
    assert len(slurm_ids) == 2 and all(i.isdigit() for i in slurm_ids)
    for job in jobs:
        assert job.info.status == "FINISHED" and job.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    assert sweep.info.status == "FINISHED"
    local = subprocess.run(
        [sys.executable, "-m", "dse.search", *common, "hardware=h100_sxm", "tracking=none", "format=json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    step_s = next(j.data.metrics["step_time_s"] for j in jobs if j.data.tags["dse.hardware"] == "h100_sxm")
    assert step_s == pytest.approx(json.loads(local.stdout)["metrics"]["step_time_s"])
