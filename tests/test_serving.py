"""The request-level serving simulator: the step model against the static-batch model, the step
table against the step model, and the consistency checks every correct simulator passes (a lone
request, saturation, Little's law, conservation of tokens, preemption), plus ``dse.serve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodels.errors import ConfigError
from costmodels.inference import ENGINES, InferenceJob, inference_step
from costmodels.requests import (
    SLO,
    Pool,
    Scheduler,
    Speculation,
    Workload,
    serving_metrics,
    simulate,
    simulate_disaggregated,
    simulate_replicas,
    synthetic,
)
from costmodels.serving import kv_capacity_tokens, kv_transfer_s, step_table, step_time_s
from dse.hardware import load_hardware
from dse.models import load_model

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "experiments" / "serving" / "bursty_trace.jsonl"
H100 = load_hardware("h100_sxm")
LLAMA = load_model("llama3_8b")
JOB = InferenceJob(LLAMA, 512, 129, precision="bf16", engine=ENGINES["tensorrt-llm"])
MAX_SEQS, MAX_TOKENS, MAX_CONTEXT = 64, 4096, 4096


@pytest.fixture(scope="module")
def table():
    return step_table(H100, JOB, 1, MAX_TOKENS, MAX_SEQS, MAX_CONTEXT)


def sched(**settings) -> Scheduler:
    """An engine the table covers: 64 sequences and 4,096 tokens per step unless ``settings`` say."""
    return Scheduler(**({"max_num_seqs": MAX_SEQS, "max_num_batched_tokens": MAX_TOKENS} | settings))


def fixed(n: int, arrival: np.ndarray, inp: int, out: int, concurrency: int = 0) -> Workload:
    return Workload(arrival, np.full(n, inp), np.full(n, out), concurrency)


# --- the step model is the static-batch model; the table is the step model ---------------------------


@pytest.mark.parametrize(
    ("name", "tp"),
    [("llama3_8b", 1), ("llama3_8b", 2), ("mamba_2_8b", 1), ("jamba_v0_1", 2), ("mixtral_8x7b", 2)],
)
def test_a_uniform_step_is_the_static_batch_model(name: str, tp: int) -> None:
    """16 decodes at the mean context of 512 + 129 tokens (512 + 64 cached, + the new one) take what
    ``inference_step``'s TPOT says for a static batch of 16; one 512-token prompt what its TTFT says
    for a batch of 1 (the same ops, sharding and all-reduces). A state-space layer's convolution and
    scan read and write each sequence's state, so the step model prices them per sequence with the
    attention core; a MoE step reads the experts its tokens touch, once (the table holds every
    expert, ``op_seconds`` keeps E·(1 − (1 − k/E)^T) of them). Mamba-2.8B: 64 Mamba layers, no
    attention; Jamba: 28 Mamba layers, 4 attention layers, 16 MoE layers; Mixtral: 8 experts, top 2."""
    static = InferenceJob(load_model(name), 512, 129, precision="bf16")
    with jax.enable_x64(True):
        sixteen = inference_step(H100, static, float(tp), 1.0, 16.0)
        one = inference_step(H100, static, float(tp), 1.0, 1.0)
    # the static model's table is one query's: it gathers one embedding row for the whole batch,
    # the step model one per token (15 more rows of 8 KiB: 4 parts per million here)
    assert step_time_s(H100, static, tp, decode_contexts=[577] * 16) == pytest.approx(
        float(sixteen.tpot_s), rel=1e-5
    )
    assert step_time_s(H100, static, tp, chunks=[(0, 512)]) == pytest.approx(float(one.ttft_s), rel=1e-12)


def test_the_table_reads_the_step_model_within_a_tenth_of_a_percent(table) -> None:
    """60 random mixes (up to 63 decodes at contexts up to 4,000, up to two prompt chunks within the
    4,096-token budget): the table's interpolated step time is within 0.1 % of the direct model
    (measured: 0.03 % worst for Llama-3-8B, 70B and Mixtral)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(60):
        d = int(rng.integers(0, MAX_SEQS - 1))
        contexts = [int(x) for x in rng.integers(1, MAX_CONTEXT - 64, d)]
        budget, chunks = MAX_TOKENS - d, []
        for _ in range(int(rng.integers(0 if d else 1, 3))):
            new = int(rng.integers(1, max(budget // 2, 2)))
            chunks.append((int(rng.integers(0, MAX_CONTEXT - new)), new))
            budget -= new
        direct = step_time_s(H100, JOB, 1, chunks, contexts)
        tokens = d + sum(n for _, n in chunks)
        spans = [(float(c), float(n)) for c, n in chunks]
        tabled = table.seconds(tokens, d + len(chunks), d, float(sum(contexts)), spans)
        worst = max(worst, abs(tabled - direct) / direct)
    assert worst < 1e-3


# --- consistency: what any correct simulator does ----------------------------------------------------


def test_a_lone_request_sees_one_prefill_and_lone_decode_steps(table) -> None:
    """Requests 1,000 s apart never meet: TTFT is one prefill step of the prompt, and the request's
    TPOT the mean of its 128 single-sequence decode steps at contexts 513..640; both agree with the
    static model at batch 1 (its TPOT is the step at the mean context) to the table's error; both
    launch the prefill's kernels and replay the decode steps from CUDA graphs."""
    sim = simulate(fixed(3, np.array([0.0, 1000.0, 2000.0]), 512, 129), table, sched())
    ttft = sim.first_token_s - sim.arrival_s
    assert np.allclose(ttft, table.seconds(512, 1, 0, 0.0, [(0.0, 512.0)]), rtol=1e-12)
    decode = table.decode_seconds(1, 513.0 + np.arange(128))
    tpot = (sim.finish_s - sim.first_token_s) / 128
    assert np.allclose(tpot, decode.mean(), rtol=1e-12)
    static = InferenceJob(LLAMA, 512, 129, precision="bf16", engine=ENGINES["static-cuda-graphs"])
    with jax.enable_x64(True):
        one = inference_step(H100, static, 1.0, 1.0, 1.0)
    assert ttft[0] == pytest.approx(float(one.ttft_s), rel=1e-3)
    assert tpot[0] == pytest.approx(float(one.tpot_s), rel=2e-3)


def test_saturation_reaches_the_largest_batch_throughput(table) -> None:
    """A closed loop of 64 users (the engine's 64 sequences) with 32-token prompts and 512-token
    outputs keeps the batch full: output tokens/s within 3 % of the static model's batch of 64 at
    the mean context (64 / TPOT, its decode steps replaying CUDA graphs as the engine's do; prompts
    this short cost little)."""
    n = 640
    sim = simulate(fixed(n, np.zeros(n), 32, 512, concurrency=64), table, sched())
    throughput = n * 512 / float(np.max(sim.finish_s))
    static = InferenceJob(LLAMA, 32, 512, precision="bf16", engine=ENGINES["static-cuda-graphs"])
    with jax.enable_x64(True):
        batch = inference_step(H100, static, 1.0, 1.0, 64.0)
    assert throughput == pytest.approx(64.0 / float(batch.tpot_s), rel=0.03)
    assert throughput < 64.0 / float(batch.tpot_s)  # the prompts' steps cost something


def test_littles_law_holds_on_the_simulated_system(table) -> None:
    """Time-averaged requests in the system (running + waiting over the steps) equal the arrival
    rate times the mean time in the system: ∫N dt = Σ (finish − arrival), up to the arrivals that
    wait for the step in flight to end before they are counted (measured 0.4 %)."""
    w = synthetic("poisson", 2000, 20.0, np.full(2000, 512), np.full(2000, 128), seed=3)
    sim = simulate(w, table, sched())
    tl = sim.timeline
    area = float(np.sum((tl["running"] + tl["waiting"]) * tl["duration_s"]))
    assert area == pytest.approx(float(np.sum(sim.finish_s - sim.arrival_s)), rel=0.01)


def test_every_token_is_generated_once_even_under_preemption(table) -> None:
    """A KV cache of 120 blocks (1,920 tokens) for up to 8 sequences of 512 + 129 tokens forces
    preemptions; every request still finishes with exactly its output: the inter-token gaps number
    Σ(output − 1), later on average than with a cache that holds them all."""
    w = synthetic("poisson", 60, 50.0, np.full(60, 512), np.full(60, 129), seed=1)
    sim = simulate(w, table, sched(max_num_seqs=8, max_num_batched_tokens=2048, kv_blocks=120))
    assert sim.preemptions.sum() > 0
    assert len(sim.itl_s) == int(np.sum(w.output_len - 1))
    assert np.all(sim.finish_s > sim.first_token_s) and np.all(sim.first_token_s > sim.arrival_s)
    roomy = simulate(w, table, sched(max_num_seqs=8, max_num_batched_tokens=2048))
    assert roomy.preemptions.sum() == 0
    assert np.mean(sim.finish_s - sim.arrival_s) > np.mean(roomy.finish_s - roomy.arrival_s)


def test_continuous_batching_beats_static_batching(table) -> None:
    """At a load static batching can hardly sustain, continuous batching gives a lower median TTFT
    and end-to-end latency (Orca, Yu et al. 2022): requests join at the next step instead of waiting
    for the batch in flight to drain."""
    lengths = np.random.default_rng(5).integers(16, 512, 400)
    w = synthetic("poisson", 400, 6.0, np.full(400, 256), lengths, seed=2)
    cont = serving_metrics(simulate(w, table, sched()), w, SLO(), 1 << 20)
    stat = serving_metrics(simulate(w, table, sched(kind="static", max_num_seqs=32)), w, SLO(), 1 << 20)
    assert cont["ttft_p50_ms"] < stat["ttft_p50_ms"] and cont["e2e_p50_ms"] < stat["e2e_p50_ms"]


def test_chunked_prefill_shortens_the_decode_stalls(table) -> None:
    """Long prompts arriving into a decoding batch: without chunking a prompt's whole prefill runs in
    one step (prefill first, as vLLM's V0 scheduler), so the running decodes stall for it; chunked
    prefill in 512-token budgets caps the stall (Sarathi-Serve, Agrawal et al. 2024): the longest
    inter-token gap is less than half as long."""
    w = synthetic("poisson", 200, 4.0, np.full(200, 3000), np.full(200, 256), seed=4)
    chunked = sched(max_num_batched_tokens=512, chunked_prefill=True)
    whole = sched(chunked_prefill=False, priority="prefill")
    stall = [simulate(w, table, s).itl_s.max() for s in (chunked, whole)]
    assert stall[0] < stall[1] / 2


def test_the_simulation_is_deterministic(table) -> None:
    w = synthetic("gamma", 300, 10.0, np.full(300, 300), np.full(300, 64), seed=9, cv=3.0)
    a, b = simulate(w, table, sched()), simulate(w, table, sched())
    assert np.array_equal(a.finish_s, b.finish_s) and np.array_equal(a.itl_s, b.itl_s)


def test_replicas_split_the_load(table) -> None:
    """Two replicas serve a stream round robin: each sees half of it, so the p99 TTFT at a rate one
    replica cannot keep up with drops, and goodput per GPU is reported over both."""
    w = synthetic("poisson", 600, 30.0, np.full(600, 1024), np.full(600, 64), seed=6)
    one = serving_metrics(simulate_replicas(w, table, sched(), 1), w, SLO(500.0, 50.0), 1 << 20)
    two = serving_metrics(simulate_replicas(w, table, sched(), 2), w, SLO(500.0, 50.0), 1 << 20)
    assert (
        two["ttft_p99_ms"] < one["ttft_p99_ms"]
        and two["goodput_requests_per_s"] >= one["goodput_requests_per_s"]
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 30),
    rate=st.floats(0.5, 200.0),
    inp=st.integers(1, 600),
    out=st.integers(1, 60),
    seqs=st.integers(1, MAX_SEQS),
    budget=st.integers(1, 1024),
    chunked=st.booleans(),
    priority=st.sampled_from(["decode", "prefill"]),
    kind=st.sampled_from(["continuous", "static"]),
    block=st.sampled_from([1, 16, 64]),
    caching=st.booleans(),
    admission=st.sampled_from(["on_demand", "reserve"]),
    seed=st.integers(0, 100),
)
def test_any_workload_finishes_with_sane_times(
    table, n, rate, inp, out, seqs, budget, chunked, priority, kind, block, caching, admission, seed
) -> None:
    """Whatever the workload and engine settings (shared prefixes and prefix caching included): every
    request finishes, with arrival < first token ≤ last token, exactly Σ(output − 1) inter-token
    gaps, all finite and positive, and fewer cache hits than prompt tokens; settings that cannot
    serve a request are refused in one line instead."""
    rng = np.random.default_rng(seed)
    inputs, outputs = rng.integers(1, inp + 1, n), rng.integers(1, out + 1, n)
    w = synthetic("poisson", n, rate, inputs, outputs, seed=seed)
    kv = int(rng.integers(1, 200))
    if caching:  # requests share a few prefixes of up to their prompt
        ids, plen = rng.integers(0, 3, n), np.minimum(rng.integers(0, inp + 1, n), inputs)
        w = Workload(w.arrival_s, inputs, outputs, prefix_id=ids, prefix_len=plen)
    s = Scheduler(
        kind, seqs, max(budget, seqs), chunked, priority, block, kv, caching, kv_admission=admission
    )
    try:
        sim = simulate(w, table, s)
    except ConfigError as err:
        assert (
            "KV blocks" in str(err) or "max_num_batched_tokens" in str(err) or "cannot schedule" in str(err)
        )
        return
    assert np.all(sim.first_token_s > sim.arrival_s) and np.all(sim.finish_s >= sim.first_token_s)
    assert len(sim.itl_s) == int(np.sum(outputs - 1)) and np.all(sim.itl_s > 0)
    assert np.all(sim.hit_tokens < inputs)
    m = serving_metrics(sim, w, SLO(), kv)
    assert all(np.isfinite(v) and v >= 0 for v in m.values())


def test_kv_capacity_is_what_the_memory_model_leaves() -> None:
    """Llama-3-8B bf16 on one H100 with an 8,192-token step: 80 GiB less 14.96 GiB of weights, the
    step's activations and the 2 GiB workspace, over 32 layers · 2·8·128 elements · 2 B = 128 KiB
    per token: about 510 thousand tokens."""
    tokens = kv_capacity_tokens(H100, JOB, 1, 8192)
    assert 505_000 < tokens < 515_000
    assert kv_capacity_tokens(H100, JOB, 2, 8192) > 2 * tokens  # half the weights per device


def test_encoders_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="serves decoder-only models"):
        step_table(H100, InferenceJob(load_model("t5_small"), 64, 8), 1, 64, 4, 128)


# --- state-space and hybrid models: a fixed state per sequence --------------------------------------

JAMBA, MAMBA = load_model("jamba_v0_1"), load_model("mamba_2_8b")


def test_a_state_space_table_reads_the_step_model_and_a_lone_request_its_steps() -> None:
    """Jamba's table against its direct step model on mixes of decodes and chunks (a chunk after a
    cached part reads the sequence's state), within 0.1 %; a lone request's TTFT is one prefill step
    and its TPOT the static model's at batch 1."""
    job = InferenceJob(JAMBA, 512, 129, precision="bf16")
    table = step_table(H100, job, 2, 2048, 16, 1024)  # Jamba's 104 GB of weights need two H100s
    rng = np.random.default_rng(1)
    for _ in range(10):
        d = int(rng.integers(0, 15))
        contexts = [int(x) for x in rng.integers(1, 900, d)]
        chunks = [(int(rng.integers(0, 400)), int(rng.integers(1, 600)))]
        direct = step_time_s(H100, job, 2, chunks, contexts)
        spans = [(float(c), float(n)) for c, n in chunks]
        tabled = table.seconds(d + chunks[0][1], d + 1, d, float(sum(contexts)), spans)
        assert tabled == pytest.approx(direct, rel=1e-3)
    sim = simulate(
        fixed(2, np.array([0.0, 1000.0]), 512, 129),
        table,
        sched(max_num_seqs=16, max_num_batched_tokens=2048),
    )
    with jax.enable_x64(True):
        one = inference_step(H100, job, 2.0, 1.0, 1.0)
    assert (sim.first_token_s - sim.arrival_s)[1] == pytest.approx(float(one.ttft_s), rel=1e-3)
    assert ((sim.finish_s - sim.first_token_s) / 128)[1] == pytest.approx(float(one.tpot_s), rel=2e-3)


def test_state_slots_are_reserved_before_the_kv_cache() -> None:
    """vLLM allocates every sequence's recurrent state up front. Jamba bf16 on two H100s (tp 2): a
    sequence's state on one device is 28 Mamba layers · (8,192 channels · 4 conv taps + 8,192 · 16
    states) · 2 B / 2 = 4,587,520 B; a token's KV cache 4 attention layers · 2·4·128 · 2 B = 8,192 B.
    Reserving 256 slots leaves 256 · 4,587,520 / 8,192 = 143,360 tokens fewer. Mamba-2.8B caches no
    token: its capacity is every slot's whole sequence (never the limit), and slots that do not fit
    are one line."""
    job = InferenceJob(JAMBA, 512, 129, "bf16")
    assert kv_capacity_tokens(H100, job, 2, 8192, 0) - kv_capacity_tokens(H100, job, 2, 8192, 256) in (
        143_360,
        143_361,
    )
    mamba = InferenceJob(MAMBA, 512, 129, "bf16")
    assert kv_capacity_tokens(H100, mamba, 1, 8192, 256) == 256 * (512 + 129)
    with pytest.raises(
        ConfigError, match=r"recurrent states of max_num_seqs=100000 sequences .* lower max_num_seqs"
    ):
        kv_capacity_tokens(H100, mamba, 1, 8192, 100_000)


def test_a_state_space_plan_refuses_what_it_cannot_do_with_a_state_in_one_line() -> None:
    from costmodels.deployment import ServingPlan

    for knob in ({"speculative_tokens": 2}, {"prefix_caching": True}, {"preemption": "swap"}):
        with pytest.raises(ConfigError, match=f"{next(iter(knob))}=.*keeps a recurrent state per sequence"):
            ServingPlan(**knob).deploy(H100, MAMBA, "bf16", 512, 64)


def test_a_disaggregated_hybrid_moves_its_state_with_its_cache() -> None:
    """A prompt's transfer carries its KV cache and its one recurrent state: with Jamba, a prompt of
    1,024 tokens moves 1,024 · 16,384 B of KV cache and the 9,175,040-byte state, one of no tokens the
    state alone (``fabric.p2p_s`` of those bytes)."""
    from costmodels.fabric import p2p_s

    job = InferenceJob(JAMBA, 512, 129, "bf16")
    t = kv_transfer_s(H100, job, 1, np.array([0, 1024]))
    stride = float(H100.scale_up_domain_size)
    with jax.enable_x64(True):
        expected = [float(p2p_s(H100, b, stride)) for b in (9_175_040.0, 1024 * 16_384 + 9_175_040.0)]
    np.testing.assert_allclose(t, expected, rtol=1e-12)


# --- dse.serve ------------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.serve", *args], capture_output=True, text=True, timeout=300
    )


