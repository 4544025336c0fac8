"""Shared plumbing for the ``python -m dse.<name>`` Hydra apps.

Every entry point is a Hydra app over ``conf/<name>.yaml``. This module adds what Hydra does not:

* positional arguments (``python -m dse.ckpt_summarize model.pt``) become ``key=value``
  overrides for the app's declared positional keys;
* ``model=<path or hub id>`` becomes ``model=path model.source=<value>``, so a config.json path
  or a Hugging Face hub id works wherever a shipped model name does (``model`` is a config group
  of shipped configs, and Hydra only knows group options by name);
* user mistakes (:class:`costmodels.errors.ConfigError`) print one line on stderr and exit 2,
  with no traceback; ``format=json`` output goes to stdout alone.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from costmodels.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODEL_DIR = CONF_DIR / "model"


def _looks_like_model_source(value: str) -> bool:
    """A config.json path, a directory, or a hub id (``org/name``), not a shipped name."""
    if (MODEL_DIR / f"{value}.yaml").exists():
        return False
    return value.endswith(".json") or "/" in value or Path(value).exists()


_HYDRA_VALUE_FLAGS = frozenset(
    {
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--config-name",
        "-cn",
        "--config-path",
        "-cp",
        "--config-dir",
        "-cd",
        "--experimental-rerun",
    }
)


def rewrite_argv(argv: Sequence[str], positional: Sequence[str] = ()) -> list[str]:
    """Turn positional arguments and ``model=<path>`` into plain Hydra overrides."""
    out: list[str] = []
    free = list(positional)
    flag_value = False
    for arg in argv:
        if flag_value:  # the value of a Hydra flag such as ``--cfg job``
            out.append(arg)
            flag_value = False
        elif arg.startswith("-"):
            out.append(arg)
            flag_value = arg in _HYDRA_VALUE_FLAGS
        elif "=" in arg:
            key, _, value = arg.partition("=")
            if key == "model" and value and "," not in value and _looks_like_model_source(value):
                out += ["model=path", f"model.source={value}"]
            else:
                out.append(arg)
        elif free:
            out.append(f"{free.pop(0)}={arg}")
        else:
            raise ConfigError(f"unexpected argument {arg!r}: use key=value overrides")
    return out


def fail(message: str) -> None:
    """Print a one-line user error and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_app(task: Callable[[DictConfig], Any], config_name: str, positional: Sequence[str] = ()) -> None:
    """Run ``task`` as a Hydra app over ``conf/<config_name>.yaml``."""
    try:
        sys.argv[1:] = rewrite_argv(sys.argv[1:], positional)
    except ConfigError as exc:
        fail(str(exc))

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def _main(cfg: DictConfig) -> Any:
        try:
            task(cfg)
            sys.stdout.flush()
        except ConfigError as exc:
            fail(str(exc))
        except MissingMandatoryValue as exc:
            fail(f"missing required value '{exc.full_key}': pass {exc.full_key}=...")
        except BrokenPipeError:  # output piped into `head` and closed early: not an error
            _silence_stdout()
        return None

    try:
        _main()
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_json(payload: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    json.dump(payload, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / jax scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one of 'l'/'r' per column (numbers right by default)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if align is None:
        align = "".join(
            "r" if rows and isinstance(rows[0][i], int | float) else "l" for i in range(len(headers))
        )

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True)
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])
