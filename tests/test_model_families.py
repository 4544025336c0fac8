"""Sliding-window attention (Gemma-2's local layers, Mistral's every layer), soft-capping and sandwich
norms, derived by hand on a tiny Gemma-2 config (4 layers, 2 of them with a 16-token window; hidden
64, 4 heads of 32, 2 KV heads, vocabulary 256).
Its parameter count against ``transformers`` is in ``test_param_counts.py`` (tiny configs and the
shipped ``gemma2_9b``: 9,241,705,984, as published)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from costmodels.architectures import parse_hf_config
from costmodels.memory import inference_memory
from costmodels.workload import Batch, forward_ops, kv_cache_bytes
from dse.hardware import load_hardware

TINY = parse_hf_config(json.loads((Path(__file__).parent / "data/tiny_configs/gemma2.json").read_text()))


def test_config_reads_the_window_and_the_caps() -> None:
    """Gemma2Config's defaults: every other layer slides (the first does), caps 50 and 30, GeGLU."""
    assert (TINY.local_layers, TINY.sliding_window, TINY.norms_per_layer) == (2, 16, 4)
    assert (TINY.attn_softcap, TINY.final_softcap, TINY.activation) == (50.0, 30.0, "gelu_pytorch_tanh")


def test_mistral_slides_on_every_layer() -> None:
    """Mistral-7B-v0.1's config sets a 4,096-token window, which MistralAttention applies to all 32
    layers: a 32k context keeps 4,096 tokens per layer in the KV cache."""
    from dse.models import load_model

    spec = load_model("mistral_7b")
    assert (spec.sliding_window, spec.local_layers) == (4096, 32)
    assert spec.cached_layer_tokens(32768) == 32 * 4096 and spec.cached_layer_tokens(1000) == 32 * 1000


def test_windowed_pairs_and_keys_by_hand() -> None:
    """Training, 10 tokens, window 4: S(10) = 4·5/2 + 6·4 = 34 pairs (of 55), all 10 keys read.
    Decode after 100 cached tokens, window 16: S(101) − S(100) = 16 pairs and min(101, 16) = 16 keys.
    Prefill of 8 after 20 cached, window 4: S(28) − S(20) = 8·4 = 32 pairs, min(28, 4 + 7) = 11 keys."""
    train = Batch.training(1, 10).windowed(4)
    assert (train.pairs, train.context_tokens) == (34.0, 10.0)
    decode = Batch.inference([100], [1]).windowed(16)
    assert (decode.pairs, decode.context_tokens) == (16.0, 16.0)
    chunk = Batch.inference([20], [8]).windowed(4)
    assert (chunk.pairs, chunk.context_tokens) == (32.0, 11.0)
    eager = Batch.training(1, 10, causal=False)  # the full s×s scores an eager kernel computes
    assert eager.windowed(4) == eager


def test_chunked_pairs_and_keys_by_hand() -> None:
    """Llama-4's chunks of 4: training on 10 tokens attends 1+2+3+4 twice and 1+2: T(10) = 2·10 + 3 =
    23 pairs, reading all 10 keys; decoding the 102nd token (101 cached) attends its chunk's
    ((102 − 1) mod 4) + 1 = 2 keys; a prefill of 3 after 5 cached attends T(8) − T(5) = 20 − 11 = 9
    pairs and reads the 8 − 4 = 4 keys from its chunk's start."""
    train = Batch.training(1, 10).chunked(4)
    assert (train.pairs, train.context_tokens) == (23.0, 10.0)
    decode = Batch.inference([101], [1]).chunked(4)
    assert (decode.pairs, decode.context_tokens) == (2.0, 2.0)
    chunk = Batch.inference([5], [3]).chunked(4)
    assert (chunk.pairs, chunk.context_tokens) == (9.0, 4.0)


