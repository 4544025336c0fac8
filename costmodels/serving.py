"""The time of one serving-engine step from its batch composition, and tables of it for the request
simulator (``costmodels/requests.py``).

A step of an engine with iteration-level scheduling (vLLM, SGLang, TensorRT-LLM's in-flight batching)
is one forward pass over a mix: prompt chunks being prefilled (chunk i: ``c_i`` tokens already cached,
``n_i`` new) and ``D`` sequences decoding one token each at contexts ``k_j``. In dse's op model

    step(mix) = max(Σ_ops per-token(T) + Σ_ops per-logit(L) + decode_core(D, K̄) + Σ_i chunk_core(c_i, n_i),
                    host) + tp_comm(T) + (pp − 1)·stage_send(T) + ep_all_to_alls(T)

with ``T = Σ n_i + D`` new tokens (every projection, MLP, MoE, norm and the embedding see only these),
``L`` the rows that get logits (the decode sequences and each chunk that ends its prompt: the LM
head), ``K̄ = Σ k_j / D`` (the attention core of D single-token queries is one kernel whose FLOPs and
bytes are linear in Σ k_j), each chunk's attention core on its own (a state-space layer's
convolution and scan, which move a fixed state per sequence, are priced with the core), the host's
launch floor (``Engine``), one all-reduce of ``T`` tokens per block under tensor parallelism
(``ModelSpec.tp_reductions``) and, through ``pp`` pipeline stages, one send of the ``T`` tokens'
hidden states from each stage to the next (``inference.stage_transfer_s``): a step's latency is its
pass through every stage, each stage running 1/pp of the kernels. With the experts spread over
``ep`` devices (expert parallelism with data-parallel attention, as vLLM's and SGLang's wide-EP
serving runs a MoE: each device an engine with its own requests and KV cache, every device holding
the dense weights and 1/ep of the experts), a step's dense ops are its own tokens' and its expert
ops those of the ``ep`` engines' tokens routed to its experts: ``ep·T`` tokens touch the experts,
and the device computes ``T·top_k`` expert rows on average (``sharding.shard``'s ``ep``), plus each
MoE layer's dispatch and combine all-to-alls; the engines run their MoE layers together, so this is
exact while their steps are alike (round robin over equal requests). Each op's time is
``inference.op_seconds`` (``compute.kernel_time_s``), the model of a static batch:
:func:`step_time_s` is that model evaluated directly. An engine that replays CUDA graphs does so for
decode-only steps; a step with prompt tokens launches its kernels (``inference.prompt_launch``).

:func:`step_table` tabulates it once per deployment (one ``jit(vmap)`` per part) so that a simulation
of 10⁴ requests never calls JAX: per-token and tensor-parallel time for every ``T`` up to
``EXACT_TOKENS`` (then a geometric grid of ratio ``TOKEN_RATIO``), per-logit time for every ``L``,
the decode core for every ``D`` on a geometric grid of contexts (ratio ``CONTEXT_RATIO``), and the
chunk core on a geometric (new, cached) grid; between grid points the time is interpolated linearly.
``tests/test_serving.py`` states the table's largest error against :func:`step_time_s`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costmodels.errors import ConfigError
from costmodels.fabric import collective_s, p2p_s
from costmodels.hardware import Hardware, activation_precision, bytes_per_element, kv_cache_precision
from costmodels.inference import InferenceJob, launched, op_seconds, prompt_launch, stage_transfer_s
from costmodels.memory import inference_memory, kv_elements_per_token
from costmodels.parallel import Plan
from costmodels.sharding import OpTable, table_from_ops
from costmodels.workload import Batch, forward_ops, moe_dispatch_bytes

EXACT_TOKENS = 8192  # per-token time tabulated at every token count up to this
TOKEN_RATIO = 1.02  # then on a geometric grid of this ratio
CONTEXT_RATIO = 1.05  # decode contexts and chunk contexts: geometric grid
CHUNK_RATIO = 1.1  # chunk lengths: geometric grid


def _query_batch(cached: float, new: float) -> Batch:
    """One query of ``new`` tokens after ``cached`` ones, logits for its last token."""
    pairs = new * cached + new * (new + 1) / 2.0
    return Batch(float(new), cached + new, pairs, 1, 1.0, ((float(cached), float(new), 1.0),))


def _table(job: InferenceJob, cached: float, new: float) -> OpTable:
    ops = forward_ops(
        job.spec,
        _query_batch(cached, new),
        job.precision,
        kv_precision=job.kv_precision,
        fused_attention=job.fused_attention,
        mla_absorb=job.mla_absorb,
        all_experts=True,
    )
    return table_from_ops(ops, job.spec, float(new), cached + new)


def _take(table: OpTable, keep: np.ndarray) -> OpTable:
    """The ops of ``table`` where ``keep``."""
    arrays = {f.name: getattr(table, f.name)[keep] for f in fields(table) if f.name != "names"}
    return OpTable(**arrays, names=tuple(n for n, k in zip(table.names, keep, strict=True) if k))


def _stack(tables: Sequence[OpTable]) -> dict[str, np.ndarray]:
    """Tables of the same ops as arrays of shape (tables, ops)."""
    return {
        f.name: np.stack([getattr(t, f.name) for t in tables]) for f in fields(OpTable) if f.name != "names"
    }


def _check_servable(job: InferenceJob, tp: int, pp: int = 1, ep: int = 1) -> None:
    if job.spec.encoder_layers or not job.spec.causal:
        raise ConfigError(
            f"{job.spec.model_type}: the request simulator serves decoder-only models; price an encoder "
            "or encoder-decoder with python -m dse.calc mode=inference"
        )
    for name, value in (("tp", tp), ("pp", pp), ("ep", ep)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")


# ops that carry a fixed state per sequence (a state-space layer's convolution and scan read and write
# each sequence's recurrent state, and switch between a one-token step and a chunked scan): priced
# per (cached, new) span with the attention core, as engines run them (vLLM's Mamba layers split a
# mixed batch into its decodes, one step kernel, and its prefills, one chunked scan)
SEQUENCE_OPS = ("ssm.conv1d", "ssm.scan")


def _core_ops(table: OpTable) -> np.ndarray:
    """The ops priced per (cached, new) span: the attention core and the state-space ``SEQUENCE_OPS``."""
    return (table.attention_core > 0) | np.isin(np.asarray(table.names), SEQUENCE_OPS)


@dataclass(frozen=True)
class StepOps:
    """A decoder's ops split by what sets their size in a step: ``token`` (one query of one token:
    the ops of every new token, ``per_token``, and of every logit row, ``per_logit``) and the
    per-span core (attention core, state-space scans), rebuilt per (cached, new) span by :meth:`core`."""

    job: InferenceJob
    token: OpTable
    per_token: np.ndarray
    per_logit: np.ndarray
    gathered: np.ndarray  # ops whose "weight" bytes are rows gathered per token (the embeddings)

    @classmethod
    def of(cls, job: InferenceJob) -> StepOps:
        """Per-token and per-logit ops told apart by their sizes: one query of 2 new tokens against
        one of 1 (both with one logit row), the core left out."""
        one, two = _table(job, 0.0, 1.0), _table(job, 0.0, 2.0)
        core = _core_ops(one)
        moved_one = one.input_bytes + one.output_bytes
        moved_two = two.input_bytes + two.output_bytes
        per_token = ~core & np.isclose(moved_two, 2.0 * moved_one)
        per_logit = ~core & np.isclose(moved_two, moved_one)
        unknown = [
            n for n, t, g, c in zip(one.names, per_token, per_logit, core, strict=True) if not (t or g or c)
        ]
        if unknown:
            raise ConfigError(f"{job.spec.model_type}: ops {unknown} scale with neither tokens nor logits")
        gathered = (one.weight_bytes > 0) & np.isclose(two.weight_bytes, 2.0 * one.weight_bytes)
        return cls(job, one, per_token, per_logit, gathered)

    def tokens_table(self, tokens: Any) -> OpTable:
        """The one-token table with the gathered rows of ``tokens`` tokens (an embedding reads one row
        per token; ``shard`` scales inputs and outputs by the tokens, not weights)."""
        weight = jnp.where(self.gathered, self.token.weight_bytes * tokens, self.token.weight_bytes)
        arrays = {f.name: getattr(self.token, f.name) for f in fields(OpTable) if f.name != "names"}
        return OpTable(**(arrays | {"weight_bytes": weight}), names=self.token.names)

    def core(self, cached: float, new: float) -> OpTable:
        """The core ops of one query of ``new`` tokens after ``cached`` ones."""
        table = _table(self.job, cached, new)
        return _take(table, _core_ops(table))


def _plan(tp: float, ep: float = 1.0) -> Plan:
    return Plan(tp=tp, pp=1.0, ep=ep, microbatch=1.0)


def _seconds(hw: Hardware, job: InferenceJob, table: OpTable, tp: float, seqs, tokens) -> jax.Array:
    """Σ over ops of one execution per layer: ``inference.op_seconds`` times each op's count."""
    return jnp.sum(op_seconds(hw, job, table, _plan(tp), seqs, tokens) * table.layers)


