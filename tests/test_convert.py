"""``dse.convert``: hand-computed conversions, round trips through every rate, and one-line errors."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

import dse.convert
from costmodels.errors import ConfigError
from costmodels.metrics import model_flops_per_sequence
from dse.convert import RATES, Inputs, check_inputs, convert, given_rate
from dse.models import load_model

# BLOOM-176B (conf/model/bloom_176b.yaml): h = 14336, l = 70, V = 250880 (padded), s = 2048, on 384 A100s.
H, L, V, S = 14336, 70, 250_880, 2048
BLOOM_FLOPS = 72 * S * L * H**2 * (1 + S / (6 * H) + V / (12 * L * H))  # = 2.216074e15 per sequence
# causal attention: (s+1)/2 keys per query instead of s: the s/(6h) term becomes (s+1)/(12h)
BLOOM_CAUSAL_FLOPS = 72 * S * L * H**2 * (1 + (S + 1) / (12 * H) + V / (12 * L * H))  # = 2.190832e15
A100_BF16 = 312e12


@pytest.fixture(scope="module")
def bloom() -> Inputs:
    """BLOOM's logs count full-square attention (Megatron-DeepSpeed): ``attention="full"``."""
    flops = model_flops_per_sequence(load_model("bloom_176b"), S, attention="full")
    return Inputs(
        seq_len=S,
        global_batch=2048,
        num_devices=384,
        model="bloom_176b",
        flops_per_sample=flops,
        hardware="a100_80gb_sxm",
        precision="bf16",
        peak_flops=A100_BF16,
    )


def test_docstring_examples() -> None:
    assert doctest.testmod(dse.convert).failed == 0


def test_tokens() -> None:
    """19.463 samples/s × 2048 tokens = 39,860.2 tokens/s; × 86,400 s = 3.444e9 tokens/day."""
    r = convert("samples_per_s", 19.463, Inputs(seq_len=2048))
    assert r == {
        "samples_per_s": 19.463,
        "tokens_per_s": pytest.approx(39_860.224),
        "tokens_per_day": pytest.approx(3.4439e9, rel=1e-4),
    }


def test_iteration_time() -> None:
    """2048 sequences per 105.22 s step = 19.464 samples/s; with seq_len, 39,862 tokens/s."""
    r = convert("iteration_time_s", 105.22, Inputs(global_batch=2048, seq_len=2048))
    assert r["samples_per_s"] == pytest.approx(19.4640, abs=1e-4)
    assert r["tokens_per_s"] == pytest.approx(2048 * 2048 / 105.22)


def test_bloom_mfu_by_hand(bloom: Inputs) -> None:
    """FLOPs/sample = 72·s·l·h²(1 + s/6h + V/12lh) = 2.2161e15; MFU = 19.463 · 2.2161e15 / (384 · 312e12)
    = 0.3600; per device 19.463 · 2.2161e15 / 384 = 112.32 TFLOP/s (the log's 149.02 counts recompute)."""
    assert bloom.flops_per_sample == pytest.approx(BLOOM_FLOPS)
    r = convert("samples_per_s", 19.463, bloom)
    assert r["model_flops_per_sample"] == pytest.approx(2.2161e15, rel=1e-4)
    assert r["mfu"] == pytest.approx(19.463 * BLOOM_FLOPS / (384 * A100_BF16))
    assert r["mfu"] == pytest.approx(0.3600, abs=1e-4)
    assert r["model_tflops_per_device"] == pytest.approx(112.32, abs=0.01)
    assert r["iteration_time_s"] == pytest.approx(105.23, abs=0.01)


@pytest.mark.parametrize("rate", list(RATES))
def test_round_trip_through_every_rate(bloom: Inputs, rate: str) -> None:
    """From samples/s to each rate and back: every result is the same."""
    forward = convert("samples_per_s", 19.463, bloom)
    assert convert(rate, forward[rate], bloom) == pytest.approx(forward)


