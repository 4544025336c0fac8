"""Topology-aware placement: CP-SAT against brute force, against the baselines, and the error paths."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from costmodels.errors import ConfigError
from search.placement import (
    Job,
    cp_sat,
    evaluate,
    groups,
    placement_cost,
    rank_order,
    tp_in_domain,
    traffic,
    tree_heuristic,
)
from search.topology import (
    from_instance_json,
    gpu_cluster,
    hop_cost_matrix,
    hops,
    mark_unavailable,
    mesh2d,
    torus3d,
)

JOB8 = Job(tp=2, dp=2, pp=2, bytes_per_step={"tp": 8.0, "dp": 3.0, "pp": 1.0})
# Listed as the API returns them, leaves interleaved, so device order is not topology order.
INSTANCES = {"nodes": [
    {"id": f"i{k}", "network_node_ids": [f"nn-leaf{k % 2}", "nn-spine0"], "gpus": 2} for k in range(4)
]}


def brute_force(job, topo, objective="sum", keep_tp_in_domain=False) -> float:
    """Optimum over every injection of the ranks into the available devices (vectorised)."""
    tr, h = traffic(job), hop_cost_matrix(topo)
    avail = np.flatnonzero(topo.available)
    perms = avail[np.array(list(itertools.permutations(range(len(avail)), job.n_ranks)))]
    per_pair = tr.w * h[perms[:, tr.a], perms[:, tr.b]]  # (n_perms, n_pairs)
    if objective == "sum":
        cost = per_pair.sum(axis=1)
    else:
        cost = np.stack([per_pair[:, tr.g == g].sum(axis=1) for g in range(len(tr.kinds))], axis=1).max(1)
    if keep_tp_in_domain:
        dom = topo.domain_of[perms]
        ok = np.all([np.all(dom[:, list(g)] == dom[:, [g[0]]], axis=1) for g in groups(job)["tp"]], axis=0)
        cost = np.where(ok, cost, np.inf)
    return float(cost.min())


def test_groups_follow_megatron_nesting() -> None:
    g = groups(JOB8)
    assert g["tp"] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert g["dp"] == [(0, 2), (1, 3), (4, 6), (5, 7)]
    assert g["pp"] == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert groups(Job(tp=2, pp=2, order=("pp", "tp", "cp", "ep", "dp")))["tp"] == [(0, 2), (1, 3)]


def test_topology_builders() -> None:
    cluster = gpu_cluster(4, 8, nodes_per_leaf=2)
    assert len(cluster.devices) == 32 and len(cluster.domains) == 4
    assert hops(cluster, 0, 1) == 2 and hops(cluster, 0, 8) == 2 and hops(cluster, 0, 16) == 4
    up = [a["bandwidth_Bps"] for *_, a in cluster.graph.edges(data=True) if a["tier"] == "spine"]
    assert np.allclose(up, 16 * 50e9 / 2.0 / 2)  # downlink / oversubscription / spines
    rail = gpu_cluster(2, 4, rail_optimized=True)
    assert hop_cost_matrix(rail)[0, 4] == 16 and hop_cost_matrix(rail)[0, 5] == 18  # same rail; via PXN
    assert hops(torus3d(4, 4, 4), 0, 3) == 1 and hops(mesh2d(4, 4), 0, 3) == 3


@pytest.mark.parametrize("topo", [gpu_cluster(2, 4, nodes_per_leaf=2), torus3d(2, 2, 2),
                                  from_instance_json(INSTANCES)], ids=["2x4", "torus222", "json"])
@pytest.mark.parametrize("objective", ["sum", "max"])
def test_cp_sat_matches_brute_force(topo, objective) -> None:
    for keep in (False, True):
        best = cp_sat(JOB8, topo, objective=objective, keep_tp_in_domain=keep, time_limit_s=10)
        assert best.cost == pytest.approx(brute_force(JOB8, topo, objective, keep))
        assert not keep or tp_in_domain(JOB8, topo, best.devices)


def test_cp_sat_with_unavailable_devices_matches_brute_force() -> None:
    topo = mark_unavailable(from_instance_json(INSTANCES), ["i1/gpu0", "i3"])
    job = Job(tp=2, dp=2, bytes_per_step={"tp": 5.0, "dp": 2.0})
    best = cp_sat(job, topo, time_limit_s=10)
    assert best.cost == pytest.approx(brute_force(job, topo, keep_tp_in_domain=True))
    assert all(topo.available[d] for d in best.devices)


def fragmented(seed: int = 0):
    topo = gpu_cluster(4, 8, nodes_per_leaf=2)
    off = np.random.default_rng(seed).choice(32, size=8, replace=False)
    return mark_unavailable(topo, [topo.devices[i] for i in off])


@pytest.mark.parametrize("method", ["exact", "hierarchical"])
def test_cp_sat_never_worse_than_baselines_on_fragmented_cluster(method) -> None:
    topo = fragmented()
    job = Job(tp=2, dp=4, pp=2, bytes_per_step={"tp": 100.0, "dp": 20.0, "pp": 5.0})
    for keep in (True, False):
        best = cp_sat(job, topo, method=method, keep_tp_in_domain=keep, time_limit_s=4)
        assert best.cost <= rank_order(job, topo).cost
        assert best.cost <= tree_heuristic(job, topo, keep_tp_in_domain=keep).cost
        assert len(set(best.devices)) == job.n_ranks and all(topo.available[d] for d in best.devices)
        assert not keep or tp_in_domain(job, topo, best.devices)


def test_hierarchical_on_rail_cluster_keeps_tp_and_beats_rank_order() -> None:
    topo = gpu_cluster(8, 8, nodes_per_leaf=4, rail_optimized=True)
    job = Job(tp=8, dp=4, pp=2, bytes_per_step={"tp": 100.0, "dp": 20.0, "pp": 5.0})
    best = cp_sat(job, topo, method="hierarchical", time_limit_s=4)
    assert tp_in_domain(job, topo, best.devices)
    assert best.cost <= min(rank_order(job, topo).cost, tree_heuristic(job, topo).cost)


def test_evaluate_reports_spans_tiers_and_time() -> None:
    topo = gpu_cluster(2, 4, nodes_per_leaf=2)
    report = evaluate(JOB8, topo, tree_heuristic(JOB8, topo))
    tp = report["by_type"]["tp"]
    assert tp["max_nodes"] == 1 and set(tp["bytes_by_tier"]) == {"scale_up"} and tp["time_s"] > 0
    assert report["by_type"]["pp"]["max_nodes"] == 2 and report["by_type"]["pp"]["max_leaves"] == 1
    assert report["cost_sum"] == pytest.approx(placement_cost(traffic(JOB8), hop_cost_matrix(topo),
                                                              tree_heuristic(JOB8, topo).devices))
    assert report["max_link_bytes"] > 0 and report["comm_time_s"] > 0 and report["tp_in_domain"]


def test_errors() -> None:
    topo = gpu_cluster(2, 4)
    with pytest.raises(ConfigError, match="16 ranks"):
        cp_sat(Job(tp=2, dp=8), topo)
    with pytest.raises(ConfigError, match="larger than any scale-up domain"):
        cp_sat(Job(tp=8), topo)
    with pytest.raises(ConfigError, match="fit inside"):
        tree_heuristic(Job(tp=4), mark_unavailable(topo, ["node0/gpu0", "node1/gpu0"]))
    with pytest.raises(ConfigError, match="nn-nowhere"):
        from_instance_json({**INSTANCES, "links": [{"source": "nn-leaf0", "target": "nn-nowhere"}]})
    lonely = {"nodes": [*INSTANCES["nodes"], {"id": "orphan", "network_node_ids": [], "gpus": 1}]}
    with pytest.raises(ConfigError, match="orphan/gpu0"):
        from_instance_json(lonely)
    with pytest.raises(ConfigError, match="neither"):
        mark_unavailable(topo, ["node9"])