def test_serve_runs_the_shipped_trace_and_writes_its_figures(tmp_path: Path) -> None:
    proc = run("workload.arrival=trace", f"workload.trace={TRACE}", f"plots={tmp_path}", "format=json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["workload"]["requests"] == 300 and rep["metrics"]["requests"] == 300
    for key in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "e2e_p99_ms", "goodput_per_gpu"):
        assert rep["metrics"][key] > 0
    assert {Path(f).name for f in rep["files"]} == {"timeline.png", "latency_cdf.png", "requests.csv"}
    assert len((tmp_path / "requests.csv").read_text().splitlines()) == 301


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"arrival_s": 0, "input_len": 5}\n', "trace.jsonl:1: a request needs arrival_s, input_len"),
        ('{"arrival_s": 1, "input_len": 5, "output_len": 2}\n{"arrival_s": 0.5, "input_len": 5, '
         '"output_len": 2}\n', "trace.jsonl:2: arrival_s goes back in time"),
        ('{"arrival_s": 0, "input_len": 0, "output_len": 2}\n', "trace.jsonl:1: need arrival_s >= 0"),
        ("not json\n", "trace.jsonl:1: not JSON"),
    ],
)  # fmt: skip
def test_a_bad_trace_is_one_line_naming_its_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(content)
    proc = run("workload.arrival=trace", f"workload.trace={path}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


# --- disaggregated prefill and decode --------------------------------------------------------------


def test_kv_transfer_is_the_prompts_cache_over_the_link() -> None:
    """Llama-3-8B bf16 caches 32 layers · 2·8·128 elements · 2 B = 128 KiB per token; moving it is one
    point-to-point transfer: affine in the tokens (latency + bytes / bandwidth), slower across nodes."""
    t = kv_transfer_s(H100, JOB, 1, np.array([1024, 2048, 4096]))
    assert t[2] - t[0] == pytest.approx(3 * (t[1] - t[0]), rel=1e-9) and t[0] > 0
    assert kv_transfer_s(H100, JOB, 1, np.array([1024]), across_nodes=False)[0] < t[0]


@pytest.mark.parametrize("rate", [4.0, 8.0, 12.0])
def test_disaggregation_with_an_ideal_network_never_loses_goodput_to_prefill_heavy_load(table, rate) -> None:
    """Four GPUs, 4,000-token prompts and 64-token outputs, SLOs TTFT ≤ 1 s and TPOT ≤ 20 ms: with a
    network that moves the cache in no time, the best split into prefill and decode replicas meets
    the SLOs for at least as many of the offered requests as four colocated replicas (goodput at
    the offered rate; DistServe's claim: prefills no longer interrupt decodes). A real link only
    adds time: never more."""
    n = 600
    w = synthetic("poisson", n, rate, np.full(n, 4000), np.full(n, 64), seed=0)
    engine, slo = sched(max_num_seqs=MAX_SEQS, max_num_batched_tokens=MAX_TOKENS), SLO(1000.0, 20.0)
    colocated = serving_metrics(simulate_replicas(w, table, engine, 4), w, slo, 1 << 20)["slo_attainment"]
    best, real = 0.0, 0.0
    for p in (1, 2, 3):
        ideal = simulate_disaggregated(w, Pool(table, engine, p), Pool(table, engine, 4 - p), np.zeros(n))
        slow = simulate_disaggregated(w, Pool(table, engine, p), Pool(table, engine, 4 - p), np.full(n, 0.02))
        best = max(best, serving_metrics(ideal, w, slo, 1 << 20)["slo_attainment"])
        real = max(real, serving_metrics(slow, w, slo, 1 << 20)["slo_attainment"])
    assert best >= colocated and real <= best


def test_a_disaggregated_request_decodes_once_its_cache_arrives(table) -> None:
    """A lone request: its first token comes from the prefill replica (one prefill step), its decode
    steps start after the 0.5 s transfer, so its first inter-token gap is the transfer plus a step."""
    w = fixed(1, np.zeros(1), 512, 9)
    sim = simulate_disaggregated(w, Pool(table, sched()), Pool(table, sched()), np.full(1, 0.5))
    assert sim.first_token_s[0] == pytest.approx(table.seconds(512, 1, 0, 0.0, [(0.0, 512.0)]), rel=1e-12)
    steps = table.decode_seconds(1, 513.0 + np.arange(8))
    assert sim.itl_s[0] == pytest.approx(0.5 + steps[0], rel=1e-12)
    assert sim.finish_s[0] == pytest.approx(sim.first_token_s[0] + 0.5 + steps.sum(), rel=1e-12)


# --- prefix caching --------------------------------------------------------------------------------


def prefixed(arrival: np.ndarray, inp: int, out: int, ids: list[int], plen: int) -> Workload:
    n = len(arrival)
    return Workload(
        arrival, np.full(n, inp), np.full(n, out), prefix_id=np.array(ids), prefix_len=np.full(n, plen)
    )


def test_a_prefix_hit_skips_the_prefix_prefill(table) -> None:
    """Two lone requests sharing a 1,000-token prefix of 2,048-token prompts: the second reads the
    prefix's 62 full blocks (992 tokens) from the cache, so its prefill step is a chunk of 1,056 new
    tokens after 992 cached; the first computes the whole prompt."""
    w = prefixed(np.array([0.0, 100.0]), 2048, 4, [7, 7], 1000)
    sim = simulate(w, table, sched(prefix_caching=True))
    ttft = sim.first_token_s - sim.arrival_s
    assert ttft[0] == pytest.approx(table.seconds(2048, 1, 0, 0.0, [(0.0, 2048.0)]), rel=1e-12)
    assert ttft[1] == pytest.approx(table.seconds(1056, 1, 0, 0.0, [(992.0, 1056.0)]), rel=1e-12)
    assert sim.hit_tokens.tolist() == [0, 992]


@pytest.mark.parametrize("rate", [5.0, 20.0, 40.0])
def test_prefix_hits_never_slow_a_request_down(table, rate) -> None:
    """1,000 requests of 2,048 prompt tokens, each starting with one of 4 shared 1,536-token prefixes:
    with prefix caching no request's TTFT or end-to-end latency is longer than without, at a light, a
    heavy and an overloaded rate; three quarters of the prompt tokens come from the cache."""
    n = 1000
    w = synthetic("poisson", n, rate, np.full(n, 2048), np.full(n, 64), seed=0, prefixes=4, prefix_len=1536)
    off, on = (simulate(w, table, sched(prefix_caching=c, kv_blocks=3000)) for c in (False, True))
    assert np.all(on.first_token_s <= off.first_token_s + 1e-12)
    assert np.all(on.finish_s <= off.finish_s + 1e-12)
    assert serving_metrics(on, w, SLO(), 3000)["prefix_hit_rate"] == pytest.approx(0.75, abs=0.01)


def test_an_unused_prefix_is_evicted_when_blocks_run_out(table) -> None:
    """Requests of 512 + 2 tokens (33 blocks of 16) with 256-token prefixes (16 blocks), one at a time,
    prefixes 1, 2, 1, 2. With 60 blocks both prefixes stay cached once their first request is done
    (44 free after A, 28 after B, 32 held by the two idle prefixes): C and D hit. With 40 blocks B
    finds 24 free and evicts prefix 1, C then evicts prefix 2: nobody hits."""
    w = prefixed(np.array([0.0, 10.0, 20.0, 30.0]), 512, 2, [1, 2, 1, 2], 256)
    roomy = simulate(w, table, sched(prefix_caching=True, kv_blocks=60))
    tight = simulate(w, table, sched(prefix_caching=True, kv_blocks=40))
    assert roomy.hit_tokens.tolist() == [0, 0, 256, 256] and tight.hit_tokens.tolist() == [0, 0, 0, 0]


# --- speculative decoding ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide():
    """The step table of steps that verify 3 speculated tokens per decoding sequence."""
    return step_table(H100, JOB, 1, MAX_TOKENS, MAX_SEQS, MAX_CONTEXT, width=4)


@pytest.mark.parametrize("alpha", [0.3, 0.7, 0.9])
def test_accepted_tokens_follow_leviathan(alpha: float) -> None:
    """Proposals accepted independently with probability α until the first rejection, plus the
    verification's own token: E[tokens per step] = (1 − α^(k+1))/(1 − α) (Leviathan et al. 2023,
    Eq. 1); 200,000 draws agree within 0.5 %."""
    draws = Speculation(3, alpha).accepted(np.random.default_rng(0), (200_000,)) + 1
    assert draws.min() >= 1 and draws.max() <= 4
    assert draws.mean() == pytest.approx((1 - alpha**4) / (1 - alpha), rel=5e-3)


def test_a_lone_request_with_every_proposal_accepted(wide) -> None:
    """α = 1 and n-gram proposals (no draft model): after the first token each step emits 4 tokens,
    so 128 more tokens take 32 verify steps, at contexts 512 + 1 + 3 + 4j (the fed token and the 3
    proposals attend everything before them)."""
    sim = simulate(fixed(1, np.zeros(1), 512, 129), wide, sched(speculation=Speculation(3, 1.0)))
    steps = wide.decode_seconds(1, 516.0 + 4 * np.arange(32))
    assert sim.finish_s[0] - sim.first_token_s[0] == pytest.approx(steps.sum(), rel=1e-12)
    assert len(sim.itl_s) == 32  # one gap per step: the client receives 4 tokens at a time


def test_speculation_helps_only_when_proposals_are_accepted(table, wide) -> None:
    """A lone request's TPOT: with α = 0 every step verifies 4 tokens to keep 1, never faster than
    plain decoding; with α = 0.7 about 2.5 tokens per step make it faster; a draft model's own
    steps (here the target itself, the most expensive draft) cost more than they save at α = 0.7."""
    w = fixed(3, np.array([0.0, 1000.0, 2000.0]), 512, 129)

    def tpot(tab, speculation=None):
        sim = simulate(w, tab, sched(speculation=speculation))
        return np.mean((sim.finish_s - sim.first_token_s) / 128)

    plain = tpot(table)
    assert tpot(wide, Speculation(3, 0.0)) >= plain
    assert tpot(wide, Speculation(3, 0.7)) < plain / 2
    assert tpot(wide, Speculation(3, 0.7, draft=table)) > plain


def test_speculating_engines_finish_every_request(wide) -> None:
    """Under load, with preemptions from a small cache: every request finishes after its first token."""
    w = synthetic("poisson", 200, 30.0, np.full(200, 300), np.full(200, 100), seed=3)
    sim = simulate(w, wide, sched(speculation=Speculation(3, 0.6, seed=1), kv_blocks=400))
    assert np.all(np.isfinite(sim.finish_s)) and np.all(sim.finish_s > sim.first_token_s)
    assert sim.preemptions.sum() > 0


def test_a_table_of_the_wrong_width_is_refused(table) -> None:
    with pytest.raises(ConfigError, match="verifies 0 speculated tokens per step, the engine 3"):
        simulate(fixed(1, np.zeros(1), 64, 8), table, sched(speculation=Speculation(3, 0.5)))


def test_serve_prints_what_speculation_assumes() -> None:
    proc = run("speculative.tokens=2", "speculative.acceptance=0.5", "workload.requests=50", "format=json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["speculation"] == {"tokens": 2, "acceptance": 0.5, "draft_model": None}
    assert any("n-gram lookup" in line for line in rep["assumptions"])


# --- serving cases in dse.validate -------------------------------------------------------------------

LLAMA3_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
}  # fmt: skip


def serving_case(**fields) -> dict:
    case = {
        "id": "c", "family": "f", "source": "s", "kind": "serving", "model": LLAMA3_8B,
        "hardware": "h100_sxm", "num_devices": 1, "parallelism": {"tp": 1, "pp": 1, "dp": 1, "cp": 1},
        "batch": {"input_len": 512, "output_len": 64, "num_requests": 200},
        "load": {"request_rate_per_s": 4.0},
        "engine": "vLLM 0.6.0", "precision": "bf16", "statistic": "p50", "measured": {"ttft_ms": 40.0},
    }  # fmt: skip
    return case | fields


def test_a_serving_case_is_predicted_by_the_simulator() -> None:
    """dse.predict's figure for a vLLM case at 4 req/s is the p50 TTFT of the same simulation run
    directly: 200 Poisson requests of 512 + 64 tokens on vLLM's defaults (256 sequences, 8,192-token
    steps) with the KV cache the memory model leaves."""
    from dse.predict import predict_case

    quantity, predicted, reason = predict_case(serving_case(), {})
    assert (quantity, reason) == ("ttft_ms", None)
    job = InferenceJob(LLAMA, 512, 64, "bf16", engine=ENGINES["tensorrt-llm"])
    blocks = kv_capacity_tokens(H100, job, 1, 8192) // 16
    w = synthetic("poisson", 200, 4.0, np.full(200, 512), np.full(200, 64))
    sim = simulate(
        w,
        step_table(H100, job, 1, 8192, 256, 576),
        Scheduler(max_num_seqs=256, max_num_batched_tokens=8192, kv_blocks=blocks),
    )
    assert predicted == pytest.approx(serving_metrics(sim, w, SLO(), blocks)["ttft_p50_ms"], rel=1e-12)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"load": {"qps": 3}}, "'load' must hold request_rate_per_s or concurrency"),
        ({"load": {"concurrency": 0}}, "'load.concurrency' must be a positive integer"),
        ({"statistic": "p95"}, "'statistic' must be one of mean, p50, p90, p99 for 'ttft_ms'"),
        (
            {"parallelism": {"tp": 1, "pp": 1, "dp": 1, "cp": 2}, "num_devices": 2},
            "serving cases have cp = 1",
        ),
    ],
)
def test_a_malformed_serving_case_is_invalid_in_one_line(fields: dict, message: str) -> None:
    from dse import validate

    category, detail = validate.check_case(serving_case(**fields), validate.Known.load())
    assert category == validate.INVALID and message in detail


