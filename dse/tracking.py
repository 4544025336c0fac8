"""MLflow tracking for ``dse`` runs: one run per job, nested under one parent run per sweep.

Configured by the ``tracking`` config group (``conf/tracking/``)::

    enabled: true      # false (tracking=none): every call here is a no-op, nothing is written
    uri: null          # null: $MLFLOW_TRACKING_URI if set, else sqlite:///<launch dir>/mlflow.db
    experiment: dse

A Hydra app registers :class:`SweepCallback` so that a multirun gets a **sweep parent run**,
created in the launching process before any job starts::

    hydra:
      callbacks:
        mlflow_sweep:
          _target_: dse.tracking.SweepCallback

and the task wraps its work in :class:`JobRun`::

    with JobRun(cfg, name="gpu_cluster") as run:
        result = driver(space, cost_fn, budget)
        run.log_metrics(result.metrics)
        run.log_table_csv(result.table, "table.csv")

Why things are done the way they are (MLflow 3.17, Hydra 1.3.8):

* URIs are made absolute: Hydra jobs and joblib workers must all reach the same file.
* The calls to MLflow itself are in :mod:`dse.mlflow_store`; a single run makes them in the
  tracking process (:mod:`dse.tracking_process`), beside the job, because importing MLflow takes
  1.5–2 s of every command.
* Hydra calls ``on_multirun_end`` only when no job failed (a failed job's exception is re-raised
  first), so the sweep run is also closed by an ``atexit`` hook, as FAILED.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from costmodels.errors import ConfigError
from dse import tracking_process
from dse.mlflow_store import (
    ERROR_TAG,
    KIND_TAG,
    MAX_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MLFLOW_SECONDS,
    PARENT_TAG,
    Store,
    context_tags,
    ensure_store,
    error_line,
    experiment_id,
    sqlite_path,
)
from dse.tracking_process import TrackingProcess

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ENV_SWEEP_RUN_ID = "DSE_MLFLOW_SWEEP_RUN_ID"
SWEEP_RUN_ID_FILE = "mlflow_sweep_run_id"
KIND_LABEL = "dse.label"  # a sweep job's values of the swept keys ("a100_80gb / llama3_8b")


# --------------------------------------------------------------------------- store and URI


def resolve_uri(
    cfg_tracking: Mapping[str, Any] | None, cwd: str | os.PathLike[str] | None = None
) -> str | None:
    """The absolute tracking URI for a ``tracking`` config node; None when tracking is off.

    ``uri: null`` → ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``; a relative
    SQLite path or a bare file path is taken from ``cwd`` (default: the directory the user launched
    from); any other URI (``http://host:5000``, ``databricks``) is returned as given.
    """
    if cfg_tracking is None or not cfg_tracking.get("enabled", False):
        return None
    base = Path(cwd) if cwd is not None else launch_dir()
    uri = cfg_tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(base / 'mlflow.db').resolve()}"
    uri = str(uri)
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        if path and not path.startswith((":memory:", "/")):
            path = str((base / path).resolve())
        return f"sqlite:///{path}{sep}{query}"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return uri
    return f"sqlite:///{(base / uri).resolve()}"  # a bare path: file stores are gone since MLflow 3.13


def prestart(cfg: Mapping[str, Any]) -> None:
    """Start the tracking process of a single run's job now, when tracking is on and MLflow is not
    imported here: it imports MLflow and opens the store while the job's modules load and its
    config is checked; the job's :class:`JobRun` takes it over (unused, it ends with this process)."""
    uri = resolve_uri(cfg.get("tracking"), cwd=Path.cwd())
    if uri is not None and "mlflow" not in sys.modules:
        tracking_process.prestart(uri)


def launch_dir() -> Path:
    """The directory the user launched from (Hydra's ``runtime.cwd``; outside Hydra the cwd)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


SQLITE_HEADER = b"SQLite format 3\x00"
MIN_FREE_BYTES = 16 * 2**20  # an SQLite store with a run's artifacts needs a few MiB at least
HEALTH_TIMEOUT_S = 5.0


def _is_server(uri: str) -> bool:
    """A tracking server's URL, not a local store."""
    return uri.startswith(("http://", "https://"))


def check_store(uri: str | None) -> None:
    """Fail fast on a tracking store that cannot work, before anything runs: a ``sqlite:///``
    path that is a directory, not an SQLite file, in a directory that cannot be created or written
    (read-only, ``/proc``), or on a disk with under 16 MiB free; an ``http(s)://`` server that does
    not answer ``/health`` within 5 s. Raises :class:`ConfigError` naming the URI and the cause.
    MLflow's own HTTP retries (minutes) are cut to 2 retries of at most 10 s each."""
    if uri is None:
        return
    fix = "set tracking.uri=sqlite:///<writable dir>/mlflow.db, or tracking=none"
    db = sqlite_path(uri)
    if db is not None:
        if db.is_dir():
            raise ConfigError(f"tracking store {uri}: {db} is a directory, not a database file; {fix}")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=db.parent, prefix=".dse-write-check-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(
                f"tracking store {uri}: cannot write in {db.parent}: {exc.strerror}; {fix}"
            ) from None
        if db.exists() and db.stat().st_size > 0:
            with db.open("rb") as fh:
                if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    raise ConfigError(f"tracking store {uri}: {db} is not an SQLite database; {fix}")
        free = shutil.disk_usage(db.parent).free
        if free < MIN_FREE_BYTES:
            raise ConfigError(
                f"tracking store {uri}: only {free / 2**20:.1f} MiB free on the disk of {db.parent}; {fix}"
            )
        return
    if _is_server(uri):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=HEALTH_TIMEOUT_S) as response:
                answer = response.read(64).decode(errors="replace").strip()
        except urllib.error.HTTPError as exc:
            answer = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            answer = str(getattr(exc, "reason", exc))
        if answer != "OK":
            raise ConfigError(
                f"cannot reach the MLflow tracking server {uri} (GET /health: {answer}); start it, or set "
                "tracking.uri to a reachable server, or tracking=none"
            )


