"""Cluster topologies as graphs, the input of topology-aware placement (``search/placement.py``).

A :class:`Topology` wraps an undirected ``networkx.Graph`` and a fixed order of its devices.

Node attributes: ``kind`` in :data:`KINDS`; devices (``gpu``, ``die``) also carry ``available``
(bool), ``domain`` (the id of their scale-up domain: the node's NVSwitch, the instance, or the
whole torus/mesh) and ``tree`` (the ids of their enclosing switch groups, outermost first, which
the depth-first heuristic sorts by). Edge attributes: ``bandwidth_Bps`` (one direction),
``latency_s`` and ``tier`` in :data:`TIERS`.

Hop cost: the cheapest path where each link costs its tier's weight (:data:`TIER_WEIGHTS`,
assumed about the NVLink:NIC bandwidth ratio, spine links twice a leaf link for their
oversubscription). Paths may transit a GPU of the same node (gpu → NVSwitch → gpu → rail leaf),
which is what NCCL's PXN does on rail-optimised clusters. Pure functions; the only input format
is already-parsed JSON (:func:`from_instance_json`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from costmodels.errors import ConfigError

KINDS = ("gpu", "node", "leaf", "spine", "switch", "die")
DEVICE_KINDS = ("gpu", "die")
TIERS = ("scale_up", "leaf", "spine", "mesh")
TIER_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"scale_up": 1.0, "mesh": 1.0, "leaf": 8.0, "spine": 16.0}
)
#: Per-link latency assumptions (s): NVLink/NVSwitch, NIC + leaf port, leaf↔spine, die-to-die link.
TIER_LATENCY_S: Mapping[str, float] = MappingProxyType(
    {"scale_up": 0.5e-6, "leaf": 1.5e-6, "spine": 1.0e-6, "mesh": 0.5e-6}
)


@dataclass(frozen=True, eq=False)
class Topology:
    """A graph plus the fixed device order; ``devices[i]`` is device index ``i`` everywhere."""

    graph: nx.Graph
    devices: tuple[str, ...]
    name: str = "topology"

    def __post_init__(self) -> None:
        _validate(self.graph, self.devices)

    @cached_property
    def available(self) -> np.ndarray:
        """(n_devices,) bool: device may receive a rank."""
        return np.array([bool(self.graph.nodes[d]["available"]) for d in self.devices])

    @cached_property
    def domains(self) -> tuple[str, ...]:
        """Scale-up domain ids in order of first appearance in ``devices``."""
        return tuple(dict.fromkeys(self.graph.nodes[d]["domain"] for d in self.devices))

    @cached_property
    def domain_of(self) -> np.ndarray:
        """(n_devices,) int: index into ``domains`` of each device's scale-up domain."""
        index = {d: i for i, d in enumerate(self.domains)}
        return np.array([index[self.graph.nodes[d]["domain"]] for d in self.devices], dtype=np.int64)

    @cached_property
    def _cache(self) -> dict[Any, Any]:
        return {}


def _validate(graph: nx.Graph, devices: tuple[str, ...]) -> None:
    """Every node has a kind, every link a tier and a bandwidth, every device a path to the first."""
    for node, attrs in graph.nodes(data=True):
        if attrs.get("kind") not in KINDS:
            raise ConfigError(f"topology node {node!r} has no valid kind (dangling link?); kinds: {KINDS}")
    for u, v, attrs in graph.edges(data=True):
        if attrs.get("tier") not in TIERS or not attrs.get("bandwidth_Bps", 0) > 0:
            raise ConfigError(f"link {u!r}–{v!r} needs a tier in {TIERS} and bandwidth_Bps > 0")
    if not devices:
        raise ConfigError("topology has no devices")
    for d in devices:
        if d not in graph or graph.nodes[d]["kind"] not in DEVICE_KINDS:
            raise ConfigError(f"device {d!r} is not a gpu/die node of the topology")
    reachable = nx.node_connected_component(graph, devices[0])
    for d in devices:
        if d not in reachable:
            raise ConfigError(f"device {d!r} has no path to device {devices[0]!r} (dangling device)")


def _link(g: nx.Graph, u: str, v: str, tier: str, bandwidth_Bps: float) -> None:
    g.add_edge(u, v, tier=tier, bandwidth_Bps=float(bandwidth_Bps), latency_s=TIER_LATENCY_S[tier])


def _device(g: nx.Graph, dev: str, kind: str, domain: str, tree: tuple[str, ...]) -> None:
    g.add_node(dev, kind=kind, available=True, domain=domain, tree=tree)


