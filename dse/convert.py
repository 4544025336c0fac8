"""``python -m dse.convert``: the throughput conversions of the 3D-parallel training calculators.

    python -m dse.convert samples_per_s=19.463 seq_len=2048
    python -m dse.convert samples_per_s=19.463 seq_len=2048 model=bloom_176b hardware=a100_80gb_sxm \\
        num_devices=384 [precision=bf16]
    python -m dse.convert mfu=0.36 seq_len=2048 model=bloom_176b hardware=a100_80gb_sxm num_devices=384
    python -m dse.convert iteration_time_s=105.22 global_batch=2048 [seq_len=2048] [format=json]

Give exactly one rate; it becomes samples/s, and every rate its other inputs allow is derived from
that. Each rate is ``factor · samples/s`` with the factors of :data:`RATES` (``iteration_time_s`` is
``global_batch / samples/s``). An input no derived rate can use is an error naming what to add
(``hardware=`` alone gives no MFU without ``model=`` and ``num_devices=``).

Model FLOPs per sample are :func:`costmodels.metrics.model_flops_per_sequence`: forward + backward
matmul and attention FLOPs, no recompute, the attention scores counted by ``attention``: ``causal``
(the default, as NeMo / Megatron-Bridge and every other dse figure count them) or ``full`` (the
``s×s`` count of PaLM, Chowdhery et al. 2022, App. B, and Megatron-LM, Narayanan et al. 2021, Eq. 3
without its recompute term — the convention of the A100-era logs). Megatron(-DeepSpeed) logs report
TFLOP/s *with* recompute: about 4/3 of ``model_tflops_per_device`` under full recompute (BLOOM-176B,
``attention=full``: 149.02 logged, 112.3 here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from costmodels.errors import ConfigError
from costmodels.hardware import peak_flops
from costmodels.metrics import mfu, model_flops_per_sequence, tokens_per_day
from dse._app import print_json, run_app
from dse.checks import positive_int
from dse.hardware import hardware_from_config
from dse.models import load_model

FLOPS_DEFINITION = {
    "causal": "model FLOPs: fwd + bwd matmul and causal attention, no recompute (NeMo / Megatron-Bridge)",
    "full": "model FLOPs: fwd + bwd matmul and full s×s attention, no recompute (PaLM / Megatron-LM 2021)",
}


@dataclass(frozen=True)
class Inputs:
    """What the conversions use besides the rate; None where not given."""

    seq_len: int | None = None
    global_batch: int | None = None
    num_devices: int | None = None
    model: str | None = None  # shipped name or config path (display); flops_per_sample needs seq_len too
    flops_per_sample: float | None = None
    hardware: str | None = None  # preset name (display)
    precision: str | None = None
    peak_flops: float | None = None  # dense peak FLOP/s of one device in ``precision``

    def has(self, key: str) -> bool:
        return getattr(self, key) is not None


@dataclass(frozen=True)
class Rate:
    """A rate as ``factor(inputs) · samples/s``, or ``factor(inputs) / samples/s`` when ``inverse``."""

    needs: tuple[str, ...]
    factor: Callable[[Inputs], float]
    unit: str
    inverse: bool = False


RATES: dict[str, Rate] = {
    "samples_per_s": Rate((), lambda x: 1.0, "sequences/s"),
    "tokens_per_s": Rate(("seq_len",), lambda x: float(x.seq_len), "tokens/s"),
    "tokens_per_day": Rate(("seq_len",), lambda x: tokens_per_day(1.0, x.seq_len), "tokens/day"),
    "iteration_time_s": Rate(("global_batch",), lambda x: float(x.global_batch), "s", inverse=True),
    "model_tflops_per_device": Rate(
        ("model", "seq_len", "num_devices"), lambda x: x.flops_per_sample / x.num_devices / 1e12, "TFLOP/s"
    ),
    "mfu": Rate(
        ("model", "seq_len", "num_devices", "hardware"),
        lambda x: mfu(x.flops_per_sample, x.num_devices, x.peak_flops),
        "of peak",
    ),
}
# Every result and the inputs it needs (the rates, and the FLOP count they share).
NEEDS: dict[str, tuple[str, ...]] = {
    **{name: rate.needs for name, rate in RATES.items()},
    "model_flops_per_sample": ("model", "seq_len"),
}
HINTS = {
    "seq_len": "seq_len=<tokens>",
    "global_batch": "global_batch=<sequences>",
    "num_devices": "num_devices=<n>",
    "model": "model=<name or config.json>",
    "hardware": "hardware=<name>",
}


def available(inputs: Inputs) -> list[str]:
    """The results whose inputs are all given."""
    return [name for name, needs in NEEDS.items() if all(inputs.has(k) for k in needs)]


def check_inputs(rate: str, inputs: Inputs) -> None:
    """The rate's own inputs are given, and every given input serves some result (else: what to add)."""
    missing = [HINTS[k] for k in RATES[rate].needs if not inputs.has(k)]
    if missing:
        raise ConfigError(f"{rate}= needs {', '.join(missing)}: add {'it' if len(missing) == 1 else 'them'}")
    used = {k for name in available(inputs) for k in NEEDS[name]}
    for key in HINTS:
        if inputs.has(key) and key not in used:
            uses = [name for name, needs in NEEDS.items() if key in needs]
            best = min(uses, key=lambda name: sum(not inputs.has(k) for k in NEEDS[name]))
            add = [HINTS[k] for k in NEEDS[best] if not inputs.has(k)]
            them = "it" if len(add) == 1 else "them"
            raise ConfigError(
                f"{key}= only serves {best}, which also needs {', '.join(add)}: add {them}, or drop {key}="
            )