def step_comm_s(hw: Hardware, job: InferenceJob, tp: float, pp: float, tokens, ep: float = 1.0) -> jax.Array:
    """The step's communication: ``tp_reductions`` tensor-parallel all-reduces of ``tokens``·h 16-bit
    activations; through ``pp`` pipeline stages, ``pp − 1`` sends of them from stage to stage
    (``inference.stage_transfer_s``); with experts over ``ep`` devices, each MoE layer's dispatch and
    combine, two all-to-alls of the tokens' top_k copies (as the training model's MoE layers)."""
    spec = job.spec
    act_b = bytes_per_element(activation_precision(job.precision))
    out = spec.tp_reductions * collective_s("all_reduce", hw, tokens * spec.hidden_size * act_b, 1.0, tp)
    if pp > 1:
        out = out + (pp - 1.0) * stage_transfer_s(hw, job, tp, tokens)
    if ep > 1 and spec.moe is not None:
        routed = moe_dispatch_bytes(spec, tokens, act_b)
        out = out + 2.0 * spec.mlp_layers("moe") * collective_s("all_to_all", hw, routed, 1.0, ep)
    return out


def step_time_s(
    hw: Hardware,
    job: InferenceJob,
    tp: int,
    chunks: Sequence[tuple[int, int]] = (),
    decode_contexts: Sequence[int] = (),
    logits: int | None = None,
    pp: int = 1,
    ep: int = 1,
) -> float:
    """One step of prompt ``chunks`` (cached, new) and single-token decodes at ``decode_contexts``
    (the tokens each attends, its new one included), evaluated directly (module docstring).
    ``logits``: rows through the LM head (default: every chunk and every decode); ``pp``: pipeline
    stages the step passes through; ``ep``: devices the experts are spread over, each an engine
    whose step is alike (module docstring)."""
    _check_servable(job, tp, pp, ep)
    with jax.enable_x64(True):  # as the tables: float64, so the two agree to rounding
        return _step_time_s(hw, job, tp, chunks, decode_contexts, logits, pp, ep)