def _add_spines(g: nx.Graph, leaves: list[str], spines: int | None, oversubscription: float) -> None:
    """Full leaf–spine bipartite; each leaf's uplink = its downlink / oversubscription, split evenly."""
    if len(leaves) < 2:
        return
    n_spines = spines if spines is not None else max(2, math.ceil(len(leaves) / 2))
    if n_spines < 1 or oversubscription <= 0:
        raise ConfigError(f"need spines >= 1 and oversubscription > 0, got {spines}, {oversubscription}")
    for s in range(n_spines):
        g.add_node(f"spine{s}", kind="spine")
    for leaf in leaves:
        down = sum(g.edges[leaf, n]["bandwidth_Bps"] for n in g[leaf] if g.nodes[n]["kind"] == "gpu")
        for s in range(n_spines):
            _link(g, leaf, f"spine{s}", "spine", down / oversubscription / n_spines)


def gpu_cluster(
    nodes: int,
    gpus_per_node: int = 8,
    nodes_per_leaf: int = 8,
    spines: int | None = None,
    oversubscription: float = 2.0,
    nvlink_Bps: float = 450e9,
    nic_Bps: float = 50e9,
    rail_optimized: bool = False,
) -> Topology:
    """Nodes of ``gpus_per_node`` GPUs on one NVSwitch (scale-up domain), one NIC per GPU.

    NICs go to their node's leaf (``nodes_per_leaf`` nodes per leaf) or, rail-optimised, GPU k of
    every node in a group of ``nodes_per_leaf`` nodes to rail leaf k of that group. Leaves connect
    to every spine (default ``max(2, ceil(leaves/2))`` spines when there is more than one leaf).
    """
    if min(nodes, gpus_per_node, nodes_per_leaf) < 1:
        raise ConfigError("gpu_cluster needs nodes, gpus_per_node, nodes_per_leaf >= 1")
    g, devices, leaves = nx.Graph(), [], []
    for n in range(nodes):
        group, node = n // nodes_per_leaf, f"node{n}"
        g.add_node(node, kind="node")
        for k in range(gpus_per_node):
            dev, leaf = f"{node}/gpu{k}", f"leaf{group}.{k}" if rail_optimized else f"leaf{group}"
            _device(g, dev, "gpu", node, (f"group{group}",))
            if leaf not in g:
                g.add_node(leaf, kind="leaf")
                leaves.append(leaf)
            _link(g, dev, node, "scale_up", nvlink_Bps)
            _link(g, dev, leaf, "leaf", nic_Bps)
            devices.append(dev)
    _add_spines(g, leaves, spines, oversubscription)
    rail = ", rail-optimised" if rail_optimized else ""
    return Topology(g, tuple(devices), f"gpu_cluster({nodes}x{gpus_per_node}{rail})")


def _grid(shape: tuple[int, ...], link_Bps: float, wrap: bool, name: str) -> Topology:
    """Dies on a grid, each linked to its +1 neighbour per dimension (and around, when ``wrap``)."""
    if min(shape) < 1 or link_Bps <= 0:
        raise ConfigError(f"{name} needs sizes >= 1 and link_Bps > 0, got {shape}, {link_Bps}")
    g = nx.Graph()
    coords = list(np.ndindex(*shape))
    label = {c: f"die{','.join(map(str, c))}" for c in coords}
    for c in coords:
        _device(g, label[c], "die", name, ())
    for c in coords:
        for axis, size in enumerate(shape):
            nxt = list(c)
            nxt[axis] += 1
            if nxt[axis] >= size and not (wrap and size > 2):
                continue
            nxt[axis] %= size
            _link(g, label[c], label[tuple(nxt)], "mesh", link_Bps)
    return Topology(g, tuple(label[c] for c in coords), f"{name}{shape}")


def torus3d(x: int, y: int, z: int, link_Bps: float = 100e9) -> Topology:
    """x·y·z dies, wrap-around links per dimension (TPU-style); the whole torus is one domain."""
    return _grid((x, y, z), link_Bps, True, "torus")


def mesh2d(x: int, y: int, link_Bps: float = 100e9) -> Topology:
    """x·y dies with links to the four neighbours (wafer-scale style); one domain."""
    return _grid((x, y), link_Bps, False, "mesh")


def _field(item: Any, key: str, where: str) -> Any:
    if not isinstance(item, Mapping):
        raise ConfigError(f"instance topology JSON: {where} must be an object, got {item!r}")
    if key not in item:
        raise ConfigError(f"instance topology JSON: {where} has no {key!r}")
    return item[key]


def _names(value: Any, where: str) -> list[str]:
    """A list of network node ids (strings or integers), never a string read letter by letter."""
    if not isinstance(value, list) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"instance topology JSON: {where} must be a list of node ids, got {value!r}")
    return [str(v) for v in value]


