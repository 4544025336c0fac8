"""Hugging Face ``config.json`` → :class:`ModelSpec`, one explicit parser per ``model_type``.

A :class:`ModelSpec` is the architecture in the field's own words (hidden size, heads, KV heads,
head dim, MLP width and kind, norms, biases, positions, MoE, MLA), normalised across families so
that one op builder (``workload.py``) serves them all. Each parser decides its family's architecture
(gated MLP, norms, parallel block, biases, ...) as ``transformers``' modeling code builds it, and
reads the fields that family's ``transformers`` configuration class defines. An unsupported
``model_type`` is an error that lists the supported ones (no catch-all branch).

Defaults and aliases are ``transformers``' own, not written here:

* a field the config leaves out takes the default of the family's configuration class
  (``GPTJConfig.vocab_size`` = 50400, ``GPT2Config.vocab_size`` = 50257, ...);
* an aliased name resolves through the class's ``attribute_map`` (GPT-2 ``hidden_size`` →
  ``n_embd``, Mixtral ``num_experts`` → ``num_local_experts``, Qwen3-MoE ``num_local_experts`` ↔
  ``num_experts``, DeepSeek-V3 ``num_local_experts`` → ``n_routed_experts``). Given both an alias
  and its target, the value under the name that is not a declared field wins, because
  ``transformers`` sets the declared fields first and the remaining keyword arguments after them;
* a value that is ``None`` (a class default such as GPT-2's ``n_inner``, or an explicit ``null``)
  means what the family's modeling code makes of it (``n_inner`` ``None`` = 4·``n_embd``,
  ``num_key_value_heads`` ``None`` = ``num_attention_heads``, DeepSeek's ``q_lora_rank`` ``None`` =
  a plain query projection); each parser states that meaning where it reads the field. An
  explicit ``null`` for a field without such a meaning counts as absent.

Three fields stay required whatever the class's default: the hidden size, the number of layers and
the number of attention heads. The class defaults for them are one checkpoint's size (Llama-2-7B's
4096/32/32), so a config without them is a mistake rather than a request for that model.

The defaults, ``attribute_map`` and ``sub_configs`` are read from the source of the configuration
class (``transformers/models/<type>/configuration_<type>.py``, found without importing
``transformers``) and cached per ``model_type``: importing a configuration class imports
``configuration_utils``, which imports ``torch`` whenever it is installed (≈2 s; the bare
``import transformers`` is ≈0.7 s), while reading the source takes milliseconds and imports
neither. ``tests/test_config_defaults.py`` checks the values read against the imported classes.
Relied on: transformers 5.x, whose configuration classes are ``@strict`` dataclasses with the
defaults as class-level field defaults (tested with 5.25); the 4.x form (defaults as ``__init__``
keyword defaults) is read too. A class the reader does not understand is imported instead
(``CONFIG_MAPPING``, slow but exact). A family this ``transformers`` lacks has no defaults: its
config must give every field the parser needs.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import itertools
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from costmodels.errors import ConfigError


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts MLP: ``num_experts`` routed experts of width ``expert_intermediate``,
    ``top_k`` per token, plus an always-on shared MLP of width ``shared_intermediate`` (0: none)
    with, where ``shared_gate``, a one-output gate."""

    num_experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int = 0
    shared_gate: bool = False  # Qwen2-MoE: a sigmoid gate (h → 1) scales the shared MLP's output
    router_bias: bool = False  # gpt-oss: the router's logits have a bias
    # the routed experts carry the MLP's biases where it has them (Nemotron-H's do not)
    expert_bias: bool = True


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank queries (``q_lora_rank``, 0 = plain
    projection) and a compressed KV latent of ``kv_lora_rank`` plus a shared rotary key part."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


# What mixes tokens in a layer: attention, a state-space (or linear-attention) scan, both side by side
# on the same normed input (Falcon-H1), or nothing (Nemotron-H's MLP-only layers). An encoder-decoder
# (T5) lists its encoder's layers first ("encoder": bidirectional self-attention over the source
# tokens), then its decoder's ("attention+cross": causal self-attention, then attention over the
# encoder's output).
MIXER_ATTENTION, MIXER_SSM, MIXER_PARALLEL, MIXER_NONE = "attention", "ssm", "attention+ssm", "none"
MIXER_ENCODER, MIXER_CROSS = "encoder", "attention+cross"
MIXER_KINDS = (MIXER_ATTENTION, MIXER_SSM, MIXER_PARALLEL, MIXER_NONE, MIXER_ENCODER, MIXER_CROSS)
# What transforms each token after it: a dense MLP, a mixture of experts, or nothing (Mamba's layers).
MLP_DENSE, MLP_MOE, MLP_NONE = "dense", "moe", "none"
MLP_KINDS = (MLP_DENSE, MLP_MOE, MLP_NONE)
SSM_KINDS = ("mamba", "mamba2", "gated_deltanet")


@dataclass(frozen=True)
class SSMSpec:
    """A recurrent token mixer with a fixed-size state instead of a KV cache.

    ``kind``: ``mamba`` (selective scan, Gu & Dao 2023), ``mamba2`` (state-space duality, Dao & Gu
    2024) or ``gated_deltanet`` (gated delta rule, Yang et al. 2024; Qwen3-Next's linear attention).
    ``heads`` × ``head_dim`` is the scanned width d_inner (Mamba: d_inner channels of width 1); each
    head carries a ``head_dim`` × ``state`` state (Mamba, Mamba-2: N = d_state; DeltaNet: the key
    head dim). ``groups`` heads of B and C (DeltaNet: keys and queries) of width ``state`` are
    shared by the heads (Mamba: B and C come from ``x_proj``, not the convolution: 0). A depthwise
    causal convolution of ``conv_kernel`` taps runs over ``conv_channels``. ``dt_rank``: Mamba's
    low-rank Δ projection. ``chunk``: the chunked scan's block length (0: a sequential scan)."""

    kind: str
    heads: int
    head_dim: int
    state: int
    groups: int
    conv_kernel: int
    dt_rank: int = 0
    chunk: int = 0
    conv_bias: bool = True
    in_bias: bool = False  # in_proj (and DeltaNet's in_proj_ba)
    out_bias: bool = False  # out_proj (Falcon-H1 sets it apart: ``projectors_bias``)
    gated_norm: bool = True  # an RMSNorm of y·silu(z) before out_proj (Mamba-2, DeltaNet)
    bcdt_norms: bool = False  # Jamba: RMSNorms on Δ (dt_rank wide), B and C (state wide)

    @property
    def inner(self) -> int:
        """d_inner: the scanned width, heads · head_dim."""
        return self.heads * self.head_dim

    @property
    def conv_channels(self) -> int:
        """Channels of the causal convolution: x and the groups' B and C (DeltaNet: v, k and q)."""
        return self.inner + 2 * self.groups * self.state

    @property
    def state_elements(self) -> int:
        """Recurrent state of one layer for one sequence: the convolution's last ``conv_kernel`` inputs
        of every channel (mamba_ssm's and transformers' conv state) and every head's head_dim × state."""
        return self.conv_channels * self.conv_kernel + self.inner * self.state


def _per_layer(runs: tuple[tuple[str, int], ...]) -> list[str]:
    return [kind for kind, n in runs for _ in range(n)]


