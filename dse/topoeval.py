"""``python -m dse.topoeval``: score a placement (rank → device) on a topology.

    python -m dse.topoeval placement.json topology=dgx_h100_1k job.tp=8 job.pp=4 [format=json]
    python -m dse.topoeval report.json topology=instance_json topology.path=my_cluster.json

The file is ``{"0": "node0/gpu0", ...}`` (rank → device id, or device index), a list of device ids
in rank order, or the report of ``python -m dse.search +experiment=placement`` (its ``placement`` and
its ``job``). Per group type: span (devices, nodes, leaves), hops, bytes per tier, cost and comm time
(links shared by the type's groups; alone; their ratio); overall: costs, bytes per tier, the busiest
link, comm time (``search.placement.evaluate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from costmodels.errors import ConfigError
from costmodels.parallel import make_plan
from costmodels.training import group_collectives
from dse._app import format_table, print_json, run_app
from dse.checks import check_results, read_json
from dse.placement_search import (
    build_topology,
    bytes_per_step,
    collectives_of,
    degrees,
    flag_option,
    group_order,
    placement_job,
    placement_plan,
    traffic,
)
from search.placement import Job, evaluate
from search.topology import Topology


def read_placement(path: str) -> tuple[list[Any], dict[str, Any] | None]:
    """(device per rank, the report's job or None) from a placement file."""
    data = read_json(Path(path), "placement file")
    job = data.get("job") if isinstance(data, dict) and "placement" in data else None
    data = data["placement"] if job is not None or (isinstance(data, dict) and "placement" in data) else data
    if isinstance(data, list):
        return data, job
    if not isinstance(data, dict) or not all(str(k).isdigit() for k in data):
        raise ConfigError(f"placement file {path}: expected {{rank: device}} or a list of devices")
    ranks = sorted(int(k) for k in data)
    if ranks != list(range(len(ranks))):
        raise ConfigError(f"placement file {path}: ranks must be 0..{len(ranks) - 1} without gaps")
    return [data[str(r)] for r in ranks], job


def device_indices(topo: Topology, devices: list[Any]) -> tuple[int, ...]:
    """Device ids (or indices) → indices, checked: known, distinct, available, not too many."""
    n_avail = int(topo.available.sum())
    if len(devices) > n_avail:
        raise ConfigError(
            f"placement has {len(devices)} ranks but {topo.name} has {n_avail} available devices"
        )
    index = {d: i for i, d in enumerate(topo.devices)}
    out = []
    for r, d in enumerate(devices):
        i = d if isinstance(d, int) and not isinstance(d, bool) else index.get(str(d))
        if i is None or not 0 <= i < len(topo.devices):
            raise ConfigError(f"rank {r}: device {d!r} is not a device of {topo.name}")
        if not topo.available[i]:
            raise ConfigError(f"rank {r}: device {topo.devices[i]} is unavailable")
        out.append(int(i))
    if len(set(out)) != len(out):
        raise ConfigError("placement puts two ranks on one device")
    return tuple(out)


def _report_collectives(job: dict[str, Any]) -> dict[str, str]:
    """The collective per group type a report's job carries; a report written before jobs carried
    them says ``cp_a2a`` (Ulysses CP) instead."""
    if "collectives" in job:
        return collectives_of(job["collectives"], "the report's job.collectives")
    ulysses = flag_option(job.get("cp_a2a"), "the report's job.cp_a2a")
    return group_collectives(make_plan(cp_a2a=ulysses))


def job_of(cfg: DictConfig, n_ranks: int, from_file: dict[str, Any] | None) -> Job:
    """The report's job when the file is a report, else ``cfg.job`` with traffic from the model."""
    if from_file is not None:
        if not isinstance(from_file, dict) or not isinstance(from_file.get("bytes_per_step"), dict):
            raise ConfigError("the report's job must be an object with tp, pp, dp, cp, ep and bytes_per_step")
        degree = degrees(from_file | {"dp": from_file.get("dp", 1)}, n_ranks, prefix="the report's job.")
        return placement_job(
            degree,
            traffic(from_file["bytes_per_step"], "the report's job.bytes_per_step"),
            group_order(from_file.get("order"), "the report's job.order"),
            _report_collectives(from_file),
        )
    j = OmegaConf.to_container(cfg.job, resolve=True)
    d = degrees(j, n_ranks, prefix="job.")
    if j.get("bytes_per_step") is not None:
        s = traffic(j["bytes_per_step"], "job.bytes_per_step")
    else:
        from dse.models import load_model

        s = bytes_per_step(load_model(str(j["model"])), j, j | d)
    collectives = group_collectives(placement_plan(j | d, j))
    job = placement_job(d, s, group_order(j["order"], "job.order"), collectives)
    if job.n_ranks != n_ranks:
        raise ConfigError(f"job tp·pp·dp·cp = {job.n_ranks} but the placement has {n_ranks} ranks")
    return job


def report(cfg: DictConfig) -> dict[str, Any]:
    """The evaluator's figures for the file's placement, as a JSON-ready dict."""
    devices, from_file = read_placement(str(cfg.placement_file))
    topo = build_topology(cfg.topology)
    dev = device_indices(topo, devices)
    job = job_of(cfg, len(dev), from_file)
    ev = evaluate(job, topo, dev)
    rep = {
        "topology": topo.name,
        "ranks": job.n_ranks,
        "job": job.as_dict(),
        **ev,
        "max_link": list(ev["max_link"]) if ev["max_link"] else None,
    }
    check_results({k: v for k, v in rep.items() if k != "max_link"}, f"the placement {cfg.placement_file}")
    return rep


def render(rep: dict[str, Any]) -> str:
    """Per-type table and the overall figures."""
    cols = [
        "type",
        "groups",
        "devices",
        "max nodes",
        "max leaves",
        "max hops",
        "bytes by tier",
        "time_s",
        "alone_s",
        "contention",
    ]
    rows = [
        [
            t,
            s["groups"],
            s["devices"],
            s["max_nodes"],
            s["max_leaves"],
            s["max_hops"],
            ", ".join(f"{k} {v:.3g}" for k, v in s["bytes_by_tier"].items()),
            f"{s['time_s']:.4g}",
            f"{s['time_s_alone']:.4g}",
            f"{s['contention']:.2f}",
        ]
        for t, s in rep["by_type"].items()
    ]
    link = "–".join(rep["max_link"] or ["-"])
    j = rep["job"]
    return "\n".join(
        [
            f"{rep['ranks']} ranks (tp={j['tp']} pp={j['pp']} dp={j['dp']} cp={j['cp']} ep={j['ep']}) "
            f"on {rep['topology']}",
            "",
            format_table(cols, rows, align="lrrrrrlrrr"),
            "",
            f"cost_sum {rep['cost_sum']:.4g}, cost_max {rep['cost_max']:.4g}, "
            f"comm time {rep['comm_time_s']:.4g} s",
            f"bytes by tier: {', '.join(f'{k} {v:.4g}' for k, v in rep['bytes_by_tier'].items())}",
            f"busiest link: {link} ({rep['max_link_bytes']:.4g} B, {rep['max_link_busy_s']:.4g} s busy); "
            f"TP in domain: {rep['tp_in_domain']}",
        ]
    )


def task(cfg: DictConfig) -> None:
    if cfg.format not in ("table", "json"):
        raise ConfigError(f"format must be 'table' or 'json', got '{cfg.format}'")
    rep = report(cfg)
    print_json(rep) if cfg.format == "json" else print(render(rep))


def main() -> None:
    run_app(task, "topoeval", positional=("placement_file",))


if __name__ == "__main__":
    main()
