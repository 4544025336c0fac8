"""The mapping rules exist once (``costmodels.parallel.RULES``): every consumer — ``check_plan``, the
grid search's constraint, the wafer search's mapping grid, validation's enumeration and the inference
search — agrees with ``plan_violations`` on an enumerated mapping space, checked point by point
against ``check_plan`` (brute force)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodels.errors import ConfigError
from costmodels.parallel import (
    RULES,
    Target,
    check_plan,
    make_plan,
    plan_violations,
    valid_plans,
    with_defaults,
)
from costmodels.training import TrainingJob
from dse.hardware import load_hardware
from dse.models import load_model
from dse.predict import _plans
from search.problems import inference_slo_problem, training_mapping_problem
from search.wafer import MAPPING_GRID, mapping_columns

H100 = load_hardware("h100_sxm")
MIXTRAL = load_model("mixtral_8x7b")  # 32 layers, 32 heads, 8 KV heads, 8 experts
# 126 layers (Llama-3.1-405B's count) and 6 KV heads: uneven pipelines and odd divisors everywhere
ODD = dataclasses.replace(
    load_model("llama3_8b"),
    num_layers=126,
    layer_kinds=(("dense", 126),),
    mixer_kinds=(("attention", 126),),
    num_kv_heads=6,
    num_heads=24,
)
SEQ = 4096


def passes(values: dict[str, float], spec, devices: int, seq_len: int = SEQ) -> bool:
    """The brute-force answer: does check_plan accept this one plan?"""
    try:
        check_plan(make_plan(**values), spec, devices, seq_len)
    except ConfigError:
        return False
    return True


SPACE = {
    "tp": (1, 2, 3, 4, 8),
    "pp": (1, 2, 3, 4, 8, 16),
    "cp": (1, 2, 3),
    "ep": (1, 2, 4),
    "vpp": (1, 2, 3),
    "microbatch": (1, 2, 4),
    "recompute": (0, 2),
    "zero_stage": (0, 1),
    "sequence_parallel": (0, 1),
}


@pytest.mark.parametrize("spec", [MIXTRAL, ODD], ids=["mixtral", "126_layers"])
def test_grid_constraint_agrees_with_check_plan(spec) -> None:
    """Every point of a 19,440-point space on 96 devices: the grid search keeps exactly the plans
    check_plan accepts (dp = 96/(tp·pp·cp), global batch 96)."""
    devices, batch = 96, 96
    job = TrainingJob(spec, SEQ, "bf16", True, "adam")
    problem = training_mapping_problem(H100, job, devices, batch, SPACE)
    rows = np.array(list(itertools.product(*SPACE.values())), dtype=np.float64)
    cols = {k: rows[:, i] for i, k in enumerate(SPACE)}
    mask = problem.constraint(cols)
    for i, row in enumerate(rows):
        values = dict(zip(SPACE, row, strict=True))
        dp = devices / (values["tp"] * values["pp"] * values["cp"])
        assert mask[i] == passes(values | {"dp": dp, "global_batch": batch}, spec, devices), values
    assert 0 < mask.sum() < len(mask)


def test_uneven_pipelines_are_searched_on_a_126_layer_model() -> None:
    """126 = 2·3²·7: a rule 'pp·vpp divides the layers' would leave pp ∈ {1, 2} (with vpp 1 or 2) of
    {1, 2, 4, 8}; the one rule (every chunk holds a layer) searches them all, as check_plan accepts."""
    job = TrainingJob(load_model("llama3_1_405b"), SEQ, "bf16", True, "adam")
    space = {k: (1,) for k in SPACE} | {"pp": (1, 2, 4, 8), "vpp": (1, 2), "sequence_parallel": (0,)}
    problem = training_mapping_problem(H100, job, 64, 64, space)
    rows = np.array(list(itertools.product(*problem.space.values())), dtype=np.float64)
    mask = problem.constraint({k: rows[:, i] for i, k in enumerate(problem.space)})
    kept = {
        (int(r[list(problem.space).index("pp")]), int(r[list(problem.space).index("vpp")]))
        for r in rows[mask]
    }
    assert kept == {(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2)}


@pytest.mark.parametrize("spec", [MIXTRAL, ODD], ids=["mixtral", "126_layers"])
def test_wafer_grid_is_the_rule_set(spec) -> None:
    """The wafer search's static grid keeps exactly the combinations check_plan accepts at dp 1 (dp
    and the batch are set per design)."""
    cols = mapping_columns(spec, SEQ)
    kept = {tuple(float(cols[k][i]) for k in MAPPING_GRID) for i in range(len(cols["tp"]))}
    for combo in itertools.product(*MAPPING_GRID.values()):
        values = dict(zip(MAPPING_GRID, map(float, combo), strict=True))
        devices = int(values["tp"] * values["pp"] * values["cp"])
        ok = passes(values | {"dp": 1, "global_batch": values["microbatch"]}, spec, devices)
        assert (tuple(map(float, combo)) in kept) == ok, values


def _case(**parallelism) -> dict:
    p = {"tp": 2, "pp": 4, "dp": 2, "cp": 1, "vpp": None, "zero_stage": None, "recompute": None,
         "sequence_parallel": None} | parallelism  # fmt: skip
    return {"parallelism": p, "batch": {"global_batch_size": 32, "seq_len": SEQ, "micro_batch_size": None},
            "num_devices": p["tp"] * p["pp"] * p["dp"] * p["cp"]}  # fmt: skip


@pytest.mark.parametrize("pp", [1, 4, 16])
def test_validation_enumeration_is_every_plan_check_plan_accepts(pp) -> None:
    """The open options of a case expand to exactly the combinations check_plan accepts."""
    case = _case(pp=pp)
    options = _plans(case, ODD)
    got = {tuple(sorted(o.items())) for o in options}
    expected = set()
    for m, v, z, r, s, e in itertools.product(
        (1, 2, 4, 8, 16), range(1, 9), (0, 1), (0, 1, 2), (0.0, 1.0), (0, 1)
    ):
        if e and pp == 1:
            continue
        values = {"tp": 2, "pp": pp, "dp": 2, "cp": 1, "ep": 1, "global_batch": 32, "dp_overlap": 0.0}
        values |= {"microbatch": m, "vpp": v, "zero_stage": z, "recompute": r, "sequence_parallel": s}
        values |= {"pipeline_edge_layers": e}
        if passes(values, ODD, case["num_devices"]):
            expected.add(tuple(sorted(values.items())))
    assert got == expected and got


def test_validation_enumeration_reports_the_broken_rule() -> None:
    """No combination left: the error is the first broken rule's line (a stated micro-batch that does
    not split the batch), or the pipeline-split message when every chunk count is too large."""
    with pytest.raises(ConfigError, match=r"dp·microbatch = 6 does not divide global_batch = 32"):
        _plans(_case() | {"batch": {"global_batch_size": 32, "seq_len": SEQ, "micro_batch_size": 3}}, ODD)
    with pytest.raises(ConfigError, match=r"no pipeline split of the 126 layers over pp=64"):
        _plans(_case(pp=64, vpp=4), ODD)


def test_inference_constraint_is_the_rule_set() -> None:
    """The inference search keeps the tp and pp that check_plan accepts (heads, KV heads, a layer per
    stage), whatever the batch."""
    from costmodels.inference import InferenceJob

    job = InferenceJob(ODD, 512, 128, "bf16")
    problem = inference_slo_problem(
        H100, job, {"tp": (1, 2, 3, 4, 8, 12), "pp": (1, 2, 64, 127), "batch": (1,)}, 1.0
    )
    tp, pp = np.meshgrid([1, 2, 3, 4, 8, 12], [1, 2, 64, 127])
    mask = problem.constraint({"tp": tp.ravel().astype(float), "pp": pp.ravel().astype(float)})
    for i, (t, p) in enumerate(zip(tp.ravel(), pp.ravel(), strict=True)):
        assert mask[i] == passes({"tp": t, "pp": p}, ODD, int(t * p)), (t, p)


FIELDS = ("tp", "pp", "dp", "cp", "ep", "vpp", "microbatch", "global_batch")


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries({k: st.sampled_from([0, 1, 1.5, 2, 3, 4, 8, -1]) for k in FIELDS}),
    st.fixed_dictionaries(
        {
            "sequence_parallel": st.sampled_from([0, 1]),
            "zero_stage": st.sampled_from([0, 1, 3, 4]),
            "recompute": st.sampled_from([0, 1, 2, 3]),
            "pipeline_edge_layers": st.sampled_from([0, 1, 2]),
            "tp_overlap": st.sampled_from([0.0, 0.5, 1.5]),
            "weight_streaming": st.sampled_from([0, 1]),
            "cp_a2a": st.sampled_from([0, 1]),
        }
    ),
    st.sampled_from([8, 16, 64]),
)
def test_any_plan_check_plan_raises_exactly_when_a_rule_breaks(degrees, options, devices) -> None:
    """Arbitrary values (zero, negative, fractional degrees; unknown stages): check_plan raises iff
    plan_violations flags a rule, and its message is the first flagged rule's line."""
    values = degrees | options
    cols = with_defaults({k: np.array([float(v)]) for k, v in values.items()})
    broken = [name for name, mask in plan_violations(cols, MIXTRAL, SEQ, float(devices)).items() if mask[0]]
    assert bool(valid_plans(cols, MIXTRAL, SEQ, float(devices))[0]) == (not broken)
    if not broken:
        check_plan(make_plan(**values), MIXTRAL, devices, SEQ)
        return
    with pytest.raises(ConfigError) as err:
        check_plan(make_plan(**values), MIXTRAL, devices, SEQ)
    assert str(err.value) == RULES[broken[0]].message(
        {k: float(v[0]) for k, v in cols.items()}, Target(MIXTRAL, float(devices), SEQ)
    )


