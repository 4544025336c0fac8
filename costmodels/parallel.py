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

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.architectures import ModelSpec
from costmodels.errors import ConfigError

Scalar = Any

# The kinds of plan field (a field's ``kind`` metadata): what values it takes and how a user sets it.
DEGREE = "degree"  # a positive integer
FLAG = "flag"  # 0 / 1 (false / true)
CHOICE = "choice"  # an index into the field's ``names`` (0 .. len - 1), set by name or index
FRACTION = "fraction"  # in [0, 1]


# Who sets a plan field in a configuration: the user in its plan node (``parallelism:`` of dse.calc,
# ``placement:``, ``job:`` of dse.topoeval), the devices (dp: what tp·pp·cp leave, null in the node),
# or the workload (global batch, not a plan option).
OPTION, DERIVED, WORKLOAD = "option", "derived", "workload"


def _meta(
    kind: str,
    doc: str,
    *,
    neutral: Any = None,
    names: tuple[str, ...] = (),
    searched: bool = False,
    set_by: str = OPTION,
) -> dict[str, Any]:
    """A plan field's metadata: ``kind``, a one-line ``doc``, the ``neutral`` value a user leaves out
    (None: always stated), for a choice the ``names`` of its values, whether the mapping search
    takes candidate values of it (``searched``) and who sets it (``set_by``)."""
    return {
        "kind": kind,
        "doc": doc,
        "neutral": neutral,
        "names": names,
        "searched": searched,
        "set_by": set_by,
    }


ZERO = ("0", "1", "2", "3")
RECOMPUTE_NAMES = ("none", "selective", "full")


@jax.tree_util.register_dataclass
@dataclass(frozen=True, kw_only=True)
class Plan:
    """Degrees, batch split and options of one training mapping (all leaves, float or array). Each
    field carries its kind, description and neutral value (:func:`knobs`)."""

    tp: Scalar = field(default=1.0, metadata=_meta(DEGREE, "tensor-parallel degree", searched=True))
    pp: Scalar = field(
        default=1.0, metadata=_meta(DEGREE, "pipeline-parallel degree (stages)", searched=True)
    )
    dp: Scalar = field(
        default=1.0, metadata=_meta(DEGREE, "data-parallel degree (expert ranks included)", set_by=DERIVED)
    )
    cp: Scalar = field(
        default=1.0, metadata=_meta(DEGREE, "context-parallel degree", neutral=1, searched=True)
    )
    ep: Scalar = field(
        default=1.0, metadata=_meta(DEGREE, "expert-parallel degree, within dp", neutral=1, searched=True)
    )
    vpp: Scalar = field(
        default=1.0, metadata=_meta(DEGREE, "model chunks per pipeline stage", neutral=1, searched=True)
    )
    microbatch: Scalar = field(
        default=1.0, metadata=_meta(DEGREE, "sequences per micro-batch", searched=True)
    )
    global_batch: Scalar = field(
        default=1.0, metadata=_meta(DEGREE, "sequences per optimizer step", set_by=WORKLOAD)
    )
    sequence_parallel: Scalar = field(
        default=0.0, metadata=_meta(FLAG, "sequence parallelism", neutral=False, searched=True)
    )
    zero_stage: Scalar = field(
        default=0.0,
        metadata=_meta(CHOICE, "ZeRO stage (1: distributed optimizer)", neutral=0, names=ZERO, searched=True),
    )
    recompute: Scalar = field(
        default=0.0,
        metadata=_meta(
            CHOICE, "activation recomputation", neutral="none", names=RECOMPUTE_NAMES, searched=True
        ),
    )
    # fractions of a communication hidden behind compute
    tp_overlap: Scalar = field(
        default=0.0, metadata=_meta(FRACTION, "TP behind GEMMs (TE userbuffers)", neutral=0.0)
    )
    dp_overlap: Scalar = field(
        default=0.0, metadata=_meta(FRACTION, "DP reduction behind backward", neutral=0.0)
    )
    zero3_overlap: Scalar = field(default=0.5, metadata=_meta(FRACTION, "ZeRO-3 gathers behind prefetch"))
    # 1: weight streaming (Cerebras, Hot Chips 34, 2022): the training state lives in external memory
    # over the host link; every micro-batch streams the weights in (forward, backward) and the
    # gradients out, where they are reduced across replicas and the optimizer runs.
    weight_streaming: Scalar = field(default=0.0, metadata=_meta(FLAG, "weight streaming", neutral=False))
    # 1: the embedding and the loss each count as one pipeline layer when layers are split over
    # stages (Megatron-Core ``account_for_embedding_in_pipeline_split`` and
    # ``account_for_loss_in_pipeline_split``): the first and last stages hold one transformer layer less.
    pipeline_edge_layers: Scalar = field(
        default=0.0, metadata=_meta(FLAG, "embedding and loss as pipeline layers", neutral=False)
    )
    # 1: context parallelism by all-to-all over the heads (DeepSpeed-Ulysses, Jacobs et al. 2023)
    # instead of passing K,V around a ring: each device attends the whole sequence for 1/cp of the heads.
    cp_a2a: Scalar = field(
        default=0.0,
        metadata=_meta(FLAG, "Ulysses (all-to-all) context parallelism", neutral=False, searched=True),
    )

    @property
    def num_devices(self) -> Scalar:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def microbatches(self) -> Scalar:
        """Micro-batches per pipeline per step: global batch / (dp · micro-batch)."""
        return self.global_batch / (self.dp * self.microbatch)


