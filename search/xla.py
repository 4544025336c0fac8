"""How a search compiles a program that it calls only a few dozen times.

XLA's CPU defaults (LLVM at -O2, its MLIR fusion emitters) suit a program that runs millions of
times, such as the grid search's cost function. Gradient descent's update runs once per step (60
steps in ``wafer_arch``) and a design's exact score a few dozen times, so their compile time is
most of their cost. Measured on the 2-core machine, for the wafer search's update (about 24,000
lines of optimised HLO):

========================================  ============  ==========
options                                   compile        60 steps
========================================  ============  ==========
XLA's defaults                            6.1 s          0.44 s
LLVM at -O1                               4.7 s          0.42 s
LLVM at -O1, elemental fusion emitters    3.5 s          0.45 s
========================================  ============  ==========

The same options halve the grid search's evaluations per second (13–19 M/s → 7–9 M/s), which is
why they apply per program and not to the process (``XLA_FLAGS``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.errors import JaxRuntimeError

FEW_CALLS_OPTIONS: dict[str, Any] = {
    "xla_backend_optimization_level": 1,
    "xla_cpu_use_fusion_emitters": False,
}


def jit_few_calls(fn: Callable[..., Any], **jit_options: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **jit_options)`` compiled with :data:`FEW_CALLS_OPTIONS`: the same results to
    float tolerance, compiled in about half the time, for a program called a few dozen times.

    An XLA that no longer knows one of the options (they are debug options, free to change between
    releases) refuses to compile with them; ``fn`` is then compiled with XLA's defaults, which
    changes its compile time only."""
    tuned = jax.jit(fn, compiler_options=FEW_CALLS_OPTIONS, **jit_options)
    plain = None

    def call(*args: Any) -> Any:
        nonlocal plain
        if plain is None:
            try:
                return tuned(*args)
            except JaxRuntimeError as exc:
                if "No such compile option" not in str(exc):
                    raise
                plain = jax.jit(fn, **jit_options)
        return plain(*args)

    return call
