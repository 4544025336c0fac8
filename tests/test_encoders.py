"""Encoders (BERT) and encoder-decoders (T5): their ops, caches and communication derived by hand,
the cache a real ``transformers`` forward pass fills, and both through ``dse.calc`` and
``dse.roofline``. Parameter counts against ``transformers`` are in test_param_counts.py."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from test_calc import calc_report, run_cli

from costmodels.architectures import parse_hf_config
from costmodels.errors import ConfigError
from costmodels.inference import InferenceJob, inference_step
from costmodels.workload import Batch, forward_ops, inference_ops, kv_cache_bytes, training_batch
from dse.hardware import load_hardware
from dse.models import load_model

TINY = Path(__file__).resolve().parent / "data" / "tiny_configs"


def tiny(name: str):
    return parse_hf_config(json.loads((TINY / f"{name}.json").read_text()))


def _flops(ops, *prefixes: str) -> float:
    return sum(op.flops * op.count for op in ops if op.name.startswith(prefixes))


def test_t5_matmul_and_attention_flops_by_hand() -> None:
    """Tiny gated T5 (h = 64, 4 heads of d_kv = 24, so H·d = 96 ≠ h; d_ff = 96 gated; 2 encoder and
    1 decoder layer; V = 256), one training sequence of s = 10 source and 10 target tokens:
      encoder layer: 2s·(4·h·Hd + 3·h·ff) matmul FLOPs; scores and AV 2·2·s²·Hd (bidirectional);
      decoder layer: self 2s·4·h·Hd, causal 2·2·s(s+1)/2·Hd; cross queries and output 2s·2·h·Hd,
      keys and values of the encoder's s outputs 2s·2·h·Hd, scores and AV 2·2·s·s·Hd; MLP 2s·3·h·ff;
      LM head 2s·h·V."""
    spec, s, h, hd, ff, v = tiny("t5_gated"), 10, 64, 96, 96, 256
    ops = forward_ops(spec, training_batch(spec, 1, s), fused_attention=False)
    matmul = sum(op.gemm_flops * op.count for op in ops)
    encoder = 2 * (2 * s * (4 * h * hd + 3 * h * ff))
    decoder = 2 * s * (4 * h * hd + 2 * h * hd + 2 * h * hd + 3 * h * ff)
    assert matmul == encoder + decoder + 2 * s * h * v
    scores = sum(op.flops * op.count for op in ops if op.name.endswith((".scores", ".av")))
    assert scores == 2 * (2 * 2 * s * s * hd) + 2 * 2 * (s * (s + 1) / 2) * hd + 2 * 2 * s * s * hd


def test_t5_decode_step_reads_both_caches_and_skips_the_encoder() -> None:
    """A decode step (1 new token after 4 cached, 30 source tokens): no encoder op, no key/value
    projection of the source; the cross-attention reads the 30 cached source keys and values
    (30 · 2·4·24 elements · 2 B per layer) and attends 30 pairs per head."""
    spec = tiny("t5_gated")
    ops = inference_ops(spec, [4], [1], "fp16", fused_attention=True, source_tokens=[30])
    names = {op.name for op in ops}
    assert not any(n.startswith("encoder.") for n in names) and "cross.kv_proj" not in names
    cross = next(op for op in ops if op.name == "cross.sdpa")
    assert cross.input_bytes == (4 * 24 + 30 * 2 * 4 * 24) * 2
    assert cross.flops == 30 * 4 * (2 * 24 + 2 * 24 + 5)  # QKᵀ, AV and softmax; no position bias
    prefill = inference_ops(spec, [0], [1], "fp16", fused_attention=True, source_tokens=[30])
    assert sum(op.name.startswith("encoder.") for op in prefill) > 0
    assert next(op for op in prefill if op.name == "cross.kv_proj").mnk == (30.0, 2 * 4 * 24, 64.0)


def test_encoder_attention_has_its_own_geometry() -> None:
    """In a prefill table of one decoder token, the encoder's attention core is a 512 × 512 batched
    GEMM per head and the cross-attention 1 × 512, not the table's 1 × 1."""
    spec = load_model("t5_small")
    job = InferenceJob(spec, 512, 16)
    prefill, _ = job.tables()
    row = {name: i for i, name in enumerate(prefill.names)}
    for name, (rows, cols) in (("encoder.attn.sdpa", (512, 512)), ("cross.sdpa", (1, 512))):
        i = row[name]
        assert (prefill.rows[i], prefill.cols[i], prefill.gemms[i]) == (rows, cols, 8)