def _runs(kinds: list[str]) -> tuple[tuple[str, int], ...]:
    """``(kind, count)`` runs of a per-layer list: the inverse of :func:`_per_layer`."""
    return tuple((kind, len(list(group))) for kind, group in itertools.groupby(kinds))


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer or hybrid, normalised across Hugging Face families.

    A layer is a (mixer, MLP) pair (:attr:`blocks`). ``mixer_kinds`` lists ``(MIXER_*, count)`` runs
    and ``layer_kinds`` ``("dense" | "moe" | "none", count)`` runs, both in layer order; ``ssm``
    describes the state-space mixer. The attention fields describe the attention layers (0 where a
    model has none). ``norms_per_layer`` is
    the number of norms in a block (1 for GPT-J's single ``ln_1``; 4 for Gemma-2's norms before and
    after attention and MLP). ``parallel_block``: attention and MLP read the same normed input and
    their outputs are added once (GPT-J, NeoX, Falcon). ``local_layers`` of the layers attend only
    the last ``sliding_window`` positions (Mistral/Gemma sliding-window attention; 0: none);
    ``attn_softcap`` / ``final_softcap``: scores and logits go through ``cap·tanh(x/cap)`` (Gemma-2).
    """

    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    gated_mlp: bool
    activation: str
    norm: str  # "layernorm" | "rmsnorm"
    norm_bias: bool
    norms_per_layer: int
    qkv_bias: bool
    attn_out_bias: bool
    mlp_bias: bool
    positions: str  # "learned" | "rotary" | "alibi" | "none"
    max_positions: int
    rotary_dim: int
    tie_embeddings: bool
    lm_head_bias: bool = False
    parallel_block: bool = False
    embedding_norm: bool = False
    qk_norm: bool = False
    qk_norm_full: bool = False  # the QK norm spans all heads' features (OLMo-2, OLMoE), not one head
    attention_sinks: bool = False  # gpt-oss: a learned logit per head joins every softmax
    attn_output_gate: bool = False  # Qwen3-Next: q_proj also yields a per-head gate, sigmoid(g)·attention
    causal: bool = True  # False: an encoder, every token attends the whole sequence (BERT)
    token_types: int = 0  # rows of a segment embedding added to the tokens' (BERT's type_vocab_size)
    final_norm: bool = True  # a norm after the last layer (pre-norm models; BERT's post-norm has none)
    head_transform: bool = False  # BERT: a dense h → h, its activation and a LayerNorm before the LM head
    attention_dropout: float = 0.0  # dropout probability on attention probabilities (training)
    hidden_dropout: float = 0.0  # dropout probability on block outputs and embeddings (training)
    layer_kinds: tuple[tuple[str, int], ...] = ()
    mixer_kinds: tuple[tuple[str, int], ...] = ()
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    ssm: SSMSpec | None = None
    sliding_window: int = 0
    local_layers: int = 0
    local_attention: str = "sliding"  # "sliding": the last w positions; "chunked": its own w-token chunk
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    relative_buckets: int = 0  # T5: a learned bias per (bucketed query-key distance, head) per stack

    def __post_init__(self) -> None:
        if not self.layer_kinds:
            object.__setattr__(self, "layer_kinds", ((MLP_DENSE, self.num_layers),))
        if not self.mixer_kinds:
            object.__setattr__(self, "mixer_kinds", ((MIXER_ATTENTION, self.num_layers),))
        positive = ("hidden_size", "num_layers", "vocab_size")
        if self.attention_layers:
            positive += ("num_heads", "num_kv_heads", "head_dim")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{self.model_type}: {name} must be positive, got {getattr(self, name)}")
        for runs, known in ((self.mixer_kinds, MIXER_KINDS), (self.layer_kinds, MLP_KINDS)):
            unknown = sorted({kind for kind, _ in runs} - set(known))
            if unknown:
                raise ConfigError(
                    f"{self.model_type}: unknown layer kind {unknown}; known: {', '.join(known)}"
                )
        if sum(n for _, n in self.mixer_kinds) != self.num_layers:
            raise ConfigError(
                f"{self.model_type}: mixer kinds {self.mixer_kinds} do not sum to {self.num_layers}"
            )
        if (self.ssm is None) != (self.ssm_layers == 0):
            raise ConfigError(f"{self.model_type}: state-space layers need an SSMSpec, and only they")
        if self.ssm is not None and self.ssm.kind not in SSM_KINDS:
            raise ConfigError(f"{self.model_type}: unknown state-space kind {self.ssm.kind!r}")
        if self.attention_layers and self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"{self.model_type}: num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if sum(n for _, n in self.layer_kinds) != self.num_layers:
            raise ConfigError(
                f"{self.model_type}: layer kinds {self.layer_kinds} do not sum to {self.num_layers}"
            )
        encoder, cross = self.mixer_layers(MIXER_ENCODER), self.mixer_layers(MIXER_CROSS)
        expected = tuple((kind, n) for kind, n in ((MIXER_ENCODER, encoder), (MIXER_CROSS, cross)) if n)
        if expected and self.mixer_kinds != expected:  # the encoder's layers, then the decoder's
            raise ConfigError(
                f"{self.model_type}: an encoder-decoder lists its {MIXER_ENCODER} layers, then its "
                f"{MIXER_CROSS} layers, and only those; got {self.mixer_kinds}"
            )
        if self.local_attention not in ("sliding", "chunked"):
            raise ConfigError(f"{self.model_type}: local attention must be sliding or chunked")
        attention = self.attention_layers
        if not 0 <= self.local_layers <= attention or (self.local_layers and self.sliding_window < 1):
            raise ConfigError(
                f"{self.model_type}: {self.local_layers} sliding-window layers of {attention} attention "
                f"layers with a window of {self.sliding_window}: need 0..{attention} layers and a window >= 1"
            )

    @property
    def blocks(self) -> tuple[tuple[str, str, int], ...]:
        """The layers as ``(mixer, mlp, count)`` runs in layer order."""
        pairs = list(zip(_per_layer(self.mixer_kinds), _per_layer(self.layer_kinds), strict=True))
        runs: list[tuple[str, str, int]] = []
        for mixer, mlp in pairs:
            if runs and runs[-1][:2] == (mixer, mlp):
                runs[-1] = (mixer, mlp, runs[-1][2] + 1)
            else:
                runs.append((mixer, mlp, 1))
        return tuple(runs)

    def mixer_layers(self, *kinds: str) -> int:
        """Layers whose mixer is one of ``kinds``."""
        return sum(n for kind, n in self.mixer_kinds if kind in kinds)

    def mlp_layers(self, *kinds: str) -> int:
        """Layers whose MLP is one of ``kinds``."""
        return sum(n for kind, n in self.layer_kinds if kind in kinds)

    @property
    def attention_layers(self) -> int:
        """Layers with self-attention (alone, beside a state-space mixer, in an encoder or a decoder)."""
        return self.mixer_layers(MIXER_ATTENTION, MIXER_PARALLEL, MIXER_ENCODER, MIXER_CROSS)

    @property
    def encoder_layers(self) -> int:
        """Layers of an encoder-decoder's encoder (0 for a decoder-only or encoder-only model)."""
        return self.mixer_layers(MIXER_ENCODER)

    @property
    def cross_layers(self) -> int:
        """Decoder layers that attend to the encoder's output (each caches its keys and values)."""
        return self.mixer_layers(MIXER_CROSS)

    def stack(self, kind: str) -> ModelSpec:
        """An encoder-decoder's encoder (``kind`` = :data:`MIXER_ENCODER`: bidirectional attention over
        the source) or decoder (:data:`MIXER_CROSS`) as a model of its own, its layers only."""
        layers = [
            mlp
            for mixer, mlp in zip(_per_layer(self.mixer_kinds), _per_layer(self.layer_kinds), strict=True)
            if mixer == kind
        ]
        encoder = kind == MIXER_ENCODER
        return replace(
            self,
            num_layers=len(layers),
            mixer_kinds=((MIXER_ATTENTION if encoder else MIXER_CROSS, len(layers)),),
            layer_kinds=_runs(layers),
            causal=self.causal and not encoder,
        )

    @property
    def ssm_layers(self) -> int:
        """Layers with a state-space mixer (alone or beside attention)."""
        return self.mixer_layers(MIXER_SSM, MIXER_PARALLEL)

    @property
    def sublayers(self) -> float:
        """Blocks with a norm and a residual add, summed over layers: a layer with a mixer and an MLP
        has two, one in a parallel block (GPT-J, Falcon) or where it has only one of them."""
        total = 0.0
        for mixer, mlp, n in self.blocks:  # a decoder layer's cross-attention is a block of its own
            blocks = (mixer != MIXER_NONE) + (mixer == MIXER_CROSS) + (mlp != MLP_NONE)
            total += n * (min(blocks, 1) if self.parallel_block else blocks)
        return total

    @property
    def tp_reductions(self) -> float:
        """h-wide all-reduces of one forward pass over all layers under tensor parallelism (Megatron:
        one after each row-parallel block output): a layer with a mixer and an MLP has two, one in a
        parallel block (GPT-J, Falcon) or where it has only one of them (Mamba, Nemotron-H). Mamba's
        ``x_proj`` reads the tp-split d_inner, so its Δ, B, C (dt_rank + 2·d_state wide) are reduced too."""
        total = self.sublayers
        if self.ssm is not None and self.ssm.kind == "mamba":
            total += self.ssm_layers * (self.ssm.dt_rank + 2 * self.ssm.state) / self.hidden_size
        return total

    @property
    def state_elements(self) -> int:
        """Recurrent state of one sequence over all state-space layers (0 for a transformer)."""
        return self.ssm_layers * self.ssm.state_elements if self.ssm is not None else 0

    def cached_layer_tokens(self, context: Any, source: Any = 0) -> Any:
        """Tokens held in the KV cache summed over layers, for ``context`` tokens of one sequence:
        every full-attention layer keeps them all, a sliding-window layer the last ``sliding_window``
        (Σ_layers = (L_attention − local)·c + local·min(c, w)); state-space layers keep no tokens. An
        encoder-decoder's decoder layers also keep the keys and values of the ``source`` tokens their
        cross-attention reads; its encoder keeps nothing."""
        if not self.causal:  # an encoder recomputes its keys and values every pass: no cache
            return 0 * context
        full = (self.attention_layers - self.encoder_layers - self.local_layers) * context
        full = full + self.cross_layers * source
        if not self.local_layers:
            return full
        return full + self.local_layers * jnp.minimum(context, self.sliding_window)

    @property
    def kv_cache_elements_per_token(self) -> int:
        """K and V elements cached per token per layer: 2·kv_heads·head_dim, or the MLA latent
        ``kv_lora_rank + qk_rope_head_dim`` (DeepSeek-V2 paper, Sec. 2.1.2: only c_KV and k_R are cached)."""
        if self.mla is not None:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim


# --------------------------------------------------------------------------------------------
# transformers' configuration classes: defaults, attribute_map, sub_configs


@dataclass(frozen=True)
class _Schema:
    """What a ``transformers`` configuration class declares: its fields, their defaults (those this
    module can read), its ``attribute_map`` (alias → field) and its ``sub_configs`` (field → class)."""

    fields: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sub_configs: Mapping[str, _Schema] = dataclasses.field(default_factory=dict)


class _Unreadable(Exception):
    """The configuration class's source is not in a form :func:`_schema_from_source` reads."""


_CONFIG_BASES = frozenset({"PreTrainedConfig", "PretrainedConfig"})  # 5.x and 4.x spelling
_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_FACTORIES: dict[str, Callable[[], Any]] = {"list": list, "dict": dict, "tuple": tuple, "set": set}


@functools.cache  # = functools.lru_cache(maxsize=None): one schema per model_type
def _schema(model_type: str) -> _Schema:
    """The defaults and aliases of ``model_type``'s configuration class, read once per process."""
    try:
        return _schema_from_source(model_type)
    except (_Unreadable, OSError, SyntaxError, ValueError):
        return _schema_from_class(model_type)


def _transformers_dir() -> Path | None:
    """The installed ``transformers`` package's folder, located without importing it."""
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


_MODULE_OF = {
    "gemma3_text": "gemma3",
    "llama4_text": "llama4",
}  # model types whose configuration lives in another family's module


def _schema_from_source(model_type: str) -> _Schema:
    """Read the class whose ``model_type`` is ``model_type`` in its ``configuration_*.py``; an empty
    schema when ``transformers`` is not installed or has no such module (a family it lacks)."""
    root = _transformers_dir()
    if root is None:
        return _Schema()
    # transformers' model_type_to_module_name: the model_type, or the family module that defines it
    module = _MODULE_OF.get(model_type, model_type.replace("-", "_"))
    path = root / "models" / module / f"configuration_{module}.py"
    if not path.is_file():
        return _Schema()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for node in classes.values():
        for stmt in node.body:
            if (
                isinstance(stmt, ast.Assign | ast.AnnAssign)
                and _target_name(stmt) == "model_type"
                and isinstance(stmt.value, ast.Constant)
                and stmt.value.value == model_type
            ):
                return _read_class(node, classes)
    raise _Unreadable(f"no class with model_type '{model_type}' in {path}")