def _step_time_s(
    hw: Hardware,
    job: InferenceJob,
    tp: int,
    chunks: Sequence[tuple[int, int]],
    decode_contexts: Sequence[int],
    logits: int | None,
    pp: int,
    ep: int,
) -> float:
    job = prompt_launch(job) if chunks else job  # graphs replay decode-only steps
    step = StepOps.of(job)
    d = len(decode_contexts)
    tokens = float(sum(n for _, n in chunks) + d)
    rows = float(len(chunks) + d if logits is None else logits)
    if tokens <= 0:
        return 0.0
    token = step.tokens_table(tokens)
    seqs = np.where(step.per_token, tokens, rows)
    per_op = op_seconds(hw, job, token, _plan(float(tp), float(ep)), seqs, ep * tokens)
    mask = step.per_token | step.per_logit
    kernels = jnp.sum(per_op * token.layers * mask)
    if d:
        mean = sum(decode_contexts) / d
        kernels += _seconds(hw, job, step.core(mean - 1.0, 1.0), float(tp), float(d), tokens)
    for cached, new in chunks:
        kernels += _seconds(hw, job, step.core(float(cached), float(new)), float(tp), 1.0, tokens)
    comm = step_comm_s(hw, job, float(tp), float(pp), tokens, float(ep))
    return float(jnp.maximum(kernels, job.host_pass_s) + comm)


def _geometric(low: float, high: float, ratio: float) -> np.ndarray:
    """Integers from ``low`` to ``high`` (both in) spaced by about ``ratio``."""
    points = [float(low)]
    while points[-1] < high:
        points.append(min(float(high), max(points[-1] + 1.0, np.floor(points[-1] * ratio))))
    return np.array(points)