def test_reserving_the_whole_sequence_never_preempts(table) -> None:
    """TensorRT-LLM's default admission (kv_admission="reserve") takes the blocks of a request's
    whole sequence before it starts: under the load and cache that preempt 400+ times on demand,
    nothing is preempted, every request finishes, and a request waits for blocks instead."""
    w = synthetic("poisson", 60, 50.0, np.full(60, 512), np.full(60, 129), seed=1)
    tight = {"max_num_seqs": 8, "max_num_batched_tokens": 2048, "kv_blocks": 120}
    demand = simulate(w, table, sched(**tight))
    reserve = simulate(w, table, sched(**tight, kv_admission="reserve"))
    assert demand.preemptions.sum() > 0 and reserve.preemptions.sum() == 0
    assert len(reserve.itl_s) == int(np.sum(w.output_len - 1))
    assert reserve.timeline["running"].max() <= 120 // 41  # 41 blocks per 641-token sequence


def _tokens_run(sim) -> int:
    """Tokens the engine's steps computed (a stretch row holds its steps' tokens per step)."""
    tl = sim.timeline
    return int(np.sum(tl["tokens"] * tl["steps"]))


def test_swap_preemption_keeps_the_progress_recompute_redoes(table) -> None:
    """The load and cache that preempt on demand: with swap preemption over an instant host link,
    the steps compute exactly Σ input + Σ (output − 1) tokens (nothing prefilled twice) while
    recompute computes more (each preempted sequence's prompt and generated tokens again), every
    request still finishes with its output, and the mean end-to-end latency is no worse. Over a
    real link each swapped block goes out and comes back: the engine waits swap_block_s per block
    each way, an even count of blocks, at least two per preemption."""
    w = synthetic("poisson", 60, 50.0, np.full(60, 512), np.full(60, 129), seed=1)
    tight = {"max_num_seqs": 8, "max_num_batched_tokens": 2048, "kv_blocks": 120}
    recompute = simulate(w, table, sched(**tight))
    swap = simulate(w, table, sched(**tight, preemption="swap"))
    exact = int(np.sum(w.input_len) + np.sum(w.output_len - 1))
    assert recompute.preemptions.sum() > 0 and swap.preemptions.sum() > 0
    assert _tokens_run(swap) == exact < _tokens_run(recompute)
    assert len(swap.itl_s) == int(np.sum(w.output_len - 1)) and np.all(swap.finish_s > swap.first_token_s)
    assert np.mean(swap.finish_s - swap.arrival_s) <= np.mean(recompute.finish_s - recompute.arrival_s)
    block_s = 1e-4
    slow = simulate(w, table, sched(**tight, preemption="swap", swap_block_s=block_s))
    tl = slow.timeline
    waits = float(np.sum(tl["duration_s"][tl["tokens"] == 0]))
    blocks = round(waits / block_s)
    assert waits == pytest.approx(blocks * block_s) and blocks % 2 == 0
    assert blocks >= 2 * slow.preemptions.sum() > 0


