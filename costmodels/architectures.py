"""Hugging Face ``config.json`` → :class:`ModelSpec`, one explicit parser per ``model_type``.

A :class:`ModelSpec` is the architecture in the field's own words (hidden size, heads, KV heads,
head dim, MLP width and kind, norms, biases, positions, MoE, MLA), normalised across families so
that one op builder (``workload.py``) serves them all. Each parser reads the fields its family's
``transformers`` configuration class defines, with that class's defaults, and nothing else: an
unsupported ``model_type`` is an error that lists the supported ones (no catch-all branch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from costmodels.errors import ConfigError


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts MLP: ``num_experts`` routed experts of width ``expert_intermediate``,
    ``top_k`` per token, plus an always-on shared MLP of width ``shared_intermediate`` (0: none)."""

    num_experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int = 0


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank queries (``q_lora_rank``, 0 = plain
    projection) and a compressed KV latent of ``kv_lora_rank`` plus a shared rotary key part."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, normalised across Hugging Face families.

    ``layer_kinds`` lists ``("dense" | "moe", count)`` runs in layer order. ``norms_per_layer`` is
    the number of norms in a block (1 for GPT-J's single ``ln_1``). ``parallel_block``: attention
    and MLP read the same normed input and their outputs are added once (GPT-J, NeoX, Falcon).
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
    positions: str  # "learned" | "rotary" | "alibi"
    max_positions: int
    rotary_dim: int
    tie_embeddings: bool
    lm_head_bias: bool = False
    parallel_block: bool = False
    embedding_norm: bool = False
    qk_norm: bool = False
    attention_dropout: float = 0.0  # dropout probability on attention probabilities (training)
    hidden_dropout: float = 0.0  # dropout probability on block outputs and embeddings (training)
    layer_kinds: tuple[tuple[str, int], ...] = ()
    moe: MoESpec | None = None
    mla: MLASpec | None = None

    def __post_init__(self) -> None:
        if not self.layer_kinds:
            object.__setattr__(self, "layer_kinds", (("dense", self.num_layers),))
        positive = ("hidden_size", "num_layers", "vocab_size", "num_heads", "num_kv_heads", "head_dim")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{self.model_type}: {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"{self.model_type}: num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if sum(n for _, n in self.layer_kinds) != self.num_layers:
            raise ConfigError(
                f"{self.model_type}: layer kinds {self.layer_kinds} do not sum to {self.num_layers}"
            )

    @property
    def kv_cache_elements_per_token(self) -> int:
        """K and V elements cached per token per layer: 2·kv_heads·head_dim, or the MLA latent
        ``kv_lora_rank + qk_rope_head_dim`` (DeepSeek-V2 paper, Sec. 2.1.2: only c_KV and k_R are cached)."""
        if self.mla is not None:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim


# --------------------------------------------------------------------------------------------
# Field access with the family's defaults and clear errors


class _Fields:
    """Reads ``config.json`` fields; a missing field without a default is a ConfigError."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.model_type = config.get("model_type", "?")

    def req(self, *names: str) -> Any:
        for name in names:
            if self.config.get(name) is not None:
                return self.config[name]
        raise ConfigError(
            f"{self.model_type} config: missing field '{names[0]}' (required for this model_type)"
        )

    def get(self, name: str, default: Any) -> Any:
        value = self.config.get(name)
        return default if value is None else value

    def int(self, *names: str, default: int | None = None) -> int:
        try:
            value = self.req(*names)
        except ConfigError:
            if default is None:
                raise
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(
                f"{self.model_type} config: field '{names[0]}' must be an integer, got {value!r}"
            )
        return int(value)


# --------------------------------------------------------------------------------------------
# Parsers, one per model_type


def _gpt2(c: _Fields) -> ModelSpec:
    h = c.int("n_embd", "hidden_size")
    return ModelSpec(
        model_type="gpt2",
        hidden_size=h,
        num_layers=c.int("n_layer", "num_hidden_layers"),
        vocab_size=c.int("vocab_size"),
        num_heads=c.int("n_head", "num_attention_heads"),
        num_kv_heads=c.int("n_head", "num_attention_heads"),
        head_dim=h // c.int("n_head", "num_attention_heads"),
        intermediate_size=c.int("n_inner", default=4 * h),
        gated_mlp=False,
        activation=c.get("activation_function", "gelu_new"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=2,
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        positions="learned",
        max_positions=c.int("n_positions", default=1024),
        rotary_dim=0,
        tie_embeddings=bool(c.get("tie_word_embeddings", True)),
        attention_dropout=float(c.get("attn_pdrop", 0.1)),
        hidden_dropout=float(c.get("resid_pdrop", 0.1)),
    )


def _gptj(c: _Fields) -> ModelSpec:
    h, heads = c.int("n_embd"), c.int("n_head")
    return ModelSpec(
        model_type="gptj",
        hidden_size=h,
        num_layers=c.int("n_layer"),
        vocab_size=c.int("vocab_size"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=c.int("n_inner", default=4 * h),
        gated_mlp=False,
        activation=c.get("activation_function", "gelu_new"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=1,
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=True,
        positions="rotary",
        max_positions=c.int("n_positions", default=2048),
        rotary_dim=c.int("rotary_dim", default=h // heads),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        lm_head_bias=True,
        parallel_block=True,
        attention_dropout=float(c.get("attn_pdrop", 0.0)),
        hidden_dropout=float(c.get("resid_pdrop", 0.0)),
    )


def _gpt_neox(c: _Fields) -> ModelSpec:
    h, heads = c.int("hidden_size"), c.int("num_attention_heads")
    head_dim = h // heads
    bias = bool(c.get("attention_bias", True))
    return ModelSpec(
        model_type="gpt_neox",
        hidden_size=h,
        num_layers=c.int("num_hidden_layers"),
        vocab_size=c.int("vocab_size"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        intermediate_size=c.int("intermediate_size"),
        gated_mlp=False,
        activation=c.get("hidden_act", "gelu"),
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=2,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=True,
        positions="rotary",
        max_positions=c.int("max_position_embeddings", default=2048),
        rotary_dim=int(head_dim * float(c.get("rotary_pct", c.get("partial_rotary_factor", 0.25)))),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        parallel_block=bool(c.get("use_parallel_residual", True)),
        attention_dropout=float(c.get("attention_dropout", 0.0)),
        hidden_dropout=float(c.get("hidden_dropout", 0.0)),
    )


def _llama_like(
    c: _Fields, model_type: str, qkv_bias: bool | None = None, qk_norm: bool = False
) -> ModelSpec:
    """Llama, Mistral, Qwen2, Qwen3 (and the attention/MLP of Mixtral, Qwen3-MoE)."""
    h, heads = c.int("hidden_size"), c.int("num_attention_heads")
    head_dim = c.int("head_dim", default=h // heads)
    attn_bias = bool(c.get("attention_bias", False))
    return ModelSpec(
        model_type=model_type,
        hidden_size=h,
        num_layers=c.int("num_hidden_layers"),
        vocab_size=c.int("vocab_size"),
        num_heads=heads,
        num_kv_heads=c.int("num_key_value_heads", default=heads),
        head_dim=head_dim,
        intermediate_size=c.int("intermediate_size"),
        gated_mlp=True,
        activation=c.get("hidden_act", "silu"),
        norm="rmsnorm",
        norm_bias=False,
        norms_per_layer=2,
        qkv_bias=attn_bias if qkv_bias is None else qkv_bias,
        attn_out_bias=attn_bias,
        mlp_bias=bool(c.get("mlp_bias", False)),
        positions="rotary",
        max_positions=c.int("max_position_embeddings", default=4096),
        rotary_dim=head_dim,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        qk_norm=qk_norm,
        attention_dropout=float(c.get("attention_dropout", 0.0)),
    )


def _llama(c: _Fields) -> ModelSpec:
    return _llama_like(c, "llama")


def _mistral(c: _Fields) -> ModelSpec:
    return _llama_like(c, "mistral")


def _qwen2(c: _Fields) -> ModelSpec:
    """Qwen2: q/k/v projections carry a bias, the output projection does not."""
    return replace(_llama_like(c, "qwen2", qkv_bias=True), attn_out_bias=False)


def _qwen3(c: _Fields) -> ModelSpec:
    """Qwen3: RMSNorm over head_dim on queries and keys (q_norm, k_norm), explicit head_dim."""
    return _llama_like(c, "qwen3", qk_norm=True)


def _mixtral(c: _Fields) -> ModelSpec:
    moe = MoESpec(
        num_experts=c.int("num_local_experts"),
        top_k=c.int("num_experts_per_tok"),
        expert_intermediate=c.int("intermediate_size"),
    )
    spec = _llama_like(c, "mixtral")
    return replace(spec, moe=moe, layer_kinds=(("moe", spec.num_layers),))


def _qwen3_moe(c: _Fields) -> ModelSpec:
    """Layer i is sparse iff i ∉ mlp_only_layers, num_experts > 0 and (i+1) % decoder_sparse_step == 0
    (transformers ``Qwen3MoeDecoderLayer``); other layers use a dense MLP of ``intermediate_size``."""
    spec = _llama_like(c, "qwen3_moe", qk_norm=True)
    experts, step = c.int("num_experts"), c.int("decoder_sparse_step", default=1)
    dense_only = set(c.get("mlp_only_layers", []))
    kinds = [
        "moe" if (i not in dense_only and experts > 0 and (i + 1) % step == 0) else "dense"
        for i in range(spec.num_layers)
    ]
    moe = MoESpec(
        num_experts=experts,
        top_k=c.int("num_experts_per_tok"),
        expert_intermediate=c.int("moe_intermediate_size"),
    )
    return replace(spec, moe=moe, layer_kinds=_runs(kinds))


def _runs(kinds: list[str]) -> tuple[tuple[str, int], ...]:
    """Run-length encode a per-layer list of kinds: ['dense','moe','moe'] → (('dense',1),('moe',2))."""
    out: list[tuple[str, int]] = []
    for kind in kinds:
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + 1)
        else:
            out.append((kind, 1))
    return tuple(out)


def _mpt(c: _Fields) -> ModelSpec:
    """MPT: ALiBi, no biases (``no_bias``), LayerNorms without bias (transformers drops them), tied."""
    h, heads = c.int("d_model"), c.int("n_heads")
    attn = c.get("attn_config", {}) or {}
    bias = not bool(c.get("no_bias", True))
    return ModelSpec(
        model_type="mpt",
        hidden_size=h,
        num_layers=c.int("n_layers"),
        vocab_size=c.int("vocab_size"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=h // heads,
        intermediate_size=int(c.int("expansion_ratio", default=4) * h),
        gated_mlp=False,
        activation="gelu",
        norm="layernorm",
        norm_bias=False,
        norms_per_layer=2,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bias,
        positions="alibi" if attn.get("alibi", True) else "learned",
        max_positions=c.int("max_seq_len", default=2048),
        rotary_dim=0,
        tie_embeddings=True,
        attention_dropout=float(attn.get("attn_pdrop", 0.0)),
        hidden_dropout=float(c.get("resid_pdrop", 0.0)),
    )


def _bloom(c: _Fields) -> ModelSpec:
    h, heads = c.int("hidden_size", "n_embed"), c.int("n_head", "num_attention_heads")
    return ModelSpec(
        model_type="bloom",
        hidden_size=h,
        num_layers=c.int("n_layer", "num_hidden_layers"),
        vocab_size=c.int("vocab_size"),
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
        max_positions=c.int("seq_length", default=2048),
        rotary_dim=0,
        tie_embeddings=bool(c.get("tie_word_embeddings", True)),
        embedding_norm=True,
        attention_dropout=float(c.get("attention_dropout", 0.0)),
        hidden_dropout=float(c.get("hidden_dropout", 0.0)),
    )


def _falcon(c: _Fields) -> ModelSpec:
    """Falcon: parallel attention; new_decoder_architecture (40B/180B) has grouped KV heads and two
    LayerNorms (ln_attn, ln_mlp); multi_query (7B) one KV head (transformers ``FalconDecoderLayer``)."""
    h, heads = c.int("hidden_size"), c.int("num_attention_heads")
    new_arch = bool(c.get("new_decoder_architecture", False))
    parallel = bool(c.get("parallel_attn", True))
    if new_arch:
        kv_heads = c.int("num_kv_heads", default=heads)
    else:
        kv_heads = 1 if c.get("multi_query", True) else heads
    norms = int(c.get("num_ln_in_parallel_attn", 2 if new_arch else 1)) if parallel else 2
    bias = bool(c.get("bias", False))
    return ModelSpec(
        model_type="falcon",
        hidden_size=h,
        num_layers=c.int("num_hidden_layers"),
        vocab_size=c.int("vocab_size"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=h // heads,
        intermediate_size=c.int("ffn_hidden_size", default=4 * h),
        gated_mlp=False,
        activation="gelu",
        norm="layernorm",
        norm_bias=True,
        norms_per_layer=norms,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bias,
        positions="alibi" if c.get("alibi", False) else "rotary",
        max_positions=c.int("max_position_embeddings", default=2048),
        rotary_dim=0 if c.get("alibi", False) else h // heads,
        tie_embeddings=bool(c.get("tie_word_embeddings", True)),
        parallel_block=parallel,
        attention_dropout=float(c.get("attention_dropout", 0.0)),
        hidden_dropout=float(c.get("hidden_dropout", 0.0)),
    )


def _deepseek_v3(c: _Fields) -> ModelSpec:
    """DeepSeek-V3: MLA attention; the first ``first_k_dense_replace`` layers have a dense MLP of
    ``intermediate_size``, the rest route to ``n_routed_experts`` (top ``num_experts_per_tok``) plus
    ``n_shared_experts`` always-on experts, fused as one MLP of n_shared·moe_intermediate_size."""
    h, heads, layers = c.int("hidden_size"), c.int("num_attention_heads"), c.int("num_hidden_layers")
    mla = MLASpec(
        q_lora_rank=c.int("q_lora_rank", default=0),
        kv_lora_rank=c.int("kv_lora_rank"),
        qk_nope_head_dim=c.int("qk_nope_head_dim"),
        qk_rope_head_dim=c.int("qk_rope_head_dim"),
        v_head_dim=c.int("v_head_dim"),
    )
    moe_width = c.int("moe_intermediate_size")
    moe = MoESpec(
        num_experts=c.int("n_routed_experts"),
        top_k=c.int("num_experts_per_tok"),
        expert_intermediate=moe_width,
        shared_intermediate=c.int("n_shared_experts", default=0) * moe_width,
    )
    dense = min(c.int("first_k_dense_replace", default=0), layers)
    kinds = tuple((k, n) for k, n in (("dense", dense), ("moe", layers - dense)) if n)
    bias = bool(c.get("attention_bias", False))
    return ModelSpec(
        model_type="deepseek_v3",
        hidden_size=h,
        num_layers=layers,
        vocab_size=c.int("vocab_size"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim,
        intermediate_size=c.int("intermediate_size"),
        gated_mlp=True,
        activation=c.get("hidden_act", "silu"),
        norm="rmsnorm",
        norm_bias=False,
        norms_per_layer=2,
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=False,
        positions="rotary",
        max_positions=c.int("max_position_embeddings", default=4096),
        rotary_dim=mla.qk_rope_head_dim,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        attention_dropout=float(c.get("attention_dropout", 0.0)),
        layer_kinds=kinds,
        moe=moe,
        mla=mla,
    )


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
    "mpt": _mpt,
    "bloom": _bloom,
    "falcon": _falcon,
    "deepseek_v3": _deepseek_v3,
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(PARSERS)


def parse_hf_config(config: Mapping[str, Any]) -> ModelSpec:
    """Build the :class:`ModelSpec` of a Hugging Face ``config.json`` dict, dispatching on ``model_type``."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"model config must be a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type is None:
        raise ConfigError("model config: missing field 'model_type' (e.g. \"llama\")")
    parser = PARSERS.get(model_type)
    if parser is None:
        raise ConfigError(
            f"unsupported model_type '{model_type}'; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return parser(_Fields(config))
