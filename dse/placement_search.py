"""The ``placement`` experiment: where each rank of a training job runs (``search.driver: cpsat``).

    python -m dse.search +experiment=placement
    python -m dse.search +experiment=placement topology=dgx_h100_4k num_devices=4096
    python -m dse.search +experiment=placement topology.unavailable_fraction=0.1 placement.fit_dp=true

Wiring only: ``topology:`` (a preset of ``conf/topology/``) → :class:`search.topology.Topology`;
``model``, ``workload`` and ``placement:`` (the mapping) → :class:`search.placement.Job` with the bytes
each group moves per step (:func:`bytes_per_step`); then rank order, the tree heuristic and CP-SAT,
each scored by :func:`search.placement.evaluate`, logged to MLflow with pictures of the winner.

Traffic per rank per step, S_t, the buffer of the type's collective: what the training model's
step time prices (``costmodels.training.comm_bytes``: the same message sizes and counts, for the
plan the placement options make, :func:`placement_plan`, whose memory the report gives too) divided
by the bus factor placement applies to the type (``search.placement.bus_factor``), so the bytes on
the wires are the training model's: TP all-reduces per block and pass, pipeline sends per chunk
boundary, ring-attention K,V chunks or Ulysses all-to-alls, MoE dispatch and combine, gradient
reduction (all-reduce, or reduce-scatter + all-gather with ZeRO ≥ 1, ZeRO-3's gathers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from costmodels.architectures import ModelSpec
from costmodels.errors import ConfigError
from costmodels.parallel import Plan, make_plan
from costmodels.training import TrainingJob, comm_bytes, group_collectives
from dse._app import CONF_DIR, format_table, phase_printer
from dse.checks import flag, plan_options, positive_int, read_json
from dse.tracking import JobRun
from dse.units import fmt_bytes, fmt_cell, fmt_count, fmt_time
from search.placement import (
    COLLECTIVE,
    COLLECTIVE_KINDS,
    GROUP_TYPES,
    Job,
    Placement,
    bus_factor,
    cp_sat,
    evaluate,
    rank_order,
    tree_heuristic,
)
from search.topology import (
    Topology,
    from_instance_json,
    gpu_cluster,
    mark_unavailable,
    mesh2d,
    shuffle_hosts,
    torus3d,
)

BUILDERS = {"gpu_cluster": gpu_cluster, "torus3d": torus3d, "mesh2d": mesh2d}
SOLVERS = ("rank_order", "tree_heuristic", "cp_sat")
TOPOLOGY_KEYS = ("kind", "unavailable_fraction", "seed", "path", "name", "shuffle_hosts")


# --------------------------------------------------------------------------------------------
# Topology


def _plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    return dict(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)


def resolve_path(path: str) -> Path:
    """A file path as given (absolute, or from the launch directory), else under ``conf/topology/``."""
    p = Path(path).expanduser()
    for candidate in (p, CONF_DIR / "topology" / p):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"topology file {path} does not exist")


def read_instance_json(path: str) -> dict[str, Any]:
    return read_json(resolve_path(path), "topology file")


def build_topology(tcfg: Mapping[str, Any] | DictConfig) -> Topology:
    """The topology a preset describes: ``kind`` names the builder, the other keys are its arguments;
    ``unavailable_fraction`` of the scale-up domains (whole nodes; single dies on a torus or mesh)
    are marked unavailable, drawn with ``seed``; ``shuffle_hosts`` lists the domains in random order
    (seed + 1), the order rank-order placement follows."""
    spec = _plain(tcfg)
    kind, args = spec.get("kind"), {k: v for k, v in spec.items() if k not in TOPOLOGY_KEYS}
    if kind == "instance_json":
        if not spec.get("path"):
            raise ConfigError("topology kind instance_json needs a path: topology.path=file.json")
        topo = from_instance_json(read_instance_json(str(spec["path"])), **args)
    elif kind in BUILDERS:
        try:
            topo = BUILDERS[kind](**args)
        except TypeError as exc:
            raise ConfigError(f"topology {kind}: {exc}") from None
    else:
        raise ConfigError(
            f"topology.kind must be one of {', '.join([*BUILDERS, 'instance_json'])}, got {kind!r}"
        )
    seed = int(spec.get("seed", 0))
    topo = drop_random(topo, float(spec.get("unavailable_fraction", 0.0) or 0.0), seed)
    return shuffle_hosts(topo, seed + 1) if spec.get("shuffle_hosts") else topo


def drop_random(topo: Topology, fraction: float, seed: int) -> Topology:
    """``round(fraction · units)`` random units unavailable: scale-up domains when there are several,
    else single devices (a torus or a wafer is one domain)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"unavailable_fraction must be in [0, 1), got {fraction}")
    units = list(topo.domains) if len(topo.domains) > 1 else list(topo.devices)
    k = round(fraction * len(units))
    if k == 0:
        return topo
    picked = np.random.default_rng(seed).choice(len(units), size=k, replace=False)
    return mark_unavailable(topo, [units[i] for i in sorted(picked)])


# --------------------------------------------------------------------------------------------
# Job and its traffic


def placement_plan(p: Mapping[str, Any], w: Mapping[str, Any]) -> Plan:
    """The training plan of placement options ``p`` (every plan option, :func:`plan_options`; the
    degrees as :func:`degrees` resolved them) and workload ``w``: the one plan the job's traffic,
    its collectives and its memory come from. Errors name ``placement.<key>``."""
    options = plan_options({k: v for k, v in p.items() if v is not None or k == "dp"}, "placement.")
    return make_plan(**options, global_batch=int(w["global_batch"]))


def bytes_per_step(spec: ModelSpec, w: Mapping[str, Any], p: Mapping[str, Any]) -> dict[str, float]:
    """S_t per group type: the bytes the training model's collectives send per rank per step
    (``costmodels.training.comm_bytes`` for :func:`placement_plan`'s plan), each divided by the bus
    factor placement applies to its type over its group (``search.placement.bus_factor``), so that
    the wire bytes placement prices are the training model's. The dense gradients reduce over
    Megatron's dp, which spans placement's ep and dp axes; they are priced on its dp axis."""
    plan = placement_plan(p, w)
    sent = comm_bytes(TrainingJob(spec, int(w["seq_len"]), str(w.get("precision") or "bf16")), plan)
    degrees_ = {t: int(getattr(plan, t)) for t in ("tp", "pp", "dp", "cp", "ep")}
    shape = placement_job(degrees_, {}, ("tp", "cp", "ep", "dp", "pp"), group_collectives(plan))  # its groups
    out = {}
    for t, volume in sent.items():
        factor = bus_factor(shape.collective(t), shape.degree(t))
        if factor > 0 and float(volume) > 0:
            out[t] = float(volume) / factor
    return out


def _degree(value: Any, key: str) -> int:
    """A parallel degree: a positive integer (``null`` means 1), else a ConfigError naming ``key``."""
    if value is None:
        return 1
    if isinstance(value, float) and value.is_integer():  # 8.0 from a YAML file is 8
        value = int(value)
    return positive_int(value, key)


def group_order(value: Any, key: str) -> tuple[str, ...]:
    """The nesting order of the parallel groups (innermost first): a permutation of the five types
    as a list; null is Megatron's ``tp, cp, ep, dp, pp``. Else a ConfigError naming ``key``."""
    if value is None:
        return ("tp", "cp", "ep", "dp", "pp")
    items = list(value) if isinstance(value, list | tuple | ListConfig) else None
    if items is None or sorted(map(str, items)) != sorted(("tp", "cp", "ep", "dp", "pp")):
        raise ConfigError(f"{key} must list tp, cp, ep, dp and pp once each (innermost first), got {value!r}")
    return tuple(map(str, items))


def traffic(value: Any, key: str) -> dict[str, float]:
    """Bytes per rank per step by group type: finite numbers >= 0 keyed by tp, cp, ep, dp or pp."""
    items = dict(value) if isinstance(value, Mapping) else None
    types = ("tp", "cp", "ep", "dp", "pp")
    if items is None or not all(k in types for k in items):
        raise ConfigError(f"{key} must map group types ({', '.join(types)}) to bytes, got {value!r}")
    for k, v in items.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{key}.{k} must be a finite number of bytes >= 0, got {v!r}")
    return {k: float(v) for k, v in items.items()}


def collectives_of(value: Any, key: str) -> dict[str, str]:
    """The collective per group type of a placement report's job (``Job.as_dict``); a report written
    before jobs carried them has ``cp_a2a`` instead, and none has the default plan's."""
    whole = isinstance(value, Mapping) and sorted(value) == sorted(GROUP_TYPES)
    if whole and all(v in COLLECTIVE_KINDS for v in value.values()):
        return {str(k): str(v) for k, v in value.items()}
    raise ConfigError(f"{key} must map {', '.join(GROUP_TYPES)} to one of {', '.join(COLLECTIVE_KINDS)}")


def degrees(p: Mapping[str, Any], n_devices: int, prefix: str = "placement.") -> dict[str, int]:
    """tp, pp, cp, ep and dp as ints, checked; errors name ``prefix`` + the key. dp is Megatron's
    data-parallel degree, the expert-parallel ranks included (as in ``dse.calc``; ``null``:
    n_devices / (tp·pp·cp)), and ep must divide it."""
    d = {k: _degree(p.get(k), prefix + k) for k in ("tp", "pp", "cp", "ep")}
    rest = d["tp"] * d["pp"] * d["cp"]
    if p.get("dp") is None:
        if n_devices % rest:
            raise ConfigError(f"num_devices={n_devices} is not a multiple of tp·pp·cp = {rest}")
        d["dp"] = n_devices // rest
    else:
        d["dp"] = _degree(p["dp"], prefix + "dp")
    if d["dp"] % d["ep"]:
        raise ConfigError(
            f"{prefix}ep = {d['ep']} does not divide {prefix}dp = {d['dp']} (experts are sharded over "
            "data-parallel ranks): pick a divisor"
        )
    return d


def placement_job(
    d: Mapping[str, int],
    bytes_per_step_: Mapping[str, float],
    order: tuple[str, ...],
    collectives: Mapping[str, str] = COLLECTIVE,
) -> Job:
    """The placement :class:`Job` of Megatron degrees ``d``: its dp axis is the replicas outside the
    expert groups, dp / ep; ``collectives``: each group type's, from the training plan
    (``costmodels.training.group_collectives``)."""
    degrees_ = dict(d) | {"dp": d["dp"] // d["ep"]}
    return Job(**degrees_, bytes_per_step=bytes_per_step_, order=order, collectives=collectives)


def fit_dp(d: dict[str, int], topo: Topology) -> dict[str, int]:
    """The largest dp ≤ d['dp'], a multiple of ep, whose job fits the available devices with TP groups
    inside domains."""
    avail = np.bincount(topo.domain_of, topo.available, minlength=len(topo.domains)).astype(int)
    slots = int((avail // d["tp"]).sum()) * d["tp"]
    per_replica = d["tp"] * d["pp"] * d["cp"] * d["ep"]
    return d | {"dp": d["ep"] * max(1, min(d["dp"] // d["ep"], slots // per_replica))}


def job_from_config(cfg: DictConfig, topo: Topology, spec: ModelSpec) -> Job:
    """The placement job of ``cfg.placement`` (degrees, order) with traffic derived from the model."""
    p = _plain(cfg.placement)
    d = degrees(p, int(cfg.num_devices))
    if p.get("fit_dp"):
        d = fit_dp(d, topo)
    order = group_order(p.get("order"), "placement.order")
    w = _plain(cfg.workload)
    s = bytes_per_step(spec, w, p | d)
    return placement_job(d, s, order, group_collectives(placement_plan(p | d, w)))


def flag_option(value: Any, key: str) -> bool:
    """A true/false option (null: false), else a ConfigError naming ``key``."""
    return False if value is None else flag(value, key)


# --------------------------------------------------------------------------------------------
# Solve, score, report


def solve_all(
    job: Job, topo: Topology, s: Mapping[str, Any], phase: Callable[[str], None] | None = None
) -> dict[str, tuple[Placement, dict]]:
    """Rank order, tree heuristic and CP-SAT, each with its evaluator report (timed); ``phase``
    is told as each starts and ends, and of CP-SAT's improving solutions with their gap."""
    keep = bool(s.get("keep_tp_in_domain", True))
    objective = str(s.get("objective", "time"))
    runs = {
        "rank_order": lambda: rank_order(job, topo, objective),
        "tree_heuristic": lambda: tree_heuristic(job, topo, objective, keep_tp_in_domain=keep),
        "cp_sat": lambda: cp_sat(
            job,
            topo,
            time_limit_s=float(s.get("time_limit_s", 60)),
            workers=int(s.get("workers", 8)),
            objective=objective,
            keep_tp_in_domain=keep,
            seed=int(s.get("seed", 0)),
            method=str(s.get("method", "auto")),
            on_solution=phase,
        ),
    }
    out = {}
    say = phase or (lambda _message: None)
    for name, solve in runs.items():
        limit = f", up to {float(s.get('time_limit_s', 60)):g} s" if name == "cp_sat" else ""
        label = {"cp_sat": "CP-SAT"}.get(name, name.replace("_", " "))
        say(f"{label} on {job.n_ranks:,} ranks{limit}")
        t0 = time.perf_counter()
        placement = solve()
        elapsed = time.perf_counter() - t0
        out[name] = (placement, evaluate(job, topo, placement) | {"solve_time_s": elapsed})
        say(f"{label}: communication {out[name][1]['comm_time_s']:.3g} s per step")
    return out


def solver_row(placement: Placement, ev: dict) -> dict[str, Any]:
    """The JSON-ready figures of one solver (the evaluator's, its status and solve time)."""
    dp_pp = sum(ev["by_type"].get(t, {}).get("time_s", 0.0) for t in ("dp", "pp"))
    bound = placement.bound
    gap = (
        max(placement.cost - bound, 0.0) / placement.cost
        if bound is not None and placement.cost > 0
        else None
    )
    return {
        "method": placement.method,
        "status": placement.status,
        "objective_value": placement.cost,
        "lower_bound": bound,
        "gap": gap,
        "cost_sum": ev["cost_sum"],
        "cost_max": ev["cost_max"],
        "comm_time_s": ev["comm_time_s"],
        "dp_pp_comm_time_s": dp_pp,
        "max_link": list(ev["max_link"]) if ev["max_link"] else None,
        "max_link_bytes": ev["max_link_bytes"],
        "max_link_busy_s": ev["max_link_busy_s"],
        "tp_in_domain": bool(ev["tp_in_domain"]),
        "bytes_by_tier": ev["bytes_by_tier"],
        "by_type": ev["by_type"],
        "solve_time_s": ev["solve_time_s"],
    }


def placement_map(topo: Topology, placement: Placement | tuple[int, ...]) -> dict[str, str]:
    """rank → device id (JSON keys are strings)."""
    devices = placement.devices if isinstance(placement, Placement) else placement
    return {str(r): topo.devices[d] for r, d in enumerate(devices)}


def report(
    job: Job, topo: Topology, results: dict[str, tuple[Placement, dict]], objective: str
) -> dict[str, Any]:
    """The JSON-ready report: topology, job, per-solver figures, CP-SAT's gains and its placement."""
    rows = {name: solver_row(p, ev) for name, (p, ev) in results.items()}
    best, base = rows["cp_sat"], rows["rank_order"]
    gain = {
        k: 1.0 - best[k] / base[k] if base[k] > 0 else 0.0
        for k in ("cost_sum", "comm_time_s", "dp_pp_comm_time_s")
    }
    return {
        "topology": {
            "name": topo.name,
            "devices": len(topo.devices),
            "available": int(topo.available.sum()),
            "domains": len(topo.domains),
        },
        "job": job.as_dict(),
        "objective": objective,
        "solvers": rows,
        "reduction_vs_rank_order": gain,
        "placement": placement_map(topo, results["cp_sat"][0]),
    }


def run(cfg: DictConfig, run_: JobRun) -> dict[str, Any]:
    """Build topology and job from ``cfg``, solve with all three, log, and return the report."""
    from dse.models import load_model

    if cfg.get("topology") is None or cfg.get("placement") is None:
        raise ConfigError("the placement search needs topology: and placement: (use +experiment=placement)")
    topo = build_topology(cfg.topology)
    job = job_from_config(cfg, topo, load_model(cfg.model))
    s = _plain(cfg.search)
    phase = phase_printer(bool(cfg.get("progress")), "placement")
    results = solve_all(job, topo, s | {"seed": s.get("seed", cfg.get("seed", 0))}, phase)
    rep = report(job, topo, results, str(s.get("objective", "time")))
    rep["memory"] = job_memory(cfg, job)
    rep["warnings"] = _memory_warnings(rep["memory"])
    log_report(run_, rep, job, topo, results["cp_sat"][0])
    return rep


def job_memory(cfg: DictConfig, job: Job) -> dict[str, Any]:
    """Per-device memory of the placed job's mapping (the training memory model of ``dse.calc``:
    weights, gradients, optimizer states, activations of the in-flight micro-batches, workspace),
    against the capacity of ``cfg.hardware``."""
    from costmodels.training import training_step
    from dse.hardware import hardware_from_config
    from dse.models import load_model

    hw, w, p = hardware_from_config(cfg.hardware), cfg.workload, _plain(cfg.placement)
    train = TrainingJob(load_model(cfg.model), w.seq_len, w.precision, w.fused_attention, w.optimizer)
    degrees_ = {t: job.degree(t) for t in ("tp", "pp", "cp", "ep")} | {"dp": job.dp * job.ep}
    plan = placement_plan(p | degrees_, _plain(w))
    out = training_step(hw, train, plan)
    return {
        "hardware": str(HydraConfig.get().runtime.choices.get("hardware"))
        if HydraConfig.initialized()
        else hw.name,
        "per_device_gib": float(out.memory.total_bytes) / 2**30,
        "capacity_gib": float(hw.hbm_capacity_bytes) / 2**30,
    }


def _memory_warnings(memory: dict[str, Any]) -> list[str]:
    if memory["per_device_gib"] <= memory["capacity_gib"]:
        return []
    return [
        f"the job needs {memory['per_device_gib']:.1f} GiB per device, more than the "
        f"{memory['capacity_gib']:.0f} GiB of a {memory['hardware']}: this mapping cannot run as placed "
        "(raise placement.tp or placement.pp, or see python -m dse.calc for memory-saving options)"
    ]


def evaluator_table(rep: dict[str, Any]) -> dict[str, list[Any]]:
    """Columns of the evaluator table (one row per solver), for CSV."""
    keys = (
        "cost_sum",
        "cost_max",
        "comm_time_s",
        "dp_pp_comm_time_s",
        "max_link_bytes",
        "tp_in_domain",
        "solve_time_s",
    )
    rows = rep["solvers"]
    return (
        {"solver": list(rows)}
        | {k: [rows[n][k] for n in rows] for k in keys}
        | {"max_link": ["–".join(rows[n]["max_link"] or []) for n in rows]}
    )


def log_report(run_: JobRun, rep: dict[str, Any], job: Job, topo: Topology, best: Placement) -> None:
    """Metrics (cost and comm time per solver, the reductions), placement.json, the table, pictures."""
    for name, row in rep["solvers"].items():
        run_.log_metrics(
            {
                f"{name}.{k}": row[k]
                for k in (
                    "cost_sum",
                    "cost_max",
                    "comm_time_s",
                    "dp_pp_comm_time_s",
                    "max_link_bytes",
                    "solve_time_s",
                )
            }
        )
    run_.log_metrics({f"reduction.{k}": v for k, v in rep["reduction_vs_rank_order"].items()})
    run_.log_dict(rep, "placement.json")
    run_.log_table_csv(evaluator_table(rep), "evaluator.csv")
    if not run_.keeps_artifacts:
        return
    import tempfile

    from search.placement_draw import draw_html, draw_png

    with tempfile.TemporaryDirectory() as tmp:
        draw_png(topo, best, job, Path(tmp, "placement.png"))
        draw_html(topo, best, job, Path(tmp, "placement.html"))
        for name in ("placement.png", "placement.html"):
            run_.log_file(Path(tmp, name))


def why(rep: dict[str, Any]) -> str:
    """What binds CP-SAT's placement: its communication time per step by group type (largest first),
    how far the slowest type's groups reach and how much link sharing slows them, the busiest link,
    whether TP stays inside its scale-up domains, and the solver's status."""
    row, tp = rep["solvers"]["cp_sat"], rep["job"]["tp"]
    times = {t: st["time_s"] for t, st in row["by_type"].items() if st["time_s"] > 0}
    if not times:
        return "no traffic between ranks: any placement is as good"
    order = sorted(times, key=lambda t: -times[t])
    parts = [
        f"communication {fmt_time(row['comm_time_s'])} per step ("
        + ", ".join(f"{t} {fmt_time(times[t])}" for t in order)
        + ")"
    ]
    crossing = [t for t in order if row["by_type"][t]["max_nodes"] > 1]
    if crossing:  # the slowest type that leaves its scale-up domain: what the placement can move
        t, st = crossing[0], row["by_type"][crossing[0]]
        reach = f"{t} groups span up to {st['max_nodes']} scale-up domains"
        if st.get("contention", 1.0) > 1.01:
            reach += f", slowed {st['contention']:.2f}x by sharing links"
        parts.append(reach)
    if row["max_link"]:
        parts.append(f"busiest link {'–'.join(row['max_link'])} busy {fmt_time(row['max_link_busy_s'])}")
    if tp > 1:
        inside = "stay inside" if row["tp_in_domain"] else "cross"
        parts.append(f"TP groups {inside} their scale-up domains")
    parts.append(_status_text(row["status"]))
    if row.get("gap") is not None:
        parts.append(_gap_text(row, rep["objective"]))
    return "; ".join(parts)


def _gap_text(row: dict[str, Any], objective: str) -> str:
    """How far from the best possible placement CP-SAT's is at most: its gap to the lower bound."""
    if row["gap"] < 1e-9:
        return "optimal: it meets the lower bound"
    if objective == "time":
        bound = f"{fmt_time(row['lower_bound'])}: each group type alone at the fastest links it can reach"
    else:
        bound = f"{row['lower_bound']:.4g}: CP-SAT's proven bound"
    return f"within {row['gap']:.1%} of the best possible placement (lower bound {bound})"


def _status_text(status: str) -> str:
    """CP-SAT's status in words ('start kept (nesting pp·dp)' → that it found nothing better)."""
    if status.startswith("start kept"):
        start = status.removeprefix("start kept").strip(" ()")
        return f"CP-SAT found nothing better than its best starting placement ({start}) in the time limit"
    if status == "baseline kept":
        return "CP-SAT found nothing better than the heuristic baseline in the time limit"
    return f"CP-SAT status: {status}"


_GAINS = {"comm_time_s": "communication time", "dp_pp_comm_time_s": "dp+pp time", "cost_sum": "byte-hops"}


def _gain_text(gain: dict[str, float]) -> str:
    """'communication time 1.2% lower, byte-hops 11.6% higher' (a reduction below 0 is an increase)."""
    return ", ".join(
        f"{label} {abs(gain[k]):.1%} {'lower' if gain[k] >= 0 else 'higher'}"
        for k, label in _GAINS.items()
        if k in gain
    )


def render(rep: dict[str, Any]) -> str:
    """The job and topology, memory, the solver table in human units, why CP-SAT's placement costs
    what it does, and its gains against rank order."""
    j, t = rep["job"], rep["topology"]
    other = {k: v for k, v in j.get("collectives", COLLECTIVE).items() if v != COLLECTIVE[k] and j[k] > 1}
    head = (
        f"placement of tp={j['tp']} pp={j['pp']} dp={j['dp']} cp={j['cp']} ep={j['ep']} "
        + "".join(f"({k} groups by {v.replace('_', '-')}) " for k, v in other.items())
        + f"({j['n_ranks']} ranks) "
        f"on {t['name']} ({t['available']}/{t['devices']} devices available), objective {rep['objective']}"
    )
    cols = [
        "solver",
        "comm time",
        "dp+pp time",
        "byte-hops Σ",
        "byte-hops max",
        "busiest link",
        "link bytes",
        "link busy",
        "TP in domain",
        "solve",
    ]
    rows = [
        [
            n,
            fmt_time(r["comm_time_s"]),
            fmt_time(r["dp_pp_comm_time_s"]),
            fmt_count(r["cost_sum"]),
            fmt_count(r["cost_max"]),
            "–".join(r["max_link"] or ["-"]),
            fmt_bytes(r["max_link_bytes"]),
            fmt_time(r["max_link_busy_s"]),
            fmt_cell(r["tp_in_domain"]),
            fmt_time(r["solve_time_s"]),
        ]
        for n, r in rep["solvers"].items()
    ]
    m = rep.get("memory")
    memory = (
        [f"memory: {m['per_device_gib']:.1f} of {m['capacity_gib']:.0f} GiB per device ({m['hardware']})"]
        if m
        else []
    )
    return "\n".join(
        [head, *memory, "", format_table(cols, rows, align="lrrrrlrrlr"), "",
         f"why: {why(rep)}",
         f"cp_sat vs rank order: {_gain_text(rep['reduction_vs_rank_order'])}",
         *(f"warning: {x}" for x in rep.get("warnings", []))]
    )  # fmt: skip