def test_a_swapped_block_crosses_the_host_link() -> None:
    """Llama-3-8B bf16 on one H100: 32 layers · 2 (K, V) · 8 KV heads · 128 · 2 B = 131,072 B per
    token; a 16-token block is 2 MiB, over the 64 GB/s PCIe Gen5 x16 link (one direction) 32.8 µs.
    A deployment with swap preemption gives its engines that time; a bad setting is one line."""
    from costmodels.deployment import ServingPlan
    from costmodels.serving import kv_swap_block_s

    assert kv_swap_block_s(H100, JOB, 1, 16) == pytest.approx(16 * 131_072 / 64e9)
    deployment = ServingPlan(preemption="swap").deploy(H100, LLAMA, "bf16", 512, 129)
    assert deployment.decode.scheduler.swap_block_s == pytest.approx(16 * 131_072 / 64e9)
    assert ServingPlan().deploy(H100, LLAMA, "bf16", 512, 129).decode.scheduler.swap_block_s == 0.0
    with pytest.raises(ConfigError, match="preemption must be one of recompute, swap, got 'evict'"):
        sched(preemption="evict")
    with pytest.raises(ConfigError, match="swap_block_s must be a finite number >= 0, got -1"):
        sched(preemption="swap", swap_block_s=-1.0)


