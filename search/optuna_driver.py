"""Black-box search with Optuna ≥ 4, driven directly (ask/tell), with shared, resumable studies.

Samplers: multivariate TPE (Bergstra et al. 2011, "Algorithms for hyper-parameter optimization";
Falkner et al. 2018, BOHB) so correlated knobs are modelled jointly, MOTPE for several objectives
(Ozaki et al. 2020), NSGA-II (Deb et al. 2002, "A fast and elitist multiobjective genetic algorithm"),
random search as a baseline. Infeasibility is told the documented way, ``Trial.set_constraint``
(Optuna 5; values ≤ 0 feasible: a ``feasible`` constraint from the evaluation, then the caller's),
which TPE and NSGA-II use; Optuna 4 gets the same values through ``constraints_func``. The objective
told is always the real one; the answer is the best *feasible* trial.

Storages: memory (``None``), a journal file (path ending ``.log``/``.journal``; 4× faster than SQLite
for local workers, DESIGN.md), ``redis://``, or an RDB URL (``sqlite:///abs/path.db``, ``postgresql://``
for workers on many machines). ``n_trials`` is what the *study* should hold, so a resumed study runs
only the missing trials and workers sharing one stop at exactly ``n_trials``: Optuna's
``MaxTrialsCallback`` counts only after a trial ends (concurrent workers overshoot), so here counting
and creating the next trial happen under one lock — a thread lock plus ``flock`` on
``<storage file>.trials.lock`` for file-backed storages, and a PostgreSQL advisory lock for workers
on several machines sharing a PostgreSQL database (other network databases may overshoot by one
trial per worker).

Faults: each trial records the ``host:pid`` of the process running it, and in an RDB storage
(workers on many hosts) a heartbeat every 30 s. A study opened again first marks FAIL the RUNNING
trials whose process on this host is gone (``kill -9``, a crash) and, in an RDB storage, those whose
heartbeat stopped 120 s ago on any host; failed trials do not count towards ``n_trials``, so they
are run again: a resumed study ends with exactly ``n_trials`` finished trials. A trial is created
and tagged under the trial lock, so a RUNNING trial without a tag, seen under that lock, is one whose
worker died in between: it is marked FAIL too. (A journal file's RUNNING trial of a process on
another host is left alone: a slow process must not lose its trial.)
An interrupt (SIGINT, or SIGTERM turned into one by the app) stops every worker after its current
trial and re-raises.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from costmodels.errors import ConfigError
from search.base import Result, pareto_front
from search.space import Knob, Space, boxes, onto_simplex

try:  # POSIX advisory locks; elsewhere the trial-count lock is per process only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

Evaluate = Callable[[dict[str, Any]], dict[str, float]]
JOURNAL_SUFFIXES = (".log", ".journal")
MAXIMIZED = ("mfu", "hfu", "tokens_per_s")  # metric names whose default direction is "maximize"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # FAIL trials are run again
WORKER_ATTR = "dse_worker"  # host:pid of the process running a trial
# The main thread waits for the trial threads in slices of this length: a signal that the kernel
# delivered to a trial thread is handled (by Python, in the main thread) within one slice.
SIGNAL_POLL_S = 0.2
# RDB storages (workers on several hosts): each running trial's heartbeat every 30 s; a trial silent
# for 120 s belongs to a dead worker (Optuna's ``fail_stale_trials``)
HEARTBEAT_INTERVAL_S, HEARTBEAT_GRACE_S = 30, 120
SAMPLERS = ("auto", "tpe", "motpe", "nsga2", "random")


def _suggest(trial: Trial, name: str, dim: Knob | Sequence[Any]) -> Any:
    """The trial's value of one dimension (``search.space``): a choice, or a value in the box
    (integer, log). A simplex group's members are drawn in their own bounds and projected onto the
    simplex before evaluation (:func:`search.space.onto_simplex`)."""
    if not isinstance(dim, Knob):
        return trial.suggest_categorical(name, [_plain(c) for c in dim])
    if dim.integer:
        return trial.suggest_int(name, int(np.ceil(dim.low)), int(np.floor(dim.high)), log=dim.log)
    return trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log)


def _plain(value: Any) -> Any:
    """Optuna stores only None/bool/int/float/str choices: unwrap NumPy scalars."""
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------------------------
# Storage and the trial-count lock


def open_storage(storage: str | None) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``storage`` (see the module docstring); :class:`ConfigError` naming the
    URL and the cause when it cannot be opened."""
    try:
        if storage is None:
            return optuna.storages.InMemoryStorage()
        if storage.endswith(JOURNAL_SUFFIXES) and "://" not in storage:
            backend = optuna.storages.journal.JournalFileBackend(storage)
            return optuna.storages.JournalStorage(backend)
        if storage.startswith("redis://"):
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalRedisBackend(storage))
        if "://" in storage:
            # workers starting together on a new PostgreSQL database would create its tables at once
            with warnings.catch_warnings(), _pg_lock(storage, "schema"):  # heartbeat args: "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    storage,
                    engine_kwargs=_engine_kwargs(storage),
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=HEARTBEAT_GRACE_S,
                )
    except Exception as exc:  # sqlalchemy/OS/import errors: all mean "cannot open"
        cause = (str(exc).splitlines() or [""])[0]  # sqlalchemy appends a "Background on this error" line
        raise ConfigError(f"cannot open Optuna storage {storage!r}: {type(exc).__name__}: {cause}") from exc
    raise ConfigError(
        f"Optuna storage {storage!r} is neither a URL (sqlite:///abs/path.db, postgresql://..., redis://...) "
        f"nor a journal file path ending in {' or '.join(JOURNAL_SUFFIXES)}"
    )


