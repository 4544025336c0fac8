"""Collective-communication time model: α–β costs of collectives on one tier, two tiers, mesh/torus.

Every time is ``steps · α + bytes_on_wire / B`` with ``α = link.latency_s`` (start-up per message
step / per hop) and ``B = link.bandwidth_Bps · link.efficiency`` (achieved bandwidth, per device,
one direction). Functions are pure JAX: sizes, group sizes and link fields may be arrays (``jit``,
``vmap``); algorithm, topology and collective kind are Python strings/bools (static). ``grad`` is
meant w.r.t. bandwidth, latency, efficiency and size; group sizes are discrete and not
differentiated (``ceil(log2 n)`` is exact for integer ``n``). Times for a single device are exactly 0.

``size_bytes`` is always the full buffer per device:
  all_reduce: the buffer each device holds (input size = output size);
  all_gather: the gathered OUTPUT per device (each device contributes ``size_bytes / n``);
  reduce_scatter: the INPUT per device (each device keeps ``size_bytes / n``);
  all_to_all: the send buffer per device (``size_bytes / n`` to each device, itself included);
  broadcast: the root's buffer; send_recv: the message.

Symbols below: n devices, S = size_bytes, L(n) = ceil(log2 n). Sources:
  [NCCL]  NVIDIA nccl-tests, doc/PERFORMANCE.md, "bus bandwidth": busbw = algbw · factor with factor
          2(n-1)/n for all-reduce, (n-1)/n for all-gather, reduce-scatter, all-to-all, 1 otherwise.
  [TRG05] Thakur, Rabenseifner & Gropp 2005, "Optimization of collective communication operations
          in MPICH", IJHPCA 19(1) — ring, recursive doubling/halving, Bruck, binomial-tree costs.
  [PY09]  Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters of
          workstations", JPDC 69(2) — ring all-reduce is bandwidth optimal: 2(n-1)/n · S / B.
  [SST09] Sanders, Speck & Träff 2009, "Two-tree algorithms for full bandwidth broadcast, reduction
          and scan", and Jeaugey 2019 (NVIDIA blog, "Massively scale your deep learning training with
          NCCL 2.4") — NCCL's double binary tree.
  [M18]   Mikami et al. 2018, "Massively distributed SGD: ImageNet/ResNet-50 training in a flash"
          (2D-torus all-reduce: reduce-scatter, all-reduce across, all-gather) — the standard
          hierarchical all-reduce across scale-up domains.
  [K21]   Kumar et al. 2021, "Exploring the limits of concurrency in ML training on Google TPUs"
          (MLSys), and Ying et al. 2018, "Image classification at supercomputer scale" — multi-
          dimensional all-reduce on TPU tori: per dimension a bidirectional ring.
  [DT04]  Dally & Towles 2004, "Principles and Practices of Interconnection Networks":
          bisection bound; uniform traffic loads a k-ary torus channel k/8, a mesh channel k/4.
  [R22]   Rajbhandari et al. 2022 (DeepSpeed-MoE) and Hwang et al. 2023 (Tutel): hierarchical
          (two-phase) all-to-all.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from costmodels.errors import ConfigError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Link:
    """One network tier as seen by one device; a JAX pytree whose three fields are leaves.

    bandwidth_Bps: bytes/s per device, one direction (NVLink "per direction" figure, or one NIC
        per device on a rail). For mesh/torus functions: per link (neighbour), one direction.
    latency_s: α, start-up time per message step (or per hop on a mesh/torus).
    efficiency: achievable fraction of ``bandwidth_Bps`` (0, 1]; belongs to the hardware.
    """

    bandwidth_Bps: ArrayLike
    latency_s: ArrayLike = 0.0
    efficiency: ArrayLike = 1.0

    def __post_init__(self) -> None:
        # Only concrete Python numbers are checked; arrays and tracers pass through.
        checks = (
            ("bandwidth_Bps", lambda v: v > 0, "> 0"),
            ("latency_s", lambda v: v >= 0, ">= 0"),
            ("efficiency", lambda v: 0 < v <= 1, "in (0, 1]"),
        )
        for name, ok, rule in checks:
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not ok(value):
                raise ConfigError(f"Link.{name} must be {rule}, got {value!r}")


Formula = Callable[[jax.Array, jax.Array, Link], jax.Array]


def _wire_s(bytes_: ArrayLike, link: Link) -> jax.Array:
    """β term: bytes over the achieved bandwidth ``bandwidth_Bps · efficiency``."""
    return bytes_ / (link.bandwidth_Bps * link.efficiency)


def _ceil_log2(n: jax.Array) -> jax.Array:
    """ceil(log2 n), exact for integer n ≥ 1 (via the exponent of n-1; no float log rounding)."""
    _, exponent = jnp.frexp(jnp.maximum(n - 1.0, 0.0))
    return exponent.astype(n.dtype)


def _as_float(x: ArrayLike) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _at_least_1(n: ArrayLike) -> jax.Array:
    """Group size as a float, clipped to >= 1 so that divisions stay finite for array inputs < 1."""
    return jnp.maximum(_as_float(n), 1.0)


def _check_concrete(name: str, value: ArrayLike, minimum: float) -> None:
    """Raise ConfigError for a plain number below ``minimum``; arrays are not checked (traced)."""
    if isinstance(value, numbers.Real) and not value >= minimum:
        raise ConfigError(f"{name} must be >= {minimum:g}, got {value!r}")


# ---- one tier: formulas, (S, n, link) -> seconds, before the n == 1 guard ------------------------


def _ring_all_reduce(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Ring = reduce-scatter + all-gather: 2(n-1)·α + 2(n-1)/n · S/B  [PY09; TRG05; NCCL]."""
    return 2 * (n - 1) * link.latency_s + _wire_s(2 * (n - 1) / n * s, link)


