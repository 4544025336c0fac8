"""Programs compiled for a few calls (``search.xla``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import search.xla
from search.xla import jit_few_calls


def _soft_min_grad(x: jax.Array) -> jax.Array:
    """d/dx of -log Σ exp(-x): the softmax of -x."""
    return jax.grad(lambda v: -jax.nn.logsumexp(-v))(x)


def test_few_calls_program_computes_what_the_formula_gives() -> None:
    """The gradient of the soft minimum is softmax(-x) = exp(-x) / Σ exp(-x), by hand in NumPy."""
    fn = jit_few_calls(_soft_min_grad)
    for scale in (1.0, 2.0):  # the compiled program's second call, with new values
        x = scale * np.linspace(0.5, 3.0, 257, dtype=np.float32)
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x))), np.exp(-x) / np.exp(-x).sum(), rtol=1e-5)


def test_an_option_this_xla_does_not_know_compiles_with_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """XLA's debug options change between releases: one it no longer knows costs compile time, not
    the result."""
    monkeypatch.setattr(search.xla, "FEW_CALLS_OPTIONS", {"xla_option_from_another_release": 1})
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        jax.jit(_soft_min_grad, compiler_options=search.xla.FEW_CALLS_OPTIONS)(jnp.ones(4))
    fn = jit_few_calls(_soft_min_grad)
    for _ in range(2):
        np.testing.assert_allclose(np.asarray(fn(jnp.ones(4))), np.full(4, 0.25), rtol=1e-6)