def _target_name(stmt: ast.Assign | ast.AnnAssign) -> str | None:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    if len(targets) == 1 and isinstance(targets[0], ast.Name):
        return targets[0].id
    return None


def _read_class(node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> _Schema:
    """Fields and defaults of one class (bases in the same module first): 5.x class-level annotated
    fields, 4.x ``__init__`` keyword defaults; ``attribute_map`` and ``sub_configs`` assignments."""
    fields: set[str] = set()
    defaults: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    subs: dict[str, _Schema] = {}
    for base in node.bases:
        name = base.id if isinstance(base, ast.Name) else ast.unparse(base)
        if name in _CONFIG_BASES:
            continue
        if name not in classes:
            raise _Unreadable(f"{node.name} derives from {name}, defined elsewhere")
        inherited = _read_class(classes[name], classes)
        fields |= inherited.fields
        defaults |= inherited.defaults
        aliases |= inherited.aliases
        subs |= inherited.sub_configs

    def declare(name: str, default: ast.expr | None) -> None:
        fields.add(name)
        defaults.pop(name, None)
        if default is not None:
            with contextlib.suppress(_Unreadable):  # a default it cannot evaluate: none
                defaults[name] = _literal(default)

    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if "ClassVar" not in ast.unparse(stmt.annotation):
                declare(stmt.target.id, stmt.value)
        elif isinstance(stmt, ast.Assign) and _target_name(stmt) == "attribute_map":
            aliases |= _literal(stmt.value)
        elif isinstance(stmt, ast.Assign) and _target_name(stmt) == "sub_configs":
            if not isinstance(stmt.value, ast.Dict):
                raise _Unreadable(f"{node.name}.sub_configs is not a dict display")
            for key, value in zip(stmt.value.keys, stmt.value.values, strict=True):
                if not (
                    isinstance(key, ast.Constant) and isinstance(value, ast.Name) and value.id in classes
                ):
                    raise _Unreadable(f"{node.name}.sub_configs names a class defined elsewhere")
                subs[key.value] = _read_class(classes[value.id], classes)
        elif isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":  # transformers 4.x
            args = stmt.args
            positional = [*args.posonlyargs, *args.args][1:]  # without self
            padded = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
            for arg, default in [
                *zip(positional, padded, strict=True),
                *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            ]:
                declare(arg.arg, default)
    return _Schema(frozenset(fields), defaults, aliases, subs)


def _literal(node: ast.expr) -> Any:
    """A default written as a literal, arithmetic on literals (``4096 * 32``), ``float("inf")``, or a
    call with a ``default=`` keyword (``interval(min=0.0, max=1.0)(default=0.02)``,
    ``field(default=...)``)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        items = [_literal(item) for item in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_literal(node.left), _literal(node.right))
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "float" and len(node.args) == 1:
        return float(_literal(node.args[0]))  # float("inf") (Mamba2Config.time_step_limit)
    if isinstance(node, ast.Call):
        for keyword in node.keywords:
            if keyword.arg == "default":
                return _literal(keyword.value)
            factory = keyword.value.id if isinstance(keyword.value, ast.Name) else None
            if keyword.arg == "default_factory" and factory in _FACTORIES:
                return _FACTORIES[factory]()
    raise _Unreadable(ast.unparse(node))


def _schema_from_class(model_type: str) -> _Schema:
    """The slow, exact way: import the class (``configuration_utils`` imports torch when installed)."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        return _class_schema(CONFIG_MAPPING[model_type])
    except (ImportError, KeyError):
        return _Schema()


def _class_schema(cls: type) -> _Schema:
    """:class:`_Schema` of an imported configuration class (5.x dataclass fields or 4.x ``__init__``)."""
    defaults: dict[str, Any] = {}
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    else:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        names = {p.name for p in parameters if p.kind not in kinds}
        defaults = {p.name: p.default for p in parameters if p.name in names and p.default is not p.empty}
    subs = {
        key: _class_schema(sub)
        for key, sub in (getattr(cls, "sub_configs", None) or {}).items()
        if isinstance(sub, type)
    }
    return _Schema(frozenset(names), defaults, dict(getattr(cls, "attribute_map", None) or {}), subs)


# --------------------------------------------------------------------------------------------
# Field access: the config's values, else transformers' defaults, with clear errors

_UNSET: Any = object()
MAX_INT = 2**31 - 1  # every integer field: JAX computes in 32-bit integers by default
MAX_LAYERS = 65_536  # far beyond any model; per-layer lists stay small
# FLOPs per element of each supported MLP activation (the cost model's table, costmodels.workload)
ACTIVATION_FLOPS = {
    "silu": 4.0,
    "swish": 4.0,
    "gelu": 8.0,
    "gelu_new": 8.0,
    "gelu_pytorch_tanh": 8.0,
    "gelu_fast": 8.0,
    "relu": 1.0,
    "relu2": 2.0,  # relu(x)²: max and square (Nemotron-H)
}


class _Fields:
    """Reads ``config.json`` fields of one ``model_type`` through its :class:`_Schema`.

    Every getter takes ``required`` (no default applies: absent or null is an error) and
    ``if_none`` (what ``None`` means for this field in the family's modeling code, used for a
    ``None`` default, an explicit ``null``, or a field the configuration class does not declare).
    A value from the config is type-checked; an error is one line that names the key.
    """

    def __init__(self, config: Mapping[str, Any], model_type: str, schema: _Schema, prefix: str = ""):
        self.config = config
        self.model_type = model_type
        self.schema = schema
        self.prefix = prefix  # "attn_config." for a nested sub-config

    def _names(self, name: str) -> list[str]:
        """``name``'s field and its ``attribute_map`` aliases, the field first."""
        target = self.schema.aliases.get(name, name)
        return [target, *(a for a, t in self.schema.aliases.items() if t == target and a != target)]

    def _error(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.model_type} config: field '{self.prefix}{key}' {what}")

    def _missing(self, names: list[str]) -> ConfigError:
        alias = f" (alias {', '.join(repr(n) for n in names[1:])})" if names[1:] else ""
        return ConfigError(
            f"{self.model_type} config: missing field '{self.prefix}{names[0]}'{alias} "
            "(required for this model_type)"
        )

    def given(self, name: str) -> bool:
        """Whether the config sets ``name`` (or an alias) to something other than null."""
        return any(self.config.get(n) is not None for n in self._names(name))

    def _value(self, name: str, required: bool, if_none: Any) -> tuple[str, Any, bool]:
        """(key, value, from_config). Among the names given, transformers applies the declared
        fields first and the other keyword arguments after them, so the last of those wins."""
        names = self._names(name)
        given = sorted((k for k in self.config if k in names), key=lambda k: k not in self.schema.fields)
        if given and self.config[given[-1]] is not None:
            return given[-1], self.config[given[-1]], True
        if required:
            raise self._missing(names)
        if given and if_none is not _UNSET:  # an explicit null: the modeling code's meaning of None
            return given[-1], if_none, False
        default = next((self.schema.defaults[n] for n in names if n in self.schema.defaults), None)
        if default is not None:
            return names[0], default, True
        if if_none is not _UNSET:
            return names[0], if_none, False
        raise self._missing(names)

    def int(
        self,
        name: str,
        *,
        required: bool = False,
        minimum: int = 0,
        maximum: int = MAX_INT,
        bound: str = "",
        if_none: Any = _UNSET,
    ) -> Any:
        """An integer in [minimum, maximum]; ``bound`` names what ``maximum`` is (another field)."""
        key, value, check = self._value(name, required, if_none)
        if not check:
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or int(value) != value
        ):
            raise self._error(key, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self._error(
                key, f"must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {value!r}"
            )
        if value > maximum:
            raise self._error(key, f"must be <= {maximum:,}{f' ({bound})' if bound else ''}, got {value!r}")
        return int(value)

    def number(self, name: str, *, low: float = 0.0, high: float = math.inf, if_none: Any = _UNSET) -> float:
        key, value, check = self._value(name, False, if_none)
        if not check:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            bounds = f"[{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
            raise self._error(key, f"must be a number in {bounds}, got {value!r}")
        return float(value)

    def probability(self, name: str) -> float:
        """A dropout probability in [0, 1]."""
        return self.number(name, low=0.0, high=1.0)

    def flag(self, name: str, *, if_none: Any = _UNSET) -> bool:
        key, value, check = self._value(name, False, if_none)
        if check and not isinstance(value, bool):
            raise self._error(key, f"must be true or false, got {value!r}")
        return value

    def activation(self, name: str) -> str:
        """An activation function the cost model knows (``ACTIVATION_FLOPS``)."""
        key, value, _ = self._value(name, False, _UNSET)
        if not isinstance(value, str) or value not in ACTIVATION_FLOPS:
            raise self._error(key, f"must be one of {', '.join(ACTIVATION_FLOPS)}, got {value!r}")
        return value

    def text(self, name: str) -> str:
        key, value, _ = self._value(name, False, _UNSET)
        if not isinstance(value, str) or not value:
            raise self._error(key, f"must be a non-empty string, got {value!r}")
        return value

    def text_list(self, name: str, *, if_none: Any = _UNSET) -> list[str]:
        key, value, check = self._value(name, False, if_none)
        if check and (not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value)):
            raise self._error(key, f"must be a list of strings, got {value!r}")
        return list(value)

    def int_list(self, name: str, *, if_none: Any = _UNSET) -> list[int]:
        key, value, check = self._value(name, False, if_none)
        if check and (
            not isinstance(value, list | tuple)
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
        ):
            raise self._error(key, f"must be a list of integers, got {value!r}")
        return list(value)

    def sub(self, name: str) -> _Fields:
        """A nested sub-configuration (MPT's ``attn_config``), with its own class's defaults."""
        names = self._names(name)
        value = next((self.config[n] for n in names if self.config.get(n) is not None), {})
        if not isinstance(value, Mapping):
            raise self._error(names[0], f"must be a JSON object, got {value!r}")
        schema = self.schema.sub_configs.get(names[0], _Schema())
        return _Fields(value, self.model_type, schema, prefix=f"{self.prefix}{names[0]}.")


