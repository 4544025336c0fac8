"""A discrete-event simulator of an LLM serving engine at request level, over the step times of
``costmodels/serving.py``. Deterministic: the same workload and settings give the same result.

**Workload.** Requests with arrival times and input / output lengths (:class:`Workload`):
Poisson or gamma (bursty: coefficient of variation > 1) arrivals at a rate, a closed loop of a fixed
number of concurrent users (each sends its next request when its last one finishes), or a trace.

**Engine** (:class:`Scheduler`). ``continuous`` batching (Orca, vLLM, TensorRT-LLM in-flight
batching): every step the running sequences decode one token each and waiting requests join while
the step's token budget (``max_num_batched_tokens``), its sequence budget (``max_num_seqs``) and the
KV cache allow. With ``chunked_prefill`` a prompt is split over steps to fill the budget (Sarathi-
Serve; vLLM V1); without, a prompt enters whole. ``priority="decode"`` schedules the running decodes
first and fills the rest of the budget with prompt tokens; ``"prefill"`` admits prompts first (vLLM's
V0 scheduler: a step with prompts runs no decodes). ``static`` batching (FasterTransformer) takes up
to ``max_num_seqs`` waiting requests, prefills them together and decodes until the longest is done;
its finished sequences stay in the batch as padding.

**KV cache.** Paged: ``block_size``-token blocks from a pool of ``kv_blocks`` (``serving.
kv_capacity_tokens``); a sequence holds ⌈tokens/block_size⌉ blocks. ``kv_admission="on_demand"``
(vLLM) takes blocks as the tokens come; when a step's decodes need more than are free, the most
recently admitted running sequences are preempted (vLLM's recompute policy): their blocks are freed
and they wait at the head of the queue to prefill their prompt and the tokens generated so far
again; with ``preemption="swap"`` their blocks move to host memory instead and come back when they
resume, where they stopped, the engine waiting ``swap_block_s`` per block each way. ``"reserve"``
(TensorRT-LLM's GUARANTEED_NO_EVICT) admits a request only when its whole sequence fits, and never
preempts. With ``prefix_caching`` a request whose shared prefix is cached
starts past its full blocks and shares them; unused prefixes are evicted least recently used first.

**Speculative decoding** (:class:`Speculation`): each step verifies k proposals per sequence and
emits 1 + a tokens, a drawn per sequence and step. **Disaggregated** serving
(:func:`simulate_disaggregated`): a prefill pool emits each first token, the KV cache moves, and a
decode pool decodes.

**Time.** A step's duration is ``StepTable.seconds`` of its mix. Stretches of steps with no prompt
tokens and no event (an arrival that could join, a completion, a block boundary) are advanced
together, with the same arithmetic as one step at a time.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from costmodels.errors import ConfigError
from costmodels.serving import StepTable

ARRIVALS = ("poisson", "gamma", "closed")
SCHEDULERS = ("continuous", "static")
PRIORITIES = ("decode", "prefill")
KV_ADMISSIONS = ("on_demand", "reserve")
PREEMPTIONS = ("recompute", "swap")
# the engine's timeline, one row per step or stretch of decode-only steps: its start, duration and
# steps, the state as it starts (running sequences, waiting requests, KV blocks in use) and its new
# tokens per step
TIMELINE = ("start_s", "duration_s", "steps", "running", "waiting", "kv_blocks", "tokens")


@dataclass(frozen=True)
class Workload:
    """Requests in arrival order: arrival time (s), prompt and output tokens. ``concurrency`` > 0: a
    closed loop, the arrival times are ignored and each of ``concurrency`` users sends its next
    request when its previous one finishes (the first ``concurrency`` at time 0)."""

    arrival_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    concurrency: int = 0
    # a disaggregated decode pool's requests: each arrives with its prompt's KV cache (computed by
    # the prefill pool, which produced its first token at this time) and only decodes
    first_token_s: np.ndarray | None = None
    # shared prompt prefixes (a system prompt, a few-shot header): request i's first prefix_len[i]
    # tokens are the same as every other request's with prefix_id[i] (−1: none)
    prefix_id: np.ndarray | None = None
    prefix_len: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if not n or len(self.input_len) != n or len(self.output_len) != n:
            raise ConfigError("a workload needs at least one request and one length of each kind per request")
        if np.any(self.input_len < 1) or np.any(self.output_len < 1):
            raise ConfigError("every request needs input_len >= 1 and output_len >= 1")
        if np.any(np.diff(self.arrival_s) < 0) or np.any(self.arrival_s < 0):
            raise ConfigError("arrival times must be >= 0 and in order")
        if self.concurrency < 0:
            raise ConfigError(f"concurrency must be >= 0, got {self.concurrency}")
        if self.first_token_s is not None and (
            len(self.first_token_s) != n or np.any(self.first_token_s > self.arrival_s) or self.concurrency
        ):
            raise ConfigError(
                "prefilled requests need a first-token time each, before their arrival, open loop"
            )
        if (self.prefix_id is None) != (self.prefix_len is None):
            raise ConfigError("shared prefixes need both prefix_id and prefix_len per request")
        if self.prefix_len is not None and (
            len(self.prefix_len) != n
            or np.any(self.prefix_len < 0)
            or np.any(self.prefix_len > self.input_len)
        ):
            raise ConfigError("prefix_len must be between 0 and the request's input_len")

    @property
    def size(self) -> int:
        return len(self.arrival_s)


def lengths(rng: np.random.Generator, n: int, mean: float, spread: float) -> np.ndarray:
    """``n`` token counts ≥ 1: the ``mean`` itself (``spread`` 0), else uniform on mean·(1 ± spread)."""
    if mean < 1 or not 0 <= spread < 1:
        raise ConfigError(f"lengths need mean >= 1 and spread in [0, 1), got {mean} and {spread}")
    if spread == 0:
        return np.full(n, round(mean))
    return np.maximum(np.rint(rng.uniform(mean * (1 - spread), mean * (1 + spread), n)), 1).astype(int)


def synthetic(
    arrival: str,
    n: int,
    rate_per_s: float,
    input_len: np.ndarray,
    output_len: np.ndarray,
    *,
    seed: int = 0,
    cv: float = 1.0,
    concurrency: int = 0,
    prefixes: int = 0,
    prefix_len: int = 0,
) -> Workload:
    """``n`` requests arriving by ``arrival``: ``poisson`` (exponential gaps of mean 1/rate), ``gamma``
    (gamma gaps of mean 1/rate and coefficient of variation ``cv``: shape 1/cv², > 1 bursty) or
    ``closed`` (``concurrency`` users, no rate). ``prefixes`` > 0: each request starts with one of that
    many shared prefixes of ``prefix_len`` tokens (at most its prompt), drawn uniformly."""
    if arrival not in ARRIVALS:
        raise ConfigError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    rng = np.random.default_rng(seed)
    shared: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if prefixes < 0 or prefix_len < 0:
        raise ConfigError(f"prefixes and prefix_len must be >= 0, got {prefixes} and {prefix_len}")
    if prefixes and prefix_len:  # a stream of its own: the arrivals stay those of the same seed
        ids = np.random.default_rng(seed + 2).integers(0, prefixes, n)
        shared = (ids, np.minimum(prefix_len, input_len))
    if arrival == "closed":
        if concurrency < 1:
            raise ConfigError(f"a closed loop needs concurrency >= 1, got {concurrency}")
        return Workload(np.zeros(n), input_len, output_len, concurrency, None, *shared)
    if not rate_per_s > 0:
        raise ConfigError(f"rate_per_s must be positive, got {rate_per_s}")
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate_per_s, n)
    else:
        if not cv > 0:
            raise ConfigError(f"cv must be positive, got {cv}")
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate_per_s * shape), n)
    return Workload(np.cumsum(gaps), input_len, output_len, 0, None, *shared)


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding (Leviathan et al. 2023; vLLM's draft-model and n-gram proposers): each
    step a decoding sequence feeds its last token and ``tokens`` = k proposed ones, all verified in
    one pass (the step table's ``width`` is k + 1). Each proposal is accepted with probability
    ``acceptance`` = α until the first rejection, and the verification adds one token of its own, so a
    step emits 1 + a tokens, a ≤ k, on average (1 − α^(k+1))/(1 − α). ``draft``: the draft model's step
    table, whose k single-token steps per step and whose prefill of each prompt chunk add to the
    step; None: a proposer with no model to run (n-gram lookup in the prompt)."""

    tokens: int
    acceptance: float
    draft: StepTable | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ConfigError(f"speculative tokens must be >= 1, got {self.tokens}")
        if not 0.0 <= self.acceptance <= 1.0:
            raise ConfigError(f"speculative acceptance must be in [0, 1], got {self.acceptance}")

    def accepted(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Accepted proposals a per sequence and step: P(a ≥ j) = α^j for j ≤ k."""
        if self.acceptance >= 1.0:
            return np.full(shape, self.tokens, np.int64)
        if self.acceptance <= 0.0:
            return np.zeros(shape, np.int64)
        runs = np.floor(np.log(1.0 - rng.random(shape)) / np.log(self.acceptance))
        return np.minimum(runs, self.tokens).astype(np.int64)


@dataclass(frozen=True)
class Scheduler:
    """The engine's scheduling and KV-cache settings (module docstring)."""

    kind: str = "continuous"
    max_num_seqs: int = 256  # vLLM's default
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    priority: str = "decode"
    block_size: int = 16  # vLLM's default
    kv_blocks: int = 1 << 30
    prefix_caching: bool = False
    speculation: Speculation | None = None
    # "on_demand": blocks as the tokens come, preempting when they run out (vLLM); "reserve": a
    # request is admitted only when the blocks of its whole sequence are free, and holds them from
    # then on, so nothing is ever preempted (TensorRT-LLM's GUARANTEED_NO_EVICT, its default)
    kv_admission: str = "on_demand"
    # what a preempted sequence loses: "recompute" (vLLM V1, its only mode): its blocks, so it prefills
    # its prompt and generated tokens again; "swap" (vLLM V0's swap space, TensorRT-LLM's host
    # offload): its blocks move to host memory and back when it resumes, ``swap_block_s`` each block
    # each way, during which the engine waits (host memory is taken to hold them)
    preemption: str = "recompute"
    swap_block_s: float = 0.0

    def __post_init__(self) -> None:
        if self.speculation is not None and self.kind == "static":
            raise ConfigError(
                "speculative decoding needs continuous batching: set the scheduler to continuous"
            )
        if self.kv_admission not in KV_ADMISSIONS:
            raise ConfigError(
                f"kv_admission must be one of {', '.join(KV_ADMISSIONS)}, got {self.kv_admission!r}"
            )
        if self.preemption not in PREEMPTIONS:
            raise ConfigError(f"preemption must be one of {', '.join(PREEMPTIONS)}, got {self.preemption!r}")
        if not (math.isfinite(self.swap_block_s) and self.swap_block_s >= 0):
            raise ConfigError(f"swap_block_s must be a finite number >= 0, got {self.swap_block_s}")
        if self.kind not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.kind!r}")
        if self.priority not in PRIORITIES:
            raise ConfigError(f"priority must be one of {', '.join(PRIORITIES)}, got {self.priority!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_blocks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Simulation:
    """Per-request times and the engine's timeline (one row per step or stretch of steps)."""

    first_token_s: np.ndarray
    finish_s: np.ndarray
    arrival_s: np.ndarray
    preemptions: np.ndarray  # per request
    itl_s: np.ndarray  # every inter-token gap of every request
    steps: int = 0
    timeline: dict[str, np.ndarray] = field(default_factory=dict)  # TIMELINE columns, one row per step
    hit_tokens: np.ndarray = field(
        default_factory=lambda: np.zeros(0, np.int64)
    )  # read from the prefix cache


class _Engine:
    """The mutable state of one simulation (requests indexed 0..n-1). A request's KV cache holds
    ``done_prefill`` tokens while it prefills and ``input_len + generated`` once it decodes (the
    token a decode step feeds is the last one generated; its keys and values are written then)."""

    def __init__(self, w: Workload, table: StepTable, s: Scheduler):
        self.w, self.table, self.s = w, table, s
        n = w.size
        self.input = w.input_len.astype(np.int64)
        self.output = w.output_len.astype(np.int64)
        self.prompt = self.input.copy()  # tokens to prefill (after a preemption: input + generated)
        self.done_prefill = np.zeros(n, np.int64)
        self.generated = np.zeros(n, np.int64)
        self.blocks = np.zeros(n, np.int64)
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.last_token = np.zeros(n)
        self.preempted = np.zeros(n, np.int64)
        self.swapped = np.zeros(n, np.int64)  # blocks a swapped-out sequence holds in host memory
        self.stall_s = 0.0  # swaps the next step waits for
        self.arrival = w.arrival_s.astype(float).copy()
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.free_blocks = s.kv_blocks
        # prefix cache: full blocks of each cached prefix, its users, the unused ones (LRU first)
        self.shared = np.zeros(n, np.int64)  # of a request's blocks, those that are its prefix's
        self.hit_tokens = np.zeros(n, np.int64)
        self.cached: dict[int, int] = {}
        self.users: dict[int, int] = {}
        self.idle: OrderedDict[int, None] = OrderedDict()
        self.idle_blocks = 0
        caching = s.prefix_caching and w.prefix_id is not None
        self.pid = w.prefix_id.astype(np.int64) if caching else np.full(n, -1, np.int64)
        self.plen = w.prefix_len.astype(np.int64) if caching else np.zeros(n, np.int64)
        self.now = 0.0
        self.next_arrival = 0
        self.released = n
        self.left = n  # requests not finished
        self.itl: list[np.ndarray] = []
        self.steps = 0
        self.timeline: dict[str, list[float]] = {k: [] for k in TIMELINE}
        self.prefilled = w.first_token_s is not None
        spec = s.speculation
        self.k = spec.tokens if spec is not None else 0  # proposals per step (0: none)
        self.rng = np.random.default_rng(spec.seed if spec is not None else 0)
        if w.concurrency:  # a closed loop: the first users' requests are there at time 0
            self.arrival[:] = np.inf
            self.released = min(w.concurrency, n)
            self.arrival[: self.released] = 0.0
        self._check_fits()

    def _check_fits(self) -> None:
        s, longest, t = self.s, int(np.max(self.input + self.output)), self.table
        if t.width != self.k + 1:
            raise ConfigError(
                f"the step table verifies {t.width - 1} speculated tokens per step, the engine {self.k}: "
                "build it with width = speculative tokens + 1"
            )
        if (
            t.tokens[-1] < s.max_num_batched_tokens
            or len(t.decode_s) - 1 < s.max_num_seqs
            or t.contexts[-1] < longest
        ):
            raise ConfigError(
                f"the step table covers {int(t.tokens[-1])} tokens, {len(t.decode_s) - 1} sequences and "
                f"{int(t.contexts[-1])}-token contexts; the engine needs {s.max_num_batched_tokens}, "
                f"{s.max_num_seqs} and {longest}: build it for them"
            )
        if self._blocks_for(longest + self.k) > s.kv_blocks:  # + the speculated tokens' slots
            raise ConfigError(
                f"a request of {longest} tokens needs {self._blocks_for(longest + self.k)} KV blocks of "
                f"{s.block_size} tokens; the cache has {s.kv_blocks}: shorten the requests or give the "
                "replica more memory"
            )
        prompt = int(np.max(self.input))
        if self.prefilled and s.kind == "static":
            raise ConfigError(
                "a disaggregated decode pool batches continuously: set engine.scheduler=continuous"
            )
        if (
            (not s.chunked_prefill or s.kind == "static")
            and prompt > s.max_num_batched_tokens
            and not self.prefilled
        ):
            raise ConfigError(
                f"a prompt of {prompt} tokens exceeds max_num_batched_tokens={s.max_num_batched_tokens} "
                "and is not chunked: raise the token budget or turn chunked prefill on"
            )

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.s.block_size)

    def _split(self) -> tuple[list[int], list[int]]:
        """The running sequences in admission order: (decoding, still prefilling)."""
        if not self.running:
            return [], []
        run = np.array(self.running)
        decoding = self.done_prefill[run] >= self.prompt[run]
        return run[decoding].tolist(), run[~decoding].tolist()

    # ---- arrivals, completions, preemption

    def _admit_arrivals(self) -> None:
        while self.next_arrival < self.released and self.arrival[self.next_arrival] <= self.now:
            self.waiting.append(self.next_arrival)
            self.next_arrival += 1

    # ---- KV blocks: free ones, and cached prefixes nobody uses (evicted least recently used first)

    def _available(self) -> int:
        return self.free_blocks + self.idle_blocks

    def _take(self, blocks: int) -> None:
        """Allocate ``blocks`` (at most :meth:`_available`), evicting unused prefixes as needed."""
        while self.free_blocks < blocks:
            p, _ = self.idle.popitem(last=False)
            freed = self.cached.pop(p)
            self.users.pop(p)
            self.free_blocks += freed
            self.idle_blocks -= freed
        self.free_blocks -= blocks

    def _release(self, r: int) -> None:
        """Free ``r``'s own blocks; its prefix's blocks stay cached, unused once nobody holds them."""
        self.free_blocks += int(self.blocks[r] - self.shared[r])
        if self.shared[r]:
            p = int(self.pid[r])
            self.users[p] -= 1
            if not self.users[p]:
                self.idle[p] = None
                self.idle_blocks += self.cached[p]
        self.blocks[r] = self.shared[r] = 0

    def _hit(self, r: int) -> None:
        """A waiting request whose prefix is cached starts past it (at least its last prompt token
        is computed, as vLLM does), holding the prefix's blocks."""
        p = int(self.pid[r])
        if p < 0 or p not in self.cached or self.shared[r] or self.done_prefill[r]:
            return
        blocks = min(self.cached[p], int(min(self.plen[r], self.prompt[r] - 1)) // self.s.block_size)
        if blocks <= 0:
            return
        if not self.users[p]:
            self.idle.pop(p)
            self.idle_blocks -= self.cached[p]
        self.users[p] += 1
        self.shared[r] = self.blocks[r] = blocks
        self.done_prefill[r] = blocks * self.s.block_size
        if not self.generated[r]:  # its first admission (a recompute after preemption is not a prompt)
            self.hit_tokens[r] = blocks * self.s.block_size

    def _release_waiting(self, r: int) -> None:
        """A request that stays waiting after all gives back what its admission took: its prefix hit
        (:meth:`_hit`) and any blocks reserved for it."""
        if self.shared[r]:
            self.done_prefill[r] = 0
            if not self.generated[r]:
                self.hit_tokens[r] = 0
        self._release(r)

    def _cache_prefixes(self, rows: list[int]) -> None:
        """Requests of ``rows`` that have computed their whole prefix, of a prefix not cached yet,
        hand its full blocks to the cache (they keep using them)."""
        for r in rows:
            p = int(self.pid[r])
            full = int(self.plen[r]) // self.s.block_size
            if p < 0 or p in self.cached or full == 0 or self.done_prefill[r] < self.plen[r]:
                continue
            self.cached[p], self.users[p] = full, 1
            self.shared[r] = full

    def _finish(self, r: int, t: float) -> None:
        self.finish[r] = t
        self.left -= 1
        self._release(r)
        if self.w.concurrency and self.released < self.w.size:  # this user's next request
            self.arrival[self.released] = t
            self.released += 1

    def _preempt_one(self) -> None:
        """Preempt the latest-admitted running sequence: its blocks are freed, and it waits at the
        head of the queue to prefill its prompt and its generated tokens again (vLLM's recompute)."""
        if not self.running:  # not reached while one request fits the cache (checked at the start)
            raise ConfigError(
                "the KV cache cannot hold one sequence's next tokens: give the replica more memory"
            )
        r = self.running.pop()
        self.preempted[r] += 1
        self.waiting.appendleft(r)
        if self.s.preemption == "swap":  # all its blocks (a cached prefix's too) go out, progress kept
            self.swapped[r] = self.blocks[r]
            self.stall_s += float(self.swapped[r]) * self.s.swap_block_s
            self._release(r)
            return
        self._release(r)
        self.prompt[r] = self.input[r] + self.generated[r]
        self.done_prefill[r] = 0

    def _swap_in(self, r: int) -> bool:
        """A swapped-out sequence's blocks come back (False: not free); it goes on where it stopped."""
        need = int(self.swapped[r])
        if need > self._available():
            return False
        self._take(need)
        self.blocks[r], self.swapped[r] = need, 0
        self.stall_s += need * self.s.swap_block_s
        return True

    def _reserve_decodes(self) -> list[int]:
        """The running decodes, with a block for each one's next token (preempting the latest
        admitted until the blocks are there)."""
        while True:
            decodes = self._split()[0]
            idx = np.array(decodes, dtype=np.int64)
            # this step writes the keys and values of its fed token and its k proposals
            more = np.maximum(
                -(-(self.input[idx] + self.generated[idx] + self.k) // self.s.block_size) - self.blocks[idx],
                0,
            )
            if int(more.sum()) <= self._available():
                self._take(int(more.sum()))
                self.blocks[idx] += more
                return decodes
            self._preempt_one()

    def _admit_prefilled(self, r: int) -> bool:
        """Take the blocks of a prefilled request's prompt and first token (False: not free); it
        decodes from this step on, its first token already out."""
        tail = int(self.output[r]) + self.k if self.s.kv_admission == "reserve" else 1
        need = self._blocks_for(int(self.input[r]) + tail)
        if self.generated[r] or need > self._available():  # preempted ones re-prefill; none here
            return False
        self._take(need)
        self.blocks[r] = need
        self.done_prefill[r] = self.prompt[r]
        self.generated[r] = 1
        self.first[r] = self.last_token[r] = self.w.first_token_s[r]
        return True

    def _reserve_sequence(self, r: int) -> bool:
        """``kv_admission="reserve"``: take the blocks of ``r``'s whole sequence (prompt, output and
        speculated slots) as it is admitted; False when they are not free."""
        need = self._blocks_for(int(self.input[r] + self.output[r]) + self.k) - int(self.blocks[r])
        if need > self._available():
            return False
        self._take(max(need, 0))
        self.blocks[r] += max(need, 0)
        return True

    def _chunk(self, r: int, budget: int) -> int:
        """Prompt tokens of ``r`` to run this step within ``budget`` and the free blocks (0: none);
        their blocks are taken."""
        s = self.s
        left = int(self.prompt[r] - self.done_prefill[r])
        new = min(left, budget) if s.chunked_prefill else (left if left <= budget else 0)
        room = int(self.blocks[r] * s.block_size - self.done_prefill[r])
        if new > room + self._available() * s.block_size:
            new = room + self._available() * s.block_size if s.chunked_prefill else 0
        if new <= 0:
            return 0
        extra = self._blocks_for(max(new - room, 0))
        self._take(extra)
        self.blocks[r] += extra
        return new

    # ---- scheduling

    def _plan(self) -> tuple[list[int], list[tuple[int, int, int]]]:
        """(decoding sequences, prompt chunks (request, cached, new)) of the next continuous step."""
        s = self.s
        budget = s.max_num_batched_tokens
        chunks: list[tuple[int, int, int]] = []
        prefill_first = s.priority == "prefill"
        decodes: list[int] = []
        if not prefill_first:
            decodes = self._reserve_decodes()
            budget -= len(decodes) * (self.k + 1)
        for r in self._split()[1]:  # prompts already admitted
            new = self._chunk(r, budget) if budget > 0 else 0
            if new:
                chunks.append((r, int(self.done_prefill[r]), new))
                budget -= new
        blocked = False  # swapped-out sequences wait at the head of the queue; none passes them
        while self.waiting and self.swapped[self.waiting[0]] and len(self.running) < s.max_num_seqs:
            if not self._swap_in(self.waiting[0]):
                blocked = True
                break
            self.running.append(self.waiting.popleft())  # runs from the next step on
        while (
            not blocked
            and self.prefilled
            and self.waiting
            and budget > 0
            and len(self.running) < s.max_num_seqs
        ):
            if not self._admit_prefilled(self.waiting[0]):
                break
            decodes.append(self.waiting.popleft())
            self.running.append(decodes[-1])
            budget -= 1
        while not blocked and self.waiting and budget > 0 and len(self.running) < s.max_num_seqs:
            r = self.waiting[0]
            self._hit(r)
            if s.kv_admission == "reserve" and not self._reserve_sequence(r):
                self._release_waiting(r)
                break
            new = self._chunk(r, budget)
            if not new:  # it stays waiting, holding no blocks meanwhile
                self._release_waiting(r)
                break
            self.running.append(self.waiting.popleft())
            chunks.append((r, int(self.done_prefill[r]), new))  # after a prefix hit: past it
            budget -= new
        if prefill_first and not chunks:  # no prompt to run: this step decodes
            decodes = self._reserve_decodes()
        return decodes, chunks

    def step(self) -> None:
        """Run the next step (or stretch of decode-only steps) and advance the clock."""
        if self.s.kind == "static":
            self._static_batch()
            return
        decodes, chunks = self._plan()
        if self.stall_s:  # the swaps of this step's preemptions and resumptions, before it runs
            self._record(self.stall_s, 0)
            self.now += self.stall_s
            self.stall_s = 0.0
        if not chunks:
            if decodes:
                (self._spec_stretch if self.k else self._decode_stretch)(decodes)
            return
        d, width = len(decodes), self.k + 1
        context = float(np.sum(self.input[decodes] + self.generated[decodes])) + d * self.k
        prompt_tokens = sum(new for _, _, new in chunks)
        tokens = d * width + prompt_tokens
        ends = [r for r, cached, new in chunks if cached + new >= self.prompt[r]]
        spans = [(float(c), float(n)) for _, c, n in chunks]
        duration = self.table.seconds(tokens, d * width + len(ends), d, context, spans)
        draft = self.s.speculation.draft if self.k else None
        if draft is not None:  # the draft prefills the prompts too, and proposes for the decodes
            duration += draft.seconds(prompt_tokens, len(ends), 0, 0.0, spans)
            if d:
                duration += float(
                    np.sum(draft.decode_seconds(d, context - d * self.k + d * np.arange(self.k)))
                )
        self._record(duration, tokens)
        for r, _, new in chunks:
            self.done_prefill[r] += new
        self._cache_prefixes([r for r, _, _ in chunks])
        self.now += duration
        self.steps += 1
        emitted = np.ones(d, np.int64)  # each decode's tokens: 1, or 1 + its accepted proposals
        if d and self.k:
            left = self.output[decodes] - self.generated[decodes]
            emitted = np.minimum(self.s.speculation.accepted(self.rng, (d,)) + 1, left)
        counts = [*emitted.tolist(), *([1] * len(ends))]
        self._emit(decodes + ends, counts)

    def _emit(self, rows: list[int], counts: list[int] | None = None) -> None:
        """Each of ``rows`` produces ``counts`` tokens now (1 each by default; a prompt's end: its
        first token, or its next one after a preemption); one inter-token gap per row, as a client
        streaming the tokens sees it; a request is done at its output length."""
        t, idx = self.now, np.array(rows, dtype=np.int64)
        first = self.generated[idx] == 0
        self.first[idx[first]] = t
        self.itl.append(t - self.last_token[idx[~first]])
        self.generated[idx] += 1 if counts is None else np.array(counts, dtype=np.int64)
        self.last_token[idx] = t
        self._finish_done(idx, t)

    def _finish_done(self, idx: np.ndarray, t: float) -> None:
        """Finish those of ``idx`` that have produced their output, at ``t``."""
        done = idx[self.generated[idx] >= self.output[idx]]
        for r in done.tolist():
            self._finish(r, t)
        if len(done):
            gone = set(done.tolist())
            self.running = [r for r in self.running if r not in gone]

    def _spec_stretch(self, decodes: list[int]) -> None:
        """Decode-only steps with speculation, up to the first completion (each step emits 1 + a
        tokens per sequence, drawn now), the step during which a request arrives that could join, or
        the blocks running out; the draft's proposals add to each step."""
        s, d, k = self.s, len(decodes), self.k
        idx = np.array(decodes)
        left = self.output[idx] - self.generated[idx]
        m = int(left.min())  # every step emits at least one token: a completion within m steps
        emitted = np.minimum(s.speculation.accepted(self.rng, (m, d)) + 1, left)
        cum = np.cumsum(emitted, axis=0)
        done = (cum >= left).any(axis=1)
        steps = int(np.argmax(done)) + 1 if done.any() else m
        before = np.vstack([np.zeros((1, d), np.int64), cum[:-1]])  # tokens emitted before each step
        kv = self.input[idx] + self.generated[idx] + k  # keys of each sequence's first step
        contexts = (kv[None, :] + before).sum(axis=1).astype(float)
        durations = self.table.decode_seconds(d, contexts[:steps])
        if s.speculation.draft is not None:
            grid = contexts[:steps, None] - d * k + d * np.arange(k)[None, :]
            durations = durations + s.speculation.draft.decode_seconds(d, grid.ravel()).reshape(
                grid.shape
            ).sum(axis=1)
        if self.next_arrival < self.released and len(self.running) < s.max_num_seqs:
            ends = np.cumsum(durations)
            steps = min(
                steps, int(np.searchsorted(ends, self.arrival[self.next_arrival] - self.now, side="left")) + 1
            )
        # every position the n steps may write: the keys of the fed tokens and the proposals
        steps = self._steps_in_blocks(idx, lambda n: kv + before[n - 1], steps)
        durations = durations[:steps]
        ends = self.now + np.cumsum(durations)
        self._record(float(ends[-1] - self.now), d * (k + 1), steps=steps)
        self.steps += steps
        self.itl.append(ends[0] - self.last_token[idx])
        self.itl.append(np.repeat(durations[1:], d))
        self.generated[idx] += cum[steps - 1]
        self.last_token[idx] = ends[-1]
        self.now = float(ends[-1])
        self._finish_done(idx, self.now)

    def _decode_stretch(self, decodes: list[int]) -> None:
        """k decode-only steps at once (each decode already has a block for its first token): k stops
        at the first completion, at the step during which a request arrives that could join, and
        where the free blocks could not hold the stretch's tokens (their blocks are taken now)."""
        s, d = self.s, len(decodes)
        idx = np.array(decodes)
        kv = self.input[idx] + self.generated[idx]  # tokens held after this step's is written
        k = int((self.output[idx] - self.generated[idx]).min())
        durations = self.table.decode_seconds(d, float(kv.sum()) + d * np.arange(k))
        if self.next_arrival < self.released and len(self.running) < s.max_num_seqs:
            ends = np.cumsum(durations)
            k = min(
                k, int(np.searchsorted(ends, self.arrival[self.next_arrival] - self.now, side="left")) + 1
            )
        k = self._steps_in_blocks(idx, lambda n: kv + n - 1, k)
        durations = durations[:k]
        end = self.now + float(np.sum(durations))
        self._record(end - self.now, d, steps=k)
        self.steps += k
        # a sequence's first gap runs from its last token (before the steps that held it back)
        self.itl.append(self.now + durations[0] - self.last_token[idx])
        self.itl.append(np.repeat(durations[1:], d))
        self.generated[idx] += k
        self.last_token[idx] = end
        self.now = end
        self._finish_done(idx, end)

    def _steps_in_blocks(self, idx: np.ndarray, held: Callable[[int], np.ndarray], k: int) -> int:
        """The largest k' ≤ k decode steps whose tokens fit the held and the free blocks (1 at
        least: the first step's blocks are reserved), ``held(n)`` being each sequence's tokens
        after n steps; their blocks are taken."""
        bs = self.s.block_size

        def need(steps: int) -> np.ndarray:
            return np.maximum(-(-held(steps) // bs) - self.blocks[idx], 0)

        if int(need(k).sum()) > self._available():
            low, high = 1, k  # need(low) fits, need(high) does not
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if int(need(mid).sum()) <= self._available() else (low, mid)
            k = low
        grow = need(k)
        self._take(int(grow.sum()))
        self.blocks[idx] += grow
        return k

    def _static_batch(self) -> None:
        """A static batch: up to ``max_num_seqs`` waiting requests whose prompts fit the token budget
        and whose whole sequences fit the free blocks, prefilled together and decoded until the
        longest is done (the finished ones stay in the batch as padding)."""
        s = self.s
        batch: list[int] = []
        tokens = 0
        while self.waiting and len(batch) < s.max_num_seqs:
            r = self.waiting[0]
            need = self._blocks_for(int(self.input[r] + self.output[r]))
            if tokens + self.input[r] > s.max_num_batched_tokens or need > self._available():
                break
            batch.append(self.waiting.popleft())
            self._take(need)
            self.blocks[r] = need
            tokens += int(self.input[r])
        if not batch:
            return
        self.running = batch
        spans = [(0.0, float(self.input[r])) for r in batch]
        d = len(batch)
        duration = self.table.seconds(tokens, d, 0, 0.0, spans)
        self._record(duration, tokens)
        self.done_prefill[batch] = self.input[batch]
        self.now += duration
        self.steps += 1
        self._emit(list(batch))
        idx = np.array(batch)
        steps = int((self.output[idx] - 1).max())
        if steps:
            # every step decodes the whole batch; a finished sequence's context stops growing
            grown = np.minimum(np.arange(steps)[:, None], (self.output[idx] - 1)[None, :])
            contexts = (self.input[idx] + 1 + grown).sum(axis=1).astype(float)
            durations = self.table.decode_seconds(d, contexts)
            ends = self.now + np.cumsum(durations)
            self._record(float(ends[-1] - self.now), d, steps=steps)
            self.steps += steps
            for r in batch:
                n = int(self.output[r] - 1)
                if n:
                    self.itl.append(durations[:n])
                    self.generated[r] += n
                    self._finish(r, float(ends[n - 1]))
            self.now = float(ends[-1])
        self.running = []

    def _record(self, duration: float, tokens: int, steps: int = 1) -> None:
        tl = self.timeline
        tl["start_s"].append(self.now)
        tl["duration_s"].append(duration)
        tl["steps"].append(steps)
        tl["running"].append(len(self.running))
        tl["waiting"].append(len(self.waiting))
        tl["kv_blocks"].append(self.s.kv_blocks - self.free_blocks)
        tl["tokens"].append(tokens)

    def run(self) -> Simulation:
        while self.left:
            self._admit_arrivals()
            if not self.running and not self.waiting:
                self.now = max(self.now, float(self.arrival[self.next_arrival]))
                continue
            before = (self.now, self.steps)
            self.step()
            if (self.now, self.steps) == before:  # nothing could run: only an arrival changes that
                if self.next_arrival >= self.released:
                    raise ConfigError("the engine cannot schedule the waiting requests (token or KV budget)")
                self.now = max(self.now, float(self.arrival[self.next_arrival]))
        itl = np.concatenate(self.itl) if self.itl else np.zeros(0)
        tl = {k: np.array(v) for k, v in self.timeline.items()}
        return Simulation(
            self.first, self.finish, self.arrival, self.preempted, itl, self.steps, tl, self.hit_tokens
        )


def simulate(workload: Workload, table: StepTable, scheduler: Scheduler) -> Simulation:
    """Serve ``workload`` on one replica whose steps take ``table``'s times (module docstring)."""
    return _Engine(workload, table, scheduler).run()


def simulate_replicas(
    workload: Workload, table: StepTable, scheduler: Scheduler, replicas: int
) -> Simulation:
    """Serve ``workload`` on ``replicas`` identical replicas, request i on replica i mod replicas
    (round robin; a closed loop's users likewise). The per-request arrays are in the workload's
    order; the timeline is replica 0's."""
    if replicas < 1:
        raise ConfigError(f"replicas must be >= 1, got {replicas}")
    w, n = workload, workload.size
    parts = []
    for i in range(min(replicas, n)):
        idx = np.arange(i, n, replicas)
        users = len(range(i, w.concurrency, replicas)) if w.concurrency else 0
        first = None if w.first_token_s is None else w.first_token_s[idx]
        prefixes = (None, None) if w.prefix_id is None else (w.prefix_id[idx], w.prefix_len[idx])
        part = Workload(w.arrival_s[idx], w.input_len[idx], w.output_len[idx], users, first, *prefixes)
        parts.append((idx, simulate(part, table, scheduler)))
    merged = {k: np.full(n, np.nan) for k in ("first_token_s", "finish_s", "arrival_s")}
    counts = {k: np.zeros(n, np.int64) for k in ("preemptions", "hit_tokens")}
    for idx, sim in parts:
        for k, values in (merged | counts).items():
            values[idx] = getattr(sim, k)
    itl = np.concatenate([sim.itl_s for _, sim in parts])
    steps = sum(sim.steps for _, sim in parts)
    return Simulation(itl_s=itl, steps=steps, timeline=parts[0][1].timeline, **merged, **counts)


@dataclass(frozen=True)
class Pool:
    """Replicas of one engine: their step table, scheduler and how many."""

    table: StepTable
    scheduler: Scheduler
    replicas: int = 1


def simulate_disaggregated(
    workload: Workload, prefill: Pool, decode: Pool, transfer_s: np.ndarray
) -> Simulation:
    """Disaggregated serving (DistServe, Zhong et al. 2024; Splitwise, Patel et al. 2024): the prefill
    pool runs each prompt and emits its first token; the prompt's KV cache then moves to a decode
    replica (``transfer_s`` per request), where the request waits for blocks and decodes. The
    timeline is the decode pool's replica 0."""
    if workload.concurrency:
        raise ConfigError("disaggregated serving takes an open-loop workload (poisson, gamma or a trace)")
    w = workload
    ones = np.ones(w.size, dtype=np.int64)
    prompts = Workload(w.arrival_s, w.input_len, ones, prefix_id=w.prefix_id, prefix_len=w.prefix_len)
    first = simulate_replicas(prompts, prefill.table, prefill.scheduler, prefill.replicas)
    t_first = first.first_token_s
    finish = t_first.copy()
    itl, preempted = [], first.preemptions.copy()
    timeline = first.timeline
    steps = first.steps
    more = np.flatnonzero(w.output_len > 1)
    if len(more):
        ready = t_first[more] + transfer_s[more]
        order = more[np.argsort(ready, kind="stable")]
        moved = Workload(
            np.sort(ready, kind="stable"),
            w.input_len[order],
            w.output_len[order],
            first_token_s=t_first[order],
        )
        second = simulate_replicas(moved, decode.table, decode.scheduler, decode.replicas)
        finish[order] = second.finish_s
        preempted[order] += second.preemptions
        itl.append(second.itl_s)
        timeline, steps = second.timeline, steps + second.steps
    itl_s = np.concatenate(itl) if itl else np.zeros(0)
    arrival = w.arrival_s.astype(float)
    return Simulation(t_first, finish, arrival, preempted, itl_s, steps, timeline, first.hit_tokens)


PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class SLO:
    """Service-level objectives of a request: time to first token and time per output token."""

    ttft_ms: float = float("inf")
    tpot_ms: float = float("inf")

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"slo.{name} must be positive, got {getattr(self, name)}")


def serving_metrics(sim: Simulation, workload: Workload, slo: SLO, kv_blocks: int) -> dict[str, float]:
    """Latency percentiles and throughput of a simulation, as serving benchmarks report them
    (vLLM's ``benchmark_serving``): per request TTFT = first token − arrival, end-to-end latency
    (e2e) = last token − arrival, TPOT = (e2e − TTFT)/(output − 1) (requests of one output token
    have none), and every inter-token latency (ITL); throughput over the span from the first
    arrival to the last token. Goodput (DistServe, Zhong et al. 2024): requests per second that meet
    every SLO. KV-cache utilisation is time-weighted over replica 0's steps."""
    ttft = sim.first_token_s - sim.arrival_s
    e2e = sim.finish_s - sim.arrival_s
    out = workload.output_len
    many = out > 1
    tpot = (e2e[many] - ttft[many]) / (out[many] - 1)
    span = float(np.max(sim.finish_s) - np.min(sim.arrival_s))
    ok = (ttft * 1e3 <= slo.ttft_ms) & np.where(
        many, (e2e - ttft) / np.maximum(out - 1, 1) * 1e3 <= slo.tpot_ms, True
    )
    m: dict[str, float] = {}
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", sim.itl_s), ("e2e", e2e)):
        values = values if len(values) else np.zeros(1)
        m[f"{name}_mean_ms"] = float(np.mean(values) * 1e3)
        for p in PERCENTILES:
            m[f"{name}_p{p}_ms"] = float(np.percentile(values, p) * 1e3)
    m["itl_max_ms"] = float(np.max(sim.itl_s) * 1e3) if len(sim.itl_s) else 0.0
    tl = sim.timeline
    busy = float(np.sum(tl["duration_s"]))
    m |= {
        "requests": float(workload.size),
        "duration_s": span,
        "throughput_requests_per_s": workload.size / span,
        "throughput_tokens_per_s": float(np.sum(out)) / span,
        "input_tokens_per_s": float(np.sum(workload.input_len)) / span,
        "goodput_requests_per_s": float(np.sum(ok)) / span,
        "slo_attainment": float(np.mean(ok)),
        "preemptions": float(np.sum(sim.preemptions)),
        "prefix_hit_rate": float(np.sum(sim.hit_tokens) / np.sum(workload.input_len)),
        "kv_utilisation_mean": float(np.sum(tl["kv_blocks"] * tl["duration_s"]) / busy / kv_blocks)
        if busy
        else 0.0,
        "kv_utilisation_peak": float(np.max(tl["kv_blocks"]) / kv_blocks) if len(tl["kv_blocks"]) else 0.0,
        "steps": float(sim.steps),
    }
    return m
