"""Search drivers over the cost models (no Hydra, no MLflow): a driver takes a space and a cost or
loss function and returns a :class:`Result`.

* :func:`grid_search` — exhaustive over a discrete product, vectorised in fixed-size chunks;
* :func:`gradient_descent` — optax on continuous (and straight-through integer) knobs;
* :func:`optuna_search` — TPE / NSGA-II / random with shared, resumable Optuna studies.
"""

from search.base import METRICS, CostFn, Metrics, Points, Result, concat, pareto_front, row
from search.gd import Knob, gradient_descent
from search.grid import enumerate_points, evaluate_chunked, grid_search, space_size
from search.optuna_driver import Param, make_sampler, open_storage, optuna_search

__all__ = [
    "METRICS",
    "CostFn",
    "Knob",
    "Metrics",
    "Param",
    "Points",
    "Result",
    "concat",
    "enumerate_points",
    "evaluate_chunked",
    "gradient_descent",
    "grid_search",
    "make_sampler",
    "open_storage",
    "optuna_search",
    "pareto_front",
    "row",
    "space_size",
]
