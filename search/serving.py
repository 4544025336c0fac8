"""The serving deployment problem: which tensor parallelism, engine budgets and prefill/decode split
of a pool of GPUs serves the most requests per second per GPU within the SLOs.

A design is ``tp``, ``pp`` (pipeline stages of a replica, which runs one engine per stage:
``costmodels/deployment.py``), ``ep`` (a MoE's experts spread over ep single-device engines with
data-parallel attention; colocated, tp = pp = 1, no speculation), ``max_num_seqs``,
``max_num_batched_tokens``, ``prefill_share`` (the share of the pool's replicas that only prefill;
0: colocated; pipelined designs are colocated, as a prefill replica runs one stage) and
``speculative_tokens`` (tokens proposed per decode step, by the setup's draft model or an n-gram
lookup, each accepted with the setup's probability; 0: no speculation; pipelined designs do not
speculate, as the simulator does not). A design is a mapping from each of ``KNOBS`` to its value;
a space may leave out the ``OPTIONAL`` knobs. Its figure of merit is DistServe's per-GPU goodput
(Zhong et al. 2024, Sec. 2): the highest Poisson request rate at which at least ``attainment`` of
the requests meet both the TTFT and the TPOT SLO, divided by the GPUs used. The rate is found by
doubling from ``START_RATE`` until the attainment drops below the goal, then bisecting
(``BISECTIONS`` halvings, so within 1/2^6 of the bracket), each probe one simulation
(``costmodels/requests.py``) of the same requests with their gaps scaled (common random numbers: the
attainment falls with the rate without sampling noise between probes). The step tables are built
once per (tp, pp, ep), covering every engine budget of the space.

A finite trace can hide an overload: at a rate far above what a deployment serves, its requests
arrive as one burst, and a burst small enough to drain within the SLOs meets them all. Such a rate
is never sustained: the queue of a longer trace grows without bound. So no probe goes above the
deployment's capacity, the request rate it completes when every request of the trace arrives at once
(``capacity``); a probe above it fails without a simulation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from costmodels.architectures import ModelSpec
from costmodels.deployment import ServingPlan
from costmodels.errors import ConfigError
from costmodels.hardware import Hardware
from costmodels.metrics import system_metrics
from costmodels.requests import SLO, Workload, serving_metrics
from costmodels.serving import StepTable
from search.base import Problem

SERVING_SIM_OBJECTIVES = ("neg_goodput_per_gpu", "cost_usd_per_mtoken")
KNOBS = ("tp", "pp", "ep", "max_num_seqs", "max_num_batched_tokens", "prefill_share", "speculative_tokens")
OPTIONAL = {"pp": 1, "ep": 1, "speculative_tokens": 0}  # a space that leaves one out searches this only
FRACTIONS = ("prefill_share",)  # every other knob is a whole number
START_RATE = 0.25  # requests/s per replica: the first probe
MAX_DOUBLINGS = 16
BISECTIONS = 6


@dataclass(frozen=True)
class ServingSetup:
    """What every design of a serving search shares: hardware, model and precision, the requests'
    lengths and unit-rate arrival gaps, the SLOs, the GPUs in the pool, the plan whose unsearched
    fields (launch, KV precision, scheduling, block size, prefix caching, the KV link, speculative
    acceptance) every design keeps, and the draft model that speculates (None: n-gram lookup)."""

    hw: Hardware
    spec: ModelSpec
    precision: str
    input_len: np.ndarray
    output_len: np.ndarray
    unit_arrivals: np.ndarray  # arrival times at 1 request/s; a rate r divides them by r
    slo: SLO
    attainment: float
    gpus: int
    plan: ServingPlan
    draft: ModelSpec | None = None

    def workload(self, rate: float) -> Workload:
        return Workload(self.unit_arrivals / rate, self.input_len, self.output_len)


def split(gpus: int, devices: int, share: float) -> tuple[int, int]:
    """(prefill replicas, decode replicas) of ``gpus // devices`` replicas, ``share`` of them
    prefill-only (at least one when share > 0); (0, 0) when no decode replica would remain."""
    replicas = gpus // devices
    prefill = max(1, round(share * replicas)) if share > 0 else 0
    return (prefill, replicas - prefill) if replicas - prefill >= 1 else (0, 0)


class _Designs:
    """Designs as plans, their step tables built once per (tp, pp, ep) (to the largest
    budgets of the space) and shared."""

    def __init__(self, setup: ServingSetup, space: Mapping[str, Sequence[float]]):
        self.s = setup
        self.tables: dict[tuple[Any, ...], StepTable] = {}
        self.cover = (int(max(space["max_num_batched_tokens"])), int(max(space["max_num_seqs"])))

    def plan(self, design: Mapping[str, float]) -> ServingPlan | None:
        """The design's plan; None when the pool leaves no decode replica."""
        d = knobs(design)
        prefill, decode = split(self.s.gpus, d["tp"] * d["pp"] * d["ep"], d["prefill_share"])
        if not decode:
            return None
        return replace(
            self.s.plan,
            tp=d["tp"],
            pp=d["pp"],
            ep=d["ep"],
            replicas=decode,
            prefill_replicas=prefill,
            prefill_tp=None,
            max_num_seqs=d["max_num_seqs"],
            max_num_batched_tokens=d["max_num_batched_tokens"],
            speculative_tokens=d["speculative_tokens"],
        )

    def deploy(self, plan: ServingPlan) -> Any:
        s = self.s
        inputs, outputs = int(np.max(s.input_len)), int(np.max(s.output_len))
        return plan.deploy(
            s.hw, s.spec, s.precision, inputs, outputs, draft=s.draft, tables=self.tables, cover=self.cover
        )

    def run(self, deployment: Any, rate: float) -> dict[str, float]:
        """The serving metrics of ``deployment`` under the setup's requests at ``rate`` per second."""
        s = self.s
        w = s.workload(rate)
        return serving_metrics(deployment.simulate(w), w, s.slo, deployment.kv_blocks)

    def evaluate(self, design: Mapping[str, float]) -> dict[str, float]:
        """The design's per-GPU goodput and its figures at the highest rate within the SLOs."""
        s, plan = self.s, self.plan(design)
        if plan is None:
            return _infeasible()
        try:
            deployment = self.deploy(plan)
        except ConfigError:  # tp does not divide the heads, or no room for one request's cache
            return _infeasible()

        def run(rate: float) -> dict[str, float]:
            return self.run(deployment, rate)

        ceiling = capacity(run)
        rate, metrics = max_rate(
            run, START_RATE * (plan.replicas + plan.prefill_replicas), s.attainment, ceiling
        )
        devices = plan.devices
        if rate <= 0:
            return _infeasible() | {"devices": float(devices)}
        system = system_metrics(devices, s.hw, metrics["throughput_tokens_per_s"], 0.0)
        return {
            "objective": -rate / devices,
            "feasible": True,
            "goodput_per_gpu": rate / devices,
            "max_rate_per_s": rate,
            "devices": float(devices),
            "prefill_replicas": float(plan.prefill_replicas),
            "decode_replicas": float(plan.replicas),
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


def knobs(design: Mapping[str, float]) -> dict[str, Any]:
    """The design's knobs as the plan takes them (whole numbers but the ``FRACTIONS``), the
    ``OPTIONAL`` ones it leaves out at their values."""
    full = OPTIONAL | dict(design)
    return {k: float(full[k]) if k in FRACTIONS else int(full[k]) for k in KNOBS}


def _infeasible() -> dict[str, float]:
    return dict.fromkeys(METRIC_NAMES, float("nan")) | {"feasible": False}


def capacity(run: Any) -> float:
    """Requests per second a deployment completes when the whole trace arrives at once (``run`` at an
    infinite rate): the most any rate can sustain (module docstring)."""
    return float(run(np.inf)["throughput_requests_per_s"])


def max_rate(run: Any, start: float, goal: float, ceiling: float = np.inf) -> tuple[float, dict[str, float]]:
    """The highest rate up to ``ceiling`` whose run meets ``goal`` attainment (module docstring) and
    that run's metrics; 0 when even ``start`` / 2^MAX_DOUBLINGS fails. A rate above ``ceiling``
    fails without a run."""

    def meets(m: dict[str, float]) -> bool:
        return bool(m) and m["slo_attainment"] >= goal

    def probe(rate: float) -> dict[str, float]:
        return run(rate) if rate <= ceiling else {}

    low, high, best = 0.0, None, {}
    rate = start
    for _ in range(MAX_DOUBLINGS):
        m = probe(rate)
        if meets(m):
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
        m = probe(mid)
        if meets(m):
            low, best = mid, m
        else:
            high = mid
    return low, best


def serving_problem(setup: ServingSetup, space: Mapping[str, Sequence[float]]) -> tuple[Problem, _Designs]:
    """The search problem over ``space`` (``KNOBS`` → choices) and its design evaluator."""
    designs = _Designs(setup, space)

    def cost_fn(points: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = {k: np.asarray(v) for k, v in points.items()}
        n = len(next(iter(columns.values())))
        rows = [designs.evaluate({k: v[i] for k, v in columns.items()}) for i in range(n)]
        return {k: np.array([r[k] for r in rows]) for k in (*METRIC_NAMES, "feasible")}

    def constraint(points: Mapping[str, np.ndarray]) -> np.ndarray:
        full = {k: np.asarray(points.get(k, v)) for k, v in OPTIONAL.items()} | dict(points)
        tp, pp, ep, share = (np.asarray(full[k]) for k in ("tp", "pp", "ep", "prefill_share"))
        devices = tp * pp * ep
        replicas = setup.gpus // devices
        whole = (setup.gpus % devices == 0) & (setup.spec.num_heads % tp == 0) & (replicas >= 1)
        plain = (share == 0) & (np.asarray(full["speculative_tokens"]) == 0)
        experts = setup.spec.moe.num_experts if setup.spec.moe is not None else 1
        spread = (ep == 1) | ((tp == 1) & (pp == 1) & (experts % ep == 0) & plain)  # module docstring
        return whole & ((share == 0) | (replicas >= 2)) & ((pp == 1) | plain) & spread

    def describe(point: dict[str, float]) -> dict[str, Any]:
        out = knobs(point)
        prefill, decode = split(setup.gpus, out["tp"] * out["pp"] * out["ep"], out["prefill_share"])
        return out | {"prefill": prefill, "decode": decode}

    return Problem(dict(space), cost_fn, constraint, describe), designs
