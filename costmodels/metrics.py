"""FLOP counts behind MFU and HFU, and throughput conversions.

* **Model FLOPs** (MFU numerator): the matmul and attention FLOPs of the forward and backward
  passes of the model itself, without recomputation. Two conventions for the attention scores:
  - ``attention="causal"`` (the default of every dse figure): the ``s(s+1)/2`` query-key pairs a
    causal mask leaves, as NeMo and Megatron-Bridge count them (their FLOP formulas halve the
    ``s²`` attention term for causal self-attention) and as a fused causal kernel executes them.
    Every modelled kernel runs at most at its peak and executes at least these FLOPs, so MFU ≤ 1
    at any sequence length.
  - ``attention="full"``: the whole ``s×s`` score matrix, as PaLM (Chowdhery et al. 2022, App. B),
    Megatron-LM (Narayanan et al. 2021, Eq. 3 without the recompute term) and the BLOOM logs count
    it; for a GPT ``72·B·s·l·h²·(1 + s/6h + V/12lh)`` per batch of ``B`` sequences (a test checks
    it). Use it to compare with figures published that way (``dse.convert attention=full``); it
    exceeds the executed FLOPs of a causal kernel, and at long sequences MFU by it can pass 1.
* **Hardware FLOPs** (HFU numerator): model FLOPs plus the forward FLOPs recomputed in the backward
  pass (all layers' forward for full recomputation, the attention core for selective).

Elementwise ops are excluded from both, as in those definitions. A state-space scan counts where it
runs on tensor cores (Mamba-2's SSD and Gated DeltaNet's chunked form: kind ``attention``), not where
it is a vector recurrence (Mamba's selective scan, any one-token step), like the elementwise ops.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from costmodels.architectures import ModelSpec
from costmodels.errors import ConfigError
from costmodels.hardware import Hardware
from costmodels.memory import GiB
from costmodels.workload import STAGE_LAYER, Op, forward_ops, training_batch, training_ops

SECONDS_PER_DAY = 86_400.0


def _matmul_flops(ops: list[Op]) -> float:
    """GEMM FLOPs of matmul ops plus attention-matmul FLOPs (no bias adds, no elementwise)."""
    return sum(
        (op.gemm_flops if op.kind == "matmul" else op.flops) * op.count
        for op in ops
        if op.kind in ("matmul", "attention")
    )


ATTENTION_COUNTS = ("causal", "full")


def _causal(attention: str) -> bool:
    if attention not in ATTENTION_COUNTS:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTION_COUNTS)}, got {attention!r}")
    return attention == "causal"


def model_flops_per_sequence(spec: ModelSpec, seq_len: int, attention: str = "causal") -> float:
    """Forward + backward matmul and attention FLOPs of one training sequence (the MFU count), the
    attention scores counted by ``attention`` (module docstring)."""
    return _matmul_flops(training_ops(spec, 1, seq_len, causal=_causal(attention), fused_attention=False))


def recompute_flops_per_sequence(
    spec: ModelSpec, seq_len: int, recompute: str, attention: str = "causal"
) -> float:
    """Extra forward FLOPs re-executed in the backward pass: all layer ops (full) or the attention
    core (selective: QKᵀ and AV, Korthikanti et al. 2022 Sec. 5); the same attention convention."""
    if recompute == "none":
        return 0.0
    fwd = forward_ops(spec, training_batch(spec, 1, seq_len, causal=_causal(attention)))
    if recompute == "selective":
        return _matmul_flops([op for op in fwd if op.core])
    return _matmul_flops([op for op in fwd if op.stage == STAGE_LAYER])


def tokens_per_day(samples_per_s: float, seq_len: int) -> float:
    """samples/s · tokens per sample · 86,400 s."""
    return samples_per_s * seq_len * SECONDS_PER_DAY


def mfu(model_flops_per_s: float, num_devices: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' aggregate dense peak."""
    return model_flops_per_s / (num_devices * peak_flops)


def cost_usd_per_mtoken(devices: Any, hw: Hardware, tokens_per_s: Any) -> Any:
    """Dollars per million tokens: devices · price per device-hour / 3600 / (tokens/s) · 10⁶; NaN
    when the hardware has no price (0), so an unknown cost is never reported as free."""
    price = jnp.where(hw.price_usd_per_hour > 0, hw.price_usd_per_hour, jnp.nan)
    return devices * price / 3600.0 / tokens_per_s * 1e6


def energy_j_per_token(devices: Any, hw: Hardware, tokens_per_s: Any) -> Any:
    """Joules per token at the devices' rated power: devices · power_w / (tokens/s); NaN when the
    hardware has no power figure (0)."""
    power = jnp.where(hw.power_w > 0, hw.power_w, jnp.nan)
    return devices * power / tokens_per_s


def system_metrics(devices: Any, hw: Hardware, tokens_per_s: Any, memory_bytes: Any) -> dict[str, Any]:
    """What every problem reports about the system that runs a workload at ``tokens_per_s`` on
    ``devices`` devices of ``hw`` with ``memory_bytes`` per device: ``power_w`` = devices · rated
    power, ``cost_usd_per_mtoken``, ``energy_j_per_token`` (both above) and ``memory_gib``."""
    return {
        "memory_gib": memory_bytes / GiB,
        "power_w": devices * hw.power_w,
        "cost_usd_per_mtoken": cost_usd_per_mtoken(devices, hw, tokens_per_s),
        "energy_j_per_token": energy_j_per_token(devices, hw, tokens_per_s),
    }
