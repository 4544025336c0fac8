"""The auto-sharding ILP against the public IOPDDL example and against brute force on small graphs."""

from __future__ import annotations

import importlib.util
import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from costmodels.errors import ConfigError
from search.sharding_ilp import (
    Edge,
    Node,
    RepeatGroup,
    ShardingProblem,
    evaluate,
    live_steps,
    load_iopddl,
    solve,
)

FIXTURE = Path(__file__).parent / "data" / "iopddl_example.json"


@pytest.fixture(scope="module")
def example() -> ShardingProblem:
    return load_iopddl(FIXTURE)


# --- brute force (independent of the module: memory summed at every integer step) -----------------


def peak(problem: ShardingProblem, combo: tuple[int, ...]) -> float:
    horizon = max(n.interval[1] for n in problem.nodes)
    return max(
        sum(
            n.usages[s]
            for n, s in zip(problem.nodes, combo, strict=True)
            if n.interval[0] <= t < n.interval[1]
        )
        for t in range(horizon + 1)
    )


def cost(problem: ShardingProblem, combo: tuple[int, ...]) -> float:
    node = sum(n.costs[s] for n, s in zip(problem.nodes, combo, strict=True))
    return node + sum(problem.edge_matrix(e)[combo[e.u], combo[e.v]] for e in problem.edges)


def brute_force(
    problem: ShardingProblem,
    limit: float | None,
    pins: dict[int, int] | None = None,
    tied: list[tuple[int, int]] = (),
) -> float | None:
    """Least cost over all combinations (copies ``tied`` equal, ``pins`` fixed); None if infeasible."""
    best = None
    for combo in itertools.product(*(range(len(n.costs)) for n in problem.nodes)):
        if any(combo[a] != combo[b] for a, b in tied) or any(combo[n] != k for n, k in (pins or {}).items()):
            continue
        if limit is not None and peak(problem, combo) > limit:
            continue
        c = cost(problem, combo)
        best = c if best is None or c < best else best
    return best


def random_problem(rng: np.random.Generator) -> ShardingProblem:
    """4-6 nodes, 2-3 strategies, random DAG edges (u < v), random intervals."""
    nodes = []
    for _ in range(rng.integers(4, 7)):
        m, start = int(rng.integers(2, 4)), int(rng.integers(0, 8))
        costs, usages = rng.integers(0, 50, m).astype(float), rng.integers(1, 20, m).astype(float)
        nodes.append(Node(tuple(costs), tuple(usages), (start, start + int(rng.integers(1, 6)))))
    pairs = [(u, v) for u, v in itertools.combinations(range(len(nodes)), 2) if rng.random() < 0.5]
    sizes = [len(nodes[u].costs) * len(nodes[v].costs) for u, v in pairs]
    edges = tuple(
        Edge(u, v, tuple(rng.integers(0, 40, n).astype(float)))
        for (u, v), n in zip(pairs, sizes, strict=True)
    )
    return ShardingProblem(tuple(nodes), edges)


# --- the public example ------------------------------------------------------------------------


def test_example_with_limit(example: ShardingProblem) -> None:
    sol = solve(example)
    assert example.memory_limit == 50
    assert sol.objective == 445 and sol.strategies == [0, 0, 2, 1, 0]
    assert sol.status == "optimal" and sol.extras["solver_objective"] == pytest.approx(445)
    assert sol.memory_binding and sol.binding_steps == [50] and sol.peak_memory == 50
    assert sol.num_variables == 13 and sol.num_constraints == 11


def test_example_without_limit(example: ShardingProblem) -> None:
    sol = solve(example, memory_limit=math.inf)
    assert sol.objective == 415 and sol.strategies == [0, 0, 1, 1, 0]
    assert not sol.memory_binding and sol.peak_memory == 55
    assert solve(replace(example, memory_limit=None)).objective == 415


@pytest.mark.parametrize("limit", [40, 49.5])
def test_limit_below_bound_names_step(example: ShardingProblem, limit: float) -> None:
    message = r"memory limit .* below the smallest possible peak 50 \(time step 50, nodes 0, 1, 2\)"
    with pytest.raises(ConfigError, match=message):
        solve(example, memory_limit=limit)