def _engine_kwargs(url: str) -> dict[str, Any] | None:
    """A connect timeout for network databases, so an unreachable host fails in seconds."""
    if url.startswith(("postgresql", "mysql")):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return None


def _lock_path(storage: str | None) -> Path | None:
    """The sidecar lock file of a file-backed storage (journal file or SQLite database)."""
    if storage is None:
        return None
    if "://" not in storage:
        return Path(storage + ".trials.lock")
    if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        return Path(storage.removeprefix("sqlite:///") + ".trials.lock")
    return None


@contextmanager
def _pg_lock(storage: str, purpose: str, engine: Any = None) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock keyed by the storage URL and ``purpose``, held for
    the block (all hosts); a no-op for other storages."""
    if not storage.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    own = engine is None  # a one-off lock: close its connection pool afterwards
    engine = engine or sqlalchemy.create_engine(storage, **(_engine_kwargs(storage) or {}))
    key = int.from_bytes(hashlib.sha256(f"{purpose}:{storage}".encode()).digest()[:8], "big", signed=True)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        if own:
            engine.dispose()


class _TrialLock:
    """Serialises "count the study's trials, then create one" across threads, local processes
    (``flock`` on a file-backed storage's sidecar file) and, for PostgreSQL, every host (a
    session-level advisory lock keyed by the storage URL)."""

    def __init__(self, storage: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = _lock_path(storage) if fcntl is not None else None
        self._storage, self._engine = storage, None
        if storage is not None and storage.startswith("postgresql"):
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(storage, **(_engine_kwargs(storage) or {}))

    @property
    def across_processes(self) -> bool:
        """Whether the lock also excludes other processes (a file-backed or PostgreSQL storage)."""
        return self._engine is not None or self._path is not None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._engine is not None:
                with _pg_lock(self._storage, "trials", self._engine):
                    yield
                return
            if self._path is None:
                yield
                return
            with open(self._path, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Sampler and study


HAS_SET_CONSTRAINT = hasattr(Trial, "set_constraint")  # Optuna ≥ 5


def _constraints_of(trial: FrozenTrial) -> Sequence[float]:
    """Optuna 4's ``constraints_func``: what the evaluation stored (missing = infeasible)."""
    return trial.user_attrs.get("constraints", (1.0,))


def _trial_constraints(trial: FrozenTrial) -> Sequence[float]:
    """A finished trial's constraint values (none recorded = infeasible)."""
    if HAS_SET_CONSTRAINT:
        return list(trial.constraints.values()) or [1.0]
    return _constraints_of(trial)


def _constraint_kwargs() -> dict[str, Any]:
    return {} if HAS_SET_CONSTRAINT else {"constraints_func": _constraints_of}


