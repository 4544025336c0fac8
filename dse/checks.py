"""Checks shared by the apps: user values (:func:`positive_int`, :func:`fraction`, one-line
:class:`ConfigError`), and results that cannot be wrong silently: every reported number is
checked where a report is built.

A time, size, count, rate, power or cost must be a finite number >= 0; an entry that is
infinite by definition (the objective of an infeasible design) is reported as such by the caller,
not passed here. A violation is not an output but a bug: :class:`ResultError` names the offending
key, its value and the inputs that produced it, and the app prints it as one line and exits 3.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.config_store import ConfigStore

from costmodels.architectures import MAX_INT
from costmodels.errors import ConfigError
from costmodels.parallel import CHOICE, DEGREE, DERIVED, FLAG, FRACTION, knobs, option_defaults


def shown(value: Any) -> str:
    """A user's value in a message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int in [``minimum``, ``MAX_INT``] (a bool or a float such as 1.5 is not one;
    JAX computes in 32-bit integers), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {what}, got {shown(value)}")
    if value > MAX_INT:
        raise ConfigError(f"{name} must be at most {MAX_INT:,}, got {shown(value)}")
    return value


def flag(value: Any, name: str) -> bool:
    """``value`` as a bool (true / false only, not 0 / 1), else a ConfigError naming ``name``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {shown(value)}")
    return value


def fraction(value: Any, name: str) -> float:
    """``value`` as a float in [0, 1], else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{name} is a fraction in [0, 1], got {shown(value)}")
    return float(value)


def plan_options(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A plan node's options (``parallelism:``, ``placement:``, ``job:``) checked by each field's
    kind (``costmodels.parallel.knobs``), as the user writes them: degrees positive integers (a
    derived one, dp, may be null), flags true or false, fractions in [0, 1], a choice one of its
    names (``zero_stage``: 0..3, ``recompute``: none | selective | full). A key left out takes
    :func:`~costmodels.parallel.option_defaults`; keys that are no plan field are the caller's.
    Errors name ``prefix`` + the key."""
    defaults, meta = option_defaults(), knobs()
    out = defaults | {k: v for k, v in values.items() if k in defaults}
    for name, value in out.items():
        m, key = meta[name], prefix + name
        if m["kind"] == DEGREE and not (value is None and m["set_by"] == DERIVED):
            positive_int(value, key)
        elif m["kind"] == FLAG:
            flag(value, key)
        elif m["kind"] == FRACTION:
            out[name] = fraction(value, key)
        elif m["kind"] == CHOICE and not _is_choice(value, m["names"]):
            raise ConfigError(f"{key} must be one of {', '.join(m['names'])}, got {shown(value)}")
    return out


def register_plan_node() -> None:
    """Store every plan option at :func:`~costmodels.parallel.option_defaults` as Hydra's
    ``plan/options`` node (``plan@<node>: options`` in a defaults list), so a new plan field is a
    key of each tool's plan node without a YAML edit. An untyped node: :func:`plan_options`, not
    OmegaConf, checks a value and names its key, and a node may hold more keys (``order``)."""
    ConfigStore.instance().store(group="plan", name="options", node=option_defaults())


def _is_choice(value: Any, names: tuple[str, ...]) -> bool:
    """``value`` names one of ``names``: the name itself, or the integer of a numeric name."""
    if isinstance(value, str):
        return value in names and not value.isdigit()
    return isinstance(value, int) and not isinstance(value, bool) and str(value) in names


MAX_FILE_BYTES = 256 * 2**20  # config, case, topology and placement files are far smaller


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (``what`` names it in the message); a missing, unreadable, oversized or
    non-UTF-8 file is a one-line ConfigError."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{what} {path}: {path.stat().st_size:,} bytes, more than such a file holds")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def read_json(path: Path, what: str) -> Any:
    """A JSON file: :func:`read_text`, then a one-line ConfigError for malformed or too deeply
    nested JSON (naming the line and column)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} {path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise ConfigError(f"{what} {path}: JSON nested too deeply") from None


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
