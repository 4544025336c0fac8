"""``dse.validate``: the per-case check, the error statistics, filters, JSON shape, scatter, MLflow, CLI.

The predictor is replaced by a fake ``dse.predict`` module (``monkeypatch``), so the numbers here are
by hand: predictions off by +10 %, −20 % and one uncovered case give MAPE 15 %, median 15 %, max 20 %,
bias −5 %. Only test_cli_end_to_end runs the real predictor (one small inference case).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import types
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from costmodels.errors import ConfigError
from dse import validate

# id -> predicted / measured ratio; None: uncovered; "raise": the predictor raises ConfigError.
RATIOS: dict[str, Any] = {"t1": 1.10, "t2": 0.80, "i1": None, "i2": 1.05, "i3": "raise"}
GPT2 = {"model_type": "gpt2", "n_embd": 256, "n_head": 4, "n_layer": 2, "vocab_size": 1000}
PARALLEL = {"tp": 1, "pp": 1, "dp": 1, "cp": 1, "ep": 1, "vpp": 1, "sequence_parallel": False,
            "zero_stage": 0, "recompute": "none"}  # fmt: skip
BATCH = {
    "training": {"global_batch_size": 8, "micro_batch_size": 1, "seq_len": 128},
    "inference": {"batch_size": 1, "input_len": 128, "output_len": 16},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def case(case_id: str, kind: str, family: str, measured: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A case every field check accepts (a 2-layer GPT-2 on one A100), with ``extra`` fields replaced."""
    return {
        "id": case_id,
        "kind": kind,
        "family": family,
        "model": dict(GPT2),
        "hardware": "a100_80gb_sxm",
        "num_devices": 1,
        "parallelism": dict(PARALLEL),
        "batch": dict(BATCH[kind]),
        "precision": "bf16",
        "measured": measured,
        **extra,
    }