def make_sampler(
    sampler: str | optuna.samplers.BaseSampler, n_objectives: int, seed: int, n_trials: int
) -> optuna.samplers.BaseSampler:
    """A sampler by name: ``auto`` = ``tpe`` for one objective, ``nsga2`` for several; ``tpe`` and
    ``motpe`` are multivariate TPE with 10 % of the budget (10–30 trials) as random start-up."""
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown Optuna sampler '{sampler}'; valid: {', '.join(SAMPLERS)}")
    if sampler == "auto":
        sampler = "tpe" if n_objectives == 1 else "nsga2"
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **_constraint_kwargs())
    with warnings.catch_warnings():  # multivariate TPE is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            n_startup_trials=min(30, max(10, n_trials // 10)),
            **_constraint_kwargs(),
        )


def _directions(objectives: Sequence[str], directions: Sequence[str] | None) -> list[str]:
    """Given directions checked, or by name: ``maximize`` for MFU/HFU/throughput, else ``minimize``."""
    if directions is None:
        return ["maximize" if o in MAXIMIZED else "minimize" for o in objectives]
    if len(directions) != len(objectives) or set(directions) - {"minimize", "maximize"}:
        raise ConfigError(
            f"directions must be one of minimize/maximize per objective, got {list(directions)}"
        )
    return list(directions)


def _study(storage: str | None, study_name: str, directions: list[str], sampler: Any, load: bool) -> Any:
    """Create (or load) the study; a conflicting existing study is a :class:`ConfigError`."""
    opened = open_storage(storage)
    try:
        study = optuna.create_study(
            storage=opened, sampler=sampler, study_name=study_name, directions=directions, load_if_exists=load
        )
    except optuna.exceptions.DuplicatedStudyError as exc:
        raise ConfigError(
            f"study '{study_name}' already exists in {storage}: pass load_if_exists=True or a new name"
        ) from exc
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:  # a loaded study keeps its own directions
        raise ConfigError(
            f"study '{study_name}' in {storage} optimises {stored}, not {directions}: use another study_name"
        )
    return study


# --------------------------------------------------------------------------------------------
# The trial loop


@dataclass(frozen=True)
class _Task:
    """What each worker thread needs."""

    study: Any
    space: Space
    evaluate: Evaluate
    objectives: tuple[str, ...]
    constraints: Callable[[dict[str, Any]], Sequence[float]] | None
    on_trial: Callable[[int, dict], None] | None
    n_trials: int
    deadline: float
    lock: _TrialLock
    stop: threading.Event


def _next_trial(task: _Task) -> Trial | None:
    """A new trial, or None when the study already holds ``n_trials`` (counted under the lock)."""
    with task.lock.held():
        if len(task.study.get_trials(deepcopy=False, states=COUNTED)) >= task.n_trials:
            return None
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": ours beats
            warnings.simplefilter("ignore", UserWarning)
            trial = task.study.ask()
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        return trial


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def fail_stale_trials(study: Any, under_lock: bool = False) -> int:
    """Mark FAIL the RUNNING trials whose process on this host no longer exists, and, in an RDB
    storage, those of any host whose heartbeat stopped; the count of the first kind. ``under_lock``:
    the caller holds the trial lock across processes (:class:`_TrialLock`), inside which every trial
    is created and tagged with its worker, so a RUNNING trial without the tag belongs to a process
    killed between the two: it is marked FAIL too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"; a no-op for storages without a heartbeat
        optuna.storages.fail_stale_trials(study)
    host, stale = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(t.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
        dead = worker_host == host and pid.isdigit() and not _process_alive(int(pid))
        if dead or (under_lock and WORKER_ATTR not in t.user_attrs):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            stale += 1
    return stale


@contextmanager
def _heartbeat(study: Any, trial: Trial) -> Iterator[None]:
    """Record the trial's heartbeat every ``HEARTBEAT_INTERVAL_S`` while it runs (RDB storages)."""
    storage = study._storage  # Optuna wraps an RDBStorage in a cache that forwards the heartbeat
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while not done.is_set():
            storage.record_heartbeat(trial._trial_id)
            done.wait(HEARTBEAT_INTERVAL_S)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _run_trial(task: _Task, trial: Trial) -> None:
    """Suggest, evaluate, record metrics (user attribute) and constraints, tell, report; a trial
    whose suggestion or evaluation raises is told FAIL and the exception re-raised."""
    with _heartbeat(task.study, trial):
        _run_trial_body(task, trial)


