"""The workload layer against hand derivations and published formulas."""

from __future__ import annotations

import pytest

from costmodels.architectures import SUPPORTED_MODEL_TYPES, parse_hf_config
from costmodels.errors import ConfigError
from costmodels.workload import (
    Batch,
    experts_touched,
    forward_ops,
    inference_ops,
    kv_cache_bytes,
    parameter_count,
    training_ops,
)
from dse.models import model_config

GiB = 2**30


def _gpt(h: int, layers: int, heads: int, vocab: int = 51200, seq: int = 2048) -> dict:
    return {
        "model_type": "gpt2",
        "n_embd": h,
        "n_layer": layers,
        "n_head": heads,
        "vocab_size": vocab,
        "n_positions": seq,
        "n_inner": None,
        "tie_word_embeddings": True,
    }


@pytest.mark.parametrize(("h", "layers", "heads"), [(2304, 24, 24), (12288, 96, 96)])
def test_training_matmul_flops_equal_megatron_formula(h: int, layers: int, heads: int) -> None:
    """Narayanan et al. 2021, Sec. 5.1 (without recomputation): a training step of B sequences of
    length s costs 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) matmul FLOPs, counting full (unmasked)
    attention: per layer forward QKV 6Bsh², scores 2Bs²h, AV 2Bs²h, out 2Bsh², MLP 16Bsh²; ×3 with
    the backward pass; LM head 6BsVh."""
    b, s, v = 4, 2048, 51200
    spec = parse_hf_config(_gpt(h, layers, heads, v, s))
    ops = training_ops(spec, b, s, "bf16", causal=False, fused_attention=False)
    ours = sum(op.gemm_flops * op.count for op in ops if op.kind == "matmul")
    ours += sum(op.flops * op.count for op in ops if op.kind == "attention")
    expected = 72 * b * s * layers * h**2 * (1 + s / (6 * h) + v / (12 * layers * h))
    assert ours == pytest.approx(expected, rel=1e-12)


def test_training_linear_flops_are_six_per_weight_per_token() -> None:
    """Every weight of a linear layer costs 2 FLOPs per token in the forward pass, 2 in the input
    gradient and 2 in the weight gradient: Σ matmul GEMM FLOPs = 6·T·(linear weights). Llama-2-7B has
    no biases and an untied head, so its linear weights are all parameters but the embedding table
    (V·h) and the 2·L+1 RMSNorm gains (h each)."""
    spec = parse_hf_config(model_config("llama2_7b"))
    b, s = 2, 4096
    ops = training_ops(spec, b, s)
    linear = (
        parameter_count(spec)
        - spec.vocab_size * spec.hidden_size
        - (2 * spec.num_layers + 1) * spec.hidden_size
    )
    assert sum(op.gemm_flops * op.count for op in ops if op.kind == "matmul") == 6 * b * s * linear


def test_backward_splits_input_and_weight_gradients() -> None:
    """Each forward matmul has one input-gradient and one weight-gradient op with equal GEMM FLOPs."""
    spec = parse_hf_config(model_config("llama3_8b"))
    ops = training_ops(spec, 1, 1024)
    fwd = {op.name: op for op in ops if op.kind == "matmul" and op.phase == "fwd"}
    for name, op in fwd.items():
        dgrad = next(o for o in ops if o.name == f"{name}.dgrad")
        wgrad = next(o for o in ops if o.name == f"{name}.wgrad")
        assert (dgrad.phase, wgrad.phase) == ("bwd_input", "bwd_weight")
        assert dgrad.gemm_flops == wgrad.gemm_flops == op.gemm_flops
        assert wgrad.output_bytes == op.weight_bytes  # dW has the weight's size
        assert dgrad.output_bytes == op.input_bytes  # dX has the input's size


def test_llama2_7b_kv_cache_is_512_gib_for_a_million_tokens() -> None:
    """32 layers · (K + V) 2·32 heads·128 · 2 bytes = 524288 B = 0.5 MiB per token; 2^20 tokens → 512 GiB."""
    spec = parse_hf_config(model_config("llama2_7b"))
    assert kv_cache_bytes(spec, 2**20, "fp16") == 512 * GiB


def test_gqa_kv_cache_uses_kv_heads() -> None:
    """Llama-3-70B: 80 layers · 2·8 KV heads·128 · 2 B = 327680 B per token (GQA, 8 of 64 heads)."""
    spec = parse_hf_config(model_config("llama3_70b"))
    assert kv_cache_bytes(spec, 1, "bf16") == 80 * 2 * 8 * 128 * 2


def test_mla_kv_cache_is_the_latent() -> None:
    """DeepSeek-V3 caches c_KV (512) and k_R (64) per token per layer: 61 · 576 · 2 B = 70272 B."""
    spec = parse_hf_config(model_config("deepseek_v3"))
    assert kv_cache_bytes(spec, 1, "bf16") == 61 * 576 * 2


