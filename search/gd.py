"""Gradient descent on continuous (and integer) knobs through a differentiable JAX loss.

Projected gradient descent: each knob is optimised in normalised coordinates and every iterate is
projected back onto the feasible set after the optimiser's update, so optima on a bound (common in
hardware design: "all the area to compute") are reached exactly rather than approached through a
saturating sigmoid.

* **box** ``[low, high]``: the coordinate is ``z = (x − low)/(high − low)`` (``log=True``: the same on
  ``log x``), projected by clipping to [0, 1];
* **simplex group** (knobs sharing ``group``, e.g. area fractions that sum to 1): the coordinates are
  the fractions themselves, projected in the Euclidean sense onto ``{Σ x = 1, low ≤ x ≤ high}`` —
  ``x_i = clip(y_i − τ, low_i, high_i)`` with the shift τ found by bisection (the box-constrained form
  of the simplex projection, Held, Wolfe & Crowder 1974; Duchi et al. 2008, "Efficient projections
  onto the l1-ball"), so the sum and every bound hold exactly, with no penalty; the gradient is first
  projected onto the simplex's tangent space (group mean removed);
* **integer**: straight-through rounding (Bengio, Léonard & Courville 2013, "Estimating or propagating
  gradients through stochastic neurons"): the forward pass sees ``round(x)``, the gradient is that of
  ``x``. After descent the rounded neighbourhood (floor/ceil of every integer knob, 2^k points,
  k ≤ 8) is re-scored exactly with ``rescore`` (or the loss) and the best kept — DESIGN.md's recipe.

The optimiser is an optax transformation, Adam by default (Kingma & Ba 2015, "Adam: a method for
stochastic optimization"), its step size cosine-decayed to 1 % over the run (Loshchilov & Hutter
2017, SGDR) so the last iterates settle. All restarts run together: one ``jit``-compiled update over a
batch of restarts (the summed loss has independent per-restart gradients, and Adam is elementwise).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from costmodels.errors import ConfigError
from search.base import Result
from search.space import Knob, knob_values, project_coordinates, simplex_groups
from search.xla import jit_few_calls

LossFn = Callable[[dict[str, jax.Array]], jax.Array]
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adabelief", "lion", "nadam", "amsgrad")
MAX_NEIGHBOURHOOD_KNOBS = 8


def _objective(loss_fn: LossFn, knobs: Mapping[str, Knob]) -> Callable:
    """Per-restart loss of the coordinates, with the continuous knob values as aux."""

    def objective(raw: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
        return loss_fn(knob_values(raw, knobs, st_round=True)), knob_values(raw, knobs, st_round=False)

    return objective


def _tangent(grads: dict[str, jax.Array], groups: list[list[str]]) -> dict[str, jax.Array]:
    """Gradient projected onto each simplex's tangent space (Σ Δx = 0: the group mean removed), so an
    elementwise optimiser such as Adam moves fractions against each other instead of all one way
    and having the projection undo it."""
    out = dict(grads)
    for members in groups:
        mean = sum(grads[m] for m in members) / len(members)
        out |= {m: grads[m] - mean for m in members}
    return out


def _optimizer(
    optimizer: str | optax.GradientTransformation, learning_rate: float, steps: int
) -> optax.GradientTransformation:
    """A named optax optimiser with a cosine-decayed step size, or the caller's transformation as is."""
    if not isinstance(optimizer, str):
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{optimizer}'; valid: {', '.join(OPTIMIZERS)}")
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.01)
    return getattr(optax, optimizer)(schedule)


def _starts(knobs: Mapping[str, Knob], restarts: int, seed: int) -> dict[str, jax.Array]:
    """Seeded random starting coordinates: box knobs uniform over 5–95 % of their (log) range,
    simplex groups uniform weights projected onto their bounded simplex."""
    rng = np.random.default_rng(seed)
    raw = {name: jnp.asarray(rng.uniform(0.05, 0.95, restarts)) for name in knobs}  # f32 unless x64
    return jit_few_calls(jax.vmap(lambda r: project_coordinates(r, knobs)))(raw)


