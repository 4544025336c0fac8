"""Shared plumbing for the ``python -m dse.<name>`` Hydra apps.

Every entry point is a Hydra app over ``conf/<name>.yaml``. This module adds what Hydra does not:

* positional arguments (``python -m dse.ckpt_summarize model.pt``) become ``key=value``
  overrides for the app's declared positional keys;
* ``model=<path or hub id>`` becomes ``model=path model.source=<value>``, so a config.json path
  or a Hugging Face hub id works wherever a shipped model name does (``model`` is a config group
  of shipped configs, and Hydra only knows group options by name);
* the overrides are composed once before the app (:func:`precheck`), so a composition error
  (unknown key or preset, bad override syntax, a ``+key`` the app does not have) is one line;
* user mistakes (:class:`costmodels.errors.ConfigError`) print one line on stderr and exit 2,
  with no traceback; ``format=json`` output goes to stdout alone;
* SIGTERM (SLURM, ``timeout``, ``kill``) is turned into the same interrupt as Ctrl-C: the app
  stops, an open MLflow run is closed as KILLED (``dse.tracking.JobRun``), one line says so, and
  the exit status is 128 + the signal number (130 for SIGINT, 143 for SIGTERM);
* a result that cannot be right (:class:`dse.checks.ResultError`: NaN, infinite, negative) is a
  one-line bug report with exit status 3, never an output.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict
from omegaconf.errors import MissingMandatoryValue

from costmodels.errors import ConfigError
from dse.checks import ResultError, register_plan_node
from dse.mlflow_store import TrackingError
from dse.tracking import prestart

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register_plan_node()  # the ``plan/options`` node that dse.calc, placement and dse.topoeval compose
MODEL_DIR = CONF_DIR / "model"


def _looks_like_model_source(value: str) -> bool:
    """A config.json path, a directory, or a hub id (``org/name``), not a shipped name."""
    if (MODEL_DIR / f"{value}.yaml").exists():
        return False
    return value.endswith(".json") or "/" in value or Path(value).exists()


_HYDRA_VALUE_FLAGS = frozenset(
    {
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--config-name",
        "-cn",
        "--config-path",
        "-cp",
        "--config-dir",
        "-cd",
        "--experimental-rerun",
    }
)


def rewrite_argv(argv: Sequence[str], positional: Sequence[str] = ()) -> list[str]:
    """Turn positional arguments and ``model=<path>`` into plain Hydra overrides."""
    out: list[str] = []
    free = list(positional)
    flag_value = False
    for arg in argv:
        if flag_value:  # the value of a Hydra flag such as ``--cfg job``
            out.append(arg)
            flag_value = False
        elif arg.startswith("-"):
            out.append(arg)
            flag_value = arg in _HYDRA_VALUE_FLAGS
        elif "=" in arg:
            key, _, value = arg.partition("=")
            if key == "model" and value and "," not in value and _looks_like_model_source(value):
                out += ["model=path", f"model.source={value}"]
            else:
                out.append(arg)
        elif free:
            out.append(f"{free.pop(0)}={arg}")
        else:
            raise ConfigError(f"unexpected argument {arg!r}: use key=value overrides")
    return out


def fail(message: str) -> None:
    """Print a one-line user error and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def config_groups() -> set[str]:
    """The config groups under ``conf/`` (``+experiment=...`` adds one of these)."""
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir()}


def _sweep_values(override: str) -> list[str]:
    """``key=a,b`` → [``key=a``, ``key=b``]: a multirun sweep's values, split at top-level commas."""
    key, sep, value = override.partition("=")
    if not sep:
        return [override]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(value):
        depth += ch in "[({"
        depth -= ch in "])}"
        if ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    return [key + sep + p for p in [*parts, value[start:]]]


def _variants(overrides: list[str], limit: int = 64) -> list[list[str]]:
    """The override lists that check every value of every sweep once: the first values together,
    then each other value with the rest at their first (at most ``limit`` lists)."""
    sweeps = [_sweep_values(o) for o in overrides]
    base = [values[0] for values in sweeps]
    out = [base]
    for i, values in enumerate(sweeps):
        out += [[*base[:i], v, *base[i + 1 :]] for v in values[1:]]
    return out[:limit]


