"""State-space and hybrid families (Mamba, Mamba-2, Jamba, Falcon-H1, Nemotron-H, Qwen3-Next): layers
as (mixer, MLP) pairs, the scan's FLOPs and bytes, the recurrent state instead of a KV cache, and the
mapping rules they add. Hand derivations on the tiny configs in ``tests/data/tiny_configs/``; their
parameter counts against ``transformers`` are in ``test_param_counts.py``, the layer kinds and cache
sizes against ``transformers`` here.

Tiny Mamba: hidden 64, 2 layers, vocabulary 256, d_state N = 8, expand 2 (d_inner 128), conv 4,
dt_rank ⌈64/16⌉ = 4, tied. Per layer: norm 64 + in_proj 64·256 + conv 128·4 + 128 + x_proj
128·(4 + 16) + dt_proj 4·128 + 128 + A 128·8 + D 128 + out_proj 128·64 = 29,632; with the embedding
(256·64) and the final norm 75,712 (transformers' count too).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from costmodels.architectures import parse_hf_config
from costmodels.errors import ConfigError
from costmodels.memory import inference_memory
from costmodels.parallel import check_plan, make_plan
from costmodels.workload import Batch, forward_ops, kv_cache_bytes, parameter_count, state_bytes
from dse.hardware import load_hardware
from dse.models import load_model

TINY = Path(__file__).parent / "data" / "tiny_configs"
FAMILIES = ["mamba", "mamba2", "jamba", "falcon_h1", "nemotron_h", "nemotron_h_pattern", "qwen3_next"]


def tiny(name: str):
    return parse_hf_config(json.loads((TINY / f"{name}.json").read_text()))


def ops_of(spec, batch: Batch) -> dict[str, Any]:
    return {op.name: op for op in forward_ops(spec, batch, "bf16")}


def test_mamba_layer_is_its_mixer_alone() -> None:
    """Every Mamba layer: RMSNorm, the mixer, the residual add; no attention, no MLP, no KV cache."""
    spec = tiny("mamba")
    assert spec.blocks == (("ssm", "none", 2),)
    assert (spec.ssm.inner, spec.ssm.dt_rank, spec.attention_layers) == (128, 4, 0)
    assert parameter_count(spec) == 2 * 29_632 + 256 * 64 + 64
    assert spec.cached_layer_tokens(1000) == 0 and spec.kv_cache_elements_per_token == 0


def test_selective_scan_flops_and_state_by_hand() -> None:
    """Training on 32 tokens: the sequential scan costs d_inner·(7·N + 13) per token =
    128·69 = 8,832, 282,624 in all, on vector units. A decode step after 100 tokens reads and writes
    the state (d_inner·N = 1,024 elements, 2 B each) and the conv state (128 channels × 4 taps)."""
    spec = tiny("mamba")
    scan = ops_of(spec, Batch.training(1, 32))["ssm.scan"]
    assert (scan.kind, scan.flops, scan.count) == ("elementwise", 32 * 128 * (7 * 8 + 13), 2)
    step = ops_of(spec, Batch.inference([100], [1]))
    inputs = 3 * 128 + 2 * 8  # x, Δ, z per channel; B and C per state
    assert step["ssm.scan"].input_bytes == 2 * inputs + 2 * 128 * 8
    assert step["ssm.scan"].output_bytes == 2 * 128 + 2 * 128 * 8
    assert step["ssm.conv1d"].input_bytes == 2 * 128 + 2 * 128 * 4


def test_mamba2_chunked_scan_by_hand() -> None:
    """Tiny Mamba-2: 8 heads of 16 (d_inner 128), N = 16, 2 groups, chunks of 16. Training on 64
    tokens: per token 2·Q·(G·N + H·P) + 4·H·P·N + 13·d_inner = 2·16·(32 + 128) + 4·8·16·16 + 1,664 =
    14,976 on tensor cores; a prefill of 8 tokens has chunks of 8: 2·8·160 + 8,192 + 1,664 = 12,416.
    A one-token step is the recurrence: d_inner·(6·N + 13) = 13,952."""
    spec = tiny("mamba2")
    scan = ops_of(spec, Batch.training(1, 64))["ssm.scan"]
    assert (scan.kind, scan.flops) == ("attention", 64 * 14_976)
    assert ops_of(spec, Batch.inference([0], [8]))["ssm.scan"].flops == 8 * 12_416
    step = ops_of(spec, Batch.inference([50], [1]))["ssm.scan"]
    assert (step.kind, step.flops) == ("elementwise", 128 * (6 * 16 + 13))
    assert spec.ssm.conv_channels == 128 + 2 * 2 * 16
    assert spec.ssm.state_elements == 192 * 4 + 128 * 16


def test_state_bytes_of_mamba_2_8b() -> None:
    """Mamba-2.8B (64 layers, d_inner 5,120, N = 16, conv 4): 64·(5120·4 + 5120·16)·2 B = 12.5 MiB
    per sequence whatever its length; a KV cache of Llama-2-7B holds that much after 25 tokens."""
    spec = load_model("mamba_2_8b")
    assert state_bytes(spec, 1, "bf16") == 64 * (5120 * 4 + 5120 * 16) * 2 == 12.5 * 2**20
    assert kv_cache_bytes(spec, 1_000_000, "bf16") == kv_cache_bytes(spec, 10, "bf16") == 12.5 * 2**20


def test_jamba_layers_and_cache() -> None:
    """Tiny Jamba (4 layers; attention every 3rd from 0, experts every 2nd from 1): attention at 0
    and 3, MoE at 1 and 3. Only the 2 attention layers cache tokens. Under TP each layer reduces its
    mixer and MLP outputs (8) and each Mamba layer x_proj's Δ, B, C: 2·(4 + 2·8)/64."""
    spec = tiny("jamba")
    assert spec.blocks == (
        ("attention", "dense", 1),
        ("ssm", "moe", 1),
        ("ssm", "dense", 1),
        ("attention", "moe", 1),
    )
    assert spec.cached_layer_tokens(100) == 200
    assert spec.tp_reductions == 8 + 2 * (4 + 2 * 8) / 64
    ops = ops_of(spec, Batch.training(1, 16))
    assert ops["attn.qkv_proj"].count == 2 and ops["ssm.in_proj"].count == 2
    assert ops["mlp.gate_up_proj"].count == 2 and ops["moe.router"].count == 2
    assert ops["ssm.bcdt_norms"].params == 4 + 2 * 8  # RMSNorms on Δ, B and C