def test_live_steps_are_the_maximal_cliques(example: ShardingProblem) -> None:
    assert live_steps(example) == [(50, [0, 1, 2]), (110, [2, 3, 4])]
    assert evaluate(example, [0, 0, 2, 1, 0]).cost == 445


# --- random small graphs against brute force ------------------------------------------------------


@pytest.mark.parametrize("seed", range(25))
def test_random_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = random_problem(rng)
    peaks = [peak(problem, c) for c in itertools.product(*(range(len(n.costs)) for n in problem.nodes))]
    limits = [None, float(rng.integers(min(peaks) - 3, max(peaks) + 1)), float(min(peaks) - 1)]
    for limit in limits:
        expected = brute_force(problem, limit)
        if expected is None:
            with pytest.raises(ConfigError):
                solve(problem, memory_limit=limit if limit is not None else math.inf)
            continue
        sol = solve(problem, memory_limit=limit if limit is not None else math.inf)
        assert sol.objective == pytest.approx(expected)
        assert cost(problem, tuple(sol.strategies)) == pytest.approx(expected)
        assert limit is None or peak(problem, tuple(sol.strategies)) <= limit


@pytest.mark.parametrize("seed", range(8))
def test_random_pins_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    problem = random_problem(rng)
    pins = {int(n): int(rng.integers(len(problem.nodes[n].costs))) for n in rng.choice(len(problem.nodes), 2)}
    expected = brute_force(problem, None, pins)
    sol = solve(problem, memory_limit=math.inf, pins=pins)
    assert all(sol.strategies[n] == k for n, k in pins.items())
    assert sol.objective == pytest.approx(expected)


def test_pins_on_example(example: ShardingProblem) -> None:
    sol = solve(example, memory_limit=math.inf, pins={2: 0})
    assert sol.strategies[2] == 0 and sol.objective == brute_force(example, None, {2: 0})
    with pytest.raises(ConfigError, match="smallest possible peak 55"):
        solve(example, pins={2: 1})  # strategy 1 of node 2 needs 20, limit 50
    with pytest.raises(ConfigError, match="not a valid"):
        solve(example, pins={0: 1})


# --- repeat groups ------------------------------------------------------------------------------


def chain(
    block: list[Node], inner: list[Edge], k: int, shift: int, cross: tuple | None = None, share: bool = True
) -> ShardingProblem:
    """k copies of ``block`` (intervals shifted by ``shift`` per copy); ``cross`` = (last, first, costs)
    links copy b's node ``last`` to copy b+1's node ``first``."""
    b = len(block)
    nodes = tuple(
        replace(n, interval=(n.interval[0] + c * shift, n.interval[1] + c * shift))
        for c in range(k)
        for n in block
    )
    edges = [Edge(e.u + c * b, e.v + c * b, e.costs) for c in range(k) for e in inner]
    if cross:
        edges += [Edge(cross[0] + c * b, cross[1] + (c + 1) * b, cross[2]) for c in range(k - 1)]
    groups = (RepeatGroup(tuple(tuple(range(c * b, (c + 1) * b)) for c in range(k))),) if share else ()
    return ShardingProblem(nodes, tuple(edges), None, groups)


def random_block(rng: np.random.Generator, size: int = 3) -> tuple[list[Node], list[Edge]]:
    block = [
        Node(
            tuple(rng.integers(0, 50, 2).astype(float)),
            tuple(rng.integers(1, 20, 2).astype(float)),
            (i, i + int(rng.integers(1, 4))),
        )
        for i in range(size)
    ]
    inner = [
        Edge(u, v, tuple(rng.integers(0, 40, 4).astype(float)))
        for u, v in itertools.combinations(range(size), 2)
        if rng.random() < 0.6
    ]
    return block, inner


