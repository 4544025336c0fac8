"""Hardware presets: ``conf/hardware/<name>.yaml`` (human units) -> :class:`~costmodels.hardware.Hardware`.

The YAML schema keeps units in the key names (``hbm_gib``, ``hbm_TBps``, ``scale_up.GBps_per_direction``,
``latency_us``); :func:`hardware_from_config` converts them once, through the table ``_SCHEMA``.
``null`` (or a missing optional key) means unknown / not modelled and takes the field's default: 0.0,
except the neutral 1 of ``scale_up.domain_size`` and ``scale_out.oversubscription``.

A preset may extend another with Hydra's config-group "extend" idiom::

    defaults:
      - a100_80gb_sxm      # a sibling option of the hardware group
      - _self_             # then this file's own keys, merged over it

Hydra apps composing ``hardware=<name>`` resolve that themselves; :func:`load_hardware` resolves it
here (one level or a chain), so both paths give the same :class:`Hardware`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from costmodels.errors import ConfigError
from costmodels.hardware import PRECISIONS, Hardware, validate_hardware
from costmodels.memory import GiB
from dse._app import CONF_DIR

HARDWARE_DIR = CONF_DIR / "hardware"

_MiB = float(2**20)

# YAML section ("" = top level) -> key -> (Hardware field, factor to SI). One row per numeric field.
_SCHEMA: dict[str, dict[str, tuple[str, float]]] = {
    "": {
        "hbm_gib": ("hbm_capacity_bytes", GiB),
        "hbm_TBps": ("hbm_bandwidth_Bps", 1e12),
        "sram_mib": ("sram_capacity_bytes", _MiB),
        "sram_TBps": ("sram_bandwidth_Bps", 1e12),
        "power_w": ("power_w", 1.0),
        "compute_units": ("compute_units", 1.0),
        "price_usd_per_hour": ("price_usd_per_hour", 1.0),
        "workspace_gib": ("workspace_bytes", GiB),
    },
    "peak_tflops": {p: (f"peak_flops_{p}", 1e12) for p in PRECISIONS},
    "scale_up": {
        "domain_size": ("scale_up_domain_size", 1.0),
        "GBps_per_direction": ("scale_up_bandwidth_Bps", 1e9),
        "latency_us": ("scale_up_latency_s", 1e-6),
    },
    "scale_out": {
        "GBps_per_device": ("scale_out_bandwidth_Bps", 1e9),
        "latency_us": ("scale_out_latency_s", 1e-6),
        "oversubscription": ("scale_out_oversubscription", 1.0),
    },
    "matmul_tile": {"m": ("matmul_tile_m", 1.0), "n": ("matmul_tile_n", 1.0)},
    "efficiency": {
        "matmul": ("matmul_efficiency", 1.0),
        "matmul_fp8": ("matmul_efficiency_fp8", 1.0),
        "matmul_fp4": ("matmul_efficiency_fp4", 1.0),
        "attention": ("attention_efficiency", 1.0),
        "flash_attention": ("flash_attention_efficiency", 1.0),
        "flash_attention_bwd": ("flash_attention_bwd_efficiency", 1.0),
        "memory": ("memory_efficiency", 1.0),
        "elementwise": ("elementwise_efficiency", 1.0),
        "collective": ("collective_efficiency", 1.0),
        "collective_base_latency_us": ("collective_base_latency_s", 1e-6),
        "kernel_overhead_us": ("kernel_overhead_s", 1e-6),
        "graph_kernel_overhead_us": ("graph_kernel_overhead_s", 1e-6),
    },
    "host": {
        "gib": ("host_memory_bytes", GiB),
        "GBps": ("host_bandwidth_Bps", 1e9),
        "broadcast_devices": ("host_broadcast_devices", 1.0),
    },
}
_STRINGS = ("name", "topology")
_REQUIRED = ("name", "peak_tflops", "hbm_gib", "hbm_TBps")  # present (and > 0: _POSITIVE)
_AT_LEAST_ONE = ("scale_up.domain_size", "scale_out.oversubscription")
# Essential Hardware fields have no default: a null there is stored as 0.0 ("unknown").
_NO_DEFAULT = ("peak_flops_bf16", "hbm_capacity_bytes", "hbm_bandwidth_Bps")
# every time divides by these: a zero would make a step infinite or NaN
_POSITIVE = ("hbm_gib", "hbm_TBps", "peak_tflops.bf16", "matmul_tile.m", "matmul_tile.n")
_FRACTIONS = tuple(f"efficiency.{k}" for k, (_, f) in _SCHEMA["efficiency"].items() if not k.endswith("_us"))
_ZERO_MEANS_DEFAULT = ("efficiency.matmul_fp8", "efficiency.matmul_fp4")  # 0: as the 16-bit fraction


def hbm_gib(hw: Hardware) -> float:
    """A device's HBM capacity in GiB (2³⁰ bytes), the unit of every memory figure dse prints."""
    return float(hw.hbm_capacity_bytes) / GiB


def available_hardware() -> list[str]:
    """Names of the shipped presets (``conf/hardware/*.yaml``), sorted."""
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