def test_every_published_serving_case_is_predicted() -> None:
    """experiments/validation/serving.yaml (NVIDIA NIM 1.8.0, 60 cases): every case is covered by the
    simulator and the error stays below where it was when the cases were added (MAPE 39.3 % on the
    first 33; 28.0 % on all 60 since the graph-replay kernel figure; README, "Validation against
    published measurements"): a regression guard, not a fidelity claim."""
    from dse import validate

    path = REPO / "experiments" / "validation" / "serving.yaml"
    rep = validate.report(validate.load_cases(path), {})
    serving = rep["summary"]["by_kind"]["serving"]
    assert serving["n"] == serving["covered"] == 60
    assert serving["mape"] < 35.0


# --- one plan for the serving tools ------------------------------------------------------------------


def test_a_plan_deploys_what_the_tools_built_by_hand(table) -> None:
    """ServingPlan.deploy gives the engine the memory model's KV blocks and the step table of the
    plan's budgets: its simulation is the one built from the parts (Scheduler, step_table,
    simulate_replicas) for the same requests, to the last bit."""
    from costmodels.deployment import ServingPlan

    plan = ServingPlan(tp=1, replicas=2, max_num_seqs=MAX_SEQS, max_num_batched_tokens=MAX_TOKENS)
    deployment = plan.deploy(H100, LLAMA, "bf16", 512, 129)
    blocks = kv_capacity_tokens(H100, InferenceJob(LLAMA, 512, 129, "bf16"), 1, MAX_TOKENS) // 16
    assert deployment.kv_blocks == blocks and plan.devices == 2
    w = synthetic("poisson", 300, 12.0, np.full(300, 512), np.full(300, 129), seed=8)
    by_hand = simulate_replicas(
        w, step_table(H100, JOB, 1, MAX_TOKENS, MAX_SEQS, 641), sched(kv_blocks=blocks), 2
    )
    assert np.array_equal(deployment.simulate(w).finish_s, by_hand.finish_s)