def _shape(c: _Fields, hidden: str, layers: str, heads: str, divisible: bool = True) -> tuple[int, int, int]:
    """The three required fields (hidden size, layers, attention heads), under the family's names.
    ``divisible``: the head width is hidden / heads (no ``head_dim`` field), so heads must divide it."""
    h = c.int(hidden, required=True, minimum=1)
    n_heads = c.int(heads, required=True, minimum=1)
    if divisible and h % n_heads:
        raise c._error(hidden, f"({h}) must be a multiple of '{c.prefix}{heads}' ({n_heads})")
    return h, c.int(layers, required=True, minimum=1, maximum=MAX_LAYERS), n_heads


# --------------------------------------------------------------------------------------------
# Parsers, one per model_type. Defaults are the configuration class's; what is written here is
# the architecture (from the family's modeling code) and the meaning of None.


def _gpt2(c: _Fields) -> ModelSpec:
    """GPT-2: learned positions, biases everywhere, tied embeddings by default."""
    h, layers, heads = _shape(c, "n_embd", "n_layer", "n_head")
    return ModelSpec(
        model_type="gpt2",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=c.int("n_inner", if_none=4 * h),  # GPT2MLP: None → 4·n_embd
        gated_mlp=False,
        activation=c.activation("activation_function"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=2,
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        positions="learned",
        max_positions=c.int("n_positions", minimum=1),
        rotary_dim=0,
        tie_embeddings=c.flag("tie_word_embeddings"),
        attention_dropout=c.probability("attn_pdrop"),
        hidden_dropout=c.probability("resid_pdrop"),
    )


def _gptj(c: _Fields) -> ModelSpec:
    """GPT-J: one LayerNorm, parallel attention and MLP, rotary on the first ``rotary_dim`` dims."""
    h, layers, heads = _shape(c, "n_embd", "n_layer", "n_head")
    return ModelSpec(
        model_type="gptj",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=c.int("n_inner", if_none=4 * h),  # GPTJMLP: None → 4·n_embd
        gated_mlp=False,
        activation=c.activation("activation_function"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=1,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=True,
        positions="rotary",
        max_positions=c.int("n_positions", minimum=1),
        rotary_dim=c.int("rotary_dim", if_none=h // heads),  # GPTJAttention: None → the whole head
        tie_embeddings=c.flag("tie_word_embeddings"),
        lm_head_bias=True,
        parallel_block=True,
        attention_dropout=c.probability("attn_pdrop"),
        hidden_dropout=c.probability("resid_pdrop"),
    )


def _neox_rotary_fraction(c: _Fields) -> float:
    """GPTNeoXConfig (transformers 5) takes ``partial_rotary_factor`` from ``rope_scaling or
    rope_parameters``, else the legacy ``rotary_pct``, else 0.25 (its ``convert_rope_params_to_dict``;
    a top-level ``partial_rotary_factor`` is not read)."""
    key = "rope_scaling" if c.config.get("rope_scaling") else "rope_parameters"
    rope = c.sub(key)
    if rope.given("partial_rotary_factor"):
        return rope.number("partial_rotary_factor", high=1.0)
    return c.number("rotary_pct", high=1.0, if_none=0.25)


def _gpt_neox(c: _Fields) -> ModelSpec:
    h, layers, heads = _shape(c, "hidden_size", "num_hidden_layers", "num_attention_heads")
    head_dim = h // heads
    bias = c.flag("attention_bias")
    return ModelSpec(
        model_type="gpt_neox",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        intermediate_size=c.int("intermediate_size", minimum=1),
        gated_mlp=False,
        activation=c.activation("hidden_act"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=2,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=True,
        positions="rotary",
        max_positions=c.int("max_position_embeddings", minimum=1),
        rotary_dim=int(head_dim * _neox_rotary_fraction(c)),
        tie_embeddings=c.flag("tie_word_embeddings"),
        parallel_block=c.flag("use_parallel_residual"),
        attention_dropout=c.probability("attention_dropout"),
        hidden_dropout=c.probability("hidden_dropout"),
    )


def _llama_like(
    c: _Fields,
    model_type: str,
    *,
    attention_bias: bool | None = None,
    qkv_bias: bool | None = None,
    mlp_bias: bool | None = False,
    qk_norm: bool = False,
    activation: str = "hidden_act",
) -> ModelSpec:
    """Llama, Mistral, Qwen2, Qwen3 (and the attention/MLP of Mixtral, Qwen3-MoE, DeepSeek-V3).

    ``attention_bias`` / ``mlp_bias``: fixed by the family's modeling code, or None to read the
    config field of that name (Llama has both; Qwen3 and Qwen3-MoE ``attention_bias`` only).
    ``qkv_bias``: the q/k/v projections' bias where it differs from the output's (Qwen2)."""
    given = c.given("head_dim")
    h, layers, heads = _shape(c, "hidden_size", "num_hidden_layers", "num_attention_heads", not given)
    head_dim = c.int("head_dim", minimum=1, if_none=h // heads)  # None/undeclared → hidden/heads
    attn_bias = c.flag("attention_bias") if attention_bias is None else attention_bias
    return ModelSpec(
        model_type=model_type,
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=c.int("num_key_value_heads", minimum=1, if_none=heads),  # None → MHA
        head_dim=head_dim,
        intermediate_size=c.int("intermediate_size", minimum=1),
        gated_mlp=True,
        activation=c.activation(activation),
        norm="rmsnorm",
        norm_bias=False,
        norms_per_layer=2,
        qkv_bias=attn_bias if qkv_bias is None else qkv_bias,
        attn_out_bias=attn_bias,
        mlp_bias=c.flag("mlp_bias") if mlp_bias is None else mlp_bias,
        positions="rotary",
        max_positions=c.int("max_position_embeddings", minimum=1),
        rotary_dim=head_dim,
        tie_embeddings=c.flag("tie_word_embeddings"),
        qk_norm=qk_norm,
        attention_dropout=c.probability("attention_dropout"),
    )


def _llama(c: _Fields) -> ModelSpec:
    return _llama_like(c, "llama", mlp_bias=None)


def _mistral(c: _Fields) -> ModelSpec:
    """Mistral: no biases (MistralAttention, MistralMLP: ``bias=False``; the config has no such field);
    a ``sliding_window`` (Mistral-7B-v0.1: 4,096) applies to every layer, as its attention masks it."""
    return _window_everywhere(c, _llama_like(c, "mistral", attention_bias=False))


def _window_everywhere(c: _Fields, spec: ModelSpec) -> ModelSpec:
    """A config's ``sliding_window`` (None: none) on every layer (Mistral, Phi-3, StarCoder2)."""
    window = c.int("sliding_window", minimum=1, if_none=0)
    return replace(spec, sliding_window=window, local_layers=spec.num_layers if window else 0)


def _phi3(c: _Fields) -> ModelSpec:
    """Phi-3: Llama's layer with fused ``qkv_proj`` and ``gate_up_proj`` (the same weights), no
    biases; ``sliding_window`` (Phi-3-mini-4k: 2,047) on every layer."""
    return _window_everywhere(c, _llama_like(c, "phi3", attention_bias=False))


def _starcoder2(c: _Fields) -> ModelSpec:
    """StarCoder2 (``Starcoder2DecoderLayer``): LayerNorms with bias (``norm_epsilon``), q/k/v/o and a
    plain MLP (``c_fc`` → act → ``c_proj``) with bias when ``use_bias``, GQA, rotary, tied embeddings
    by default; ``sliding_window`` on every layer."""
    h, layers, heads = _shape(c, "hidden_size", "num_hidden_layers", "num_attention_heads")
    bias = c.flag("use_bias")
    spec = ModelSpec(
        model_type="starcoder2",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=c.int("num_key_value_heads", minimum=1, if_none=heads),
        head_dim=h // heads,
        intermediate_size=c.int("intermediate_size", minimum=1),
        gated_mlp=False,
        activation=c.activation("hidden_act"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=2,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bias,
        positions="rotary",
        max_positions=c.int("max_position_embeddings", minimum=1),
        rotary_dim=h // heads,
        tie_embeddings=c.flag("tie_word_embeddings"),
        attention_dropout=c.probability("attention_dropout"),
        hidden_dropout=c.probability("residual_dropout"),
    )
    return _window_everywhere(c, spec)


def _qwen2(c: _Fields) -> ModelSpec:
    """Qwen2: q/k/v projections carry a bias, the output projection does not (fixed in the code)."""
    return _llama_like(c, "qwen2", attention_bias=False, qkv_bias=True)


def _qwen3(c: _Fields) -> ModelSpec:
    """Qwen3: RMSNorm over head_dim on queries and keys (q_norm, k_norm); Qwen3Config's head_dim
    defaults to 128, not hidden/heads."""
    return _llama_like(c, "qwen3", qk_norm=True)


def _mixtral(c: _Fields) -> ModelSpec:
    """Mixtral: Mistral's attention (no biases); every layer routes to ``num_local_experts``
    (alias ``num_experts``) experts of width ``intermediate_size``."""
    spec = _llama_like(c, "mixtral", attention_bias=False)
    experts = c.int("num_local_experts", minimum=1)
    moe = MoESpec(
        num_experts=experts,
        top_k=c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="num_local_experts"),
        expert_intermediate=spec.intermediate_size,
    )
    return replace(spec, moe=moe, layer_kinds=(("moe", spec.num_layers),))


def _qwen3_moe(c: _Fields) -> ModelSpec:
    """Layer i is sparse iff i ∉ mlp_only_layers, num_experts > 0 and (i+1) % decoder_sparse_step == 0
    (transformers ``Qwen3MoeDecoderLayer``); other layers use a dense MLP of ``intermediate_size``.
    Qwen3MoeConfig declares no head_dim: a given one is used, else hidden/heads (Qwen3MoeAttention)."""
    spec = _llama_like(c, "qwen3_moe", qk_norm=True)
    experts = c.int("num_experts")  # attribute_map: num_experts ↔ num_local_experts
    moe = MoESpec(
        num_experts=experts,
        top_k=c.int("num_experts_per_tok", minimum=1, maximum=max(experts, 1), bound="num_experts"),
        expert_intermediate=c.int("moe_intermediate_size", minimum=1),
    )
    return replace(spec, moe=moe, layer_kinds=_sparse_layers(c, spec.num_layers, experts))


def _sparse_layers(c: _Fields, layers: int, experts: int) -> tuple[tuple[str, int], ...]:
    """Qwen-MoE's choice: layer i is sparse iff i ∉ ``mlp_only_layers`` (None: none), experts > 0
    and (i+1) % ``decoder_sparse_step`` == 0."""
    step = c.int("decoder_sparse_step", minimum=1)
    dense_only = set(c.int_list("mlp_only_layers", if_none=[]))
    kinds = [
        "moe" if (i not in dense_only and experts > 0 and (i + 1) % step == 0) else "dense"
        for i in range(layers)
    ]
    return _runs(kinds)


def _gemma_layers(c: _Fields, layers: int, pattern: int) -> tuple[int, int]:
    """(window, sliding-window layers) of a Gemma config: ``layer_types`` if given, else every layer
    but each ``pattern``-th slides (Gemma-2: 2, Gemma-3: ``sliding_window_pattern``, 6), as the
    configuration classes set it; a ``sliding_window`` of None slides nowhere."""
    default = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    types = c.text_list("layer_types", if_none=default)
    if len(types) != layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise c._error(
            "layer_types", f"must list sliding_attention or full_attention for each of {layers} layers"
        )
    window = c.int("sliding_window", minimum=1, if_none=0)
    return window, types.count("sliding_attention") if window else 0


def _gemma3_text(c: _Fields) -> ModelSpec:
    """Gemma-3 (text): Gemma-2's layer with RMSNorm on queries and keys (``q_norm``, ``k_norm`` over
    head_dim), five sliding-window layers to a global one (``sliding_window_pattern``), soft-capping
    only where the config sets it (None: off)."""
    spec = _llama_like(
        c, "gemma3_text", attention_bias=None, mlp_bias=False, qk_norm=True, activation="hidden_activation"
    )
    pattern = c.int("sliding_window_pattern", minimum=1, if_none=6) if not c.given("layer_types") else 6
    window, local = _gemma_layers(c, spec.num_layers, pattern)
    return replace(
        spec,
        norms_per_layer=4,
        sliding_window=window,
        local_layers=local,
        attn_softcap=c.number("attn_logit_softcapping", if_none=0.0),
        final_softcap=c.number("final_logit_softcapping", if_none=0.0),
    )


def _gemma2(c: _Fields) -> ModelSpec:
    """Gemma-2 (``Gemma2DecoderLayer``): Llama's attention and gated MLP (``hidden_activation``, GeGLU),
    RMSNorms before and after both attention and MLP (4 per layer), no biases, tied embeddings; the
    layers of ``layer_types`` marked ``sliding_attention`` (default: every other one, starting with the
    first, as ``Gemma2Config`` sets it) attend the last ``sliding_window`` positions; attention scores
    and final logits are soft-capped (``attn_logit_softcapping``, ``final_logit_softcapping``)."""
    spec = _llama_like(c, "gemma2", attention_bias=None, mlp_bias=False, activation="hidden_activation")
    window, local = _gemma_layers(c, spec.num_layers, 2)
    return replace(
        spec,
        norms_per_layer=4,
        sliding_window=window,
        local_layers=local,
        attn_softcap=c.number("attn_logit_softcapping", if_none=0.0),
        final_softcap=c.number("final_logit_softcapping", if_none=0.0),
    )


def _runs(kinds: list[str]) -> tuple[tuple[str, int], ...]:
    """Run-length encode a per-layer list of kinds: ['dense','moe','moe'] → (('dense',1),('moe',2))."""
    out: list[tuple[str, int]] = []
    for kind in kinds:
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + 1)
        else:
            out.append((kind, 1))
    return tuple(out)


def _qwen2_moe(c: _Fields) -> ModelSpec:
    """Qwen2-MoE: Qwen2's attention (q/k/v bias), sparse layers as Qwen3-MoE chooses them
    (``decoder_sparse_step``, ``mlp_only_layers``), a shared MLP of ``shared_expert_intermediate_size``
    behind a sigmoid gate (``shared_expert_gate``: h → 1) in every sparse layer."""
    spec = _llama_like(c, "qwen2_moe", attention_bias=False, qkv_bias=c.flag("qkv_bias"))
    experts = c.int("num_experts", minimum=1)
    moe = MoESpec(
        num_experts=experts,
        top_k=c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="num_experts"),
        expert_intermediate=c.int("moe_intermediate_size", minimum=1),
        shared_intermediate=c.int("shared_expert_intermediate_size", minimum=0),
        shared_gate=True,
    )
    return replace(spec, moe=moe, layer_kinds=_sparse_layers(c, spec.num_layers, experts))


def _olmo2(c: _Fields) -> ModelSpec:
    """OLMo-2: Llama's attention and MLP with RMSNorm on the whole query and key projections
    (``q_norm`` over heads·head_dim, ``k_norm`` over kv_heads·head_dim) and the two layer norms after
    attention and MLP instead of before (same shapes and cost per op; their placement is not
    modelled)."""
    return replace(_llama_like(c, "olmo2", qk_norm=True), qk_norm_full=True)


def _olmoe(c: _Fields) -> ModelSpec:
    """OLMoE: OLMo-2's full-width QK norm in pre-norm layers, every layer routes to ``num_experts``
    experts of ``intermediate_size`` (top ``num_experts_per_tok``), no shared expert."""
    spec = replace(_llama_like(c, "olmoe", qk_norm=True), qk_norm_full=True)
    experts = c.int("num_experts", minimum=1)
    moe = MoESpec(
        num_experts=experts,
        top_k=c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="num_experts"),
        expert_intermediate=spec.intermediate_size,
    )
    return replace(spec, moe=moe, layer_kinds=(("moe", spec.num_layers),))


def _mpt(c: _Fields) -> ModelSpec:
    """MPT: ALiBi, no biases (``no_bias``), LayerNorms without bias (transformers drops them), tied;
    ``attn_config`` is a sub-configuration with MptAttentionConfig's defaults."""
    h, layers, heads = _shape(c, "d_model", "n_layers", "n_heads")
    attn = c.sub("attn_config")
    bias = not c.flag("no_bias")
    return ModelSpec(
        model_type="mpt",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=c.int("expansion_ratio", minimum=1) * h,
        gated_mlp=False,
        activation="gelu",
        norm="layernorm",
        norm_bias=False,
        norms_per_layer=2,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bias,
        positions="alibi" if attn.flag("alibi") else "learned",
        max_positions=c.int("max_seq_len", minimum=1),
        rotary_dim=0,
        tie_embeddings=True,
        attention_dropout=attn.probability("attn_pdrop"),
        hidden_dropout=c.probability("resid_pdrop"),
    )


def _legacy_n_embed(c: _Fields) -> int:
    """BloomConfig and FalconConfig ``__post_init__``: a legacy ``n_embed`` overrides ``hidden_size``."""
    if c.given("n_embed"):
        return c.int("n_embed", minimum=1)
    return c.int("hidden_size", required=True, minimum=1)


def _bloom(c: _Fields) -> ModelSpec:
    """BLOOM: ALiBi, an embedding LayerNorm, a 4·hidden MLP (fixed in BloomMLP)."""
    h = _legacy_n_embed(c)
    heads = c.int("n_head", required=True, minimum=1)  # attribute_map: num_attention_heads
    layers = c.int("n_layer", required=True, minimum=1)  # attribute_map: num_hidden_layers
    return ModelSpec(
        model_type="bloom",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=4 * h,
        gated_mlp=False,
        activation="gelu",
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=2,
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        positions="alibi",
        # BloomConfig declares no position limit (ALiBi has none); BLOOM's training length.
        max_positions=c.int("seq_length", minimum=1, if_none=2048),
        rotary_dim=0,
        tie_embeddings=c.flag("tie_word_embeddings"),
        embedding_norm=True,
        attention_dropout=c.probability("attention_dropout"),
        hidden_dropout=c.probability("hidden_dropout"),
    )


def _falcon(c: _Fields) -> ModelSpec:
    """Falcon: parallel attention; new_decoder_architecture (40B/180B) has grouped KV heads and two
    LayerNorms (ln_attn, ln_mlp); multi_query (7B) one KV head (transformers ``FalconDecoderLayer``).
    FalconConfig's flags are ``bool | None`` and the modeling code tests them for truth: null is false."""
    h = _legacy_n_embed(c)
    heads = c.int("num_attention_heads", required=True, minimum=1)
    layers = c.int("num_hidden_layers", required=True, minimum=1)
    new_arch = c.flag("new_decoder_architecture", if_none=False)
    parallel = c.flag("parallel_attn", if_none=False)
    alibi = c.flag("alibi", if_none=False)
    if new_arch:
        kv_heads = c.int("num_kv_heads", minimum=1, if_none=heads)  # FalconConfig: None → heads
    else:  # the fused QKV is 3·hidden (MHA) or hidden + 2·head_dim (multi-query)
        kv_heads = 1 if c.flag("multi_query", if_none=False) else heads
    # FalconDecoderLayer: num_ln_in_parallel_attn None → 2 with the new architecture, else 1.
    norms = c.int("num_ln_in_parallel_attn", minimum=1, if_none=2 if new_arch else 1) if parallel else 2
    bias = c.flag("bias", if_none=False)
    return ModelSpec(
        model_type="falcon",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=h // heads,
        intermediate_size=c.int("ffn_hidden_size", minimum=1, if_none=4 * h),  # None → 4·hidden
        gated_mlp=False,
        activation=c.activation("activation"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=norms,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bias,
        positions="alibi" if alibi else "rotary",
        max_positions=c.int("max_position_embeddings", minimum=1),
        rotary_dim=0 if alibi else h // heads,
        tie_embeddings=c.flag("tie_word_embeddings"),
        parallel_block=parallel,
        attention_dropout=c.probability("attention_dropout"),
        hidden_dropout=c.probability("hidden_dropout"),
    )


def _gpt_oss(c: _Fields) -> ModelSpec:
    """gpt-oss: GQA attention with biases and a learned sink logit per head, ``layer_types``
    alternating a ``sliding_window`` (128) with full attention, every layer routing to
    ``num_local_experts`` experts of ``intermediate_size`` (top ``num_experts_per_tok``) whose
    gate/up and down projections and whose router carry biases; the clamped SwiGLU is costed as
    SiLU's. Untied embeddings."""
    spec = _llama_like(c, "gpt_oss", attention_bias=None)
    window, local = _gemma_layers(c, spec.num_layers, 2)
    experts = c.int("num_local_experts", minimum=1)
    moe = MoESpec(
        num_experts=experts,
        top_k=c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="num_local_experts"),
        expert_intermediate=spec.intermediate_size,
        router_bias=True,
    )
    return replace(
        spec,
        mlp_bias=True,
        moe=moe,
        layer_kinds=(("moe", spec.num_layers),),
        sliding_window=window,
        local_layers=local,
        attention_sinks=True,
    )


def _llama4_text(c: _Fields) -> ModelSpec:
    """Llama-4 (text): Llama's attention, the layers of ``layer_types`` marked ``chunked_attention``
    (default: those with RoPE, every layer but each ``no_rope_layer_interval``-th) attend only their
    own ``attention_chunk_size``-token chunk; ``moe_layers`` (default every
    ``interleave_moe_layer_step``-th) route to ``num_local_experts`` experts of ``intermediate_size``
    (top ``num_experts_per_tok``) beside an always-on shared expert of the same width, the others
    run a dense MLP of ``intermediate_size_mlp``. The weightless QK norm, the temperature tuning of
    the global layers and their missing RoPE are elementwise and not modelled."""
    spec = _llama_like(c, "llama4_text", attention_bias=None)
    layers = spec.num_layers
    interval = c.int("no_rope_layer_interval", minimum=1, if_none=4)
    rope = c.int_list("no_rope_layers", if_none=[int((i + 1) % interval != 0) for i in range(layers)])
    default = ["chunked_attention" if r else "full_attention" for r in rope]
    types = c.text_list("layer_types", if_none=default)
    if len(types) != layers or not set(types) <= {"chunked_attention", "full_attention"}:
        raise c._error(
            "layer_types", f"must list chunked_attention or full_attention for each of {layers} layers"
        )
    chunk = c.int("attention_chunk_size", minimum=1, if_none=0)
    step = c.int("interleave_moe_layer_step", minimum=1)
    moe_layers = set(c.int_list("moe_layers", if_none=list(range(step - 1, layers, step))))
    experts = c.int("num_local_experts", minimum=1)
    width = spec.intermediate_size
    moe = MoESpec(
        num_experts=experts,
        top_k=c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="num_local_experts"),
        expert_intermediate=width,
        shared_intermediate=width,
    )
    return replace(
        spec,
        intermediate_size=c.int("intermediate_size_mlp", minimum=1),
        moe=moe,
        layer_kinds=_runs(["moe" if i in moe_layers else "dense" for i in range(layers)]),
        sliding_window=chunk,
        local_layers=types.count("chunked_attention") if chunk else 0,
        local_attention="chunked",
    )


def _dt_rank(c: _Fields, name: str, hidden: int) -> int:
    """Mamba's Δ rank: ``"auto"`` = ⌈hidden/16⌉ (MambaConfig and JambaConfig ``__post_init__``)."""
    _, value, _ = c._value(name, False, "auto")
    return math.ceil(hidden / 16) if value == "auto" else c.int(name, minimum=1)


def _state_space_only(c: _Fields, model_type: str, ssm: SSMSpec, h: int, layers: int) -> ModelSpec:
    """A model of state-space layers only (Mamba, Mamba-2): embeddings, ``layers`` × (RMSNorm, mixer,
    residual add), a final RMSNorm and the LM head; no attention, no MLP, no positions."""
    return ModelSpec(
        model_type=model_type,
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=0,
        num_kv_heads=0,
        head_dim=0,
        intermediate_size=0,
        gated_mlp=False,
        activation=c.activation("hidden_act"),
        norm="rmsnorm",
        norm_bias=False,
        norms_per_layer=1,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        positions="none",
        max_positions=0,
        rotary_dim=0,
        tie_embeddings=c.flag("tie_word_embeddings"),
        layer_kinds=((MLP_NONE, layers),),
        mixer_kinds=((MIXER_SSM, layers),),
        ssm=ssm,
    )


def _mamba(c: _Fields) -> ModelSpec:
    """Mamba (``MambaMixer``): d_inner = expand·hidden channels, each its own selective scan over
    ``state_size`` states (Gu & Dao 2023); ``use_bias`` on in/out_proj, ``use_conv_bias``."""
    h = c.int("hidden_size", required=True, minimum=1)
    layers = c.int("num_hidden_layers", required=True, minimum=1, maximum=MAX_LAYERS)
    ssm = SSMSpec(
        kind="mamba",
        heads=c.int("expand", minimum=1) * h,
        head_dim=1,
        state=c.int("state_size", minimum=1),
        groups=0,
        conv_kernel=c.int("conv_kernel", minimum=1),
        dt_rank=_dt_rank(c, "time_step_rank", h),
        conv_bias=c.flag("use_conv_bias"),
        in_bias=c.flag("use_bias"),
        out_bias=c.flag("use_bias"),
        gated_norm=False,
    )
    return _state_space_only(c, "mamba", ssm, h, layers)


def _mamba2_mixer(c: _Fields, heads: int, head_dim: int, names: Mapping[str, str]) -> SSMSpec:
    """A Mamba-2 mixer of ``heads`` × ``head_dim`` read from a family's own field names (``names``:
    heads, groups, state, conv, chunk, conv_bias, in_bias, out_bias and, where the family has the
    switch, gated_norm); its B/C groups must divide its heads."""
    groups = c.int(names["groups"], minimum=1)
    if heads % groups:
        raise c._error(names["groups"], f"({groups}) must divide {names['heads']} ({heads})")
    return SSMSpec(
        kind="mamba2",
        heads=heads,
        head_dim=head_dim,
        state=c.int(names["state"], minimum=1),
        groups=groups,
        conv_kernel=c.int(names["conv"], minimum=1),
        chunk=c.int(names["chunk"], minimum=1),
        conv_bias=c.flag(names["conv_bias"]),
        in_bias=c.flag(names["in_bias"]),
        out_bias=c.flag(names["out_bias"]),
        gated_norm=c.flag(names["gated_norm"]) if "gated_norm" in names else True,
    )


def _mamba2(c: _Fields) -> ModelSpec:
    """Mamba-2 (``Mamba2Mixer``): ``num_heads`` heads of ``head_dim`` (their product must be
    expand·hidden, as Mamba2Config checks), ``n_groups`` groups of B and C, chunked SSD scan."""
    h = c.int("hidden_size", required=True, minimum=1)
    layers = c.int("num_hidden_layers", required=True, minimum=1, maximum=MAX_LAYERS)
    heads, head_dim, expand = (
        c.int("num_heads", minimum=1),
        c.int("head_dim", minimum=1),
        c.int("expand", minimum=1),
    )
    if heads * head_dim != expand * h:
        raise c._error(
            "num_heads", f"× head_dim ({heads}·{head_dim}) must equal expand × hidden_size ({expand}·{h})"
        )
    names = {"heads": "num_heads", "groups": "n_groups", "state": "state_size", "conv": "conv_kernel"}
    names |= {
        "chunk": "chunk_size",
        "conv_bias": "use_conv_bias",
        "in_bias": "use_bias",
        "out_bias": "use_bias",
    }
    return _state_space_only(c, "mamba2", _mamba2_mixer(c, heads, head_dim, names), h, layers)


def _jamba(c: _Fields) -> ModelSpec:
    """Jamba (``JambaAttentionDecoderLayer`` / ``JambaMambaDecoderLayer``): layer i attends iff
    i % attn_layer_period == attn_layer_offset, else runs a Mamba mixer with RMSNorms on Δ, B and C;
    its MLP is a mixture of ``num_experts`` (top ``num_experts_per_tok``, experts of
    ``intermediate_size``) iff i % expert_layer_period == expert_layer_offset and num_experts > 1,
    else a dense gated MLP. Attention has no biases and no positional encoding (JambaAttention)."""
    spec = replace(_llama_like(c, "jamba", attention_bias=False), positions="none", rotary_dim=0)
    layers, h = spec.num_layers, spec.hidden_size
    period = c.int("attn_layer_period", minimum=1)
    offset = c.int("attn_layer_offset", maximum=period - 1, bound="attn_layer_period - 1")
    e_period = c.int("expert_layer_period", minimum=1)
    e_offset = c.int("expert_layer_offset", maximum=e_period - 1, bound="expert_layer_period - 1")
    experts = c.int("num_experts", minimum=1)
    ssm = SSMSpec(
        kind="mamba",
        heads=c.int("mamba_expand", minimum=1) * h,
        head_dim=1,
        state=c.int("mamba_d_state", minimum=1),
        groups=0,
        conv_kernel=c.int("mamba_d_conv", minimum=1),
        dt_rank=_dt_rank(c, "mamba_dt_rank", h),
        conv_bias=c.flag("mamba_conv_bias"),
        in_bias=c.flag("mamba_proj_bias"),
        out_bias=c.flag("mamba_proj_bias"),
        gated_norm=False,
        bcdt_norms=True,
    )
    mixers = [MIXER_ATTENTION if i % period == offset else MIXER_SSM for i in range(layers)]
    sparse = [experts > 1 and i % e_period == e_offset for i in range(layers)]
    moe = None
    if any(sparse):
        top_k = c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="num_experts")
        moe = MoESpec(num_experts=experts, top_k=top_k, expert_intermediate=spec.intermediate_size)
    return replace(
        spec,
        mixer_kinds=_runs(mixers),
        layer_kinds=_runs([MLP_MOE if x else MLP_DENSE for x in sparse]),
        moe=moe,
        ssm=ssm,
    )


