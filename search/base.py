"""The protocol every search driver shares: a cost function over design points, one result type.

A **cost function** takes a batch of design points — a dict of equal-length 1-D arrays, one per
knob — and returns a dict of equal-length metric arrays that includes ``objective`` (minimised) and
``feasible`` (bool). Metric names are the same across drivers and experiments (``step_time_s``,
``mfu``, ``tokens_per_s``, ``memory_gib``, ``power_w``, ``cost_usd_per_mtoken``, ``objective``), so
MLflow runs compare side by side. Drivers know nothing of Hydra or MLflow.

A :class:`Problem` is what is explored: its space (``search.space``), the batched cost function, and
what some drivers need besides (a validity mask, a differentiable loss). Every driver
(``search.drivers``) returns a :class:`Result`: the best design and its metrics, the table of
evaluated points (design columns then metric columns), the Pareto front of two metrics as row
indices of that table, and the trajectory (gradient-descent steps, Optuna trials) where there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Points = Mapping[str, np.ndarray]
Metrics = dict[str, np.ndarray]
CostFn = Callable[[Points], Metrics]
METRICS = (
    "objective",
    "step_time_s",
    "mfu",
    "tokens_per_s",
    "memory_gib",
    "power_w",
    "cost_usd_per_mtoken",
    "energy_j_per_token",
)


@dataclass(frozen=True)
class Problem:
    """What is explored, for any driver that it supplies enough for.

    ``space``: name → choices or a :class:`search.space.Knob` box. ``cost_fn``: design columns →
    metric columns with ``objective`` (minimised) and ``feasible``. ``constraint``: columns → bool
    mask of the points worth evaluating (the mapping rules), applied before ``cost_fn``.
    ``describe``: a design point in the user's words. ``loss``: a differentiable loss of the box
    values (scalars) for gradient descent, whose answer ``rescore`` scores exactly (one point →
    objective); a problem without one is not for gradient descent."""

    space: Mapping[str, Any]
    cost_fn: CostFn
    constraint: Callable[[Points], np.ndarray] | None = None
    describe: Callable[[dict[str, float]], dict[str, Any]] | None = None
    loss: Callable[[dict[str, Any]], Any] | None = None
    rescore: Callable[[dict[str, float]], float] | None = None


@dataclass
class Result:
    """What a driver found. ``table`` columns are arrays of one length (rows = evaluated points)."""

    driver: str
    best: dict[str, float]
    metrics: dict[str, float]
    table: dict[str, np.ndarray]
    pareto: list[int] = field(default_factory=list)
    pareto_axes: tuple[str, str] = ("step_time_s", "memory_gib")
    trajectory: list[dict[str, float]] = field(default_factory=list)
    evaluations: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int, key: str = "objective", distinct: Sequence[str] = ()) -> list[dict[str, float]]:
        """The ``k`` best feasible rows by ``key`` (ascending), as dicts; with ``distinct`` (design
        columns) a design evaluated several times (Optuna trials) appears once."""
        feasible = np.asarray(self.table.get("feasible", np.ones(len(self.table[key]), bool)), bool)
        rows, seen = [], set()
        for i in np.argsort(self.table[key], kind="stable"):
            design = tuple(float(np.asarray(self.table[c])[i]) for c in distinct)
            if not feasible[i] or (distinct and design in seen):
                continue
            seen.add(design)
            rows.append(row(self.table, int(i)))
            if len(rows) == k:
                break
        return rows

    def distinct_designs(self, columns: Sequence[str]) -> int:
        """How many different designs (rows differing in ``columns``) the table holds."""
        if not self.rows or not columns:
            return self.rows
        designs = np.stack([np.asarray(self.table[c], float) for c in columns], axis=1)
        return int(np.unique(designs, axis=0).shape[0])

    @property
    def rows(self) -> int:
        return len(next(iter(self.table.values()))) if self.table else 0


def signed_objective(metrics: Mapping[str, Any], objective: str) -> Any:
    """The value minimised for ``objective``: the metric, or minus it for ``neg_<metric>``."""
    if objective.startswith("neg_"):
        return -metrics[objective[4:]]
    return metrics[objective]


def row(table: Mapping[str, np.ndarray], i: int) -> dict[str, float]:
    """Row ``i`` of a column table as plain Python numbers."""
    return {k: np.asarray(v)[i].item() for k, v in table.items()}


def pareto_front(
    a: np.ndarray,
    b: np.ndarray,
    feasible: np.ndarray | None = None,
    maximize: Sequence[bool] = (False, False),
) -> list[int]:
    """Indices of the points no other point dominates in (a, b), sorted by a.

    A point dominates another when it is no worse in both and better in one; duplicates keep the
    first. O(n log n): sort by a (then b), sweep keeping the best b seen so far.
    """
    a = -np.asarray(a, float) if maximize[0] else np.asarray(a, float)
    b = -np.asarray(b, float) if maximize[1] else np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if feasible is not None:
        ok &= np.asarray(feasible, bool)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((b[idx], a[idx]))]
    front, best_b = [], np.inf
    for i in order:
        if b[i] < best_b:
            front.append(int(i))
            best_b = b[i]
    return front


def concat(tables: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack column tables with the same keys."""
    if not tables:
        return {}
    return {k: np.concatenate([np.asarray(t[k]) for t in tables]) for k in tables[0]}
