"""Tests for costmodels.network: hand-derived α–β numbers, JAX transformations, properties, errors.

Unless a test says otherwise: S = 1 GB = 1e9 bytes, B = 100 GB/s = 1e11 B/s, α = 5 µs, efficiency 1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodels.errors import ConfigError
from costmodels.network import (
    ALGORITHMS,
    Link,
    all_gather_time_s,
    all_reduce_time_s,
    all_to_all_time_s,
    broadcast_time_s,
    bus_bandwidth_factor,
    collective_time_s,
    hierarchical_all_gather_time_s,
    hierarchical_all_reduce_time_s,
    hierarchical_all_to_all_time_s,
    hierarchical_collective_time_s,
    hierarchical_reduce_scatter_time_s,
    mesh_all_gather_time_s,
    mesh_all_reduce_time_s,
    mesh_all_to_all_time_s,
    mesh_reduce_scatter_time_s,
    reduce_scatter_time_s,
    send_recv_time_s,
)

S, B, ALPHA = 1e9, 100e9, 5e-6
LINK = Link(bandwidth_Bps=B, latency_s=ALPHA, efficiency=1.0)
KIND_ALGORITHMS = [(kind, alg) for kind, algs in ALGORITHMS.items() for alg in algs]


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# ---- one tier, hand derivations -----------------------------------------------------------------


def test_ring_all_reduce_hand():
    """Ring, n = 8: 2·7·5e-6 + 2·(7/8)·1e9/100e9 = 7e-5 + 0.0175 = 0.01757 s."""
    assert float(all_reduce_time_s(S, 8, LINK)) == pytest.approx(0.01757, rel=1e-6)


def test_all_gather_and_reduce_scatter_hand():
    """Ring, n = 8: 7·5e-6 + (7/8)·1e9/100e9 = 3.5e-5 + 0.00875 = 0.008785 s; with α = 0 each is
    exactly half the all-reduce (0.00875 vs 0.0175)."""
    assert float(all_gather_time_s(S, 8, LINK)) == pytest.approx(0.008785, rel=1e-6)
    assert float(reduce_scatter_time_s(S, 8, LINK)) == pytest.approx(0.008785, rel=1e-6)
    no_alpha = Link(B, 0.0)
    half = 0.5 * float(all_reduce_time_s(S, 8, no_alpha))
    assert float(all_gather_time_s(S, 8, no_alpha)) == pytest.approx(half, rel=1e-6)
    assert float(reduce_scatter_time_s(S, 8, no_alpha)) == pytest.approx(half, rel=1e-6)


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("tree", 0.02003),  # 2·3·5e-6 + 2·1e9/1e11 = 3e-5 + 0.02
        ("recursive_doubling", 0.030015),  # 3·(5e-6 + 0.01)
        ("halving_doubling", 0.01753),  # 2·3·5e-6 + 2·(7/8)·0.01 = 3e-5 + 0.0175
    ],
)
def test_other_all_reduce_algorithms_hand(algorithm, expected):
    """n = 8, L(8) = 3: tree 2Lα + 2S/B; recursive doubling L(α + S/B); Rabenseifner 2Lα + 2(7/8)S/B."""
    assert float(all_reduce_time_s(S, 8, LINK, algorithm)) == pytest.approx(expected, rel=1e-6)


def test_log_steps_round_up_for_non_power_of_two():
    """Tree all-reduce, n = 5 and 8 share L = 3 (2·3·α + 2S/B = 0.02003); n = 9 gives L = 4 (0.02004)."""
    assert float(all_reduce_time_s(S, 5, LINK, "tree")) == pytest.approx(0.02003, rel=1e-6)
    assert float(all_reduce_time_s(S, 9, LINK, "tree")) == pytest.approx(0.02004, rel=1e-6)


def test_all_to_all_hand():
    """Pairwise, n = 8: (7/8)·1e9/1e11 + 7·5e-6 = 0.00875 + 3.5e-5 = 0.008785 s.
    Bruck: L(8)·(α + S/(2B)) = 3·(5e-6 + 0.005) = 0.015015 s."""
    assert float(all_to_all_time_s(S, 8, LINK)) == pytest.approx(0.008785, rel=1e-6)
    assert float(all_to_all_time_s(S, 8, LINK, "bruck")) == pytest.approx(0.015015, rel=1e-6)


def test_broadcast_and_send_recv_hand():
    """Broadcast ring n = 8: 7α + S/B = 3.5e-5 + 0.01; tree: 3(α + S/B) = 0.030015.
    send_recv one hop: α + S/B = 0.010005; three hops: 3α + S/B = 0.010015; zero hops: 0."""
    assert float(broadcast_time_s(S, 8, LINK)) == pytest.approx(0.010035, rel=1e-6)
    assert float(broadcast_time_s(S, 8, LINK, "tree")) == pytest.approx(0.030015, rel=1e-6)
    assert float(send_recv_time_s(S, LINK)) == pytest.approx(0.010005, rel=1e-6)
    assert float(send_recv_time_s(S, LINK, hops=3)) == pytest.approx(0.010015, rel=1e-6)
    assert float(send_recv_time_s(S, LINK, hops=0)) == 0.0


def test_efficiency_scales_the_bandwidth_term_only():
    """efficiency 0.5 halves B: 2·7·5e-6 + 2·(7/8)·1e9/50e9 = 7e-5 + 0.035 = 0.03507 s."""
    assert float(all_reduce_time_s(S, 8, Link(B, ALPHA, 0.5))) == pytest.approx(0.03507, rel=1e-6)


@pytest.mark.parametrize(("kind", "algorithm"), KIND_ALGORITHMS)
def test_single_device_is_exactly_zero(kind, algorithm):
    """n = 1 (plain and array) costs exactly 0 for every registered kind and algorithm."""
    assert float(collective_time_s(kind, S, 1, LINK, algorithm)) == 0.0
    assert float(collective_time_s(kind, S, jnp.array(1), LINK, algorithm)) == 0.0
    assert float(collective_time_s(kind, S, 4, LINK, algorithm)) > 0.0


@pytest.mark.parametrize("kind", ["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"])
def test_bus_bandwidth_of_ring_equals_link_bandwidth(kind):
    """With α = 0, ring times are factor·S/B, so nccl-tests busbw = (S/t)·factor equals B exactly."""
    t = collective_time_s(kind, S, 8, Link(B, 0.0), "ring")
    assert float(S / t * bus_bandwidth_factor(kind, 8)) == pytest.approx(B, rel=1e-6)


# ---- two tiers ----------------------------------------------------------------------------------

INNER, OUTER = Link(300e9, 2e-6), Link(25e9, 10e-6)


def test_hierarchical_all_reduce_2x8_hand():
    """a = 8 inner (300 GB/s, 2 µs), b = 2 outer (25 GB/s, 10 µs), ring on both:
    RS = AG = 7·2e-6 + (7/8)·1e9/300e9 = 1.4e-5 + 2.916667e-3;
    AR on 1e9/8 = 1.25e8 over 2: 2·1·1e-5 + 2·(1/2)·1.25e8/25e9 = 2e-5 + 5e-3;
    total = 2·2.930667e-3 + 5.02e-3 = 0.01088133 s."""
    t = hierarchical_all_reduce_time_s(S, 8, 2, INNER, OUTER)
    assert float(t) == pytest.approx(0.0108813333, rel=1e-6)


def test_hierarchical_all_gather_and_reduce_scatter_2x8_hand():
    """Outer on S/8 over 2: 1e-5 + (1/2)·1.25e8/25e9 = 2.51e-3; inner on S over 8: 2.930667e-3;
    both = 5.440667e-3 s."""
    expected = 2.51e-3 + 1.4e-5 + 7 / 8 * 1e9 / 300e9
    for fn in (hierarchical_all_gather_time_s, hierarchical_reduce_scatter_time_s):
        assert float(fn(S, 8, 2, INNER, OUTER)) == pytest.approx(expected, rel=1e-6)


def test_hierarchical_all_to_all_2x8_hand():
    """Inner: 7·2e-6 + (7/8)·1e9/300e9 = 2.930667e-3; outer: 1·1e-5 + (1/2)·1e9/25e9 = 0.02001;
    total 0.02294067 s."""
    expected = 1.4e-5 + 7 / 8 * 1e9 / 300e9 + 1e-5 + 0.5 * 1e9 / 25e9
    assert float(hierarchical_all_to_all_time_s(S, 8, 2, INNER, OUTER)) == pytest.approx(expected, rel=1e-6)


def test_hierarchical_reduces_to_flat_with_one_domain():
    """n_outer = 1: ring RS + AG over 8 = ring all-reduce over 8 on the inner link (outer term is 0)."""
    flat = all_reduce_time_s(S, 8, INNER)
    one_domain = hierarchical_all_reduce_time_s(S, 8, 1, INNER, OUTER)
    assert float(one_domain) == pytest.approx(float(flat), rel=1e-6)
    via_dispatch = hierarchical_collective_time_s("all_reduce", S, 8, 1, INNER, OUTER)
    assert float(via_dispatch) == pytest.approx(float(flat), rel=1e-6)


# ---- mesh and torus -----------------------------------------------------------------------------


def test_torus_4x4_all_reduce_hand():
    """Torus 4×4, bidirectional rings: RS dim 1 on S: 3α + (3/4)·S/(2B) = 1.5e-5 + 3.75e-3;
    RS dim 2 on S/4: 3α + (3/4)·2.5e8/2e11 = 1.5e-5 + 9.375e-4; AG the same;
    total 2·(3e-5 + 4.6875e-3) = 0.009435 s (= 12α + (15/16)·S/B)."""
    assert float(mesh_all_reduce_time_s(S, (4, 4), LINK, True)) == pytest.approx(0.009435, rel=1e-6)
    half = float(mesh_reduce_scatter_time_s(S, (4, 4), LINK, True))
    assert half == pytest.approx(0.0047175, rel=1e-6)
    assert float(mesh_all_gather_time_s(S, (4, 4), LINK, True)) == pytest.approx(half, rel=1e-6)


def test_mesh_4x4_all_reduce_hand_and_slower_than_torus():
    """Mesh 4×4, ring embedded in each line (2 hops/step, one direction): per dimension
    2·3·α + (3/4)·shard/B; RS = 12α + (15/16)·S/B = 6e-5 + 9.375e-3; all-reduce 0.01887 s > 0.009435."""
    mesh = float(mesh_all_reduce_time_s(S, (4, 4), LINK, False))
    assert mesh == pytest.approx(0.01887, rel=1e-6)
    assert mesh > float(mesh_all_reduce_time_s(S, (4, 4), LINK, True))


def test_torus_3d_all_reduce_hand():
    """Torus 2×4×8 (N = 64): β terms telescope to (63/64)·S/B = 9.84375e-3; α: 2·(1+3+7)·5e-6 = 1.1e-4;
    total 9.95375e-3 s."""
    assert float(mesh_all_reduce_time_s(S, (2, 4, 8), LINK, True)) == pytest.approx(9.95375e-3, rel=1e-6)


def test_mesh_all_to_all_bisection_hand():
    """4×4, k = 4: torus bisection k·S/(8B) = 5e-3 beats injection (15/16)·S/(4B) = 2.34e-3;
    plus 6α = 3e-5 → 5.03e-3 s. Mesh: k·S/(4B) = 0.01 + 3e-5 = 0.01003 s. 1×1: 0."""
    assert float(mesh_all_to_all_time_s(S, (4, 4), LINK, True)) == pytest.approx(5.03e-3, rel=1e-6)
    assert float(mesh_all_to_all_time_s(S, (4, 4), LINK, False)) == pytest.approx(0.01003, rel=1e-6)
    assert float(mesh_all_to_all_time_s(S, (1, 1), LINK, True)) == 0.0


def test_mesh_all_to_all_odd_dimension():
    """Torus 3×1: N_a = 1, N_b = 2, 2 links cross: (1·2·S/3)/(2B) = S/(3B) = 3.333e-3, equal to injection
    (2/3)·S/(2B); plus 2α → 3.34333e-3 s."""
    assert float(mesh_all_to_all_time_s(S, (3, 1), LINK, True)) == pytest.approx(1e-2 / 3 + 1e-5, rel=1e-5)


# ---- JAX transformations ------------------------------------------------------------------------


def test_vmap_over_sizes_and_n_matches_loop():
    """vmap over (size, n) pairs equals calling the function once per pair."""
    sizes = jnp.array([0.0, 1e6, 3e8, 1e9, 4e9])
    ns = jnp.array([1, 2, 5, 8, 64])
    for kind, alg in KIND_ALGORITHMS:
        batched = jax.vmap(lambda s, n, k=kind, a=alg: collective_time_s(k, s, n, LINK, a))(sizes, ns)
        pairs = zip(sizes.tolist(), ns.tolist(), strict=True)
        looped = [float(collective_time_s(kind, s, n, LINK, alg)) for s, n in pairs]
        np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-6)


def test_vmap_over_link_pytree_and_dims():
    """Link is a pytree: vmapping over a batch of bandwidths equals the loop; dims may be arrays."""
    bws = jnp.array([25e9, 100e9, 450e9])
    batched = jax.vmap(lambda b: mesh_all_reduce_time_s(S, (jnp.array(4), 4), Link(b, ALPHA), True))(bws)
    looped = [float(mesh_all_reduce_time_s(S, (4, 4), Link(float(b), ALPHA), True)) for b in bws]
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-6)
    assert len(jax.tree_util.tree_leaves(LINK)) == 3


def test_jit_matches_eager_and_does_not_retrace():
    """jit with array n gives the eager value; a second call with new values reuses the trace."""
    traces = []

    def cost(s, n, link):
        traces.append(1)
        return hierarchical_all_reduce_time_s(s, n, 2, link, OUTER) + all_reduce_time_s(s, n, link, "tree")

    fast = jax.jit(cost)
    eager = float(cost(S, 8, LINK))
    traces.clear()
    assert float(fast(S, 8, LINK)) == pytest.approx(eager, rel=1e-6)
    fast(2 * S, 4, Link(50e9, 1e-6, 0.9))
    assert len(traces) == 1


def _ring_all_reduce_of(bandwidth_Bps, latency_s):
    return all_reduce_time_s(S, 8, Link(bandwidth_Bps, latency_s, 0.9))


def test_grad_bandwidth_matches_finite_difference(x64):
    """d t / d B = -2·(7/8)·S/(η·B²) < 0; compared with a central difference at relative step 1e-6."""
    g = float(jax.grad(_ring_all_reduce_of)(B, ALPHA))
    h = B * 1e-6
    fd = float(_ring_all_reduce_of(B + h, ALPHA) - _ring_all_reduce_of(B - h, ALPHA)) / (2 * h)
    assert g < 0
    assert g == pytest.approx(fd, rel=1e-4)
    assert g == pytest.approx(-2 * 7 / 8 * S / (0.9 * B**2), rel=1e-9)


def test_grad_latency_and_efficiency_signs(x64):
    """d t / d α = 2(n-1) = 14 > 0; d t / d η < 0; mesh and hierarchical gradients are finite."""
    assert float(jax.grad(_ring_all_reduce_of, argnums=1)(B, ALPHA)) == pytest.approx(14.0)
    g_eff = jax.grad(lambda e: all_reduce_time_s(S, 8, Link(B, ALPHA, e)))(0.8)
    assert float(g_eff) < 0
    mesh_grads = jax.grad(lambda link: mesh_all_to_all_time_s(S, (4, 4, 2), link, False))(LINK)
    hier_grads = jax.grad(lambda link: hierarchical_all_reduce_time_s(S, 8, 4, INNER, link, "ring", "tree"))(
        OUTER
    )
    for leaf in jax.tree_util.tree_leaves((mesh_grads, hier_grads)):
        assert np.isfinite(float(leaf))
    assert float(hier_grads.bandwidth_Bps) < 0 < float(hier_grads.latency_s)


# ---- properties ---------------------------------------------------------------------------------

_CASES = {f"{k}/{a}": functools.partial(collective_time_s, k, algorithm=a) for k, a in KIND_ALGORITHMS}
_CASES |= {
    f"hier/{k}": (lambda s, n, link, k=k: hierarchical_collective_time_s(k, s, n, 3, INNER, link))
    for k in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
}
_CASES |= {
    f"mesh/{f.__name__}/{w}": (lambda s, n, link, f=f, w=w: f(s, (n, 4), link, w))
    for f in (mesh_all_reduce_time_s, mesh_all_to_all_time_s)
    for w in (True, False)
}


@functools.cache
def _jitted(name):
    return jax.jit(lambda s, n, b, a: _CASES[name](s, n, Link(b, a, 0.8)))


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(_CASES)),
    n=st.integers(1, 4096),
    sizes=st.lists(st.floats(0, 1e12), min_size=2, max_size=2),
    bws=st.lists(st.floats(1e8, 1e13), min_size=2, max_size=2),
    alpha=st.floats(0, 1e-4),
)
def test_monotone_in_size_and_bandwidth(name, n, sizes, bws, alpha):
    """t is non-decreasing in size and non-increasing in bandwidth (affine α–β terms, positive slopes)."""
    (s_lo, s_hi), (b_lo, b_hi) = sorted(sizes), sorted(bws)
    f = _jitted(name)
    assert float(f(s_lo, n, b_lo, alpha)) <= float(f(s_hi, n, b_lo, alpha)) * (1 + 1e-6)
    assert float(f(s_hi, n, b_hi, alpha)) <= float(f(s_hi, n, b_lo, alpha)) * (1 + 1e-6)


# ---- errors -------------------------------------------------------------------------------------


def test_unknown_algorithm_lists_valid_names():
    with pytest.raises(ConfigError, match="'butterfly'") as info:
        all_reduce_time_s(S, 8, LINK, "butterfly")
    for name in ALGORITHMS["all_reduce"]:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="ring, recursive_doubling"):
        hierarchical_all_reduce_time_s(S, 8, 2, INNER, OUTER, inner_algorithm="tree")


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ConfigError, match=r"'allreduce'.*all_reduce, all_gather"):
        collective_time_s("allreduce", S, 8, LINK)
    with pytest.raises(ConfigError, match="'broadcast'"):
        hierarchical_collective_time_s("broadcast", S, 8, 2, INNER, OUTER)


@pytest.mark.parametrize(
    "call",
    [
        lambda: all_reduce_time_s(-1.0, 8, LINK),
        lambda: all_gather_time_s(S, 0, LINK),
        lambda: hierarchical_all_reduce_time_s(S, 0, 2, INNER, OUTER),
        lambda: hierarchical_all_to_all_time_s(S, 8, 0, INNER, OUTER),
        lambda: mesh_all_reduce_time_s(S, (4, 0), LINK, True),
        lambda: mesh_all_to_all_time_s(-5, (4, 4), LINK, True),
        lambda: mesh_all_reduce_time_s(S, (), LINK, True),
        lambda: send_recv_time_s(S, LINK, hops=-1),
        lambda: Link(0.0, ALPHA),
        lambda: Link(B, -1e-6),
        lambda: Link(B, ALPHA, 1.5),
    ],
)
def test_bad_plain_numbers_raise_config_error(call):
    with pytest.raises(ConfigError):
        call()


def test_arrays_are_not_checked():
    """Traced/array inputs skip the plain-number checks (no error, no host sync)."""
    jax.jit(lambda s: all_reduce_time_s(s, 8, LINK))(jnp.array(-1.0))


def test_every_topology_a_preset_may_declare_has_a_fabric_formula() -> None:
    """Hardware validation accepts exactly the topologies the fabric prices: none falls through."""
    from costmodels.fabric import FABRICS
    from costmodels.hardware import TOPOLOGIES

    assert set(FABRICS) == set(TOPOLOGIES)