_SWEEP_FUNCTION = re.compile(r"^\s*(range|choice|glob|interval|tag|sort|shuffle)\(")


def precheck(
    argv: Sequence[str],
    config_name: str,
    known: Mapping[str, Sequence[str]] | None = None,
    check: Callable[[DictConfig], None] | None = None,
) -> DictConfig | None:
    """Compose the config once before the Hydra app so that a composition error (unknown key,
    unknown preset, bad override syntax, ``+key`` for a key the app does not have) is one
    ``error:`` line, not Hydra's multi-line report. A multirun (``-m``) checks every value of each
    comma-separated sweep (a sweep function such as ``range(1,4)`` is left to Hydra, as are flags
    such as ``--help`` and ``--cfg``). ``known`` maps a
    key prefix to its valid keys, for the message; ``check`` range-checks each composed config, so
    a sweep with one bad value stops before any job runs. Returns a single run's checked config
    (without its ``hydra`` node), else None."""
    flags = [a for a in argv if a.startswith("-")]
    if any(f not in ("-m", "--multirun") for f in flags):
        return None
    try:
        overrides = rewrite_argv([a for a in argv if not a.startswith("-")])
        if flags and any(_SWEEP_FUNCTION.match(o.partition("=")[2]) for o in overrides):
            return None
        for o in overrides:
            key = o.partition("=")[0]
            root = key.lstrip("+~").split(".")[0].split("/")[0]
            if key.startswith("+") and "." not in key and root not in config_groups() | {"hydra"}:
                raise ConfigError(f"unknown key '{key[1:]}': this app has no such option ('+' adds keys)")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for variant in _variants(overrides) if flags else [overrides]:
                cfg = compose(config_name, variant, return_hydra_config=True)
                _check_output_dir(str(cfg.hydra.sweep.dir if flags else cfg.hydra.run.dir))
                with open_dict(cfg):
                    del cfg["hydra"]
                if check is not None:
                    check(cfg)
    except ConfigError as exc:
        fail(str(exc))
    except HydraException as exc:
        fail(_one_line(exc, known or {}))
    return None if flags else cfg


def _check_output_dir(path: str) -> None:
    """Hydra's output directory (``hydra.run.dir`` / ``hydra.sweep.dir``) must be creatable: its
    nearest existing ancestor is a directory we can write a file in."""
    target = Path(path).expanduser().absolute()
    ancestor = next(p for p in (target, *target.parents) if p.exists())
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(ancestor))
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".dse-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the output directory {target}: {exc.strerror} ({ancestor}); "
            "set hydra.run.dir=<a writable directory>"
        ) from None


def _one_line(exc: HydraException, known: Mapping[str, Sequence[str]]) -> str:
    """Hydra's composition error in one line: the unknown key, or the missing option and the choices."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    unknown = "not in struct" in str(exc.__cause__) or "To append to your config" in str(exc)
    if lines[0].startswith("Could not override") and unknown:
        key = lines[0].split("'")[1]
        prefix = key.rpartition(".")[0]
        valid = f"; valid: {', '.join(known[prefix])}" if prefix in known else ""
        return f"unknown key '{key}'{valid}"
    if lines[0].startswith("Error merging override") and exc.__cause__ is not None:
        override = lines[0].removeprefix("Error merging override").strip()
        reason = str(exc.__cause__).strip().splitlines()[0]
        key = override.partition("=")[0]
        return f"{override}: {reason}; give {key} a value of its type (see conf/)"
    missing = re.search(r"Could not find '(\w+)/([^']*)'", lines[0])
    if missing and "Available options" in str(exc):
        group, name = missing.groups()
        start = lines.index(next(ln for ln in lines if ln.startswith("Available options")))
        options = [ln for ln in lines[start + 1 :] if not ln.startswith(("Config search", "provider="))]
        shipped = ", ".join(o for o in options if o != "path")
        source = " (or a config.json path / hub id)" if group == "model" else ""
        return f"unknown {group} '{name}'; shipped{source}: {shipped}"
    return " ".join(ln for ln in lines if not ln.startswith(("See https://", "Set the environment")))


CACHE_SETTING = "DSE_JAX_CACHE"  # off: no persistent compilation cache; a path: the cache there


def compilation_cache_dir() -> Path | None:
    """Where JAX keeps compiled XLA programs between commands: ``$DSE_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/dse/jax`` (``~/.cache/dse/jax``); None when ``DSE_JAX_CACHE=off``."""
    setting = os.environ.get(CACHE_SETTING, "").strip()
    if setting.lower() in ("off", "0", "false", "no", "none"):
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dse" / "jax"


def use_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache (every program, however quick to compile), so a
    repeated command skips XLA compilation: a warm ``dse.calc`` takes 2.1 s instead of 3.8 s on the
    2-core CI machine. A directory that cannot be created leaves the cache off."""
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    if "jax" in sys.modules:  # imported already (by the app's module): set it before anything compiles
        import jax

        for key, value in settings.items():
            jax.config.update(key, value)
    else:  # read when JAX is imported
        for key, value in settings.items():
            os.environ.setdefault(key.upper(), str(value))
    return path