def test_nemotron_h_layers_hold_one_block_each() -> None:
    """Nemotron-H: each layer is one block behind one norm (mamba, MoE, attention, MLP), so one TP
    reduction and one norm per layer; the legacy pattern "M*-E" reads the same as the list."""
    spec = tiny("nemotron_h")
    assert spec.blocks == (
        ("ssm", "none", 1),
        ("none", "moe", 1),
        ("attention", "none", 1),
        ("none", "dense", 1),
    )
    assert spec.sublayers == spec.tp_reductions == 4
    ops = ops_of(spec, Batch.training(1, 16))
    layer_norms = [op for name, op in ops.items() if name.endswith("_norm") and op.stage == "layer"]
    assert sum(op.count for op in layer_norms if "." not in op.name) == 4
    assert tiny("nemotron_h_pattern").blocks == (
        ("ssm", "none", 1),
        ("attention", "none", 1),
        ("none", "dense", 1),
        ("none", "moe", 1),
    )
    assert not ops["mlp.up_proj"].name.startswith("mlp.gate")  # relu², not gated


def test_falcon_h1_runs_attention_and_mamba_side_by_side() -> None:
    """Falcon-H1: both mixers on every layer's one normed input, summed before one residual add and
    one TP reduction; mamba_d_ssm = 96 in 6 heads of 16."""
    spec = tiny("falcon_h1")
    assert spec.blocks == (("attention+ssm", "dense", 2),)
    assert (spec.attention_layers, spec.ssm_layers, spec.tp_reductions) == (2, 2, 4)
    assert (spec.ssm.heads, spec.ssm.head_dim) == (6, 16)
    ops = ops_of(spec, Batch.training(1, 16))
    assert ops["ssm.parallel_add"].count == ops["attn_norm"].count == 2 and "ssm_norm" not in ops


def test_qwen3_next_gated_attention_and_linear_attention() -> None:
    """Qwen3-Next: full attention every 2nd layer with a doubled q_proj (query and gate per head):
    (2·4 + 2·2)·16 = 192 outputs, rotary on a quarter of each 16-wide head (4); Gated DeltaNet on the
    others: 2 key heads of 16, 4 value heads of 16, a 16×16 state per value head. Its chunked form
    per token H·(5·Q·N + 3·Q·P + 6·N·P) + 13·d_inner with Q = min(64, 32) = 32 on 32 tokens."""
    spec = tiny("qwen3_next")
    assert spec.mixer_kinds == (("ssm", 1), ("attention", 1), ("ssm", 1), ("attention", 1))
    assert spec.rotary_dim == 4 and tiny("qwen3_next_interval").rotary_dim == 8
    ops = ops_of(spec, Batch.training(1, 32))
    assert ops["attn.qkv_proj"].mnk[1] == 192 and ops["attn.output_gate"].count == 2
    per_token = 4 * (5 * 32 * 16 + 3 * 32 * 16 + 6 * 16 * 16) + 13 * 64
    assert ops["ssm.scan"].flops == 32 * per_token
    assert spec.ssm.state_elements == (64 + 2 * 2 * 16) * 4 + 4 * 16 * 16


