"""``python -m dse.validate``: score the performance model against published measurements.

    python -m dse.validate [experiments/validation/calibration.yaml] [families=[...]] [ids=[...]] \\
        [top=20] [format=json] [plot=validate.png] [progress=false] [tracking=none]

Reads cases in the schema of ``experiments/validation/SCHEMA.md``, asks :func:`dse.predict.predict_case`
for each case's measured quantity and reports the signed error ``100·(predicted − measured)/measured``
per case, then per scope (all, each kind, each family): cases, covered, coverage, MAPE, median and max
|error| and the bias (mean signed error). A case the model does not predict is *uncovered*; it never
counts in the error statistics, and its reason starts with one of four categories:

* ``invalid case`` — the case breaks the schema (a missing or malformed field, named: ``invalid case:
  missing 'parallelism.dp'``; a duplicate id; not a mapping), found by :func:`check_case` before any
  prediction; or the predictor raised ``KeyError`` / ``TypeError`` / ``ValueError`` reading it;
* ``unsupported`` — a valid case outside what the model covers (a model_type with no parser, hardware
  with no preset, a quantity the predictor has no model for: the predictor's own reason);
* ``infeasible`` — the predictor raised :class:`ConfigError` (no memory-feasible plan, no pipeline
  split of the layers, ...): its message;
* ``error`` — the predictor failed some other way (a bug): the exception and where it was raised.

One broken case never stops the run: the report covers every other case, and the command exits 0.
Only a file-level problem (no file, malformed YAML, no top-level ``cases:`` list) or a bad option
stops it, with one line on stderr (exit 2). After a complete report, exit status 1 says that the
predictor failed on some case (category ``error``).

With tracking on (the default, ``conf/tracking/sqlite.yaml``; ``tracking=none`` turns it off) the run
is an MLflow run with the summary metrics (``mape``, ``coverage``, ``bias``, ... overall,
``kind.<kind>.*``, ``family.<family>.*``, ``uncovered.<category>``), the per-case table
(``cases.csv``), the report (``report.json``) and the predicted-vs-measured scatter (``scatter.png``);
``plot=<path>`` also writes the scatter to a file.

The predictor is looked up as ``dse.predict.predict_case`` when a run starts (not bound at import),
so tests can replace it with ``monkeypatch``.
"""

from __future__ import annotations

import collections
import importlib
import math
import re
import statistics
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, ListConfig

from costmodels.architectures import MAX_INT
from costmodels.errors import ConfigError
from dse._app import CONF_DIR, format_table, print_json, progress_reporter, run_app
from dse.checks import positive_int, read_text, shown
from dse.schema import check_tracking
from dse.tracking import JobRun, location_lines, run_location

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO_DIR = CONF_DIR.parent
KINDS = ("training", "inference", "serving")
HARDWARE_TABLE = "hardware.yaml"  # the schema's accelerator table, beside the cases file
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Categories of an uncovered case's reason (the reason reads "<category>: <detail>").
INVALID, UNSUPPORTED, INFEASIBLE, ERROR = "invalid case", "unsupported", "infeasible", "error"
CATEGORIES = (INVALID, UNSUPPORTED, INFEASIBLE, ERROR)
STAT_KEYS = ("n", "covered", "coverage", "mape", "median_ape", "bias", "max_ape")
BAND = 0.10  # the scatter's shaded band: predictions within ±10 % of the measurement

# (quantity, value or None, reason), optionally followed by the assumptions made (dse.predict.explain_case)
Predictor = Callable[[dict[str, Any], dict[str, Any]], tuple[Any, ...]]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class CaseResult:
    """One case scored: ``predicted`` is None when uncovered; ``category`` and ``reason`` say why.

    For a case too broken to read, ``id`` is ``#<position>`` and the fields it lacks are None.
    """

    id: str
    family: str | None
    kind: str | None
    quantity: str | None
    measured: float | None
    predicted: float | None
    error_percent: float | None
    covered: bool
    category: str | None
    reason: str | None
    assumptions: str = ""  # what the prediction assumed where the case is silent, "; "-joined


# ----------------------------------------------------------------------------------------- reading


