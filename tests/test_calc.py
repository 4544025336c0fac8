"""``python -m dse.calc``: the report's keys and identities (in process, via ``hydra.compose``), the
reproducing command line, and end to end: an infeasible mapping exits 1, bad input is one ``error:``
line, inference prints TTFT/TPOT. Subprocesses cost ~3-6 s each, so there are few of them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from costmodels.errors import ConfigError
from costmodels.inference import InferenceBreakdown
from costmodels.memory import MemoryBreakdown
from costmodels.metrics import SECONDS_PER_DAY, model_flops_per_sequence
from costmodels.training import TrainingBreakdown
from dse import calc
from dse._app import CONF_DIR, MODEL_DIR
from dse.models import load_model

H100_BF16 = 989e12
# The README example with the distributed optimizer (ZeRO-1), which fits in 80 GiB.
EXAMPLE = [
    "model=llama3_70b",
    "num_devices=64",
    "parallelism.tp=8",
    "parallelism.pp=2",
    "parallelism.recompute=selective",
    "parallelism.sequence_parallel=true",
    "parallelism.zero_stage=1",
    "global_batch=256",
    "seq_len=8192",
]
MAPPINGS = {
    "example": EXAMPLE,
    "interleaved_cp": [
        "model=llama3_8b",
        "num_devices=64",
        "parallelism.tp=2",
        "parallelism.pp=4",
        "parallelism.vpp=2",
        "parallelism.cp=2",
        "parallelism.dp_overlap=0.5",
        "parallelism.recompute=full",
    ],
    "zero3": ["model=llama3_8b", "num_devices=16", "parallelism.zero_stage=3", "global_batch=64"],
    "weight_streaming": [
        "model=llama3_70b",
        "num_devices=64",
        "parallelism.tp=8",
        "parallelism.weight_streaming=true",
        "global_batch=64",
    ],
    "moe_ep": [
        "model=mixtral_8x7b",
        "num_devices=64",
        "parallelism.tp=2",
        "parallelism.pp=4",
        "parallelism.ep=8",
        "parallelism.zero_stage=1",
        "parallelism.microbatch=2",
    ],
}


def compose_calc(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("calc", overrides, return_hydra_config=True)


def calc_report(overrides: list[str]) -> dict[str, Any]:
    return calc.report(compose_calc(overrides))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.calc", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return calc_report(EXAMPLE)


# --------------------------------------------------------------------------------------------
# The report, in process


def test_json_keys_are_the_dataclass_fields(example: dict[str, Any]) -> None:
    names = {f.name for f in fields(TrainingBreakdown)}
    assert names | {"feasible", "overflow", "plan", "model", "hardware", "command"} <= example.keys()
    assert set(example["memory"]) == {f.name for f in fields(MemoryBreakdown)}
    assert {"tokens_per_day", "samples_per_s", "model_flops_per_s_per_device"} <= example.keys()
    assert example["model"] == "llama3_70b" and example["hardware"] == "h100_sxm"
    assert example["plan"] | {"dp": 4} == example["plan"]  # dp derived: 64 / (8·2·1)
    assert example["feasible"] is True and example["overflow"] == []
    assert json.loads(json.dumps(example)) == example  # plain JSON types only


@pytest.mark.parametrize("name", MAPPINGS)
def test_breakdown_sums_to_step_time(name: str) -> None:
    """compute + recompute + tp/cp/ep/pp/dp/zero3 comm + bubble + optimizer = step (float64)."""
    rep = calc_report(MAPPINGS[name])
    total = sum(rep[k] for k in calc.TIME_FIELDS)
    assert total == pytest.approx(rep["step_time_s"], rel=1e-9)
    assert sum(rep["step_shares"].values()) == pytest.approx(1.0, rel=1e-9)
    assert all(rep[k] >= 0 for k in calc.TIME_FIELDS)


def test_tokens_per_day_and_samples(example: dict[str, Any]) -> None:
    assert example["tokens_per_day"] == pytest.approx(example["tokens_per_s"] * SECONDS_PER_DAY, rel=1e-12)
    assert example["tokens_per_s"] == pytest.approx(example["samples_per_s"] * 8192, rel=1e-12)
    assert example["samples_per_s"] == pytest.approx(256 / example["step_time_s"], rel=1e-12)


def test_mfu_and_hfu_by_hand(example: dict[str, Any]) -> None:
    """Llama-3-70B (L=80, h=8192, 64 heads of 128, 8 KV heads, I=28672, V=128256), s=8192:
    GEMM parameters P = L·(h·h + 2·h·1024 + h·h + 3·h·I) + V·h (the LM head; the embedding is a
    lookup), model FLOPs per sequence 6·s·P + 6·L·s·(s+1)·h (QKᵀ and AV over the causal s(s+1)/2
    pairs, forward 2·s·(s+1)·h per layer, backward twice that). MFU = tokens/s / s · FLOPs /
    (64 · 989 TFLOP/s). Selective recompute re-runs QKᵀ and AV: HFU adds 2·L·s·(s+1)·h per sequence."""
    cfg = json.loads((MODEL_DIR / "llama3_70b.yaml").read_text())
    layers, h, inter, vocab, s = 80, 8192, 28672, 128256, 8192
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (layers, h, inter)
    params = layers * (h * h + 2 * h * 1024 + h * h + 3 * h * inter) + vocab * h
    flops = 6 * s * params + 6 * layers * s * (s + 1) * h
    seqs_per_s = example["tokens_per_s"] / s
    assert example["mfu"] == pytest.approx(seqs_per_s * flops / (64 * H100_BF16), rel=1e-9)
    hardware = flops + 2 * layers * s * (s + 1) * h
    assert example["hfu"] == pytest.approx(seqs_per_s * hardware / (64 * H100_BF16), rel=1e-9)
    assert example["model_flops_per_s_per_device"] == pytest.approx(example["mfu"] * H100_BF16, rel=1e-9)


@pytest.mark.parametrize("seq_len", [1_048_576, 4_194_304])
def test_mfu_stays_below_one_at_million_token_sequences(seq_len: int) -> None:
    """Llama-3-8B with cp = 64: attention dominates the FLOPs. MFU counts causal attention, the
    FLOPs the fused kernel executes, so it stays in (0, 1]; the full-square count would be about
    twice that (0.98 at 1M tokens on the H100 preset)."""
    overrides = ["model=llama3_8b", "num_devices=64", "parallelism.cp=64", "parallelism.dp=1"]
    rep = calc_report([*overrides, f"seq_len={seq_len}", "global_batch=1"])
    assert 0.0 < rep["mfu"] <= 1.0 and rep["hfu"] <= 1.0
    spec = load_model("llama3_8b")
    ratio = model_flops_per_sequence(spec, seq_len, "full") / model_flops_per_sequence(spec, seq_len)
    assert 1.9 < ratio < 2.0


def test_infeasible_report_names_the_overflow() -> None:
    """Llama-3-70B on 8 GPUs without model parallelism or ZeRO: 18 B/param of states alone is ~1.2 TiB."""
    rep = calc_report(["model=llama3_70b", "parallelism.dp=8", "parallelism.zero_stage=0", "format=json"])
    assert rep["feasible"] is False
    assert [line.split()[0] for line in rep["overflow"][:2]] == ["optimizer", "gradients"]
    assert rep["overflow_message"].startswith("needs ")
    text = calc.render_training(rep)
    assert "feasible: no — needs" in text and "feasible: yes" not in text


def test_command_line_reproduces_the_run(example: dict[str, Any]) -> None:
    command = example["command"]
    assert command.startswith("python -m dse.calc model=llama3_70b hardware=h100_sxm num_devices=64 ")
    assert "parallelism.cp=" not in command  # "off" values are left out
    again = calc_report(command.split()[3:])
    assert again["step_time_s"] == example["step_time_s"] and again["command"] == command


def test_table_states_the_flop_conventions(example: dict[str, Any]) -> None:
    text = calc.render_training(example)
    for needle in ("MFU", "no recompute", "HFU", "recomputed forward", "tokens/day", "samples/s"):
        assert needle in text
    assert text.splitlines()[-1] == f"reproduce: {example['command']}"


def test_inference_report() -> None:
    rep = calc_report(["mode=inference", "num_devices=2", "parallelism.tp=2", "inference.batch_size=4"])
    assert {f.name for f in fields(InferenceBreakdown)} | {"feasible", "plan"} <= rep.keys()
    assert rep["latency_s"] == pytest.approx(rep["ttft_s"] + 256 * rep["tpot_s"], rel=1e-9)
    assert rep["memory"]["kv_cache_bytes"] > 0 and rep["feasible"] is True
    assert rep["engine"] == "static batch"
    assert (rep["kv_cache_precision"], rep["attention_precision"]) == ("bf16", "bf16")


def test_inference_report_names_the_engine_and_its_definitions() -> None:
    """An fp8 run on TensorRT-LLM: KV cache fp8 by default, attention 16-bit, in-flight definitions."""
    rep = calc_report(["mode=inference", "num_devices=1", "precision=fp8", "inference.engine=tensorrt-llm"])
    assert (rep["kv_cache_precision"], rep["attention_precision"]) == ("fp8", "bf16")
    assert rep["output_tokens_per_s"] == pytest.approx(rep["batch_size"] / rep["tpot_s"], rel=1e-9)
    text = calc.render_inference(rep)
    assert "engine: TensorRT-LLM (in-flight batching); kv cache fp8, attention bf16" in text
    assert "inter-token latency: decode step + the prefill" in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_devices=-8"], "num_devices must be a positive integer"),
        (["parallelism.pp=0"], "parallelism.pp must be a positive integer"),
        (["+parallelism.tpp=2"], "unknown key(s) parallelism.tpp"),
        (["parallelism.tp=3"], "not a multiple of tp·pp·cp"),
        (["parallelism.dp=2"], "tp·pp·dp·cp = 1·1·2·1 = 2 but num_devices = 8"),
        (["parallelism.recompute=some"], "recompute must be one of none, selective, full"),
        (["parallelism.weight_streaming=1"], "parallelism.weight_streaming must be true or false"),
        (["mode=inference", "parallelism.tp=2"], "set num_devices=2"),
        (["mode=inference", "num_devices=1", "inference.engine=vllm"], "unknown engine 'vllm'"),
        (
            ["mode=inference", "num_devices=1", "inference.attention_precision=fp9"],
            "inference.attention_precision must be null or one of",
        ),
        (
            ["mode=inference", "num_devices=1", "hardware=a100_80gb", "inference.attention_precision=fp8"],
            "has no fp8 peak",
        ),
    ],
)
def test_bad_values_raise_config_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        calc_report(overrides)


# --------------------------------------------------------------------------------------------
# End to end (subprocesses)


def test_cli_infeasible_exits_1_with_full_report() -> None:
    proc = run_cli("model=llama3_70b", "hardware=h100_sxm", "num_devices=8")
    assert proc.returncode == 1, proc.stderr
    assert "step time" in proc.stdout and "MFU" in proc.stdout
    feasible = next(line for line in proc.stdout.splitlines() if line.startswith("feasible:"))
    assert feasible.startswith("feasible: no — needs")
    assert "optimizer" in feasible and "gradients" in feasible and "weights" in feasible


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("num_devices=16", "parallelism.tp=8", "parallelism.pp=4", "parallelism.dp=1"),
            "but num_devices = 16",
        ),
        (
            ("model=llama3_70b", "num_devices=12", "parallelism.tp=3", "parallelism.pp=4"),
            "tp = 3 does not divide",
        ),
        (("parallelism.tpp=2",), "unknown key 'parallelism.tpp'"),
        (("hardware=h100",), "unknown hardware 'h100'"),
    ],
)
def test_cli_bad_input_is_one_error_line(args: tuple[str, ...], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert message in proc.stderr


def test_cli_inference_prints_ttft_and_tpot() -> None:
    proc = run_cli("mode=inference", "num_devices=1", "inference.batch_size=2", "inference.output_len=64")
    assert proc.returncode == 0, proc.stderr
    for needle in ("TTFT", "TPOT", "end-to-end latency", "output tokens/s", "kv cache", "feasible: yes"):
        assert needle in proc.stdout
