"""``python -m dse.validate``: score the performance model against published measurements.

    python -m dse.validate [experiments/validation/calibration.yaml] [families=[...]] [ids=[...]] \\
        [top=20] [format=json]

Reads cases in the schema of ``experiments/validation/SCHEMA.md``, asks :func:`dse.predict.predict_case`
for each case's measured quantity and reports the signed error ``100·(predicted − measured)/measured``
per case, then the mean / median / max absolute error overall, per kind and per family. A case the
model cannot predict is *uncovered*, with its reason; it never counts in the error statistics.

The predictor is looked up as ``dse.predict.predict_case`` when a run starts (not bound at import),
so tests can replace it with ``monkeypatch``. A :class:`ConfigError` it raises for one case becomes
that case's uncovered reason (``error: ...``); any other exception is a bug and propagates.
"""

from __future__ import annotations

import importlib
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig

from costmodels.errors import ConfigError
from dse._app import CONF_DIR, format_table, print_json, run_app

REPO_DIR = CONF_DIR.parent
KINDS = ("training", "inference")
HARDWARE_TABLE = "hardware.yaml"  # the schema's accelerator table, beside the cases file
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Predictor = Callable[[dict[str, Any], dict[str, Any]], tuple[str, float | None, str | None]]


@dataclass(frozen=True)
class CaseResult:
    """One case scored: ``predicted`` is None when uncovered, and ``reason`` says why."""

    id: str
    family: str | None
    kind: str
    quantity: str
    measured: float
    predicted: float | None
    error_percent: float | None
    covered: bool
    reason: str | None


# ----------------------------------------------------------------------------------------- reading


def resolve_path(text: str) -> Path:
    """A user path; a relative one not found in the current directory is tried under the repo root."""
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_DIR / path).exists():
        return REPO_DIR / path
    return path


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a one-line ConfigError (with the line)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None


def load_cases(path: Path) -> list[dict[str, Any]]:
    """The checked ``cases:`` list of a cases file (ids unique, one measured target each)."""
    data = read_yaml(path, "cases")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise ConfigError(f"{path}: expected a mapping with a top-level 'cases:' list")
    seen: dict[str, int] = {}
    for number, case in enumerate(data["cases"], start=1):
        check_case(case, number, path)
        if case["id"] in seen:
            raise ConfigError(
                f"{path}: duplicate case id '{case['id']}' (cases #{seen[case['id']]} and #{number})"
            )
        seen[case["id"]] = number
    return data["cases"]


def check_case(case: Any, number: int, path: Path) -> None:
    """The fields the report needs: ``id``, ``kind``, and ``measured`` with exactly one positive target."""
    if not isinstance(case, dict):
        raise ConfigError(f"{path}: case #{number} must be a mapping, got {type(case).__name__}")
    case_id = case.get("id")
    if not isinstance(case_id, str) or not case_id:
        raise ConfigError(f"{path}: case #{number} has no 'id' (a non-empty string)")
    where = f"{path}: case '{case_id}'"
    if case.get("kind") not in KINDS:
        raise ConfigError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {case.get('kind')!r}")
    measured = case.get("measured")
    if not isinstance(measured, dict) or len(measured) != 1:
        targets = ", ".join(map(str, measured)) if isinstance(measured, dict) else repr(measured)
        raise ConfigError(f"{where}: 'measured' must hold exactly one target, got {targets or 'none'}")
    [(quantity, value)] = measured.items()
    if not _positive_number(value):
        raise ConfigError(f"{where}: 'measured.{quantity}' must be a positive number, got {value!r}")


def _positive_number(value: Any) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0
    )


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