def resolve_path(text: str) -> Path:
    """A user path; a relative one not found in the current directory is tried under the repo root."""
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_DIR / path).exists():
        return REPO_DIR / path
    return path


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a one-line ConfigError (with the line)."""
    text = read_text(path, f"{what} file")
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None


def load_cases(path: Path) -> list[Any]:
    """The ``cases:`` list of a cases file, as written: each case is checked when it is scored
    (:func:`check_case`), so one broken case costs only its own row. File-level problems raise."""
    data = read_yaml(path, "cases")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise ConfigError(f"{path}: expected a mapping with a top-level 'cases:' list")
    return data["cases"]


def load_hardware_table(cases_path: Path) -> tuple[dict[str, Any], Path | None]:
    """The accelerator table of ``hardware.yaml`` beside the cases file (key -> entry), or ``{}``."""
    path = cases_path.parent / HARDWARE_TABLE
    if not path.is_file():
        return {}, None
    data = read_yaml(path, "hardware table")
    table = data.get("hardware", data) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigError(f"{path}: expected a 'hardware:' mapping of keys to accelerator entries")
    return table, path


def _field_of(case: Any, key: str) -> Any:
    """``case[key]`` when the case is a mapping, else None (for filters and rows of broken cases)."""
    return case.get(key) if isinstance(case, dict) else None


def select(cases: list[Any], families: Sequence[str], ids: Sequence[str]) -> list[Any]:
    """Cases whose family is in ``families`` and id in ``ids`` (an empty filter keeps all)."""
    for name, wanted, have in (
        ("families", families, {_field_of(c, "family") for c in cases} - {None}),
        ("ids", ids, {_field_of(c, "id") for c in cases} - {None}),
    ):
        unknown = [w for w in wanted if w not in have]
        if unknown:
            raise ConfigError(f"unknown {name}: {', '.join(unknown)}; the file has {len(have)} {name}")
    return [
        c
        for c in cases
        if (not families or _field_of(c, "family") in families) and (not ids or _field_of(c, "id") in ids)
    ]


# ------------------------------------------------------------------------------------ case check


class _Uncovered(Exception):
    """Raised inside the checks: the case is uncovered for ``category: detail``."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category, self.detail = category, detail


def _get(case: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b`` of a case; a missing key or a non-mapping parent makes the case invalid."""
    node: Any = case
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            parent = ".".join(parts[:i])
            raise _Uncovered(INVALID, f"'{parent}' must be a mapping, got {shown(node)}")
        if part not in node:
            raise _Uncovered(INVALID, f"missing '{'.'.join(parts[: i + 1])}'")
        node = node[part]
    return node


def _optional(case: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b``, or None when the key is missing (its parents must exist)."""
    parent, _, key = dotted.rpartition(".")
    node = _get(case, parent) if parent else case
    if not isinstance(node, dict):
        raise _Uncovered(INVALID, f"'{parent}' must be a mapping, got {shown(node)}")
    return node.get(key)


def _is_int(value: Any) -> bool:
    """An integer the cost model can take (JAX computes in 32-bit integers: at most MAX_INT)."""
    return isinstance(value, int) and not isinstance(value, bool) and value <= MAX_INT


def _positive_int(case: dict[str, Any], dotted: str) -> int:
    try:
        return positive_int(_get(case, dotted), f"'{dotted}'")
    except ConfigError as exc:
        raise _Uncovered(INVALID, str(exc)) from None


def _optional_field(case: dict[str, Any], dotted: str, ok: Callable[[Any], bool], what: str) -> Any:
    """An optional field: missing or null (None), else a value ``ok`` accepts."""
    value = _optional(case, dotted)
    if value is not None and not ok(value):
        raise _Uncovered(INVALID, f"'{dotted}' must be null or {what}, got {shown(value)}")
    return value


def _optional_positive_int(case: dict[str, Any], dotted: str) -> int | None:
    return _optional_field(case, dotted, lambda v: _is_int(v) and v > 0, "a positive integer")


def _positive_number(value: Any) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0
    )


@dataclass(frozen=True)
class Known:
    """What the predictor knows, for the case check: hardware presets, model types, precisions, the
    recompute modes (empty: that check is skipped) and the accelerator table of the cases file."""

    hardware_table: Mapping[str, Any]
    presets: frozenset[str]
    model_types: frozenset[str]
    precisions: tuple[str, ...]
    recompute: tuple[str, ...]

    @classmethod
    def load(cls, hardware_table: Mapping[str, Any] | None = None) -> Known:
        from costmodels import architectures
        from costmodels.hardware import PRECISIONS
        from costmodels.parallel import RECOMPUTE
        from dse.hardware import available_hardware

        return cls(
            hardware_table=dict(hardware_table or {}),
            presets=frozenset(available_hardware()),
            model_types=frozenset(getattr(architectures, "SUPPORTED_MODEL_TYPES", ())),
            precisions=tuple(PRECISIONS),
            recompute=tuple(RECOMPUTE),
        )


