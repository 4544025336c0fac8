"""The tracking process: one job run's MLflow calls, made beside the job.

A single run's app starts ``python -m dse.tracking_process <uri>`` as soon as its config is checked
(:func:`prestart`); it imports MLflow and opens the store meanwhile. The job's
:class:`dse.tracking.JobRun` takes it over (:func:`take`; it starts one itself when none waits) and
sends it :class:`dse.mlflow_store.Store` calls through its stdin, in order, as ``(method, args)``
messages of :mod:`multiprocessing.connection`, and ``("staging", (directory,))``, where its
artifact files wait to be logged. It answers on its stdout (its own prints go to stderr):
``("started", run_id, experiment_id)`` once the run exists, ``("error", "config" | "tracking",
line)`` when a call fails, ``("ended",)`` after the run's close.

How a run ends here:

* ``("end", (status, error))`` from the job: every call before it is made, then the run is closed
  with ``status``. When the status is KILLED (Ctrl-C, SIGTERM), the child runs still queued are
  dropped, so that an interrupted command stops within a second, not after logging them all.
* The job's process ends without a word (SIGKILL, the out-of-memory killer): the pipe closes, the
  queued child runs are dropped, the run is closed FAILED with ``dse.error`` saying so and the
  job's staging directory is removed.
* A call fails: the error is answered at once, the run is closed FAILED with that line, and every
  later call but the end is skipped.

SIGINT and SIGTERM are ignored: Ctrl-C reaches the whole process group, and the run must be closed
on the job's word (KILLED), not left RUNNING by a tracking process that died first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from costmodels.errors import ConfigError
from dse.mlflow_store import Store, TrackingError, ensure_store, error_line

ORPHANED = "the process ended without closing its run (killed by SIGKILL or the out-of-memory killer)"


class TrackingProcess:
    """The parent's end of the tracking process: a ``python -m dse.tracking_process`` child that
    imports MLflow and makes the run's calls while the job computes (MLflow's import alone is 1.5–2 s
    of a command's start-up), fed in order through a pipe. Calls return at once; an error the
    process met is raised by the next call, and by :meth:`finish` at the latest."""

    def __init__(self, uri: str | None = None) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # the directory holding the dse package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "dse.tracking_process", *([uri] if uri else [])],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:  # no processes or memory left
            raise TrackingError(f"cannot start the tracking process: {exc.strerror or exc}") from None
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._to = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._from = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()
        self._lock = threading.Lock()  # Optuna's trial threads log child runs
        self.started: tuple[str, str] | None = None
        self.error: Exception | None = None
        self._raised = False
        self._ended = False

    def call(self, method: str, *args: Any) -> None:
        """Send one :class:`Store` call; raise the error of an earlier one, once."""
        with self._lock:
            self._read(until=None)
            try:
                self._to.send((method, args))
            except OSError:
                self._died()
            self._raise()

    def wait_started(self) -> tuple[str, str]:
        """(run id, experiment id) once the run exists; raises what stopped it."""
        with self._lock:
            while self.started is None and self.error is None:
                self._read(until="started")
            self._raise(again=True)
            assert self.started is not None
            return self.started

    def finish(self, status: str, error: str | None) -> None:
        """Close the run with ``status`` after every call sent before, wait for the process to exit
        and raise the error it met, if any (a KILLED run drops the child runs still queued)."""
        with self._lock:
            if not self._ended:
                try:
                    self._to.send(("end", (status, error)))
                except OSError:
                    self._died()
                while not self._ended:
                    self._read(until="ended")
            self._to.close()
            self._from.close()
            self._proc.wait()
            self._raise(again=True)

    def _read(self, until: str | None) -> None:
        """Take the process's answers: those waiting (``until`` None), or up to the one named."""
        while until is not None or self._from.poll(0):
            try:
                kind, *rest = self._from.recv()
            except (EOFError, OSError):
                self._ended = True
                self._died()
                return
            if kind == "started":
                self.started = (rest[0], rest[1])
            elif kind == "error" and self.error is None:
                self.error = ConfigError(rest[1]) if rest[0] == "config" else TrackingError(rest[1])
            elif kind == "ended":
                self._ended = True
            if kind == until or (kind == "error" and until == "started"):
                return

    def _died(self) -> None:
        if self.error is None:
            code = self._proc.wait()
            self.error = TrackingError(f"the MLflow tracking process ended unexpectedly (exit status {code})")

    def _raise(self, again: bool = False) -> None:
        if self.error is not None and (again or not self._raised):
            self._raised = True
            raise self.error


