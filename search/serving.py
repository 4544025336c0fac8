"""The serving deployment problem: which tensor parallelism, engine budgets and prefill/decode split
of a pool of GPUs serves the most requests per second per GPU within the SLOs.

A design is ``tp``, ``max_num_seqs``, ``max_num_batched_tokens`` and ``prefill_share`` (the share of
the pool's replicas that only prefill; 0: colocated). Its figure of merit is DistServe's per-GPU
goodput (Zhong et al. 2024, Sec. 2): the highest Poisson request rate at which at least
``attainment`` of the requests meet both the TTFT and the TPOT SLO, divided by the GPUs used. The
rate is found by doubling from ``START_RATE`` until the attainment drops below the goal, then
bisecting (``BISECTIONS`` halvings, so within 1/2^6 of the bracket), each probe one simulation
(``costmodels/requests.py``) of the same requests with their gaps scaled (common random numbers: the
attainment falls with the rate without sampling noise between probes). The step tables are built
once per tensor-parallel degree, covering every engine budget of the space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from costmodels.hardware import Hardware
from costmodels.inference import InferenceJob
from costmodels.metrics import system_metrics
from costmodels.requests import (
    SLO,
    Pool,
    Scheduler,
    Workload,
    serving_metrics,
    simulate_disaggregated,
    simulate_replicas,
)
from costmodels.serving import StepTable, kv_capacity_tokens, kv_transfer_s, step_table
from search.base import Problem

SERVING_SIM_OBJECTIVES = ("neg_goodput_per_gpu", "cost_usd_per_mtoken")
KNOBS = ("tp", "max_num_seqs", "max_num_batched_tokens", "prefill_share")
START_RATE = 0.25  # requests/s per replica: the first probe
MAX_DOUBLINGS = 16
BISECTIONS = 6


@dataclass(frozen=True)
class ServingSetup:
    """What every design of a serving search shares: hardware, model job (precision, engine
    launch), the requests' lengths and unit-rate arrival gaps, the SLOs, the GPUs in the pool and
    the engine settings that are not searched."""

    hw: Hardware
    job: InferenceJob
    input_len: np.ndarray
    output_len: np.ndarray
    unit_arrivals: np.ndarray  # arrival times at 1 request/s; a rate r divides them by r
    slo: SLO
    attainment: float
    gpus: int
    scheduler: Scheduler  # kind, chunked prefill, priority, block size, prefix caching
    across_nodes: bool = True

    def workload(self, rate: float) -> Workload:
        return Workload(self.unit_arrivals / rate, self.input_len, self.output_len)


def split(gpus: int, tp: int, share: float) -> tuple[int, int]:
    """(prefill replicas, decode replicas) of ``gpus // tp`` replicas, ``share`` of them prefill-only
    (at least one when share > 0); (0, 0) when no decode replica would remain."""
    replicas = gpus // tp
    prefill = max(1, round(share * replicas)) if share > 0 else 0
    return (prefill, replicas - prefill) if replicas - prefill >= 1 else (0, 0)


class _Designs:
    """Tables and KV capacities, built once per tensor-parallel degree (and budget)."""

    def __init__(self, setup: ServingSetup, space: Mapping[str, Sequence[float]]):
        self.s, self.space = setup, space
        self.tables: dict[int, StepTable] = {}
        self.kv: dict[tuple[int, int], int] = {}

    def table(self, tp: int) -> StepTable:
        if tp not in self.tables:
            longest = int(np.max(self.s.input_len + self.s.output_len))
            self.tables[tp] = step_table(
                self.s.hw,
                self.s.job,
                tp,
                int(max(self.space["max_num_batched_tokens"])),
                int(max(self.space["max_num_seqs"])),
                longest,
            )
        return self.tables[tp]

    def kv_blocks(self, tp: int, budget: int) -> int:
        if (tp, budget) not in self.kv:
            self.kv[(tp, budget)] = (
                kv_capacity_tokens(self.s.hw, self.s.job, tp, budget) // self.s.scheduler.block_size
            )
        return self.kv[(tp, budget)]

    def evaluate(self, tp: int, seqs: int, budget: int, share: float) -> dict[str, float]:
        """The design's per-GPU goodput and its figures at the highest rate within the SLOs."""
        s, spec = self.s, self.s.job.spec
        prefill, decode = split(s.gpus, tp, share)
        longest = int(np.max(s.input_len + s.output_len))
        blocks = self.kv_blocks(tp, budget) if spec.num_heads % tp == 0 and decode else 0
        if blocks * s.scheduler.block_size < longest:  # does not fit, or no decode replica
            return _infeasible()
        sched = replace(s.scheduler, max_num_seqs=seqs, max_num_batched_tokens=budget, kv_blocks=blocks)
        pool = Pool(self.table(tp), sched, decode)
        transfer = kv_transfer_s(s.hw, s.job, tp, s.input_len, s.across_nodes) if prefill else None

        def run(rate: float) -> dict[str, float]:
            w = s.workload(rate)
            if prefill:
                sim = simulate_disaggregated(w, Pool(pool.table, sched, prefill), pool, transfer)
            else:
                sim = simulate_replicas(w, pool.table, sched, decode)
            return serving_metrics(sim, w, s.slo, blocks)

        rate, metrics = max_rate(run, START_RATE * (prefill + decode), s.attainment)
        devices = tp * (prefill + decode)
        if rate <= 0:
            return _infeasible() | {"devices": float(devices)}
        system = system_metrics(devices, s.hw, metrics["throughput_tokens_per_s"], 0.0)
        return {
            "objective": -rate / devices,
            "feasible": True,
            "goodput_per_gpu": rate / devices,
            "max_rate_per_s": rate,
            "devices": float(devices),
            "prefill_replicas": float(prefill),
            "decode_replicas": float(decode),
            "slo_attainment": metrics["slo_attainment"],
            **{f"{m}_p{q}_ms": metrics[f"{m}_p{q}_ms"] for m in ("ttft", "tpot") for q in (90, 99)},
            "throughput_tokens_per_s": metrics["throughput_tokens_per_s"],
            **{k: float(v) for k, v in system.items() if k != "memory_gib"},
        }