def test_a_plan_refuses_what_cannot_serve_in_one_line() -> None:
    from costmodels.deployment import ServingPlan

    with pytest.raises(ConfigError, match="tp must divide num_attention_heads=32"):
        ServingPlan(tp=3).deploy(H100, LLAMA, "bf16", 512, 64)
    with pytest.raises(ConfigError, match=r"leaves .* tokens of KV cache on .*fewer than one request's"):
        ServingPlan(tp=1).deploy(H100, load_model("llama3_70b"), "bf16", 512, 64)
    with pytest.raises(ConfigError, match="max_num_seqs must be >= 1, got 0"):
        ServingPlan(max_num_seqs=0)
    with pytest.raises(ConfigError, match=r"offload_kv is a fraction in \[0, 1\], got 1.5"):
        ServingPlan(offload_kv=1.5)
    with pytest.raises(ConfigError, match=r"offload_weights=0\.5: the request simulator runs whole replicas"):
        ServingPlan(offload_weights=0.5).deploy(H100, LLAMA, "bf16", 512, 64)  # the static model's knob
    with pytest.raises(
        ConfigError, match=r"speculative_tokens=3 with pp=2: .*set pp=1 or speculative_tokens=0"
    ):
        ServingPlan(pp=2, speculative_tokens=3).deploy(H100, LLAMA, "bf16", 512, 64)
    with pytest.raises(ConfigError, match=r"on tp=1, pp=2 leaves .* tokens of KV cache per engine"):
        ServingPlan(pp=2, kv_cache_tokens=1000).deploy(H100, LLAMA, "bf16", 512, 64)