def test_t5_cache_equals_the_cache_transformers_fills() -> None:
    """A real forward pass of the tiny gated T5: 2 sequences, 7 source and 3 decoder tokens. Its
    EncoderDecoderCache holds, per decoder layer, the self-attention keys and values of 3 tokens and
    the cross-attention ones of 7: dse's ``cached_layer_tokens(3, 7)`` · 2·heads·d_kv per sequence."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    config = json.loads((TINY / "t5_gated.json").read_text())
    spec = parse_hf_config(config)
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(**config)).eval()
        with torch.no_grad():
            out = model(
                input_ids=torch.randint(0, 256, (2, 7)),
                decoder_input_ids=torch.randint(0, 256, (2, 3)),
                use_cache=True,
            )
    cache = getattr(out, "cache", None) or out.past_key_values
    held = sum(
        layer.keys.numel() + layer.values.numel()
        for part in (cache.self_attention_cache, cache.cross_attention_cache)
        for layer in part.layers
    )
    assert held == 2 * spec.cached_layer_tokens(3, 7) * spec.kv_cache_elements_per_token
    assert kv_cache_bytes(spec, [3, 3], "fp32", sources=[7, 7]) == held * 4


def test_t5_serving_memory_and_tensor_parallel_reductions() -> None:
    """T5-Small, 8 requests of 512 prompt + 128 output tokens, bf16: each of the 6 decoder layers
    caches 1 + 128 of its own tokens and the 512 encoded ones, 8·6·641·1024·2 B = 60.1 MiB. At the
    prefill the encoder's 6 layers all-reduce 512 tokens twice each (12), the decoder's 6 one token
    three times each (18, with the cross-attention); a decode step only the decoder's 18."""
    job = InferenceJob(load_model("t5_small"), 512, 128, precision="bf16")
    assert job.reductions(True) == ((12.0, 512.0), (18.0, 1.0)) and job.reductions(False) == ((18.0, 1.0),)
    with jax.enable_x64(True):
        step = inference_step(load_hardware("a100_80gb_sxm"), job, 1.0, 1.0, 8.0)
    assert float(step.memory.kv_cache_bytes) == 8 * 6 * 641 * 1024 * 2
    assert 0 < float(step.tpot_s) < float(step.ttft_s)


def test_bert_serves_one_forward_pass() -> None:
    """An encoder generates nothing: output_len = 0 prices one forward pass (TTFT = latency, no
    decode, no cache); a generating length is refused in one line, as is 0 for a decoder."""
    bert = load_model("bert_base_uncased")
    job = InferenceJob(bert, 128, 0, precision="bf16")
    with jax.enable_x64(True):
        step = inference_step(load_hardware("a100_80gb_sxm"), job, 1.0, 1.0, 32.0)
    assert float(step.latency_s) == float(step.ttft_s) > 0
    assert float(step.tpot_s) == float(step.decode_compute_s) == float(step.output_tokens_per_s) == 0
    assert float(step.memory.kv_cache_bytes) == 0
    with pytest.raises(ConfigError, match=r"bert is an encoder: it generates no tokens; set output_len=0"):
        InferenceJob(bert, 128, 16)
    with pytest.raises(ConfigError, match=r"output_len \(inference.output_len\) must be >= 1 for llama"):
        InferenceJob(load_model("llama3_8b"), 128, 0)


def test_calc_prints_what_it_assumes_for_encoders() -> None:
    train = calc_report(["model=t5_small", "num_devices=8", "seq_len=512", "global_batch=64"])
    assert train["assumptions"] == [
        "encoder-decoder: each sequence is seq_len source tokens through the encoder and seq_len target "
        "tokens through the decoder; tokens/s counts target tokens"
    ]
    assert np.isfinite(train["step_time_s"]) and train["feasible"]
    bert = ["model=bert_base_uncased", "mode=inference", "num_devices=1", "inference.output_len=0"]
    result = run_cli(*bert, "inference.input_len=128", "inference.batch_size=32")
    assert result.returncode == 0, result.stderr
    assert "assumes: encoder: one forward pass of input_len tokens per request" in result.stdout
    assert "forward latency" in result.stdout and "inference.output_len=0" in result.stdout


def test_roofline_needs_the_source_of_an_encoder_decoder() -> None:
    from test_roofline_cli import run

    missing = run("model=t5_small", "input_tokens=[1]")
    assert missing.returncode == 2  # a configuration error
    assert missing.stderr.strip().splitlines()[-1] == (
        "error: t5 is an encoder-decoder: give source_tokens=[n] (the encoder's input tokens per query; "
        "the encoder runs in this step where cached_tokens is 0)"
    )
    ok = run("model=t5_small", "input_tokens=[1]", "source_tokens=[512]", "format=json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["kv_cache_bytes"] == 6 * (1 + 512) * 1024 * 2  # fp16: own token and the 512 encoded
    wrong = run("model=llama2_7b", "source_tokens=[5]")
    assert "source_tokens is for encoder-decoder models; llama is not one" in wrong.stderr


def test_a_batch_without_its_source_is_refused() -> None:
    with pytest.raises(ConfigError, match="t5 is an encoder-decoder: give each query's source"):
        forward_ops(tiny("t5"), Batch.training(1, 8))
