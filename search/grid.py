"""Exhaustive search over a Cartesian product of discrete knob values, scored in fixed-size chunks.

The space is data: ``{"tp": [1, 2, 4, 8], "pp": [1, 2, 4], ...}``. Points are enumerated in blocks
of flat indices (``np.unravel_index``, so the unconstrained product is never held whole), a cheap
NumPy ``constraint`` mask drops impossible combinations (``tp·pp·dp·cp ≠ devices``) before any
evaluation, and the survivors go to the cost function in chunks of one size — the last chunk is
padded by repeating its first point and the padding stripped — so a ``jit(vmap(...))`` cost function
compiles once. Infeasible points (``feasible`` false, or a non-finite objective) get objective
``+inf`` (the DESIGN.md rule: infeasibility is a mask, ``where(feasible, cost, inf)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from costmodels.errors import ConfigError
from search.base import CostFn, Metrics, Result, pareto_front, row

Constraint = Callable[[dict[str, np.ndarray]], np.ndarray]
Progress = Callable[[int, int], None]


def space_size(space: Mapping[str, Sequence[float]]) -> int:
    """Number of points in the Cartesian product (before constraints)."""
    return math.prod(len(values) for values in space.values())


def _check_space(space: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """The knob values as float arrays; a knob with no values is a user error."""
    if not space:
        raise ConfigError("the search space has no knobs: give at least one name → list of values")
    values = {}
    for name, vals in space.items():
        arr = np.asarray(vals, dtype=float).ravel()
        if arr.size == 0:
            raise ConfigError(f"search space knob '{name}' has no values")
        values[name] = arr
    return values


def enumerate_points(
    space: Mapping[str, Sequence[float]], constraint: Constraint | None = None, block: int = 1 << 20
) -> dict[str, np.ndarray]:
    """Every point of the product that ``constraint`` accepts, as float columns (first knob slowest)."""
    values = _check_space(space)
    shape = tuple(len(v) for v in values.values())
    total = math.prod(shape)
    kept: list[dict[str, np.ndarray]] = []
    for start in range(0, total, block):
        flat = np.arange(start, min(start + block, total))
        index = np.unravel_index(flat, shape)
        cols = {name: v[i] for (name, v), i in zip(values.items(), index, strict=True)}
        if constraint is not None:
            mask = np.broadcast_to(np.asarray(constraint(cols), dtype=bool), flat.shape)
            cols = {k: c[mask] for k, c in cols.items()}
        kept.append(cols)
    return {k: np.concatenate([c[k] for c in kept]) for k in values}


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def evaluate_chunked(
    points: Mapping[str, np.ndarray], cost_fn: CostFn, chunk_size: int, progress: Progress | None = None
) -> Metrics:
    """``cost_fn`` over all points in chunks of one length (the last padded, then stripped)."""
    n = len(next(iter(points.values())))
    size = max(1, min(chunk_size, n))
    parts: list[Metrics] = []
    for start, stop in _chunks(n, size):
        chunk = {k: v[start:stop] for k, v in points.items()}
        pad = size - (stop - start)
        if pad:  # repeat the chunk's first point so the padding is a valid design
            chunk = {k: np.concatenate([v, np.repeat(v[:1], pad)]) for k, v in chunk.items()}
        out = cost_fn(chunk)
        parts.append({k: np.asarray(v)[: stop - start] for k, v in out.items()})
        if progress is not None:
            progress(stop, n)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _mask_infeasible(metrics: Metrics) -> Metrics:
    """Add/normalise ``feasible`` (missing = all feasible) and set objective = +inf where infeasible."""
    if "objective" not in metrics:
        raise ConfigError(f"the cost function must return 'objective'; it returned {sorted(metrics)}")
    objective = np.asarray(metrics["objective"], dtype=float)
    feasible = np.asarray(metrics.get("feasible", np.ones(objective.shape, bool)), dtype=bool)
    feasible = feasible & np.isfinite(objective)
    return {**metrics, "objective": np.where(feasible, objective, np.inf), "feasible": feasible}


def score_points(
    points: Mapping[str, np.ndarray],
    cost_fn: CostFn,
    *,
    driver: str,
    chunk_size: int = 262_144,
    top_k: int = 10,
    pareto_axes: tuple[str, str] = ("step_time_s", "memory_gib"),
    progress: Progress | None = None,
    infeasible_reason: Callable[[Metrics], str] | None = None,
    extras: Mapping[str, Any] | None = None,
) -> Result:
    """Score ``points`` (columns) with ``cost_fn`` in chunks and return the best: the whole table, the
    Pareto front of ``pareto_axes`` over feasible points (when the cost function returns both), and
    ``extras["top"]`` = the ``top_k`` best rows. Raises :class:`ConfigError` when none is feasible
    (``infeasible_reason(metrics)`` says why, e.g. the smallest memory footprint)."""
    n = len(next(iter(points.values())))
    metrics = _mask_infeasible(evaluate_chunked(points, cost_fn, chunk_size, progress))
    if not metrics["feasible"].any():
        reason = f": {infeasible_reason(metrics)}" if infeasible_reason is not None else ""
        raise ConfigError(f"all {n} evaluated points are infeasible{reason}")
    table = {**points, **{k: v for k, v in metrics.items() if k not in points}}
    best_i = int(np.argmin(table["objective"]))
    front = []
    if all(axis in table for axis in pareto_axes):
        front = pareto_front(table[pareto_axes[0]], table[pareto_axes[1]], table["feasible"])
    result = Result(
        driver=driver,
        best={k: row(points, best_i)[k] for k in points},
        metrics={k: v for k, v in row(table, best_i).items() if k not in points},
        table=table,
        pareto=front,
        pareto_axes=tuple(pareto_axes),
        evaluations=n,
        extras={**(extras or {}), "n_feasible": int(table["feasible"].sum())},
    )
    result.extras["top"] = result.top(top_k)
    return result


def grid_search(
    space: Mapping[str, Sequence[float]],
    cost_fn: CostFn,
    *,
    constraint: Constraint | None = None,
    chunk_size: int = 262_144,
    top_k: int = 10,
    pareto_axes: tuple[str, str] = ("step_time_s", "memory_gib"),
    progress: Progress | None = None,
    infeasible_reason: Callable[[Metrics], str] | None = None,
) -> Result:
    """Score every point of ``space`` that ``constraint`` accepts and return the best.

    ``constraint(columns) -> bool mask`` is applied before evaluation; ``cost_fn(columns) -> metrics``
    follows the :mod:`search.base` protocol (``objective`` minimised, ``feasible`` bool); the rest is
    :func:`score_points`. Raises :class:`ConfigError` when no point passes the constraints, or when
    none is feasible.
    """
    points = enumerate_points(space, constraint)
    n = len(next(iter(points.values())))
    if n == 0:
        raise ConfigError(
            f"no point satisfies the constraints (the space has {space_size(space)} points before them)"
        )
    return score_points(
        points,
        cost_fn,
        driver="grid",
        chunk_size=chunk_size,
        top_k=top_k,
        pareto_axes=pareto_axes,
        progress=progress,
        infeasible_reason=infeasible_reason,
        extras={"space_size": space_size(space), "n_valid": n},
    )