def select(cases: list[dict[str, Any]], families: Sequence[str], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Cases whose family is in ``families`` and id in ``ids`` (an empty filter keeps all)."""
    for name, wanted, have in (
        ("families", families, {c.get("family") for c in cases}),
        ("ids", ids, {c["id"] for c in cases}),
    ):
        unknown = [w for w in wanted if w not in have]
        if unknown:
            raise ConfigError(f"unknown {name}: {', '.join(unknown)}; the file has {len(have)} {name}")
    return [c for c in cases if (not families or c.get("family") in families) and (not ids or c["id"] in ids)]


# --------------------------------------------------------------------------------------- scoring


def default_predictor() -> Predictor:
    """``dse.predict.predict_case``, looked up now (so a monkeypatched one is found)."""
    return importlib.import_module("dse.predict").predict_case


def evaluate(case: dict[str, Any], hardware_table: dict[str, Any], predict: Predictor) -> CaseResult:
    """Predict one case; a ConfigError from the predictor makes the case uncovered, with its message."""
    [(quantity, measured)] = case["measured"].items()
    try:
        got, predicted, reason = predict(case, hardware_table)
    except ConfigError as exc:
        predicted, reason = None, f"error: {exc}"
    else:
        if predicted is not None and got != quantity:
            raise ValueError(
                f"predict_case gave {got!r} for case {case['id']!r}, which measures {quantity!r}"
            )
        if predicted is not None:
            predicted = float(predicted)
            if not math.isfinite(predicted):
                predicted, reason = None, f"error: non-finite prediction ({predicted})"
    covered = predicted is not None
    return CaseResult(
        id=case["id"],
        family=case.get("family"),
        kind=case["kind"],
        quantity=quantity,
        measured=float(measured),
        predicted=predicted,
        error_percent=100.0 * (predicted - measured) / measured if covered else None,
        covered=covered,
        reason=None if covered else (reason or "not covered (no reason given)"),
    )


def stats(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Case count, covered count and mean / median / max absolute % error of the covered ones."""
    ape = [abs(r.error_percent) for r in results if r.error_percent is not None]
    return {
        "n": len(results),
        "covered": len(ape),
        "mape": statistics.fmean(ape) if ape else None,
        "median_ape": statistics.median(ape) if ape else None,
        "max_ape": max(ape) if ape else None,
    }


def summarize(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Overall statistics, then per kind (both kinds always) and per family (in file order)."""
    families = dict.fromkeys(r.family for r in results)
    return {
        **stats(results),
        "by_kind": {k: stats([r for r in results if r.kind == k]) for k in KINDS},
        "by_family": {str(f): stats([r for r in results if r.family == f]) for f in families},
    }


def report(
    cases: Sequence[dict[str, Any]], hardware_table: dict[str, Any], predict: Predictor | None = None
) -> dict[str, Any]:
    """The JSON-ready report of ``cases``: per-case results and the summary."""
    predict = predict or default_predictor()
    results = [evaluate(case, hardware_table, predict) for case in cases]
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
            c["kind"],
            c["quantity"],
            _num(c["measured"]),
            _num(c["predicted"]),
            _pct(c["error_percent"], signed=True) if c["covered"] else "uncovered",
        ]
        for c in cases
    ]
    return format_table(["id", "kind", "quantity", "measured", "predicted", "error %"], rows, align="lllrrr")


def summary_table(summary: dict[str, Any]) -> str:
    """One row overall, one per kind, one per family."""
    scopes = [("all", summary)]
    scopes += [(f"kind {k}", s) for k, s in summary["by_kind"].items()]
    scopes += [(f"family {f}", s) for f, s in summary["by_family"].items()]
    rows = [
        [name, s["n"], s["covered"], _pct(s["mape"]), _pct(s["median_ape"]), _pct(s["max_ape"])]
        for name, s in scopes
    ]
    headers = ["scope", "cases", "covered", "MAPE %", "median |err| %", "max |err| %"]
    return format_table(headers, rows, align="lrrrrr")


def render(rep: dict[str, Any], top: int | None) -> str:
    """The text report: header, case table, summary table, uncovered cases with reasons."""
    hw = rep["hardware_file"] or "none (conf/hardware/<key>.yaml presets)"
    shown = f", {top} worst shown" if top is not None else ""
    lines = [f"cases: {rep['cases_file']} ({len(rep['cases'])} selected{shown}); hardware table: {hw}", ""]
    lines += [case_table(rep["cases"], top), "", summary_table(rep["summary"])]
    uncovered = [c for c in rep["cases"] if not c["covered"]]
    if uncovered:
        lines += ["", f"uncovered ({len(uncovered)}):"]
        lines += [f"  {c['id']}: {c['reason']}" for c in uncovered]
    return "\n".join(lines)


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
    path = resolve_path(str(cfg.cases))
    cases = select(load_cases(path), _names(cfg.families, "families"), _names(cfg.ids, "ids"))
    hardware_table, hardware_file = load_hardware_table(path)
    rep = {
        "cases_file": str(path),
        "hardware_file": str(hardware_file) if hardware_file else None,
        **report(cases, hardware_table),
    }
    if cfg.format == "json":
        print_json(rep)
    else:
        print(render(rep, top))


def main() -> None:
    run_app(task, "validate", positional=("cases",))


if __name__ == "__main__":
    main()
