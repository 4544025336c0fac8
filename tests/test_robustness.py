"""Property-based tests of the input edges: every entry point either returns a sane result or raises
the one-line :class:`ConfigError` naming the user's key — never another exception, NaN, an infinite
or a negative figure.

Strategies mutate the shipped inputs (Hugging Face configs of every model family, hardware presets,
the composed ``dse.search``, ``dse.calc`` and ``dse.roofline`` configs, ``dse.convert`` rates,
validation cases, instance-topology, placement and safetensors files) with values of the wrong
type, non-finite numbers, zero, negative and huge values, strings that look like numbers or
booleans, lists and objects. About 13,700 inputs in all per run (the example counts below);
``HYPOTHESIS_PROFILE=nightly`` runs ten times as many.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from costmodels.architectures import parse_hf_config
from costmodels.errors import ConfigError
from costmodels.workload import parameter_count
from dse import calc, ckpt_summarize, convert, roofline, schema, topoeval, validate
from dse._app import CONF_DIR, MODEL_DIR
from dse.checks import check_results
from dse.hardware import HARDWARE_DIR, hardware_from_config, resolve_defaults
from dse.models import load_model
from dse.placement_search import read_instance_json
from search.topology import from_instance_json

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", parent=settings.get_profile("default"), max_examples=20_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"


def _examples(n: int) -> Any:
    return settings(max_examples=10 * n if NIGHTLY else n)


# values that broke an entry point once, and their neighbours
BAD_VALUES = st.one_of(
    st.integers(min_value=-(10**13), max_value=10**13),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**12, 0.5, 1e12, -1e-9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "8", "4096", "false", "true", "null", "NaN", "llama", "1e3"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-4, max_value=64), max_size=3),
    st.dictionaries(st.sampled_from(["a", "attn_impl", "type"]), st.integers(), max_size=2),
)

MODELS = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(MODEL_DIR.glob("*.yaml")) if p.stem != "path"}


REFUSED = object()  # what _result_or_refusal returns for a one-line ConfigError


def _result_or_refusal(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or ``REFUSED`` once the ConfigError it raised is checked to be one line."""
    try:
        return fn(*args)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return REFUSED


