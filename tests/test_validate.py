"""``dse.validate``: reading and checking cases, the error statistics, filters, JSON shape, CLI errors.

The predictor is replaced by a fake ``dse.predict`` module (``monkeypatch``), so the numbers here are
by hand: predictions off by +10 %, −20 % and one uncovered case give MAPE 15 %, median 15 %, max 20 %.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from costmodels.errors import ConfigError
from dse import validate

# id -> predicted / measured ratio; None: uncovered; "raise": the predictor raises ConfigError.
RATIOS: dict[str, Any] = {"t1": 1.10, "t2": 0.80, "i1": None, "i2": 1.05, "i3": "raise"}


def case(case_id: str, kind: str, family: str, measured: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": case_id,
        "kind": kind,
        "family": family,
        "hardware": "a100_80gb_sxm",
        "measured": measured,
        **extra,
    }


CASES = [
    case("t1", "training", "fam_a", {"iteration_time_s": 10.0}),
    case("t2", "training", "fam_a", {"iteration_time_s": 2.5}),
    case("i1", "inference", "fam_b", {"latency_ms": 100.0}),
    case("i2", "inference", "fam_b", {"latency_ms": 40.0}),
    case("i3", "inference", "fam_c", {"ttft_ms": 8.0}),
]


def write_cases(folder: Path, cases: Any, name: str = "cases.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"cases": cases}, sort_keys=False))
    return path


def fake_predict(
    case: dict[str, Any], hardware_table: dict[str, Any]
) -> tuple[str, float | None, str | None]:
    [(quantity, measured)] = case["measured"].items()
    ratio = RATIOS[case["id"]]
    if ratio == "raise":
        raise ConfigError("no such hardware key")
    if ratio is None:
        return quantity, None, "decode not modelled"
    return quantity, measured * ratio, None


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Install a fake ``dse.predict``; returns the (case id, hardware table) of every call."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def predict_case(case: dict[str, Any], hardware_table: dict[str, Any]) -> Any:
        seen.append((case["id"], hardware_table))
        return fake_predict(case, hardware_table)

    module = types.ModuleType("dse.predict")
    module.predict_case = predict_case  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dse.predict", module)
    return seen


def test_brief_example(calls: list) -> None:
    """+10 %, −20 % and one uncovered case: MAPE 15 %, median 15 %, max 20 %, 2 of 3 covered."""
    s = validate.report([c for c in CASES if c["id"] in ("t1", "t2", "i1")], {})["summary"]
    assert (s["n"], s["covered"]) == (3, 2)
    assert (s["mape"], s["median_ape"], s["max_ape"]) == pytest.approx((15.0, 15.0, 20.0))


def test_summary_by_hand(calls: list) -> None:
    """Errors +10, −20 (training), +5, uncovered, error (inference)."""
    rep = validate.report(CASES, {})
    errors = {c["id"]: c["error_percent"] for c in rep["cases"]}
    assert errors["t1"] == pytest.approx(10.0)
    assert errors["t2"] == pytest.approx(-20.0)
    assert errors["i2"] == pytest.approx(5.0)
    assert errors["i1"] is None and errors["i3"] is None
    s = rep["summary"]
    assert (s["n"], s["covered"]) == (5, 3)
    assert s["mape"] == pytest.approx(35 / 3)
    assert s["median_ape"] == pytest.approx(10.0)
    assert s["max_ape"] == pytest.approx(20.0)
    train, infer = s["by_kind"]["training"], s["by_kind"]["inference"]
    assert (train["n"], train["covered"], train["mape"], train["median_ape"], train["max_ape"]) == (
        2, 2, pytest.approx(15.0), pytest.approx(15.0), pytest.approx(20.0),
    )  # fmt: skip
    assert (infer["n"], infer["covered"], infer["mape"]) == (3, 1, pytest.approx(5.0))
    assert s["by_family"]["fam_c"] == {
        "n": 1,
        "covered": 0,
        "mape": None,
        "median_ape": None,
        "max_ape": None,
    }


def test_uncovered_reasons_and_json_shape(calls: list) -> None:
    rep = validate.report(CASES, {})
    by_id = {c["id"]: c for c in rep["cases"]}
    assert set(by_id["t1"]) == {
        "id", "family", "kind", "quantity", "measured", "predicted", "error_percent", "covered", "reason",
    }  # fmt: skip
    assert by_id["t1"]["covered"] and by_id["t1"]["reason"] is None
    assert by_id["i1"] == {
        **by_id["i1"],
        "covered": False,
        "predicted": None,
        "reason": "decode not modelled",
    }
    assert by_id["i3"]["reason"] == "error: no such hardware key"
    assert by_id["i3"]["quantity"] == "ttft_ms"
    assert set(rep["summary"]) == {"n", "covered", "mape", "median_ape", "max_ape", "by_kind", "by_family"}
    assert list(rep["summary"]["by_kind"]) == ["training", "inference"]
    assert list(rep["summary"]["by_family"]) == ["fam_a", "fam_b", "fam_c"]
    json.dumps(rep)  # JSON-ready as is


def test_other_exceptions_propagate(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    """A bug in the predictor (not a ConfigError), or a quantity other than the measured one, is raised."""

    def broken(case: dict[str, Any], table: dict[str, Any]) -> Any:
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        validate.report(CASES[:1], {}, predict=broken)
    with pytest.raises(ValueError, match="which measures 'iteration_time_s'"):
        validate.report(CASES[:1], {}, predict=lambda case, table: ("latency_ms", 1.0, None))
    rep = validate.report(CASES[:1], {}, predict=lambda case, table: ("iteration_time_s", float("nan"), None))
    assert rep["cases"][0]["reason"].startswith("error: non-finite")


def test_filters_and_hardware_table(tmp_path: Path, calls: list) -> None:
    path = write_cases(tmp_path, CASES)
    cases = validate.load_cases(path)
    assert [c["id"] for c in validate.select(cases, ["fam_b"], [])] == ["i1", "i2"]
    assert [c["id"] for c in validate.select(cases, [], ["t2", "i3"])] == ["t2", "i3"]
    assert [c["id"] for c in validate.select(cases, ["fam_a"], ["i2"])] == []
    assert len(validate.select(cases, [], [])) == 5
    with pytest.raises(ConfigError, match="unknown ids: nope"):
        validate.select(cases, [], ["t1", "nope"])
    assert validate.load_hardware_table(path) == ({}, None)
    (tmp_path / "hardware.yaml").write_text("hardware:\n  a100_80gb_sxm: {peak_tflops_dense: {bf16: 312}}\n")
    table, hw_path = validate.load_hardware_table(path)
    assert table == {"a100_80gb_sxm": {"peak_tflops_dense": {"bf16": 312}}} and hw_path is not None
    validate.report(validate.select(cases, [], ["t1"]), table)
    assert calls == [("t1", table)]  # filtered cases are never predicted; the table is passed through


def test_table_top_lists_worst_first(calls: list) -> None:
    rep = {"cases_file": "x.yaml", "hardware_file": None, **validate.report(CASES, {})}
    text = validate.render(rep, top=2)
    rows = [line.split()[0] for line in text.splitlines() if line[:1] in "ti" and line[1:2].isdigit()]
    assert rows == ["t2", "t1"]  # |−20| then |+10|; uncovered cases only in the uncovered list
    assert "uncovered (2):" in text and "  i1: decode not modelled" in text
    full = validate.render(rep, top=None)
    assert "-20.0" in full and "+10.0" in full and full.count("uncovered") >= 3


@pytest.mark.parametrize(
    ("cases", "message"),
    [
        ([{"kind": "training", "measured": {"x": 1}}], "case #1 has no 'id'"),
        (
            [case("a", "training", "f", {"x": 1}), case("a", "training", "f", {"x": 2})],
            "duplicate case id 'a'",
        ),
        ([{"id": "a", "measured": {"x": 1}}], "case 'a': 'kind' must be one of"),
        ([{"id": "a", "kind": "training"}], "case 'a': 'measured' must hold exactly one target, got None"),
        ([case("a", "training", "f", {})], "case 'a': 'measured' must hold exactly one target, got none"),
        ([case("a", "inference", "f", {"ttft_ms": 1, "itl_ms": 2})], "got ttft_ms, itl_ms"),
        ([case("a", "training", "f", {"x": 0})], "case 'a': 'measured.x' must be a positive number"),
        ([case("a", "training", "f", {"x": "fast"})], "'measured.x' must be a positive number"),
        (["just a string"], "case #1 must be a mapping"),
    ],
)
def test_case_errors(tmp_path: Path, cases: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate.load_cases(write_cases(tmp_path, cases))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cases file not found"):
        validate.load_cases(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - id: a\n    kind: [training\n")
    with pytest.raises(ConfigError, match="malformed YAML at line 4"):
        validate.load_cases(bad)
    bad.write_text("- id: a\n")
    with pytest.raises(ConfigError, match="top-level 'cases:' list"):
        validate.load_cases(bad)
    (tmp_path / "hardware.yaml").write_text("hardware: [a100]\n")
    with pytest.raises(ConfigError, match="'hardware:' mapping"):
        validate.load_hardware_table(bad)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.validate", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    """A user error before prediction: exit 2, one line on stderr, no traceback (one process per error)."""
    path = write_cases(tmp_path, [case("a", "training", "f", {"x": 1, "y": 2})])
    for args, message in [
        ((str(path), "format=json"), "case 'a': 'measured' must hold exactly one target, got x, y"),
        ((str(tmp_path / "nope.yaml"),), "cases file not found"),
    ]:
        proc = run_cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_end_to_end(tmp_path: Path) -> None:
    """The real predictor on one case it cannot model (an unknown target quantity): uncovered, exit 0."""
    pytest.importorskip("dse.predict")
    odd = case(
        "odd", "training", "f", {"furlongs_per_fortnight": 3.0},
        model={"model_type": "gpt2", "n_embd": 256, "n_head": 4, "n_layer": 2, "vocab_size": 1000},
        num_devices=1, precision="bf16",
        parallelism={"tp": 1, "pp": 1, "dp": 1, "cp": 1, "ep": 1, "vpp": 1, "sequence_parallel": False,
                     "zero_stage": 0, "recompute": "none"},
        batch={"global_batch_size": 8, "micro_batch_size": 1, "seq_len": 128},
    )  # fmt: skip
    path = write_cases(tmp_path, [odd])
    proc = run_cli(str(path), "format=json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["cases"][0]["covered"] is False and rep["cases"][0]["reason"]
    assert rep["summary"]["n"] == 1 and rep["summary"]["covered"] == 0 and rep["summary"]["mape"] is None
