"""Hardware presets, the Hardware pytree and its loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from costmodels.errors import ConfigError
from costmodels.hardware import (
    PRECISIONS,
    Hardware,
    bytes_per_element,
    data_fields,
    peak_flops,
    stack_hardware,
    validate_hardware,
)
from dse._app import CONF_DIR
from dse.hardware import (
    HARDWARE_DIR,
    available_hardware,
    hardware_from_config,
    load_hardware,
    resolve_defaults,
)

PRESETS = available_hardware()

# Published figures, copied from shared/validation/hardware.yaml (the project's validation table; its
# sources: stas00/ml-engineering compute/accelerator and network READMEs at HEAD 744d01e18b79, vendor
# pages cloud.google.com/tpu/docs/v4 and /v5p, ROCm docs for MI300X, glennklockwood.com, FasterTransformer
# gpt_guide, llm-foundry benchmarking README). None = not stated there.
# key: (peak TFLOP/s fp32, tf32, bf16, fp16, fp8, fp4), HBM GiB, HBM TB/s,
#      scale-up GB/s per direction, scale-up domain, scale-out GB/s per device
PUBLISHED: dict[str, tuple] = {
    "a100_40gb_sxm": ((19.5, 156, 312, 312, None, None), 40, 1.555, 300, 8, 25.0),
    "a100_80gb_sxm": ((19.5, 156, 312, 312, None, None), 80, 2.039, 300, 8, 25.0),
    "h100_sxm": ((67.0, 494.5, 989, 989, 1979, None), 80, 3.35, 450, 8, 50.0),
    "h200": ((67.0, 494.5, 989, 989, 1979, None), 141, 4.8, 450, 8, None),
    "b200": ((80, 1125, 2250, 2250, 4500, 9000), 180, 8.0, 900, 8, None),
    "gb200": ((80, 1250, 2500, 2500, 5000, 10000), 186, 8.0, 900, 72, None),
    "gb300": ((80, 1250, 2500, 2500, 5000, 15000), None, None, 900, 72, None),
    "mi300x": ((163.4, 653.7, 1307.4, 1307.4, 2614.9, None), 192, 5.3, 448, 8, None),
    "tpu_v4": ((None, None, 275, None, None, None), 32, 1.2, None, 4096, None),
    "tpu_v5p": ((None, None, 459, None, 459, None), 95, 2.765, 600, 8960, 6.25),
}

H100_YAML = (HARDWARE_DIR / "h100_sxm.yaml").read_text()


# --- presets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name: str) -> None:
    hw = load_hardware(name)
    assert isinstance(hw, Hardware)
    assert hw.peak_flops_bf16 > 0
    assert hw.hbm_capacity_bytes > 0
    assert hw.hbm_bandwidth_Bps > 0
    assert hw.scale_up_domain_size >= 1 and hw.scale_out_oversubscription >= 1
    assert validate_hardware(hw) is hw


def test_presets_cover_the_published_table_and_aliases() -> None:
    expected = {*PUBLISHED, "a100_40gb", "a100_80gb", "dgx_a100", "dgx_h100"}
    assert expected <= set(PRESETS)


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_preset_matches_published_figures(key: str) -> None:
    peaks, hbm_gib, hbm_tb_s, up_gb_s, up_domain, out_gb_s = PUBLISHED[key]
    hw = load_hardware(key)
    for precision, tflops in zip(PRECISIONS, peaks, strict=True):
        want = 0.0 if tflops is None else tflops * 1e12
        assert getattr(hw, f"peak_flops_{precision}") == pytest.approx(want), precision
    if hbm_gib is not None:
        assert hw.hbm_capacity_bytes == pytest.approx(hbm_gib * 2**30)
    if hbm_tb_s is not None:
        assert hw.hbm_bandwidth_Bps == pytest.approx(hbm_tb_s * 1e12)
    if up_gb_s is not None:
        assert hw.scale_up_bandwidth_Bps == pytest.approx(up_gb_s * 1e9)
    assert hw.scale_up_domain_size == up_domain
    if out_gb_s is not None:
        assert hw.scale_out_bandwidth_Bps == pytest.approx(out_gb_s * 1e9)


def test_unit_conversions() -> None:
    a100 = load_hardware("a100_80gb_sxm")
    assert a100.hbm_capacity_bytes == 85899345920  # 80 GiB
    assert a100.sram_capacity_bytes == 40 * 2**20  # 40 MiB L2
    h100 = load_hardware("h100_sxm")
    assert h100.hbm_bandwidth_Bps == pytest.approx(3.35e12)
    assert h100.peak_flops_bf16 == pytest.approx(989e12)
    assert h100.scale_up_bandwidth_Bps == pytest.approx(450e9)
    assert h100.scale_up_latency_s == pytest.approx(0.6e-6)
    assert h100.host_memory_bytes == 256 * 2**30
    assert h100.sram_bandwidth_Bps == 0.0  # null in the YAML: unknown
    assert h100.peak_flops_fp4 == 0.0  # null peak: the device lacks it
    assert h100.topology == "switched"
    assert load_hardware("tpu_v5p").topology == "torus3d"


@pytest.mark.parametrize(
    ("alias", "target"), [("a100_40gb", "a100_40gb_sxm"), ("a100_80gb", "a100_80gb_sxm")]
)
def test_alias_equals_target(alias: str, target: str) -> None:
    assert load_hardware(alias) == load_hardware(target)
    raw = OmegaConf.load(HARDWARE_DIR / f"{alias}.yaml")
    assert set(raw) == {"defaults"}  # one set of numbers: the alias holds none
    resolved = resolve_defaults(raw, HARDWARE_DIR)
    assert OmegaConf.to_container(resolved) == OmegaConf.to_container(
        OmegaConf.load(HARDWARE_DIR / f"{target}.yaml")
    )
    assert hardware_from_config(resolved) == load_hardware(target)


@pytest.mark.parametrize(
    ("node", "gpu", "out_gb_s"), [("dgx_a100", "a100_80gb_sxm", 25.0), ("dgx_h100", "h100_sxm", 50.0)]
)
def test_node_preset_extends_gpu_preset(node: str, gpu: str, out_gb_s: float) -> None:
    n, g = load_hardware(node), load_hardware(gpu)
    assert n.name != g.name
    assert n.scale_out_bandwidth_Bps == pytest.approx(out_gb_s * 1e9)
    assert n.scale_out_oversubscription == 1.0
    for f in data_fields():
        if not f.startswith("scale_out_"):
            assert getattr(n, f) == getattr(g, f), f


@pytest.mark.parametrize("name", PRESETS)
def test_hydra_composition_matches_loader(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+hardware={name}"])
    assert hardware_from_config(cfg.hardware) == load_hardware(name)


# --- the pytree ----------------------------------------------------------------------------------


def test_leaves_are_floats_and_static_fields_are_metadata() -> None:
    hw = load_hardware("h100_sxm")
    leaves, treedef = jax.tree_util.tree_flatten(hw)
    assert len(leaves) == len(data_fields())
    assert all(type(x) is float for x in leaves)
    assert "NVIDIA H100" in str(treedef)
    assert jax.tree_util.tree_unflatten(treedef, leaves) == hw


def test_vmap_over_stacked_presets() -> None:
    a100, h100 = load_hardware("a100_80gb_sxm"), load_hardware("h100_sxm")
    batch = stack_hardware([a100, h100])
    assert batch.peak_flops_bf16.shape == (2,)
    ratio = jax.jit(jax.vmap(lambda hw: hw.peak_flops_bf16 / hw.hbm_bandwidth_Bps))(batch)
    assert ratio.shape == (2,)
    assert ratio[0] == pytest.approx(312e12 / 2.039e12, rel=1e-5)
    assert ratio[1] == pytest.approx(989e12 / 3.35e12, rel=1e-5)


def test_grad_over_hardware_knobs() -> None:
    hw = load_hardware("h100_sxm")
    grads = jax.grad(lambda h: h.peak_flops_bf16 / h.hbm_bandwidth_Bps)(hw)
    assert isinstance(grads, Hardware)
    assert float(grads.peak_flops_bf16) == pytest.approx(1 / 3.35e12, rel=1e-5)
    assert float(grads.power_w) == 0.0


def test_stack_rejects_mixed_topologies() -> None:
    with pytest.raises(ConfigError, match="topolog"):
        stack_hardware([load_hardware("h100_sxm"), load_hardware("tpu_v5p")])


def test_peak_flops() -> None:
    a100 = load_hardware("a100_80gb")
    assert peak_flops(a100, "bf16") == pytest.approx(312e12)
    with pytest.raises(ConfigError, match=r"A100 80GB.*no fp8 peak.*supports: fp32, tf32, bf16, fp16"):
        peak_flops(a100, "fp8")
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        peak_flops(a100, "int3")
    # Under tracing the value is returned as is (no concrete check possible).
    assert float(jax.jit(lambda hw: peak_flops(hw, "fp8"))(a100)) == 0.0


def test_bytes_per_element() -> None:
    assert [bytes_per_element(p) for p in PRECISIONS] == [4, 4, 2, 2, 1, 0.5]
    with pytest.raises(ConfigError, match="unknown precision"):
        bytes_per_element("int8x")


# --- loader errors and user files ----------------------------------------------------------------


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"unknown hardware 'xyz'; available: a100_40gb, "):
        load_hardware("xyz")


def _write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_yaml_path_loads(tmp_path: Path) -> None:
    assert load_hardware(_write(tmp_path, H100_YAML)) == load_hardware("h100_sxm")


def test_user_yaml_extends_a_shipped_preset(tmp_path: Path) -> None:
    text = "defaults:\n  - h100_sxm\n  - _self_\nname: H100 on RoCE\nscale_out: {GBps_per_device: 25}\n"
    hw = load_hardware(str(_write(tmp_path, text)))
    assert hw.name == "H100 on RoCE"
    assert hw.scale_out_bandwidth_Bps == pytest.approx(25e9)
    assert hw.scale_out_latency_s == load_hardware("h100_sxm").scale_out_latency_s
    assert hw.peak_flops_bf16 == pytest.approx(989e12)


def test_workspace_and_host_broadcast_keys(tmp_path: Path) -> None:
    """Presets keep the 2 GiB GPU workspace and private host links; a user preset may change both."""
    h100 = load_hardware("h100_sxm")
    assert h100.workspace_bytes == 2 * 2**30 and h100.host_broadcast_devices == 1.0
    text = "defaults: [h100_sxm, _self_]\nworkspace_gib: 0.5\nhost: {broadcast_devices: 8}\n"
    hw = load_hardware(_write(tmp_path, text))
    assert hw.workspace_bytes == pytest.approx(0.5 * 2**30) and hw.host_broadcast_devices == 8.0
    assert hw.host_bandwidth_Bps == h100.host_bandwidth_Bps


def test_chained_defaults(tmp_path: Path) -> None:
    _write(tmp_path, "defaults: [a100_80gb]\npower_w: 300\n", "base.yaml")
    hw = load_hardware(_write(tmp_path, "defaults: [base, _self_]\nname: derived\n"))
    assert (hw.name, hw.power_w) == ("derived", 300.0)
    assert hw.hbm_capacity_bytes == 80 * 2**30


def test_circular_defaults(tmp_path: Path) -> None:
    _write(tmp_path, "defaults: [b]\n", "a.yaml")
    _write(tmp_path, "defaults: [a]\n", "b.yaml")
    with pytest.raises(ConfigError, match="circular"):
        load_hardware(tmp_path / "a.yaml")


def test_typo_key_names_key_and_lists_valid(tmp_path: Path) -> None:
    path = _write(tmp_path, H100_YAML.replace("hbm_gib:", "hbm_gbi:"))
    with pytest.raises(ConfigError, match=r"unknown key 'hbm_gbi'; valid keys: .*hbm_gib"):
        load_hardware(path)


def test_nested_typo_key(tmp_path: Path) -> None:
    path = _write(tmp_path, H100_YAML.replace("GBps_per_direction:", "GBps:"))
    with pytest.raises(ConfigError, match=r"unknown key 'scale_up.GBps'; valid keys: .*GBps_per_direction"):
        load_hardware(path)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("hbm_TBps: 3.35", "hbm_TBps: -3.35", "hbm_TBps"),
        ("power_w: 700", "power_w: -1", "power_w"),
        ("latency_us: 0.6", "latency_us: -0.6", "scale_up.latency_us"),
        ("oversubscription: 1.0", "oversubscription: 0.5", "scale_out.oversubscription"),
        ("hbm_gib: 80", "hbm_gib: eighty", "hbm_gib"),
    ],
)
def test_bad_numbers_name_the_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in H100_YAML
    with pytest.raises(ConfigError, match=f"'{field}'"):
        load_hardware(_write(tmp_path, H100_YAML.replace(old, new)))


@pytest.mark.parametrize("key", ["hbm_gib", "hbm_TBps"])
@pytest.mark.parametrize("value", [None, 0])
def test_capacity_and_bandwidth_must_be_known_and_positive(key: str, value: Any) -> None:
    """Every memory check divides or compares against these: unknown (null) or 0 would make every
    design infeasible or every step infinite, so they are an error, not a default."""
    chip = {"name": "x", "peak_tflops": {"bf16": 1.0}, "hbm_gib": 1, "hbm_TBps": 1} | {key: value}
    with pytest.raises(ConfigError, match=f"'{key}'"):
        hardware_from_config(chip)


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="missing required key 'hbm_TBps'"):
        hardware_from_config({"name": "x", "peak_tflops": {"bf16": 1.0}, "hbm_gib": 1})


def test_from_plain_mapping_with_defaults() -> None:
    hw = hardware_from_config(
        {"name": "paper chip", "peak_tflops": {"bf16": 100}, "hbm_gib": 16, "hbm_TBps": 2, "power_w": None}
    )
    assert hw.peak_flops_bf16 == pytest.approx(1e14)
    assert hw.power_w == 0.0  # null: unknown
    assert (hw.scale_up_domain_size, hw.scale_out_oversubscription, hw.topology) == (1.0, 1.0, "switched")
    assert jnp.isfinite(jnp.asarray(jax.tree_util.tree_leaves(hw))).all()