def test_the_calculator_prices_the_plans_job() -> None:
    """dse.calc mode=inference builds its job from the one ServingPlan: Llama-3-70B on tp 4 · pp 2,
    batch 8, the TensorRT-LLM preset, fp8 KV and 30 % of the weights in host memory; its report is
    inference_step of ServingPlan.job with the plan's degrees and offload, to the last bit."""
    from hydra import compose, initialize_config_dir

    from costmodels.deployment import ServingPlan
    from dse import calc
    from dse._app import CONF_DIR

    overrides = ["mode=inference", "model=llama3_70b", "num_devices=8", "parallelism.tp=4",
                 "parallelism.pp=2", "inference.batch_size=8", "inference.engine=tensorrt-llm",
                 "inference.kv_precision=fp8", "inference.offload_weights=0.3"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        rep = calc.report(compose(config_name="calc", overrides=overrides))
    plan = ServingPlan(tp=4, pp=2, launch="tensorrt-llm", kv_precision="fp8", offload_weights=0.3)
    model = load_model("llama3_70b")
    with jax.enable_x64(True):
        step = inference_step(H100, plan.job(model, "bf16", 2048, 256), 4.0, 2.0, 8.0, 0.3, 0.0)
    assert rep["tpot_s"] == float(step.tpot_s) and rep["ttft_s"] == float(step.ttft_s)
    assert plan.devices == rep["num_devices"] == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("engine.kv_admission=bogus", "engine.kv_admission must be one of on_demand, reserve, got 'bogus'"),
        ("engine.scheduler=x", "engine.scheduler must be one of continuous, static, got 'x'"),
        ("speculative.acceptance=2", "speculative.acceptance must be in [0, 1], got 2"),
        ("tp=0", "tp must be a positive integer, got 0"),
        ("workload.rate_per_s=-1", "workload.rate_per_s must be positive, got -1"),
        (
            "workload.arrival=weird",
            "workload.arrival must be one of poisson, gamma, closed, trace; got 'weird'",
        ),
        ("workload.input_len=0", "workload.input_len must be a positive integer, got 0"),
        ("workload.length_spread=1.5", "workload.length_spread must be in [0, 1), got 1.5"),
        ("workload.prefixes=-2", "workload.prefixes must be an integer >= 0, got -2"),
        ("disaggregation.prefill_replicas=-1", "disaggregation.prefill_replicas must be an integer >= 0"),
    ],
)
def test_a_bad_serve_setting_names_its_key(override: str, message: str) -> None:
    """Each setting is checked under its own key before anything is built: one line naming it."""
    from hydra import compose, initialize_config_dir

    from dse import serve

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("serve", [override, "workload.requests=10"])
    with pytest.raises(ConfigError) as err:
        serve.plan_from_config(cfg)
        serve.build_workload(cfg.workload)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pp=2", "speculative.tokens=2"], "speculative.tokens=2 with pp=2: the request simulator speculates "
         "on replicas of one pipeline stage; set pp=1 or speculative.tokens=0"),
        (["model=mamba_2_8b", "engine.prefix_caching=true"], "engine.prefix_caching=True: mamba keeps a "
         "recurrent state per sequence"),
        (["model=llama3_70b"], "1,152: raise tp or lower engine.max_num_batched_tokens"),
        (["disaggregation.prefill_replicas=1", "disaggregation.prefill_tp=3"],
         "disaggregation.prefill_tp must divide num_attention_heads=32"),
    ],
)  # fmt: skip
def test_a_deployment_dse_serve_cannot_simulate_names_the_users_keys(overrides, message) -> None:
    """What only the deployment can refuse (ServingPlan.deploy) is one line naming dse.serve's keys
    (``speculative.tokens``, ``engine.prefix_caching``, ...), not the plan's fields."""
    from hydra import compose, initialize_config_dir

    from dse import serve

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("serve", [*overrides, "workload.requests=10"])
    with pytest.raises(ConfigError) as err:
        serve.report(cfg)
    assert message in str(err.value)


# --- pipeline stages: a replica of pp stages runs pp engines ------------------------------------------


def test_a_pipeline_step_adds_one_send_per_stage_boundary() -> None:
    """Llama-3-70B on tp 4: a 512-token prompt through pp = 2 stages adds one send of its hidden
    states to the pp = 1 step, 512 · 8,192 · 2 B / 4 ranks = 2 MiB per rank between ranks 4 apart,
    inside the 8-GPU NVLink domain: 0.6 µs + 2,097,152 B / (450 GB/s · 0.83) = 6.215 µs; through
    pp = 4 stages, three such sends."""
    job = InferenceJob(load_model("llama3_70b"), 512, 129, precision="bf16", engine=ENGINES["tensorrt-llm"])
    one = step_time_s(H100, job, 4, chunks=[(0, 512)])
    send = 0.6e-6 + 512 * 8192 * 2 / 4 / (450e9 * 0.83)
    assert step_time_s(H100, job, 4, chunks=[(0, 512)], pp=2) - one == pytest.approx(send, rel=1e-9)
    assert step_time_s(H100, job, 4, chunks=[(0, 512)], pp=4) - one == pytest.approx(3 * send, rel=1e-9)


@pytest.fixture(scope="module")
def piped():
    return step_table(H100, JOB, 1, MAX_TOKENS, MAX_SEQS, MAX_CONTEXT, pp=2)


def test_a_pipeline_table_reads_the_pipeline_step_model(piped) -> None:
    """The pp = 2 table against the pp = 2 step model on 30 random mixes: within 0.1 %, as at pp = 1."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        d = int(rng.integers(1, MAX_SEQS - 1))
        contexts = [int(x) for x in rng.integers(1, MAX_CONTEXT - 64, d)]
        new = int(rng.integers(1, MAX_TOKENS - d))
        chunks = [(int(rng.integers(0, MAX_CONTEXT - new)), new)]
        direct = step_time_s(H100, JOB, 1, chunks, contexts, pp=2)
        tabled = piped.seconds(
            d + new, d + 1, d, float(sum(contexts)), [(float(c), float(n)) for c, n in chunks]
        )
        assert tabled == pytest.approx(direct, rel=1e-3)


def test_a_lone_request_through_a_pipeline_is_the_static_models_batch_of_one() -> None:
    """Requests 1,000 s apart on one replica of pp = 2 stages (Llama-3-8B, tp 1): TTFT is the static
    model's prefill pass of one request through both stages (one micro-batch: kernels, then one send)
    and TPOT its decode pass, to the table's error."""
    from costmodels.deployment import ServingPlan

    plan = ServingPlan(tp=1, pp=2, max_num_seqs=MAX_SEQS, max_num_batched_tokens=MAX_TOKENS)
    deployment = plan.deploy(H100, LLAMA, "bf16", 512, 129)
    sim = deployment.simulate(fixed(3, np.array([0.0, 1000.0, 2000.0]), 512, 129))
    static = InferenceJob(LLAMA, 512, 129, precision="bf16", engine=ENGINES["static-cuda-graphs"])
    with jax.enable_x64(True):
        one = inference_step(H100, static, 1.0, 2.0, 1.0)
    assert sim.first_token_s - sim.arrival_s == pytest.approx(float(one.ttft_s), rel=1e-3)
    assert (sim.finish_s - sim.first_token_s) / 128 == pytest.approx(float(one.tpot_s), rel=2e-3)


def test_a_pipeline_of_two_stages_doubles_a_replicas_throughput() -> None:
    """Llama-3-8B, tp 1, each engine with 64 sequences and 200,000 tokens of KV cache: a closed loop
    of 128 users on one replica of pp = 2 stages (two engines, 64 users each) against 64 users on
    pp = 1. Each engine's step is the pp = 1 step plus one send of its tokens (about 1 µs for a
    64-token decode step of some 15 ms), and the two engines run at once, so the pipeline completes
    2 · step(pp 1) / step(pp 2) ≈ 2 × (1 − 10⁻⁴) as many tokens per second: the same per GPU."""
    from costmodels.deployment import ServingPlan

    def throughput(pp: int) -> float:
        plan = ServingPlan(tp=1, pp=pp, max_num_seqs=64, max_num_batched_tokens=MAX_TOKENS,
                           kv_cache_tokens=200_000 * pp)  # fmt: skip
        deployment = plan.deploy(H100, LLAMA, "bf16", 32, 512)
        assert deployment.decode.replicas == pp and deployment.kv_blocks == 200_000 // 16
        n = 640 * pp
        sim = deployment.simulate(fixed(n, np.zeros(n), 32, 512, concurrency=64 * pp))
        return n * 512 / float(np.max(sim.finish_s))

    ratio = throughput(2) / throughput(1)
    assert 1.99 < ratio < 2.0


