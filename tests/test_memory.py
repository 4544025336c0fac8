"""The memory model against Korthikanti et al. 2022, ZeRO and hand derivations.

Korthikanti et al. 2022 (arXiv:2205.05198) Figure 1 values are the paper's own analytical numbers
(``experiments/validation/calibration.yaml``, family ``korthikanti2022_f1_mem``): they count only the
transformer layers, so the tests check our layer activations and layer weights against them exactly and
the rest (embedding, LM head, logits, Sec. 4.3) term by term.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest
import yaml

from costmodels.architectures import SUPPORTED_MODEL_TYPES, ModelSpec, parse_hf_config
from costmodels.errors import ConfigError
from costmodels.hardware import Hardware
from costmodels.memory import (
    MemoryBreakdown,
    inference_memory,
    kv_elements_per_token,
    layer_activation_bytes,
    overflow,
    overflow_message,
    training_memory,
)
from costmodels.parallel import Plan, make_plan
from costmodels.workload import parameter_count
from dse.models import model_config

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "experiments" / "validation" / "calibration.yaml"
TINY = sorted((Path(__file__).resolve().parent / "data" / "tiny_configs").glob("*.json"))
GiB = 2.0**30
A100 = Hardware(
    name="A100 80GB",
    peak_flops_bf16=312e12,
    hbm_capacity_bytes=80 * GiB,
    hbm_bandwidth_Bps=2.039e12,
    host_memory_bytes=256 * GiB,
)
LLAMA2_7B_PARAMS = 6_738_415_616


def _f1_cases() -> list[dict[str, Any]]:
    with CALIBRATION.open() as f:
        cases = yaml.load(f, Loader=yaml.CSafeLoader)["cases"]
    return [c for c in cases if c["family"] == "korthikanti2022_f1_mem"]


F1 = _f1_cases()
F1_ACT = [c for c in F1 if "memory_gib_activations" in c["measured"]]
F1_PARAMS = [c for c in F1 if "memory_gib_params_optimizer" in c["measured"]]


def _case_plan(case: dict[str, Any]) -> Plan:
    par, batch = dict(case["parallelism"]), case["batch"]
    par["sequence_parallel"] = float(par["sequence_parallel"])
    return make_plan(**par, microbatch=batch["micro_batch_size"], global_batch=batch["global_batch_size"])


def _interleave(plan: Plan) -> float:
    """Korthikanti Sec. 4.2.3: the first stage holds 1 + (p−1)/(p·m) times the layers' activations."""
    p, m = plan.pp, plan.vpp
    return 1.0 + (p - 1) / (p * m) if m > 1 else 1.0


def test_f1_has_twelve_cases() -> None:
    assert len(F1) == 12 and len(F1_ACT) == 8 and len(F1_PARAMS) == 4


@pytest.mark.parametrize("case", F1_ACT, ids=[c["id"] for c in F1_ACT])
def test_korthikanti_f1_activations(case: dict[str, Any]) -> None:
    """Layers: per-layer bytes × L × interleave factor within 1 % of the paper (e.g. 22B, t=8, none:
    48 · 2048·4·6144·(10 + 24/8 + 5·64·2048/(6144·8)) B = 59.25 GiB; 175B, vpp=3: × (1 + 7/24)).
    The whole first stage adds Sec. 4.3's terms the figure leaves out: the embedding dropout mask
    sbh/t_sp per micro-batch in flight (p·factor of them) and, with pp = 1, the final-norm and
    LM-head inputs 2sbh/t_sp each and fp32 logits 4sbv/t."""
    spec, plan, s = parse_hf_config(case["model"]), _case_plan(case), case["batch"]["seq_len"]
    per_layer = float(layer_activation_bytes(spec, plan, s, case["precision"]))
    layers = per_layer * spec.num_layers * _interleave(plan)
    paper = case["measured"]["memory_gib_activations"] * GiB
    assert layers == pytest.approx(paper, rel=0.01)
    h, v, t, b = spec.hidden_size, spec.vocab_size, plan.tp, plan.microbatch
    t_sp = t if plan.sequence_parallel else 1.0
    extra = s * b * h / t_sp * plan.pp * _interleave(plan)
    if plan.pp == 1:
        extra += s * b * (2 * 2 * h / t_sp + 4 * v / t)
    mem = training_memory(spec, plan, s, A100, precision=case["precision"])
    ours = float(mem.activations_bytes)
    print(f"{case['id']}: paper {paper / GiB:.3f} GiB, layers {layers / GiB:.3f}, all {ours / GiB:.3f}")
    assert ours == pytest.approx(layers + extra, rel=1e-5)
    assert ours == pytest.approx(paper, rel=0.03)  # the extras are 0.2-2.4 % of Figure 1's layers