def _tree_all_reduce(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """NCCL double binary tree, pipelined: 2·L(n)·α + 2·S/B  [SST09; Jeaugey 2019].

    Approximation: reduce up, then broadcast down each tree, L(n) levels each; with many chunks the
    pipeline fill is the latency term and every device sends about S per phase (it is inner node of
    one tree and leaf of the other, each tree carrying S/2), so 2·S/B. Pipeline chunking overheads
    and NCCL's intra-node chains are ignored.
    """
    return 2 * _ceil_log2(n) * link.latency_s + _wire_s(2 * s, link)


def _recursive_doubling_all_reduce(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Recursive doubling (short messages): L(n)·(α + S/B)  [TRG05]; exact for n = 2^k."""
    return _ceil_log2(n) * (link.latency_s + _wire_s(s, link))


def _halving_doubling_all_reduce(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Rabenseifner: recursive-halving RS + doubling AG: 2·L(n)·α + 2(n-1)/n · S/B  [TRG05]."""
    return 2 * _ceil_log2(n) * link.latency_s + _wire_s(2 * (n - 1) / n * s, link)


def _ring_gather_or_scatter(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Ring all-gather (S = output) or reduce-scatter (S = input): (n-1)·α + (n-1)/n · S/B
    [TRG05; NCCL factor (n-1)/n]."""
    return (n - 1) * link.latency_s + _wire_s((n - 1) / n * s, link)


def _recursive_gather_or_scatter(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Recursive doubling all-gather / recursive halving reduce-scatter: L(n)·α + (n-1)/n · S/B
    [TRG05]; exact for n = 2^k, other n take L(n) steps (approximation)."""
    return _ceil_log2(n) * link.latency_s + _wire_s((n - 1) / n * s, link)


def _pairwise_all_to_all(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Pairwise exchange, step k sends S/n to rank i+k (ring-shifted partners): (n-1)·α + (n-1)/n · S/B
    [TRG05 (long messages); NCCL factor (n-1)/n]. Assumes a switched (full-bisection) tier."""
    return (n - 1) * link.latency_s + _wire_s((n - 1) / n * s, link)


def _bruck_all_to_all(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Bruck (short messages): L(n)·(α + S/(2B)), each step forwards about half the buffer [TRG05]."""
    return _ceil_log2(n) * (link.latency_s + _wire_s(s / 2, link))


def _ring_broadcast(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Pipelined ring/chain: (n-1)·α + S/B, the many-chunk limit (per-chunk start-ups ignored)
    [NCCL: ring broadcast is a pipelined chain, bus factor 1]."""
    return (n - 1) * link.latency_s + _wire_s(s, link)


def _tree_broadcast(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Binomial tree: L(n)·(α + S/B)  [TRG05, short messages]."""
    return _ceil_log2(n) * (link.latency_s + _wire_s(s, link))


def _scatter_allgather_broadcast(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """van de Geijn: binomial scatter + recursive-doubling all-gather: 2·L(n)·α + 2(n-1)/n · S/B
    [TRG05, long messages, n = 2^k]."""
    return 2 * _ceil_log2(n) * link.latency_s + _wire_s(2 * (n - 1) / n * s, link)


def _direct_send_recv(s: jax.Array, n: jax.Array, link: Link) -> jax.Array:
    """Point-to-point along a path of n devices (n-1 hops, cut-through): (n-1)·α + S/B."""
    return (n - 1) * link.latency_s + _wire_s(s, link)


# kind -> algorithm -> formula; the first algorithm of each kind is its default.
_FLAT: Mapping[str, Mapping[str, Formula]] = MappingProxyType(
    {
        "all_reduce": {
            "ring": _ring_all_reduce,
            "tree": _tree_all_reduce,
            "recursive_doubling": _recursive_doubling_all_reduce,
            "halving_doubling": _halving_doubling_all_reduce,
        },
        "all_gather": {"ring": _ring_gather_or_scatter, "recursive_doubling": _recursive_gather_or_scatter},
        "reduce_scatter": {
            "ring": _ring_gather_or_scatter,
            "recursive_doubling": _recursive_gather_or_scatter,
        },
        "all_to_all": {"ring": _pairwise_all_to_all, "bruck": _bruck_all_to_all},
        "broadcast": {
            "ring": _ring_broadcast,
            "tree": _tree_broadcast,
            "scatter_allgather": _scatter_allgather_broadcast,
        },
        "send_recv": {"direct": _direct_send_recv},
    }
)

#: Valid algorithm names per collective kind (the first is the default).
ALGORITHMS: Mapping[str, tuple[str, ...]] = MappingProxyType({k: tuple(v) for k, v in _FLAT.items()})


def _lookup(kind: str, algorithm: str | None) -> Formula:
    if kind not in _FLAT:
        raise ConfigError(f"unknown collective kind {kind!r}; valid kinds: {', '.join(_FLAT)}")
    by_name = _FLAT[kind]
    name = next(iter(by_name)) if algorithm is None else algorithm
    if name not in by_name:
        raise ConfigError(f"unknown algorithm {name!r} for {kind}; valid algorithms: {', '.join(by_name)}")
    return by_name[name]


def collective_time_s(
    kind: str, size_bytes: ArrayLike, n: ArrayLike, link: Link, algorithm: str | None = None
) -> jax.Array:
    """Time of collective ``kind`` (a key of ``ALGORITHMS``) over ``n`` devices on one tier.

    ``algorithm=None`` takes the kind's default ("ring"; "direct" for send_recv, where ``n`` counts
    the devices on the path, so n = 2 is one hop). Raises ConfigError for an unknown kind or
    algorithm, or for a plain-number size < 0 or n < 1. Exactly 0 where n == 1.
    """
    formula = _lookup(kind, algorithm)
    _check_concrete("size_bytes", size_bytes, 0)
    _check_concrete("n", n, 1)
    s, n_f = _as_float(size_bytes), _as_float(n)
    n_safe = jnp.where(n_f > 1, n_f, 2.0)  # keeps the unused branch (and its gradient) finite for n < 1
    return jnp.where(n_f > 1, formula(s, n_safe, link), 0.0)


def all_reduce_time_s(size_bytes: ArrayLike, n: ArrayLike, link: Link, algorithm: str = "ring") -> jax.Array:
    """All-reduce of an S-byte buffer. ring 2(n-1)α + 2(n-1)/n·S/B; tree 2L(n)α + 2S/B;
    recursive_doubling L(n)(α + S/B); halving_doubling 2L(n)α + 2(n-1)/n·S/B (sources at formulas)."""
    return collective_time_s("all_reduce", size_bytes, n, link, algorithm)


def all_gather_time_s(size_bytes: ArrayLike, n: ArrayLike, link: Link, algorithm: str = "ring") -> jax.Array:
    """All-gather, S = gathered OUTPUT per device. ring (n-1)α + (n-1)/n·S/B; recursive_doubling
    L(n)α + (n-1)/n·S/B  [TRG05]."""
    return collective_time_s("all_gather", size_bytes, n, link, algorithm)


def reduce_scatter_time_s(
    size_bytes: ArrayLike, n: ArrayLike, link: Link, algorithm: str = "ring"
) -> jax.Array:
    """Reduce-scatter, S = INPUT per device. ring (n-1)α + (n-1)/n·S/B; recursive_doubling (recursive
    halving) L(n)α + (n-1)/n·S/B  [TRG05]. Reduction arithmetic is not included."""
    return collective_time_s("reduce_scatter", size_bytes, n, link, algorithm)


def all_to_all_time_s(size_bytes: ArrayLike, n: ArrayLike, link: Link, algorithm: str = "ring") -> jax.Array:
    """All-to-all, S = send buffer per device. ring (pairwise exchange) (n-1)α + (n-1)/n·S/B;
    bruck L(n)(α + S/(2B))  [TRG05]."""
    return collective_time_s("all_to_all", size_bytes, n, link, algorithm)


def broadcast_time_s(size_bytes: ArrayLike, n: ArrayLike, link: Link, algorithm: str = "ring") -> jax.Array:
    """Broadcast of S bytes from one root. ring (pipelined) (n-1)α + S/B; tree (binomial)
    L(n)(α + S/B); scatter_allgather 2L(n)α + 2(n-1)/n·S/B  [TRG05; NCCL]."""
    return collective_time_s("broadcast", size_bytes, n, link, algorithm)


def send_recv_time_s(size_bytes: ArrayLike, link: Link, hops: ArrayLike = 1) -> jax.Array:
    """Point-to-point message over ``hops`` links, cut-through: hops·α + S/B; 0 for hops == 0."""
    _check_concrete("hops", hops, 0)
    return collective_time_s("send_recv", size_bytes, _as_float(hops) + 1.0, link)


_BUS_FACTOR: Mapping[str, Callable[[jax.Array], jax.Array]] = MappingProxyType(
    {
        "all_reduce": lambda m: 2 * (m - 1) / m,
        "all_gather": lambda m: (m - 1) / m,
        "reduce_scatter": lambda m: (m - 1) / m,
        "all_to_all": lambda m: (m - 1) / m,
        "broadcast": jnp.ones_like,
        "send_recv": jnp.ones_like,
    }
)


def bus_bandwidth_factor(kind: str, n: ArrayLike) -> jax.Array:
    """nccl-tests busbw/algbw factor [NCCL]: busbw = (S/t)·factor, comparable to link bandwidth."""
    _lookup(kind, None)
    return _BUS_FACTOR[kind](_as_float(n))


# ---- two tiers: n_inner devices per scale-up domain, n_outer domains over the scale-out tier ----
# The outer Link is per device: rail-optimized clusters give each device its own NIC to a rail
# switch, so the n_inner outer collectives (one per rail) run in parallel without sharing a NIC.
# Where k devices share one NIC, pass bandwidth_Bps = NIC bandwidth / k.


def hierarchical_all_reduce_time_s(
    size_bytes: ArrayLike,
    n_inner: ArrayLike,
    n_outer: ArrayLike,
    inner: Link,
    outer: Link,
    inner_algorithm: str = "ring",
    outer_algorithm: str = "ring",
) -> jax.Array:
    """Intra reduce-scatter(S) + inter all-reduce(S/n_inner) + intra all-gather(S)  [M18; NCCL/Megatron].

    Ring on both tiers: 2(a-1)α_i + 2(a-1)/a·S/B_i + 2(b-1)α_o + 2(b-1)/b·S/(a·B_o), a = n_inner,
    b = n_outer; only S/n_inner per device crosses the slow tier. The three phases are summed (not
    overlapped); NCCL's multi-node ring pipelines both tiers, so it approaches the larger of the
    inner and outer terms instead of their sum.
    """
    _check_concrete("size_bytes", size_bytes, 0)
    _check_concrete("n_inner", n_inner, 1)
    rs = reduce_scatter_time_s(size_bytes, n_inner, inner, inner_algorithm)
    ar = all_reduce_time_s(_as_float(size_bytes) / _at_least_1(n_inner), n_outer, outer, outer_algorithm)
    return rs + ar + all_gather_time_s(size_bytes, n_inner, inner, inner_algorithm)


def hierarchical_all_gather_time_s(
    size_bytes: ArrayLike,
    n_inner: ArrayLike,
    n_outer: ArrayLike,
    inner: Link,
    outer: Link,
    inner_algorithm: str = "ring",
    outer_algorithm: str = "ring",
) -> jax.Array:
    """Inter all-gather (output S/n_inner, among same-rank devices) then intra all-gather (output S).

    Outer first so that only (b-1)/b·S/a crosses the slow tier per device  [M18, reversed RS]."""
    _check_concrete("size_bytes", size_bytes, 0)
    _check_concrete("n_inner", n_inner, 1)
    outer_t = all_gather_time_s(_as_float(size_bytes) / _at_least_1(n_inner), n_outer, outer, outer_algorithm)
    return outer_t + all_gather_time_s(size_bytes, n_inner, inner, inner_algorithm)


def hierarchical_reduce_scatter_time_s(
    size_bytes: ArrayLike,
    n_inner: ArrayLike,
    n_outer: ArrayLike,
    inner: Link,
    outer: Link,
    inner_algorithm: str = "ring",
    outer_algorithm: str = "ring",
) -> jax.Array:
    """Intra reduce-scatter (input S) then inter reduce-scatter (input S/n_inner)  [M18]."""
    _check_concrete("size_bytes", size_bytes, 0)
    _check_concrete("n_inner", n_inner, 1)
    inner_t = reduce_scatter_time_s(size_bytes, n_inner, inner, inner_algorithm)
    return inner_t + reduce_scatter_time_s(
        _as_float(size_bytes) / _at_least_1(n_inner), n_outer, outer, outer_algorithm
    )


def hierarchical_all_to_all_time_s(
    size_bytes: ArrayLike,
    n_inner: ArrayLike,
    n_outer: ArrayLike,
    inner: Link,
    outer: Link,
    inner_algorithm: str = "ring",
    outer_algorithm: str = "ring",
) -> jax.Array:
    """Two-phase all-to-all [R22]: intra all-to-all of S (regroup by destination rail), then inter
    all-to-all of S among same-rank devices.

    Of each device's S bytes, (n_outer-1)/n_outer go to other domains and cross the slow tier once
    (same as a flat all-to-all); the inner phase moves (n_inner-1)/n_inner·S. Ring on both tiers:
    (a-1)α_i + (a-1)/a·S/B_i + (b-1)α_o + (b-1)/b·S/B_o. Phases are not overlapped.
    """
    inner_t = all_to_all_time_s(size_bytes, n_inner, inner, inner_algorithm)
    return inner_t + all_to_all_time_s(size_bytes, n_outer, outer, outer_algorithm)


_HIERARCHICAL = MappingProxyType(
    {
        "all_reduce": hierarchical_all_reduce_time_s,
        "all_gather": hierarchical_all_gather_time_s,
        "reduce_scatter": hierarchical_reduce_scatter_time_s,
        "all_to_all": hierarchical_all_to_all_time_s,
    }
)


def hierarchical_collective_time_s(
    kind: str,
    size_bytes: ArrayLike,
    n_inner: ArrayLike,
    n_outer: ArrayLike,
    inner: Link,
    outer: Link,
    inner_algorithm: str = "ring",
    outer_algorithm: str = "ring",
) -> jax.Array:
    """Dispatch a two-tier collective by kind (all_reduce, all_gather, reduce_scatter, all_to_all)."""
    if kind not in _HIERARCHICAL:
        valid = ", ".join(_HIERARCHICAL)
        raise ConfigError(f"unknown hierarchical collective {kind!r}; valid kinds: {valid}")
    return _HIERARCHICAL[kind](size_bytes, n_inner, n_outer, inner, outer, inner_algorithm, outer_algorithm)


# ---- mesh (wraparound=False) and torus (wraparound=True), link = one neighbour link -------------


def _check_dims(dims: Sequence[ArrayLike]) -> tuple[jax.Array, ...]:
    """Plain-number dims < 1 raise ConfigError; array dims < 1 are treated as 1 (a no-op dimension)."""
    if len(dims) < 1:
        raise ConfigError(f"dims must name at least one dimension, got {dims!r}")
    for i, k in enumerate(dims):
        _check_concrete(f"dims[{i}]", k, 1)
    return tuple(_at_least_1(k) for k in dims)


def _dim_ring_s(shard: jax.Array, k: jax.Array, link: Link, wraparound: bool) -> jax.Array:
    """Reduce-scatter (input ``shard``) or all-gather (output ``shard``) along one dimension of k.

    Torus: bidirectional ring, half the data each way [K21]: (k-1)α + (k-1)/k · shard/(2B).
    Mesh (a line): a unidirectional ring embedded in the line (0→2→4…→5→3→1→0), which uses every
    directed link exactly once but spans 2 hops per step for k > 2: 2(k-1)α + (k-1)/k · shard/B.
    (A finely pipelined bidirectional line algorithm could approach the torus's bandwidth term at a
    much larger latency; not modelled.)
    """
    if wraparound:
        return (k - 1) * link.latency_s + _wire_s((k - 1) / k * shard / 2, link)
    hops = jnp.where(k > 2, 2.0, 1.0)
    return (k - 1) * hops * link.latency_s + _wire_s((k - 1) / k * shard, link)


def _mesh_rs_s(size: jax.Array, dims: tuple[jax.Array, ...], link: Link, wraparound: bool) -> jax.Array:
    """Σ_i ring_i(S / Π_{j<i} d_j): dimension-ordered reduce-scatter [K21; Ying et al. 2018].

    With one link type the β terms telescope to (N-1)/N · S/(2B) (torus), (N-1)/N · S/B (mesh), N = Π d.
    All-gather in reverse dimension order moves the same bytes per dimension, so costs the same.
    """
    total, shard = jnp.zeros(()), size
    for k in dims:
        total = total + _dim_ring_s(shard, k, link, wraparound)
        shard = shard / k
    return total


def mesh_reduce_scatter_time_s(
    size_bytes: ArrayLike, dims: Sequence[ArrayLike], link: Link, wraparound: bool
) -> jax.Array:
    """Reduce-scatter of S (input per device) over a 1/2/3-D mesh or torus, one dimension at a time.

    Torus: Σ_i (d_i-1)α + (N-1)/N·S/(2B); mesh: Σ_i 2(d_i-1)α (1 hop where d_i = 2) + (N-1)/N·S/B.
    """
    _check_concrete("size_bytes", size_bytes, 0)
    return _mesh_rs_s(_as_float(size_bytes), _check_dims(dims), link, wraparound)


def mesh_all_gather_time_s(
    size_bytes: ArrayLike, dims: Sequence[ArrayLike], link: Link, wraparound: bool
) -> jax.Array:
    """All-gather to S (output per device), dimensions in reverse order; same cost as reduce-scatter."""
    return mesh_reduce_scatter_time_s(size_bytes, dims, link, wraparound)


def mesh_all_reduce_time_s(
    size_bytes: ArrayLike, dims: Sequence[ArrayLike], link: Link, wraparound: bool
) -> jax.Array:
    """Reduce-scatter along d_1..d_D, then all-gather along d_D..d_1 [K21]; torus 4×4, S, α, B:
    2·(3+3)·α + (15/16)·S/B. Dimensions run one after another (not concurrently)."""
    return 2 * mesh_reduce_scatter_time_s(size_bytes, dims, link, wraparound)


def mesh_all_to_all_time_s(
    size_bytes: ArrayLike, dims: Sequence[ArrayLike], link: Link, wraparound: bool
) -> jax.Array:
    """All-to-all of S per device (S/N to each device) on a mesh/torus, bandwidth-bound [DT04].

    Bisection: cut the longest dimension k = max d_i into halves of N_a = floor(k/2)·N/k and
    N_b = N - N_a devices; N_a·N_b·S/N bytes cross each way over c·N/k links (c = 2 torus, 1 mesh):
    t_bis = N_a·N_b·S·k / (c·N²·B) — for even k, k·S/(8B) torus and k·S/(4B) mesh (channel loads
    k/8, k/4 of [DT04]). Injection: (N-1)/N·S over p ports, p = 2·D' (torus) or D' (mesh corner),
    D' = number of dimensions > 1. t = Σ_i (d_i-1)·α + max(t_bis, t_inj); the α term assumes a
    dimension-ordered exchange with d_i - 1 message steps per dimension.
    """
    _check_concrete("size_bytes", size_bytes, 0)
    ks, s = _check_dims(dims), _as_float(size_bytes)
    n, k = jnp.prod(jnp.stack(ks)), jnp.max(jnp.stack(ks))
    c = 2.0 if wraparound else 1.0
    n_a = jnp.floor(k / 2) * n / k
    t_bis = _wire_s(n_a * (n - n_a) * s * k / (c * n * n), link)
    ports = c * jnp.maximum(sum(jnp.where(d > 1, 1.0, 0.0) for d in ks), 1.0)
    t_inj = _wire_s((n - 1) / n * s / ports, link)
    latency = sum((d - 1) * link.latency_s for d in ks)
    return jnp.where(n > 1, latency + jnp.maximum(t_bis, t_inj), 0.0)