def load_hardware(name_or_path: str | Path) -> Hardware:
    """A preset name under ``conf/hardware/``, or a path to a YAML file in the same schema."""
    path = _locate(name_or_path)
    cfg = resolve_defaults(_load_yaml(path), path.parent, chain=(path.resolve(),))
    return hardware_from_config(cfg, source=str(path))


def hardware_from_config(cfg: Mapping[str, Any], source: str = "hardware config") -> Hardware:
    """Convert one config in the YAML schema (human units) to :class:`Hardware` (SI), checking it."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of hardware keys")
    if "defaults" in data:
        raise ConfigError(f"{source}: unresolved 'defaults' list; load it with dse.hardware.load_hardware")
    valid_top = [*_STRINGS, *(s for s in _SCHEMA if s), *_SCHEMA[""]]
    _reject_unknown(data, valid_top, source, prefix="")
    for key in _REQUIRED:
        if key not in data:
            raise ConfigError(f"{source}: missing required key '{key}'")

    kwargs: dict[str, Any] = {}
    for key in _STRINGS:
        if data.get(key) is not None:
            if not isinstance(data[key], str):
                raise ConfigError(f"{source}: '{key}' must be a string, got {data[key]!r}")
            kwargs[key] = data[key]
    for section, rows in _SCHEMA.items():
        values = data if not section else data.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: '{section}' must be a mapping with keys {', '.join(rows)}")
        if section:
            _reject_unknown(values, list(rows), source, prefix=f"{section}.")
        for key, (field_name, factor) in rows.items():
            if key in values:
                label = f"{section}.{key}" if section else key
                number = _number(values[key], label, source)
                if number is not None:
                    kwargs[field_name] = number * factor
    for field_name in _NO_DEFAULT:
        kwargs.setdefault(field_name, 0.0)
    return validate_hardware(Hardware(**kwargs))


def resolve_defaults(cfg: DictConfig, base_dir: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """Resolve a preset's ``defaults:`` list (sibling options, then ``_self_``) into one config.

    Entries name sibling files in ``base_dir`` (falling back to the shipped presets); they may
    themselves extend others. Without ``_self_`` the file's own keys come last, as in Hydra >= 1.1.
    """
    own = cfg.copy()
    defaults = own.pop("defaults", None)
    if defaults is None:
        return own
    if not isinstance(defaults, ListConfig):
        raise ConfigError(f"'defaults' must be a list of preset names, got {defaults!r}")
    entries = list(defaults)
    if "_self_" not in entries:
        entries.append("_self_")
    parts: list[DictConfig] = []
    for entry in entries:
        if entry == "_self_":
            parts.append(own)
            continue
        if not isinstance(entry, str) or not entry or "/" in entry or entry.startswith("override"):
            raise ConfigError(f"unsupported defaults entry {entry!r}: name a sibling hardware preset")
        path = _sibling(entry, base_dir)
        if path.resolve() in chain:
            cycle = " -> ".join(p.stem for p in (*chain, path))
            raise ConfigError(f"circular hardware defaults: {cycle}")
        parts.append(resolve_defaults(_load_yaml(path), path.parent, chain=(*chain, path.resolve())))
    merged = OmegaConf.merge(*parts)
    assert isinstance(merged, DictConfig)
    return merged


def _locate(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    preset = HARDWARE_DIR / f"{text}.yaml"
    if "/" not in text and "\\" not in text and preset.is_file():
        return preset
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"hardware file not found: {path}")
        return path
    raise ConfigError(f"unknown hardware {text!r}; available: {', '.join(available_hardware())}")


def _sibling(name: str, base_dir: Path) -> Path:
    for folder in (base_dir, HARDWARE_DIR):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"defaults entry {name!r} not found; available: {', '.join(available_hardware())}")


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors and the like are the user's to fix
        raise ConfigError(f"cannot read hardware file {path}: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"hardware file {path} must hold a mapping of keys")
    return cfg


def _reject_unknown(values: dict[str, Any], valid: list[str], source: str, prefix: str) -> None:
    for key in values:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'; valid keys: {', '.join(valid)}")


def _number(value: Any, label: str, source: str) -> float | None:
    """A finite non-negative number (>= 1 where the field is a count or factor), or None for null."""
    if value is None and label in _POSITIVE:
        raise ConfigError(f"{source}: '{label}' is required: a number > 0")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{source}: '{label}' must be a number or null, got {value!r}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{source}: '{label}' must be finite, got {value!r}")
    if number < 0:
        raise ConfigError(f"{source}: '{label}' must be >= 0, got {value!r}")
    if label in _AT_LEAST_ONE and number < 1:
        raise ConfigError(f"{source}: '{label}' must be >= 1, got {value!r}")
    if label in _POSITIVE and number == 0:
        raise ConfigError(f"{source}: '{label}' must be > 0, got {value!r}")
    if label in _FRACTIONS and number > 1:
        raise ConfigError(f"{source}: '{label}' is a fraction of peak and must be <= 1, got {value!r}")
    if label in _FRACTIONS and number == 0 and label not in _ZERO_MEANS_DEFAULT:
        raise ConfigError(f"{source}: '{label}' must be > 0 (a fraction of peak, at most 1), got {value!r}")
    return number