def knobs(kind: str | None = None) -> dict[str, Mapping[str, Any]]:
    """Plan field → its metadata (kind, doc, neutral, names), in field order; only ``kind`` if given."""
    return {f.name: f.metadata for f in fields(Plan) if kind is None or f.metadata["kind"] == kind}


def option_defaults() -> dict[str, Any]:
    """Plan option → the value a configuration's plan node starts at, as a user writes it: the
    neutral value (``false``, ``none``, 1), else the field's default (degrees as ints); a derived
    field (dp) is null. The workload's fields are not options. Hydra's ``plan`` node
    (``dse/schema.py``) is this, so a new field is an option of every tool without a YAML edit."""
    out: dict[str, Any] = {}
    for f in fields(Plan):
        m = f.metadata
        if m["set_by"] == WORKLOAD:
            continue
        default = int(f.default) if m["kind"] == DEGREE else float(f.default)
        out[f.name] = None if m["set_by"] == DERIVED else default if m["neutral"] is None else m["neutral"]
    return out


RECOMPUTE: dict[str, int] = {name: i for i, name in enumerate(RECOMPUTE_NAMES)}


def recompute_name(value: Any) -> str:
    """2 → 'full'; a name is returned as is."""
    return value if isinstance(value, str) else RECOMPUTE_NAMES[int(value)]


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


# --------------------------------------------------------------------------------------------
# The mapping rules, written once: check_plan, the grid and wafer searches, validation's
# enumeration and the calculator all read them from RULES.

Columns = Mapping[str, np.ndarray]  # plan field → values, one entry per mapping


class Target(NamedTuple):
    """What the rules read besides the plan: the model, the device count (None: not checked) and the
    sequence length."""

    spec: ModelSpec
    num_devices: float | None
    seq_len: int


@dataclass(frozen=True)
class Rule:
    """One rule of a valid mapping: the plan fields it reads, where it holds (a mask over the
    columns) and the one line that tells a user what is wrong and how to fix it."""

    fields: tuple[str, ...]
    holds: Callable[[Columns, Target], np.ndarray]
    message: Callable[[dict[str, float], Target], str]


def _divisible(total: Any, degree: Any) -> np.ndarray:
    return np.mod(total, degree) == 0


def _positive_integer(name: str) -> Rule:
    return Rule(
        (name,),
        lambda c, t: (c[name] >= 1) & (c[name] == np.floor(c[name])),
        lambda v, t: f"parallelism.{name} must be a positive integer, got {v[name]:g}",
    )


def _divides_message(name: str, degree: float, what: str, total: float) -> str:
    return f"{name} = {degree:g} does not divide {what} = {total:g}: pick a divisor"


def _kv_heads(spec: ModelSpec) -> int:
    """The heads tp must divide besides the query heads: the KV heads (MLA: the query heads)."""
    return spec.num_heads if spec.mla is not None else spec.num_kv_heads


def _edge(c: Columns) -> np.ndarray:
    """Pipeline layers added by the embedding and the loss: 2·e when pp > 1."""
    return np.where(c["pp"] > 1, 2 * c["pipeline_edge_layers"], 0)


def _chunks_message(v: dict[str, float], t: Target) -> str:
    edge = 2 * v["pipeline_edge_layers"] if v["pp"] > 1 else 0
    return (
        f"pp·vpp = {v['pp']:g}·{v['vpp']:g} = {v['pp'] * v['vpp']:g} pipeline chunks but the model has "
        f"{t.spec.num_layers} layers{f' (+{edge:g} for embedding and loss)' if edge else ''}: "
        "choose pp·vpp of at most the layer count"
    )


def _experts_message(v: dict[str, float], t: Target) -> str:
    if t.spec.moe is None:
        return f"ep = {v['ep']:g} but {t.spec.model_type} has no experts: use ep=1"
    return _divides_message("ep", v["ep"], "the number of routed experts", t.spec.moe.num_experts)