def _gpus(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ConfigError(
            f"instance topology JSON: {where}.gpus must be an integer in 1..4096, got {value!r}"
        )
    return value


def _instances(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Our form ``{"nodes": [...]}`` (levels innermost first) or AWS DescribeInstanceTopology's
    ``{"Instances": [{"InstanceId", "NetworkNodes"}]}`` (levels outermost first), checked."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"instance topology JSON must be an object, got {type(data).__name__}")
    key = "nodes" if "nodes" in data else "Instances" if "Instances" in data else None
    if key is None or not isinstance(data[key], list) or not data[key]:
        raise ConfigError('instance topology JSON needs a non-empty "nodes" (or "Instances") list')
    out = []
    for i, item in enumerate(data[key]):
        where = f"{key}[{i}]"
        if key == "nodes":
            levels = _names(item.get("network_node_ids", []) if isinstance(item, Mapping) else item, where)
            ident = _field(item, "id", where)
        else:
            levels = list(reversed(_names(_field(item, "NetworkNodes", where), f"{where}.NetworkNodes")))
            ident = _field(item, "InstanceId", where)
        out.append({"id": str(ident), "network_node_ids": levels, "gpus": _gpus(item.get("gpus", 8), where)})
    return out


def from_instance_json(
    data: Mapping[str, Any], nvlink_Bps: float = 450e9, nic_Bps: float = 400e9, uplink_Bps: float = 400e9
) -> Topology:
    """Instances (scale-up domains of ``gpus`` GPUs) under a tree of network nodes.

    ``{"nodes": [{"id", "network_node_ids": [level1, level2, ...], "gpus": 8}], "links": [...]}``:
    level 1 (innermost) is the instance's leaf; level k links to level k+1 (tier spine, kind spine
    for level 2, switch above). Optional ``links`` ``{"source", "target", "tier", "bandwidth_Bps"}``
    add edges between existing ids; one naming an unknown id is a dangling link (ConfigError).
    """
    g, devices = nx.Graph(), []
    for inst in _instances(data):
        iid, levels = inst["id"], inst["network_node_ids"]
        g.add_node(iid, kind="node")
        for k in range(inst["gpus"]):
            dev = f"{iid}/gpu{k}"
            _device(g, dev, "gpu", iid, tuple(reversed(levels)))
            _link(g, dev, iid, "scale_up", nvlink_Bps)
            devices.append(dev)
        for depth, (inner, outer) in enumerate(zip([iid, *levels], levels, strict=False)):
            g.add_node(outer, kind=("leaf", "spine")[min(depth, 1)] if depth < 2 else "switch")
            _link(g, inner, outer, "leaf" if depth == 0 else "spine", nic_Bps if depth == 0 else uplink_Bps)
    links = data.get("links", [])
    if not isinstance(links, list):
        raise ConfigError(f'instance topology JSON: "links" must be a list, got {links!r}')
    for i, link in enumerate(links):
        source, target = (str(_field(link, end, f"links[{i}]")) for end in ("source", "target"))
        tier, bw = link.get("tier", "spine"), link.get("bandwidth_Bps", uplink_Bps)
        if isinstance(bw, bool) or not isinstance(bw, int | float) or not 0 < bw < float("inf"):
            raise ConfigError(f"instance topology JSON: links[{i}].bandwidth_Bps must be > 0, got {bw!r}")
        for end in (source, target):
            if end not in g:
                raise ConfigError(f"dangling link {source!r}–{target!r}: no node {end!r}")
        if tier not in TIERS:
            raise ConfigError(f"link {source!r}–{target!r}: tier must be one of {TIERS}")
        _link(g, source, target, tier, bw)
    return Topology(g, tuple(devices), "instance_topology")


def mark_unavailable(topology: Topology, node_ids: Iterable[str]) -> Topology:
    """A copy with the given devices, or all devices of the given scale-up domains, unavailable."""
    g = topology.graph.copy()
    by_domain: dict[str, list[str]] = {}
    for d in topology.devices:
        by_domain.setdefault(g.nodes[d]["domain"], []).append(d)
    for nid in node_ids:
        if nid in by_domain:
            targets = by_domain[nid]
        elif nid in g and g.nodes[nid]["kind"] in DEVICE_KINDS:
            targets = [nid]
        else:
            raise ConfigError(f"mark_unavailable: {nid!r} is neither a device nor a scale-up domain")
        for d in targets:
            g.nodes[d]["available"] = False
    return Topology(g, topology.devices, topology.name)


def shuffle_hosts(topology: Topology, seed: int) -> Topology:
    """The same graph with its scale-up domains listed in random order (devices in order inside each):
    the host list a scheduler without topology awareness, or a cloud instance list, may hand a job;
    rank order follows it."""
    order = np.random.default_rng(seed).permutation(len(topology.domains))
    devices = np.asarray(topology.devices, dtype=object)
    listed = [str(d) for k in order for d in devices[topology.domain_of == k]]
    return Topology(topology.graph, tuple(listed), f"{topology.name}, hosts shuffled")


def _distances(topology: Topology, weights: Mapping[str, float]) -> tuple[dict[str, int], np.ndarray]:
    """Cached tier-weighted shortest-path costs from every device to every node (scipy's Dijkstra):
    (node id → column, (n_devices, n_nodes) array)."""
    key = ("dist", tuple(sorted(weights.items())))
    if key not in topology._cache:
        nodes = list(topology.graph.nodes)
        col = {n: k for k, n in enumerate(nodes)}
        rows, cols, vals = [], [], []
        for u, v, attrs in topology.graph.edges(data=True):
            rows.append(col[u])
            cols.append(col[v])
            vals.append(float(weights[attrs["tier"]]))
        adj = csr_matrix((vals, (rows, cols)), shape=(len(nodes), len(nodes)))
        dist = dijkstra(adj, directed=False, indices=[col[d] for d in topology.devices])
        topology._cache[key] = (col, dist)
    return topology._cache[key]


def hop_cost_matrix(topology: Topology, tier_weights: Mapping[str, float] | None = None) -> np.ndarray:
    """(n_devices, n_devices) float: H[i, j] = min over paths of Σ_links TIER_WEIGHTS[tier]."""
    weights = dict(tier_weights or TIER_WEIGHTS)
    key = ("H", tuple(sorted(weights.items())))
    if key not in topology._cache:
        col, dist = _distances(topology, weights)
        topology._cache[key] = dist[:, [col[d] for d in topology.devices]]
    return topology._cache[key]


def _next_hops(
    topology: Topology, i: int, j: int, weights: Mapping[str, float]
) -> Callable[[str], list[str]]:
    """Neighbours v of u on a cheapest i → j path: d_i(u) + w(u, v) + d_j(v) = d_i(j)."""
    col, dist = _distances(topology, weights)
    d_src, d_dst, g = dist[i], dist[j], topology.graph
    total = d_src[col[topology.devices[j]]]
    tol = 1e-9 * max(total, 1.0)

    def nxt(u: str) -> list[str]:
        du = d_src[col[u]]
        return [v for v, a in g[u].items() if abs(du + weights[a["tier"]] + d_dst[col[v]] - total) <= tol]

    return nxt


def route(topology: Topology, i: int, j: int, tier_weights: Mapping[str, float] | None = None) -> list[str]:
    """Node ids on one cheapest path from device index ``i`` to ``j`` (the first next hop in
    adjacency order at every node): the route whose hops and latency we report."""
    nxt = _next_hops(topology, i, j, dict(tier_weights or TIER_WEIGHTS))
    path, dst = [topology.devices[i]], topology.devices[j]
    while path[-1] != dst:
        path.append(nxt(path[-1])[0])
    return path


def ecmp_split(
    topology: Topology, i: int, j: int, tier_weights: Mapping[str, float] | None = None
) -> dict[tuple[str, str], float]:
    """Share of a device ``i`` → ``j`` flow on each directed link (u, v), with equal-cost multipath:
    every node splits what reaches it evenly over its next hops on cheapest paths (per-hop ECMP
    hashing of many flows). A link (u, v) is on a cheapest path iff d_i(u) + w(u, v) + d_j(v) = d_i(j)."""
    weights = dict(tier_weights or TIER_WEIGHTS)
    key = ("ecmp", i, j, tuple(sorted(weights.items())))
    if key in topology._cache:
        return topology._cache[key]
    col, dist = _distances(topology, weights)
    nxt, d_src = _next_hops(topology, i, j, weights), dist[i]
    src, dst = topology.devices[i], topology.devices[j]
    inflow, share = {src: 1.0}, {}
    frontier = [src] if src != dst else []
    while frontier:  # in order of distance from src: all of a node's inflow is in when it is expanded
        frontier.sort(key=lambda n: d_src[col[n]])
        u = frontier.pop(0)
        if u == dst:
            continue
        hops_u = nxt(u)
        for v in hops_u:
            share[(u, v)] = inflow[u] / len(hops_u)
            if v not in inflow:
                inflow[v] = 0.0
                frontier.append(v)
            inflow[v] += inflow[u] / len(hops_u)
    topology._cache[key] = share
    return share


def hops(topology: Topology, a: str | int, b: str | int) -> int:
    """Fewest links between two nodes (ids, or device indices)."""
    a_id = topology.devices[a] if isinstance(a, int) else a
    b_id = topology.devices[b] if isinstance(b, int) else b
    return nx.shortest_path_length(topology.graph, a_id, b_id)