def test_flash_attention_of_sliding_layers_costs_their_window() -> None:
    """Fused attention, 64 tokens: full layers attend S(64) = 2080 pairs, sliding ones
    16·17/2 + 48·16 = 904; per pair and head 2·32 (QKᵀ) + 2·32 (AV) + 5 (softmax) + 3 (softcap)
    FLOPs. The eager kernel computes all scores, so its layers are all alike."""
    ops = {op.name: op for op in forward_ops(TINY, Batch.training(1, 64), fused_attention=True)}
    per_pair = 4 * (2 * 32 + 2 * 32 + 5 + 3)
    assert (ops["attn.sdpa"].count, ops["attn.sdpa_local"].count) == (2, 2)
    assert ops["attn.sdpa"].flops == 2080 * per_pair and ops["attn.sdpa_local"].flops == 904 * per_pair
    eager = [op for op in forward_ops(TINY, Batch.training(1, 64)) if op.name == "attn.scores"]
    assert len(eager) == 1 and eager[0].count == 4


def test_softcap_and_sandwich_norm_ops() -> None:
    """The logits pass through cap·tanh(x/cap): 3 FLOPs on each of 64·256 logits; each layer norms
    its attention and MLP outputs too: 4 norms of 64 weights per layer."""
    ops = {op.name: op for op in forward_ops(TINY, Batch.training(1, 64))}
    assert ops["lm_head.softcap"].flops == 3 * 64 * 256 and ops["lm_head.softcap"].stage == "last"
    norms = [n for n in ("attn_norm", "attn.post_norm", "mlp_norm", "mlp.post_norm") if ops[n].count == 4]
    assert len(norms) == 4 and all(ops[n].params == 64 for n in norms)