def _fraction(name: str) -> Rule:
    return Rule(
        (name,),
        lambda c, t: (c[name] >= 0) & (c[name] <= 1),
        lambda v, t: f"parallelism.{name} is a fraction in [0, 1], got {v[name]:g}",
    )


def _choice(name: str) -> Rule:
    names = knobs()[name]["names"]
    listed = ", ".join(names[:-1]) + f" or {names[-1]}"
    return Rule(
        (name,),
        lambda c, t: np.isin(c[name], np.arange(len(names))),
        lambda v, t: f"{name} must be {listed}, got {v[name]:g}",
    )


def _flag(name: str) -> Rule:
    return Rule(
        (name,),
        lambda c, t: np.isin(c[name], (0, 1)),
        lambda v, t: f"{name} must be 0 or 1 (false or true), got {v[name]:g}",
    )


# In the order check_plan reports them: a plan's first broken rule is its error.
RULES: dict[str, Rule] = {
    **{f"{n}_positive_integer": _positive_integer(n) for n in knobs(DEGREE)},
    "devices": Rule(
        ("tp", "pp", "dp", "cp"),
        lambda c, t: t.num_devices is None or c["tp"] * c["pp"] * c["dp"] * c["cp"] == t.num_devices,
        lambda v, t: (
            f"tp·pp·dp·cp = {v['tp']:g}·{v['pp']:g}·{v['dp']:g}·{v['cp']:g} = "
            f"{v['tp'] * v['pp'] * v['dp'] * v['cp']:g} but num_devices = {t.num_devices:g}: choose degrees "
            "whose product is the device count"
        ),
    ),
    "tp_divides_heads": Rule(
        ("tp",),
        lambda c, t: _divisible(t.spec.num_heads, c["tp"]),
        lambda v, t: _divides_message("tp", v["tp"], "num_attention_heads", t.spec.num_heads),
    ),
    # KV heads fewer than tp are replicated; as many or more must split evenly
    "tp_divides_kv_heads": Rule(
        ("tp",),
        lambda c, t: (c["tp"] > _kv_heads(t.spec)) | _divisible(_kv_heads(t.spec), c["tp"]),
        lambda v, t: _divides_message("tp", v["tp"], "num_key_value_heads", t.spec.num_kv_heads),
    ),
    # Megatron's MambaMixer splits the heads and the B/C groups over tp
    "tp_divides_ssm_heads": Rule(
        ("tp",),
        lambda c, t: (
            np.ones_like(c["tp"], dtype=bool)
            if t.spec.ssm is None
            else _divisible(math.gcd(t.spec.ssm.heads, t.spec.ssm.groups), c["tp"])
        ),
        lambda v, t: _divides_message(
            "tp",
            v["tp"],
            f"the state-space heads ({t.spec.ssm.heads}) and B/C groups ({t.spec.ssm.groups})",
            math.gcd(t.spec.ssm.heads, t.spec.ssm.groups),
        ),
    ),
    # a scan carries its state along the sequence; dse has no formula for handing it between ranks
    "cp_without_state_space": Rule(
        ("cp",),
        lambda c, t: (c["cp"] == 1) | (t.spec.ssm is None),
        lambda v, t: (
            f"cp = {v['cp']:g} but {t.spec.model_type} has {t.spec.ssm_layers} state-space layers, whose "
            "scan runs along the whole sequence: use cp=1"
        ),
    ),
    # every chunk needs a layer; uneven shares are fine (stage_layers prices the fullest stage)
    "pipeline_chunks": Rule(
        ("pp", "vpp", "pipeline_edge_layers"),
        lambda c, t: c["pp"] * c["vpp"] <= t.spec.num_layers + _edge(c),
        _chunks_message,
    ),
    # load-balanced ring attention cuts the sequence into 2·cp chunks
    "cp_divides_sequence": Rule(
        ("cp",),
        lambda c, t: _divisible(t.seq_len, np.where(c["cp"] > 1, 2 * c["cp"], 1)),
        lambda v, t: _divides_message(
            "2·cp (load-balanced ring attention)", v["cp"] * (2 if v["cp"] > 1 else 1), "seq_len", t.seq_len
        ),
    ),
    # Ulysses splits the heads over tp·cp
    "ulysses_heads": Rule(
        ("cp_a2a", "cp", "tp"),
        lambda c, t: (c["cp_a2a"] == 0) | (c["cp"] == 1) | _divisible(t.spec.num_heads, c["tp"] * c["cp"]),
        lambda v, t: (
            f"cp_a2a (Ulysses) splits the attention heads over tp·cp = {v['tp'] * v['cp']:g}, which does not "
            f"divide num_attention_heads = {t.spec.num_heads}: pick tp·cp dividing the heads, or ring CP"
        ),
    ),
    "ep_divides_dp": Rule(
        ("ep", "dp"),
        lambda c, t: _divisible(c["dp"], c["ep"]),
        lambda v, t: _divides_message(
            "ep", v["ep"], "dp (experts are sharded over data-parallel ranks)", v["dp"]
        ),
    ),
    "ep_divides_experts": Rule(
        ("ep",),
        lambda c, t: c["ep"] == 1 if t.spec.moe is None else _divisible(t.spec.moe.num_experts, c["ep"]),
        _experts_message,
    ),
    "batch_split": Rule(
        ("dp", "microbatch", "global_batch"),
        lambda c, t: _divisible(c["global_batch"], c["dp"] * c["microbatch"]),
        lambda v, t: _divides_message(
            "dp·microbatch", v["dp"] * v["microbatch"], "global_batch", v["global_batch"]
        ),
    ),
    "vpp_needs_pp": Rule(
        ("vpp", "pp"),
        lambda c, t: (c["vpp"] == 1) | (c["pp"] > 1),
        lambda v, t: "vpp > 1 (interleaved pipeline) needs pp > 1",
    ),
    "sequence_parallel_needs_tp": Rule(
        ("sequence_parallel", "tp"),
        lambda c, t: (c["sequence_parallel"] == 0) | (c["tp"] > 1),
        lambda v, t: "sequence_parallel needs tp > 1",
    ),
    **{f"{n}_choice": _choice(n) for n in knobs(CHOICE)},
    **{f"{n}_flag": _flag(n) for n in knobs(FLAG)},
    **{f"{n}_fraction": _fraction(n) for n in knobs(FRACTION)},
    # the state streams layer by layer through the whole model: no pipeline to split it over
    "streaming_without_pipeline": Rule(
        ("weight_streaming", "pp", "vpp"),
        lambda c, t: (c["weight_streaming"] == 0) | ((c["pp"] == 1) & (c["vpp"] == 1)),
        lambda v, t: "weight_streaming streams the whole model layer by layer: use pp=1 and vpp=1",
    ),
}