INTERRUPTED = "KILLED"


def _drop_children(queue: deque[tuple[str, tuple[Any, ...]]]) -> None:
    """Remove the queued child-run calls (the run is being stopped)."""
    kept = [m for m in queue if m[0] != "child"]
    queue.clear()
    queue.extend(kept)


def serve(requests: Connection, answers: Connection) -> None:
    """Make the calls read from ``requests`` until the run is closed or the job's end of the pipe is."""
    store, queue, failed = Store(), deque[tuple[str, tuple[Any, ...]]](), False
    orphaned, staging = False, None  # the job's staging directory: removed here if the job is gone

    def answer(message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the job is gone: nobody to tell
            answers.send(message)

    while True:
        try:
            if not queue:
                queue.append(requests.recv())
            while requests.poll(0):  # everything sent meanwhile: an interrupt may be among it
                queue.append(requests.recv())
        except (EOFError, OSError):
            orphaned = True
        ends = [m for m in queue if m[0] == "end"]
        if orphaned and not ends:
            queue.append(("end", ("FAILED", ORPHANED)))
            ends = [queue[-1]]
        if ends and (orphaned or ends[0][1][0] == INTERRUPTED):
            _drop_children(queue)
        method, args = queue.popleft()
        if method == "staging":
            staging = args[0]
            continue
        if method == "end":
            if not failed and store.run_id is not None:
                try:
                    store.end(*args)
                except Exception as exc:
                    answer(("error", "tracking", error_line(exc)))
            answer(("ended",))
            if orphaned and staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            return
        if failed:
            continue
        try:
            result = getattr(store, method)(*args)
        except Exception as exc:
            failed = True
            kind = "config" if isinstance(exc, ConfigError) else "tracking"
            answer(("error", kind, str(exc) if kind == "config" else error_line(exc)))
            if store.run_id is not None:
                with contextlib.suppress(Exception):  # the store itself is gone: nothing more to write
                    store.end("FAILED", error_line(exc))
            continue
        if method == "start":
            answer(("started", *result))


_WAITING: list[TrackingProcess] = []  # started ahead of its job run


def prestart(uri: str) -> None:
    """Start a tracking process now, warming up on the store ``uri``, for the next :func:`take`."""
    if not _WAITING:
        with contextlib.suppress(TrackingError):  # the job's run meets it again, and reports it
            _WAITING.append(TrackingProcess(uri))


def take() -> TrackingProcess:
    """The tracking process started ahead of this run, else a new one."""
    return _WAITING.pop() if _WAITING else TrackingProcess()


def main() -> None:
    """``python -m dse.tracking_process [uri]``: with a URI, import MLflow and open that store
    before the first call arrives (a failure there is met again, and reported, by the run's start)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    answers = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray prints (a library's) go to stderr, not into the answers
    if len(sys.argv) > 1:
        with contextlib.suppress(Exception):
            import mlflow.tracking  # noqa: F401  (for any store; a SQLite store is also opened)

            ensure_store(sys.argv[1])
    serve(Connection(0, writable=False), answers)
    sys.stderr.flush()
    os._exit(0)  # the run is closed: skip the interpreter's teardown of MLflow's modules (0.5 s)


if __name__ == "__main__":
    main()