def _falcon_h1(c: _Fields) -> ModelSpec:
    """Falcon-H1 (``FalconH1DecoderLayer``): every layer runs attention and a Mamba-2 mixer side by
    side on one normed input and adds both outputs, then a gated MLP. The mixer is
    ``mamba_d_ssm`` wide (None: expand·hidden) in ``mamba_n_heads`` heads; its in_proj bias is
    ``mamba_proj_bias``, its out_proj bias ``projectors_bias``, its gated norm ``mamba_rms_norm``.
    The µP multipliers scale activations and own no parameters."""
    spec = _llama_like(c, "falcon_h1", mlp_bias=None)
    layers, h = spec.num_layers, spec.hidden_size
    inner = c.int("mamba_d_ssm", minimum=1, if_none=None)
    inner = inner if inner is not None else c.int("mamba_expand", minimum=1) * h
    heads = c.int("mamba_n_heads", minimum=1)
    _, head_dim, _ = c._value("mamba_d_head", False, "auto")
    head_dim = inner // heads if head_dim == "auto" else c.int("mamba_d_head", minimum=1)
    if heads * head_dim != inner:
        raise c._error(
            "mamba_n_heads", f"× mamba_d_head ({heads}·{head_dim}) must equal the mixer width {inner}"
        )
    names = {"heads": "mamba_n_heads", "groups": "mamba_n_groups", "state": "mamba_d_state"}
    names |= {"conv": "mamba_d_conv", "chunk": "mamba_chunk_size", "conv_bias": "mamba_conv_bias"}
    names |= {"in_bias": "mamba_proj_bias", "out_bias": "projectors_bias", "gated_norm": "mamba_rms_norm"}
    ssm = _mamba2_mixer(c, heads, head_dim, names)
    return replace(spec, mixer_kinds=((MIXER_PARALLEL, layers),), ssm=ssm)


