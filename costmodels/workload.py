"""The transformer workload: every op of a model with its FLOPs and the bytes it reads and writes.

``forward_ops`` lists the ops of one forward pass over a :class:`Batch` (token statistics of one
or many queries), ``training_ops`` adds the backward pass (input-gradient and weight-gradient
matmuls separately) and ``inference_ops`` builds prefill / decode steps from per-query cached
and new token counts, as the inference roofline analysers (LLM-Viewer, Transformer Roofline
Analyzer) accept them.

Conventions (one op = one kernel of a straightforward implementation):

* A matmul of ``m`` tokens by a weight of ``k`` inputs × ``n`` outputs costs ``2·m·n·k`` FLOPs
  (+ ``m·n`` for a bias) and moves its weight, its input ``m·k`` and its output ``m·n``.
* Attention counts the unmasked (query, key) pairs: a query with ``c`` cached and ``n`` new
  tokens attends ``n·c + n(n+1)/2`` pairs under the causal mask (a kernel that skips masked
  blocks, as FlashAttention does; an eager kernel computes the full ``n·(c+n)``).
  ``Batch.training(..., causal=False)`` counts the full square, as Megatron's FLOP formula does.
* Elementwise FLOPs per element: SiLU 4 (exp, add, divide, multiply), GELU 8 (tanh approximation:
  cube 2, scale 1, add 1, scale 1, tanh 1, add 1, multiply 1), gated act·mul = act + 1;
  RMSNorm 4h+2 per token (square, sum, scale, gain; mean and rsqrt), LayerNorm 7h+3 (mean, centre,
  square, sum, scale, gain, bias; mean, variance, rsqrt); softmax 5 per score (max, subtract, exp,
  sum, divide); rotary 3 per rotated element (two multiplies, one add).
  Transformer Roofline Analyzer counts act·mul as ``(act+1)·I + n`` FLOPs for ``n`` tokens; the
  correct count is ``(act+1)·I·n`` — every one of the ``n·I`` elements is activated and multiplied.
* MoE experts at inference touch ``E·(1-(1-k/E)^T)`` distinct experts for ``T`` tokens (uniform,
  independent top-k routing), so decode reads only those experts' weights; training reads all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from costmodels.architectures import (
    ACTIVATION_FLOPS,
    MIXER_CROSS,
    MIXER_ENCODER,
    MIXER_PARALLEL,
    MIXER_SSM,
    MLP_DENSE,
    MLP_MOE,
    ModelSpec,
    SSMSpec,
)
from costmodels.errors import ConfigError
from costmodels.hardware import (
    activation_precision,
    bytes_per_element,
    kv_cache_precision,
    weight_bytes_per_element,
)

SOFTMAX_FLOPS = 5.0
ROTARY_FLOPS = 3.0
SOFTCAP_FLOPS = 3.0  # cap·tanh(x/cap): a division, a tanh and a multiplication per element


# How tensor parallelism shards an op (Megatron-LM), set where the op is built: ``column`` and
# ``row`` linears split their weight (and FLOPs and one activation), ``split`` ops run on a slice of
# the heads or features, ``vocab`` is the vocabulary-parallel embedding, ``replicated`` ops run whole
# on every TP rank (norms, residual adds, routers, MLA down-projections).
TP_REPLICATED, TP_COLUMN, TP_ROW, TP_SPLIT, TP_VOCAB = "replicated", "column", "row", "split", "vocab"
# Which pipeline stage holds an op: the first (embedding), every stage (the layers), the last (head).
STAGE_FIRST, STAGE_LAYER, STAGE_LAST = "first", "layer", "last"
_CORE = {"tp": TP_SPLIT, "core": True}  # the attention core: split by heads, re-run by selective recompute


@dataclass(frozen=True)
class Op:
    """One kernel. FLOPs and bytes are per execution; ``count`` executions per step (layers).

    ``params`` are the parameters the op owns (0 for a tied LM head, whose weight is the
    embedding's). A matmul op is ``gemms`` GEMMs (> 1: MoE experts) of geometry ``mnk`` = (output
    rows, output columns, reduction) each — (tokens, output features, input features) in the forward
    pass — for shape-dependent efficiency models; its FLOPs are ``2·m·n·k·gemms`` plus the bias
    adds. ``phase`` is ``fwd``, ``bwd_input`` (input gradients) or ``bwd_weight`` (weight gradients).
    Set where the op is built: ``tp`` (how tensor parallelism shards it, TP_*), ``stage`` (STAGE_*),
    ``core`` (the attention core that selective recomputation re-runs), ``expert`` (a routed
    expert's op, sharded over ep) and ``flash`` (a fused attention kernel).
    """

    name: str
    kind: str  # matmul | attention | elementwise | norm | embedding
    flops: float
    weight_bytes: float
    input_bytes: float
    output_bytes: float
    count: int = 1
    params: int = 0
    phase: str = "fwd"
    mnk: tuple[float, float, float] | None = None
    gemms: float = 1.0
    tp: str = TP_REPLICATED
    stage: str = STAGE_LAYER
    core: bool = False
    expert: bool = False
    flash: bool = False
    # an attention core's (queries, keys) per sequence where they are not its table's (an
    # encoder-decoder's encoder and cross-attention see the source tokens)
    queries_keys: tuple[float, float] | None = None

    @property
    def gemm_flops(self) -> float:
        """FLOPs of the matrix products alone (no bias adds); 0 for non-matmul ops."""
        return 2.0 * self.mnk[0] * self.mnk[1] * self.mnk[2] * self.gemms if self.mnk else 0.0

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.input_bytes + self.output_bytes

    @property
    def intensity(self) -> float:
        """Operational intensity, FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else float("inf")


@dataclass(frozen=True)
class Batch:
    """Token statistics of a batch of queries, all an op builder needs.

    ``new_tokens`` = Σ n_i go through the linear layers; ``context_tokens`` = Σ (c_i + n_i) keys
    and values are read by attention; ``pairs`` = Σ attended (query, key) pairs; ``logit_tokens``
    rows go through the LM head. An encoder-decoder's decoder queries also read ``source_tokens`` =
    Σ s_i encoder outputs (``cross_pairs`` = Σ n_i·s_i (query, source) pairs); ``source`` is the
    encoder's batch where the encoder runs in this pass (training, a prefill), None where its keys
    and values are already cached (a decode step).
    """

    new_tokens: float
    context_tokens: float
    pairs: float
    sequences: int
    logit_tokens: float
    # the queries: (cached tokens c, new tokens n, how many such queries), for windowed attention
    spans: tuple[tuple[float, float, float], ...] = ()
    causal: bool = True
    source: Batch | None = None
    source_tokens: float = 0.0
    cross_pairs: float = 0.0

    def windowed(self, window: int) -> Batch:
        """The same queries attending only the last ``window`` positions (sliding-window attention
        run by a kernel that skips what the window masks): a new token at position j attends
        min(j, w) keys, so a query of n new tokens after c cached ones attends S(c+n) − S(c) pairs,
        S(x) = Σ_{j≤x} min(j, w) = x(x+1)/2 for x ≤ w, else w(w+1)/2 + (x − w)·w, and reads
        min(c + n, w + n − 1) keys. A non-causal batch (the full s×s scores an eager kernel computes
        before masking) is returned unchanged."""

        def upto(x: float, w: float) -> float:
            return x * (x + 1) / 2 if x <= w else w * (w + 1) / 2 + (x - w) * w

        return self._local(float(window), upto, lambda c, n, w: min(c + n, w + n - 1), "windowed")

    def chunked(self, chunk: int) -> Batch:
        """The same queries attending only within their own ``chunk``-token chunk (Llama-4's chunked
        attention): position j attends ((j − 1) mod C) + 1 keys, so a query of n new tokens after c
        cached ones attends T(c+n) − T(c) pairs, T(x) = q·C(C+1)/2 + r(r+1)/2 for x = q·C + r, and
        reads the c + n − C·⌊c/C⌋ keys from the start of its first chunk. A non-causal batch is
        returned unchanged, as by :meth:`windowed`."""

        def upto(x: float, size: float) -> float:
            q = x // size
            r = x - q * size
            return q * size * (size + 1) / 2 + r * (r + 1) / 2

        return self._local(float(chunk), upto, lambda c, n, size: c + n - size * (c // size), "chunked")

    def _local(
        self,
        width: float,
        upto: Callable[[float, float], float],
        keys: Callable[[float, float, float], float],
        what: str,
    ) -> Batch:
        """The batch with each span's pairs ``upto(c+n) − upto(c)`` (pairs attended by the first x
        positions) and its ``keys(c, n)`` read: the shared body of :meth:`windowed` and :meth:`chunked`."""
        if not self.causal:
            return self
        if not self.spans:
            raise ConfigError(f"a batch without its query spans cannot be {what}")
        pairs = sum(k * (upto(c + n, width) - upto(c, width)) for c, n, k in self.spans)
        context = sum(k * keys(c, n, width) for c, n, k in self.spans)
        return replace(self, pairs=pairs, context_tokens=context)

    def bidirectional(self) -> Batch:
        """The batch with every new token attending all of its query's c + n tokens (an encoder's
        attention, BERT): Σ k·n·(c + n) pairs."""
        if not self.spans:
            raise ConfigError("a batch without its query spans cannot be made bidirectional")
        pairs = sum(k * n * (c + n) for c, n, k in self.spans)
        return replace(self, pairs=pairs, causal=False)

    def with_source(self, source_tokens: Sequence[float], encode: Sequence[bool]) -> Batch:
        """The batch with query i reading ``source_tokens[i]`` encoder outputs, encoded in this pass
        where ``encode[i]`` (the encoder's own batch: bidirectional, no logits)."""
        queries = [n for _, n, k in self.spans for _ in range(int(k))]
        if len(queries) != len(source_tokens):
            raise ConfigError(f"source_tokens has {len(source_tokens)} entries for {len(queries)} queries")
        if any(s < 1 for s in source_tokens):
            raise ConfigError(f"source_tokens must be >= 1 per query, got {list(source_tokens)}")
        encoded = [float(s) for s, e in zip(source_tokens, encode, strict=True) if e]
        source = None
        if encoded:
            spans = tuple((0.0, s, 1.0) for s in encoded)
            source = Batch(sum(encoded), sum(encoded), 0.0, len(encoded), 0.0, spans).bidirectional()
        return replace(
            self,
            source=source,
            source_tokens=float(sum(source_tokens)),
            cross_pairs=float(sum(n * s for n, s in zip(queries, source_tokens, strict=True))),
        )

    @classmethod
    def training(cls, batch_size: int, seq_len: int, causal: bool = True) -> Batch:
        """``batch_size`` sequences of ``seq_len`` tokens, logits for every token."""
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        pairs = seq_len * (seq_len + 1) / 2 if causal else float(seq_len * seq_len)
        tokens = float(batch_size * seq_len)
        spans = ((0.0, float(seq_len), float(batch_size)),)
        return cls(tokens, tokens, batch_size * pairs, batch_size, tokens, spans, causal)

    @classmethod
    def inference(
        cls,
        cached_tokens: Sequence[int],
        input_tokens: Sequence[int],
        source_tokens: Sequence[int] = (),
    ) -> Batch:
        """One query per entry: ``c_i`` tokens already in the KV cache, ``n_i`` new tokens.
        Only each query's last token needs logits (next-token prediction). ``source_tokens``: an
        encoder-decoder's encoder input per query, encoded in this pass where the query has nothing
        cached yet (its prefill)."""
        if len(cached_tokens) != len(input_tokens):
            raise ConfigError(
                f"cached_tokens has {len(cached_tokens)} entries but input_tokens has {len(input_tokens)}:"
                " give one (cached, input) pair per query"
            )
        if not input_tokens:
            raise ConfigError("input_tokens is empty: give at least one query")
        for c, n in zip(cached_tokens, input_tokens, strict=True):
            if c < 0 or n < 1:
                raise ConfigError(
                    f"query with cached_tokens={c}, input_tokens={n}: need cached >= 0, input >= 1"
                )
        pairs = sum(n * c + n * (n + 1) / 2 for c, n in zip(cached_tokens, input_tokens, strict=True))
        batch = cls(
            float(sum(input_tokens)),
            float(sum(cached_tokens) + sum(input_tokens)),
            pairs,
            len(input_tokens),
            float(len(input_tokens)),
            tuple((float(c), float(n), 1.0) for c, n in zip(cached_tokens, input_tokens, strict=True)),
        )
        if not source_tokens:
            return batch
        return batch.with_source(source_tokens, [c == 0 for c in cached_tokens])


def training_batch(spec: ModelSpec, batch_size: int, seq_len: int, causal: bool = True) -> Batch:
    """``batch_size`` training sequences of ``seq_len`` tokens; an encoder-decoder (T5) encodes
    ``seq_len`` source tokens and predicts ``seq_len`` target tokens per sequence (dse's one length
    for both: T5's span-corruption pre-training used 512 source and 114 target tokens)."""
    batch = Batch.training(batch_size, seq_len, causal)
    if not spec.encoder_layers:
        return batch
    return batch.with_source([seq_len] * batch_size, [True] * batch_size)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class _Bytes:
    """Bytes per element of weights, activations and the KV cache."""

    weight: float
    act: float
    kv: float


# --------------------------------------------------------------------------------------------
# Op constructors


def _linear(
    name: str,
    tokens: float,
    in_f: int,
    out_f: int,
    bias: bool,
    b: _Bytes,
    count: int,
    experts: int = 1,
    experts_read: float = 1.0,
    tp: str = TP_REPLICATED,
    **marks: Any,
) -> Op:
    """``tokens`` rows through ``experts`` weights of ``in_f × out_f``; ``experts_read`` of them touched;
    ``tp`` and ``marks`` (stage, expert) as :class:`Op` says."""
    params = experts * (in_f * out_f + (out_f if bias else 0))
    return Op(
        name,
        "matmul",
        2.0 * tokens * in_f * out_f + (tokens * out_f if bias else 0.0),
        weight_bytes=experts_read * (in_f * out_f + (out_f if bias else 0)) * b.weight,
        input_bytes=tokens * in_f * b.act,
        output_bytes=tokens * out_f * b.act,
        count=count,
        params=params,
        mnk=(tokens / max(experts_read, 1.0), float(out_f), float(in_f)),
        gemms=max(experts_read, 1.0),
        tp=tp,
        **marks,
    )


def _norm(
    name: str, spec: ModelSpec, rows: float, width: int, b: _Bytes, count: int, kind: str = "", **marks: Any
) -> Op:
    kind = kind or spec.norm
    per_row = 4 * width + 2 if kind == "rmsnorm" else 7 * width + 3
    params = width * (2 if kind == "layernorm" and spec.norm_bias else 1)
    return Op(
        name,
        "norm",
        rows * per_row,
        params * b.weight,
        rows * width * b.act,
        rows * width * b.act,
        count=count,
        params=params,
        **marks,
    )


def _elementwise(
    name: str,
    elements: float,
    flops_per_element: float,
    inputs: int,
    b: _Bytes,
    count: int,
    outputs: float = 1.0,
    **marks: Any,
) -> Op:
    return Op(
        name,
        "elementwise",
        elements * flops_per_element,
        0.0,
        inputs * elements * b.act,
        outputs * elements * b.act,
        count=count,
        **marks,
    )


def _activation_flops(spec: ModelSpec) -> float:
    try:
        return ACTIVATION_FLOPS[spec.activation]
    except KeyError:
        raise ConfigError(
            f"{spec.model_type}: unsupported activation '{spec.activation}'; "
            f"supported: {', '.join(ACTIVATION_FLOPS)}"
        ) from None


# --------------------------------------------------------------------------------------------
# Attention


def _sdpa(
    spec: ModelSpec,
    bt: Batch,
    b: _Bytes,
    count: int,
    qk_dim: int,
    v_dim: int,
    kv_heads: int,
    k_width: int,
    v_width: int,
    fused: bool,
    name: str = "attn.sdpa",
    position_bias: bool = True,
) -> list[Op]:
    """Scores QKᵀ, softmax and AV for ``num_heads`` query heads of width ``qk_dim`` / ``v_dim``.
    K and V are read once per KV head group: ``context_tokens · k_width`` elements. A positional
    bias on the scores (ALiBi, T5's relative buckets; ``position_bias``) adds one FLOP per score."""
    nh, t = spec.num_heads, bt.new_tokens
    q_bytes, o_bytes = t * nh * qk_dim * b.act, t * nh * v_dim * b.act
    k_bytes, v_bytes = bt.context_tokens * k_width * b.kv, bt.context_tokens * v_width * b.kv
    score_flops, av_flops = 2.0 * bt.pairs * nh * qk_dim, 2.0 * bt.pairs * nh * v_dim
    scores = bt.pairs * nh
    biased = position_bias and spec.positions in ("alibi", "relative")
    softmax_flops = SOFTMAX_FLOPS + (1.0 if biased else 0.0)
    softmax_flops += SOFTCAP_FLOPS if spec.attn_softcap else 0.0  # cap·tanh(x/cap) on every score
    prefix = name.rsplit(".", 1)[0]  # the unfused kernels: <prefix>.scores, .softmax, .av
    if fused:
        return [
            Op(
                name,
                "attention",
                score_flops + av_flops + softmax_flops * scores,
                0.0,
                q_bytes + k_bytes + v_bytes,
                o_bytes,
                count=count,
                flash=True,
                **_CORE,
            )
        ]
    return [
        Op(
            f"{prefix}.scores",
            "attention",
            score_flops,
            0.0,
            q_bytes + k_bytes,
            scores * b.act,
            count=count,
            **_CORE,
        ),
        _elementwise(f"{prefix}.softmax", scores, softmax_flops, 1, b, count, **_CORE),
        Op(
            f"{prefix}.av",
            "attention",
            av_flops,
            0.0,
            scores * b.act + v_bytes,
            o_bytes,
            count=count,
            **_CORE,
        ),
    ]


def _attention_ops(spec: ModelSpec, bt: Batch, b: _Bytes, fused: bool, mla_absorb: bool) -> list[Op]:
    if spec.mla is not None:
        return _mla_ops(spec, bt, b, fused, mla_absorb)
    h, nh, nkv, d, n = (
        spec.hidden_size,
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.attention_layers,
    )
    t = bt.new_tokens
    q_width = 2 * nh if spec.attn_output_gate else nh  # Qwen3-Next: a gate per query feature
    ops = [_linear("attn.qkv_proj", t, h, (q_width + 2 * nkv) * d, spec.qkv_bias, b, n, tp=TP_COLUMN)]
    if spec.qk_norm_full:  # one norm over all heads' features: nh·d and nkv·d weights
        ops += [
            _norm("attn.q_norm", spec, t, nh * d, b, n, "rmsnorm", tp=TP_SPLIT),
            _norm("attn.k_norm", spec, t, nkv * d, b, n, "rmsnorm", tp=TP_SPLIT),
        ]
    elif spec.qk_norm:
        q_norm = _norm("attn.q_norm", spec, t * nh, d, b, n, "rmsnorm", tp=TP_SPLIT)
        k_norm = _norm("attn.k_norm", spec, t * nkv, d, b, n, "rmsnorm", tp=TP_SPLIT)
        ops += [q_norm, replace(k_norm, params=d, weight_bytes=d * b.weight)]
    if spec.positions == "rotary":
        elements = t * (nh + nkv) * spec.rotary_dim
        ops.append(_elementwise("attn.rotary", elements, ROTARY_FLOPS, 1, b, n, tp=TP_SPLIT))
    if spec.attention_sinks:  # a learned logit per head joins each query's softmax: one more term
        sinks = Op("attn.sinks", "elementwise", 2.0 * t * nh, nh * b.weight, 0.0, 0.0, count=n, params=nh)
        ops.append(replace(sinks, tp=TP_SPLIT, core=True))
    local = spec.local_layers if fused else 0  # an eager kernel computes the masked scores too
    if n - local:
        ops += _sdpa(spec, bt, b, n - local, d, d, nkv, nkv * d, nkv * d, fused)
    if local:
        w = spec.sliding_window
        windowed = bt.windowed(w) if spec.local_attention == "sliding" else bt.chunked(w)
        ops += _sdpa(spec, windowed, b, local, d, d, nkv, nkv * d, nkv * d, fused, "attn.sdpa_local")
    if spec.attn_output_gate:  # sigmoid(gate) · attention output: sigmoid 4 + multiply 1
        ops.append(_elementwise("attn.output_gate", t * nh * d, 5.0, 2, b, n, tp=TP_SPLIT))
    ops.append(_linear("attn.o_proj", t, nh * d, h, spec.attn_out_bias, b, n, tp=TP_ROW))
    return ops


def _cross_ops(spec: ModelSpec, bt: Batch, b: _Bytes, fused: bool, n: int) -> list[Op]:
    """An encoder-decoder's cross-attention block in each of ``n`` decoder layers (T5's
    EncDecAttention): a pre-norm, queries from the decoder tokens, keys and values projected from the
    encoder's output (only where the encoder ran in this pass: a decode step reads them from the
    cache), attention over the ``source_tokens`` without a mask or position bias, the output
    projection and the residual add."""
    h, nh, nkv, d, t = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, bt.new_tokens
    # keys and values of the encoder's output, cached when it ran: a decode step only reads them
    kv = [_linear("cross.kv_proj", bt.source_tokens, h, 2 * nkv * d, spec.qkv_bias, b, n, tp=TP_COLUMN)]
    cross = Batch(t, bt.source_tokens, bt.cross_pairs, bt.sequences, 0.0, causal=False)
    keys = bt.source_tokens / bt.sequences
    sdpa = _sdpa(spec, cross, b, n, d, d, nkv, nkv * d, nkv * d, fused, "cross.sdpa", position_bias=False)
    return [
        _norm("cross.norm", spec, t, h, b, n),
        _linear("cross.q_proj", t, h, nh * d, spec.qkv_bias, b, n, tp=TP_COLUMN),
        *(kv if bt.source is not None else []),
        *(replace(op, queries_keys=(t / bt.sequences, keys)) for op in sdpa),
        _linear("cross.o_proj", t, nh * d, h, spec.attn_out_bias, b, n, tp=TP_ROW),
        _elementwise("cross.residual_add", t * h, 1.0, 2, b, n),
    ]


def _mla_ops(spec: ModelSpec, bt: Batch, b: _Bytes, fused: bool, absorb: bool) -> list[Op]:
    """Multi-head latent attention (DeepSeek-V2 paper, Sec. 2.1; DeepSeek-V3 config names).

    Naive form (training, ``absorb=False``): decompress keys/values of every context token with
    ``kv_b_proj`` and attend per head with width nope+rope. Absorbed form (inference): fold W_UK into
    the query and W_UV after attention, so attention runs on the cached latent (r_kv + rope per token,
    shared by all heads) and the cache is never decompressed.
    """
    m, h, nh, n, t = spec.mla, spec.hidden_size, spec.num_heads, spec.attention_layers, bt.new_tokens
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    if m.q_lora_rank:
        ops = [
            _linear("attn.q_a_proj", t, h, m.q_lora_rank, spec.qkv_bias, b, n),
            _norm("attn.q_a_norm", spec, t, m.q_lora_rank, b, n),
            _linear("attn.q_b_proj", t, m.q_lora_rank, nh * qk, False, b, n, tp=TP_COLUMN),
        ]
    else:
        ops = [_linear("attn.q_proj", t, h, nh * qk, False, b, n, tp=TP_COLUMN)]
    ops += [
        _linear("attn.kv_a_proj", t, h, m.kv_lora_rank + m.qk_rope_head_dim, spec.qkv_bias, b, n),
        _norm("attn.kv_a_norm", spec, t, m.kv_lora_rank, b, n),
        _elementwise("attn.rotary", t * (nh + 1) * m.qk_rope_head_dim, ROTARY_FLOPS, 1, b, n, tp=TP_SPLIT),
    ]
    if absorb:
        latent = m.kv_lora_rank + m.qk_rope_head_dim
        ops.append(_linear("attn.q_absorb_uk", t, m.qk_nope_head_dim * nh, m.kv_lora_rank * nh, False, b, n))
        ops[-1] = replace(
            ops[-1],
            flops=2.0 * t * nh * m.qk_nope_head_dim * m.kv_lora_rank,
            params=nh * m.qk_nope_head_dim * m.kv_lora_rank,
            weight_bytes=nh * m.qk_nope_head_dim * m.kv_lora_rank * b.weight,
        )
        ops += _sdpa(spec, bt, b, n, latent, m.kv_lora_rank, 1, latent, 0, fused)
        up = _linear("attn.v_absorb_uv", t, m.kv_lora_rank * nh, m.v_head_dim * nh, False, b, n)
        ops.append(
            replace(
                up,
                flops=2.0 * t * nh * m.kv_lora_rank * m.v_head_dim,
                params=nh * m.kv_lora_rank * m.v_head_dim,
                weight_bytes=nh * m.kv_lora_rank * m.v_head_dim * b.weight,
            )
        )
    else:
        ops.append(
            _linear(
                "attn.kv_b_proj",
                bt.context_tokens,
                m.kv_lora_rank,
                nh * (m.qk_nope_head_dim + m.v_head_dim),
                False,
                b,
                n,
                tp=TP_COLUMN,
            )
        )
        ops += _sdpa(
            spec, bt, replace(b, kv=b.act), n, qk, m.v_head_dim, nh, nh * qk, nh * m.v_head_dim, fused
        )
    ops.append(_linear("attn.o_proj", t, nh * m.v_head_dim, h, spec.attn_out_bias, b, n, tp=TP_ROW))
    return ops


# --------------------------------------------------------------------------------------------
# MLP and MoE


def _mlp_ops(
    spec: ModelSpec,
    prefix: str,
    tokens: float,
    width: int,
    b: _Bytes,
    count: int,
    experts: int = 1,
    experts_read: float = 1.0,
    expert: bool = False,
) -> list[Op]:
    """Gated (gate/up → act·mul → down) or plain (up → act → down) MLP of ``width``; ``expert``: the
    routed experts' MLP (sharded over ep; biased where the MLP is and ``MoESpec.expert_bias``)."""
    h, act = spec.hidden_size, _activation_flops(spec)
    many = {"experts": experts, "experts_read": experts_read, "expert": expert}
    bias = spec.mlp_bias and (not expert or spec.moe.expert_bias)
    if spec.gated_mlp:
        return [
            _linear(f"{prefix}.gate_up_proj", tokens, h, 2 * width, bias, b, count, tp=TP_COLUMN, **many),
            _elementwise(
                f"{prefix}.act_mul", tokens * width, act + 1.0, 2, b, count, tp=TP_SPLIT, expert=expert
            ),
            _linear(f"{prefix}.down_proj", tokens, width, h, bias, b, count, tp=TP_ROW, **many),
        ]
    return [
        _linear(f"{prefix}.up_proj", tokens, h, width, bias, b, count, tp=TP_COLUMN, **many),
        _elementwise(f"{prefix}.act", tokens * width, act, 1, b, count, tp=TP_SPLIT, expert=expert),
        _linear(f"{prefix}.down_proj", tokens, width, h, bias, b, count, tp=TP_ROW, **many),
    ]


def moe_dispatch_bytes(spec: ModelSpec, tokens: Any, act_bytes: float) -> Any:
    """Bytes one MoE dispatch (or combine) all-to-all moves for ``tokens`` tokens: each token's
    top_k routed copies of its hidden state in the activation type (0 for a dense model)."""
    top_k = spec.moe.top_k if spec.moe is not None else 0
    return tokens * top_k * spec.hidden_size * act_bytes


def experts_touched(num_experts: int, top_k: int, tokens: float) -> float:
    """Expected distinct experts hit by ``tokens`` tokens routed uniformly to ``top_k`` of ``num_experts``:
    E·(1 − (1 − k/E)^T)."""
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def _moe_ops(spec: ModelSpec, bt: Batch, b: _Bytes, count: int, all_experts: bool) -> list[Op]:
    moe, h, t = spec.moe, spec.hidden_size, bt.new_tokens
    read = float(moe.num_experts) if all_experts else experts_touched(moe.num_experts, moe.top_k, t)
    routed = t * moe.top_k
    ops = [
        _linear("moe.router", t, h, moe.num_experts, moe.router_bias, b, count),
        _elementwise("moe.router_softmax_topk", t * moe.num_experts, SOFTMAX_FLOPS, 1, b, count),
        *_mlp_ops(
            spec, "moe.experts", routed, moe.expert_intermediate, b, count, moe.num_experts, read, True
        ),
        _elementwise("moe.combine", routed * h, 2.0, 1, b, count, outputs=1.0 / moe.top_k),
    ]
    if moe.shared_intermediate:
        ops += _mlp_ops(spec, "moe.shared", t, moe.shared_intermediate, b, count)
    if moe.shared_gate:
        ops.append(_linear("moe.shared_gate", t, h, 1, False, b, count))
    return ops


# --------------------------------------------------------------------------------------------
# State-space mixers (Mamba, Mamba-2, Gated DeltaNet)

# FLOPs of the scans' vector work (each multiply, add, exp counted once):
SCAN_FLOPS_PER_STATE = 7.0  # Mamba per (token, channel, state): exp(Δ·A) 2, Δ·B·x 2, Ā·h + B̄x 2, C·h 1
SCAN_FLOPS_PER_CHANNEL = 13.0  # softplus(Δ + bias) 5, Δ·x 1, y + D·x 2, y·silu(z) 5
STEP_FLOPS_PER_STATE = 6.0  # one Mamba-2 step per state element: h·exp(Δ·A) 1, + Δ·x·B 2, y += C·h 2, Δ·x 1
DELTA_STEP_FLOPS_PER_STATE = 7.0  # gated delta rule step: g·S 1, Sᵀk 2, S += k⊗β(v − Sᵀk) 2, Sᵀq 2


def _conv_op(m: SSMSpec, bt: Batch, b: _Bytes, count: int) -> Op:
    """Depthwise causal convolution of ``conv_kernel`` taps over the conv channels, SiLU fused
    (causal_conv1d): 2·K (+1 bias) + 4 FLOPs per element. A step reads and writes each sequence's
    conv state (K inputs per channel)."""
    c, k, t = m.conv_channels, m.conv_kernel, bt.new_tokens
    params = c * k + (c if m.conv_bias else 0)
    state = bt.sequences * c * k * b.act if t <= bt.sequences else 0.0
    flops = t * c * (2.0 * k + (1.0 if m.conv_bias else 0.0) + ACTIVATION_FLOPS["silu"])
    return Op(
        "ssm.conv1d",
        "elementwise",
        flops,
        params * b.weight,
        t * c * b.act + state,
        t * c * b.act + state,
        count=count,
        params=params,
        tp=TP_SPLIT,
    )


def _scan_op(m: SSMSpec, bt: Batch, b: _Bytes, count: int, inputs: float, params: int) -> Op:
    """The scan itself, fused with its gating: FLOPs, ``inputs`` elements per token read (x, Δ, B, C,
    z as the kind has them), d_inner written per token, and every sequence's recurrent state
    (heads·head_dim·state) read (if it has context) and written.

    Sequential form (Mamba's selective scan; any kind's step of one token): vector FLOPs per state
    element and per channel (the constants above). Chunked form on tensor cores, blocks of
    Q = min(chunk, tokens per sequence), per token: Mamba-2's SSD (Dao & Gu 2024, Sec. 6) C·Bᵀ per
    group 2·Q·G·N, its product with X per head 2·Q·H·P, chunk states and their outputs 4·H·P·N;
    Gated DeltaNet's WY form (Yang et al. 2024, Sec. 3.3; q and k repeated to the H value heads)
    H·(5·Q·N + 3·Q·P + 6·N·P): the two Q×Q products with the keys, the triangular solves, the
    corrections, the output and the state update."""
    t, di, n, h = bt.new_tokens, m.inner, m.state, m.heads
    step = t <= bt.sequences
    if m.kind == "mamba" or step:
        per_state = {"mamba": SCAN_FLOPS_PER_STATE, "mamba2": STEP_FLOPS_PER_STATE}.get(
            m.kind, DELTA_STEP_FLOPS_PER_STATE
        )
        flops, kind = t * di * (per_state * n + SCAN_FLOPS_PER_CHANNEL), "elementwise"
    else:
        q, p = min(float(m.chunk), t / bt.sequences), m.head_dim
        if m.kind == "mamba2":
            per_token = 2.0 * q * (m.groups * n + h * p) + 4.0 * h * p * n
        else:
            per_token = h * (5.0 * q * n + 3.0 * q * p + 6.0 * n * p)
        flops, kind = t * (per_token + SCAN_FLOPS_PER_CHANNEL * di), "attention"
    cached = sum(k for c, _, k in bt.spans if c > 0) if bt.spans else (bt.sequences if step else 0.0)
    state = di * n * b.act
    return Op(
        "ssm.scan",
        kind,
        flops,
        params * b.weight,
        t * inputs * b.act + cached * state,
        t * di * b.act + bt.sequences * state,
        count=count,
        params=params,
        tp=TP_SPLIT,
    )


def _ssm_ops(spec: ModelSpec, bt: Batch, b: _Bytes, count: int) -> list[Op]:
    """One state-space mixer per layer: in_proj (column-parallel over heads), the convolution, the
    scan, the gated RMSNorm (Mamba-2, DeltaNet) and out_proj (row-parallel).

    Mamba (``MambaMixer``): in_proj h → 2·d_inner (x, z); x_proj d_inner → R + 2N (Δ, B, C);
    dt_proj R → d_inner with bias; A (d_inner × N) and D (d_inner). Mamba-2 (``Mamba2Mixer``):
    in_proj h → 2·d_inner + 2·G·N + H (z, x, B, C, Δ); Δ bias, A and D per head. Gated DeltaNet
    (``Qwen3NextGatedDeltaNet``): in_proj_qkvz h → 2·G·N + 2·d_inner (q, k, v, z), in_proj_ba
    h → 2·H (β, gate); Δ bias and A per head; the norm is per head (head_dim weights)."""
    m, h, t = spec.ssm, spec.hidden_size, bt.new_tokens
    di, gn, heads = m.inner, m.groups * m.state, m.heads
    if m.kind == "mamba":
        ops = [
            _linear("ssm.in_proj", t, h, 2 * di, m.in_bias, b, count, tp=TP_COLUMN),
            _conv_op(m, bt, b, count),
            _linear("ssm.x_proj", t, di, m.dt_rank + 2 * m.state, False, b, count, tp=TP_ROW),
            *(
                [_norm("ssm.bcdt_norms", spec, t, m.dt_rank + 2 * m.state, b, count, "rmsnorm")]
                * m.bcdt_norms
            ),
            _linear("ssm.dt_proj", t, m.dt_rank, di, True, b, count, tp=TP_COLUMN),
            _scan_op(m, bt, b, count, 3 * di + 2 * m.state, di * m.state + di),
        ]
    elif m.kind == "mamba2":
        ops = [
            _linear("ssm.in_proj", t, h, 2 * di + 2 * gn + heads, m.in_bias, b, count, tp=TP_COLUMN),
            _conv_op(m, bt, b, count),
            _scan_op(m, bt, b, count, di + 2 * gn + heads, 3 * heads),
        ]
    else:
        ops = [
            _linear("ssm.in_proj_qkvz", t, h, 2 * gn + 2 * di, m.in_bias, b, count, tp=TP_COLUMN),
            _linear("ssm.in_proj_ba", t, h, 2 * heads, m.in_bias, b, count, tp=TP_COLUMN),
            _conv_op(m, bt, b, count),
            _scan_op(m, bt, b, count, di + 2 * gn + 2 * heads, 2 * heads),
        ]
    if m.gated_norm:  # RMSNorm(y · silu(z)): the norm and the gate's 5 FLOPs per element
        width = m.head_dim if m.kind == "gated_deltanet" else di
        norm = _norm("ssm.gated_norm", spec, t * di / width, width, b, count, "rmsnorm", tp=TP_SPLIT)
        gate = ACTIVATION_FLOPS["silu"] + 1.0
        ops.append(replace(norm, flops=norm.flops + gate * t * di, input_bytes=2.0 * norm.input_bytes))
    return [*ops, _linear("ssm.out_proj", t, di, h, m.out_bias, b, count, tp=TP_ROW)]


# --------------------------------------------------------------------------------------------
# The whole model


def _embedding_ops(spec: ModelSpec, bt: Batch, b: _Bytes) -> list[Op]:
    h, t = spec.hidden_size, bt.new_tokens
    ops = [
        Op(
            "embed.tokens",
            "embedding",
            0.0,
            t * h * b.weight,
            t * 4.0,
            t * h * b.act,
            params=spec.vocab_size * h,
            tp=TP_VOCAB,
            stage=STAGE_FIRST,
        )
    ]
    if spec.positions == "learned":
        ops.append(
            Op(
                "embed.positions",
                "embedding",
                t * h,
                t * h * b.weight,
                t * h * b.act,
                t * h * b.act,
                params=spec.max_positions * h,
                stage=STAGE_FIRST,
            )
        )
    if spec.token_types:  # BERT's segment embedding, added to every token
        embed = Op("embed.token_types", "embedding", t * h, t * h * b.weight, t * h * b.act, t * h * b.act)
        ops.append(replace(embed, params=spec.token_types * h, stage=STAGE_FIRST))
    if spec.embedding_norm:
        ops.append(_norm("embed.norm", spec, t, h, b, 1, stage=STAGE_FIRST))
    return ops


def _block_ops(
    spec: ModelSpec, bt: Batch, b: _Bytes, fused: bool, mla_absorb: bool, all_experts: bool
) -> list[Op]:
    """Every layer's ops, each with the count of layers of its kind: a pre-norm and a residual add
    per block (mixer, MLP), the mixers (attention, state-space scan, or both on one normed input,
    Falcon-H1), then the MLPs (dense or MoE)."""
    h, t, n = spec.hidden_size, bt.new_tokens, spec.num_layers
    attention, ssm_only = spec.attention_layers, spec.mixer_layers(MIXER_SSM)
    mlps = spec.mlp_layers(MLP_DENSE, MLP_MOE)
    ops = [_norm("attn_norm", spec, t, h, b, attention)] if attention else []
    if attention:
        ops += _attention_ops(spec, bt, b, fused, mla_absorb)
    if ssm_only:
        ops.append(_norm("ssm_norm", spec, t, h, b, ssm_only))
    if spec.ssm_layers:
        ops += _ssm_ops(spec, bt, b, spec.ssm_layers)
    if spec.cross_layers:
        ops += _cross_ops(spec, bt, b, fused, spec.cross_layers)
    if spec.mixer_layers(MIXER_PARALLEL):  # attention and scan outputs are summed before the residual
        ops.append(_elementwise("ssm.parallel_add", t * h, 1.0, 2, b, spec.mixer_layers(MIXER_PARALLEL)))
    if spec.parallel_block:
        if spec.norms_per_layer == 2:
            ops.append(_norm("mlp_norm", spec, t, h, b, n))
        # attention and MLP read the same residual stream; their outputs are added to it at once
        ops_residual = [_elementwise("residual_add", t * h, 2.0, 3, b, n)]
    else:
        if spec.norms_per_layer == 4:  # Gemma-2: the attention output is normed before the residual add
            ops.append(_norm("attn.post_norm", spec, t, h, b, n))
        if attention:
            ops.append(_elementwise("attn.residual_add", t * h, 1.0, 2, b, attention))
        if ssm_only:
            ops.append(_elementwise("ssm.residual_add", t * h, 1.0, 2, b, ssm_only))
        ops += [_norm("mlp_norm", spec, t, h, b, mlps)] if mlps else []
        ops_residual = [_elementwise("mlp.residual_add", t * h, 1.0, 2, b, mlps)] if mlps else []
        if spec.norms_per_layer == 4:  # and the MLP output
            ops_residual.insert(0, _norm("mlp.post_norm", spec, t, h, b, n))
    if spec.mlp_layers(MLP_DENSE):
        ops += _mlp_ops(spec, "mlp", t, spec.intermediate_size, b, spec.mlp_layers(MLP_DENSE))
    if spec.mlp_layers(MLP_MOE):
        ops += _moe_ops(spec, bt, b, spec.mlp_layers(MLP_MOE), all_experts)
    return ops + ops_residual


def _head_ops(spec: ModelSpec, bt: Batch, b: _Bytes, with_loss: bool) -> list[Op]:
    h, v, rows = spec.hidden_size, spec.vocab_size, bt.logit_tokens
    head = _linear("lm_head", rows, h, v, spec.lm_head_bias, b, 1, tp=TP_COLUMN, stage=STAGE_LAST)
    if spec.tie_embeddings:  # the weight is the token embedding, counted there; a bias is its own
        head = replace(head, params=v if spec.lm_head_bias else 0)
    elif spec.head_transform:  # BertLMPredictionHead's own bias, tied to the decoder's only with the
        head = replace(head, params=head.params + v)  # embeddings: untied, a second (unused) one
    last = {"stage": STAGE_LAST}
    ops = [_norm("final_norm", spec, bt.new_tokens, h, b, 1, **last)] if spec.final_norm else []
    if spec.head_transform:  # BERT's prediction head: dense h → h, the activation, a LayerNorm
        ops += [
            _linear("lm_head.transform", rows, h, h, True, b, 1, **last),
            _elementwise("lm_head.transform_act", rows * h, _activation_flops(spec), 1, b, 1, **last),
            _norm("lm_head.transform_norm", spec, rows, h, b, 1, **last),
        ]
    ops.append(head)
    if spec.final_softcap:  # cap·tanh(logits/cap): one pass over the vocabulary-parallel logits
        ops.append(
            _elementwise("lm_head.softcap", rows * v, SOFTCAP_FLOPS, 1, b, 1, tp=TP_SPLIT, stage=STAGE_LAST)
        )
    if with_loss:
        loss = _elementwise(
            "loss.cross_entropy", rows * v, SOFTMAX_FLOPS, 1, b, 1, 1.0 / v, tp=TP_SPLIT, stage=STAGE_LAST
        )
        ops.append(loss)
    return ops


def _bytes(precision: str, kv_precision: str | None = None) -> _Bytes:
    """Weights in ``precision`` with their block scales, activations in its 16-bit type (fp8/fp4 GEMMs
    quantize their inputs inside fused kernels), the KV cache in ``hardware.kv_cache_precision``."""
    return _Bytes(
        weight=weight_bytes_per_element(precision),
        act=bytes_per_element(activation_precision(precision)),
        kv=bytes_per_element(kv_cache_precision(precision, kv_precision)),
    )


def _with_dropout(spec: ModelSpec, ops: list[Op], b: _Bytes) -> list[Op]:
    """Training dropout, where the config sets it (Megatron-LM's kernels): a separate kernel on the
    attention probabilities (reads them, writes them and a 1-byte mask; 2 FLOPs per element), and
    on block outputs fused into the residual add (bias-dropout-add: +2 FLOPs and a mask per element).
    Fused (flash) attention applies its dropout inside the kernel."""
    out: list[Op] = []
    for op in ops:
        if spec.hidden_dropout > 0 and op.name.endswith("residual_add"):
            elements = op.output_bytes / b.act
            op = replace(op, flops=op.flops + 2.0 * elements, output_bytes=op.output_bytes + elements)
        out.append(op)
        if spec.attention_dropout > 0 and op.core and op.name.endswith(".softmax"):
            elements = op.output_bytes / b.act
            name = op.name.replace(".softmax", ".dropout")
            dropout = _elementwise(name, elements, 2.0, 1, b, op.count, 1.0 + 1.0 / b.act, **_CORE)
            out.append(dropout)
    return out


def forward_ops(
    spec: ModelSpec,
    batch: Batch,
    precision: str = "bf16",
    *,
    kv_precision: str | None = None,
    fused_attention: bool = False,
    mla_absorb: bool = False,
    all_experts: bool = True,
    with_loss: bool = False,
    dropout: bool = False,
) -> list[Op]:
    """Ops of one forward pass, in execution order (per-layer ops carry ``count`` = layers).
    ``dropout`` adds the training-time dropout kernels the config asks for."""
    b = _bytes(precision, kv_precision)
    batch = batch if spec.causal else batch.bidirectional()
    if spec.encoder_layers and not batch.source_tokens:
        raise ConfigError(
            f"{spec.model_type} is an encoder-decoder: give each query's source (encoder input) length"
        )
    ops = [
        *_embedding_ops(spec, batch, b),
        *_encoder_ops(spec, batch, b, fused_attention),
        *_block_ops(
            spec.stack(MIXER_CROSS) if spec.encoder_layers else spec,
            batch,
            b,
            fused_attention,
            mla_absorb,
            all_experts,
        ),
        *_head_ops(spec, batch, b, with_loss),
    ]
    return _with_dropout(spec, ops, b) if dropout else ops


def _relative_bias_op(spec: ModelSpec, bt: Batch, b: _Bytes, name: str) -> Op:
    """T5's position bias of one stack: the bucket of each (query, key) distance looked up in a
    buckets × heads table, computed once per pass and added to every layer's scores (the add is
    in :func:`_sdpa`). Its parameters are the table."""
    heads, pairs = spec.num_heads, bt.pairs
    table = spec.relative_buckets * heads
    bias = Op(name, "embedding", 0.0, table * b.weight, pairs * 4.0, pairs * heads * b.act, params=table)
    return replace(bias, tp=TP_SPLIT, stage=STAGE_FIRST)


def _encoder_ops(spec: ModelSpec, bt: Batch, b: _Bytes, fused: bool) -> list[Op]:
    """An encoder-decoder's encoder over the source tokens where it runs in this pass (the same
    embedding, read for the source; the encoder's layers and final norm; its position bias), and the
    decoder's position bias. Encoder op names start with ``encoder.``; its attention cores carry
    their own (queries, keys)."""
    if not spec.encoder_layers:
        return []
    ops = [_relative_bias_op(spec, bt, b, "decoder.position_bias")] if spec.relative_buckets else []
    src = bt.source
    if src is None:  # a decode step: the encoder's output is in the cross-attention cache
        return ops
    side = src.new_tokens / src.sequences
    encoder = [replace(op, params=0) for op in _embedding_ops(spec, src, b)]  # the shared table
    if spec.relative_buckets:
        encoder.append(_relative_bias_op(spec, src, b, "position_bias"))
    encoder += _block_ops(spec.stack(MIXER_ENCODER), src, b, fused, False, True)
    encoder.append(_norm("final_norm", spec, src.new_tokens, spec.hidden_size, b, 1))
    encoder = [replace(op, queries_keys=(side, side)) if op.core else op for op in encoder]
    return [replace(op, name=f"encoder.{op.name}") for op in encoder] + ops


FLASH_BACKWARD_FLOPS = 2.5  # flash attention backward FLOPs / forward FLOPs (Dao 2023, Sec. 3.1)


def _backward(op: Op) -> list[Op]:
    """Backward ops of one forward op.

    Matmul Y = X·W + b: input gradient dX = dY·Wᵀ (2mnk FLOPs; reads W and dY, writes dX) and
    weight gradient dW = Xᵀ·dY, db = Σ dY (2mnk + mn FLOPs; reads X and dY, writes dW). Embedding:
    scatter-add of dY into the gathered rows. Attention matmuls have no weights: both operand
    gradients, 2× forward FLOPs; a fused flash kernel (``attn.sdpa``) also recomputes the scores:
    ``FLASH_BACKWARD_FLOPS`` = 2.5× (Dao 2023, Sec. 3.1: five GEMMs against the forward's two).
    Elementwise ops and norms: ≈2× forward FLOPs, reading the saved
    input and dY and writing dX (a norm's gain also gets its gradient).
    """
    if op.kind == "matmul":
        dgrad = replace(
            op,
            name=f"{op.name}.dgrad",
            phase="bwd_input",
            flops=op.gemm_flops,
            params=0,
            input_bytes=op.output_bytes,
            output_bytes=op.input_bytes,
            mnk=(op.mnk[0], op.mnk[2], op.mnk[1]),  # dX: tokens × in-features, reduced over out-features
        )
        wgrad = replace(
            op,
            name=f"{op.name}.wgrad",
            phase="bwd_weight",
            params=0,
            weight_bytes=0.0,
            mnk=(op.mnk[2], op.mnk[1], op.mnk[0]),  # dW: in × out features, reduced over tokens
            input_bytes=op.input_bytes + op.output_bytes,
            output_bytes=op.weight_bytes,
        )
        return [dgrad, wgrad]
    if op.kind == "embedding":
        rows = op.output_bytes  # T·h activations: dY rows read, the same number of gradient rows written
        return [
            replace(
                op,
                name=f"{op.name}.wgrad",
                phase="bwd_weight",
                params=0,
                weight_bytes=0.0,
                input_bytes=rows,
                output_bytes=op.weight_bytes,
            )
        ]
    return [
        replace(
            op,
            name=f"{op.name}.bwd",
            phase="bwd_input",
            flops=(FLASH_BACKWARD_FLOPS if op.flash else 2.0) * op.flops,
            params=0,
            input_bytes=op.input_bytes + op.output_bytes,
            output_bytes=op.input_bytes + op.weight_bytes,
        )
    ]


def training_ops(
    spec: ModelSpec,
    batch_size: int,
    seq_len: int,
    precision: str = "bf16",
    *,
    causal: bool = True,
    fused_attention: bool = True,
) -> list[Op]:
    """Forward (with the loss) then backward ops of one training micro-step of ``batch_size`` sequences."""
    fwd = forward_ops(
        spec,
        training_batch(spec, batch_size, seq_len, causal),
        precision,
        fused_attention=fused_attention,
        with_loss=True,
        dropout=True,
    )
    return fwd + [bop for op in reversed(fwd) for bop in _backward(op)]


def inference_ops(
    spec: ModelSpec,
    cached_tokens: Sequence[int],
    input_tokens: Sequence[int],
    precision: str = "fp16",
    *,
    kv_precision: str | None = None,
    fused_attention: bool = False,
    mla_absorb: bool = True,
    source_tokens: Sequence[int] = (),
) -> list[Op]:
    """Ops of one inference step: prefill (cached 0, input = prompt) or decode (input 1) or a mix.
    ``source_tokens``: an encoder-decoder's encoder input per query (:meth:`Batch.inference`)."""
    return forward_ops(
        spec,
        Batch.inference(cached_tokens, input_tokens, source_tokens),
        precision,
        kv_precision=kv_precision,
        fused_attention=fused_attention,
        mla_absorb=mla_absorb,
        all_experts=False,
    )


def parameter_count(spec: ModelSpec) -> int:
    """Parameters of the model: the sum of the parameters every op owns (tied weights once)."""
    return int(sum(op.params * op.count for op in forward_ops(spec, training_batch(spec, 1, 1))))


def kv_cache_bytes(
    spec: ModelSpec,
    tokens: float | Sequence[float],
    kv_precision: str = "fp16",
    sources: Sequence[float] = (),
) -> float:
    """KV cache held for one sequence of ``tokens`` tokens (or for each of several; an
    encoder-decoder's decoder also caches each sequence's ``sources`` encoder outputs): tokens summed
    over layers (:meth:`ModelSpec.cached_layer_tokens`: a sliding-window layer keeps its window) ·
    elements per token · bytes per element, plus each sequence's state-space state
    (:attr:`ModelSpec.state_elements`, whatever its length, in the 16-bit activation type).
    Llama-2-7B fp16: 32 · 2·32·128 · 2 B = 0.5 MiB per token, 512 GiB for 2^20 tokens."""
    sequences = [tokens] if isinstance(tokens, int | float) else list(tokens)
    source = list(sources) or [0.0] * len(sequences)
    layer_tokens = sum(float(spec.cached_layer_tokens(t, s)) for t, s in zip(sequences, source, strict=True))
    kv = layer_tokens * spec.kv_cache_elements_per_token * bytes_per_element(kv_precision)
    return kv + state_bytes(spec, len(sequences), kv_precision)


def state_bytes(spec: ModelSpec, sequences: int, precision: str = "fp16") -> float:
    """Recurrent state of ``sequences`` sequences over the state-space layers (conv and scan state,
    :attr:`ModelSpec.state_elements`) in ``precision``'s 16-bit activation type; 0 for a transformer.
    Mamba-2.8B: 64 layers · (5120·4 + 5120·16) · 2 B = 12.5 MiB per sequence, whatever its length."""
    return sequences * spec.state_elements * bytes_per_element(activation_precision(precision))
