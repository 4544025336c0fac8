"""A parallel mapping (execution plan) of a training job, as a JAX pytree of numbers.

Every field is a leaf, so a batch of plans is one :class:`Plan` whose leaves are arrays and the
cost models ``vmap`` over it. Degrees follow Megatron-LM: ``tp·cp·pp·dp`` = devices; expert
parallelism ``ep`` is carved out of the data-parallel ranks (``ep`` divides ``dp``); ``vpp`` is the
number of interleaved model chunks per pipeline stage (1 = plain 1F1B). Flags are 0/1 floats and
``recompute`` is 0 (none), 1 (selective, Korthikanti et al. 2022) or 2 (full).

Rank order (innermost first) is tp, cp, ep-within-dp, dp, pp, as Megatron's default
``tp-cp-ep-dp-pp``: a parallel dimension lives inside the scale-up domain when the product of it and
every dimension inside it fits the domain.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.architectures import ModelSpec
from costmodels.errors import ConfigError

Scalar = Any

RECOMPUTE: dict[str, int] = {"none": 0, "selective": 1, "full": 2}


@jax.tree_util.register_dataclass
@dataclass(frozen=True, kw_only=True)
class Plan:
    """Degrees, batch split and options of one training mapping (all leaves, float or array)."""

    tp: Scalar = 1.0
    pp: Scalar = 1.0
    dp: Scalar = 1.0
    cp: Scalar = 1.0
    ep: Scalar = 1.0
    vpp: Scalar = 1.0
    microbatch: Scalar = 1.0  # sequences per micro-batch
    global_batch: Scalar = 1.0  # sequences per optimizer step
    sequence_parallel: Scalar = 0.0
    zero_stage: Scalar = 0.0
    recompute: Scalar = 0.0
    tp_overlap: Scalar = 0.0  # fraction of TP collectives hidden behind GEMMs (TE userbuffers)
    dp_overlap: Scalar = 0.0  # fraction of the DP gradient reduction hidden behind the backward pass
    zero3_overlap: Scalar = 0.5  # fraction of ZeRO-3 parameter gathers hidden by prefetching
    # 1: weight streaming (Cerebras, Hot Chips 34, 2022): the training state lives in external memory
    # over the host link; every micro-batch streams the weights in (forward, backward) and the
    # gradients out, where they are reduced across replicas and the optimizer runs.
    weight_streaming: Scalar = 0.0
    # 1: the embedding and the loss each count as one pipeline layer when layers are split over
    # stages (Megatron-Core ``account_for_embedding_in_pipeline_split`` and
    # ``account_for_loss_in_pipeline_split``): the first and last stages hold one transformer layer less.
    pipeline_edge_layers: Scalar = 0.0

    @property
    def num_devices(self) -> Scalar:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def microbatches(self) -> Scalar:
        """Micro-batches per pipeline per step: global batch / (dp · micro-batch)."""
        return self.global_batch / (self.dp * self.microbatch)


def make_plan(**values: Any) -> Plan:
    """A :class:`Plan` from keyword values; ``recompute`` may be a name ('none'/'selective'/'full')."""
    known = {f.name for f in fields(Plan)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown parallelism option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    recompute = values.get("recompute", 0)
    if isinstance(recompute, str):
        if recompute not in RECOMPUTE:
            raise ConfigError(f"recompute must be one of {', '.join(RECOMPUTE)}, got '{recompute}'")
        values["recompute"] = RECOMPUTE[recompute]
    return Plan(**{k: float(v) if isinstance(v, bool | int | float) else v for k, v in values.items()})


def stage_layers(num_layers: int, plan: Plan) -> Scalar:
    """Transformer layers on the fullest pipeline stage.

    The ``L + 2e`` pipeline layers (``e`` = ``pipeline_edge_layers`` when pp > 1: the embedding and
    the loss counted as layers) are split over ``pp·vpp`` chunks, ceil/floor shares, so a stage
    holds at most ``ceil((L + 2e)/(pp·vpp))·vpp`` layers (Megatron-Core uneven pipeline split)."""
    edge = jnp.where(plan.pp > 1, 2.0 * plan.pipeline_edge_layers, 0.0)
    chunks = plan.pp * plan.vpp
    return jnp.minimum(jnp.ceil((num_layers + edge) / chunks) * plan.vpp, num_layers)


def check_plan(plan: Plan, spec: ModelSpec, num_devices: int, seq_len: int) -> None:
    """Raise :class:`ConfigError` naming the field and the fix when a concrete plan is impossible."""
    v = {f.name: float(np.asarray(getattr(plan, f.name))) for f in fields(Plan)}
    for name in ("tp", "pp", "dp", "cp", "ep", "vpp", "microbatch", "global_batch"):
        if v[name] < 1 or v[name] != int(v[name]):
            raise ConfigError(f"parallelism.{name} must be a positive integer, got {v[name]:g}")
    product = v["tp"] * v["pp"] * v["dp"] * v["cp"]
    if product != num_devices:
        raise ConfigError(
            f"tp·pp·dp·cp = {v['tp']:g}·{v['pp']:g}·{v['dp']:g}·{v['cp']:g} = {product:g} but num_devices = "
            f"{num_devices}: choose degrees whose product is the device count"
        )
    _divides(v["tp"], spec.num_heads, "tp", "num_attention_heads")
    if spec.mla is None and spec.num_kv_heads >= v["tp"]:
        _divides(v["tp"], spec.num_kv_heads, "tp", "num_key_value_heads")
    edge = 2 * v["pipeline_edge_layers"] if v["pp"] > 1 else 0
    if v["pp"] * v["vpp"] > spec.num_layers + edge:  # every chunk needs a layer; uneven shares are fine
        raise ConfigError(
            f"pp·vpp = {v['pp']:g}·{v['vpp']:g} = {v['pp'] * v['vpp']:g} pipeline chunks but the model has "
            f"{spec.num_layers} layers{f' (+{edge:g} for embedding and loss)' if edge else ''}: "
            "choose pp·vpp of at most the layer count"
        )
    _divides(v["cp"] * (2 if v["cp"] > 1 else 1), seq_len, "2·cp (load-balanced ring attention)", "seq_len")
    _divides(v["ep"], v["dp"], "ep", "dp (experts are sharded over data-parallel ranks)")
    if spec.moe is not None:
        _divides(v["ep"], spec.moe.num_experts, "ep", "the number of routed experts")
    elif v["ep"] > 1:
        raise ConfigError(f"ep = {v['ep']:g} but {spec.model_type} has no experts: use ep=1")
    _divides(v["dp"] * v["microbatch"], v["global_batch"], "dp·microbatch", "global_batch")
    if v["vpp"] > 1 and v["pp"] == 1:
        raise ConfigError("vpp > 1 (interleaved pipeline) needs pp > 1")
    if v["sequence_parallel"] and v["tp"] == 1:
        raise ConfigError("sequence_parallel needs tp > 1")
    if v["zero_stage"] not in (0, 1, 2, 3):
        raise ConfigError(f"zero_stage must be 0, 1, 2 or 3, got {v['zero_stage']:g}")
    if v["recompute"] not in (0, 1, 2):
        raise ConfigError("recompute must be none, selective or full")
    if v["pipeline_edge_layers"] not in (0, 1):
        raise ConfigError(f"pipeline_edge_layers must be 0 or 1, got {v['pipeline_edge_layers']:g}")
    for name in ("tp_overlap", "dp_overlap", "zero3_overlap"):
        if not 0 <= v[name] <= 1:
            raise ConfigError(f"parallelism.{name} is a fraction in [0, 1], got {v[name]:g}")


def _divides(degree: float, total: float, name: str, what: str) -> None:
    if total % degree:
        raise ConfigError(f"{name} = {degree:g} does not divide {what} = {total:g}: pick a divisor")