def test_a_pipeline_stage_holds_half_the_weights_and_half_of_each_tokens_cache() -> None:
    """Llama-3-8B bf16 on one replica of pp = 2 stages of one H100: the larger stage holds 16 layers of
    218,112,000 parameters, the final norm (4,096) and the LM head (128,256 · 4,096 = 525,336,576):
    4,015,132,672 of the model's 8,030,261,248, so each device keeps 2 · 4,015,128,576 B more for the
    cache than on pp = 1, where a token's cache over 16 layers · 2·8·128 elements · 2 B is 64 KiB:
    twice the pp = 1 capacity plus 8,030,257,152 B / 64 KiB = 122,532 tokens. The plan gives each of
    its two engines half (vLLM: num_gpu_blocks // pipeline_parallel_size)."""
    from costmodels.deployment import ServingPlan

    job = InferenceJob(LLAMA, 512, 129, "bf16")
    one = kv_capacity_tokens(H100, job, 1, 8192)
    two = kv_capacity_tokens(H100, job, 1, 8192, pp=2)
    assert abs(two - (2 * one + 122_532)) <= 2  # the floors of the two divisions
    deployment = ServingPlan(tp=1, pp=2, replicas=3).deploy(H100, LLAMA, "bf16", 512, 129)
    assert deployment.decode.replicas == 6 and deployment.plan.devices == 6
    assert deployment.kv_blocks == kv_capacity_tokens(H100, job, 1, 8192, 256, 2) // 2 // 16


# --- experts over ep single-device engines (data-parallel attention) ---------------------------------


QWEN_MOE = load_model("qwen3_30b_a3b")


def test_expert_parallel_devices_keep_half_the_experts_and_their_own_cache() -> None:
    """Qwen3-30B-A3B bf16 on ep = 2 H100s: each device keeps the dense weights and half of the
    48 layers · 128 experts · 3 · 2,048 · 768 = 28,991,029,248 expert parameters, so it frees
    28,991,029,248 B (half of the 2-byte experts) for its own engine's cache against one device
    holding them all, where a token's cache is 48 layers · 2·4·128 elements · 2 B = 98,304 B:
    294,912 tokens more per engine. The replica's two engines take the requests round robin."""
    from costmodels.deployment import ServingPlan

    one = ServingPlan(tp=1).deploy(H100, QWEN_MOE, "bf16", 1024, 128)
    spread = ServingPlan(ep=2).deploy(H100, QWEN_MOE, "bf16", 1024, 128)
    assert spread.kv_blocks * 16 - one.kv_blocks * 16 == 28_991_029_248 // 98_304 == 294_912
    assert spread.decode.replicas == 2 and spread.plan.devices == 2


def test_an_expert_parallel_step_adds_a_dispatch_and_a_combine_per_moe_layer() -> None:
    """64 tokens of Qwen3-30B-A3B on ep = 2: each of the 48 MoE layers sends the tokens' 8 routed
    copies of 2,048 bf16 values (2 MiB) all-to-all, out and back: pairwise over NVLink,
    6.6 µs library call + 0.6 µs + 1/2 · 2 MiB / (450 GB/s · 0.83) each; with tp = 1 and ep = 1
    there is no communication."""
    from costmodels.serving import step_comm_s

    job = InferenceJob(QWEN_MOE, 512, 129, precision="bf16")
    size = 64 * 8 * 2048 * 2
    a2a = 6.6e-6 + 0.6e-6 + 0.5 * size / (450e9 * 0.83)
    with jax.enable_x64(True):
        assert float(step_comm_s(H100, job, 1.0, 1.0, 64.0)) == 0.0
        assert float(step_comm_s(H100, job, 1.0, 1.0, 64.0, 2.0)) == pytest.approx(2 * 48 * a2a, rel=1e-9)


def test_an_expert_parallel_table_reads_its_step_model() -> None:
    """The ep = 4 table of Qwen3-30B-A3B against its step model on 20 random mixes: within 0.1 %."""
    job = InferenceJob(QWEN_MOE, 512, 129, precision="bf16", engine=ENGINES["tensorrt-llm"])
    table = step_table(H100, job, 1, 2048, 32, 2048, ep=4)
    rng = np.random.default_rng(2)
    for _ in range(20):
        d = int(rng.integers(1, 31))
        contexts = [int(x) for x in rng.integers(1, 2000, d)]
        new = int(rng.integers(1, 2048 - d))
        chunks = [(int(rng.integers(0, 2048 - new)), new)]
        direct = step_time_s(H100, job, 1, chunks, contexts, ep=4)
        spans = [(float(c), float(n)) for c, n in chunks]
        assert table.seconds(d + new, d + 1, d, float(sum(contexts)), spans) == pytest.approx(
            direct, rel=1e-3
        )


def test_spreading_the_experts_pays_off_once_the_steps_touch_most_experts() -> None:
    """Decode steps of Qwen3-30B-A3B (128 experts, top 8) on one device against ep = 2. With one
    sequence per engine a device reads the experts one token touches (8 of 128) alone, or half of
    those two engines' tokens touch, 128 · (1 − (1 − 8/128)²) / 2 = 7.75, on ep = 2: about as many
    bytes, plus 2 · 48 all-to-alls, so ep = 2 is slower. With 64 sequences per engine nearly every
    expert is touched (126 of 128 by 64 tokens): a device reads all of them alone and half on
    ep = 2, which then wins by far in these memory-bound steps."""
    job = InferenceJob(QWEN_MOE, 512, 129, precision="bf16", engine=ENGINES["tensorrt-llm"])

    def step(d: int, ep: int) -> float:
        return step_time_s(H100, job, 1, decode_contexts=[600] * d, ep=ep)

    assert step(1, 2) > step(1, 1)
    assert step(64, 2) < 0.75 * step(64, 1)


@pytest.mark.parametrize(
    ("plan", "model", "message"),
    [
        ({"ep": 2}, "llama3_8b", "ep=2: llama has no experts to spread; set ep=1"),
        ({"ep": 3}, "qwen3_30b_a3b", "ep=3 must divide the 128 experts of qwen3_moe"),
        ({"ep": 2, "tp": 2}, "qwen3_30b_a3b", "ep=2 with tp=2: the request simulator spreads experts"),
        ({"ep": 2, "speculative_tokens": 2}, "qwen3_30b_a3b", "ep=2 with speculative_tokens=2"),
        ({"ep": 2, "prefill_replicas": 1}, "qwen3_30b_a3b", "ep=2 with prefill_replicas=1"),
    ],
)
def test_what_expert_parallelism_cannot_serve_is_one_line(plan, model, message) -> None:
    from costmodels.deployment import ServingPlan

    with pytest.raises(ConfigError, match=message):
        ServingPlan(**plan).deploy(H100, load_model(model), "bf16", 512, 64)
