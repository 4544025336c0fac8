"""costmodels.metrics.system_metrics: the power, cost, energy and memory every problem reports."""

from __future__ import annotations

import dataclasses
import math

import pytest

from costmodels.metrics import system_metrics
from dse.hardware import load_hardware


def test_system_metrics_by_hand() -> None:
    """8 devices of 700 W and $2.00 per device-hour at 1,000 tokens/s, 2 GiB each: 5,600 W, 5.6 J per
    token, 8 · 2 / 3600 / 1000 · 10⁶ = $4.44 per million tokens; no price → NaN cost, never free."""
    hw = dataclasses.replace(load_hardware("h100_sxm"), power_w=700.0, price_usd_per_hour=2.0)
    m = system_metrics(8, hw, 1000.0, 2.0 * 2**30)
    assert float(m["power_w"]) == 5600.0 and float(m["energy_j_per_token"]) == pytest.approx(5.6)
    assert float(m["cost_usd_per_mtoken"]) == pytest.approx(8 * 2 / 3600 / 1000 * 1e6)
    assert float(m["memory_gib"]) == 2.0
    free = system_metrics(8, dataclasses.replace(hw, price_usd_per_hour=0.0), 1000.0, 0.0)
    assert math.isnan(float(free["cost_usd_per_mtoken"]))
