"""Checks shared by the apps: user values (:func:`positive_int`, :func:`fraction`, one-line
:class:`ConfigError`), and results that cannot be wrong silently: every reported number is
checked where a report is built.

A time, size, count, rate, power or cost must be a finite number >= 0; an entry that is
infinite by definition (the objective of an infeasible design) is reported as such by the caller,
not passed here. A violation is not an output but a bug: :class:`ResultError` names the offending
key, its value and the inputs that produced it, and the app prints it as one line and exits 3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from costmodels.architectures import MAX_INT
from costmodels.errors import ConfigError


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int in [``minimum``, ``MAX_INT``] (a bool or a float such as 1.5 is not one;
    JAX computes in 32-bit integers), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    if value > MAX_INT:
        raise ConfigError(f"{name} must be at most {MAX_INT:,}, got {value!r}")
    return value


def fraction(value: Any, name: str) -> float:
    """``value`` as a float in [0, 1], else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{name} is a fraction in [0, 1], got {value!r}")
    return float(value)


class ResultError(RuntimeError):
    """A computed result that cannot be right (NaN, infinite or negative): a bug to report."""


def _leaves(value: Any, key: str) -> list[tuple[str, Any]]:
    """(dotted key, number) for every numeric leaf of nested mappings and lists."""
    if isinstance(value, Mapping):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list | tuple):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{key}[{i}]")]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float | np.number) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return [(key, float(value))]
    if isinstance(value, np.ndarray):
        return [(f"{key}[{i}]", float(v)) for i, v in enumerate(value.ravel())]
    return []


def check_results(results: Mapping[str, Any], inputs: str, allow_negative: tuple[str, ...] = ()) -> None:
    """Raise :class:`ResultError` unless every numeric leaf of ``results`` is finite and >= 0
    (keys ending in one of ``allow_negative``, and ``neg_*`` objectives, may be negative)."""
    for key, value in _leaves(results, ""):
        signed = key.endswith(allow_negative) or key.rsplit(".", 1)[-1].startswith("neg_")
        if not math.isfinite(value) or (value < 0 and not signed):
            raise ResultError(
                f"internal error: {key} = {value} is not a finite non-negative number for {inputs}; "
                "this is a bug in dse, please report it with this line"
            )