# --------------------------------------------------------------------------- value conversion


def flatten_config(cfg: Mapping[str, Any]) -> dict[str, str]:
    """``a.b.c`` → value string for every leaf of a (resolved) config; lists as JSON strings.

    The ``hydra`` node is left out. Values are truncated to MLflow's parameter length limit;
    characters MLflow rejects in a key (it allows ``\\w / . - : space``) become ``_``.
    """
    container = _plain(cfg)
    out: dict[str, str] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if not prefix and key == "hydra":
                continue
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                text = json.dumps(value, default=str) if isinstance(value, list | dict) else str(value)
                name = re.sub(r"[^/\w.\- :]", "_", f"{prefix}{key}")[:MAX_KEY_LENGTH]
                out[name] = text[:MAX_PARAM_VAL_LENGTH]

    walk(container, "")
    return out


def _plain(obj: Any) -> Any:
    """Plain Python containers and numbers (for YAML/JSON) from configs and numpy values."""
    if isinstance(obj, DictConfig | ListConfig):
        try:
            obj = OmegaConf.to_container(obj, resolve=True)
        except Exception:  # e.g. ${hydra:...} outside a Hydra app: keep the interpolations
            obj = OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _number(key: str, value: Any) -> float:
    """A metric value as float (bools, numpy and JAX scalars, size-1 arrays)."""
    try:
        arr = np.asarray(value)
        if arr.size == 1 and arr.dtype.kind in "biuf":
            return float(arr.reshape(()).item())
    except Exception:
        pass
    raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__} {value!r:.60}")


