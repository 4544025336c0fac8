"""The MLflow calls of ``dse``: creating a store, finding an experiment, and :class:`Store`, every call
of one job run. Imported by the job's process and by the tracking process
(:mod:`dse.tracking_process`), so it imports neither Hydra nor MLflow at module level: MLflow is
imported by the first call that needs it.

Why things are done the way they are (MLflow 3.17):

* A brand-new SQLite store is created once, under an exclusive lock on its directory, before any
  job writes to it: several processes running MLflow's schema migrations at once corrupt it.
* Runs are driven through an explicit ``MlflowClient`` (not the fluent ``mlflow.start_run`` stack),
  so nothing here touches process-global MLflow state or another library's active run.
* Artifacts of an experiment created here for a SQLite store go next to the database
  (``<db dir>/mlruns/<experiment>``), not into whatever directory the first process ran in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costmodels.errors import ConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

try:  # POSIX only; elsewhere the store is created without a lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
ERROR_TAG = "dse.error"
KIND_TAG = "dse.kind"  # sweep | job | child

# MLflow's limits (mlflow.utils.validation), copied so that importing this module stays cheap.
MAX_PARAM_VAL_LENGTH = 6000
MAX_KEY_LENGTH = 250
MAX_TAG_VAL_LENGTH = 8000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

_READY: set[str] = set()  # URIs whose store this process has already checked


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other stores and in-memory SQLite."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].partition("?")[0]
    return Path(path) if path and not path.startswith(":memory:") else None


# Wall seconds this process spent on MLflow: importing it and opening the store (ensure_store),
# its client calls, or the waits for the tracking process that makes them; ``DSE_TIMING=1`` prints
# it (``dse._app``).
MLFLOW_SECONDS = [0.0]


def ensure_store(uri: str | None) -> None:
    """Create the store behind ``uri`` if it is a new SQLite DB (schema migrations), once.

    A sweep's launching process calls it before any job runs; a single run's tracking process
    calls it as it starts. Creating holds an exclusive lock on the DB's directory, so concurrent
    first calls wait instead of corrupting the schema; opening an existing DB takes a shared lock
    (it only waits for a creator).
    """
    if uri is None or uri in _READY:
        return
    db, start = sqlite_path(uri), time.perf_counter()
    if db is not None:
        from mlflow.tracking import MlflowClient

        db.parent.mkdir(parents=True, exist_ok=True)
        with _dir_lock(db.parent, exclusive=not db.exists()):
            MlflowClient(uri).get_experiment_by_name("Default")  # opens the store: runs migrations
    _READY.add(uri)
    MLFLOW_SECONDS[0] += time.perf_counter() - start


@contextlib.contextmanager
def _dir_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock (flock) on a directory, released on exit."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# the experiment holds model-development runs, not GenAI traces (MLflow 3's experiment kind); its UI
# (3.17) still opens on the GenAI overview: the runs table is at #/experiments/<id>/runs
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing (artifacts next to a SQLite DB, tagged as
    holding model-development runs)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        db = sqlite_path(uri)
        location = str(db.parent / "mlruns" / re.sub(r"[^\w.-]", "_", name)) if db else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException:  # created by another process meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise ConfigError(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore "
            f"--experiment-id {exp.experiment_id}`) or pass tracking.experiment=<another name>"
        )
    return exp.experiment_id


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message``, within MLflow's tag length."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:MAX_TAG_VAL_LENGTH]


def context_tags(extra: Mapping[str, str], argv0: str | None = None) -> dict[str, str]:
    """MLflow's default run tags (user, source, git commit) plus ``extra``; the source is the
    command ``argv0`` (default: this process's), which MLflow reads from ``sys.argv[0]``."""
    from mlflow.tracking.context import registry

    own = sys.argv[:1]
    try:
        if argv0 is not None:
            sys.argv[:1] = [argv0]
        tags = dict(registry.resolve_tags())
    except Exception as exc:  # a broken context provider must not stop the run
        log.warning("mlflow context tags unavailable: %s", exc)
        tags = {}
    finally:
        sys.argv[:1] = own
    tags.update({k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in extra.items()})
    return tags


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class TrackingError(RuntimeError):
    """The tracking store refused a call or the tracking process ended: the run could not be logged."""


class Store:
    """Every MLflow call of one job run. :class:`JobRun` prepares plain values (strings, numbers,
    files) and calls these methods in this process, or sends them to the tracking process
    (:mod:`dse.tracking_process`), which calls the same methods in the same order."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.exp_id: str | None = None

    def start(
        self, uri: str, experiment: str, name: str, tags: dict[str, str], argv0: str
    ) -> tuple[str, str]:
        """Open the store (created once, under a lock), find or create the experiment, create the run;
        its context tags (user, source, git commit) are those of the command ``argv0``."""
        from mlflow.tracking import MlflowClient

        ensure_store(uri)
        self.client = client = MlflowClient(uri)
        self.exp_id = experiment_id(client, experiment, uri)
        run = client.create_run(self.exp_id, run_name=name, tags=context_tags(tags, argv0))
        self.run_id = run.info.run_id
        return self.run_id, self.exp_id

    def log(
        self,
        params: Sequence[tuple[str, str]],
        metrics: Sequence[tuple[str, float, int, int]],
        run_id: str | None = None,
    ) -> None:
        """Parameters (key, value), 100 per request, and metrics (key, value, timestamp ms, step),
        1,000 per request, on the run (or on ``run_id``)."""
        from mlflow.entities import Metric, Param

        assert self.client is not None
        run_id = run_id or self.run_id
        for chunk in _chunks([Param(k, v) for k, v in params], MAX_PARAMS_PER_BATCH):
            self.client.log_batch(str(run_id), params=chunk)
        for chunk in _chunks([Metric(*m) for m in metrics], MAX_METRICS_PER_BATCH):
            self.client.log_batch(str(run_id), metrics=chunk)

    def child(
        self, name: str, params: Sequence[tuple[str, str]], metrics: Sequence[tuple[str, float, int, int]]
    ) -> str:
        """A finished child run under the run: created, logged and closed (FAILED if logging failed)."""
        assert self.client is not None
        tags = {PARENT_TAG: str(self.run_id), KIND_TAG: "child"}
        child_id = self.client.create_run(str(self.exp_id), run_name=name, tags=tags).info.run_id
        try:
            self.log(params, metrics, run_id=child_id)
        except BaseException as exc:
            self.client.set_tag(child_id, ERROR_TAG, error_line(exc))
            self.client.set_terminated(child_id, "FAILED")
            raise
        self.client.set_terminated(child_id, "FINISHED")
        return child_id

    def artifact(self, path: str, artifact_dir: str | None) -> None:
        """The file ``path`` as an artifact under ``artifact_dir`` (None: at the top)."""
        assert self.client is not None
        self.client.log_artifact(str(self.run_id), path, artifact_dir)

    def end(self, status: str, error: str | None) -> None:
        """Close the run with ``status``; a failure's one-line ``error`` as the ``dse.error`` tag."""
        assert self.client is not None
        if error is not None:
            self.client.set_tag(str(self.run_id), ERROR_TAG, error)
        self.client.set_terminated(str(self.run_id), status)