_NEMOTRON_BLOCKS = {  # layers_block_type → (mixer, MLP); legacy names as NemotronHConfig remaps them
    "linear_attention": (MIXER_SSM, MLP_NONE),
    "mamba": (MIXER_SSM, MLP_NONE),
    "full_attention": (MIXER_ATTENTION, MLP_NONE),
    "attention": (MIXER_ATTENTION, MLP_NONE),
    "mlp": (MIXER_NONE, MLP_DENSE),
    "moe": (MIXER_NONE, MLP_MOE),
}
_NEMOTRON_PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}


def _nemotron_layers(c: _Fields) -> list[str]:
    """``layers_block_type`` (alias ``layer_types``), else the legacy ``hybrid_override_pattern``
    (M mamba, * attention, - MLP, E MoE), else NemotronHConfig's default; ``num_hidden_layers`` is
    ignored (the list's length is the layer count)."""
    if c.given("layers_block_type"):
        kinds = c.text_list("layers_block_type")
    elif c.given("hybrid_override_pattern"):
        pattern = c.text("hybrid_override_pattern")
        unknown = sorted(set(pattern) - set(_NEMOTRON_PATTERN))
        if unknown:
            raise c._error(
                "hybrid_override_pattern", f"has unknown layer letters {unknown}: use M, *, - or E"
            )
        kinds = [_NEMOTRON_PATTERN[x] for x in pattern]
    else:  # NemotronHConfig.__post_init__'s list where neither is given
        kinds = ["linear_attention", "moe", "full_attention", "mlp"]
    unknown = sorted(set(kinds) - set(_NEMOTRON_BLOCKS))
    if unknown or not kinds:
        raise c._error(
            "layers_block_type", f"needs layers of {', '.join(_NEMOTRON_BLOCKS)}, got {unknown or kinds}"
        )
    return kinds