def check_case(
    case: Any, known: Known, number: int = 0, seen: Mapping[str, int] | None = None
) -> tuple[str, str] | None:
    """``(category, detail)`` of the first thing that keeps ``case`` from being predicted, else None.

    The fields the predictor reads (``SCHEMA.md``): ``id`` (unique: ``seen`` maps ids to case
    numbers), ``kind``, ``measured`` (one positive target), ``model`` (a config the parsers read),
    ``hardware`` (a key of the table beside the cases file, if any, with a preset), ``num_devices``,
    ``parallelism`` (tp, pp, dp, cp positive, their product ``num_devices``; optional ep, vpp,
    zero_stage, recompute, sequence_parallel typed), ``batch`` per kind and ``precision``.
    """
    try:
        _check(case, known, number, seen or {})
    except _Uncovered as exc:
        return exc.category, exc.detail
    except Exception as exc:  # a bug in a check or a parser: this case's reason, the run goes on
        return ERROR, f"the case check failed: {_where(exc)}: {exc}"
    return None


def _check(case: Any, known: Known, number: int, seen: Mapping[str, int]) -> None:
    if not isinstance(case, dict):
        raise _Uncovered(INVALID, f"case #{number} is a {type(case).__name__}, not a mapping")
    case_id = _get(case, "id")
    if not isinstance(case_id, str) or not case_id:
        raise _Uncovered(INVALID, f"'id' must be a non-empty string, got {shown(case_id)}")
    if case_id in seen:
        raise _Uncovered(INVALID, f"duplicate id '{case_id}' (first at case #{seen[case_id]})")
    kind = _get(case, "kind")
    if kind not in KINDS:
        raise _Uncovered(INVALID, f"'kind' must be one of {', '.join(KINDS)}, got {shown(kind)}")
    _measured(case)
    _model(case, known)
    _hardware(case, known)
    devices = _positive_int(case, "num_devices")
    tp, pp, dp, cp = (_positive_int(case, f"parallelism.{k}") for k in ("tp", "pp", "dp", "cp"))
    for key in ("ep", "vpp"):
        _optional_positive_int(case, f"parallelism.{key}")
    _optional_field(case, "parallelism.zero_stage", lambda v: _is_int(v) and 0 <= v <= 3, "0, 1, 2 or 3")
    _optional_field(case, "parallelism.sequence_parallel", lambda v: isinstance(v, bool), "true or false")
    if known.recompute:
        modes = " | ".join(known.recompute)
        _optional_field(case, "parallelism.recompute", known.recompute.__contains__, modes)
    if tp * pp * dp * cp != devices:
        raise _Uncovered(INVALID, f"tp·pp·dp·cp = {tp * pp * dp * cp} but num_devices = {devices}")
    if kind == "training":
        gbs = _positive_int(case, "batch.global_batch_size")
        _positive_int(case, "batch.seq_len")
        micro = _optional_positive_int(case, "batch.micro_batch_size")
        if gbs % dp:
            raise _Uncovered(INVALID, f"'batch.global_batch_size' {gbs} is not a multiple of dp = {dp}")
        if micro is not None and (gbs // dp) % micro:
            per_replica = gbs // dp
            raise _Uncovered(
                INVALID,
                f"'batch.micro_batch_size' {micro} does not divide global_batch_size/dp = {per_replica}",
            )
    elif kind == "serving":
        if cp != 1:
            raise _Uncovered(INVALID, f"serving cases have cp = 1 (dp counts the replicas), got cp={cp}")
        _positive_int(case, "batch.input_len")
        _positive_int(case, "batch.output_len")
        _optional_positive_int(case, "batch.num_requests")
        _serving_load(case)
    else:
        if (dp, cp) != (1, 1):
            raise _Uncovered(INVALID, f"inference cases have dp = cp = 1 (SCHEMA.md), got dp={dp}, cp={cp}")
        _positive_int(case, "batch.input_len")
        _positive_int(case, "batch.output_len")
        if _optional(case, "batch.batch_size") is not None or case.get("batch_size_policy") != "max_feasible":
            _positive_int(case, "batch.batch_size")  # null only with batch_size_policy: max_feasible
    _optional_field(case, "cuda_graphs", lambda v: isinstance(v, bool), "true or false")
    precision = _get(case, "precision")
    if not isinstance(precision, str):
        raise _Uncovered(INVALID, f"'precision' must be a string such as 'bf16', got {shown(precision)}")
    if known.precisions and precision not in known.precisions:
        raise _Uncovered(UNSUPPORTED, f"precision '{precision}' (modelled: {', '.join(known.precisions)})")


STATISTICS = ("mean", "p50", "p90", "p99")


def _serving_load(case: dict[str, Any]) -> None:
    """A serving case's load (one of ``request_rate_per_s`` and ``concurrency``) and, for a latency
    target, the ``statistic`` it is."""
    load = _get(case, "load")
    if (
        not isinstance(load, dict)
        or len(load) != 1
        or next(iter(load)) not in ("request_rate_per_s", "concurrency")
    ):
        raise _Uncovered(INVALID, f"'load' must hold request_rate_per_s or concurrency, got {shown(load)}")
    if "concurrency" in load:
        _positive_int(case, "load.concurrency")
    elif not _positive_number(load["request_rate_per_s"]):
        raise _Uncovered(
            INVALID, f"'load.request_rate_per_s' must be positive, got {shown(load['request_rate_per_s'])}"
        )
    quantity = next(iter(_get(case, "measured")))
    if quantity.endswith("_ms") and case.get("statistic") not in STATISTICS:
        raise _Uncovered(
            INVALID,
            f"'statistic' must be one of {', '.join(STATISTICS)} for '{quantity}', "
            f"got {shown(case.get('statistic'))}",
        )


def _measured(case: dict[str, Any]) -> None:
    measured = _get(case, "measured")
    if not isinstance(measured, dict) or len(measured) != 1:
        targets = ", ".join(map(str, measured)) if isinstance(measured, dict) else shown(measured)
        raise _Uncovered(INVALID, f"'measured' must hold exactly one target, got {targets or 'none'}")
    [(quantity, value)] = measured.items()
    if not _positive_number(value):
        raise _Uncovered(INVALID, f"'measured.{quantity}' must be a positive number, got {shown(value)}")


def _model(case: dict[str, Any], known: Known) -> None:
    """A Hugging Face config of a supported ``model_type`` that the parsers accept."""
    from costmodels.architectures import parse_hf_config

    model = _get(case, "model")
    if not isinstance(model, dict):
        raise _Uncovered(INVALID, f"'model' must be a mapping (config.json fields), got {shown(model)}")
    model_type = _get(case, "model.model_type")
    if not isinstance(model_type, str):
        raise _Uncovered(INVALID, f"'model.model_type' must be a string, got {shown(model_type)}")
    if known.model_types and model_type not in known.model_types:
        supported = ", ".join(sorted(known.model_types))
        raise _Uncovered(UNSUPPORTED, f"model_type '{model_type}' (supported: {supported})")
    try:
        parse_hf_config(model)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise _Uncovered(INVALID, f"'model': {exc}") from None


def _hardware(case: dict[str, Any], known: Known) -> None:
    key = _get(case, "hardware")
    if not isinstance(key, str) or not key:
        raise _Uncovered(INVALID, f"'hardware' must be a hardware key, got {shown(key)}")
    if known.hardware_table and key not in known.hardware_table:
        raise _Uncovered(INVALID, f"hardware '{key}' is not in the hardware table ({HARDWARE_TABLE})")
    if known.presets and key not in known.presets:
        raise _Uncovered(UNSUPPORTED, f"hardware '{key}' has no preset under conf/hardware/")


# --------------------------------------------------------------------------------------- scoring


def default_predictor() -> Predictor:
    """``dse.predict.explain_case`` (the prediction with its assumptions), else ``predict_case``,
    looked up now (so a monkeypatched module is found)."""
    module = importlib.import_module("dse.predict")
    return getattr(module, "explain_case", module.predict_case)


def _where(exc: BaseException) -> str:
    """``<Type> in <function>, <file>:<line>`` of the innermost frame that raised ``exc``."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    frame = frames[-1]
    path = Path(frame.filename)
    shown = path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path.name
    return f"{type(exc).__name__} in {frame.name}, {shown}:{frame.lineno}"


def _detail(text: str, category: str) -> str:
    """``text`` without a leading ``<category>: `` (the reason adds it once)."""
    prefix = f"{category}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _predict(
    case: dict[str, Any], table: dict[str, Any], predict: Predictor, quantity: str
) -> tuple[float, str]:
    """(the prediction of one checked case, its assumptions), or :class:`_Uncovered` with the
    category of the failure."""
    try:
        got, value, why, *notes = predict(case, table)
        if value is None:
            raise _Uncovered(UNSUPPORTED, _detail(str(why or "not covered (no reason given)"), UNSUPPORTED))
        if got != quantity:
            raise _Uncovered(ERROR, f"the predictor gave {got!r} for a case that measures {quantity!r}")
        value = float(value)
    except _Uncovered:
        raise
    except ConfigError as exc:
        raise _Uncovered(INFEASIBLE, _detail(str(exc), INFEASIBLE)) from None
    except KeyError as exc:
        field = exc.args[0] if exc.args else "?"
        raise _Uncovered(INVALID, f"missing field {field!r} ({_where(exc)})") from None
    except (TypeError, ValueError) as exc:
        raise _Uncovered(INVALID, f"{exc} ({_where(exc)})") from None
    except Exception as exc:  # a bug in the predictor: reported for this case, the run goes on
        raise _Uncovered(ERROR, f"{_where(exc)}: {exc}") from None
    if not math.isfinite(value):
        raise _Uncovered(ERROR, f"non-finite prediction ({value})")
    return value, "; ".join(notes[0]) if notes else ""


def evaluate(case: dict[str, Any], hardware_table: dict[str, Any], predict: Predictor) -> CaseResult:
    """Predict one case that passed :func:`check_case`; a failure makes it uncovered, with its reason."""
    [(quantity, measured)] = case["measured"].items()
    measured = float(measured)
    assumptions = ""
    try:
        predicted, assumptions = _predict(case, hardware_table, predict, quantity)
        category = reason = None
    except _Uncovered as exc:
        predicted, category, reason = None, exc.category, str(exc)
    return CaseResult(
        id=case["id"],
        family=case.get("family"),
        kind=case["kind"],
        quantity=quantity,
        measured=measured,
        predicted=predicted,
        error_percent=None if predicted is None else 100.0 * (predicted - measured) / measured,
        covered=predicted is not None,
        category=category,
        reason=reason,
        assumptions=assumptions,
    )


def rejected(case: Any, number: int, category: str, detail: str) -> CaseResult:
    """The uncovered row of a case that failed :func:`check_case`: whatever of it can be read."""
    case_id, family, kind = (_field_of(case, k) for k in ("id", "family", "kind"))
    measured = _field_of(case, "measured")
    quantity, value = (None, None)
    if isinstance(measured, dict) and measured:
        quantity, value = next(iter(measured.items()))
    return CaseResult(
        id=case_id if isinstance(case_id, str) and case_id else f"#{number}",
        family=family if isinstance(family, str) else None,
        kind=kind if kind in KINDS else None,
        quantity=str(quantity) if quantity is not None else None,
        measured=float(value) if _positive_number(value) else None,
        predicted=None,
        error_percent=None,
        covered=False,
        category=category,
        reason=f"{category}: {detail}",
    )


def stats(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Cases, covered, coverage (%), and of the covered ones the mean / median / max absolute % error
    and the bias (mean signed % error: > 0, the model predicts too high)."""
    errors = [r.error_percent for r in results if r.error_percent is not None]
    ape = [abs(e) for e in errors]
    return {
        "n": len(results),
        "covered": len(ape),
        "coverage": 100.0 * len(ape) / len(results) if results else None,
        "mape": statistics.fmean(ape) if ape else None,
        "median_ape": statistics.median(ape) if ape else None,
        "bias": statistics.fmean(errors) if errors else None,
        "max_ape": max(ape) if ape else None,
    }


def _family_key(family: str | None) -> str:
    return "(none)" if family is None else str(family)


def summarize(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Overall statistics, then per kind (both kinds always) and per family (in file order)."""
    families = dict.fromkeys(_family_key(r.family) for r in results)
    return {
        **stats(results),
        "by_kind": {k: stats([r for r in results if r.kind == k]) for k in KINDS},
        "by_family": {f: stats([r for r in results if _family_key(r.family) == f]) for f in families},
    }


def report(
    cases: Sequence[Any],
    hardware_table: dict[str, Any],
    predict: Predictor | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The JSON-ready report of ``cases``: a row per case (broken ones included) and the summary.

    ``progress(done)`` is called after each case.
    """
    predict = predict or default_predictor()
    known = Known.load(hardware_table)
    seen: dict[str, int] = {}
    results = []
    for number, case in enumerate(cases, start=1):
        problem = check_case(case, known, number, seen)
        case_id = _field_of(case, "id")
        if isinstance(case_id, str):
            seen.setdefault(case_id, number)
        if problem is None:
            results.append(evaluate(case, hardware_table, predict))
        else:
            results.append(rejected(case, number, *problem))
        if progress is not None:
            progress(number)
    return {"cases": [asdict(r) for r in results], "summary": summarize(results)}


# ---------------------------------------------------------------------------------------- output


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.5g}"


def _pct(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.1f}" if signed else f"{value:.1f}")


def case_table(cases: Sequence[dict[str, Any]], top: int | None) -> str:
    """Per-case rows; with ``top``, only the ``top`` worst covered cases, worst first."""
    if top is not None:
        covered = [c for c in cases if c["covered"]]
        cases = sorted(covered, key=lambda c: -abs(c["error_percent"]))[:top]
    rows = [
        [
            c["id"],
            c["kind"] or "-",
            c["quantity"] or "-",
            _num(c["measured"]),
            _num(c["predicted"]),
            _pct(c["error_percent"], signed=True) if c["covered"] else c["category"],
        ]
        for c in cases
    ]
    return format_table(["id", "kind", "quantity", "measured", "predicted", "error %"], rows, align="lllrrr")


def _scopes(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    scopes = [("all", summary)]
    scopes += [(f"kind {k}", s) for k, s in summary["by_kind"].items()]
    scopes += [(f"family {f}", s) for f, s in summary["by_family"].items()]
    return scopes


def summary_table(summary: dict[str, Any]) -> str:
    """One row overall, one per kind, one per family."""
    rows = [
        [
            name,
            s["n"],
            s["covered"],
            _pct(s["coverage"]),
            _pct(s["mape"]),
            _pct(s["median_ape"]),
            _pct(s["bias"], signed=True),
            _pct(s["max_ape"]),
        ]
        for name, s in _scopes(summary)
    ]
    headers = ["scope", "cases", "covered", "coverage %", "MAPE %", "median |err| %", "bias %", "max |err| %"]
    return format_table(headers, rows, align="lrrrrrrr")


def uncovered_counts(cases: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Uncovered cases per reason category (categories with none left out)."""
    counts = {c: sum(case["category"] == c for case in cases) for c in CATEGORIES}
    return {c: n for c, n in counts.items() if n}


def assumption_counts(cases: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """How many covered cases made each assumption (a chosen option: its kind, as ``chose recompute``),
    most frequent first."""
    counts: collections.Counter[str] = collections.Counter()
    for case in cases:
        for note in filter(None, (case.get("assumptions") or "").split("; ")):
            if note.startswith("chose "):  # one line per option chosen, not per value
                choices = note.removeprefix("chose ").split(", ")
                counts.update(f"chose {c.split('=')[0]} (the case left it open)" for c in choices)
            elif note.startswith("batch "):
                counts["batch: the largest that fits (max_feasible)"] += 1
            else:
                counts[note] += 1
    return counts.most_common()


def render(rep: dict[str, Any], top: int | None) -> str:
    """The text report: header, case table, summary table, uncovered cases with reasons."""
    hw = rep["hardware_file"] or "none (conf/hardware/<key>.yaml presets)"
    shown = f", {top} worst shown" if top is not None else ""
    lines = [f"cases: {rep['cases_file']} ({len(rep['cases'])} selected{shown}); hardware table: {hw}", ""]
    lines += [case_table(rep["cases"], top), "", summary_table(rep["summary"])]
    notes = assumption_counts(rep["cases"])
    if notes:
        lines += [
            "",
            "assumed where the cases are silent (covered cases; per case in format=json, cases.csv):",
        ]
        lines += [f"  {n:4d} × {note}" for note, n in notes]
    uncovered = [c for c in rep["cases"] if not c["covered"]]
    if uncovered:
        counts = ", ".join(f"{n} {c}" for c, n in uncovered_counts(rep["cases"]).items())
        lines += ["", f"uncovered ({len(uncovered)}: {counts}):"]
        lines += [f"  {c['id']}: {c['reason']}" for c in uncovered]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- scatter plot


def _style(index: int) -> tuple[Any, str]:
    """(colour, marker) of the ``index``-th family: the 10 strong tab20 colours, then the 10 light
    ones, each with its own marker, so neighbours differ in both."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]
    colour = tab20((2 * index) % 20 + (index // 10) % 2)
    return colour, "osD^vP*X<>"[index % 10]


def scatter_figure(rep: dict[str, Any]) -> Figure:
    """Predicted versus measured, log-log, one panel per measured quantity and one colour per family,
    with the y = x line and the ±10 % band; the title gives cases, covered, MAPE, median and bias."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    cases, s = rep["cases"], rep["summary"]
    covered = [c for c in rep["cases"] if c["covered"]]
    quantities = list(dict.fromkeys(c["quantity"] for c in covered))
    families = list(dict.fromkeys(_family_key(c["family"]) for c in covered))
    styles = {f: _style(i) for i, f in enumerate(families)}
    ncols = max(1, min(4, len(quantities)))
    nrows = max(1, math.ceil(len(quantities) / ncols))
    fig = Figure(figsize=(3.7 * ncols + 2.8, 3.7 * nrows + 0.8), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, quantity in zip(axes, quantities, strict=False):
        mine = [c for c in cases if c["quantity"] == quantity]
        shown = [c for c in mine if c["covered"]]
        values = [v for c in shown for v in (c["measured"], c["predicted"])]
        lo, hi = min(values) / 1.4, max(values) * 1.4
        ax.fill_between(
            [lo, hi],
            [lo * (1 - BAND), hi * (1 - BAND)],
            [lo * (1 + BAND), hi * (1 + BAND)],
            color="0.85",
            lw=0,
            zorder=0,
        )
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--", zorder=1)
        for family in families:
            pts = [c for c in shown if _family_key(c["family"]) == family]
            if pts:
                colour, marker = styles[family]
                ax.scatter(
                    [c["measured"] for c in pts],
                    [c["predicted"] for c in pts],
                    s=18,
                    color=colour,
                    marker=marker,
                    edgecolors="black",
                    linewidths=0.3,
                    alpha=0.85,
                    zorder=2,
                )
        q = stats([_as_result(c) for c in mine])
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
        ax.set_xlabel(f"measured {quantity}", fontsize=8)
        ax.set_ylabel(f"predicted {quantity}", fontsize=8)
        ax.tick_params(labelsize=7, which="both")
        for axis in (ax.xaxis, ax.yaxis):
            _plain_log_ticks(axis, lo, hi)
        ax.set_title(
            f"{quantity}\n{q['covered']}/{q['n']} covered, MAPE {_pct(q['mape'])} %, bias "
            f"{_pct(q['bias'], signed=True)} %",
            fontsize=8,
        )
        ax.grid(True, which="major", lw=0.3, color="0.8")
    for ax in axes[len(quantities) :]:
        ax.set_axis_off()
    if not quantities:
        axes[0].text(0.5, 0.5, "no case covered", ha="center", va="center", transform=axes[0].transAxes)
    per_family = {f: sum(_family_key(c["family"]) == f for c in covered) for f in families}
    handles = [
        Line2D(
            [],
            [],
            ls="",
            marker=styles[f][1],
            color=styles[f][0],
            markeredgecolor="black",
            markeredgewidth=0.3,
            label=f"{f} ({per_family[f]})",
        )
        for f in families
    ]
    handles += [
        Line2D([], [], color="0.3", lw=0.8, ls="--", label="predicted = measured"),
        Line2D([], [], color="0.85", lw=6, label=f"±{BAND:.0%} band"),
    ]
    fig.legend(
        handles=handles,
        loc="outside right center",
        fontsize=7,
        title="family (covered)",
        title_fontsize=8,
        frameon=False,
    )
    name = Path(str(rep.get("cases_file") or "cases")).name
    fig.suptitle(
        f"{name}: {s['n']} cases, {s['covered']} covered ({_pct(s['coverage'])} %), "
        f"MAPE {_pct(s['mape'])} %, median {_pct(s['median_ape'])} %, bias {_pct(s['bias'], signed=True)} %",
        fontsize=10,
    )
    return fig


def _plain_log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Tick labels as plain numbers (30, not 3×10¹); within 1.5 decades the 2s, 3s and 5s too, within
    0.6 decades every minor tick."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if math.log10(hi / lo) > 1.5:
        axis.set_minor_formatter(NullFormatter())
        return

    def minor(v: float, _: Any) -> str:
        mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
        shown = range(2, 10) if math.log10(hi / lo) < 0.6 else (2, 3, 5)
        return f"{v:g}" if any(abs(mantissa - m) < 1e-6 for m in shown) else ""

    axis.set_minor_formatter(FuncFormatter(minor))


def _as_result(row: dict[str, Any]) -> CaseResult:
    return CaseResult(**row)


def write_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# -------------------------------------------------------------------------------------- tracking


def _metric_name(text: str) -> str:
    return re.sub(r"[^/\w.\- :]", "_", text)


def summary_metrics(rep: dict[str, Any]) -> dict[str, Any]:
    """MLflow metrics: the statistics overall (``mape``, ``coverage``, ``bias``, ...), per kind
    (``kind.training.mape``), per family (``family.<name>.mape``) and ``uncovered.<category>``."""
    s = rep["summary"]
    metrics: dict[str, Any] = {k: s[k] for k in STAT_KEYS}
    metrics["kind"] = {k: {key: v[key] for key in STAT_KEYS} for k, v in s["by_kind"].items()}
    metrics["family"] = {
        _metric_name(f): {key: v[key] for key in STAT_KEYS} for f, v in s["by_family"].items()
    }
    metrics["uncovered"] = {
        _metric_name(c.replace(" ", "_")): sum(r["category"] == c for r in rep["cases"]) for c in CATEGORIES
    }
    return metrics


def log_report(run: JobRun, rep: dict[str, Any], fig: Figure | None) -> None:
    """The summary metrics, the per-case table (``cases.csv``), the report (``report.json``) and the
    scatter (``scatter.png``) on ``run``; nothing when tracking is off."""
    if not run.enabled:
        return
    run.log_metrics(summary_metrics(rep))
    fields = list(CaseResult.__dataclass_fields__)
    run.log_table_csv({k: [c[k] for c in rep["cases"]] for k in fields}, "cases.csv")
    run.log_dict(rep, "report.json")
    if fig is not None:
        run.log_figure(fig, "scatter.png")


# ------------------------------------------------------------------------------------------- app


def _names(value: Any, key: str) -> list[str]:
    """A list override (``ids=[a,b]``) or a single name (``ids=a``) as a list of strings."""
    if value is None:
        return []
    items = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not all(isinstance(v, str | int) for v in items):
        raise ConfigError(f"{key} must be a list of names, got {items!r}")
    return [str(v) for v in items]


def _top(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"top must be a positive integer or null, got {value!r}")
    return value


def task(cfg: DictConfig) -> None:
    if cfg.format not in ("table", "json"):
        raise ConfigError(f"format must be 'table' or 'json', got '{cfg.format}'")
    top = _top(cfg.top)
    plot = cfg.get("plot")
    if plot is not None and not str(plot).endswith(".png"):
        raise ConfigError(f"plot must be a .png path or null, got '{plot}'")
    path = resolve_path(str(cfg.cases))
    cases = select(load_cases(path), _names(cfg.families, "families"), _names(cfg.ids, "ids"))
    hardware_table, hardware_file = load_hardware_table(path)
    progress = progress_reporter(bool(cfg.get("progress")), len(cases))
    families = len({c.get("family") for c in cases if isinstance(c, dict)})
    table = f"; hardware table {hardware_file}" if hardware_file else ""
    print(
        f"dse.validate: {len(cases)} cases of {families} families from {path}{table}",
        file=sys.stderr,
        flush=True,
    )
    with JobRun(cfg, name="validate", tags={"dse.cases_file": str(path)}) as run:
        rep = {
            "cases_file": str(path),
            "hardware_file": str(hardware_file) if hardware_file else None,
            **report(cases, hardware_table, progress=progress),
        }
        fig = scatter_figure(rep) if run.enabled or plot else None
        if plot and fig is not None:
            write_figure(fig, Path(str(plot)).expanduser())
        log_report(run, rep, fig)
        rep["results"] = run_location(run, None, [])
    if cfg.format == "json":
        print_json(rep)
    else:
        print("\n".join([render(rep, top), *location_lines(rep["results"])]))
    failed = [c["id"] for c in rep["cases"] if c["category"] == ERROR]
    if failed:
        sys.stdout.flush()
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        print(
            f"error: the predictor failed on {len(failed)} case(s) (a bug, see their reasons): {shown}",
            file=sys.stderr,
        )
        raise SystemExit(1)


def main() -> None:
    run_app(task, "validate", positional=("cases",), check=lambda cfg: check_tracking(cfg.get("tracking")))


if __name__ == "__main__":
    main()