TIMING_SETTING = "DSE_TIMING"  # 1: print where the command's wall time went, on stderr, at its end


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere): the interpreter's
    start-up and the imports, when read as the app starts."""
    try:
        start_ticks = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))


class PhaseClock:
    """Where a command's wall time goes (``DSE_TIMING=1``): start-up and imports (the process's age
    when the app starts), JAX tracing and lowering to XLA (every run), XLA compilation (JAX's own
    duration events; a program the persistent cache holds is read back, not compiled), the wait on MLflow
    (``tracking.MLFLOW_SECONDS``: its calls, or waiting for the tracking process to finish them) and
    the rest: evaluating, solving, reporting. :meth:`line` is the one-line summary."""

    TRACE = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
    COMPILE = "/jax/core/compile/backend_compile_duration"

    def __init__(self) -> None:
        import jax

        self.imports_s = _process_age_s()
        self.start = time.perf_counter()
        self.trace_s, self.compile_s, self.compiled = 0.0, 0.0, 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration_s: float, **_: Any) -> None:
        if event in self.TRACE:
            self.trace_s += duration_s
        elif event == self.COMPILE:
            self.compile_s += duration_s
            self.compiled += 1

    def line(self) -> str:
        from dse.tracking import MLFLOW_SECONDS

        ran = time.perf_counter() - self.start
        rest = max(0.0, ran - self.trace_s - self.compile_s - MLFLOW_SECONDS[0])
        imports = "unknown" if self.imports_s is None else f"{self.imports_s:.2f} s"
        total = ran + (self.imports_s or 0.0)
        return (
            f"timing: start-up and imports {imports}, JAX tracing and lowering {self.trace_s:.2f} s, "
            f"XLA compilation {self.compile_s:.2f} s ({self.compiled} programs, compiled or read from "
            f"the cache), MLflow {MLFLOW_SECONDS[0]:.2f} s, the rest (evaluate, solve, report) {rest:.2f} s; "
            f"total {total:.2f} s"
        )


def run_app(
    task: Callable[[DictConfig], Any],
    config_name: str,
    positional: Sequence[str] = (),
    known: Mapping[str, Sequence[str]] | None = None,
    check: Callable[[DictConfig], None] | None = None,
) -> None:
    """Run ``task`` as a Hydra app over ``conf/<config_name>.yaml`` (see :func:`precheck` for
    ``known`` and ``check``)."""
    try:
        sys.argv[1:] = rewrite_argv(sys.argv[1:], positional)
    except ConfigError as exc:
        fail(str(exc))
    clock = PhaseClock() if os.environ.get(TIMING_SETTING, "") not in ("", "0") else None
    single = precheck(sys.argv[1:], config_name, known, check)
    if single is not None:
        prestart(single)  # its tracking process imports MLflow while the job starts
    use_compilation_cache()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def _main(cfg: DictConfig) -> Any:
        try:
            task(cfg)
            sys.stdout.flush()
        except ConfigError as exc:
            fail(str(exc))
        except MissingMandatoryValue as exc:
            fail(f"missing required value '{exc.full_key}': pass {exc.full_key}=...")
        except TrackingError as exc:  # the store refused a write, or the tracking process died
            print(f"error: MLflow tracking failed: {exc}; or run with tracking=none", file=sys.stderr)
            raise SystemExit(1) from None
        except ResultError as exc:  # a bug, not the user's mistake: one line, its own exit status
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(3) from None
        except BrokenPipeError:  # output piped into `head` and closed early: not an error
            _silence_stdout()
        return None

    try:
        _main()
        sys.stdout.flush()
        if clock is not None:
            print(clock.line(), file=sys.stderr)
        _end_now()
    except BrokenPipeError:
        _silence_stdout()
    except Interrupted as exc:
        print(
            f"error: interrupted by {exc}; nothing was reported as finished "
            "(the same command resumes an Optuna search)",
            file=sys.stderr,
        )
        raise SystemExit(128 + exc.signum) from None
    except OSError as exc:  # Hydra creating the output or log directory
        where = exc.filename or "the output directory"
        fail(f"cannot write {where}: {exc.strerror}; set hydra.run.dir=<a writable directory>")


def _end_now() -> None:
    """End a command that finished: run the exit handlers (logging's flush, the sweep run's close,
    a launcher's workers), flush the streams and leave without the interpreter's teardown, which
    frees every module one by one (1.1 s after an MLflow run on the 2-core machine, 0.3 s after
    dse.calc). Only when no other thread is alive (one would be joined at a normal exit) and no
    profiler or tracer (cProfile, coverage) is on: those write their results after the command."""
    if threading.active_count() > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def progress_reporter(
    enabled: bool,
    total: int,
    stream: Any = None,
    every_s: float = 15.0,
    label: str = "validate",
    unit: str = "case",
) -> Callable[[int], None] | None:
    """``progress(done)``: a tqdm bar on a terminal, else (a log) a plain line per tenth of ``total``
    and at least every ``every_s`` seconds (``validate: 3/25 cases (2 s)``); None when disabled. On
    stderr: stdout is the report alone."""
    stream = stream or sys.stderr
    if not enabled or total < 1:
        return None
    if stream.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=label, unit=unit, file=stream, leave=False)

        def tick(done: int) -> None:
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        return tick
    every, start = max(1, math.ceil(total / 10)), time.monotonic()
    last = start

    def line(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done % every == 0 or done == total or now - last >= every_s:
            last = now
            print(f"{label}: {done}/{total} {unit}s ({now - start:.0f} s)", file=stream, flush=True)

    return line


def progress_callback(enabled: bool, label: str, unit: str) -> Callable[[int, int], None] | None:
    """``update(done, total)`` for drivers that learn the total as they go: a bar on a terminal, plain
    lines in a log (:func:`progress_reporter`); None when disabled."""
    if not enabled:
        return None
    reporter: Callable[[int], None] | None = None

    def update(done: int, total: int) -> None:
        nonlocal reporter
        if reporter is None:
            reporter = progress_reporter(True, total, label=label, unit=unit)
        if reporter is not None:
            reporter(min(done, total))

    return update


def phase_printer(enabled: bool, label: str) -> Callable[[str], None] | None:
    """``say(message)``: one ``<label>: <message>`` line on stderr per phase of a long step (capture,
    build, solve), with the seconds since the first; None when disabled."""
    if not enabled:
        return None
    start = time.monotonic()

    def say(message: str) -> None:
        print(f"{label}: {message} ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)

    return say


def print_json(payload: Any) -> None:
    """Machine-readable output: one JSON document on stdout, encoded whole before any of it is
    written (a value that cannot be encoded leaves no half document behind)."""
    sys.stdout.write(json_text(payload) + "\n")


def json_text(payload: Any, indent: int | None = 2) -> str:
    """One JSON document (numpy and JAX scalars and arrays made plain), as :func:`print_json` prints it;
    ``indent=None``: one line (JSON Lines)."""
    return json.dumps(payload, indent=indent, default=_json_default)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / jax scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one of 'l'/'r' per column (numbers right by default)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if align is None:
        align = "".join(
            "r" if rows and isinstance(rows[0][i], int | float) else "l" for i in range(len(headers))
        )

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True)
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])