@pytest.mark.parametrize("case", F1_PARAMS, ids=[c["id"] for c in F1_PARAMS])
def test_korthikanti_f1_params_optimizer(case: dict[str, Any]) -> None:
    """18 B/param (2 weight + 4 fp32 grad + 12 fp32 master/m/v). The paper counts 12·l·h²/(t·p)
    transformer weights; a GPT layer also has 13h biases/norms: (12h² + 7h)/t + 6h per device (the
    column-parallel biases split, the two row-parallel biases and the norms replicated over tp, as in
    Megatron's RowParallelLinear), so our layers agree within 0.1 %. The first stage also holds the
    vocab-parallel embedding V·h/t and the learned positions n_pos·h (and for pp = 1 the final norm 2h;
    the head is tied): +2 % (22B) and +4 % (175B), but +9 % (530B) and +11 % (1T), whose stages have
    only 3 and 2 layers; so the 5 % bound holds for the layers, not for the whole first stage."""
    spec, plan = parse_hf_config(case["model"]), _case_plan(case)
    h, v, t, p, n_layers = spec.hidden_size, spec.vocab_size, plan.tp, plan.pp, spec.num_layers
    paper = case["measured"]["memory_gib_params_optimizer"] * GiB
    layers = 18.0 * n_layers / p * ((12 * h * h + 7 * h) / t + 6 * h)
    assert 18.0 * n_layers / p * 12 * h * h / t == pytest.approx(paper, rel=1e-9)
    assert layers == pytest.approx(paper, rel=1e-3)
    first_stage = layers + 18.0 * (v * h / t + spec.max_positions * h + (2 * h if p == 1 else 0))
    mem = training_memory(spec, plan, case["batch"]["seq_len"], A100, precision=case["precision"])
    ours = float(mem.weights_bytes + mem.gradients_bytes + mem.optimizer_bytes)
    print(f"{case['id']}: paper {paper / GiB:.3f} GiB, ours {ours / GiB:.3f} GiB ({ours / paper - 1:+.1%})")
    assert ours == pytest.approx(first_stage, rel=1e-5)


def _gpt(h: int = 1024, heads: int = 16, layers: int = 4, vocab: int = 1024) -> ModelSpec:
    return parse_hf_config(
        {"model_type": "gpt2", "n_embd": h, "n_head": heads, "n_layer": layers, "vocab_size": vocab}
    )


@pytest.mark.parametrize(
    ("tp", "sp", "recompute", "coefficient"),
    [
        (1, 0, 0, 34 + 5 * 16 * 1024 / 1024),  # Eq. 1: 34 + 5as/h
        (4, 0, 0, 10 + 24 / 4 + 5 * 16 * 1024 / (1024 * 4)),  # Eq. 2: 10 + 24/t + 5as/(ht)
        (4, 1, 0, (34 + 5 * 16 * 1024 / 1024) / 4),  # Eq. 3: (34 + 5as/h)/t
        (4, 1, 1, 34 / 4),  # selective recompute drops 5as/h
        (4, 0, 1, 10 + 24 / 4),
        (4, 0, 2, 2.0),  # full recompute: the layer input 2sbh
        (4, 1, 2, 2 / 4),  # ... sharded by SP
    ],
)
def test_gpt_layer_activations_equal_korthikanti(
    tp: int, sp: int, recompute: int, coefficient: float
) -> None:
    """Korthikanti Sec. 4.2 / 5, s=1024, b=2, h=1024, a=16: bytes = s·b·h·coefficient."""
    plan = make_plan(tp=tp, sequence_parallel=sp, recompute=recompute, microbatch=2, global_batch=2)
    got = layer_activation_bytes(_gpt(), plan, 1024, "fp16")
    assert float(got) == pytest.approx(1024 * 2 * 1024 * coefficient, rel=1e-6)


