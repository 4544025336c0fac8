"""The "why" lines of the reports: what binds a winner, derived by hand from the figures given."""

from __future__ import annotations

import math
import re

import pytest
from report_helpers import E_NOTATION

from dse import placement_search, shard_search, wafer_search
from dse.units import binds, memory_phrase, share, step_shares
from search.placement import Job, cp_sat, gap_text
from search.topology import gpu_cluster


def test_step_shares_by_hand() -> None:
    """A 10 s step: compute 8 s, dp 1.5 s, tp 0.5 s → 80 %, communication 20 % (dp 15 %, tp 5 %)."""
    parts = {"compute_s": 8.0, "tp_comm_s": 0.5, "dp_comm_s": 1.5, "pp_comm_s": 0.0, "bubble_s": 0.0}
    assert step_shares(10.0, parts) == ["compute is 80% of the step", "communication 20% (dp 15%, tp 5%)"]
    # 0.3 s of bubble and 0.01 s of pp: shares that exist but round to 0 read '<1%', not '0%'
    parts |= {"compute_s": 7.69, "pp_comm_s": 0.01, "bubble_s": 0.3}
    assert step_shares(10.0, parts)[1:] == ["communication 20% (dp 15%, tp 5%, pp <1%)", "pipeline bubble 3%"]
    assert share(0.0, 1.0) == "0%" and share(0.004, 1.0) == "<1%"


def test_memory_binds_at_95_percent() -> None:
    assert memory_phrase(76.0, 80.0) == "memory 76.0 of 80.0 GiB per device (binds)"  # 95 %
    assert memory_phrase(75.9, 80.0, "die") == "memory 75.9 of 80.0 GiB per die"
    assert binds(0.0095, 0.010) == " (binds)" and binds(0.009, 0.010) == ""


def test_gap_text() -> None:
    """(objective − bound) / objective: 100 against a bound of 75 is 25 % from optimal."""
    assert gap_text(100.0, 75.0) == "gap 25.0%"
    assert gap_text(100.0, 100.0) == "gap 0 % (optimal)"
    assert gap_text(100.0, -math.inf) == "no bound yet"


def test_cp_sat_reports_its_improving_solutions() -> None:
    """The exact model on 8 devices (2 nodes of 4) tells its listener of each improving solution with
    its gap; the last one it reports for a proved optimum has gap 0."""
    heard: list[str] = []
    cp_sat(
        Job(tp=2, dp=2, pp=2, bytes_per_step={"tp": 8.0, "dp": 3.0, "pp": 1.0}),
        gpu_cluster(2, 4, nodes_per_leaf=2),
        method="exact",
        keep_tp_in_domain=False,
        time_limit_s=10,
        on_solution=heard.append,
    )
    assert heard and all(m.startswith("CP-SAT exact model: solution ") for m in heard), heard
    assert re.search(r"solution 1, (gap [\d.]+ ?%|gap 0 % \(optimal\)|no bound yet) at [\d.]+ s", heard[0])


def _placement_rep(tp_in_domain: bool, status: str) -> dict:
    by_type = {
        "tp": {"time_s": 1.2, "max_nodes": 1, "contention": 1.0},
        "dp": {"time_s": 0.3, "max_nodes": 32, "contention": 1.5},
        "pp": {"time_s": 0.0, "max_nodes": 2, "contention": 1.0},
    }
    row = {
        "comm_time_s": 1.5,
        "by_type": by_type,
        "max_link": ["leaf0", "spine1"],
        "max_link_busy_s": 0.25,
        "tp_in_domain": tp_in_domain,
        "status": status,
    }
    return {"solvers": {"cp_sat": row}, "job": {"tp": 8}}


def test_placement_why_names_the_type_the_placement_can_move() -> None:
    """TP stays inside its node, so the slowest type that leaves its domain (dp) is the one named,
    with its contention; a kept start is said in words."""
    text = placement_search.why(_placement_rep(True, "start kept (nesting pp·dp)"))
    assert text == (
        "communication 1.50 s per step (tp 1.20 s, dp 300.00 ms); dp groups span up to 32 scale-up "
        "domains, slowed 1.50x by sharing links; busiest link leaf0–spine1 busy 250.00 ms; TP groups stay "
        "inside their scale-up domains; CP-SAT found nothing better than its best starting placement "
        "(nesting pp·dp) in the time limit"
    )
    assert "TP groups cross" in placement_search.why(_placement_rep(False, "optimal"))


def test_wafer_why_power_cap_and_reference() -> None:
    """A clock capped at 1.0 of the 1.5 GHz chosen binds; 300 k against the best feasible reference's
    150 k tokens/s is 2.00x (the infeasible reference is not a comparison)."""
    best = {"memory_gib": 50.0, "capacity_gib": 64.0, "tokens_per_s": 3e5}
    breakdown = {"step_time_s": 10.0, "compute_s": 9.0, "tp_comm_s": 1.0}
    rows = {
        "gradient_descent": {"feasible": True, "tokens_per_s": 3e5},
        "a": {"feasible": True, "tokens_per_s": 1.5e5},
        "b": {"feasible": True, "tokens_per_s": 1e5},
        "c": {"feasible": False},
    }
    text = wafer_search._why(
        best, breakdown, rows, {"clock_hz": 1.5e9}, {"clock_hz": 1.0e9}, 25e3, "gradient_descent"
    )
    assert text == (
        "compute is 90% of the step; communication 10% (tp 10%); memory 50.0 of 64.0 GiB per die; the "
        "25.0 kW per-wafer power cap holds the clock at 1.00 GHz of 1.50 GHz (binds); 2.00x the tokens/s "
        "of the best reference (a)"
    )
    uncapped = wafer_search._why(
        best, breakdown, rows, {"clock_hz": 1e9}, {"clock_hz": 1e9}, 25e3, "gradient_descent"
    )
    assert "the clock runs at 1.00 GHz, under the 25.0 kW cap" in uncapped


def test_auto_shard_why_counts_sharded_weights_per_axis() -> None:
    rep = {
        "step_time_s": 0.2,
        "compute_s": 0.15,
        "comm_s": 0.05,
        "memory_gib": 10.0,
        "memory_limit_gib": 80.0,
        "mesh": [2, 4],
        "status": "optimal",
        "param_placements": {
            "model.layers.0.w": "[Shard(0), Replicate()]",
            "model.layers.1.w": "[Shard(0), Replicate()]",  # stands for layer 0: not counted
            "lm_head.weight": "[Replicate(), Shard(1)]",
        },
    }
    text = shard_search.why(rep)
    assert text.startswith("compute is 75% of the step, communication 25%; memory 10.0 of 80.0 GiB per ")
    assert "axis 0 (2 devices, scale-out) shards 1 of 2, axis 1 (4 devices, scale-up) shards 1 of 2" in text
    assert text.endswith("within the memory limit")
    assert "may not be optimal" in shard_search.why(rep | {"status": "feasible"})


@pytest.mark.parametrize("text", ["1.57e+15", "6.013e+11", "9.999e+04"])
def test_e_notation_pattern(text: str) -> None:
    """The pattern the report tests use to say that no raw e-notation reaches a person (figures the
    wafer and placement reports printed before they used human units), and not '1.5 GiB'."""
    assert E_NOTATION.search(text) and not E_NOTATION.search("1.5 GiB, 12.50 s, 3.19 tokens/J")
