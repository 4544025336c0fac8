"""The drivers in one registry: any driver runs on any problem that supplies what it needs.

``DRIVERS[name]`` is a :class:`Driver` whose ``run(problem, options, *, seed, progress) -> Result``
explores a :class:`search.base.Problem`; ``needs`` is what the problem must supply:

* ``choices`` — every dimension a list of values (grid search enumerates their product);
* ``space`` — any dimensions, choices or boxes (random search, Optuna's samplers);
* ``loss`` — a differentiable loss of box dimensions (gradient descent).

``options`` are the driver's own settings (its ``conf/search/<name>.yaml``); Optuna also reads the
caller's ``storage``, ``study_name`` and ``on_trial(number, values)`` there. A new driver is a
function here, its entry in ``DRIVERS``, and its options file with a schema (``dse/schema.py``).
The problem-specific solvers (the auto-shard ILP, the placement CP-SAT model) are not here: each
solves the one model its problem builds (``dse.search.PROBLEMS``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from costmodels.errors import ConfigError
from search.base import Problem, Result, signed_objective
from search.gd import gradient_descent
from search.grid import enumerate_points, grid_search, score_points, space_size
from search.space import boxes, is_discrete, sample

Progress = Callable[[int, int], None]
DEFAULT_PARETO = ("step_time_s", "memory_gib")
INFEASIBLE = 1e30  # the objective Optuna is told for a point with none (it accepts no NaN or inf)


@dataclass(frozen=True)
class Driver:
    """A search driver: how it runs, what a problem must supply for it, its name in a report
    (``title``) and what it counts (``unit``: one design, trial or step)."""

    run: Callable[..., Result]
    needs: str
    title: str
    unit: str


def _pareto(options: Mapping[str, Any]) -> tuple[str, str]:
    return tuple(options.get("pareto") or DEFAULT_PARETO)  # type: ignore[return-value]


def _grid(problem: Problem, options: Mapping[str, Any], *, seed: int, progress: Progress | None) -> Result:
    return grid_search(
        problem.space,
        problem.cost_fn,
        constraint=problem.constraint,
        chunk_size=int(options.get("chunk_size", 262_144)),
        top_k=int(options.get("top_k", 10)),
        pareto_axes=_pareto(options),
        progress=progress,
        infeasible_reason=options.get("infeasible_reason"),
    )


def _random(problem: Problem, options: Mapping[str, Any], *, seed: int, progress: Progress | None) -> Result:
    """``n_samples`` points drawn uniformly (``search.space.sample``) and scored in one batch. On a
    space of choices only they are drawn without replacement among the points the constraint
    accepts (uniform over the valid designs; all of them when there are fewer); otherwise drawn
    from every dimension and those the constraint rejects dropped."""
    n, rng = int(options["n_samples"]), np.random.default_rng(seed)
    if is_discrete(problem.space):
        valid = enumerate_points(problem.space, problem.constraint)
        total = len(next(iter(valid.values())))
        pick = np.sort(rng.choice(total, min(n, total), replace=False)) if total else np.array([], int)
        points = {k: v[pick] for k, v in valid.items()}
    else:
        points = sample(problem.space, n, rng)
        if problem.constraint is not None:
            keep = np.asarray(problem.constraint(points), bool)
            points = {k: v[keep] for k, v in points.items()}
    drawn = len(next(iter(points.values())))
    if drawn == 0:
        raise ConfigError(
            f"no sampled point satisfies the constraints (the space has {space_size(problem.space)} "
            "points before them)"
            if is_discrete(problem.space)
            else f"none of {n} sampled points satisfies the constraints: raise search.n_samples"
        )
    return score_points(
        points,
        problem.cost_fn,
        driver="random",
        chunk_size=int(options.get("chunk_size", 262_144)),
        top_k=int(options.get("top_k", 10)),
        pareto_axes=_pareto(options),
        progress=progress,
        infeasible_reason=options.get("infeasible_reason"),
        extras={"n_samples": n, "n_valid": drawn},
    )


def _optuna(problem: Problem, options: Mapping[str, Any], *, seed: int, progress: Progress | None) -> Result:
    """Optuna's sampler (``options.sampler``) over the space, one point per trial; a point the
    constraint rejects is a trial told infeasible without being evaluated."""
    from search.optuna_driver import optuna_search

    objectives = list(options.get("objectives") or [options.get("objective", "objective")])
    n_trials, on_trial = int(options["n_trials"]), options.get("on_trial")

    def evaluate(point: dict[str, Any]) -> dict[str, float]:
        cols = {k: np.array([float(v)]) for k, v in point.items()}
        if problem.constraint is not None and not bool(np.asarray(problem.constraint(cols))[0]):
            return dict.fromkeys(objectives, INFEASIBLE) | {"feasible": False}
        out = {k: float(np.asarray(v)[0]) for k, v in problem.cost_fn(cols).items()}
        told = {o: float(signed_objective(out, o)) for o in objectives}  # NaN: undefined where infeasible
        return out | {o: v if np.isfinite(v) else INFEASIBLE for o, v in told.items()}

    def each_trial(number: int, values: dict) -> None:
        if progress is not None:
            progress(number + 1, n_trials)
        if on_trial is not None:
            on_trial(number, values)

    return optuna_search(
        problem.space,
        evaluate,
        objectives=objectives,
        n_trials=n_trials,
        timeout=options.get("timeout_s"),
        seed=seed,
        sampler=options.get("sampler", "auto"),
        storage=options.get("storage"),
        study_name=options.get("study_name") or "dse",
        on_trial=each_trial,
        pareto_axes=_pareto(options),
    )


def _gd(problem: Problem, options: Mapping[str, Any], *, seed: int, progress: Progress | None) -> Result:
    return gradient_descent(
        problem.loss,
        boxes(problem.space),
        steps=int(options["steps"]),
        learning_rate=float(options["learning_rate"]),
        restarts=int(options["restarts"]),
        seed=seed,
        rescore=problem.rescore,
        progress=progress,
    )


DRIVERS: dict[str, Driver] = {
    "grid": Driver(_grid, "choices", "grid search", "design"),  # every valid point, in chunks
    "random": Driver(_random, "space", "random search", "design"),  # uniform draws, one batch
    "optuna": Driver(_optuna, "space", "Optuna", "trial"),  # TPE, NSGA-II, ...: a point per trial
    "gd": Driver(_gd, "loss", "gradient descent", "step"),  # projected, on a loss of box knobs
}


def unmet(name: str, problem: Problem) -> str | None:
    """Why driver ``name`` cannot run on ``problem``, or None when it can."""
    needs = DRIVERS[name].needs
    if needs == "choices" and not is_discrete(problem.space):
        continuous = ", ".join(boxes(problem.space))
        return f"enumerates lists of values, and this problem has continuous knobs ({continuous})"
    if needs == "loss" and problem.loss is None:
        return "follows the gradient of a differentiable loss, and this problem has none"
    if needs == "loss" and not boxes(problem.space):
        return "moves continuous knobs, and this problem has only lists of values"
    return None


def capable(problem: Problem) -> list[str]:
    """The drivers that can run on ``problem``."""
    return [name for name in DRIVERS if unmet(name, problem) is None]


def check(name: str, problem: Problem, problem_name: str = "this problem") -> None:
    """Raise one :class:`ConfigError` line when driver ``name`` cannot run on ``problem``, naming the
    drivers that can."""
    if name not in DRIVERS:  # ilp and cpsat solve the auto-shard and placement problems only
        raise ConfigError(
            f"search={name} does not run on {problem_name}: use search={' or '.join(capable(problem))}"
        )
    why = unmet(name, problem)
    if why is not None:
        raise ConfigError(
            f"search={name} {why}: for {problem_name} use search={' or '.join(capable(problem))}"
        )


def run(
    name: str,
    problem: Problem,
    options: Mapping[str, Any],
    *,
    seed: int = 0,
    progress: Progress | None = None,
    problem_name: str = "this problem",
) -> Result:
    """Run driver ``name`` on ``problem`` (after :func:`check`)."""
    check(name, problem, problem_name)
    return DRIVERS[name].run(problem, options, seed=seed, progress=progress)
