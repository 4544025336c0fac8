"""``python -m dse.serve``: one deployment serving a stream of requests, simulated request by request.

    python -m dse.serve model=llama3_8b hardware=h100_sxm tp=1 workload.rate_per_s=8
    python -m dse.serve workload.arrival=closed workload.concurrency=64 engine.chunked_prefill=false
    python -m dse.serve workload.arrival=trace workload.trace=experiments/serving/bursty_trace.jsonl

The step times come from the cost model (``costmodels/serving.py``: one table per deployment), the
scheduling from ``costmodels/requests.py``. It prints TTFT, TPOT, ITL and end-to-end latency
percentiles, throughput, goodput under the SLOs (per GPU too), KV-cache use, preemptions, cost and
energy per token, and what the figures assume; ``plots=<dir>`` also writes the engine's timeline,
the latency CDFs and one CSV row per request.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from costmodels.architectures import ModelSpec
from costmodels.deployment import ServingPlan
from costmodels.errors import ConfigError
from costmodels.hardware import PRECISIONS
from costmodels.inference import launch_assumption
from costmodels.metrics import system_metrics
from costmodels.requests import (
    ARRIVALS,
    KV_ADMISSIONS,
    PERCENTILES,
    PREEMPTIONS,
    PRIORITIES,
    SCHEDULERS,
    SLO,
    Simulation,
    Workload,
    lengths,
    serving_metrics,
    synthetic,
)
from dse._app import format_table, print_json, run_app
from dse.checks import check_results, positive_int
from dse.hardware import hardware_from_config
from dse.models import load_model
from dse.roofline import model_name
from dse.units import fmt_count

CONFIG_NAME = "serve"
TRACE_FIELDS = ("arrival_s", "input_len", "output_len")
PREFIX_FIELDS = ("prefix_id", "prefix_len")  # optional


def load_trace(path: str | Path) -> Workload:
    """A request trace: CSV with a header, or JSON Lines (``.jsonl``), each request with
    ``arrival_s``, ``input_len`` and ``output_len`` (and, for shared prefixes, ``prefix_id`` and
    ``prefix_len``), in arrival order. An error names the line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"workload.trace: no file {p}")
    rows: list[dict[str, Any]] = []
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}:{i}: not JSON ({exc.msg})") from None
        start = 1
    else:
        rows = list(csv.DictReader(text.splitlines()))
        start = 2
    if not rows:
        raise ConfigError(f"{p}: no requests")
    values = {k: [] for k in (*TRACE_FIELDS, *PREFIX_FIELDS)}
    prefixed = isinstance(rows[0], dict) and all(rows[0].get(k) not in (None, "") for k in PREFIX_FIELDS)
    for i, row in enumerate(rows, start):
        if not isinstance(row, dict) or any(k not in row for k in TRACE_FIELDS):
            raise ConfigError(f"{p}:{i}: a request needs {', '.join(TRACE_FIELDS)}")
        try:
            arrival, inp, out = float(row["arrival_s"]), float(row["input_len"]), float(row["output_len"])
        except (TypeError, ValueError):
            raise ConfigError(f"{p}:{i}: arrival_s, input_len and output_len must be numbers") from None
        if not (np.isfinite(arrival) and arrival >= 0) or inp < 1 or out < 1 or inp % 1 or out % 1:
            raise ConfigError(f"{p}:{i}: need arrival_s >= 0 and whole input_len, output_len >= 1")
        if values["arrival_s"] and arrival < values["arrival_s"][-1]:
            raise ConfigError(f"{p}:{i}: arrival_s goes back in time; sort the trace by arrival")
        values["arrival_s"].append(arrival)
        values["input_len"].append(int(inp))
        values["output_len"].append(int(out))
        if prefixed:
            try:
                pid, plen = int(row["prefix_id"]), int(row["prefix_len"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"{p}:{i}: prefix_id and prefix_len must be integers on every line"
                ) from None
            if not 0 <= plen <= inp:
                raise ConfigError(f"{p}:{i}: prefix_len must be between 0 and input_len")
            values["prefix_id"].append(pid)
            values["prefix_len"].append(plen)
    arrays = [np.array(values[k]) for k in TRACE_FIELDS]
    shared = [np.array(values[k]) for k in PREFIX_FIELDS] if prefixed else [None, None]
    return Workload(*arrays, 0, None, *shared)


def build_workload(w: DictConfig) -> Workload:
    """The workload the config describes (``workload.*``)."""
    if w.arrival == "trace":
        if not w.trace:
            raise ConfigError("workload.arrival=trace needs workload.trace=<file.csv or file.jsonl>")
        return load_trace(w.trace)
    if w.arrival not in (*ARRIVALS, "trace"):
        raise ConfigError(f"workload.arrival must be one of {', '.join(ARRIVALS)}, trace; got {w.arrival!r}")
    if w.arrival in ("poisson", "gamma") and not float(w.rate_per_s) > 0:
        raise ConfigError(f"workload.rate_per_s must be positive, got {w.rate_per_s}")
    if w.arrival == "gamma" and not float(w.cv) > 0:
        raise ConfigError(f"workload.cv must be positive, got {w.cv}")
    if w.arrival == "closed":
        positive_int(w.concurrency, "workload.concurrency")
    if not 0 <= float(w.length_spread) < 1:
        raise ConfigError(f"workload.length_spread must be in [0, 1), got {w.length_spread}")
    for key in ("input_len", "output_len"):
        positive_int(w[key], f"workload.{key}")
    for key in ("prefixes", "prefix_len"):
        positive_int(w[key], f"workload.{key}", minimum=0)
    n = positive_int(w.requests, "workload.requests")
    rng = np.random.default_rng(int(w.seed) + 1)  # lengths: a stream apart from the arrivals'
    spread = float(w.length_spread)
    inputs = lengths(rng, n, float(w.input_len), spread)
    outputs = lengths(rng, n, float(w.output_len), spread)
    return synthetic(
        str(w.arrival),
        n,
        float(w.rate_per_s),
        inputs,
        outputs,
        seed=int(w.seed),
        cv=float(w.cv),
        concurrency=int(w.concurrency) if w.arrival == "closed" else 0,
        prefixes=int(w.prefixes),
        prefix_len=int(w.prefix_len),
    )


ENGINE_CHOICES = (
    ("scheduler", SCHEDULERS),
    ("priority", PRIORITIES),
    ("kv_admission", KV_ADMISSIONS),
    ("preemption", PREEMPTIONS),
)


def check_engine_choices(engine: Any, prefix: str) -> None:
    """The engine settings that name a choice (:data:`ENGINE_CHOICES`; one left out is the first
    choice) are among their choices, else a ConfigError naming ``prefix`` + the key."""
    for key, allowed in ENGINE_CHOICES:
        value = engine.get(key, allowed[0])
        if value not in allowed:
            raise ConfigError(f"{prefix}{key} must be one of {', '.join(allowed)}, got {value!r}")


# the ServingPlan field each key of conf/serve.yaml sets: a refusal names the key (ServingPlan.keys)
_ENGINE_FIELDS = (
    "scheduler",
    "max_num_seqs",
    "max_num_batched_tokens",
    "chunked_prefill",
    "priority",
    "block_size",
    "kv_admission",
    "preemption",
    "prefix_caching",
    "kv_cache_tokens",
    "launch",
)
SERVE_KEYS = (
    *((f, f"engine.{f}") for f in _ENGINE_FIELDS),
    *((f"speculative_{f}", f"speculative.{f}") for f in ("tokens", "acceptance", "seed")),
    *(
        (f, f"disaggregation.{f}")
        for f in ("prefill_replicas", "prefill_tp", "across_nodes", "ideal_network")
    ),
)


def plan_from_config(cfg: DictConfig) -> ServingPlan:
    """The deployment the config describes (``tp``, ``pp``, ``replicas``, ``kv_precision``, ``engine.*``,
    ``speculative.*``, ``disaggregation.*``), each value checked under its own key."""
    e, sp, d = cfg.engine, cfg.speculative, cfg.disaggregation
    tokens = None if e.kv_cache_tokens is None else positive_int(e.kv_cache_tokens, "engine.kv_cache_tokens")
    check_engine_choices(e, "engine.")
    if not 0.0 <= float(sp.acceptance) <= 1.0:
        raise ConfigError(f"speculative.acceptance must be in [0, 1], got {sp.acceptance}")
    return ServingPlan(
        tp=positive_int(cfg.tp, "tp"),
        pp=positive_int(cfg.pp, "pp"),
        ep=positive_int(cfg.ep, "ep"),
        replicas=positive_int(cfg.replicas, "replicas"),
        launch=str(e.launch),
        kv_precision=cfg.kv_precision,
        scheduler=str(e.scheduler),
        max_num_seqs=positive_int(e.max_num_seqs, "engine.max_num_seqs"),
        max_num_batched_tokens=positive_int(e.max_num_batched_tokens, "engine.max_num_batched_tokens"),
        chunked_prefill=bool(e.chunked_prefill),
        priority=str(e.priority),
        block_size=positive_int(e.block_size, "engine.block_size"),
        kv_admission=str(e.kv_admission),
        preemption=str(e.preemption),
        prefix_caching=bool(e.prefix_caching),
        kv_cache_tokens=tokens,
        speculative_tokens=positive_int(sp.tokens, "speculative.tokens", minimum=0),
        speculative_acceptance=float(sp.acceptance),
        speculative_seed=int(sp.seed),
        prefill_replicas=positive_int(d.prefill_replicas, "disaggregation.prefill_replicas", minimum=0),
        prefill_tp=None if d.prefill_tp is None else positive_int(d.prefill_tp, "disaggregation.prefill_tp"),
        across_nodes=bool(d.across_nodes),
        ideal_network=bool(d.ideal_network),
        keys=SERVE_KEYS,
    )


def assumptions(cfg: DictConfig) -> list[str]:
    """What the figures assume, printed under them."""
    out = [
        "step times: the cost model's static-batch op times for each step's mix, read from tables "
        "(interpolated between grid points; tests/test_serving.py states the error)",
        "KV cache: every attention layer holds every token (a sliding window is not reclaimed); "
        + (
            "a request starts only when its whole sequence fits (reserve)"
            if cfg.engine.kv_admission == "reserve"
            else "blocks as tokens come, preempted sequences "
            + (
                "swapped to host memory and back over the host link (on demand, swap)"
                if cfg.engine.preemption == "swap"
                else "recomputed (on demand)"
            )
        ),
    ]
    d = cfg.disaggregation
    sp = cfg.speculative
    if sp.tokens:
        proposer = (
            f"the draft model {sp.draft_model}" if sp.draft_model else "an n-gram lookup (no model cost)"
        )
        out.append(
            f"speculative decoding: {sp.tokens} tokens proposed per step by {proposer}, each accepted with "
            f"probability {sp.acceptance} until the first rejection; ITL counts one gap per step's tokens"
        )
    if cfg.ep > 1:
        out.append(
            f"experts: each replica's {cfg.ep} devices are {cfg.ep} engines (data-parallel attention, as "
            f"vLLM's and SGLang's wide expert parallelism), each with its own requests, KV cache, the dense "
            f"weights and 1/{cfg.ep} of the experts; a step's experts serve the {cfg.ep} engines' tokens "
            "(alike steps, run together) and each MoE layer adds a dispatch and a combine all-to-all"
        )
    if cfg.pp > 1:
        out.append(
            f"pipeline: each replica's {cfg.pp} stages run {cfg.pp} engines (vLLM's virtual engines), each "
            f"with its own scheduler, budgets and 1/{cfg.pp} of the replica's KV blocks; an engine's step "
            "is its pass through every stage, and the engines' steps fill the stages in turn without "
            "slowing one another (exact while their batches are alike)"
        )
    engines = cfg.pp > 1 or cfg.ep > 1
    if cfg.replicas > 1 or d.prefill_replicas > 1 or engines:
        out.append("requests go to the " + ("engines" if engines else "replicas") + " round robin")
    if d.prefill_replicas:
        link = "the scale-out link" if d.across_nodes else "the scale-up link"
        link = "no time (ideal network)" if d.ideal_network else link
        out.append(
            f"disaggregated: {d.prefill_replicas} prefill replica(s) emit each first token, then the "
            f"prompt's KV cache moves to a decode replica over {link}; "
            "the timeline is the decode pool's"
        )
    return out


def report(cfg: DictConfig) -> dict[str, Any]:
    """The JSON-ready report of one simulated deployment."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    spec, hw = load_model(cfg.model), hardware_from_config(cfg.hardware)
    workload = build_workload(cfg.workload)
    plan = plan_from_config(cfg)
    draft = load_model(str(cfg.speculative.draft_model)) if cfg.speculative.draft_model is not None else None
    deployment = plan.deploy(
        hw,
        spec,
        cfg.precision,
        int(np.max(workload.input_len)),
        int(np.max(workload.output_len)),
        draft=draft,
    )
    scheduler = deployment.decode.scheduler
    kv_tokens = scheduler.kv_blocks * scheduler.block_size
    sim = deployment.simulate(workload)
    slo = SLO(float(cfg.slo.ttft_ms), float(cfg.slo.tpot_ms))
    metrics = serving_metrics(sim, workload, slo, scheduler.kv_blocks)
    devices = plan.devices
    metrics["goodput_per_gpu"] = metrics["goodput_requests_per_s"] / devices
    system = system_metrics(devices, hw, metrics["throughput_tokens_per_s"], 0.0)
    metrics |= {k: float(v) for k, v in system.items() if k != "memory_gib"}
    rep = {
        "model": model_name(cfg),
        "model_type": spec.model_type,
        "hardware": hw.name,
        "tp": plan.tp,
        "pp": plan.pp,
        "ep": plan.ep,
        "replicas": plan.replicas,
        "prefill_replicas": plan.prefill_replicas,
        "prefill_tp": plan.prefill_devices,
        "devices": devices,
        "precision": cfg.precision,
        "scheduler": {k: v for k, v in scheduler.__dict__.items() if k != "speculation"},
        "speculation": (
            None
            if scheduler.speculation is None
            else {
                "tokens": scheduler.speculation.tokens,
                "acceptance": scheduler.speculation.acceptance,
                "draft_model": cfg.speculative.draft_model,
            }
        ),
        "kv_cache_tokens": kv_tokens,
        "workload": {
            "arrival": str(cfg.workload.arrival),
            "requests": workload.size,
            "mean_input_len": float(np.mean(workload.input_len)),
            "mean_output_len": float(np.mean(workload.output_len)),
            "shared_prefixes": 0 if workload.prefix_id is None else len(set(workload.prefix_id.tolist())),
        },
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
        "metrics": metrics,
        "assumptions": [
            *assumptions(cfg),
            *state_assumption(spec, plan),
            launch_assumption(hw, deployment.job.engine),
        ],
    }
    check_results(rep["metrics"], f"dse.serve with {spec.model_type} on {hw.name}")
    if cfg.plots:
        rep["files"] = write_plots(Path(str(cfg.plots)), sim, workload, slo)
    return rep


def state_assumption(spec: ModelSpec, plan: ServingPlan) -> list[str]:
    """What a state-space model's serving assumes (nothing for a transformer)."""
    if spec.ssm is None:
        return []
    cache = "" if spec.attention_layers else "; no layer caches tokens, so the KV-cache use is of those slots"
    return [
        f"recurrent state: one slot per sequence in {spec.ssm_layers} state-space layers, max_num_seqs="
        f"{plan.max_num_seqs} slots reserved before the KV cache (as vLLM allocates them){cache}"
    ]


PREEMPTED = {
    "recompute": "sequences evicted and recomputed",
    "swap": "sequences swapped to host memory and back",
}


def render(rep: dict[str, Any]) -> str:
    """The report as text."""
    m, s, w = rep["metrics"], rep["scheduler"], rep["workload"]
    head = "\n".join(
        [
            f"{rep['model']} on {rep['replicas']} × {rep['tp'] * rep['pp'] * rep['ep']} {rep['hardware']} "
            + (
                f"(experts over ep={rep['ep']} devices per replica, one engine each)"
                if rep["ep"] > 1
                else f"(tp={rep['tp']} per replica)"
                if rep["pp"] == 1
                else f"(tp={rep['tp']} × pp={rep['pp']} stages per replica, {rep['pp']} engines each)"
            )
            + f", {rep['precision']}"
            + (
                f"; prompts on {rep['prefill_replicas']} more × {rep['prefill_tp']} (disaggregated prefill)"
                if rep["prefill_replicas"]
                else ""
            ),
            f"engine: {s['kind']} batching, {s['max_num_seqs']} sequences and {s['max_num_batched_tokens']} "
            f"tokens per step, chunked prefill {'on' if s['chunked_prefill'] else 'off'}, "
            f"{s['priority']} first; "
            f"KV cache {rep['kv_cache_tokens']:,} tokens per "
            f"{'replica' if rep['pp'] * rep['ep'] == 1 else 'engine'} "
            f"({s['kv_blocks']:,} blocks of {s['block_size']})",
            f"workload: {w['requests']:,} requests, {w['arrival']} arrivals, mean {w['mean_input_len']:.0f} "
            f"input + {w['mean_output_len']:.0f} output tokens; SLO: TTFT ≤ {rep['slo']['ttft_ms']:g} ms, "
            f"TPOT ≤ {rep['slo']['tpot_ms']:g} ms",
        ]
    )
    lat = [
        [name.upper(), *(f"{m[f'{name}_p{p}_ms']:.1f}" for p in PERCENTILES), f"{m[f'{name}_mean_ms']:.1f}"]
        for name in ("ttft", "tpot", "itl", "e2e")
    ]
    latency = format_table(["latency (ms)", *(f"p{p}" for p in PERCENTILES), "mean"], lat, align="lrrrr")
    rows = [
        ["throughput", f"{m['throughput_requests_per_s']:.2f} req/s", "requests per second of the run"],
        ["output tokens/s", fmt_count(m["throughput_tokens_per_s"]), "all replicas"],
        ["goodput", f"{m['goodput_requests_per_s']:.2f} req/s", "requests meeting both SLOs per second"],
        ["goodput per GPU", f"{m['goodput_per_gpu']:.3f} req/s", f"goodput / {rep['devices']} device(s)"],
        ["SLO attainment", f"{m['slo_attainment'] * 100:.1f} %", "share of requests meeting both SLOs"],
        ["KV cache use", f"{m['kv_utilisation_mean']:.1%} mean, {m['kv_utilisation_peak']:.1%} peak",
         ("replica 0" if rep["pp"] * rep["ep"] == 1 else "engine 0") + ", time-weighted"],
        ["preemptions", f"{m['preemptions']:.0f}", PREEMPTED[s["preemption"]]],
        ["prefix cache hits", f"{m['prefix_hit_rate']:.1%}", "prompt tokens read from the prefix cache"],
        ["cost", f"${m['cost_usd_per_mtoken']:.3f} per M tokens", "device-hours at the preset's price"],
        ["energy", f"{m['energy_j_per_token']:.3f} J per token", "devices at rated power"],
    ]  # fmt: skip
    summary = format_table(["serving", "value", "definition"], rows, align="lrl")
    notes = "\n".join(f"assumes: {a}" for a in rep["assumptions"])
    files = [f"files: {', '.join(rep['files'])}"] if rep.get("files") else []
    return "\n\n".join([head, latency, summary, notes, *files])


def write_plots(out: Path, sim: Simulation, workload: Workload, slo: SLO) -> list[str]:
    """timeline.png (running and waiting sequences, KV blocks in use over time), latency_cdf.png
    (TTFT, TPOT and end-to-end CDFs with the SLOs) and requests.csv (one row per request)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    tl = sim.timeline
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    for ax, key, label in zip(
        axes,
        ("running", "waiting", "kv_blocks"),
        ("running sequences", "waiting requests", "KV blocks in use"),
        strict=True,
    ):
        ax.step(tl["start_s"], tl[key], where="post", lw=0.8)
        ax.set_ylabel(label)
    axes[-1].set_xlabel("time (s), replica 0")
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=120)
    plt.close(fig)
    ttft = (sim.first_token_s - sim.arrival_s) * 1e3
    e2e = (sim.finish_s - sim.arrival_s) * 1e3
    many = workload.output_len > 1
    tpot = (e2e[many] - ttft[many]) / (workload.output_len[many] - 1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, values, name, limit in (
        (axes[0], ttft, "TTFT (ms)", slo.ttft_ms),
        (axes[1], tpot, "TPOT (ms)", slo.tpot_ms),
        (axes[2], e2e, "end-to-end (ms)", None),
    ):
        xs = np.sort(values)
        ax.plot(xs, np.arange(1, len(xs) + 1) / max(len(xs), 1))
        if limit is not None and np.isfinite(limit):
            ax.axvline(limit, color="tab:red", ls="--", lw=1, label="SLO")
            ax.legend(loc="lower right")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests")
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=120)
    plt.close(fig)
    with (out / "requests.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arrival_s", "input_len", "output_len", "ttft_s", "e2e_s", "preemptions"])
        for i in range(workload.size):
            writer.writerow(
                [
                    f"{sim.arrival_s[i]:.6f}",
                    int(workload.input_len[i]),
                    int(workload.output_len[i]),
                    f"{ttft[i] / 1e3:.6f}",
                    f"{e2e[i] / 1e3:.6f}",
                    int(sim.preemptions[i]),
                ]
            )
    return [str(out / n) for n in ("timeline.png", "latency_cdf.png", "requests.csv")]


def task(cfg: DictConfig) -> None:
    if cfg.format not in ("table", "json"):
        raise ConfigError(f"format must be 'table' or 'json', got {cfg.format!r}")
    rep = report(cfg)
    if cfg.format == "json":
        print_json(rep)
    else:
        print(render(rep))


def main() -> None:
    run_app(task, CONFIG_NAME)


if __name__ == "__main__":
    main()
