"""The fabric: what a parallel group's collectives and sends cost on a device preset's links.

A group of ``n`` ranks spaced ``stride`` apart in rank order spans ``inner`` devices of a scale-up
domain and ``outer`` domains (:func:`tiers`); the scale-up link is the preset's ``scale_up_*``, the
scale-out link its ``scale_out_*`` per device (divided by the oversubscription). Every topology a
preset may declare (``costmodels.hardware.TOPOLOGIES``; validation rejects any other) has its
formula in :data:`FABRICS`:

* ``switched`` (NVLink + NVSwitch, an InfiniBand or Ethernet fabric): rings on both tiers, composed
  hierarchically (``network.hierarchical_collective_time_s``: reduce-scatter inside, all-reduce of
  S/inner across, all-gather inside; Mikami et al. 2018, NCCL).
* ``fully_connected`` (AMD xGMI: a direct link to every peer of the domain) and ``torus3d`` (TPU
  ICI): priced as ``switched`` with the device's aggregate scale-up bandwidth. An assumption, stated
  here and in the README: a group smaller than the domain reaches only its share of a fully
  connected device's links, and dimension-ordered rings on a torus reach the aggregate only when all
  dimensions run at once; no measurement of either device is in the validation set yet.
* ``mesh2d`` (a wafer's dies): dimension-ordered collectives on the group's near-square sub-mesh
  (``network.mesh_*``, no wraparound), then a ring across wafers.

Every collective call (n > 1) also pays the library's base latency ``collective_base_latency_s`` once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from costmodels import network
from costmodels.hardware import Hardware

Array = Any
# (kind, size, inner, outer, scale-up link, scale-out link) -> seconds
Fabric = Callable[[str, Array, Array, Array, network.Link, network.Link], Array]


def tiers(hw: Hardware, stride: Array, size: Array) -> tuple[Array, Array]:
    """(devices of a group inside one scale-up domain, domains it spans) for a group of ``size`` ranks
    spaced ``stride`` apart in rank order."""
    inner = jnp.clip(hw.scale_up_domain_size / stride, 1.0, size)
    inner = jnp.where(stride >= hw.scale_up_domain_size, 1.0, inner)
    return inner, size / inner


def links(hw: Hardware) -> tuple[network.Link, network.Link]:
    """The scale-up link and the scale-out link per device (bandwidth / oversubscription)."""
    up = network.Link(hw.scale_up_bandwidth_Bps, hw.scale_up_latency_s, hw.collective_efficiency)
    out = network.Link(
        hw.scale_out_bandwidth_Bps / hw.scale_out_oversubscription,
        hw.scale_out_latency_s,
        hw.collective_efficiency,
    )
    return up, out


def _submesh(n: Array) -> tuple[Array, Array]:
    """The near-square a × b sub-mesh of ``n`` dies a group is placed on (a a power of two ≤ √n)."""
    a = 2.0 ** jnp.floor(jnp.log2(jnp.sqrt(jnp.maximum(n, 1.0))))
    return a, jnp.maximum(n, 1.0) / a


def _mesh_hierarchical(
    kind: str, size: Array, inner: Array, outer: Array, up: network.Link, out: network.Link
) -> Array:
    """Dimension-ordered collectives on the group's sub-mesh (``network.mesh_*``, no wraparound),
    composed with a ring across wafers as the switched hierarchy composes its two tiers (Mikami et al.
    2018): all-reduce = mesh reduce-scatter + cross-wafer all-reduce of S/inner + mesh all-gather."""
    dims = _submesh(inner)
    if kind == "all_reduce":
        return (
            network.mesh_reduce_scatter_time_s(size, dims, up, False)
            + network.all_reduce_time_s(size / inner, outer, out)
            + network.mesh_all_gather_time_s(size, dims, up, False)
        )
    if kind == "all_gather":
        return network.all_gather_time_s(size / inner, outer, out) + network.mesh_all_gather_time_s(
            size, dims, up, False
        )
    if kind == "reduce_scatter":
        return network.mesh_reduce_scatter_time_s(size, dims, up, False) + network.reduce_scatter_time_s(
            size / inner, outer, out
        )
    if kind == "all_to_all":
        return network.mesh_all_to_all_time_s(size, dims, up, False) + network.all_to_all_time_s(
            size, outer, out
        )
    raise ValueError(f"unknown collective {kind!r}")


FABRICS: dict[str, Fabric] = {
    "switched": network.hierarchical_collective_time_s,
    "fully_connected": network.hierarchical_collective_time_s,
    "torus3d": network.hierarchical_collective_time_s,
    "mesh2d": _mesh_hierarchical,
}


def collective_s(kind: str, hw: Hardware, size: Array, stride: Array, n: Array) -> Array:
    """A collective (``kind``: all_reduce, all_gather, reduce_scatter, all_to_all) of ``size`` bytes
    over a group of ``n`` ranks spaced ``stride`` apart, by the preset's fabric (:data:`FABRICS`),
    plus one base latency of the collective library."""
    inner, outer = tiers(hw, stride, n)
    up, out = links(hw)
    base = jnp.where(n > 1, hw.collective_base_latency_s, 0.0)  # one library call, whatever its tiers
    return base + FABRICS[hw.topology](kind, size, inner, outer, up, out)


def p2p_s(hw: Hardware, size: Array, stride: Array) -> Array:
    """One send/recv between neighbouring ranks ``stride`` apart (inside the domain or across)."""
    up, out = links(hw)
    inside = stride < hw.scale_up_domain_size
    return jnp.where(inside, network.send_recv_time_s(size, up), network.send_recv_time_s(size, out))