def test_inverse_mfu(bloom: Inputs) -> None:
    """mfu = 0.45 → samples/s = 0.45 · 384 · 312e12 / 2.2161e15 = 24.33; tokens/day = that · 2048 · 86400."""
    r = convert("mfu", 0.45, bloom)
    assert r["samples_per_s"] == pytest.approx(0.45 * 384 * A100_BF16 / BLOOM_FLOPS)
    assert r["samples_per_s"] == pytest.approx(24.33, abs=0.01)
    assert r["tokens_per_day"] == pytest.approx(r["samples_per_s"] * 2048 * 86_400)


@pytest.mark.parametrize(
    ("rate", "inputs", "message"),
    [
        ("mfu", Inputs(seq_len=S, model="m", flops_per_sample=1.0), "mfu= needs num_devices=<n>, hardware="),
        ("tokens_per_s", Inputs(), "tokens_per_s= needs seq_len=<tokens>: add it"),
        ("iteration_time_s", Inputs(seq_len=S), "iteration_time_s= needs global_batch="),
        (
            "samples_per_s",
            Inputs(seq_len=S, hardware="h", peak_flops=1.0),
            "hardware= only serves mfu, which",
        ),
        (
            "samples_per_s",
            Inputs(model="m"),
            "model= only serves model_flops_per_sample, which also needs seq_len",
        ),
        ("samples_per_s", Inputs(num_devices=8), "num_devices= only serves model_tflops_per_device"),
    ],
)
def test_missing_inputs(rate: str, inputs: Inputs, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_inputs(rate, inputs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "give exactly one rate"),
        ({"samples_per_s": 1.0, "mfu": 0.3}, "got samples_per_s=1.0 and mfu=0.3"),
        ({"mfu": 45}, r"mfu is a fraction in \(0, 1\], got 45 \(for 45 % pass mfu=0.45\)"),
        ({"samples_per_s": 0}, "samples_per_s must be a positive number"),
        ({"iteration_time_s": "slow"}, "iteration_time_s must be a positive number"),
    ],
)
def test_given_rate_errors(overrides: dict, message: str) -> None:
    cfg = OmegaConf.create({**dict.fromkeys(RATES), **overrides})
    with pytest.raises(ConfigError, match=message):
        given_rate(cfg)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.convert", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_bloom_mfu() -> None:
    """The model and hardware groups compose from the command line; JSON has given / inputs / results."""
    proc = run_cli(
        "samples_per_s=19.463", "seq_len=2048", "model=bloom_176b", "hardware=a100_80gb_sxm",
        "num_devices=384", "precision=bf16", "format=json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["given"] == {"samples_per_s": 19.463}
    assert rep["inputs"]["model"] == "bloom_176b" and rep["inputs"]["peak_flops"] == A100_BF16
    assert "causal attention, no recompute" in rep["flops_definition"]
    assert rep["results"]["mfu"] == pytest.approx(19.463 * BLOOM_CAUSAL_FLOPS / (384 * A100_BF16), rel=1e-9)
    full = json.loads(run_cli(*proc.args[3:], "attention=full").stdout)
    assert full["results"]["mfu"] == pytest.approx(0.3600, abs=1e-4)
    assert "full s×s attention" in full["flops_definition"]


def test_causal_model_flops_by_hand() -> None:
    """The default count: causal attention, 72·s·l·h²·(1 + (s+1)/(12h) + V/(12lh)) = 2.190832e15."""
    flops = model_flops_per_sequence(load_model("bloom_176b"), S)
    assert flops == pytest.approx(BLOOM_CAUSAL_FLOPS, rel=1e-12)
    assert flops == pytest.approx(2.190832e15, rel=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("mfu=0.45", "seq_len=2048", "num_devices=384"),
            "mfu= needs model=<name or config.json>, hardware=",
        ),
        (("seq_len=2048",), "give exactly one rate"),
    ],
)
def test_cli_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    """Without model/hardware the optional groups stay empty; the error names the override to add."""
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