def test_no_dropout_drops_masks() -> None:
    """With attn_pdrop = resid_pdrop = 0 (or ``dropout=False``) the two h-wide masks and the score
    mask and dropout output go: 34 + 5as/h becomes 32 + 2as/h (s=1024, b=1, h=1024, a=16)."""
    plan = make_plan()
    config = {"model_type": "gpt2", "n_embd": 1024, "n_head": 16, "n_layer": 4, "vocab_size": 1024}
    no_drop = parse_hf_config({**config, "attn_pdrop": 0.0, "resid_pdrop": 0.0})
    want = 1024 * 1024 * (32 + 2 * 16 * 1024 / 1024)
    assert float(layer_activation_bytes(no_drop, plan, 1024)) == pytest.approx(want, rel=1e-6)
    assert float(layer_activation_bytes(_gpt(), plan, 1024, dropout=False)) == pytest.approx(want, rel=1e-6)


def test_fused_attention_keeps_softmax_stats_only() -> None:
    """Flash attention stores no scores: 5as per token becomes 4a (fp32 log-sum-exp per head)."""
    spec, plan = _gpt(), make_plan(tp=2, microbatch=1, global_batch=1)
    eager = layer_activation_bytes(spec, plan, 1024, "bf16")
    fused = layer_activation_bytes(spec, plan, 1024, "bf16", fused_attention=True)
    assert float(eager - fused) == pytest.approx(1024 * 16 * (5 * 1024 - 4) / 2, rel=1e-6)


def test_gqa_gated_mlp_layer_activations_by_hand() -> None:
    """Llama-2-70B, one sequence of s=4096, t=1, no dropout, per token per layer: norm inputs and
    outputs 4·2h = 8h, Q and attention output 2·2h = 4h, gated MLP 3·2I = 6I (Megatron-Core's fused
    SwiGLU: gate and up outputs, and the down-projection input), K and V of 8 KV heads 2·2·128·8 =
    4096, softmax output 2·a·s = 2·64·4096: 12·8192 + 6·28672 + 4096 + 524288 = 798720 B."""
    spec = parse_hf_config(model_config("llama2_70b"))
    got = layer_activation_bytes(spec, make_plan(), 4096, "bf16")
    assert float(got) == pytest.approx(4096 * 798720, rel=1e-6)


def _states(mem: MemoryBreakdown) -> tuple[float, float, float]:
    return float(mem.weights_bytes), float(mem.gradients_bytes), float(mem.optimizer_bytes)


def test_zero_stages_llama2_7b_dp8() -> None:
    """P = 6,738,415,616 (Llama-2-7B), dp = 8, 2 + 4 + 12 B/param. Stage 0: 2P, 4P, 12P; stage 1:
    optimizer 12P/8 = 1.5P; stage 2: gradients 4P/8 = 0.5P; stage 3: weights 2P/8 plus two gathered
    layers 2·2·202,383,360 B (a layer: 4·4096² attention + 3·4096·11008 MLP + 2·4096 norms)."""
    spec, p = parse_hf_config(model_config("llama2_7b")), float(LLAMA2_7B_PARAMS)
    assert parameter_count(spec) == LLAMA2_7B_PARAMS
    layer = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    expected = {
        0: (2 * p, 4 * p, 12 * p),
        1: (2 * p, 4 * p, 1.5 * p),
        2: (2 * p, 0.5 * p, 1.5 * p),
        3: (0.25 * p + 2 * 2 * layer, 0.5 * p, 1.5 * p),
    }
    for stage, want in expected.items():
        mem = training_memory(spec, make_plan(dp=8, zero_stage=stage, global_batch=8), 4096, A100)
        assert _states(mem) == pytest.approx(want, rel=1e-6), stage


def test_sgd_and_fp32_optimizer_bytes() -> None:
    """SGD: 4 B fp32 master only (2 + 4 + 4 = 10 B/param); fp32 Adam: no master, 4 + 4 + 8 = 16."""
    spec, p = parse_hf_config(model_config("llama2_7b")), float(LLAMA2_7B_PARAMS)
    sgd = training_memory(spec, make_plan(), 4096, A100, optimizer="sgd")
    fp32 = training_memory(spec, make_plan(), 4096, A100, precision="fp32")
    assert _states(sgd) == pytest.approx((2 * p, 4 * p, 4 * p), rel=1e-6)
    assert _states(fp32) == pytest.approx((4 * p, 4 * p, 8 * p), rel=1e-6)