@pytest.mark.parametrize("seed", range(6))
def test_independent_repeats_equal_unrolled(seed: int) -> None:
    block, inner = random_block(np.random.default_rng(seed))
    shared = solve(chain(block, inner, 4, 5), memory_limit=math.inf)
    unrolled = solve(chain(block, inner, 4, 5, share=False), memory_limit=math.inf)
    one = solve(chain(block, inner, 1, 5, share=False), memory_limit=math.inf)
    assert shared.objective == pytest.approx(unrolled.objective) == pytest.approx(4 * one.objective)
    assert shared.num_variables == one.num_variables < unrolled.num_variables
    assert shared.strategies == one.strategies * 4


def test_chain_repeats_equal_unrolled_when_symmetric() -> None:
    # Strategy 0 is cheapest everywhere and resharding is free on the diagonal: the optimum is symmetric.
    block = [Node((1.0, 5.0), (4.0, 2.0), (0, 2)), Node((2.0, 3.0), (6.0, 3.0), (1, 3))]
    inner, cross = [Edge(0, 1, (0.0, 7.0, 7.0, 0.0))], (1, 0, (0.0, 9.0, 9.0, 0.0))
    counts = []
    for k in (2, 3, 5):
        shared = solve(chain(block, inner, k, 2, cross), memory_limit=math.inf)
        unrolled = solve(chain(block, inner, k, 2, cross, share=False), memory_limit=math.inf)
        assert shared.objective == pytest.approx(unrolled.objective) == pytest.approx(3 * k)
        counts.append(shared.num_variables)
    one = solve(chain(block, inner, 1, 2, cross, share=False), memory_limit=math.inf)
    # The cross edge joins the same pair of representatives as the inner edge: its matrix is added to
    # the inner one, so the shared model has exactly one block's variables whatever k.
    assert counts == [one.num_variables] * 3


@pytest.mark.parametrize("seed", range(6))
def test_repeats_with_memory_match_tied_brute_force(seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    block, inner = random_block(rng)
    cross = (2, 0, tuple(rng.integers(0, 40, 4).astype(float)))
    problem = chain(block, inner, 3, 2, cross)  # shift 2 < block span: copies overlap in time
    tied = [(i, c * 3 + i) for c in (1, 2) for i in range(3)]
    combos = [c for c in itertools.product(range(2), repeat=9) if all(c[a] == c[b] for a, b in tied)]
    peaks = [peak(problem, c) for c in combos]
    for limit in (float(rng.integers(min(peaks), max(peaks) + 1)), float(min(peaks) - 1)):
        expected = brute_force(problem, limit, tied=tied)
        if expected is None:
            with pytest.raises(ConfigError):
                solve(problem, memory_limit=limit)
            continue
        sol = solve(problem, memory_limit=limit)
        assert sol.objective == pytest.approx(expected) and peak(problem, tuple(sol.strategies)) <= limit


def test_repeat_validation_and_pins() -> None:
    block, inner = random_block(np.random.default_rng(7))
    problem = chain(block, inner, 2, 5)
    assert solve(problem, memory_limit=math.inf, pins={4: 1}).strategies[1] == 1  # pin on a copy fixes all
    with pytest.raises(ConfigError, match="pins disagree"):
        solve(problem, pins={1: 0, 4: 1})
    odd = replace(block[0], costs=(99.0, 99.0))
    with pytest.raises(ConfigError, match="differs"):
        ShardingProblem((*block, odd, *block[1:]), (), None, (RepeatGroup(((0, 1, 2), (3, 4, 5))),))


# --- solver selection and input checks --------------------------------------------------------------


def test_solver_choice(example: ShardingProblem) -> None:
    with pytest.raises(ConfigError, match="unknown solver"):
        solve(example, solver="gurobi")
    if importlib.util.find_spec("highspy") is None:
        with pytest.raises(ConfigError, match="pip install"):
            solve(example, solver="highs")
    else:
        assert solve(example, solver="highs").objective == 445
    assert solve(example, time_limit_s=5, threads=1).objective == 445


def test_bad_edge_shape() -> None:
    nodes = (Node((1.0, 2.0), (1.0, 1.0), (0, 1)), Node((1.0,), (1.0,), (0, 1)))
    with pytest.raises(ConfigError, match="expected 2x1"):
        ShardingProblem(nodes, (Edge(0, 1, (1.0, 2.0, 3.0)),))
