"""A search space: what a problem lets a driver vary.

A dimension is either a tuple of **choices** (the mapping knobs: ``tp`` in (1, 2, 4, 8)) or a
:class:`Knob`, a **box** ``[low, high]`` that may be ``integer`` or searched in ``log`` space, whose
members of one ``group`` are fractions summing to 1 (a **simplex**: the wafer's area split). Every
driver reads the same :data:`Space`: grid search enumerates choices, random search and Optuna sample
any dimension, gradient descent moves boxes along a loss's gradient.

Box coordinates: ``z = (x − low)/(high − low)`` (``log``: the same on ``log x``) in [0, 1]; a simplex
group's coordinates are its fractions, projected in the Euclidean sense onto
``{Σ x = 1, low ≤ x ≤ high}`` — ``x_i = clip(y_i − τ, low_i, high_i)`` with the shift τ found by
bisection (the box-constrained form of the simplex projection, Held, Wolfe & Crowder 1974; Duchi et
al. 2008, "Efficient projections onto the l1-ball"), so the sum and every bound hold exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.errors import ConfigError


@dataclass(frozen=True)
class Knob:
    """A continuous knob in ``[low, high]``; ``integer`` rounds it, ``log`` searches ``log x``, and
    knobs sharing a ``group`` name are fractions that sum to 1."""

    low: float
    high: float
    integer: bool = False
    group: str | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"knob range must have low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ConfigError(f"a log knob needs low > 0, got {self.low}")
        if self.integer and np.ceil(self.low) > np.floor(self.high):
            raise ConfigError(f"integer knob range [{self.low}, {self.high}] holds no integer")
        if self.group is not None and (self.log or self.integer):
            raise ConfigError(f"knob in simplex group '{self.group}' cannot be integer or log")


def simplex_groups(knobs: Mapping[str, Knob]) -> dict[str, list[str]]:
    """Simplex groups (name → member knob names), checked: ≥ 2 members, Σ low ≤ 1 ≤ Σ high."""
    groups: dict[str, list[str]] = {}
    for name, k in knobs.items():
        if k.group is not None:
            groups.setdefault(k.group, []).append(name)
    for g, members in groups.items():
        lows, highs = (sum(getattr(knobs[m], a) for m in members) for a in ("low", "high"))
        if len(members) < 2 or lows > 1.0 or highs < 1.0:
            raise ConfigError(
                f"simplex group '{g}' needs ≥ 2 knobs with Σ low ≤ 1 ≤ Σ high; has {members}, "
                f"Σ low = {lows:g}, Σ high = {highs:g}"
            )
    return groups


def project_simplex(y: jax.Array, low: jax.Array, high: jax.Array, iters: int = 60) -> jax.Array:
    """Euclidean projection of ``y`` onto ``{Σ x = 1, low ≤ x ≤ high}``: ``clip(y − τ, low, high)``
    with τ bracketed in [min(y − high), max(y − low)] and bisected (Σ is non-increasing in τ)."""

    def body(_: int, bracket: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = jnp.sum(jnp.clip(y - mid, low, high)) > 1.0  # τ too small
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.min(y - high), jnp.max(y - low)))
    return jnp.clip(y - 0.5 * (lo + hi), low, high)


def project_coordinates(raw: Mapping[str, jax.Array], knobs: Mapping[str, Knob]) -> dict[str, jax.Array]:
    """The feasible point nearest to ``raw`` (one restart: scalars): boxes clipped to [0, 1], simplex
    groups projected onto their bounded simplex."""
    out = {n: jnp.clip(raw[n], 0.0, 1.0) for n, k in knobs.items() if k.group is None}
    for members in simplex_groups(knobs).values():
        low, high = (jnp.array([getattr(knobs[m], a) for m in members]) for a in ("low", "high"))
        x = project_simplex(jnp.stack([raw[m] for m in members]), low, high)
        out |= {m: x[i] for i, m in enumerate(members)}
    return out


def knob_values(
    raw: Mapping[str, jax.Array], knobs: Mapping[str, Knob], st_round: bool
) -> dict[str, jax.Array]:
    """Knob values from (projected) coordinates (one restart: scalars)."""
    out = {}
    for name, k in knobs.items():
        z = raw[name]
        if k.group is not None:
            x = z
        elif k.log:
            x = jnp.exp(np.log(k.low) + np.log(k.high / k.low) * z)
        else:
            x = k.low + (k.high - k.low) * z
        if k.integer and st_round:  # straight-through: forward round(x), backward identity
            rounded = jnp.clip(jnp.round(x), np.ceil(k.low), np.floor(k.high))
            x = x + jax.lax.stop_gradient(rounded - x)
        out[name] = x
    return out


Space = Mapping[str, "Knob | Sequence[float]"]  # name → a box, or the values to choose from


def boxes(space: Space) -> dict[str, Knob]:
    """The box dimensions of ``space``."""
    return {name: dim for name, dim in space.items() if isinstance(dim, Knob)}


def is_discrete(space: Space) -> bool:
    """Whether every dimension is a list of choices (what grid search enumerates)."""
    return not boxes(space)


def sample(space: Space, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` points drawn uniformly: a choice uniformly among its values, a box uniformly in its
    coordinates (log-uniform for ``log``; integers rounded), a simplex group uniform coordinates in
    its bounds projected onto its simplex — the distribution gradient descent starts from."""
    knobs = boxes(space)
    out = {name: rng.choice(np.asarray(dim, float), n) for name, dim in space.items() if name not in knobs}
    if knobs:
        raw = {name: jnp.asarray(rng.uniform(0.0, 1.0, n)) for name in knobs}
        point = jax.vmap(lambda r: knob_values(project_coordinates(r, knobs), knobs, st_round=False))(raw)
        for name, k in knobs.items():
            x = np.asarray(point[name], float)
            out[name] = np.clip(np.round(x), np.ceil(k.low), np.floor(k.high)) if k.integer else x
    return {name: out[name] for name in space}


def onto_simplex(point: Mapping[str, float], knobs: Mapping[str, Knob]) -> dict[str, float]:
    """``point`` with each simplex group's values projected onto its bounded simplex (a sampler that
    draws the members independently, Optuna's, proposes points off it); other knobs unchanged."""
    out = dict(point)
    for members in simplex_groups(knobs).values():
        low, high = (jnp.array([getattr(knobs[m], a) for m in members]) for a in ("low", "high"))
        x = project_simplex(jnp.array([float(point[m]) for m in members]), low, high)
        out |= {m: float(x[i]) for i, m in enumerate(members)}
    return out