def convert(rate: str, value: float, inputs: Inputs) -> dict[str, float]:
    """Every result the inputs allow, from one ``rate`` of ``value``.

    >>> bloom = Inputs(seq_len=2048, global_batch=2048)
    >>> r = convert("samples_per_s", 19.463, bloom)
    >>> round(r["tokens_per_s"]), f"{r['tokens_per_day']:.4g}", round(r["iteration_time_s"], 2)
    (39860, '3.444e+09', 105.23)
    """
    check_inputs(rate, inputs)
    source = RATES[rate]
    factor = source.factor(inputs)
    samples_per_s = factor / value if source.inverse else value / factor
    if not (math.isfinite(samples_per_s) and samples_per_s > 0):  # 5e-324 tokens/day underflows to 0
        raise ConfigError(f"{rate}={value:g} is out of range: it is {samples_per_s:g} samples/s")
    out: dict[str, float] = {}
    for name in available(inputs):
        if name == "model_flops_per_sample":
            out[name] = float(inputs.flops_per_sample)
        else:
            rate_of, factor_of = RATES[name], RATES[name].factor(inputs)
            out[name] = factor_of / samples_per_s if rate_of.inverse else factor_of * samples_per_s
    for name, result in out.items():  # an absurd value overflows a derived rate (1e308 s per step)
        if not (math.isfinite(result) and result > 0):
            raise ConfigError(f"{rate}={value:g} is out of range: {name} would be {result:g}")
    return out


# ------------------------------------------------------------------------------------------- app


def given_rate(cfg: DictConfig) -> tuple[str, float]:
    """The one rate on the command line, checked (positive, finite; an MFU is a fraction)."""
    given = {name: cfg[name] for name in RATES if cfg.get(name) is not None}
    if len(given) != 1:
        names = ", ".join(f"{n}=" for n in RATES)
        got = f"; got {' and '.join(f'{k}={v}' for k, v in given.items())}" if given else ""
        raise ConfigError(f"give exactly one rate: {names}{got}")
    [(name, value)] = given.items()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    if name == "mfu" and value > 1:
        raise ConfigError(
            f"mfu is a fraction in (0, 1], got {value} (for {value:g} % pass mfu={value / 100:g})"
        )
    return name, float(value)


def _count(cfg: DictConfig, key: str) -> int | None:
    value = cfg.get(key)
    return None if value is None else positive_int(value, key)


def inputs_from_config(cfg: DictConfig) -> Inputs:
    """Counts, the model's FLOPs per sample (with seq_len) and the hardware peak, where given."""
    seq_len, choices = _count(cfg, "seq_len"), HydraConfig.get().runtime.choices
    model = hardware = None
    flops = peak = None
    if cfg.get("model") is not None:
        model = str(cfg.model.source) if choices.get("model") == "path" else str(choices.get("model"))
        spec = load_model(cfg.model)
        flops = model_flops_per_sequence(spec, seq_len, cfg.attention) if seq_len else None
    if cfg.get("hardware") is not None:
        hw = hardware_from_config(cfg.hardware)
        hardware, peak = str(choices.get("hardware")), float(peak_flops(hw, cfg.precision))
    return Inputs(
        seq_len=seq_len,
        global_batch=_count(cfg, "global_batch"),
        num_devices=_count(cfg, "num_devices"),
        model=model,
        flops_per_sample=flops,
        hardware=hardware,
        precision=cfg.precision if hardware else None,
        peak_flops=peak,
    )


def _fmt(name: str, value: float) -> str:
    if name == "mfu":
        return f"{value:.4f} ({100 * value:.2f} %)"
    return f"{value:,.0f}" if name == "tokens_per_s" else f"{value:.5g}"


def render(rep: dict[str, Any]) -> str:
    """The given rate and inputs, then one line per result."""
    [(rate, value)] = rep["given"].items()
    x = rep["inputs"]
    counts = ", ".join(f"{k} = {x[k]}" for k in ("seq_len", "global_batch", "num_devices") if k in x)
    lines = [f"given {rate} = {value:g}" + (f"; {counts}" if counts else "")]
    if "model" in x:
        lines.append(f"model {x['model']}")
    if "hardware" in x:
        lines.append(
            f"hardware {x['hardware']}: {x['peak_flops'] / 1e12:g} TFLOP/s {x['precision']} dense peak"
        )
    units = {**{n: r.unit for n, r in RATES.items()}, "model_flops_per_sample": "FLOP"}
    width = max(map(len, rep["results"]))
    lines += ["", *(f"{n.ljust(width)}  {_fmt(n, v)} {units[n]}" for n, v in rep["results"].items())]
    if "model_flops_per_sample" in rep["results"]:
        lines += ["", rep["flops_definition"]]
    return "\n".join(lines)


def task(cfg: DictConfig) -> None:
    if cfg.format not in ("table", "json"):
        raise ConfigError(f"format must be 'table' or 'json', got '{cfg.format}'")
    if cfg.attention not in FLOPS_DEFINITION:
        raise ConfigError(f"attention must be causal or full, got {cfg.attention!r}")
    rate, value = given_rate(cfg)
    inputs = inputs_from_config(cfg)
    results = convert(rate, value, inputs)
    rep = {
        "given": {rate: value},
        "inputs": {k: v for k, v in asdict(inputs).items() if v is not None and k != "flops_per_sample"},
        "results": results,
        "flops_definition": FLOPS_DEFINITION[cfg.attention],
    }
    if cfg.format == "json":
        print_json(rep)
    else:
        print(render(rep))


def main() -> None:
    run_app(task, "convert")


if __name__ == "__main__":
    main()