def _nemotron_h(c: _Fields) -> ModelSpec:
    """Nemotron-H (``NemotronHBlock``): each layer is one block behind one RMSNorm: a Mamba-2 mixer
    (``mamba_num_heads`` × ``mamba_head_dim``; ``expand`` is unused), attention without biases or
    positions, a non-gated MLP (``mlp_hidden_act``, relu²) or a mixture of non-gated experts with
    one shared expert. The LM head is never tied (``_tied_weights_keys`` is empty)."""
    kinds = _nemotron_layers(c)
    layers = len(kinds)
    h = c.int("hidden_size", required=True, minimum=1)
    heads = c.int("num_attention_heads", minimum=1)
    if c.given("moe_latent_size"):
        raise c._error("moe_latent_size", "(latent MoE projections) is not modelled yet: remove it")
    experts = c.int("n_routed_experts", minimum=1)
    moe = None
    if "moe" in kinds:
        moe = MoESpec(
            num_experts=experts,
            top_k=c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="n_routed_experts"),
            expert_intermediate=c.int("moe_intermediate_size", minimum=1),
            shared_intermediate=c.int("moe_shared_expert_intermediate_size", minimum=0),
            expert_bias=False,  # NemotronHExperts: bare up/down tensors; mlp_bias reaches the shared expert
        )
    names = {
        "heads": "mamba_num_heads",
        "groups": "n_groups",
        "state": "ssm_state_size",
        "conv": "conv_kernel",
    }
    names |= {
        "chunk": "chunk_size",
        "conv_bias": "use_conv_bias",
        "in_bias": "use_bias",
        "out_bias": "use_bias",
    }
    mamba_heads = c.int("mamba_num_heads", minimum=1)
    ssm = _mamba2_mixer(c, mamba_heads, c.int("mamba_head_dim", minimum=1), names)
    blocks = [_NEMOTRON_BLOCKS[k] for k in kinds]
    attention = any(m == MIXER_ATTENTION for m, _ in blocks)
    head_dim = c.int("head_dim", minimum=1) if attention else 0
    return ModelSpec(
        model_type="nemotron_h",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads if attention else 0,
        num_kv_heads=c.int("num_key_value_heads", minimum=1, if_none=heads) if attention else 0,
        head_dim=head_dim,
        intermediate_size=c.int("intermediate_size", minimum=1),
        gated_mlp=False,
        activation=c.activation("mlp_hidden_act"),
        norm="rmsnorm",
        norm_bias=False,
        norms_per_layer=1,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=c.flag("mlp_bias"),
        positions="none",
        max_positions=c.int("max_position_embeddings", minimum=1),
        rotary_dim=0,
        tie_embeddings=False,
        attention_dropout=c.probability("attention_dropout"),
        mixer_kinds=_runs([m for m, _ in blocks]),
        layer_kinds=_runs([mlp for _, mlp in blocks]),
        moe=moe,
        ssm=ssm if any(m == MIXER_SSM for m, _ in blocks) else None,
    )


def _partial_rotary_fraction(c: _Fields, default: float = 0.25) -> float:
    """Qwen3NextConfig, Glm4MoeConfig: ``rope_parameters.partial_rotary_factor``, else a top-level
    ``partial_rotary_factor``, else ``default`` (their ``__post_init__`` default: 0.25, GLM 0.5)."""
    rope = c.sub("rope_parameters")
    if rope.given("partial_rotary_factor"):
        return rope.number("partial_rotary_factor", high=1.0)
    return c.number("partial_rotary_factor", high=1.0, if_none=default)


def _qwen3_next(c: _Fields) -> ModelSpec:
    """Qwen3-Next: ``layer_types`` (default: full attention every ``full_attention_interval`` = 4th
    layer) choose full attention (Qwen3's QK norm, a per-head output gate from a doubled q_proj,
    rotary on ``partial_rotary_factor`` of each head) or Gated DeltaNet linear attention
    (``linear_num_key_heads`` × ``linear_key_head_dim`` keys, ``linear_num_value_heads`` ×
    ``linear_value_head_dim`` values, no biases); MLPs are Qwen2-MoE's (shared expert behind a gate)."""
    spec = _llama_like(c, "qwen3_next", qk_norm=True)
    layers = spec.num_layers
    if c.given("layer_types"):
        types = c.text_list("layer_types")
    else:
        interval = c.int("full_attention_interval", minimum=1, if_none=4)
        types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)]
    known = {"full_attention": MIXER_ATTENTION, "linear_attention": MIXER_SSM}
    if len(types) != layers or set(types) - set(known):
        raise c._error(
            "layer_types", f"needs {layers} entries of full_attention or linear_attention, got {types}"
        )
    key_heads, value_heads = (
        c.int("linear_num_key_heads", minimum=1),
        c.int("linear_num_value_heads", minimum=1),
    )
    if value_heads % key_heads:
        raise c._error(
            "linear_num_value_heads",
            f"({value_heads}) must be a multiple of linear_num_key_heads ({key_heads})",
        )
    ssm = SSMSpec(
        kind="gated_deltanet",
        heads=value_heads,
        head_dim=c.int("linear_value_head_dim", minimum=1),
        state=c.int("linear_key_head_dim", minimum=1),
        groups=key_heads,
        conv_kernel=c.int("linear_conv_kernel_dim", minimum=1),
        chunk=64,  # the chunked gated delta rule's block (fla's kernels and transformers' torch path)
        conv_bias=False,
    )
    experts = c.int("num_experts", minimum=0)
    kinds = _sparse_layers(c, layers, experts)
    moe = None
    if any(kind == MLP_MOE for kind, _ in kinds):
        moe = MoESpec(
            num_experts=experts,
            top_k=c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="num_experts"),
            expert_intermediate=c.int("moe_intermediate_size", minimum=1),
            shared_intermediate=c.int("shared_expert_intermediate_size", minimum=0),
            shared_gate=True,
        )
    mixers = [known[x] for x in types]
    ssm_spec = ssm if MIXER_SSM in mixers else None
    rotary = int(spec.head_dim * _partial_rotary_fraction(c))
    return replace(
        spec,
        rotary_dim=rotary,
        attn_output_gate=True,
        mixer_kinds=_runs(mixers),
        layer_kinds=kinds,
        moe=moe,
        ssm=ssm_spec,
    )