def test_offload_optimizer_moves_states_to_host() -> None:
    spec = parse_hf_config(model_config("llama2_7b"))
    plan = make_plan(recompute=2)
    on, off = (training_memory(spec, plan, 4096, A100, offload_optimizer=o) for o in (False, True))
    assert float(off.optimizer_bytes) == 0 and float(off.offloaded_bytes) == pytest.approx(
        12.0 * LLAMA2_7B_PARAMS
    )
    assert float(on.total_bytes - off.total_bytes) == pytest.approx(12.0 * LLAMA2_7B_PARAMS)
    assert not bool(on.feasible) and bool(off.feasible)  # 18P = 113 GiB > 80; 6P = 38 GiB fits


def _stack(plans: list[Plan]) -> Plan:
    return jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v, float) for v in x]), *plans)


def test_vmap_and_jit_match_per_plan() -> None:
    spec = parse_hf_config(model_config("llama2_13b"))
    plans = [
        make_plan(tp=8, pp=4, dp=2, vpp=2, microbatch=1, global_batch=64, sequence_parallel=1, recompute=1),
        make_plan(tp=4, pp=2, dp=8, microbatch=2, global_batch=64, zero_stage=3, recompute=2),
        make_plan(tp=2, pp=1, dp=32, cp=2, microbatch=1, global_batch=64, zero_stage=1),
    ]
    cost = jax.jit(lambda p, hw: training_memory(spec, p, 4096, hw))
    batched = jax.vmap(lambda p: training_memory(spec, p, 4096, A100))(_stack(plans))
    for i, plan in enumerate(plans):
        eager, jitted = training_memory(spec, plan, 4096, A100), cost(plan, A100)
        for a, b, c in zip(
            jax.tree.leaves(eager), jax.tree.leaves(jitted), jax.tree.leaves(batched), strict=True
        ):
            assert float(b) == pytest.approx(float(a), rel=1e-6)
            assert float(c[i]) == pytest.approx(float(a), rel=1e-6)
    assert batched.feasible.shape == (3,)


def test_inference_llama2_7b_weights_and_kv() -> None:
    """fp16 weights 6,738,415,616·2 B = 13.48 GB; KV 32 layers · 2·32·128 · 2 B = 0.5 MiB/token, 2 GiB
    for 4096 tokens. tp=2 halves the KV cache; the weights halve except the 65·4096 norm weights that
    every TP rank keeps: ratio 2P/(P + 266,240)."""
    spec, p = parse_hf_config(model_config("llama2_7b")), LLAMA2_7B_PARAMS
    one, two = (inference_memory(spec, tp, 1, 1, 4096, A100) for tp in (1, 2))
    assert float(one.weights_bytes) == pytest.approx(2 * p, rel=1e-6)
    assert float(one.kv_cache_bytes) == pytest.approx(2 * GiB, rel=1e-6)
    assert float(one.kv_cache_bytes / two.kv_cache_bytes) == pytest.approx(2.0, rel=1e-6)
    assert float(one.weights_bytes / two.weights_bytes) == pytest.approx(2 * p / (p + 65 * 4096), rel=1e-6)


def test_kv_heads_are_replicated_not_split() -> None:
    """Llama-2-70B has 8 KV heads: tp=8 holds one per device (2·128 elements per token per layer),
    and so does tp=16 (a head is replicated, not split)."""
    spec = parse_hf_config(model_config("llama2_70b"))
    assert [float(kv_elements_per_token(spec, t)) for t in (1, 8, 16)] == [2048.0, 256.0, 256.0]
    kv8, kv16 = (inference_memory(spec, t, 1, 4, 4096, A100).kv_cache_bytes for t in (8, 16))
    assert float(kv8) == float(kv16) == 4 * 4096 * 80 * 256 * 2


def test_mla_latent_is_replicated_over_tp() -> None:
    """DeepSeek-V3 (tiny): the cache holds kv_lora_rank + qk_rope_head_dim = 16 + 8 per token and
    layer on every TP rank."""
    spec = parse_hf_config(json.loads((TINY[0].parent / "deepseek_v3.json").read_text()))
    assert [float(kv_elements_per_token(spec, t)) for t in (1, 4)] == [24.0, 24.0]


def test_pipeline_in_flight_is_capped_by_microbatches() -> None:
    """pp=4 with only 2 micro-batches: the first stage holds 2 (not 4) micro-batches of L/4 layers,
    so it stores half of what 8 micro-batches would (no dropout in Llama: no embedding mask)."""
    spec = parse_hf_config(model_config("llama2_7b"))
    few, many = (
        training_memory(spec, make_plan(pp=4, microbatch=1, global_batch=gb), 1024, A100) for gb in (2, 8)
    )
    per_layer = float(layer_activation_bytes(spec, make_plan(), 1024))
    assert float(few.activations_bytes) == pytest.approx(per_layer * 32 / 4 * 2, rel=1e-6)
    assert float(many.activations_bytes) == pytest.approx(per_layer * 32, rel=1e-6)