def _descend(
    loss_fn: LossFn,
    knobs: Mapping[str, Knob],
    raw: dict,
    opt: optax.GradientTransformation,
    steps: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``steps`` updates on all restarts; returns losses [steps+1, R] and values {knob: [steps+1, R]}
    (row t = the iterate after t updates)."""
    batched = jax.vmap(_objective(loss_fn, knobs))
    groups = list(simplex_groups(knobs).values())
    project = jax.vmap(lambda r: project_coordinates(r, knobs))

    def total(r: dict) -> tuple[jax.Array, tuple]:
        loss, x = batched(r)
        return jnp.sum(loss), (loss, x)

    @jit_few_calls  # called once per step: compile time is most of its cost
    def update(r: dict, state: optax.OptState) -> tuple:
        (_, (loss, x)), grads = jax.value_and_grad(total, has_aux=True)(r)
        updates, state = opt.update(_tangent(grads, groups), state, r)
        return project(optax.apply_updates(r, updates)), state, loss, x

    state, losses, values = opt.init(raw), [], []
    for t in range(steps + 1):
        new_raw, new_state, loss, x = update(raw, state)
        losses.append(np.asarray(loss))
        values.append({k: np.asarray(v) for k, v in x.items()})
        raw, state = new_raw, new_state
        if progress is not None and t < steps:
            progress(t + 1, steps)
    return np.stack(losses), {k: np.stack([v[k] for v in values]) for k in knobs}


def _neighbourhood(point: dict[str, float], knobs: Mapping[str, Knob]) -> list[dict[str, float]]:
    """Floor/ceil of each integer knob (within its range): up to 2^8 points; beyond 8 integer knobs
    only the 8 farthest from an integer are enumerated, the others rounded."""
    ints = [n for n, k in knobs.items() if k.integer]
    frac = {n: abs(point[n] - np.round(point[n])) for n in ints}
    free = sorted(ints, key=lambda n: -frac[n])[:MAX_NEIGHBOURHOOD_KNOBS]
    base = dict(point)
    for n in ints:
        lo, hi = np.ceil(knobs[n].low), np.floor(knobs[n].high)
        base[n] = float(np.clip(np.round(point[n]), lo, hi))
    options = []
    for n in free:
        lo, hi = np.ceil(knobs[n].low), np.floor(knobs[n].high)
        options.append(sorted({float(np.clip(f(point[n]), lo, hi)) for f in (np.floor, np.ceil)}))
    return [base | dict(zip(free, combo, strict=True)) for combo in itertools.product(*options)]


def _score(
    points: list[dict[str, float]], loss_fn: LossFn, rescore: Callable[[dict[str, float]], float] | None
) -> np.ndarray:
    """Exact scores of candidate points: ``rescore`` one by one, or the loss vmapped over them."""
    if rescore is not None:
        return np.array([float(rescore(p)) for p in points])
    cols = {k: jnp.asarray(np.array([p[k] for p in points])) for k in points[0]}
    return np.asarray(jit_few_calls(jax.vmap(loss_fn))(cols), dtype=float)


def _trajectory(losses: np.ndarray, values: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Rows (restart, step, loss, knob values), restart-major."""
    steps, restarts = losses.shape
    rows = []
    for r, t in itertools.product(range(restarts), range(steps)):
        rows.append({"restart": r, "step": t, "loss": float(losses[t, r])})
        rows[-1] |= {k: float(v[t, r]) for k, v in values.items()}
    return rows


def gradient_descent(
    loss_fn: LossFn,
    knobs: Mapping[str, Knob],
    *,
    steps: int = 200,
    learning_rate: float = 0.05,
    restarts: int = 4,
    seed: int = 0,
    optimizer: str | optax.GradientTransformation = "adam",
    rescore: Callable[[dict[str, float]], float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """Minimise ``loss_fn(values) -> scalar`` over ``knobs`` from ``restarts`` seeded random starts.

    ``loss_fn`` gets a dict of scalar ``jax.Array`` values and must be differentiable (smooth its
    ``max``/``relu`` where it needs to be). Per restart the best iterate of the descent (usually the
    last) is projected onto the ranges, its integer neighbourhood enumerated, and every candidate
    scored exactly by ``rescore(point) -> float`` if given (e.g. the unsmoothed model), else by
    ``loss_fn``; the best restart wins. ``Result.trajectory`` has one row per restart and step
    (``restart``, ``step``, ``loss``, the continuous knob values); ``Result.table`` one row per restart.
    The same ``seed`` gives the same result.
    """
    if not knobs:
        raise ConfigError("gradient_descent needs at least one knob")
    simplex_groups(knobs)  # validates the simplex groups before anything is traced
    raw = _starts(knobs, restarts, seed)
    losses, values = _descend(
        loss_fn, knobs, raw, _optimizer(optimizer, learning_rate, steps), steps, progress
    )
    losses = np.where(np.isfinite(losses), losses, np.inf)
    if not np.isfinite(losses).any():
        raise ConfigError("the loss is not finite at any point visited by gradient descent")
    best_t = np.argmin(losses, axis=0)  # best iterate per restart
    table, candidates = _rescored_table(losses, values, best_t, knobs, loss_fn, rescore)
    win = int(np.argmin(table["objective"]))
    return Result(
        driver="gd",
        best={k: float(table[k][win]) for k in knobs},
        metrics={"objective": float(table["objective"][win]), "loss": float(table["loss"][win])},
        table=table,
        pareto_axes=("objective", "loss"),
        trajectory=_trajectory(losses, values),
        evaluations=restarts * (steps + 1) + candidates,
        extras={"best_restart": win, "best_step": int(best_t[win]), "rescored": candidates},
    )


def _rescored_table(
    losses: np.ndarray,
    values: dict[str, np.ndarray],
    best_t: np.ndarray,
    knobs: Mapping[str, Knob],
    loss_fn: LossFn,
    rescore: Callable[[dict[str, float]], float] | None,
) -> tuple[dict[str, np.ndarray], int]:
    """One row per restart: the best point of the rounded neighbourhood of its best iterate (clipped
    against float error) by the exact score. All restarts' candidates are scored in one batch.
    Returns (table, number of candidates scored)."""
    restarts = len(best_t)
    candidates, owner = [], []
    for r, t in enumerate(best_t):
        point = {k: float(np.clip(v[t, r], knobs[k].low, knobs[k].high)) for k, v in values.items()}
        neighbours = _neighbourhood(point, knobs)
        candidates += neighbours
        owner += [r] * len(neighbours)
    scores = _score(candidates, loss_fn, rescore)
    scores, owner_arr = np.where(np.isfinite(scores), scores, np.inf), np.asarray(owner)
    pick = [int(np.flatnonzero(owner_arr == r)[np.argmin(scores[owner_arr == r])]) for r in range(restarts)]
    table = {
        "restart": np.arange(restarts, dtype=float),
        **{k: np.array([candidates[i][k] for i in pick]) for k in knobs},
        "objective": scores[pick],
        "loss": losses[best_t, np.arange(restarts)],
        "feasible": np.isfinite(scores[pick]),
    }
    return table, len(candidates)
