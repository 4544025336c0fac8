"""Human-readable numbers for tables (JSON output keeps raw SI values)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

_SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_BINARY = ((2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def fmt_count(value: float, unit: str = "") -> str:
    """1.5e12 → '1.50 T' + unit (decimal prefixes)."""
    for scale, prefix in _SI:
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.4g} {unit}".rstrip()


def fmt_bytes(value: float) -> str:
    """Binary units: 549755813888 → '512.00 GiB'."""
    for scale, unit in _BINARY:
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def fmt_time(seconds: float) -> str:
    """0.0123 → '12.30 ms'."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.2f} {unit}"
    return f"{seconds / 1e-9:.2f} ns"


def fmt_cell(value: Any) -> str:
    """One table cell: floats to 4 significant digits, booleans yes/no, None empty, else str."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def fmt_breakdown(total_s: float, parts_s: dict[str, float]) -> str:
    """'2.65 s = compute 2.41 s + dp comm 239.91 ms': a time and its non-zero parts (keys end in _s)."""
    terms = [f"{k.removesuffix('_s').replace('_', ' ')} {fmt_time(v)}" for k, v in parts_s.items() if v > 0]
    return f"{fmt_time(total_s)} = " + " + ".join(terms)


def fmt_power(watts: float) -> str:
    """716800 → '716.8 kW'."""
    for scale, unit in ((1e6, "MW"), (1e3, "kW")):
        if abs(watts) >= scale:
            return f"{watts / scale:.1f} {unit}"
    return f"{watts:.0f} W"


class MetricFormat(NamedTuple):
    """How a metric reads to a person: in a sentence (``label``: ``text(v)``) and in a table column
    (``header``: ``cell(v)``)."""

    label: str
    header: str
    text: Callable[[float], str]
    cell: Callable[[float], str]


def _usd(v: float) -> str:
    return f"${v:.3g}"


# metric name → its formats: the one place that says how a metric reads to a person
METRIC_FORMATS: dict[str, MetricFormat] = {
    "step_time_s": MetricFormat("step time", "step time", fmt_time, fmt_time),
    "ttft_s": MetricFormat("TTFT", "TTFT", fmt_time, fmt_time),
    "tpot_s": MetricFormat("TPOT", "TPOT", fmt_time, fmt_time),
    "latency_s": MetricFormat("request latency", "latency", fmt_time, fmt_time),
    "mfu": MetricFormat("MFU", "MFU", lambda v: f"{v:.1%}", lambda v: f"{v:.1%}"),
    "tokens_per_s": MetricFormat("throughput", "tokens/s", lambda v: fmt_count(v, "tokens/s"), fmt_count),
    "memory_gib": MetricFormat(
        "memory per device", "memory", lambda v: f"{v:.1f} GiB", lambda v: f"{v:.1f} GiB"
    ),
    "power_w": MetricFormat("power", "power", fmt_power, fmt_power),
    "cost_usd_per_mtoken": MetricFormat("cost", "$/M tokens", lambda v: f"{_usd(v)} per M tokens", _usd),
    "energy_j_per_token": MetricFormat(
        "energy per token", "J/token", lambda v: f"{v:.3g} J", lambda v: f"{v:.3g} J"
    ),
    "tokens_per_joule": MetricFormat(
        "energy efficiency", "tokens/J", lambda v: f"{v:.3g} tokens/J", lambda v: f"{v:.3g}"
    ),
    "global_batch": MetricFormat(
        "global batch", "batch", lambda v: f"{v:,.0f} sequences", lambda v: f"{v:,.0f}"
    ),
}


def metric_label(name: str) -> str:
    """'step_time_s' → 'step time'; an unknown name is returned as is."""
    return METRIC_FORMATS[name].label if name in METRIC_FORMATS else name


def metric_header(name: str) -> str:
    """A table column's header: 'tokens_per_s' → 'tokens/s'; an unknown name is returned as is."""
    return METRIC_FORMATS[name].header if name in METRIC_FORMATS else name


def fmt_metric(name: str, value: float) -> str:
    """A metric value in human units ('7.07 s', '52.7%', '1.19 M tokens/s', '$2.94 per M tokens')."""
    return METRIC_FORMATS[name].text(float(value)) if name in METRIC_FORMATS else fmt_cell(float(value))


def fmt_metric_cell(name: str, value: Any) -> str:
    """A table cell: a metric in its compact unit ('1.19 M', '$2.94'), anything else by :func:`fmt_cell`."""
    return METRIC_FORMATS[name].cell(float(value)) if name in METRIC_FORMATS else fmt_cell(value)


# --------------------------------------------------------------------------------------------
# Phrases of a "why" line: what binds a winner

BINDS_AT = 0.95  # a resource used to at least this fraction of its limit binds the design


def share(part: float, total: float) -> str:
    """0.25, 1.0 → '25%'; a share that rounds to 0 but is not → '<1%'."""
    x = part / total
    return "<1%" if 0 < x < 0.005 else f"{x:.0%}"


def binds(used: float, limit: float) -> str:
    """' (binds)' when ``used`` reaches :data:`BINDS_AT` of ``limit``, else ''."""
    return " (binds)" if used >= BINDS_AT * limit else ""


def step_shares(step_s: float, parts_s: Mapping[str, float]) -> list[str]:
    """Where a training step goes, largest groups first: the compute share, the exposed communication
    share with each group's (``<group>_comm_s`` parts, as in ``costmodels.training.TIME_FIELDS``),
    and the recompute, weight-streaming and pipeline-bubble shares when present. For 10 s with
    compute 8, dp 1.5, tp 0.5: ['compute is 80% of the step', 'communication 20% (dp 15%, tp 5%)']."""
    out = [f"compute is {share(parts_s.get('compute_s', 0.0), step_s)} of the step"]
    comm = {k.removesuffix("_comm_s"): v for k, v in parts_s.items() if k.endswith("_comm_s") and v > 0}
    if comm:
        detail = ", ".join(f"{k} {share(v, step_s)}" for k, v in sorted(comm.items(), key=lambda kv: -kv[1]))
        out.append(f"communication {share(sum(comm.values()), step_s)} ({detail})")
    for key, name in (
        ("recompute_s", "recompute"),
        ("stream_s", "weight streaming"),
        ("bubble_s", "pipeline bubble"),
    ):
        if parts_s.get(key, 0.0) > 0:
            out.append(f"{name} {share(parts_s[key], step_s)}")
    return out


def memory_phrase(used_gib: float, capacity_gib: float, per: str = "device") -> str:
    """'memory 56.3 of 64.5 GiB per die' and ' (binds)' at :data:`BINDS_AT` of the capacity."""
    return f"memory {used_gib:.1f} of {capacity_gib:.1f} GiB per {per}{binds(used_gib, capacity_gib)}"