@dataclass(frozen=True)
class StepTable:
    """A deployment's step times on grids (module docstring); :meth:`seconds` reads one step."""

    tokens: np.ndarray  # token counts of ``token_s``
    token_s: np.ndarray  # (per-token ops, communication: TP all-reduces and pipeline sends) of T tokens
    logit_s: np.ndarray  # per-logit ops of L rows, L = 0..max_seqs
    contexts: np.ndarray  # decode contexts of ``decode_s``'s columns
    decode_s: np.ndarray  # (D = 0..max_seqs, context) decode attention core
    chunk_new: np.ndarray  # chunk lengths of ``chunk_s``'s rows
    chunk_cached: np.ndarray  # cached tokens of ``chunk_s``'s columns
    chunk_s: np.ndarray  # (new, cached) chunk attention core
    host_s: float
    width: int = 1  # tokens each decoding sequence feeds per step (k + 1 when verifying k drafts)
    # a step with prompt tokens launches its kernels where decode-only steps replay CUDA graphs: it
    # adds ``prompt_extra_s`` (launched − replayed overhead) per kernel, over the per-token ops'
    # kernels, the per-logit ops' (when rows get logits) and one core's per decode batch and chunk
    prompt_extra_s: float = 0.0
    token_kernels: float = 0.0
    logit_kernels: float = 0.0
    core_kernels: float = 0.0

    def __post_init__(self) -> None:  # Python lists: a scalar lookup without NumPy's call overhead
        object.__setattr__(
            self,
            "_lists",
            (
                self.tokens.tolist(),
                self.contexts.tolist(),
                self.chunk_new.tolist(),
                self.chunk_cached.tolist(),
            ),
        )

    def seconds(
        self,
        tokens: int,
        logits: int,
        decodes: int,
        context_sum: float,
        chunks: Sequence[tuple[float, float]],
    ) -> float:
        """One step: ``tokens`` new tokens, ``logits`` LM-head rows, ``decodes`` decode queries
        attending ``context_sum`` tokens in all, and the (cached, new) prompt ``chunks``."""
        if tokens <= 0:
            return 0.0
        if tokens > self.tokens[-1] or decodes >= len(self.decode_s) or logits >= len(self.logit_s):
            raise ConfigError(
                f"a step of {tokens} tokens and {decodes} sequences exceeds the table "
                f"({int(self.tokens[-1])} tokens, {len(self.decode_s) - 1} sequences)"
            )
        tokens_at, contexts_at, new_at, cached_at = self._lists
        kernels = float(self.logit_s[logits])
        if decodes:
            i, u = _cell(contexts_at, context_sum / decodes)
            row = self.decode_s[decodes]
            kernels += float(row[i]) * (1.0 - u) + float(row[i + 1]) * u
        for cached, new in chunks:
            i, u = _cell(new_at, new)
            j, v = _cell(cached_at, cached)
            grid = self.chunk_s
            top = grid[i, j] * (1.0 - v) + grid[i, j + 1] * v
            bottom = grid[i + 1, j] * (1.0 - v) + grid[i + 1, j + 1] * v
            kernels += float(top * (1.0 - u) + bottom * u)
        if chunks and self.prompt_extra_s:
            launches = self.token_kernels + (self.logit_kernels if logits else 0.0)
            kernels += self.prompt_extra_s * (launches + self.core_kernels * (len(chunks) + (decodes > 0)))
        i, u = _cell(tokens_at, tokens)
        dense = self.token_s[:, i] * (1.0 - u) + self.token_s[:, i + 1] * u
        return float(max(kernels + dense[0], self.host_s) + dense[1])

    def decode_seconds(self, decodes: int, context_sums: np.ndarray) -> np.ndarray:
        """Decode-only steps of ``decodes`` sequences (``width`` tokens and logits each) attending
        ``context_sums`` tokens in all (one step per entry): :meth:`seconds` with no chunks, vectorised."""
        if decodes < 1 or decodes >= len(self.decode_s):
            raise ConfigError(f"a step of {decodes} sequences exceeds the table ({len(self.decode_s) - 1})")
        tokens = float(decodes * self.width)
        dense = np.interp(tokens, self.tokens, self.token_s[0])
        comm = np.interp(tokens, self.tokens, self.token_s[1])
        core = np.interp(context_sums / decodes, self.contexts, self.decode_s[decodes])
        return np.maximum(self.logit_s[decodes * self.width] + core + dense, self.host_s) + comm


def _cell(points: list[float], x: float) -> tuple[int, float]:
    """(i, u): x lies at points[i] + u·(points[i+1] − points[i]), clamped to the grid (a grid of one
    point: i = 0 with a second copy expected at i + 1, as the tables keep)."""
    i = min(max(bisect.bisect_right(points, x) - 1, 0), len(points) - 2)
    u = (x - points[i]) / (points[i + 1] - points[i])
    return i, min(max(u, 0.0), 1.0)