def _changed(cfg: Any, key: str, value: Any) -> Any:
    """A copy of ``cfg`` with ``key`` set to ``value``, or None when the config's own types refuse it."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        try:
            OmegaConf.update(cfg, key, value, force_add=True)
        except Exception:
            return None
    return cfg


def _positive_finite(x: float) -> bool:
    return math.isfinite(x) and x > 0


# --------------------------------------------------------------------------------------------
# Model configs


@_examples(4000)
@given(
    name=st.sampled_from(sorted(MODELS)),
    changes=st.lists(
        st.tuples(st.integers(min_value=0, max_value=10**6), BAD_VALUES), min_size=1, max_size=3
    ),
)
def test_model_config_parses_to_a_sane_spec_or_one_line_error(
    name: str, changes: list[tuple[int, Any]]
) -> None:
    """Any field of any shipped config set to any bad value: a :class:`ModelSpec` with positive
    dimensions and a positive, finite parameter count, or a one-line ConfigError."""
    config = copy.deepcopy(MODELS[name])
    keys = sorted(config)
    for index, value in changes:
        config[keys[index % len(keys)]] = value
    spec = _result_or_refusal(parse_hf_config, config)
    if spec is REFUSED:
        return
    dims = (spec.hidden_size, spec.num_layers, spec.vocab_size)
    if spec.attention_layers:  # a model without attention (Mamba) has no heads
        dims += (spec.num_heads, spec.num_kv_heads, spec.head_dim)
    if spec.ssm is not None:
        dims += (spec.ssm.heads, spec.ssm.head_dim, spec.ssm.state, spec.ssm.conv_kernel)
    assert all(isinstance(d, int) and d > 0 for d in dims)
    assert _positive_finite(float(parameter_count(spec)))
    if spec.moe is not None and spec.moe.num_experts > 0:
        assert 1 <= spec.moe.top_k <= spec.moe.num_experts


@pytest.mark.parametrize(
    ("model", "change", "message"),
    [
        (
            "mixtral_8x7b",
            {"num_experts_per_tok": 9},
            "'num_experts_per_tok' must be <= 8 (num_local_experts)",
        ),
        ("deepseek_v3", {"num_experts_per_tok": 300}, "must be <= 256 (n_routed_experts)"),
        ("deepseek_v3", {"q_lora_rank": 0}, "'q_lora_rank' must be positive"),
        ("gpt3_175b", {"n_embd": 12289}, "'n_embd' (12289) must be a multiple of 'n_head' (96)"),
        (
            "llama3_8b",
            {"hidden_size": 4097},
            "'hidden_size' (4097) must be a multiple of 'num_attention_heads'",
        ),
        ("llama3_8b", {"num_hidden_layers": 1e12}, "'num_hidden_layers' must be <= 65,536"),
        ("llama3_8b", {"vocab_size": 2**40}, "'vocab_size' must be <= 2,147,483,647"),
        ("llama3_8b", {"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false"),
    ],
)
def test_cross_field_rules_name_the_users_key(model: str, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_hf_config(MODELS[model] | change)


# --------------------------------------------------------------------------------------------
# Hardware presets

PRESETS = {
    p.stem: resolve_defaults(OmegaConf.load(p), HARDWARE_DIR) for p in sorted(HARDWARE_DIR.glob("*.yaml"))
}
HW_KEYS = [
    "hbm_gib", "hbm_TBps", "power_w", "peak_tflops.bf16", "peak_tflops.fp8", "scale_up.GBps_per_direction",
    "scale_up.domain_size", "scale_out.GBps_per_device", "efficiency.matmul", "efficiency.matmul_fp8",
    "efficiency.memory", "efficiency.collective", "efficiency.kernel_overhead_us", "matmul_tile.m",
]  # fmt: skip
FRACTIONS = ("matmul_efficiency", "attention_efficiency", "flash_attention_efficiency", "memory_efficiency",
             "elementwise_efficiency", "collective_efficiency")  # fmt: skip


@_examples(2000)
@given(name=st.sampled_from(sorted(PRESETS)), key=st.sampled_from(HW_KEYS), value=BAD_VALUES)
def test_hardware_preset_loads_sane_or_one_line_error(name: str, key: str, value: Any) -> None:
    """A preset with one key set to a bad value: a Hardware whose every figure is finite and >= 0,
    with the bf16 peak and HBM positive and every efficiency in (0, 1]; or a one-line ConfigError."""
    data = OmegaConf.to_container(PRESETS[name], resolve=True)
    section, _, leaf = key.rpartition(".")
    (data.setdefault(section, {}) if section else data)[leaf] = value
    hw = _result_or_refusal(hardware_from_config, data)
    if hw is REFUSED:
        return
    values = {k: float(v) for k, v in hw.__dict__.items() if isinstance(v, int | float)}
    assert all(math.isfinite(v) and v >= 0 for v in values.values())
    assert hw.peak_flops_bf16 > 0 and hw.hbm_bandwidth_Bps > 0 and hw.hbm_capacity_bytes > 0
    assert all(0 < values[f] <= 1 for f in FRACTIONS)


# --------------------------------------------------------------------------------------------
# dse.search and dse.calc configs


@pytest.fixture(scope="module")
def search_cfg():
    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", ["+experiment=gpu_cluster", "tracking=none"])


SEARCH_KEYS = [
    "num_devices", "seed", "format", "workload.seq_len", "workload.global_batch", "workload.precision",
    "workload.optimizer", "search.top_k", "search.chunk_size", "search.objective", "search.pareto",
]  # fmt: skip


@_examples(1500)
@given(key=st.sampled_from(SEARCH_KEYS), value=BAD_VALUES)
def test_search_config_check_accepts_only_values_in_range(search_cfg, key: str, value: Any) -> None:
    """``schema.check_config`` on the gpu_cluster config with one bad value: a one-line error, or the
    value is one a search can use (positive integer counts, known names)."""
    cfg = _changed(search_cfg, key, value)
    if cfg is None:  # the structured schema rejects the type itself (Hydra reports it in one line)
        return
    try:
        schema.check_config(cfg)
    except ConfigError as exc:
        assert "\n" not in str(exc) and key.split(".")[-1] in str(exc)
        return
    accepted = OmegaConf.select(cfg, key)
    if key in (
        "num_devices",
        "workload.seq_len",
        "workload.global_batch",
        "search.top_k",
        "search.chunk_size",
    ):
        assert isinstance(accepted, int) and accepted >= 1
    if key == "seed":
        assert isinstance(accepted, int) and accepted >= 0


CALC_KEYS = {
    "num_devices": [1, 8], "seq_len": [2048], "global_batch": [8, 64], "parallelism.tp": [1, 2],
    "parallelism.pp": [1, 2], "parallelism.microbatch": [1], "inference.batch_size": [1, 4],
    "inference.input_len": [128], "inference.output_len": [16], "inference.offload_weights": [0.0],
}  # fmt: skip


@pytest.fixture(scope="module")
def calc_cfgs():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {
            mode: compose("calc", [f"mode={mode}", "model=llama2_7b", "hardware=a100_80gb", "num_devices=1"])
            for mode in ("training", "inference")
        }


@_examples(600)
@given(
    mode=st.sampled_from(["training", "inference"]),
    key=st.sampled_from(sorted(CALC_KEYS)),
    value=st.one_of(BAD_VALUES, st.sampled_from([1, 2, 4, 8, 16, 1024])),
)
def test_calc_report_is_sane_or_one_line_error(calc_cfgs, mode: str, key: str, value: Any) -> None:
    """``dse.calc``'s report with one value changed: every number finite and >= 0 (``check_results``
    inside ``report`` would raise otherwise), MFU/HFU finite; or a one-line ConfigError."""
    cfg = _changed(calc_cfgs[mode], key, value)
    if cfg is None:  # the structured schema rejects the type itself (Hydra reports it in one line)
        return
    rep = _result_or_refusal(calc.report, cfg)
    if rep is REFUSED:
        return
    for k in ("step_time_s", "ttft_s", "tpot_s", "latency_s"):
        if k in rep:
            assert _positive_finite(rep[k])
    assert all(np.isfinite(rep.get(k, 0.0)) for k in ("mfu", "hfu"))


# --------------------------------------------------------------------------------------------
# Instance topology files

NODE = {"id": "i0", "network_node_ids": ["leaf0", "spine0"], "gpus": 8}
TOPOLOGY_KEYS = ["id", "network_node_ids", "gpus"]


@_examples(2000)
@given(
    where=st.sampled_from(["node", "link", "top"]),
    key=st.sampled_from([*TOPOLOGY_KEYS, "source", "target", "bandwidth_Bps", "tier", "nodes", "links"]),
    value=st.one_of(BAD_VALUES, st.just("leaf0"), st.just("leafX")),
)
def test_instance_topology_builds_or_one_line_error(where: str, key: str, value: Any) -> None:
    data: dict[str, Any] = {
        "nodes": [dict(NODE), NODE | {"id": "i1"}],
        "links": [{"source": "leaf0", "target": "spine0", "tier": "spine", "bandwidth_Bps": 4e11}],
    }
    target = {"node": data["nodes"][0], "link": data["links"][0], "top": data}[where]
    target[key] = value
    topo = _result_or_refusal(from_instance_json, data)
    if topo is REFUSED:
        return
    assert len(topo.devices) >= 1 and len(topo.devices) == len(set(topo.devices))


# --------------------------------------------------------------------------------------------
# dse.roofline, dse.convert, dse.validate cases

ROOFLINE_KEYS = [
    "batch_size",
    "cached_tokens",
    "input_tokens",
    "precision",
    "kv_precision",
    "fused_attention",
]


@pytest.fixture(scope="module")
def roofline_cfg():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("roofline", ["model=llama2_7b", "hardware=h100_sxm"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # roofline.report reads the model choice from Hydra
    yield cfg
    HydraConfig.instance().cfg = None  # later tests run outside a Hydra app again


@_examples(600)
@given(
    key=st.sampled_from(ROOFLINE_KEYS), value=st.one_of(BAD_VALUES, st.sampled_from(["fp8", "bf16", [4096]]))
)
def test_roofline_report_is_sane_or_one_line_error(roofline_cfg, key: str, value: Any) -> None:
    cfg = _changed(roofline_cfg, key, value)
    if cfg is None:  # the structured schema rejects the type itself (Hydra reports it in one line)
        return
    rep = _result_or_refusal(roofline.report, cfg)
    if rep is REFUSED:
        return
    check_results(rep, f"roofline {key}={value!r}")
    assert rep["totals"]["time_s"] > 0


@_examples(1500)
@given(
    rate=st.sampled_from(sorted(convert.RATES)),
    value=BAD_VALUES,
    seq_len=st.one_of(st.none(), st.integers(min_value=1, max_value=10**7)),
    global_batch=st.one_of(st.none(), st.integers(min_value=1, max_value=10**7)),
    num_devices=st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
    flops=st.one_of(st.none(), st.floats(min_value=1e6, max_value=1e22)),
    peak=st.one_of(st.none(), st.floats(min_value=1e12, max_value=1e16)),
)
def test_convert_gives_finite_positive_rates_or_one_line_error(
    rate: str, value: Any, seq_len, global_batch, num_devices, flops, peak
) -> None:
    """Any rate with any value and any subset of inputs: every derived rate finite and > 0 (an MFU in
    (0, 1] when the given rate was one), or a one-line ConfigError."""
    cfg = OmegaConf.create({name: None for name in convert.RATES} | {rate: value})
    inputs = convert.Inputs(
        seq_len=seq_len,
        global_batch=global_batch,
        num_devices=num_devices,
        model="m" if flops else None,
        flops_per_sample=flops if seq_len else None,
        hardware="h" if peak else None,
        precision="bf16" if peak else None,
        peak_flops=peak,
    )
    out = _result_or_refusal(lambda: convert.convert(*convert.given_rate(cfg), inputs))
    if out is REFUSED:
        return
    assert all(math.isfinite(v) and v > 0 for v in out.values()), out


CASES = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "experiments/validation/calibration.yaml").read_text()
)
CASES = CASES["cases"] if isinstance(CASES, dict) else CASES
SERVING_CASES = [c for c in CASES if c["family"] in ("ft_calibration", "trtllm05")][:40]
CASE_KEYS = ["batch.batch_size", "batch.input_len", "batch.output_len", "parallelism.tp", "parallelism.pp",
             "num_devices", "precision", "hardware", "model.n_head", "model.num_attention_heads",
             "measured.latency_ms", "measured.ttft_ms", "engine", "batch_size_policy"]  # fmt: skip


@_examples(300)
@given(case=st.sampled_from(SERVING_CASES), key=st.sampled_from(CASE_KEYS), value=BAD_VALUES)
def test_validation_case_is_scored_or_rejected_with_a_reason(case: dict, key: str, value: Any) -> None:
    """A published case with one field broken is scored, or uncovered with a reason in one of the
    user-facing categories (invalid case, unsupported, infeasible), never an internal error."""
    case = copy.deepcopy(case)
    node = case
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
    node[leaf] = value
    known = validate.Known.load()
    problem = validate.check_case(case, known)
    if problem is not None:
        assert problem[0] != validate.ERROR, problem
        return
    row = validate.evaluate(case, {}, validate.default_predictor())
    assert row.category != validate.ERROR, row.reason
    if row.covered:
        assert math.isfinite(row.predicted) and row.predicted > 0


# --------------------------------------------------------------------------------------------
# Checkpoint files (dse.ckpt_summarize)

SAFETENSORS_HEADER = {"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]}}


def _safetensors(header: Any, payload: bytes = bytes(12)) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode("utf-8", "surrogatepass")
    return len(raw).to_bytes(8, "little") + raw + payload


@_examples(800)
@given(
    field=st.sampled_from(["dtype", "shape", "data_offsets", "name", "header", "length", "truncate"]),
    value=st.one_of(BAD_VALUES, st.binary(max_size=24), st.text(max_size=8)),
)
def test_checkpoint_file_summarizes_or_one_line_error(tmp_path_factory, field: str, value: Any) -> None:
    """A safetensors file with one part broken (an entry's dtype, shape or offsets, its name, the
    whole header, the header length, a truncated file): a summary whose counts are non-negative
    integers, or a one-line ConfigError — never another exception."""
    header = copy.deepcopy(SAFETENSORS_HEADER)
    blob = None
    as_json = value.decode("latin-1") if isinstance(value, bytes) else value  # JSON holds no bytes
    if field in ("dtype", "shape", "data_offsets"):
        header["w"][field] = as_json
    elif field == "name":
        header = {str(as_json): header["w"]}
    elif field == "header":
        header = as_json if isinstance(as_json, str) else {"w": as_json}
    if field == "length":
        blob = (value if isinstance(value, bytes) else bytes(8))[:8].ljust(8, b"\xff") + b"{}"
    elif field == "truncate":
        full = _safetensors(header)
        blob = full[: (len(value) if isinstance(value, bytes | str) else 3) % len(full)]
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    try:
        path.write_bytes(blob if blob is not None else _safetensors(header))
    except UnicodeEncodeError:
        return
    result = _result_or_refusal(ckpt_summarize.collect, path)
    if result is REFUSED:
        return
    files, metas, non_tensor = result
    assert files == [path] and non_tensor >= 0
    assert all(m.elements >= 0 and m.size_bytes >= 0 for m in metas)


# --------------------------------------------------------------------------------------------
# Placement files (dse.topoeval)


@pytest.fixture(scope="module")
def topoeval_cfg():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "topoeval",
            ["topology=small_2x8", "placement_file=x", "job.tp=8", "job.bytes_per_step={tp: 1e9, dp: 1e8}"],
        )


PLACEMENT_KEYS = ["rank", "device", "list", "job.tp", "job.dp", "job.pp", "job.order"]


@_examples(400)
@given(key=st.sampled_from(PLACEMENT_KEYS), value=st.one_of(BAD_VALUES, st.sampled_from(["n0/gpu0", "x/y"])))
def test_placement_file_scores_or_one_line_error(
    tmp_path_factory, topoeval_cfg, key: str, value: Any
) -> None:
    """16 ranks on the 2×8 topology with one thing broken (a rank key, a device id, the file's shape,
    a degree, the group order): every reported cost and time finite and >= 0, or a one-line error."""
    placement: Any = {str(r): r for r in range(16)}
    if key == "rank":
        placement[str(value)] = placement.pop("15")
    elif key == "device":
        placement["3"] = value
    elif key == "list":
        placement = [value] * 16 if not isinstance(value, list) else value
    cfg = _changed(topoeval_cfg, key, value) if key.startswith("job.") else copy.deepcopy(topoeval_cfg)
    if cfg is None:
        return
    path = tmp_path_factory.mktemp("placement") / "p.json"
    path.write_text(json.dumps(placement, default=str))
    with open_dict(cfg):
        cfg.placement_file = str(path)
    rep = _result_or_refusal(topoeval.report, cfg)
    if rep is REFUSED:
        return
    check_results(
        {k: v for k, v in rep.items() if k not in ("max_link", "job")}, f"placement {key}={value!r}"
    )


# --------------------------------------------------------------------------------------------
# Unreadable files: every reader of a user's file


READERS = {
    "model config": lambda p: load_model(str(p)),
    "placement file": lambda p: topoeval.read_placement(str(p)),
    "topology file": lambda p: read_instance_json(str(p)),
    "cases file": lambda p: validate.load_cases(p),
}
CONTENTS = {
    "non-UTF-8": b"\xff\xfe{}",
    "nested 100,000 deep": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "empty": b"",
    "truncated": b'{"model_type": "llama", "hidden_size": 40',
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("content", sorted(CONTENTS))
def test_unreadable_file_is_one_line_error(tmp_path: Path, reader: str, content: str) -> None:
    path = tmp_path / ("cases.yaml" if reader == "cases file" else "file.json")
    path.write_bytes(CONTENTS[content])
    with pytest.raises(ConfigError) as err:
        READERS[reader](path)
    assert "\n" not in str(err.value)


# --- JAX's persistent compilation cache ----------------------------------------------------------------


def test_a_repeated_command_reuses_compiled_programs(tmp_path: Path) -> None:
    """Each app turns on JAX's persistent compilation cache in $DSE_JAX_CACHE (default
    ~/.cache/dse/jax): a run of dse.calc leaves its compiled programs there, and a second run reads
    them back instead of compiling (it writes nothing new)."""
    cache = tmp_path / "jax"
    env = {**os.environ, "DSE_JAX_CACHE": str(cache)}
    run = [sys.executable, "-m", "dse.calc", "format=json"]
    first = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in cache.iterdir())
    assert entries and all(name.endswith("-cache") for name in entries)
    second = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0 and json.loads(second.stdout) == json.loads(first.stdout)
    assert sorted(p.name for p in cache.iterdir()) == entries


def test_the_compilation_cache_can_be_turned_off_or_fail_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dse._app import compilation_cache_dir, use_compilation_cache

    monkeypatch.setenv("DSE_JAX_CACHE", "off")
    assert compilation_cache_dir() is None and use_compilation_cache() is None
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("DSE_JAX_CACHE", str(blocker / "jax"))  # under a file: cannot be created
    assert use_compilation_cache() is None
    monkeypatch.delenv("DSE_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache_dir() == tmp_path / "xdg" / "dse" / "jax"


END_NOW = """
import atexit, sys, threading
from dse._app import _end_now
atexit.register(lambda: print("exit handler ran", flush=True))
print("report", end="")  # buffered: a pipe
if sys.argv[1] == "thread":
    gate = threading.Event()
    threading.Thread(target=gate.wait).start()
    _end_now()
    print(" returned", end="")
    gate.set()