def without(c: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A copy of case ``c`` with the field at ``a.b`` removed."""
    c = copy.deepcopy(c)
    *parents, key = dotted.split(".")
    node = c
    for p in parents:
        node = node[p]
    del node[key]
    return c


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
    ratio = RATIOS.get(case["id"], 1.0)
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
    assert s["coverage"] == pytest.approx(200 / 3) and s["bias"] == pytest.approx(-5.0)


def test_summary_by_hand(calls: list) -> None:
    """Errors +10, −20 (training), +5, uncovered, infeasible (inference)."""
    rep = validate.report(CASES, {})
    errors = {c["id"]: c["error_percent"] for c in rep["cases"]}
    assert errors["t1"] == pytest.approx(10.0)
    assert errors["t2"] == pytest.approx(-20.0)
    assert errors["i2"] == pytest.approx(5.0)
    assert errors["i1"] is None and errors["i3"] is None
    s = rep["summary"]
    assert (s["n"], s["covered"], s["coverage"]) == (5, 3, pytest.approx(60.0))
    assert s["mape"] == pytest.approx(35 / 3)
    assert s["median_ape"] == pytest.approx(10.0)
    assert s["bias"] == pytest.approx((10 - 20 + 5) / 3)
    assert s["max_ape"] == pytest.approx(20.0)
    assert s["by_kind"]["training"] == pytest.approx(
        {
            "n": 2,
            "covered": 2,
            "coverage": 100.0,
            "mape": 15.0,
            "median_ape": 15.0,
            "bias": -5.0,
            "max_ape": 20.0,
        }
    )
    infer = s["by_kind"]["inference"]
    assert (infer["n"], infer["covered"], infer["mape"], infer["bias"]) == (3, 1, 5.0, 5.0)
    assert infer["coverage"] == pytest.approx(100 / 3)
    assert s["by_family"]["fam_b"]["coverage"] == pytest.approx(50.0)
    assert s["by_family"]["fam_c"] == dict.fromkeys(validate.STAT_KEYS) | {
        "n": 1,
        "covered": 0,
        "coverage": 0.0,
    }
    assert validate.stats([]) == dict.fromkeys(validate.STAT_KEYS) | {"n": 0, "covered": 0}


def test_uncovered_reasons_and_json_shape(calls: list) -> None:
    rep = validate.report(CASES, {})
    by_id = {c["id"]: c for c in rep["cases"]}
    assert list(by_id["t1"]) == [
        "id", "family", "kind", "quantity", "measured", "predicted", "error_percent", "covered", "category",
        "reason", "assumptions",
    ]  # fmt: skip
    assert by_id["t1"]["covered"] and by_id["t1"]["reason"] is None and by_id["t1"]["category"] is None
    assert by_id["i1"] == {
        **by_id["i1"],
        "covered": False,
        "predicted": None,
        "category": "unsupported",
        "reason": "unsupported: decode not modelled",
    }
    assert by_id["i3"]["reason"] == "infeasible: no such hardware key"
    assert by_id["i3"]["quantity"] == "ttft_ms" and by_id["i3"]["measured"] == 8.0
    assert list(rep["summary"]) == [*validate.STAT_KEYS, "by_kind", "by_family"]
    assert list(rep["summary"]["by_kind"]) == ["training", "inference", "serving"]
    assert list(rep["summary"]["by_family"]) == ["fam_a", "fam_b", "fam_c"]
    for scope in [*rep["summary"]["by_kind"].values(), *rep["summary"]["by_family"].values()]:
        assert list(scope) == list(validate.STAT_KEYS)
    json.dumps(rep)  # JSON-ready as is


def test_predictor_failures_are_per_case(calls: list) -> None:
    """A predictor that raises or answers wrongly costs that case only, with the category of the failure."""

    def failing(case: dict[str, Any], table: dict[str, Any]) -> Any:
        match case["id"]:
            case "t1":
                raise ZeroDivisionError("bug")
            case "t2":
                return case["batch"]["no_such_field"]
            case "i1":
                raise TypeError("unsupported operand")
            case "i2":
                return "iteration_time_s", 1.0, None  # not the measured quantity
            case _:
                return "ttft_ms", float("nan"), None

    rep = validate.report(CASES, {}, predict=failing)
    reasons = {c["id"]: c["reason"] for c in rep["cases"]}
    assert reasons["t1"].startswith("error: ZeroDivisionError in failing, ") and reasons["t1"].endswith(
        ": bug"
    )
    assert "test_validate.py:" in reasons["t1"]
    assert reasons["t2"].startswith("invalid case: missing field 'no_such_field' (KeyError in failing")
    assert reasons["i1"].startswith("invalid case: unsupported operand (TypeError in failing")
    assert (
        reasons["i2"] == "error: the predictor gave 'iteration_time_s' for a case that measures 'latency_ms'"
    )
    assert reasons["i3"] == "error: non-finite prediction (nan)"
    assert rep["summary"]["covered"] == 0


def test_filters_and_hardware_table(tmp_path: Path, calls: list) -> None:
    path = write_cases(tmp_path, CASES)
    cases = validate.load_cases(path)
    assert [c["id"] for c in validate.select(cases, ["fam_b"], [])] == ["i1", "i2"]
    assert [c["id"] for c in validate.select(cases, [], ["t2", "i3"])] == ["t2", "i3"]
    assert [c["id"] for c in validate.select(cases, ["fam_a"], ["i2"])] == []
    assert len(validate.select(cases, [], [])) == 5
    assert len(validate.select([*cases, "not a case"], [], [])) == 6
    with pytest.raises(ConfigError, match="unknown ids: nope"):
        validate.select(cases, [], ["t1", "nope"])
    assert validate.load_hardware_table(path) == ({}, None)
    (tmp_path / "hardware.yaml").write_text("hardware:\n  a100_80gb_sxm: {peak_tflops_dense: {bf16: 312}}\n")
    table, hw_path = validate.load_hardware_table(path)
    assert table == {"a100_80gb_sxm": {"peak_tflops_dense": {"bf16": 312}}} and hw_path is not None
    validate.report(validate.select(cases, [], ["t1"]), table)
    assert calls == [("t1", table)]  # filtered cases are never predicted; the table is passed through
    [row] = validate.report([case("h", "training", "f", {"x": 1}, hardware="h100_sxm")], table)["cases"]
    assert row["reason"] == "invalid case: hardware 'h100_sxm' is not in the hardware table (hardware.yaml)"


def test_table_lists_worst_first_and_reasons(calls: list) -> None:
    rep = {"cases_file": "x.yaml", "hardware_file": None, **validate.report(CASES, {})}
    text = validate.render(rep, top=2)
    rows = [line.split()[0] for line in text.splitlines() if line[:1] in "ti" and line[1:2].isdigit()]
    assert rows == ["t2", "t1"]  # |−20| then |+10|; uncovered cases only in the uncovered list
    assert "uncovered (2: 1 unsupported, 1 infeasible):" in text
    assert (
        "  i1: unsupported: decode not modelled" in text and "  i3: infeasible: no such hardware key" in text
    )
    full = validate.render(rep, top=None)
    assert "-20.0" in full and "+10.0" in full
    assert "coverage %" in full and "bias %" in full
    [all_row] = [line for line in full.splitlines() if line.startswith("all ")]
    assert all_row.split() == ["all", "5", "3", "60.0", "11.7", "10.0", "-1.7", "20.0"]


def tr(case_id: str, **extra: Any) -> dict[str, Any]:
    return case(case_id, "training", "f", {"x": 1}) | extra


def inf(case_id: str, **extra: Any) -> dict[str, Any]:
    return case(case_id, "inference", "f", {"x": 1}) | extra


INVALID, UNSUPPORTED = "invalid case: ", "unsupported: "
# One broken case per row: (case, the start of its reason). Rows of the mixed file below.
BROKEN: list[tuple[Any, str]] = [
    (without(tr("b1"), "model"), INVALID + "missing 'model'"),
    (without(tr("b2"), "hardware"), INVALID + "missing 'hardware'"),
    (without(tr("b3"), "num_devices"), INVALID + "missing 'num_devices'"),
    (without(tr("b4"), "parallelism.dp"), INVALID + "missing 'parallelism.dp'"),
    (without(tr("b5"), "batch.seq_len"), INVALID + "missing 'batch.seq_len'"),
    (without(inf("b6"), "batch"), INVALID + "missing 'batch'"),
    (without(tr("b7"), "precision"), INVALID + "missing 'precision'"),
    (without(tr("b8"), "model.model_type"), INVALID + "missing 'model.model_type'"),
    (tr("b9", parallelism=None), INVALID + "'parallelism' must be a mapping, got None"),
    (tr("b10", hardware="tpu_v9"), UNSUPPORTED + "hardware 'tpu_v9' has no preset under conf/hardware/"),
    (tr("b11", model={"model_type": "rwkv"}), UNSUPPORTED + "model_type 'rwkv' (supported: "),
    (tr("b12", model=GPT2 | {"n_layer": 0}), INVALID + "'model': gpt2 config: field 'n_layer' "),
    (tr("b13", num_devices=0), INVALID + "'num_devices' must be a positive integer, got 0"),
    (tr("b14", num_devices=2), INVALID + "tp·pp·dp·cp = 1 but num_devices = 2"),
    (tr("b15", precision="int3"), UNSUPPORTED + "precision 'int3' (modelled: "),
    (inf("b16", batch={"batch_size": None, "input_len": 8, "output_len": 8}),
     INVALID + "'batch.batch_size' must be a positive integer, got None"),
    (tr("b17", batch={"global_batch_size": 6, "micro_batch_size": 4, "seq_len": 8}),
     INVALID + "'batch.micro_batch_size' 4 does not divide global_batch_size/dp = 6"),
    (tr("b18", measured={"x": 0}), INVALID + "'measured.x' must be a positive number, got 0"),
    (tr("b19", measured={"x": "fast"}), INVALID + "'measured.x' must be a positive number, got 'fast'"),
    (tr("b20", measured={}), INVALID + "'measured' must hold exactly one target, got none"),
    (inf("b21", measured={"ttft_ms": 1, "itl_ms": 2}),
     INVALID + "'measured' must hold exactly one target, got ttft_ms, itl_ms"),
    (without(tr("b22"), "measured"), INVALID + "missing 'measured'"),
    (tr("b23", kind="trianing"),
     INVALID + "'kind' must be one of training, inference, serving, got 'trianing'"),
    (without(tr("b24"), "id"), INVALID + "missing 'id'"),
    ("just a string", INVALID + "case #25 is a str, not a mapping"),
    (tr("t1"), INVALID + "duplicate id 't1' (first at case #26)"),
    (inf("b27", parallelism=PARALLEL | {"dp": 2}, num_devices=2),
     INVALID + "inference cases have dp = cp = 1 (SCHEMA.md), got dp=2, cp=1"),
    (tr("b28", parallelism=PARALLEL | {"recompute": "some"}),
     INVALID + "'parallelism.recompute' must be null or none | selective | full, got 'some'"),
    (inf("b29", cuda_graphs="yes"), INVALID + "'cuda_graphs' must be null or true or false, got 'yes'"),
]  # fmt: skip


def test_mixed_file_one_reason_per_broken_case(tmp_path: Path, calls: list) -> None:
    """Valid cases around broken ones: a full report of the valid ones, one reason per broken one,
    the broken ones never reach the predictor."""
    valid = copy.deepcopy(CASES)
    mixed = [*[c for c, _ in BROKEN[:25]], valid[0], *[c for c, _ in BROKEN[25:]], *valid[1:]]
    cases = validate.load_cases(write_cases(tmp_path, mixed))
    rep = validate.report(cases, {})
    assert len(rep["cases"]) == len(mixed) == len(BROKEN) + 5
    rows = rep["cases"][:25] + rep["cases"][26 : 26 + len(BROKEN) - 25]
    for row, (_, reason) in zip(rows, BROKEN, strict=True):
        assert not row["covered"] and row["reason"].startswith(reason), (row["id"], row["reason"])
        assert row["category"] == reason.split(": ")[0]
    assert [r["id"] for r in rows][23:25] == ["#24", "#25"]  # no id, not a mapping: its position
    assert rows[25]["id"] == "t1" and rows[0]["quantity"] == "x" and rows[0]["kind"] == "training"
    assert [c for c, _ in calls] == ["t1", "t2", "i1", "i2", "i3"]  # the valid ones, once each
    good = validate.report(CASES, {})
    s = rep["summary"]
    assert {k: s[k] for k in ("covered", "mape", "median_ape", "bias", "max_ape")} == {
        k: good["summary"][k] for k in ("covered", "mape", "median_ape", "bias", "max_ape")
    }
    assert s["n"] == len(mixed) and s["coverage"] == pytest.approx(100 * 3 / len(mixed))
    assert validate.uncovered_counts(rep["cases"]) == {"invalid case": 26, "unsupported": 4, "infeasible": 1}


def _cfg(path: Path, **over: Any) -> Any:
    base = {"cases": str(path), "families": [], "ids": [], "top": None, "format": "json", "plot": None,
            "progress": False, "tracking": {"enabled": False, "uri": None, "experiment": "dse"}}  # fmt: skip
    return OmegaConf.create(base | over)


def test_task_json_and_scatter_png(tmp_path: Path, calls: list, capsys: pytest.CaptureFixture) -> None:
    """The app on a mixed file: returns normally (exit 0), JSON on stdout, the scatter as a PNG."""
    path = write_cases(tmp_path, [*CASES, "broken", without(CASES[0], "batch") | {"id": "nb"}])
    plot = tmp_path / "plots" / "scatter.png"
    validate.task(_cfg(path, plot=str(plot), progress=True))
    out, err = capsys.readouterr()
    rep = json.loads(out)
    assert list(rep) == ["cases_file", "hardware_file", "cases", "summary", "results"]
    assert rep["results"] == {}  # tracking off: no MLflow run to point at
    assert err.splitlines()[0] == f"dse.validate: 7 cases of 3 families from {path}"  # what it does
    assert rep["summary"]["n"] == 7 and rep["summary"]["covered"] == 3
    assert [c["reason"] for c in rep["cases"][5:]] == [
        "invalid case: case #6 is a str, not a mapping",
        "invalid case: missing 'batch'",
    ]
    assert err.splitlines()[-1].startswith("validate: 7/7 cases (")  # progress: plain lines off a terminal
    data = plot.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(plot).shape
    assert width > height > 300


def test_task_exits_1_after_the_report_when_the_predictor_fails(
    tmp_path: Path, calls: list, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def predict(case: dict[str, Any], table: dict[str, Any]) -> Any:
        return 1 / 0 if case["id"] == "t2" else fake_predict(case, table)

    monkeypatch.setattr(validate, "default_predictor", lambda: predict)
    with pytest.raises(SystemExit) as exit_info:
        validate.task(_cfg(write_cases(tmp_path, CASES), format="table"))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "t2: error: ZeroDivisionError" in out and "family fam_a" in out  # the full report first
    assert (
        err.strip().splitlines()[-1]
        == "error: the predictor failed on 1 case(s) (a bug, see their reasons): t2"
    )
    assert len(err.strip().splitlines()) == 2  # the header line, then the one error line


def test_progress_lines() -> None:
    assert validate.progress_reporter(False, 10) is None
    stream = StringIO()
    tick = validate.progress_reporter(True, 25, stream)
    assert tick is not None
    for done in range(1, 26):
        tick(done)
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["3/25", "6/25", "9/25", "12/25", "15/25", "18/25",
                                                   "21/25", "24/25", "25/25"]  # fmt: skip
    stream = StringIO()
    tick = validate.progress_reporter(True, 100, stream, every_s=0.0)  # a slow run: a line per case
    assert tick is not None
    tick(1)
    assert stream.getvalue().startswith("validate: 1/100 cases (0 s)")


def test_tracking_logs_metrics_table_and_scatter(
    tmp_path: Path, calls: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("DSE_MLFLOW_SWEEP_RUN_ID", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"enabled": True, "uri": uri, "experiment": "validate_test"}
    validate.task(_cfg(write_cases(tmp_path, [*CASES, "broken"]), tracking=tracking))
    capsys.readouterr()
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("validate_test").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "validate"
    m = run.data.metrics
    assert m["n"] == 6 and m["covered"] == 3 and m["coverage"] == pytest.approx(50.0)
    assert m["mape"] == pytest.approx(35 / 3) and m["bias"] == pytest.approx(-5 / 3)
    assert m["kind.training.mape"] == pytest.approx(15.0) and m["kind.inference.bias"] == pytest.approx(5.0)
    assert m["family.fam_a.coverage"] == 100.0 and "family.fam_c.mape" not in m  # None: not logged
    assert (m["uncovered.invalid_case"], m["uncovered.unsupported"], m["uncovered.infeasible"]) == (1, 1, 1)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"scatter.png", "cases.csv", "report.json", "config.yaml"} <= artifacts
    folder = tmp_path / "artifacts"
    folder.mkdir()
    csv = Path(client.download_artifacts(run.info.run_id, "cases.csv", str(folder))).read_text().splitlines()
    header = "id,family,kind,quantity,measured,predicted,error_percent,covered,category,reason,assumptions"
    assert csv[0] == header
    assert csv[1].startswith("t1,fam_a,training,iteration_time_s,10.0,11.0") and len(csv) == 7
    png = Path(client.download_artifacts(run.info.run_id, "scatter.png", str(folder))).read_bytes()
    assert png.startswith(PNG_MAGIC)


def test_file_errors(tmp_path: Path) -> None:
    """Only what keeps the whole file from being read stops the run."""
    with pytest.raises(ConfigError, match=r"cases file .* does not exist"):
        validate.load_cases(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - id: a\n    kind: [training\n")
    with pytest.raises(ConfigError, match="malformed YAML at line 4"):
        validate.load_cases(bad)
    for text in ("- id: a\n", "cases: {a: 1}\n", "cases:\n", ""):
        bad.write_text(text)
        with pytest.raises(ConfigError, match="top-level 'cases:' list"):
            validate.load_cases(bad)
    (tmp_path / "hardware.yaml").write_text("hardware: [a100]\n")
    with pytest.raises(ConfigError, match="'hardware:' mapping"):
        validate.load_hardware_table(bad)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.validate", *args, "tracking=none"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    """A file-level error: exit 2, one line on stderr, no traceback (one process per error)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: a\n")
    for args, message in [
        ((str(bad), "format=json"), "expected a mapping with a top-level 'cases:' list"),
        ((str(tmp_path / "nope.yaml"),), "does not exist"),
    ]:
        proc = run_cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_end_to_end(tmp_path: Path) -> None:
    """The real predictor on a mixed file: one valid case predicted, an unknown target quantity
    (unsupported), a pipeline no split of the layers fits (infeasible, the predictor's message), a
    missing field (invalid); exit 0 with one reason each."""
    pytest.importorskip("dse.predict")
    ok = case("ok", "inference", "f", {"latency_ms": 5.0}, precision="fp16")
    odd = case("odd", "training", "f", {"furlongs_per_fortnight": 3.0})
    split = case("split", "training", "g", {"iteration_time_s": 1.0}, num_devices=8,
                 parallelism=PARALLEL | {"pp": 8})  # fmt: skip
    nodp = without(case("nodp", "training", "g", {"iteration_time_s": 1.0}), "parallelism.dp")
    path = write_cases(tmp_path, [ok, odd, split, nodp])
    proc = run_cli(str(path), "format=json", "progress=false")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    reasons = {c["id"]: c["reason"] for c in rep["cases"]}
    assert reasons["ok"] is None and rep["cases"][0]["predicted"] > 0
    assert reasons["odd"].startswith("unsupported: ") and "furlongs_per_fortnight" in reasons["odd"]
    assert reasons["split"].startswith("infeasible: no pipeline split of the 2 layers over pp=8")
    assert reasons["nodp"] == "invalid case: missing 'parallelism.dp'"
    s = rep["summary"]
    assert (s["n"], s["covered"], s["coverage"]) == (4, 1, 25.0)
    assert s["by_family"]["g"]["covered"] == 0 and s["by_family"]["g"]["mape"] is None


def test_assumptions_are_kept_per_case_and_counted() -> None:
    """A predictor that returns its assumptions (``dse.predict.explain_case``) has them joined on the
    case's row; the text report counts them over the covered cases, one line per chosen option."""
    notes = {"t1": ["attention flash (default)", "chose recompute=full, zero_stage=1"]}

    def explain(case: dict[str, Any], table: dict[str, Any]) -> tuple:
        quantity = next(iter(case["measured"]))
        return quantity, 1.0, None, notes.get(case["id"], ["attention flash (default)"])

    rep = validate.report([c for c in CASES if c["id"] in ("t1", "t2")], {}, explain)
    rep |= {"cases_file": "x", "hardware_file": None}
    by_id = {c["id"]: c for c in rep["cases"]}
    assert by_id["t1"]["assumptions"] == "attention flash (default); chose recompute=full, zero_stage=1"
    assert validate.assumption_counts(rep["cases"]) == [
        ("attention flash (default)", 2),
        ("chose recompute (the case left it open)", 1),
        ("chose zero_stage (the case left it open)", 1),
    ]
    assert "     2 × attention flash (default)" in validate.render(rep, None)
