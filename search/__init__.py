"""Search drivers over the cost models (no Hydra, no MLflow): a driver explores a problem's space
(``search.space``) through its cost or loss function and returns a :class:`Result`.

* :func:`grid_search` — exhaustive over a discrete product, vectorised in fixed-size chunks;
* :func:`gradient_descent` — optax on continuous (and straight-through integer) knobs;
* :func:`optuna_search` — TPE / NSGA-II / random with shared, resumable Optuna studies;
* ``search.drivers.DRIVERS`` — the registry that runs any of them (and random search) on any
  :class:`Problem` that supplies what the driver needs.
"""

from search.base import METRICS, CostFn, Metrics, Points, Problem, Result, concat, pareto_front, row
from search.gd import gradient_descent
from search.grid import enumerate_points, evaluate_chunked, grid_search, space_size
from search.optuna_driver import make_sampler, open_storage, optuna_search
from search.space import Knob, Space

__all__ = [
    "METRICS",
    "CostFn",
    "Knob",
    "Metrics",
    "Points",
    "Problem",
    "Result",
    "Space",
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