def test_sliding_layers_keep_only_their_window_of_kv_cache() -> None:
    """100 cached tokens: 2 full layers keep 100, 2 sliding ones 16: 232 layer-tokens of 2·2·32
    elements at 2 B = 59,392 B; a batch of 3 on one device holds three times that."""
    assert TINY.cached_layer_tokens(100) == 232
    assert kv_cache_bytes(TINY, 100, "bf16") == 232 * 128 * 2
    assert kv_cache_bytes(TINY, [100, 10], "bf16") == (232 + 40) * 128 * 2  # 10 tokens fit the window
    mem = inference_memory(TINY, 1, 1, 3, 100, load_hardware("h100_sxm"), "bf16")
    assert float(mem.kv_cache_bytes) == pytest.approx(3 * 232 * 128 * 2)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_gemma2_9b_runs_in_every_entry_point(tmp_path: Path) -> None:
    """The shipped Gemma-2-9B through the roofline, the calculator (training and inference) and the
    search: each succeeds and names the model."""
    for args in (
        ("dse.roofline", "model=gemma2_9b", "hardware=h100_sxm"),
        (
            "dse.calc",
            "model=gemma2_9b",
            "num_devices=8",
            "seq_len=8192",
            "global_batch=64",
            "parallelism.tp=2",
            "parallelism.sequence_parallel=true",
        ),
        ("dse.calc", "model=gemma2_9b", "mode=inference", "num_devices=1"),
        ("dse.search", "model=gemma2_9b", "num_devices=16", "tracking=none", "progress=false"),
    ):
        proc = run(*args, cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert "gemma2" in proc.stdout + proc.stderr, args


@pytest.mark.parametrize(
    "name",
    [
        "gemma2",
        "gemma2_layer_types",
        "gemma3_text",
        "phi3",
        "starcoder2",
        "starcoder2_no_bias",
        "gpt_oss",
        "llama4_text",
    ],
)
def test_sliding_layers_are_the_ones_transformers_builds(name: str) -> None:
    """The window and the count of sliding-window layers equal what the family's configuration class
    in ``transformers`` derives from the same config (its ``layer_types``, or the window on every
    layer where the family has no such list)."""
    from transformers import AutoConfig

    config = json.loads((Path(__file__).parent / f"data/tiny_configs/{name}.json").read_text())
    hf = AutoConfig.for_model(**config)
    window = getattr(hf, "sliding_window", None) or getattr(hf, "attention_chunk_size", None) or 0
    types = getattr(hf, "layer_types", None)
    if not window:
        expected = 0
    elif types is not None:
        expected = sum(1 for t in types if t != "full_attention")  # sliding or chunked
    else:
        expected = hf.num_hidden_layers
    spec = parse_hf_config(config)
    assert (spec.sliding_window, spec.local_layers) == (window, expected)


@pytest.mark.parametrize(
    "name",
    [
        "gemma3_text",
        "phi3",
        "starcoder2",
        "olmo2",
        "olmoe",
        "qwen2_moe",
        "deepseek_v2",
        "gpt_oss",
        "llama4_text",
        "mamba",
        "mamba2",
        "jamba",
        "falcon_h1",
        "nemotron_h",
        "qwen3_next",
        "glm4_moe",
    ],
)
def test_new_families_run_in_the_calculator_and_the_roofline(name: str, tmp_path: Path) -> None:
    """Each new family's tiny config (a user's config.json path) through training and inference in
    dse.calc and through dse.roofline."""
    path = str(Path(__file__).parent / f"data/tiny_configs/{name}.json")
    for args in (
        ("dse.calc", f"model={path}", "num_devices=1", "seq_len=64", "global_batch=2"),
        ("dse.calc", f"model={path}", "mode=inference", "num_devices=1", "inference.input_len=64"),
        ("dse.roofline", f"model={path}"),
    ):
        proc = run(*args, cwd=tmp_path)
        assert proc.returncode == 0 and f"({name}" in proc.stdout + proc.stderr, (args, proc.stderr[-2000:])


def test_bert_is_an_encoder_by_hand(tmp_path: Path) -> None:
    """Tiny BERT (hidden 64, 4 heads, 2 layers): every token attends the whole sequence, 64² = 4096
    pairs on 64 tokens (not the causal 64·65/2 = 2080), in training and in a forward pass of one
    64-token query alike; it keeps no KV cache; token-type embeddings (2 × 64) and the prediction
    head's dense 64 × 64 + bias and LayerNorm own parameters; no final norm (post-norm layers). The
    calculator trains it, and says in one line that an encoder serves no tokens; the roofline prices
    its forward pass."""
    path = Path(__file__).parent / "data/tiny_configs/bert.json"
    spec = parse_hf_config(json.loads(path.read_text()))
    train = {op.name: op for op in forward_ops(spec, Batch.training(1, 64), fused_attention=True)}
    infer = {op.name: op for op in forward_ops(spec, Batch.inference([0], [64]), fused_attention=True)}
    per_pair = 4 * (2 * 16 + 2 * 16 + 5)  # heads · (QKᵀ + AV + softmax)
    assert train["attn.sdpa"].flops == infer["attn.sdpa"].flops == 64 * 64 * per_pair
    assert spec.cached_layer_tokens(1000) == 0 and kv_cache_bytes(spec, 1000) == 0
    assert train["embed.token_types"].params == 2 * 64 and "final_norm" not in train
    assert train["lm_head.transform"].params == 64 * 64 + 64 and train["lm_head.transform_norm"].params == 128
    trained = run("dse.calc", f"model={path}", "num_devices=1", "seq_len=64", "global_batch=2", cwd=tmp_path)
    assert trained.returncode == 0 and "feasible: yes" in trained.stdout, trained.stderr[-2000:]
    served = run("dse.calc", f"model={path}", "mode=inference", "num_devices=1", cwd=tmp_path)
    assert served.returncode != 0 and "bert is an encoder: it generates no tokens" in served.stderr
    assert "Traceback" not in served.stderr
    roof = run("dse.roofline", f"model={path}", "input_tokens=[64]", cwd=tmp_path)
    assert roof.returncode == 0 and "(bert)" in roof.stdout