elif sys.argv[1] == "profiled":
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    _end_now()
    profile.disable()
    print(" returned", end="")
else:
    _end_now()
    print(" not reached")
"""


@pytest.mark.parametrize("case", ["alone", "thread", "profiled"])
def test_a_finished_command_leaves_without_teardown_but_with_its_exit_handlers(case: str) -> None:
    """``_end_now`` (the end of every command that finished) runs the exit handlers and flushes the
    buffered output before it skips the interpreter's teardown; with another thread alive (a normal
    exit joins it) or a profiler on (it writes its results after the command) it returns."""
    proc = subprocess.run([sys.executable, "-c", END_NOW, case], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    returned = "report returnedexit handler ran\n"
    assert (
        proc.stdout == {"alone": "reportexit handler ran\n", "thread": returned, "profiled": returned}[case]
    )


TIMING = re.compile(
    r"^timing: start-up and imports (?P<imports>[\d.]+) s, JAX tracing and lowering (?P<trace>[\d.]+) s, "
    r"XLA compilation (?P<compile>[\d.]+) s "
    r"\((?P<programs>\d+) programs, compiled or read from the cache\), MLflow (?P<mlflow>[\d.]+) s, "
    r"the rest \(evaluate, solve, report\) (?P<rest>[\d.]+) s; total (?P<total>[\d.]+) s$"
)


def test_dse_timing_says_where_a_commands_time_went(tmp_path: Path) -> None:
    """DSE_TIMING=1 adds one stderr line at the end: imports, JAX tracing and lowering, XLA
    compilation (nothing cached here), MLflow (a search that logs its run to a SQLite store spends
    some) and the rest, which add up to the total; stdout is unchanged (its JSON still parses)."""
    env = {**os.environ, "DSE_TIMING": "1", "DSE_JAX_CACHE": "off"}
    calc = subprocess.run([sys.executable, "-m", "dse.calc", "format=json"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    assert calc.returncode == 0, calc.stderr
    json.loads(calc.stdout)
    parts = TIMING.match(calc.stderr.strip().splitlines()[-1])
    assert parts is not None, calc.stderr[-500:]
    value = {k: float(v) for k, v in parts.groupdict().items()}
    assert value["compile"] > 0 and value["programs"] >= 1 and value["mlflow"] == 0.0
    parts_sum = value["imports"] + value["trace"] + value["compile"] + value["mlflow"] + value["rest"]
    assert abs(parts_sum - value["total"]) <= 0.03  # each printed to 0.01 s
    search = subprocess.run(
        [sys.executable, "-m", "dse.search", "num_devices=8", "parallelism.tp=[1,2]", "parallelism.pp=[1]",
         "parallelism.cp=[1]", "parallelism.ep=[1]", "parallelism.vpp=[1]", "parallelism.microbatch=[1]",
         "parallelism.recompute=[0]", "parallelism.zero_stage=[1]", "parallelism.sequence_parallel=[0]",
         "progress=false", f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert search.returncode == 0, search.stderr[-2000:]
    parts = TIMING.match(search.stderr.strip().splitlines()[-1])
    assert parts is not None and float(parts["mlflow"]) > 0, search.stderr[-500:]