def plan_violations(
    columns: Columns, spec: ModelSpec, seq_len: int, num_devices: float | None = None
) -> dict[str, np.ndarray]:
    """Rule name → mask of the mappings that break it, for every rule of :data:`RULES` whose fields
    are all among ``columns`` (a rule on an absent field is not checked: the wafer search derives dp
    and the batch itself). ``num_devices`` None: the device product is not checked."""
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    n = max((v.size for v in cols.values()), default=1)
    target = Target(spec, num_devices, seq_len)
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, rule in RULES.items():
            if all(f in cols for f in rule.fields):
                out[name] = ~np.broadcast_to(np.asarray(rule.holds(cols, target), dtype=bool), (n,))
    return out


def valid_plans(
    columns: Columns, spec: ModelSpec, seq_len: int, num_devices: float | None = None
) -> np.ndarray:
    """Mask of the mappings that break no rule of :func:`plan_violations`."""
    broken = plan_violations(columns, spec, seq_len, num_devices).values()
    n = max((np.asarray(v).size for v in columns.values()), default=1)
    return ~np.any(np.stack(list(broken)), axis=0) if broken else np.ones(n, dtype=bool)


def with_defaults(columns: Columns, derived: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """``columns`` and every other :class:`Plan` field at its default, except the ``derived`` ones
    (left absent, so :func:`plan_violations` does not check their rules)."""
    n = max((np.asarray(v).size for v in columns.values()), default=1)
    out = {f.name: np.full(n, float(f.default)) for f in fields(Plan) if f.name not in derived}
    return out | {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}


def padded_plan(columns: Columns, size: int) -> Plan:
    """A batched :class:`Plan` of ``size`` rows from one float column per field, each column's last
    row repeated up to ``size`` (float32), so that batches padded to a few sizes share compiled
    programs."""
    return Plan(
        **{
            k: jnp.asarray(np.concatenate([v, np.repeat(v[-1:], size - len(v))]), jnp.float32)
            for k, v in columns.items()
        }
    )


def plan_columns(plan: Plan) -> dict[str, np.ndarray]:
    """Every field of ``plan`` as a float column (a scalar plan gives columns of length 1)."""
    return {f.name: np.atleast_1d(np.asarray(getattr(plan, f.name), dtype=np.float64)) for f in fields(Plan)}


def check_plan(plan: Plan, spec: ModelSpec, num_devices: int, seq_len: int) -> None:
    """Raise :class:`ConfigError` with the first broken rule's line (:data:`RULES`) when a concrete
    plan is impossible."""
    cols = plan_columns(plan)
    broken = plan_violations(cols, spec, seq_len, float(num_devices))
    for name, mask in broken.items():
        if mask[0]:
            values = {k: float(v[0]) for k, v in cols.items()}
            raise ConfigError(RULES[name].message(values, Target(spec, float(num_devices), seq_len)))