def step_table(
    hw: Hardware,
    job: InferenceJob,
    tp: int,
    max_tokens: int,
    max_seqs: int,
    max_context: int,
    width: int = 1,
    pp: int = 1,
    ep: int = 1,
) -> StepTable:
    """:class:`StepTable` of steps of up to ``max_tokens`` new tokens, ``max_seqs`` sequences and
    ``max_context`` tokens per sequence on one replica of ``tp`` devices per stage and ``pp`` stages
    (each step passes through all of them). ``width``: the tokens each decoding sequence feeds per
    step (1; k + 1 when it verifies k speculated tokens, each with its logits), so the decode core is
    of queries of ``width`` tokens. ``ep``: devices the experts are spread over (:func:`step_time_s`)."""
    _check_servable(job, tp, pp, ep)
    if width < 1:
        raise ConfigError(f"width must be >= 1, got {width}")
    for name, value in (("max_tokens", max_tokens), ("max_seqs", max_seqs), ("max_context", max_context)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    step, tpf, ppf, epf = StepOps.of(job), float(tp), float(pp), float(ep)
    exact = np.arange(1.0, max(min(max_tokens, EXACT_TOKENS), 2) + 1.0)  # two points at least
    above = _geometric(exact[-1], max_tokens, TOKEN_RATIO)[1:] if max_tokens > EXACT_TOKENS else np.array([])
    tokens = np.concatenate([exact, above])
    token = step.token

    def per_token(t):
        per_op = op_seconds(hw, job, step.tokens_table(t), _plan(tpf, epf), t, epf * t)
        return jnp.stack(
            [jnp.sum(per_op * token.layers * step.per_token), step_comm_s(hw, job, tpf, ppf, t, epf)]
        )

    def per_logit(rows):
        per_op = op_seconds(hw, job, token, _plan(tpf), rows, 1.0)
        return jnp.sum(per_op * token.layers * step.per_logit)

    with jax.enable_x64(True):
        token_s = np.asarray(jax.jit(jax.vmap(per_token))(jnp.asarray(tokens))).T
        logit_s = np.asarray(jax.jit(jax.vmap(per_logit))(jnp.arange(0.0, max_seqs * width + 1.0)))
        contexts = _geometric(float(width), max(max_context + width - 1, width + 1), CONTEXT_RATIO)
        spans = [(k - width, float(width)) for k in contexts]
        decode_s = _core_grid(hw, job, tpf, step, spans, np.arange(max_seqs + 1.0))
        chunk_new = _geometric(1.0, max(max_tokens, 2), CHUNK_RATIO)
        chunk_cached = np.concatenate([[0.0], _geometric(1.0, max(max_context, 2), CONTEXT_RATIO)])
        spans = [(c, n) for n in chunk_new for c in chunk_cached]
        chunk_s = _core_grid(hw, job, tpf, step, spans, np.ones(1))[0].reshape(
            len(chunk_new), len(chunk_cached)
        )
    busy = (token.flops + token.weight_bytes + token.input_bytes + token.output_bytes) > 0
    core = step.core(0.0, 1.0)
    return StepTable(
        tokens,
        token_s,
        logit_s,
        contexts,
        decode_s,
        chunk_new,
        chunk_cached,
        chunk_s,
        job.host_pass_s,
        width,
        prompt_extra_s=float(hw.kernel_overhead_s) - float(launched(hw, job.engine).kernel_overhead_s),
        token_kernels=float(np.sum(token.layers * (step.per_token & busy))),
        logit_kernels=float(np.sum(token.layers * (step.per_logit & busy))),
        core_kernels=float(np.sum(core.layers)),
    )


def _core_grid(
    hw: Hardware,
    job: InferenceJob,
    tp: float,
    step: StepOps,
    spans: Sequence[tuple[float, float]],
    seqs: np.ndarray,
) -> np.ndarray:
    """Attention-core time of ``seqs`` copies of each (cached, new) span: shape (seqs, spans)."""
    stacked = _stack([step.core(c, n) for c, n in spans])
    names = step.core(*spans[0]).names

    def one(arrays, copies):
        table = OpTable(**arrays, names=names)
        return _seconds(hw, job, table, tp, copies, 1.0)

    over_spans = jax.vmap(one, in_axes=(0, None))
    grid = jax.jit(jax.vmap(over_spans, in_axes=(None, 0)))
    return np.asarray(grid({k: jnp.asarray(v) for k, v in stacked.items()}, jnp.asarray(seqs)))


def kv_bytes_per_token(job: InferenceJob, tp: int) -> float:
    """KV-cache bytes of one token on one of ``tp`` devices: every attention layer's keys and values
    (a sliding-window layer counted in full, as an allocator with one block pool for all layers
    holds them) in the job's KV type."""
    kv_b = bytes_per_element(kv_cache_precision(job.precision, job.kv_precision))
    return job.spec.attention_layers * float(kv_elements_per_token(job.spec, float(tp))) * kv_b


def state_bytes_per_sequence(job: InferenceJob, tp: int) -> float:
    """Recurrent state of one sequence on one of ``tp`` devices: every state-space layer's convolution
    and scan state (``ModelSpec.state_elements``, split over tp with the heads) in the 16-bit activation
    type, as ``memory.inference_memory`` holds it; 0 for a transformer."""
    act_b = bytes_per_element(activation_precision(job.precision))
    return job.spec.state_elements / tp * act_b


def kv_capacity_tokens(
    hw: Hardware, job: InferenceJob, tp: int, max_tokens: int, max_seqs: int = 0, pp: int = 1, ep: int = 1
) -> int:
    """Tokens of KV cache one replica of ``pp`` stages of ``tp`` devices holds: a device's HBM less
    its stage's weights (the larger of the first and last), the activations of a ``max_tokens`` step,
    the workspace and the recurrent states of ``max_seqs`` sequences per pipeline engine (a
    state-space layer's state is a fixed slot per sequence, allocated up front as vLLM does; a stage
    holds its layers' share of the states of all ``pp`` engines; ``memory.inference_memory``),
    divided by the cache of one token over the stage's 1/pp of the attention layers. A model with no
    attention layer caches no token: its capacity is then the tokens of ``max_seqs`` sequences per
    engine of ``job``'s whole length, which never binds. With the experts spread over ``ep`` devices
    (``tp`` = ``pp`` = 1), each device keeps the dense weights and 1/ep of the experts and caches its
    own engine's tokens: the replica holds ``ep`` times one device's tokens."""
    spec = job.spec
    mem = inference_memory(
        spec,
        float(tp),
        float(pp),
        0.0,
        0.0,
        hw,
        job.precision,
        job.kv_precision,
        prefill_tokens=float(max_tokens),
        ep=float(ep),
    )
    states = max_seqs * state_bytes_per_sequence(job, tp)  # pp engines' sequences, 1/pp of the layers each
    free = float(mem.capacity_bytes - mem.total_bytes) - states
    if states and free < 0:
        raise ConfigError(
            f"{spec.model_type} on tp={tp}, pp={pp}: the recurrent states of max_num_seqs={max_seqs} "
            f"sequences ({states / 2**30:.1f} GiB per device) do not fit on {hw.name} beside the weights: "
            "lower max_num_seqs or raise tp"
        )
    per_token = kv_bytes_per_token(job, tp) / pp
    if per_token == 0.0:
        return ep * pp * max_seqs * (job.prompt_tokens + job.output_len)
    return ep * max(int(free // per_token), 0)


def kv_swap_block_s(hw: Hardware, job: InferenceJob, tp: int, block_size: int, pp: int = 1) -> float:
    """Moving one KV block between a device and its host memory, one way (swap preemption): the
    block's ``block_size`` tokens of keys and values on this device (its stage's 1/pp of the layers;
    every device moves its share at once) over the device's share of the host link,
    bytes / ``host_bandwidth_Bps`` (a bulk copy: no latency term)."""
    if not float(hw.host_bandwidth_Bps) > 0:
        raise ConfigError(f"{hw.name} has no host link to swap KV blocks over: use preemption=recompute")
    return block_size * kv_bytes_per_token(job, tp) / pp / float(hw.host_bandwidth_Bps)


def kv_transfer_s(
    hw: Hardware, job: InferenceJob, tp: int, tokens: np.ndarray, across_nodes: bool = True
) -> np.ndarray:
    """Moving the KV cache of ``tokens`` prompt tokens from a prefill replica to a decode replica
    (disaggregated serving): each of the ``tp`` ranks sends its share, every attention layer's keys and
    values and the sequence's recurrent state (state-space layers), as one point-to-point transfer
    over the scale-out link (``across_nodes``) or the scale-up one (``fabric.p2p_s``: latency +
    bytes / bandwidth)."""
    stride = float(hw.scale_up_domain_size) if across_nodes else 1.0
    with jax.enable_x64(True):
        cache = jnp.asarray(tokens, dtype=float) * kv_bytes_per_token(job, tp)
        return np.asarray(p2p_s(hw, cache + state_bytes_per_sequence(job, tp), stride))