@pytest.mark.parametrize("name", FAMILIES)
def test_layer_kinds_are_the_ones_transformers_builds(name: str) -> None:
    """Attention, state-space and MoE layers counted the way each family's configuration class lists
    them (``layers_block_type`` / ``layer_types`` / ``layers_num_experts``), where it has such a list."""
    from transformers import AutoConfig

    config = json.loads((TINY / f"{name}.json").read_text())
    hf = AutoConfig.for_model(**config)
    spec = parse_hf_config(config)
    types = list(getattr(hf, "layers_block_type", None) or getattr(hf, "layer_types", None))
    attention = sum(t in ("attention", "full_attention", "hybrid") for t in types)
    ssm = sum(t in ("mamba", "linear_attention", "hybrid") for t in types)
    assert (spec.attention_layers, spec.ssm_layers) == (attention, ssm)
    if hasattr(hf, "layers_num_experts"):
        assert spec.mlp_layers("moe") == sum(n > 1 for n in hf.layers_num_experts)


def _cache_elements(cache: Any) -> int:
    """Elements of the conv and recurrent states and of the keys and values transformers' cache holds."""
    import torch

    def count(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel()
        if isinstance(x, dict):
            return sum(count(v) for v in x.values())
        return 0

    names = ("conv_states", "recurrent_states", "keys", "values")
    total = sum(count(getattr(layer, n, None)) for layer in cache.layers for n in names)
    assert total, "transformers' cache no longer has conv_states / recurrent_states / keys / values"
    return total


@pytest.mark.parametrize("name", FAMILIES)
def test_cache_size_equals_the_cache_transformers_fills(name: str) -> None:
    """A real forward pass of the tiny model over 21 tokens of one sequence: the elements its cache
    holds equal dse's KV cache (attention layers · 21 tokens · 2·kv_heads·head_dim) plus its state
    (``ModelSpec.state_elements``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    config = json.loads((TINY / f"{name}.json").read_text())
    spec = parse_hf_config(config)
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).eval()
        with torch.no_grad():
            out = model(torch.randint(0, 256, (1, 21)), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    expected = spec.cached_layer_tokens(21) * spec.kv_cache_elements_per_token + spec.state_elements
    assert _cache_elements(cache) == expected


def test_inference_memory_holds_the_state_split_over_tp() -> None:
    """Serving Jamba-v0.1 at tp = 4, 8 sequences of 2,304 tokens: KV cache of its 4 attention layers
    8·4·2,304·(2·128·8/4)·2 B = 72 MiB, plus 28 Mamba layers' state 8·28·(8192·4 + 8192·16)·2 B / 4 =
    17.5 MiB."""
    spec, h100 = load_model("jamba_v0_1"), load_hardware("h100_sxm")
    mem = inference_memory(spec, 4.0, 1.0, 8.0, 2304.0, h100, "bf16")
    assert float(mem.kv_cache_bytes) == pytest.approx(72 * 2**20 + 17.5 * 2**20, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("mamba2", {"tp": 4}, "state-space heads (8) and B/C groups (2)"),
        ("jamba", {"tp": 3}, "num_attention_heads"),
        ("mamba", {"cp": 2, "dp": 1}, "state-space layers"),
    ],
)
def test_mapping_rules_of_state_space_layers(name: str, values: dict[str, int], message: str) -> None:
    """Megatron's MambaMixer splits heads and B/C groups over tp (Mamba-2: 8 heads in 2 groups: tp
    must divide 2); a scan runs along the whole sequence, so no context parallelism."""
    spec = tiny(name)
    devices = math.prod(values.values())
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_plan(make_plan(**values), spec, devices, 64)
    check_plan(make_plan(tp=2), spec, 2, 64)  # tp = 2 divides every family's heads and groups here


def test_jamba_runs_in_every_entry_point(tmp_path: Path) -> None:
    """The shipped Jamba-v0.1 through the roofline (its state reported), the calculator (training
    with experts over ep, inference) and the mapping search: each succeeds and names the model."""
    for args, shows in (
        (("dse.roofline", "model=jamba_v0_1"), "state-space state"),
        (
            ("dse.calc", "model=jamba_v0_1", "num_devices=64", "parallelism.tp=4", "parallelism.ep=8"),
            "feasible",
        ),
        (("dse.calc", "model=jamba_v0_1", "mode=inference", "num_devices=4", "parallelism.tp=4"), "TPOT"),
        (("dse.search", "model=jamba_v0_1", "num_devices=64", "tracking=none", "progress=false"), "best"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert "jamba" in proc.stdout and shows in proc.stdout, (args, proc.stdout[-2000:])