def _run_trial_body(task: _Task, trial: Trial) -> None:
    try:
        params = {name: _suggest(trial, name, dim) for name, dim in task.space.items()}
        knobs = boxes(task.space)
        if any(k.group for k in knobs.values()):  # the point evaluated: groups on their simplex
            params = onto_simplex(params, knobs)
            trial.set_user_attr("point", params)
        out = task.evaluate(params)
        metrics = {k: bool(v) if k == "feasible" else float(v) for k, v in out.items()}
        missing = [o for o in task.objectives if o not in metrics]
        if missing:
            raise ConfigError(f"evaluate returned no {', '.join(missing)}; it returned {sorted(metrics)}")
        extra = [float(c) for c in task.constraints(params | metrics)] if task.constraints else []
    except BaseException:
        task.study.tell(trial, state=TrialState.FAIL)
        raise
    trial.set_user_attr("metrics", metrics)
    _set_constraints(trial, [0.0 if metrics.get("feasible", True) else 1.0, *extra])
    task.study.tell(trial, [metrics[o] for o in task.objectives])
    if task.on_trial is not None:
        task.on_trial(trial.number, params | metrics)


def _set_constraints(trial: Trial, values: list[float]) -> None:
    """Record constraint values (≤ 0 feasible; NaN counts as violated) where the sampler reads them."""
    values = [math.inf if math.isnan(v) else v for v in values]
    if not HAS_SET_CONSTRAINT:
        trial.set_user_attr("constraints", values)
        return
    for i, v in enumerate(values):
        trial.set_constraint("feasible" if i == 0 else f"c{i}", v)


def _worker(task: _Task) -> int:
    """Run trials until the study is full, the deadline passes or another worker failed."""
    ran = 0
    while not task.stop.is_set() and time.monotonic() < task.deadline:
        trial = _next_trial(task)
        if trial is None:
            break
        try:
            _run_trial(task, trial)
        except BaseException:
            task.stop.set()
            raise
        ran += 1
    return ran


# --------------------------------------------------------------------------------------------
# The result


def _table(trials: list[FrozenTrial], names: list[str], first: str, sign: float) -> dict[str, np.ndarray]:
    """Completed trials as columns: ``trial``, the parameters, the metrics, ``feasible`` (every
    constraint ≤ 0) and ``objective`` = the first objective as minimised, +inf where infeasible."""
    metrics = [t.user_attrs.get("metrics", {}) for t in trials]
    metric_names = list(dict.fromkeys(k for m in metrics for k in m if k != "feasible"))
    table = {"trial": np.array([t.number for t in trials], dtype=float)}
    points = [t.user_attrs.get("point", t.params) for t in trials]  # simplex groups: as evaluated
    table |= {n: np.asarray([p.get(n, np.nan) for p in points]) for n in names}
    table |= {k: np.array([m.get(k, np.nan) for m in metrics], dtype=float) for k in metric_names}
    constraints = [_trial_constraints(t) for t in trials]
    table["feasible"] = np.array([all(c <= 0 for c in cons) for cons in constraints], dtype=bool)
    objective = sign * np.array([m.get(first, np.nan) for m in metrics], dtype=float)
    table["objective"] = np.where(table["feasible"] & np.isfinite(objective), objective, np.inf)
    return table


def _front(study: Any, table: dict[str, np.ndarray], axes: tuple[str, str], multi: bool) -> list[int]:
    """Pareto rows: ``study.best_trials`` (feasible, by the first objective) for several objectives,
    else the front of ``axes`` over the feasible rows when the table has both."""
    if multi:
        rows = {int(n): i for i, n in enumerate(table["trial"])}
        front = [rows[t.number] for t in study.best_trials if t.number in rows]
        return sorted((i for i in front if table["feasible"][i]), key=lambda i: table["objective"][i])
    if all(a in table for a in axes):
        return pareto_front(table[axes[0]], table[axes[1]], table["feasible"])
    return []