def _metric_items(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(name, value) for every number in ``metrics``; nested mappings as ``a.b``; None skipped."""
    for key, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            yield from _metric_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", _number(f"{prefix}{key}", value)


def _outcome(exc: BaseException | None) -> tuple[str, str | None]:
    """(MLflow run status, error line) for how a ``with`` block ended."""
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return "FINISHED", None
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", "KeyboardInterrupt"
    return "FAILED", error_line(exc)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- sweep parent run


def _override_tags(overrides: Sequence[str]) -> dict[str, str]:
    """``dse.overrides`` (the command line) and one ``override.<key>`` tag per override."""
    tags = {"dse.overrides": " ".join(overrides)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep:
            tags[f"override.{key.lstrip('+~')}"] = value
    return tags


def sweep_dir(hydra: Any) -> Path:
    """A multirun's directory from Hydra's config node (``config.hydra`` in a callback,
    ``HydraConfig.get()`` in a job): ``hydra.sweep.dir`` under the launch directory."""
    return Path(hydra.runtime.cwd, str(hydra.sweep.dir))


def sweep_parent_run_id() -> str | None:
    """The sweep run a job nests under: ``<sweep dir>/mlflow_sweep_run_id`` in a Hydra multirun
    job, else ``$DSE_MLFLOW_SWEEP_RUN_ID`` (outside Hydra); None in a Hydra single run."""
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        path = sweep_dir(hc) / SWEEP_RUN_ID_FILE
        if path.is_file():
            return path.read_text().strip() or None
    return os.environ.get(ENV_SWEEP_RUN_ID) or None


def swept_keys(directory: Path) -> list[str]:
    """The keys a multirun sweeps over (``hardware=a,b``, ``range(...)``), in command-line order,
    read from the sweep's ``multirun.yaml``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = directory / "multirun.yaml"
    if not path.is_file():
        return []
    overrides = [str(o) for o in OmegaConf.load(path).hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return list(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))


def sweep_label() -> str | None:
    """In a multirun job, its values of the swept keys (``a100_80gb / llama3_8b``); else None."""
    if not _multirun():
        return None
    hc = HydraConfig.get()
    values = {}
    for item in hc.overrides.task:
        key, _, value = str(item).partition("=")
        values[key.lstrip("+~")] = value  # the last one wins, as in Hydra
    swept = swept_keys(sweep_dir(hc))
    return " / ".join(values[k] for k in swept if k in values) or f"job {hc.job.num}"


class SweepCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun; creates the store before any job. (A
    single run's job creates the store itself, in its tracking process: nothing here imports MLflow.)

    Register it in the app's primary config::

        hydra:
          callbacks:
            mlflow_sweep:
              _target_: dse.tracking.SweepCallback
    """

    def __init__(self) -> None:
        self.uri: str | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """In the launching process: create the store and experiment, start the sweep run, and
        publish its id in ``<sweep dir>/mlflow_sweep_run_id`` and ``$DSE_MLFLOW_SWEEP_RUN_ID``."""
        from mlflow.tracking import MlflowClient

        tracking = config.get("tracking")
        uri = resolve_uri(tracking, cwd=config.hydra.runtime.cwd)
        if uri is None:
            return
        ensure_store(uri)
        client = MlflowClient(uri)
        exp_id = experiment_id(client, str(tracking.experiment), uri)
        directory = sweep_dir(config.hydra)
        overrides = [str(o) for o in config.hydra.overrides.task]
        tags = {KIND_TAG: "sweep", "dse.sweep_dir": str(directory), **_override_tags(overrides)}
        name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        run = client.create_run(exp_id, run_name=name, tags=context_tags(tags))
        self.uri, self.run_id, self.experiment_id, self.sweep_dir = uri, run.info.run_id, exp_id, directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SWEEP_RUN_ID_FILE).write_text(run.info.run_id + "\n")
        os.environ[ENV_SWEEP_RUN_ID] = run.info.run_id
        atexit.register(self._close_aborted)
        log.info("MLflow sweep run %s (%s) in %s", name, run.info.run_id, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """All jobs returned: the sweep run is FINISHED, or FAILED if a job run failed."""
        self._close(aborted=False)

    def _close_aborted(self) -> None:
        """``atexit``: the sweep stopped early (a job raised, or the process is exiting)."""
        try:
            self._close(aborted=True)
        except Exception as exc:  # at exit: report, do not print a traceback over the real error
            log.warning("could not close the MLflow sweep run: %s", exc)

    def _close(self, aborted: bool) -> None:
        if self.run_id is None or self.uri is None:
            return
        from mlflow.tracking import MlflowClient

        run_id, self.run_id = self.run_id, None
        atexit.unregister(self._close_aborted)
        if os.environ.get(ENV_SWEEP_RUN_ID) == run_id:
            del os.environ[ENV_SWEEP_RUN_ID]
        client = MlflowClient(self.uri)
        failed = 0
        for child in _search_all(
            client,
            str(self.experiment_id),
            f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status != 'FINISHED'",
        ):
            failed += 1
            if child.info.status == "RUNNING":  # its process died without closing it
                client.set_tag(child.info.run_id, ERROR_TAG, "the job ended without closing its run")
                client.set_terminated(child.info.run_id, "FAILED")
        if self.sweep_dir is not None and (self.sweep_dir / "multirun.yaml").is_file():
            client.log_artifact(run_id, str(self.sweep_dir / "multirun.yaml"))
        _log_sweep_pareto(client, str(self.experiment_id), run_id)
        if aborted:
            client.set_tag(run_id, ERROR_TAG, "the sweep stopped early (a job raised or the process exited)")
        client.set_tag(run_id, "dse.failed_jobs", str(failed))
        client.set_terminated(run_id, "FAILED" if failed or aborted else "FINISHED")


def _log_sweep_pareto(client: MlflowClient, exp_id: str, run_id: str) -> None:
    """A ``pareto.png`` on the sweep run: tokens/s versus power of every finished job (e.g. a sweep over
    a power cap), the non-dominated ones joined (more tokens/s, less power)."""
    from search.base import pareto_front

    jobs = [
        r
        for r in _search_all(
            client, exp_id, f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'FINISHED'"
        )
        if {"power_w", "tokens_per_s"} <= set(r.data.metrics)
    ]
    if len(jobs) < 2:
        return
    power = [r.data.metrics["power_w"] for r in jobs]
    rate = [r.data.metrics["tokens_per_s"] for r in jobs]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(power, rate, maximize=(False, True))
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(power, rate, label="jobs of the sweep")
    ax.plot([power[i] for i in front], [rate[i] for i in front], "r.-", label="Pareto front")
    for r, x, y in zip(jobs, power, rate, strict=True):
        ax.annotate(r.info.run_name or "", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("power_w")
    ax.set_ylabel("tokens_per_s")
    ax.legend()
    fig.tight_layout()
    client.log_figure(run_id, fig, "pareto.png")
    plt.close(fig)


def _search_all(client: MlflowClient, exp_id: str, filter_string: str) -> Iterator[Any]:
    """Every run of ``exp_id`` matching ``filter_string`` (all pages)."""
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


# --------------------------------------------------------------------------- job run


def write_csv(table: Mapping[str, Any], path: Path) -> None:
    """A column table (equal-length 1-D arrays) as CSV at ``path``, header = column names."""
    columns = {k: np.asarray(v).reshape(-1).tolist() for k, v in table.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"table columns differ in length: { {k: len(v) for k, v in columns.items()} }")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))


class JobRun:
    """The MLflow run of one job, as a context manager; a no-op when tracking is disabled.

    On entry: a run in ``cfg.tracking.experiment``, nested under the sweep run when there is one,
    with the flattened resolved config as params and ``config.yaml`` as an artifact. On exit:
    FINISHED; on an exception (``SystemExit`` with a non-zero code included) FAILED with the tag
    ``dse.error`` and the traceback in ``error.txt``, and the exception propagates;
    ``KeyboardInterrupt`` gives KILLED. Metric names are the caller's, logged as given.

    Where (``process=None``): in a :class:`TrackingProcess`, so that MLflow's import and the store's
    writes run beside the job, unless MLflow is imported here already or this is a multirun's job
    (a launcher's worker process runs many jobs and imports MLflow once); then here.
    Either way the calls are the same :class:`Store` calls in the same order, and leaving the
    ``with`` block waits until all of them are done. Artifacts are written once to a private staging
    directory (and to ``mirror_dir``) and logged from there, so a file changed later does not change
    what was logged.
    """

    def __init__(
        self,
        cfg: Mapping[str, Any] | None,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        mirror_dir: Path | None = None,
        process: bool | None = None,
    ) -> None:
        tracking = cfg.get("tracking") if cfg is not None else None
        self.uri = resolve_uri(tracking)
        self.experiment = str(tracking.get("experiment", "dse")) if tracking is not None else "dse"
        self.name = name
        self._cfg = cfg
        self._tags = dict(tags or {})
        self._process = process
        self._store: Store | None = None  # the run is made in this process
        self._worker: TrackingProcess | None = None  # ... or in the tracking process
        self._ids: tuple[str, str] | None = None
        self._staging: Path | None = None
        self.mirror_dir = mirror_dir  # artifacts are also written here (tracking on or off)

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    @property
    def keeps_artifacts(self) -> bool:
        """Whether logged artifacts go anywhere (MLflow, or the mirror directory): else skip drawing them."""
        return self.enabled or self.mirror_dir is not None

    @property
    def run_id(self) -> str | None:
        """The run's id (None when tracking is off); waits for the tracking process to create it."""
        ids = self._run_ids()
        return ids[0] if ids else None

    @property
    def experiment_id(self) -> str | None:
        ids = self._run_ids()
        return ids[1] if ids else None

    def _run_ids(self) -> tuple[str, str] | None:
        if self._ids is None and self._worker is not None:
            start = time.perf_counter()
            try:
                self._ids = self._worker.wait_started()
            finally:
                MLFLOW_SECONDS[0] += time.perf_counter() - start
        return self._ids

    @property
    def _open(self) -> bool:
        return self._store is not None or self._worker is not None

    def _call(self, method: str, *args: Any) -> None:
        """One :class:`Store` call, here or in the tracking process; its wall time counts as MLflow's."""
        start = time.perf_counter()
        try:
            if self._worker is not None:
                self._worker.call(method, *args)
            elif self._store is not None:
                getattr(self._store, method)(*args)
        finally:
            MLFLOW_SECONDS[0] += time.perf_counter() - start

    def __enter__(self) -> JobRun:
        if self.uri is None:
            return self
        name, tags = self._name_and_tags()
        argv0 = sys.argv[0] if sys.argv else ""
        here = "mlflow" in sys.modules or _multirun()
        if self._process is False or (self._process is None and here):
            self._store = Store()
            before, start = MLFLOW_SECONDS[0], time.perf_counter()
            try:
                self._ids = self._store.start(self.uri, self.experiment, name, tags, argv0)
            except BaseException:
                self._store = None
                raise
            finally:  # the whole start once (opening the store counts its own time too)
                MLFLOW_SECONDS[0] = before + time.perf_counter() - start
        else:
            self._worker = tracking_process.take()
            self._call("start", self.uri, self.experiment, name, tags, argv0)
        try:
            if self._cfg is not None:
                self.log_params(flatten_config(self._cfg))
                self.log_dict(_plain(self._cfg), "config.yaml")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._end(exc)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._open:
            try:
                self._end(exc)
            except Exception as err:
                if exc is None:
                    raise
                if err is not exc:  # not the tracking error the job already stopped on
                    log.warning("could not close MLflow run %s: %s", self._ids and self._ids[0], err)
        return False

    def _name_and_tags(self) -> tuple[str, dict[str, str]]:
        """Run name (in a multirun ``<name> · <swept values>`` unless the caller labelled it) and tags
        (kind, overrides, parent, label)."""
        tags: dict[str, str] = {KIND_TAG: "job", **self._tags}
        name = self.name or "job"
        if HydraConfig.initialized():
            hc = HydraConfig.get()
            name = self.name or str(hc.job.name)
            tags.update(_override_tags([str(o) for o in hc.overrides.task]))
            tags["dse.output_dir"] = str(hc.runtime.output_dir)
            if hc.mode == RunMode.MULTIRUN:
                tags["dse.job_num"] = str(hc.job.num)
                if KIND_LABEL not in tags:  # the caller's name does not say which job: add its values
                    tags[KIND_LABEL] = sweep_label() or str(hc.job.num)
                    name = f"{name} · {tags[KIND_LABEL]}"
        parent = sweep_parent_run_id()
        if parent:
            tags[PARENT_TAG] = parent
        return name, tags

    def _end(self, exc: BaseException | None) -> None:
        """Close the run with the status ``exc`` implies (FINISHED, FAILED or KILLED), after every
        call before it; then drop the staging directory."""
        status, error = _outcome(exc)
        try:
            if error is not None:
                with contextlib.suppress(Exception):
                    self._log_file_as(
                        lambda p: p.write_text("".join(traceback.format_exception(exc))), "error.txt"
                    )
            start = time.perf_counter()
            try:
                if self._worker is not None:
                    try:
                        self._worker.finish(status, error)
                    finally:
                        self._ids = self._ids or self._worker.started
                elif self._store is not None:
                    self._store.end(status, error)
            finally:
                MLFLOW_SECONDS[0] += time.perf_counter() - start
        finally:
            self._store = self._worker = None
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
                self._staging = None

    # ----------------------------------------------------------------------- logging

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Parameters (values as strings, truncated to MLflow's limit), 100 per request."""
        if self._open:
            self._call("log", _param_items(params), [])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numbers as metrics at ``step`` (default 0); nested mappings as ``a.b``; None skipped."""
        if not self._open:
            return
        now = _now_ms()
        self._call("log", [], [(k, v, now, step or 0) for k, v in _metric_items(metrics)])

    def log_trajectory(
        self, rows: Sequence[Mapping[str, Any]], step_key: str = "step", prefix: str = ""
    ) -> None:
        """Stepped metrics, one row per step: ``row[step_key]`` (else the row index) is the step,
        every other number is logged as ``prefix + key``."""
        if self._open and rows:
            self._call("log", [], _trajectory_items(rows, step_key, prefix))

    def child(
        self,
        name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, Any],
        step_rows: Sequence[Mapping[str, Any]] | None = None,
        step_key: str = "step",
    ) -> None:
        """A finished child run under this run (one Optuna trial, one restart, one top-k design)."""
        if not self._open:
            return
        now = _now_ms()
        items = [(k, v, now, 0) for k, v in _metric_items(metrics)]
        if step_rows:
            items += _trajectory_items(step_rows, step_key, "")
        self._call("child", name, _param_items(params), items)

    def _log_file_as(self, write: Callable[[Path], object], artifact_file: str, mirror: bool = True) -> None:
        """Write an artifact once with ``write(path)`` into the staging directory, copy it to the
        mirror directory, and log it at the run-relative path ``artifact_file``."""
        target = PurePosixPath(artifact_file)
        copy = Path(self.mirror_dir, artifact_file) if mirror and self.mirror_dir is not None else None
        if not self._open:
            if copy is not None:
                copy.parent.mkdir(parents=True, exist_ok=True)
                write(copy)
            return
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="dse-run-"))
            if self._worker is not None:  # removed by the tracking process if this one is killed
                self._worker.call("staging", str(self._staging))
        path = Path(tempfile.mkdtemp(dir=self._staging), target.name)
        write(path)
        if copy is not None:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
        parent = str(target.parent)
        self._call("artifact", str(path), None if parent == "." else parent)

    def log_file(self, path: str | os.PathLike[str]) -> None:
        """A file from disk as an artifact, under its own name (also copied to the mirror directory)."""
        source = Path(path)
        mirrored = Path(self.mirror_dir, source.name) if self.mirror_dir is not None else None
        inside = mirrored is not None and mirrored.resolve() == source.resolve()
        self._log_file_as(lambda p: shutil.copyfile(source, p), source.name, mirror=not inside)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact at the run-relative path ``artifact_file``."""
        self._log_file_as(lambda p: p.write_text(text), artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """A dict artifact, YAML for ``.yaml``/``.yml``, else JSON (numpy values made plain)."""
        if self.mirror_dir is None and not self._open:
            return
        plain = _plain(data)
        yaml_file = PurePosixPath(artifact_file).suffix in (".yaml", ".yml")
        self.log_text(_yaml(plain) if yaml_file else json.dumps(plain, indent=2, default=str), artifact_file)

    def log_table_csv(self, table: Mapping[str, Any], artifact_file: str) -> None:
        """A column table (equal-length 1-D arrays) as a CSV artifact, header = column names."""
        self._log_file_as(lambda p: write_csv(table, p), artifact_file)

    def log_figure(self, fig: Figure, artifact_file: str) -> None:
        """A matplotlib figure as an image artifact (PNG for ``.png``, 120 dpi)."""
        self._log_file_as(lambda p: fig.savefig(p, dpi=120), artifact_file)


def _multirun() -> bool:
    """Whether this is a job of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _param_items(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, value string) pairs, values truncated to MLflow's length limit."""
    return [(str(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]


def _trajectory_items(
    rows: Sequence[Mapping[str, Any]], step_key: str, prefix: str
) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) of every number of every row; the step is ``row[step_key]``,
    else the row index."""
    now, items = _now_ms(), []
    for i, row in enumerate(rows):
        step = int(_number(step_key, row[step_key])) if step_key in row else i
        values = {k: v for k, v in row.items() if k != step_key}
        items += [(k, v, now, step) for k, v in _metric_items(values, prefix)]
    return items


# --------------------------------------------------------------------------- where results are


def run_location(run: JobRun, out_dir: Path | None, files: Sequence[str]) -> dict[str, Any]:
    """Where a run's results are: the output directory and its files, the MLflow run and how to open it."""
    where: dict[str, Any] = {"output_dir": str(out_dir), "files": list(files)} if out_dir is not None else {}
    if run.enabled and run.run_id:
        where |= {
            "mlflow_run_id": run.run_id,
            "run_name": run.name,
            "experiment": run.experiment,
            "tracking_uri": run.uri,
            "open": open_command(str(run.uri), str(run.experiment_id), run.run_id),
            "runs_table": runs_table_address(str(run.uri), str(run.experiment_id)),
        }
    return where


def location_lines(where: Mapping[str, Any]) -> list[str]:
    """The lines that end a report: the MLflow run and how to open it, and the output directory."""
    lines = []
    if where.get("mlflow_run_id"):
        lines.append(
            f"MLflow: run {where['mlflow_run_id']} ('{where['run_name']}') in experiment "
            f"'{where['experiment']}' at {where['tracking_uri']}"
        )
        lines.append(f"  open: {where['open']}")
        lines.append(f"  all runs of the experiment: {where['runs_table']}")
    if where.get("output_dir"):
        lines.append(f"files: {where['output_dir']} ({', '.join(where['files'])})")
    return lines


LOCAL_UI = "http://127.0.0.1:5000"  # where ``mlflow ui`` serves by default


def _ui_base(uri: str) -> str:
    """The UI of a tracking URI: the server itself, or ``mlflow ui`` run locally on a store."""
    return uri.rstrip("/") if _is_server(uri) else LOCAL_UI


def open_command(uri: str, experiment_id: str, run_id: str) -> str:
    """How to look at a run: its page on a tracking server, or ``mlflow ui`` on a local store."""
    page = f"{_ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}"
    return page if _is_server(uri) else f"mlflow ui --backend-store-uri {uri}   then {page}"


def runs_table_address(uri: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs table (MLflow 3 otherwise opens its GenAI overview)."""
    return f"{_ui_base(uri)}/#/experiments/{experiment_id}/runs"


def _yaml(data: Any) -> str:
    """``data`` (plain values) as block-style YAML in insertion order, with PyYAML's C emitter where
    it is built (a dict of thousands of entries, such as auto_shard's placements, in a fraction of a
    second; OmegaConf.to_yaml builds a config node per entry first)."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)