METRIC_NAMES = (
    "objective",
    "goodput_per_gpu",
    "max_rate_per_s",
    "devices",
    "prefill_replicas",
    "decode_replicas",
    "slo_attainment",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "tpot_p90_ms",
    "tpot_p99_ms",
    "throughput_tokens_per_s",
    "power_w",
    "cost_usd_per_mtoken",
    "energy_j_per_token",
)


def _infeasible() -> dict[str, float]:
    return dict.fromkeys(METRIC_NAMES, float("nan")) | {"feasible": False}


def max_rate(run: Any, start: float, goal: float) -> tuple[float, dict[str, float]]:
    """The highest rate whose run meets ``goal`` attainment (module docstring) and that run's
    metrics; 0 when even ``start`` / 2^MAX_DOUBLINGS fails."""
    low, high, best = 0.0, None, {}
    rate = start
    for _ in range(MAX_DOUBLINGS):
        m = run(rate)
        if m["slo_attainment"] >= goal:
            low, best = rate, m
            if high is not None:
                break
            rate *= 2.0
        else:
            high = rate
            if low:
                break
            rate /= 2.0
    if not low:
        return 0.0, {}
    high = high if high is not None else low * 2.0
    for _ in range(BISECTIONS):
        mid = 0.5 * (low + high)
        m = run(mid)
        if m["slo_attainment"] >= goal:
            low, best = mid, m
        else:
            high = mid
    return low, best


def serving_problem(setup: ServingSetup, space: Mapping[str, Sequence[float]]) -> tuple[Problem, _Designs]:
    """The search problem over ``space`` (``KNOBS`` → choices) and its design evaluator."""
    designs = _Designs(setup, space)

    def cost_fn(points: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            designs.evaluate(int(tp), int(seqs), int(budget), float(share))
            for tp, seqs, budget, share in zip(*(np.asarray(points[k]) for k in KNOBS), strict=True)
        ]
        return {k: np.array([r[k] for r in rows]) for k in (*METRIC_NAMES, "feasible")}

    def constraint(points: Mapping[str, np.ndarray]) -> np.ndarray:
        tp, share = np.asarray(points["tp"]), np.asarray(points["prefill_share"])
        replicas = setup.gpus // tp
        whole = (setup.gpus % tp == 0) & (setup.job.spec.num_heads % tp == 0) & (replicas >= 1)
        return whole & ((share == 0) | (replicas >= 2))

    def describe(point: dict[str, float]) -> dict[str, Any]:
        out: dict[str, Any] = {k: int(point[k]) for k in KNOBS[:3]}
        prefill, decode = split(setup.gpus, out["tp"], float(point["prefill_share"]))
        return out | {"prefill_share": float(point["prefill_share"]), "prefill": prefill, "decode": decode}

    return Problem(dict(space), cost_fn, constraint, describe), designs
