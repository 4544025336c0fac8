"""Human-readable numbers for tables (JSON output keeps raw SI values)."""

from __future__ import annotations

from typing import Any

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
