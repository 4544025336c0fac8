"""One inference deployment, the plan every inference tool reads. ``dse.calc mode=inference``, the
static inference search (``dse/search.py``) and the validator's inference cases take the cost
model's job from :meth:`ServingPlan.job` and price one static batch on its ``tp``·``pp`` devices
(``inference.inference_step``). ``dse.serve``, the serving search (``search/serving.py``) and the
validator's serving cases call :meth:`ServingPlan.deploy`, which sizes the KV cache
(``serving.kv_capacity_tokens``), builds the step tables (``serving.step_table``; the draft model's
too) and the engines (``requests.Scheduler``), and returns a :class:`Deployment` that simulates a
workload colocated or disaggregated. A new inference knob is a field here and its use in ``job`` or
``deploy``; each tool only reads it from its input. A knob one path does not model is refused there
in one line, not ignored (``deploy``: offloading, speculation across pipeline stages, and expert
parallelism beyond single-device engines).

A replica of ``pp`` pipeline stages serves as ``pp`` engines, each with its own scheduler, its own
``max_num_seqs`` and ``max_num_batched_tokens`` budgets and 1/pp of the replica's KV blocks (vLLM's
virtual engines: ``num_gpu_blocks // pipeline_parallel_size`` per scheduler); their steps fill the
stages in turn, so each engine's step takes its own pass through all ``pp`` stages
(``serving.step_table``) and the engines do not slow one another (exact while their batches are
alike: round robin over equal requests). A replica of ``ep`` devices spreads a MoE's experts over
them, each device an engine with data-parallel attention (``serving`` module docstring): ``ep``
engines of 1/ep of the replica's KV cache each. Requests go round robin over every engine of every
replica.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from costmodels.architectures import ModelSpec
from costmodels.errors import ConfigError
from costmodels.hardware import Hardware
from costmodels.inference import InferenceJob, engine_preset
from costmodels.requests import (
    Pool,
    Scheduler,
    Simulation,
    Speculation,
    Workload,
    simulate_disaggregated,
    simulate_replicas,
)
from costmodels.serving import StepTable, kv_capacity_tokens, kv_swap_block_s, kv_transfer_s, step_table


@dataclass(frozen=True)
class ServingPlan:
    """Replicas of ``tp`` devices, the engine's scheduling and KV-cache settings, speculation, and an
    optional pool of ``prefill_replicas`` prefill-only replicas of ``prefill_tp`` devices
    (disaggregated serving; its KV cache moves over the scale-out link, or the scale-up one, or in
    no time). The defaults are vLLM's V1 engine with host launches hidden (CUDA graphs)."""

    tp: int = 1
    pp: int = 1  # pipeline stages of a replica (the simulator: pp engines per replica, module docstring)
    ep: int = 1  # devices a replica spreads a MoE's experts over, one engine each (module docstring)
    replicas: int = 1
    launch: str = "tensorrt-llm"  # the engine preset of inference.ENGINES (its host launch times)
    kv_precision: str | None = None
    attention_precision: str | None = None
    fused_attention: bool = True
    offload_weights: float = 0.0  # fractions kept in host memory (the static model)
    offload_kv: float = 0.0
    scheduler: str = "continuous"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    priority: str = "decode"
    block_size: int = 16
    kv_admission: str = "on_demand"
    preemption: str = "recompute"  # or "swap": a preempted sequence's blocks go to host memory
    prefix_caching: bool = False
    kv_cache_tokens: int | None = None  # per replica (its pp·ep engines share it); None: what memory leaves
    speculative_tokens: int = 0
    speculative_acceptance: float = 0.7
    speculative_seed: int = 0
    prefill_replicas: int = 0
    prefill_tp: int | None = None
    across_nodes: bool = True
    ideal_network: bool = False
    # (field, the tool's key for it) pairs, so that a refusal names the key the user set: dse.serve
    # passes ("speculative_tokens", "speculative.tokens"), ...; a field not listed is named as itself
    keys: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        k = self.key
        for name in ("tp", "pp", "ep", "replicas"):  # the engine checks its own (below)
            if getattr(self, name) < 1:
                raise ConfigError(f"{k(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("prefill_replicas", "speculative_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{k(name)} must be >= 0, got {getattr(self, name)}")
        if self.prefill_tp is not None and self.prefill_tp < 1:
            raise ConfigError(f"{k('prefill_tp')} must be >= 1, got {self.prefill_tp}")
        self.engine(kv_blocks=1)  # the engine's settings, checked where the engine defines them
        for name in ("offload_weights", "offload_kv"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{k(name)} is a fraction in [0, 1], got {getattr(self, name)}")

    def _check_expert_parallel(self, spec: ModelSpec) -> None:
        """Expert parallelism as the simulator runs it (module docstring): a MoE model, one device per
        engine (tp = pp = 1), whole experts per device, colocated and without speculation."""
        k, ep = self.key, f"{self.key('ep')}={self.ep}"
        if spec.moe is None:
            raise ConfigError(f"{ep}: {spec.model_type} has no experts to spread; set {k('ep')}=1")
        if spec.moe.num_experts % self.ep:
            raise ConfigError(f"{ep} must divide the {spec.moe.num_experts} experts of {spec.model_type}")
        for name, neutral in (("tp", 1), ("pp", 1), ("prefill_replicas", 0), ("speculative_tokens", 0)):
            if getattr(self, name) != neutral:
                raise ConfigError(
                    f"{ep} with {k(name)}={getattr(self, name)}: the request simulator spreads experts "
                    f"over single-device engines (data-parallel attention); set {k(name)}={neutral} or "
                    f"{k('ep')}=1"
                )

    def key(self, name: str) -> str:
        """The user's key for field ``name`` (``keys``; the field's own name by default)."""
        return dict(self.keys).get(name, name)

    @property
    def prefill_devices(self) -> int:
        """Tensor parallelism of a prefill-only replica."""
        return self.tp if self.prefill_tp is None else self.prefill_tp

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.ep * self.replicas + self.prefill_devices * self.prefill_replicas

    def job(self, spec: ModelSpec, precision: str, input_len: int, output_len: int) -> InferenceJob:
        """The cost model's job for requests of up to ``input_len`` + ``output_len`` tokens."""
        return InferenceJob(
            spec,
            input_len,
            output_len,
            precision,
            self.kv_precision,
            self.fused_attention,
            engine=engine_preset(self.launch, "launch"),
            attention_precision=self.attention_precision,
        )

    def engine(
        self, kv_blocks: int, speculation: Speculation | None = None, swap_block_s: float = 0.0
    ) -> Scheduler:
        """The scheduler of one replica with ``kv_blocks`` blocks (``swap_block_s``: moving one to
        host memory, for swap preemption)."""
        return Scheduler(
            kind=self.scheduler,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            chunked_prefill=self.chunked_prefill,
            priority=self.priority,
            block_size=self.block_size,
            kv_blocks=kv_blocks,
            prefix_caching=self.prefix_caching,
            speculation=speculation,
            kv_admission=self.kv_admission,
            preemption=self.preemption,
            swap_block_s=swap_block_s,
        )

    def deploy(
        self,
        hw: Hardware,
        spec: ModelSpec,
        precision: str,
        input_len: int,
        output_len: int,
        *,
        draft: ModelSpec | None = None,
        tables: dict[tuple[Any, ...], StepTable] | None = None,
        cover: tuple[int, int] = (0, 0),
    ) -> Deployment:
        """The deployment serving requests of up to ``input_len`` + ``output_len`` tokens: KV cache,
        step tables (``draft``: the speculating draft model's) and engines. ``tables`` caches the
        step tables across plans of one hardware, model and precision (the caller keeps one dict per
        such triple), built to ``cover`` (tokens, sequences) per step at least, so that one table
        serves every budget of a search."""
        k = self.key
        for name, neutral in (("offload_weights", 0.0), ("offload_kv", 0.0)):
            if getattr(self, name) != neutral:
                raise ConfigError(
                    f"{k(name)}={getattr(self, name)}: the request simulator runs whole replicas of tp "
                    f"devices with the weights and cache in device memory; set {k(name)}={neutral} (dse.calc "
                    "mode=inference prices it for one static batch)"
                )
        if self.pp > 1 and self.speculative_tokens:
            spec_key, pp_key = k("speculative_tokens"), k("pp")
            raise ConfigError(
                f"{spec_key}={self.speculative_tokens} with {pp_key}={self.pp}: the request simulator "
                f"speculates on replicas of one pipeline stage; set {pp_key}=1 or {spec_key}=0"
            )
        if self.ep > 1:
            self._check_expert_parallel(spec)
        job = self.job(spec, precision, input_len, output_len)
        if spec.ssm is not None:  # a sequence's recurrent state is one slot, not blocks of tokens
            for name, neutral in (
                ("speculative_tokens", 0),
                ("prefix_caching", False),
                ("preemption", "recompute"),
            ):
                if getattr(self, name) != neutral:
                    raise ConfigError(
                        f"{k(name)}={getattr(self, name)}: {spec.model_type} keeps a recurrent state per "
                        "sequence, which the simulator does not roll back, share or swap: "
                        f"{k(name)}={neutral}"
                    )
        if spec.num_heads % self.tp or (self.prefill_replicas and spec.num_heads % self.prefill_devices):
            tp_key = k("tp") if spec.num_heads % self.tp else k("prefill_tp")
            raise ConfigError(f"{tp_key} must divide num_attention_heads={spec.num_heads}")
        context = input_len + output_len
        cache = {} if tables is None else tables
        width = self.speculative_tokens + 1

        budget, seqs = max(self.max_num_batched_tokens, cover[0]), max(self.max_num_seqs, cover[1])

        def table(
            model_job: InferenceJob, tp: int, width_: int, what: str, pp: int = 1, ep: int = 1
        ) -> StepTable:
            key = (
                what,
                self.launch,
                self.kv_precision,
                self.attention_precision,
                tp,
                pp,
                ep,
                budget,
                seqs,
                context,
                width_,
            )
            if key not in cache:
                cache[key] = step_table(hw, model_job, tp, budget, seqs, context, width_, pp, ep)
            return cache[key]

        def kv_blocks(tp: int, pp: int = 1, ep: int = 1) -> int:
            """Blocks of one engine: the replica's KV tokens split over its ``pp``·``ep`` engines."""
            tokens = (
                self.kv_cache_tokens
                or kv_capacity_tokens(hw, job, tp, self.max_num_batched_tokens, self.max_num_seqs, pp, ep)
            ) // (pp * ep)
            if tokens < context + self.speculative_tokens:
                where = f"tp={tp}" + (f", pp={pp}" if pp > 1 else "") + (f", ep={ep}" if ep > 1 else "")
                per = " per engine" if pp * ep > 1 else ""
                raise ConfigError(
                    f"{spec.model_type} on {where} leaves {tokens:,} tokens of KV cache{per} on {hw.name}, "
                    f"fewer than one request's {context:,}: raise {k('tp')} or lower "
                    f"{k('max_num_batched_tokens')}"
                )
            return tokens // self.block_size

        speculation = None
        if self.speculative_tokens:
            draft_table = None
            if draft is not None:
                draft_job = replace(job, spec=draft)
                draft_table = table(draft_job, self.tp, 1, f"draft {draft.model_type} {draft.num_layers}")
            speculation = Speculation(
                self.speculative_tokens, self.speculative_acceptance, draft_table, self.speculative_seed
            )

        def swap_s(tp: int, pp: int = 1) -> float:
            return kv_swap_block_s(hw, job, tp, self.block_size, pp) if self.preemption == "swap" else 0.0

        decode_blocks = kv_blocks(self.tp, self.pp, self.ep)
        decode_engine = self.engine(decode_blocks, speculation, swap_s(self.tp, self.pp))
        decode_table = table(job, self.tp, width, "target", self.pp, self.ep)
        decode = Pool(decode_table, decode_engine, self.replicas * self.pp * self.ep)
        prefill = None
        if self.prefill_replicas:
            blocks = kv_blocks(self.prefill_devices)
            prefill_table = table(job, self.prefill_devices, 1, "target")
            prefill_engine = self.engine(blocks, swap_block_s=swap_s(self.prefill_devices))
            prefill = Pool(prefill_table, prefill_engine, self.prefill_replicas)
        return Deployment(self, hw, job, decode, prefill)


@dataclass(frozen=True)
class Deployment:
    """A :class:`ServingPlan` made concrete: its job, its decode pool (the only pool, colocated) and
    its prefill pool (disaggregated)."""

    plan: ServingPlan
    hw: Hardware
    job: InferenceJob
    decode: Pool
    prefill: Pool | None = None

    @property
    def kv_blocks(self) -> int:
        """KV-cache blocks of one decode engine (a replica of pp stages runs pp of them)."""
        return self.decode.scheduler.kv_blocks

    def transfer_s(self, workload: Workload) -> np.ndarray:
        """Moving each request's prompt cache from its prefill replica to a decode replica."""
        if self.plan.ideal_network:
            return np.zeros(workload.size)
        return kv_transfer_s(
            self.hw, self.job, self.plan.prefill_devices, workload.input_len, self.plan.across_nodes
        )

    def simulate(self, workload: Workload) -> Simulation:
        """Serve ``workload``: round robin over the replicas, through the prefill pool first when
        there is one."""
        if self.prefill is not None:
            return simulate_disaggregated(workload, self.prefill, self.decode, self.transfer_s(workload))
        return simulate_replicas(workload, self.decode.table, self.decode.scheduler, self.decode.replicas)