def _trajectory(table: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Per trial (by number): its objective and the best feasible objective so far."""
    best = np.minimum.accumulate(table["objective"])
    return [
        {"trial": float(n), "objective": float(o), "best_objective": float(b)}
        for n, o, b in zip(table["trial"], table["objective"], best, strict=True)
    ]


def optuna_search(
    space: Space,
    evaluate: Evaluate,
    *,
    objectives: Sequence[str] = ("objective",),
    directions: Sequence[str] | None = None,
    n_trials: int = 100,
    timeout: float | None = None,
    seed: int = 0,
    sampler: str | optuna.samplers.BaseSampler = "auto",
    storage: str | None = None,
    study_name: str = "dse",
    load_if_exists: bool = True,
    constraints: Callable[[dict[str, Any]], Sequence[float]] | None = None,
    on_trial: Callable[[int, dict], None] | None = None,
    n_jobs: int = 1,
    pareto_axes: tuple[str, str] = ("step_time_s", "memory_gib"),
) -> Result:
    """Search ``space`` with Optuna until the study holds ``n_trials`` trials (or ``timeout`` s pass).

    ``evaluate(params) -> metrics`` returns at least the ``objectives`` (and ``feasible``, else
    feasible); ``constraints(params | metrics) -> values`` adds constraints, ≤ 0 feasible.
    ``n_trials`` counts the trials the study holds that are complete, pruned or running (a failed
    trial, or one whose process died — see the module docstring — is run again): resuming a study
    runs only the missing trials, and
    several processes sharing ``storage``/``study_name`` stop together at exactly ``n_trials`` (give
    each worker its own ``seed``, or they propose the same start-up points). ``n_jobs`` threads run
    trials in this process. ``on_trial(number, params | metrics)`` is called after each trial.

    The result covers every completed trial of the study, this process's or not: ``table`` (see
    :func:`_table`), ``best`` = the best feasible trial's parameters (several objectives: the Pareto
    trial best on the first), ``pareto`` = rows of ``study.best_trials`` for several objectives, else
    the ``pareto_axes`` front. Raises :class:`ConfigError` for a storage that cannot be opened and when
    no completed trial is feasible.
    """
    objectives, dirs = tuple(objectives), _directions(objectives, directions)
    study = _study(
        storage, study_name, dirs, make_sampler(sampler, len(objectives), seed, n_trials), load_if_exists
    )
    deadline = time.monotonic() + (math.inf if timeout is None else timeout)
    space = {n: dim if isinstance(dim, Knob) else tuple(dim) for n, dim in space.items()}
    task = _Task(study, space, evaluate, objectives, constraints, on_trial, n_trials, deadline,
                 _TrialLock(storage), threading.Event())  # fmt: skip
    with task.lock.held():
        fail_stale_trials(study, under_lock=task.lock.across_processes)
    pool = ThreadPoolExecutor(max(1, n_jobs))
    try:
        futures = [pool.submit(_worker, task) for _ in range(max(1, n_jobs))]
        while futures_wait(futures, timeout=SIGNAL_POLL_S).not_done:
            pass  # the main thread runs bytecode between waits, so Python handles a pending signal
        ran = sum(f.result() for f in futures)
    except BaseException:  # an interrupt or a failed trial: the other workers stop after their trial
        task.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return _result(study, task, dirs, pareto_axes, ran)


def _result(study: Any, task: _Task, dirs: list[str], pareto_axes: tuple[str, str], ran: int) -> Result:
    """The :class:`Result` over all completed trials of ``study``."""
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    sign = -1.0 if dirs[0] == "maximize" else 1.0
    table = _table(trials, list(task.space), task.objectives[0], sign)
    if not trials:
        raise ConfigError(
            f"study '{study.study_name}' has no completed trial (n_trials or timeout too small?)"
        )
    if not table["feasible"].any():
        raise ConfigError(f"all {len(trials)} completed trials of study '{study.study_name}' are infeasible")
    multi = len(task.objectives) > 1
    axes = tuple(task.objectives[:2]) if multi else pareto_axes
    front = _front(study, table, axes, multi)
    best_i = front[0] if multi and front else int(np.argmin(table["objective"]))
    row_values = {k: np.asarray(v)[best_i].item() for k, v in table.items()}
    return Result(
        driver="optuna",
        best={n: row_values[n] for n in task.space},
        metrics={k: v for k, v in row_values.items() if k not in task.space and k != "trial"},
        table=table,
        pareto=front,
        pareto_axes=axes,
        trajectory=_trajectory(table),
        evaluations=len(trials),
        extras={
            "study_name": study.study_name,
            "trials_run": ran,
            "best_trial": int(row_values["trial"]),
            "sampler": type(study.sampler).__name__,
            "directions": dirs,
        },
    )