def test_search_knob_domains_come_from_the_plan_fields() -> None:
    """dse.search accepts a flag as true/false or 0/1, a choice by index (recompute also by name), a
    degree as any positive integer, and names the knob otherwise."""
    from dse.search import _knob_value

    assert _knob_value("cp_a2a", True) == 1.0 and _knob_value("sequence_parallel", 0) == 0.0
    assert _knob_value("recompute", "full") == 2.0 and _knob_value("zero_stage", 3) == 3.0
    assert _knob_value("tp", 16) == 16.0
    for knob, value, match in (("cp_a2a", 2, "not one of 0, 1"), ("zero_stage", 4, "not one of 0, 1, 2, 3"),
                               ("pp", 0, "not a positive integer")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"parallelism.{knob}: .*{match}"):
            _knob_value(knob, value)


def _compose(config: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from dse import schema
    from dse._app import CONF_DIR

    schema.register()  # the search's schemas, which the placement experiment composes
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


@pytest.mark.parametrize(
    ("config", "node", "overrides"),
    [("calc", "parallelism", []), ("topoeval", "job", ["placement_file=p.json"]),
     ("config", "placement", ["+experiment=placement"])],
)  # fmt: skip
def test_every_plan_option_is_a_key_of_each_tools_plan_node(config, node, overrides) -> None:
    """dse.calc's ``parallelism``, dse.topoeval's ``job`` and the placement experiment's
    ``placement`` hold every plan option (option_defaults: each Plan field but the global batch) with
    no YAML listing them, so a field added to Plan is ``<node>.<field>=...`` in each tool at once."""
    from costmodels.parallel import option_defaults
    from dse import checks

    cfg = _compose(config, overrides)
    assert set(option_defaults()) <= set(cfg[node])
    assert cfg[node].cp_a2a is False and cfg[node].weight_streaming is False
    new = option_defaults() | {"new_axis": False}  # a field that Plan gains
    original = checks.option_defaults
    try:
        checks.option_defaults = lambda: new
        checks.register_plan_node()
        assert _compose(config, [*overrides, f"{node}.new_axis=true"])[node].new_axis is True
    finally:
        checks.option_defaults = original
        checks.register_plan_node()


def test_searched_and_calculator_keys_are_the_plan_metadata() -> None:
    """The search's knobs are the Plan fields marked ``searched``, the calculator's keys every field
    a user sets (dp derived, the global batch the workload's)."""
    from costmodels.parallel import knobs
    from dse.calc import PARALLELISM_KEYS
    from dse.search import TRAINING_KNOBS

    assert TRAINING_KNOBS == ("tp", "pp", "cp", "ep", "vpp", "microbatch", "sequence_parallel", "zero_stage",
                              "recompute", "cp_a2a")  # fmt: skip
    assert set(PARALLELISM_KEYS) == set(knobs()) - {"global_batch"}