def test_decode_step_hand_count() -> None:
    """Llama-2-7B, one query, 1000 cached tokens, 1 new token (fp16):
    QKV projection 2·4096·(3·4096) = 100,663,296 FLOPs per layer, reads 3·4096² weights · 2 B;
    scores QKᵀ 2·1001 pairs·32 heads·128 = 8,200,192 FLOPs, reading K of 1001 tokens
    (1001·4096·2 B) and q (4096·2 B)."""
    spec = parse_hf_config(model_config("llama2_7b"))
    ops = {op.name: op for op in inference_ops(spec, [1000], [1], "fp16")}
    assert ops["attn.qkv_proj"].flops == 100_663_296
    assert ops["attn.qkv_proj"].weight_bytes == 3 * 4096**2 * 2
    assert ops["attn.qkv_proj"].count == 32
    assert ops["attn.scores"].flops == 2 * 1001 * 32 * 128
    assert ops["attn.scores"].input_bytes == 1001 * 4096 * 2 + 4096 * 2
    assert ops["lm_head"].flops == 2 * 4096 * 32000


def test_act_mul_flops_scale_with_tokens() -> None:
    """SiLU(gate)·up costs (4 + 1) FLOPs per element: 5·I·n for n tokens (Transformer Roofline
    Analyzer's 5·I + n is wrong by a factor ≈ n)."""
    spec = parse_hf_config(model_config("llama2_7b"))
    for n in (1, 7, 512):
        ops = {op.name: op for op in inference_ops(spec, [0], [n])}
        assert ops["mlp.act_mul"].flops == 5 * 11008 * n


def test_causal_pairs() -> None:
    """A query with c=10 cached and n=4 new tokens attends 4·10 + 4·5/2 = 50 pairs."""
    batch = Batch.inference([10, 0], [4, 3])
    assert batch.pairs == 50 + 6
    assert batch.new_tokens == 7 and batch.context_tokens == 17 and batch.logit_tokens == 2


def test_moe_decode_reads_only_touched_experts() -> None:
    """Mixtral top-2 of 8: one token touches 2 experts; 8·(1−(6/8)^T) → 8 for many tokens."""
    assert experts_touched(8, 2, 1) == pytest.approx(2.0)
    assert experts_touched(8, 2, 1000) == pytest.approx(8.0)
    spec = parse_hf_config(model_config("mixtral_8x7b"))
    one = {op.name: op for op in inference_ops(spec, [100], [1])}
    up = one["moe.experts.gate_up_proj"]
    assert up.weight_bytes == pytest.approx(2 * 4096 * 2 * 14336 * 2)
    assert up.flops == 2 * 2 * 4096 * 2 * 14336  # two experts' GEMMs for one token


def test_inference_ops_own_all_parameters() -> None:
    """Whatever the form (MLA absorbed, experts partly read), the ops own exactly the model's parameters."""
    for name in ("deepseek_v3", "mixtral_8x7b", "llama3_8b", "bloom_176b"):
        spec = parse_hf_config(model_config(name))
        ops = inference_ops(spec, [128], [1])
        assert sum(op.params * op.count for op in ops) == parameter_count(spec), name


def test_fused_attention_keeps_flops_and_drops_score_traffic() -> None:
    spec = parse_hf_config(model_config("llama3_8b"))
    unfused = forward_ops(spec, Batch.training(1, 4096))
    fused = forward_ops(spec, Batch.training(1, 4096), fused_attention=True)
    assert sum(o.flops * o.count for o in fused) == pytest.approx(sum(o.flops * o.count for o in unfused))
    assert sum(o.bytes * o.count for o in fused) < sum(o.bytes * o.count for o in unfused)


def test_unsupported_model_type_lists_supported() -> None:
    with pytest.raises(ConfigError, match="unsupported model_type 'bart'; supported: gpt2, ") as err:
        parse_hf_config({"model_type": "bart"})
    for model_type in SUPPORTED_MODEL_TYPES:
        assert model_type in str(err.value)


def test_missing_field_is_named() -> None:
    with pytest.raises(ConfigError, match="missing field 'hidden_size'"):
        parse_hf_config({"model_type": "llama", "num_hidden_layers": 2})


def test_heads_not_multiple_of_kv_heads() -> None:
    with pytest.raises(ConfigError, match="num_key_value_heads=3"):
        parse_hf_config(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 3,
                "intermediate_size": 128,
                "vocab_size": 10,
            }
        )


def test_bad_queries() -> None:
    with pytest.raises(ConfigError, match="one \\(cached, input\\) pair per query"):
        Batch.inference([1, 2], [1])
    with pytest.raises(ConfigError, match="input >= 1"):
        Batch.inference([0], [0])
    with pytest.raises(ConfigError, match="seq_len must be positive"):
        Batch.training(1, 0)
