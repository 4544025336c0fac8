"""``python -m dse.search +experiment=auto_shard`` end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dse import shard_search

TINY = Path(__file__).parent / "data" / "tiny_configs" / "llama.json"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.search", "+experiment=auto_shard", "tracking=none", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_auto_shard_reports_placements(tmp_path: Path) -> None:
    """Every parameter gets a DTensor placement with one entry per mesh axis; the step time splits into
    compute and communication; memory stays within the limit."""
    proc = run(
        f"model={TINY}", "mesh=[2,2]", "search.batch=4", "workload.seq_len=64", "format=json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["status"] == "optimal" and rep["mesh"] == [2, 2]
    assert rep["param_placements"] and all(p.count("(") == 2 for p in rep["param_placements"].values())
    assert rep["step_time_s"] == rep["compute_s"] + rep["comm_s"]
    assert rep["memory_gib"] <= rep["memory_limit_gib"]
    assert "\nwhy: compute is " in shard_search.render(rep) and "proved it optimal" in rep["why"]
    # the long phases announce themselves on stderr (stdout stays one JSON document)
    phases = [line.split(" (")[0] for line in proc.stderr.splitlines() if line.startswith("ilp: ")]
    assert [p.split()[1] for p in phases] == ["capturing", "strategies", "building", "solved:"], phases
    # the output directory holds the result; tracking=none: no MLflow run to point at
    assert rep["results"]["files"] == ["result.json", "collectives.txt", "placements.yaml"]
    assert "mlflow_run_id" not in rep["results"]
    assert json.loads((Path(rep["results"]["output_dir"]) / "result.json").read_text())["mesh"] == [2, 2]


def test_pinned_input_is_respected(tmp_path: Path) -> None:
    """A user pin (the input batch sharded over mesh axis 0, replicated over axis 1) holds in the answer."""
    proc = run(
        f"model={TINY}",
        "mesh=[2,2]",
        "search.batch=4",
        "workload.seq_len=64",
        "format=json",
        "search.joint=false",  # the forward graph: the pin path is the same, the solve 20x quicker
        "search.pins={input:'[Shard(0), Replicate()]'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert set(rep["input_placements"].values()) == {"[Shard(0), Replicate()]"}


def test_bad_mesh_and_impossible_memory(tmp_path: Path) -> None:
    proc = run(f"model={TINY}", "mesh=[0,2]", cwd=tmp_path)
    assert proc.returncode != 0 and "mesh must be a list of positive integers" in proc.stderr
    proc = run(
        f"model={TINY}",
        "mesh=[2,2]",
        "search.batch=4",
        "workload.seq_len=64",
        "search.memory_limit_gib=1e-6",
        "search.joint=false",
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "memory limit" in proc.stderr
