"""``python -m dse.roofline`` end to end: the issue's example, JSON keys, plot, paths and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dse._app import MODEL_DIR

GiB = 2**30


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.roofline", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def run_json(*args: str, cwd: Path | None = None) -> dict:
    proc = run(*args, "format=json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_issue_example_json() -> None:
    """Llama-2-7B fp16, queries (2^20 cached, 1 new) and (1024 cached, 1 new): the cache holds
    (2^20 + 1 + 1024 + 1) tokens · 0.5 MiB = 512.50 GiB; weights 6,738,415,616 · 2 B."""
    rep = run_json(
        "model=llama2_7b",
        "hardware=h100_sxm",
        "batch_size=2",
        "cached_tokens=[1048576,1024]",
        "input_tokens=[1,1]",
    )
    assert {"params", "weights_bytes", "kv_cache_bytes", "ops", "totals"} <= rep.keys()
    assert {"flops", "bytes", "time_s"} <= rep["totals"].keys()
    assert rep["params"] == 6_738_415_616
    assert rep["weights_bytes"] == 6_738_415_616 * 2
    assert rep["kv_cache_bytes"] == (2**20 + 1 + 1024 + 1) * 2**19
    ops = {op["name"]: op for op in rep["ops"]}
    assert ops["attn.scores"]["bound"] == "memory"
    assert rep["totals"]["time_s"] == pytest.approx(sum(op["total_time_s"] for op in rep["ops"]))


def test_million_token_cache_is_512_gib_and_table_prints_it(tmp_path: Path) -> None:
    """One query with 1,048,576 cached tokens and 1 input token: 512.00 GiB of KV cache (fp16)."""
    proc = run(
        "model=llama2_7b",
        "hardware=h100_sxm",
        "cached_tokens=[1048576]",
        "input_tokens=[1]",
        f"plot={tmp_path / 'roofline.png'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "KV cache bytes   512.00 GiB" in proc.stdout
    assert "parameters       6,738,415,616" in proc.stdout
    assert (tmp_path / "roofline.png").stat().st_size > 10_000


def test_state_that_does_not_fit_in_hbm_is_a_warning_and_the_plot_explains_itself() -> None:
    """512.5 GiB of KV cache + 12.55 GiB of weights exceed one H100's 80 GiB: a warning says so (the
    times assume it fitted); a 1,024-token cache fits and warns nothing. The figure has a title with
    model and hardware, axis labels with units, a legend entry per colour and the derated roof, and
    names the ops with the largest time shares."""
    from dse.roofline import roofline_figure

    big = run_json("model=llama2_7b", "hardware=h100_sxm", "batch_size=2", "cached_tokens=[1048576,1024]",
                   "input_tokens=[1,1]")  # fmt: skip
    (warning,) = big["warnings"]
    assert "525.05 GiB do not fit" in warning and "80.00 GiB" in warning
    small = run_json("model=llama2_7b", "hardware=h100_sxm", "cached_tokens=[1024]", "input_tokens=[1]")
    assert small["warnings"] == []
    fig = roofline_figure(big)
    ax = fig.axes[0]
    assert "llama2_7b" in ax.get_title() and "H100" in ax.get_title()
    assert "FLOP/byte" in ax.get_xlabel() and "FLOP/s" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("roofline") for t in legend) and any(t.startswith("achievable") for t in legend)
    assert any("memory-bound" in t for t in legend)
    listed = "".join(t.get_text() for t in ax.texts)
    assert "1. attn.scores" in listed or "1. attn.av" in listed


def test_config_path_equals_shipped_name(tmp_path: Path) -> None:
    shutil.copy(MODEL_DIR / "llama3_8b.yaml", tmp_path / "config.json")
    by_name = run_json("model=llama3_8b", "hardware=a100_80gb_sxm")
    by_path = run_json("model=config.json", "hardware=a100_80gb_sxm", cwd=tmp_path)
    by_dir = run_json(f"model={tmp_path}", "hardware=a100_80gb_sxm")
    assert by_path["ops"] == by_name["ops"] == by_dir["ops"]
    assert by_path["params"] == by_name["params"] == 8_030_261_248


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ('{"model_type": "bart", "d_model": 512}', (), "unsupported model_type 'bart'; supported: gpt2"),
        ('{"model_type": "llama", "hidden_size": 64}', (), "missing field 'num_attention_heads'"),
        ('{"model_type": "llama", ', (), "malformed JSON at line 1"),
        (None, (), "does not exist"),
        ('{"model_type": "llama"}', ("hardware=h100_sxmm",), "hardware"),
        (None, ("cached_tokens=[1,2]", "batch_size=3"), "cached_tokens has 2 entries for batch_size=3"),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    tmp_path: Path, content: str | None, args: tuple, message: str
) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
        model = str(path)
    else:
        model = str(tmp_path / "missing.json") if not args else "llama2_7b"
    proc = run(f"model={model}", *args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr
