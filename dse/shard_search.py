"""The ``auto_shard`` experiment: per-op sharding of a model's FX graph on a device mesh by ILP.

Called by ``dse.search`` when ``search.driver=ilp``: captures the model (a shipped name, a
config.json path) on the meta device with example inputs of ``search.batch × workload.seq_len``
tokens — by default (``search.joint=true``) the joint forward + backward graph of a training step
with the model's cross-entropy loss and every parameter's gradient tied to its placement, with
``search.joint=false`` the forward graph alone — builds the sharding ILP with costs from the
compute and network models (mesh axis 0 on the scale-out network, the last axis on the scale-up
link) and solves it with PuLP; prints the parameter placements as DTensor specs, the collectives,
the predicted step time and the memory per device, and logs them to MLflow.
"""

from __future__ import annotations

from collections import Counter
from time import perf_counter
from typing import Any

from omegaconf import DictConfig

from costmodels.errors import ConfigError
from costmodels.memory import GiB
from dse._app import format_table, phase_printer
from dse.hardware import hardware_from_config
from dse.models import model_config
from dse.tracking import JobRun
from dse.units import memory_phrase, share
from search.fx_graph import capture_hf
from search.fx_sharding import plan_sharding


def _mesh(cfg: DictConfig) -> tuple[int, ...]:
    mesh = cfg.get("mesh")
    if mesh is None or not len(mesh) or not all(isinstance(a, int) and a >= 1 for a in mesh):
        raise ConfigError(f"mesh must be a list of positive integers such as 'mesh=[8,8]', got {mesh}")
    return tuple(int(a) for a in mesh)


def run(cfg: DictConfig, run_: JobRun) -> dict[str, Any]:
    """Capture, build, solve; the JSON-ready report."""
    s, mesh = cfg.search, _mesh(cfg)
    hw = hardware_from_config(cfg.hardware)
    limit = s.memory_limit_gib * GiB if s.memory_limit_gib is not None else float(hw.hbm_capacity_bytes)
    say = phase_printer(bool(cfg.get("progress")), "ilp")
    if say is not None:
        say(f"capturing {'forward+backward' if s.joint else 'forward'} graph of the model (PyTorch FX)")
    t0 = perf_counter()
    captured = capture_hf(
        model_config(cfg.model), int(s.batch), int(cfg.workload.seq_len), joint=bool(s.joint)
    )
    capture_s = perf_counter() - t0
    plan = plan_sharding(
        captured,
        hw,
        mesh,
        memory_per_param_bytes=s.memory_per_param_bytes,
        count_activations=s.count_activations,
        memory_limit=limit,
        precision=cfg.workload.precision,
        solver=s.solver,
        time_limit_s=s.time_limit_s,
        pins=dict(s.pins or {}),
        phase=say,
    )
    sol = plan.solution
    inputs = _inputs(captured)
    rep = {
        "driver": "ilp",
        "mesh": list(mesh),
        "graph": "forward+backward" if captured.joint else "forward",
        "step_time_s": plan.step_time_s,
        "compute_s": plan.compute_s,
        "comm_s": plan.comm_s,
        "memory_gib": plan.memory_per_device_bytes / GiB,
        "memory_limit_gib": limit / GiB,
        "status": sol.status,
        "nodes": len(sol.strategies),
        "variables": sol.num_variables,
        "constraints": sol.num_constraints,
        "timings_s": {"capture": capture_s, **plan.timings_s},
        "param_placements": plan.param_placements,
        "input_placements": {k: v for k, v in plan.placements.items() if k in inputs},
        "collectives": plan.collectives,
        "unsupported": sorted(set(plan.unsupported)),
    }
    rep["why"] = why(rep)
    _log(run_, rep, plan.placements)
    return rep


_STATUS = {
    "optimal": "the ILP proved it optimal: no other choice among the per-op strategies has a lower "
    "modelled step time within the memory limit",
}


def why(rep: dict[str, Any]) -> str:
    """What binds the sharding found: the compute and communication shares of its step, its memory
    against the limit, how each mesh axis is used by the weights of one layer (sharded or
    replicated), and what the solver's status proves."""
    step = rep["step_time_s"]
    parts = [
        f"compute is {share(rep['compute_s'], step)} of the step, communication {share(rep['comm_s'], step)}"
    ]
    parts.append(memory_phrase(rep["memory_gib"], rep["memory_limit_gib"]))
    layer = [v for k, v in rep["param_placements"].items() if ".layers." not in k or ".layers.0." in k]
    mesh = rep["mesh"]
    link = {0: ", scale-out", len(mesh) - 1: ", scale-up"} if len(mesh) > 1 else {}
    axes = [
        f"axis {axis} ({size} devices{link.get(axis, '')}) shards "
        f"{sum(1 for p in layer if 'Shard' in _axis_spec(p, axis))} of {len(layer)}"
        for axis, size in enumerate(mesh)
        if size > 1
    ]
    if axes and layer:
        parts.append(f"weights (layer 0 for every layer): {', '.join(axes)}")
    parts.append(_STATUS.get(rep["status"], f"solver status {rep['status']}: the plan may not be optimal"))
    return "; ".join(parts)


def _axis_spec(placement: str, axis: int) -> str:
    """'[Shard(0), Replicate()]', 1 → 'Replicate()' (the DTensor spec of one mesh axis)."""
    specs = placement.strip("[]").split(", ")
    return specs[axis] if axis < len(specs) else ""


def _inputs(captured: Any) -> set[str]:
    return {n.name for n in captured.graph.nodes if n.op == "placeholder" and n.name not in captured.params}


def _log(run_: JobRun, rep: dict[str, Any], placements: dict[str, str]) -> None:
    run_.log_metrics(
        {
            "step_time_s": rep["step_time_s"],
            "memory_gib": rep["memory_gib"],
            "objective": rep["step_time_s"],
            "compute_s": rep["compute_s"],
            "comm_s": rep["comm_s"],
            "variables": float(rep["variables"]),
            "constraints": float(rep["constraints"]),
        }
    )
    run_.log_dict({"param_placements": rep["param_placements"], "placements": placements}, "placements.yaml")
    run_.log_text("\n".join(rep["collectives"]), "collectives.txt")


def render(rep: dict[str, Any]) -> str:
    """Parameter placements of one repeated layer plus the rest, the collective counts, the totals."""
    shown = {k: v for k, v in rep["param_placements"].items() if ".layers." not in k or ".layers.0." in k}
    table = format_table(["parameter", "placement (per mesh axis)"], sorted(shown.items()), align="ll")
    kinds = Counter(c.rsplit(": ", 1)[-1].split("(")[0] for c in rep["collectives"])
    t = rep["timings_s"]
    return "\n".join(
        [
            f"automatic sharding on a {' x '.join(map(str, rep['mesh']))} mesh: {rep['nodes']} graph nodes, "
            f"{rep['variables']} variables, {rep['constraints']} constraints, {rep['status']}",
            "",
            table,
            "(layers 1.. share layer 0's placements)" if len(shown) < len(rep["param_placements"]) else "",
            "collectives: " + (", ".join(f"{n} × {k}" for k, n in kinds.most_common()) or "none"),
            f"{'training' if rep['graph'] != 'forward' else 'forward'} step ({rep['graph']}) "
            f"{rep['step_time_s'] * 1e3:.2f} ms (compute {rep['compute_s'] * 1e3:.2f} ms, "
            f"communication {rep['comm_s'] * 1e3:.2f} ms), memory {rep['memory_gib']:.2f} of "
            f"{rep['memory_limit_gib']:.2f} GiB per device",
            f"why: {rep['why']}",
            "time: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()),
            f"replicated fallback for: {', '.join(rep['unsupported'])}" if rep["unsupported"] else "",
        ]
    )