def test_offload_weights_restores_feasibility() -> None:
    """Llama-2-70B fp16 on one 80 GiB GPU: 138 GB of weights do not fit; with half of them offloaded
    (64 GiB on the host of 256 GiB) it fits. A host too small is infeasible again."""
    spec = parse_hf_config(model_config("llama2_70b"))
    full = inference_memory(spec, 1, 1, 1, 1024, A100)
    half = inference_memory(spec, 1, 1, 1, 1024, A100, offload_weights=0.5)
    assert not bool(full.feasible) and bool(half.feasible)
    assert float(half.offloaded_bytes) == pytest.approx(float(full.weights_bytes) / 2, rel=1e-6)
    small_host = Hardware(name="x", peak_flops_bf16=1.0, hbm_capacity_bytes=80 * GiB, hbm_bandwidth_Bps=1.0)
    starved = inference_memory(spec, 1, 1, 1, 1024, small_host, offload_weights=0.5)
    assert not bool(starved.feasible) and overflow(starved)[-1].startswith("offloaded to host")


def test_overflow_names_the_largest_category_first() -> None:
    case = next(c for c in F1_ACT if c["id"] == "korthikanti2022_f1_mem_22B_act_none")
    spec, plan = parse_hf_config(case["model"]), _case_plan(case)
    mem = training_memory(spec, plan, 2048, A100, precision="fp16")
    names = overflow(mem)
    assert (
        not bool(mem.feasible) and names[0].startswith("activations ") and names[1].startswith("optimizer ")
    )
    assert overflow_message(mem).startswith("needs ") and "> 80.0 GiB: activations" in overflow_message(mem)
    fits = training_memory(spec, make_plan(tp=8, sequence_parallel=1, recompute=1), 2048, A100)
    assert bool(fits.feasible) and overflow(fits) == [] and overflow_message(fits) == ""


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda s: training_memory(s, make_plan(), 128, A100, optimizer="lion"), "adam, sgd"),
        (lambda s: training_memory(s, make_plan(), 128, A100, precision="int8"), "bf16"),
        (lambda s: training_memory(s, make_plan(tp=-2), 128, A100), "parallelism.tp"),
        (lambda s: training_memory(s, make_plan(), -5, A100), "seq_len"),
        (lambda s: inference_memory(s, 1, 1, -1, 128, A100), "batch_size"),
        (lambda s: inference_memory(s, 1, 1, 1, 128, A100, precision="int3"), "fp16"),
        (lambda s: inference_memory(s, 1, 1, 1, 128, A100, offload_kv=1.5), "offload_kv"),
    ],
)
def test_bad_input_names_the_field(call: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        call(_gpt())


def test_experts_are_split_over_ep() -> None:
    """Mixtral: the expert weights' share of the model states shrinks by ep (here 1 → 4)."""
    spec = parse_hf_config(json.loads((TINY[0].parent / "mixtral.json").read_text()))
    a, b = (training_memory(spec, make_plan(dp=4, ep=ep, global_batch=4), 64, A100) for ep in (1, 4))
    assert float(b.weights_bytes) < float(a.weights_bytes)


@pytest.mark.parametrize("path", TINY, ids=[p.stem for p in TINY])
def test_every_model_type_is_finite(path: Path) -> None:
    """Every supported model_type through both entry points (eager: jit is checked above); a cache
    for every decoder (an encoder, BERT, keeps none)."""
    spec = parse_hf_config(json.loads(path.read_text()))
    assert spec.model_type in SUPPORTED_MODEL_TYPES
    plan = make_plan(tp=2, pp=2, dp=2, microbatch=1, global_batch=8, sequence_parallel=1, recompute=1)
    train = training_memory(spec, plan, 64, A100, fused_attention=True)
    infer = inference_memory(spec, 2, 2, 4, 64, A100)
    for mem in (train, infer):
        assert all(bool(jnp.isfinite(x)) and float(x) >= 0 for x in jax.tree.leaves(mem))
    assert float(train.activations_bytes) > 0 and (float(infer.kv_cache_bytes) > 0) == spec.causal