def _bert(c: _Fields) -> ModelSpec:
    """BERT (``BertLMHeadModel``, what ``AutoModelForCausalLM`` builds): an encoder, bidirectional
    attention; word, learned position and token-type embeddings and their LayerNorm; post-norm layers
    (a LayerNorm after attention and after the MLP, no final norm) with biases everywhere and a GELU
    MLP; the prediction head's dense h → h, activation and LayerNorm, then the (tied) decoder with a
    bias. BertModel's pooler is not part of the language model."""
    h, layers, heads = _shape(c, "hidden_size", "num_hidden_layers", "num_attention_heads")
    return ModelSpec(
        model_type="bert",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=c.int("intermediate_size", minimum=1),
        gated_mlp=False,
        activation=c.activation("hidden_act"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=2,
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        positions="learned",
        max_positions=c.int("max_position_embeddings", minimum=1),
        rotary_dim=0,
        tie_embeddings=c.flag("tie_word_embeddings"),
        lm_head_bias=True,
        embedding_norm=True,
        attention_dropout=c.probability("attention_probs_dropout_prob"),
        hidden_dropout=c.probability("hidden_dropout_prob"),
        causal=False,
        token_types=c.int("type_vocab_size", minimum=0),
        final_norm=False,
        head_transform=True,
    )


def _t5(c: _Fields) -> ModelSpec:
    """T5 (``T5ForConditionalGeneration``): an encoder of ``num_layers`` layers (bidirectional
    self-attention, MLP), then a decoder of ``num_decoder_layers`` (default: as many) whose layers add
    attention over the encoder's output between the two. Heads of width ``d_kv`` (heads·d_kv need not
    be ``d_model``); no biases; RMS norms (T5LayerNorm) before each block and after each stack; one
    embedding shared by both stacks; a learned bias per (bucketed distance, head) added to the
    self-attention scores of each stack (``relative_attention_num_buckets`` × heads, in its first
    layer); ``feed_forward_proj`` "relu" or "gated-<act>" (v1.1, Flan: two input projections);
    dropout ``dropout_rate``. The LM head is the shared embedding unless ``tie_word_embeddings`` is
    false (T5 v1.1 and Flan-T5 checkpoints carry their own ``lm_head.weight``; transformers 5 builds the
    head tied whatever the config says, so its count is one vocabulary·d_model lower for them)."""
    h = c.int("d_model", required=True, minimum=1)
    encoder, heads = c.int("num_layers", minimum=1, maximum=MAX_LAYERS), c.int("num_heads", minimum=1)
    decoder = c.int("num_decoder_layers", minimum=1, maximum=MAX_LAYERS, if_none=encoder)
    proj = c.text("feed_forward_proj")
    parts = proj.split("-")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # T5Config maps gated-gelu to gelu_new
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in ACTIVATION_FLOPS:
        raise c._error(
            "feed_forward_proj",
            f"must be '<act>' or 'gated-<act>' with <act> one of {', '.join(ACTIVATION_FLOPS)}, got {proj!r}",
        )
    dropout = c.probability("dropout_rate")
    return ModelSpec(
        model_type="t5",
        hidden_size=h,
        num_layers=encoder + decoder,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=c.int("d_kv", minimum=1),
        intermediate_size=c.int("d_ff", minimum=1),
        gated_mlp=len(parts) == 2,
        activation=act,
        norm="rmsnorm",
        norm_bias=False,
        norms_per_layer=2,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        positions="relative",
        max_positions=0,
        rotary_dim=0,
        tie_embeddings=c.flag("tie_word_embeddings", if_none=True),
        attention_dropout=dropout,
        hidden_dropout=dropout,
        mixer_kinds=((MIXER_ENCODER, encoder), (MIXER_CROSS, decoder)),
        relative_buckets=c.int("relative_attention_num_buckets", minimum=1),
    )


def _deepseek_v2(c: _Fields) -> ModelSpec:
    """DeepSeek-V2: the layer DeepSeek-V3 kept (MLA, dense first layers, routed plus shared experts)."""
    return replace(_deepseek_v3(c), model_type="deepseek_v2")


def _deepseek_v3(c: _Fields) -> ModelSpec:
    """DeepSeek-V3: MLA attention; the first ``first_k_dense_replace`` layers have a dense MLP of
    ``intermediate_size``, the rest route to ``n_routed_experts`` (alias ``num_local_experts``; top
    ``num_experts_per_tok``) plus ``n_shared_experts`` always-on experts, fused as one MLP of
    n_shared·moe_intermediate_size. ``q_lora_rank`` null: a plain query projection."""
    h, layers, heads = _shape(c, "hidden_size", "num_hidden_layers", "num_attention_heads")
    mla = MLASpec(
        q_lora_rank=c.int("q_lora_rank", minimum=1, if_none=0),  # null: a plain query projection
        kv_lora_rank=c.int("kv_lora_rank", minimum=1),
        qk_nope_head_dim=c.int("qk_nope_head_dim", minimum=1),
        qk_rope_head_dim=c.int("qk_rope_head_dim", minimum=1),
        v_head_dim=c.int("v_head_dim", minimum=1),
    )
    moe, kinds = _deepseek_moe(c, layers)
    bias = c.flag("attention_bias")
    return ModelSpec(
        model_type="deepseek_v3",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size", minimum=1),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim,
        intermediate_size=c.int("intermediate_size", minimum=1),
        gated_mlp=True,
        activation=c.activation("hidden_act"),
        norm="rmsnorm",
        norm_bias=False,
        norms_per_layer=2,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=False,
        positions="rotary",
        max_positions=c.int("max_position_embeddings", minimum=1),
        rotary_dim=mla.qk_rope_head_dim,
        tie_embeddings=c.flag("tie_word_embeddings"),
        attention_dropout=c.probability("attention_dropout"),
        layer_kinds=kinds,
        moe=moe,
        mla=mla,
    )


def _deepseek_moe(c: _Fields, layers: int) -> tuple[MoESpec, tuple[tuple[str, int], ...]]:
    """DeepSeek-V3's MLPs (also GLM-4.5's): the first ``first_k_dense_replace`` layers dense, the rest
    route to ``n_routed_experts`` (top ``num_experts_per_tok``; the router's ``e_score_correction_bias``
    is a buffer, not a parameter) plus one shared MLP of n_shared_experts·moe_intermediate_size."""
    moe_width = c.int("moe_intermediate_size", minimum=1)
    experts = c.int("n_routed_experts", minimum=1)
    moe = MoESpec(
        num_experts=experts,
        top_k=c.int("num_experts_per_tok", minimum=1, maximum=experts, bound="n_routed_experts"),
        expert_intermediate=moe_width,
        shared_intermediate=c.int("n_shared_experts") * moe_width,
    )
    dense = min(c.int("first_k_dense_replace"), layers)
    return moe, tuple((k, n) for k, n in (("dense", dense), ("moe", layers - dense)) if n)


def _glm4_moe(c: _Fields) -> ModelSpec:
    """GLM-4.5 (``Glm4MoeConfig``): Llama's GQA attention with a bias on q/k/v only (``attention_bias``;
    o_proj has none), RMSNorm over head_dim on queries and keys when ``use_qk_norm``, ``head_dim``
    undeclared (given, else hidden/heads), rotary on ``partial_rotary_factor`` (0.5) of each head;
    DeepSeek-V3's MLPs (:func:`_deepseek_moe`). The ``num_nextn_predict_layers`` MTP layers are not
    built by ``Glm4MoeForCausalLM`` and not counted."""
    spec = _llama_like(
        c, "glm4_moe", attention_bias=False, qkv_bias=c.flag("attention_bias"), qk_norm=c.flag("use_qk_norm")
    )
    moe, kinds = _deepseek_moe(c, spec.num_layers)
    rotary = int(spec.head_dim * _partial_rotary_fraction(c, default=0.5))
    return replace(spec, rotary_dim=rotary, moe=moe, layer_kinds=kinds)


PARSERS: dict[str, Callable[[_Fields], ModelSpec]] = {
    "gpt2": _gpt2,
    "gptj": _gptj,
    "gpt_neox": _gpt_neox,
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "gemma2": _gemma2,
    "qwen2_moe": _qwen2_moe,
    "olmo2": _olmo2,
    "olmoe": _olmoe,
    "deepseek_v2": _deepseek_v2,
    "gpt_oss": _gpt_oss,
    "llama4_text": _llama4_text,
    "gemma3_text": _gemma3_text,
    "phi3": _phi3,
    "starcoder2": _starcoder2,
    "mpt": _mpt,
    "bloom": _bloom,
    "falcon": _falcon,
    "deepseek_v3": _deepseek_v3,
    "glm4_moe": _glm4_moe,
    "mamba": _mamba,
    "mamba2": _mamba2,
    "jamba": _jamba,
    "falcon_h1": _falcon_h1,
    "nemotron_h": _nemotron_h,
    "qwen3_next": _qwen3_next,
    "bert": _bert,
    "t5": _t5,
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(PARSERS)


def parse_hf_config(config: Mapping[str, Any]) -> ModelSpec:
    """Build the :class:`ModelSpec` of a Hugging Face ``config.json`` dict, dispatching on ``model_type``;
    fields it leaves out take the defaults of the family's ``transformers`` configuration class."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"model config must be a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is None:
        raise ConfigError("model config: missing field 'model_type' (e.g. \"llama\")")
    parser = PARSERS.get(model_type) if isinstance(model_type, str) else None
    if parser is None:
        raise ConfigError(
            f"unsupported model_type '{model_type}'; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return parser(_Fields(config, model_type, _schema(model_type)))
