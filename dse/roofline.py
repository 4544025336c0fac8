"""``python -m dse.roofline``: per-op FLOPs, bytes and roofline time of one inference step, or of
any PyTorch module's forward pass or training step (its FX graph, ``search/fx_ops.py``).

    python -m dse.roofline model=llama2_7b hardware=h100_sxm batch_size=2 \\
        'cached_tokens=[1048576,1024]' 'input_tokens=[1,1]' [format=json] [plot=roofline.png]
    python -m dse.roofline module=experiments/fx_models.py:small_cnn 'inputs=[[64,3,32,32]]'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig

from costmodels.architectures import ModelSpec
from costmodels.errors import ConfigError
from costmodels.hardware import bytes_per_element, peak_flops
from costmodels.roofline import RooflinePoint, ridge_intensity, roofline
from costmodels.workload import inference_ops, kv_cache_bytes, parameter_count, state_bytes
from dse._app import format_table, print_json, run_app
from dse.checks import check_results, positive_int
from dse.hardware import hardware_from_config
from dse.models import load_model
from dse.units import fmt_bytes, fmt_count, fmt_time

MAX_QUERIES = 65_536
MAX_TOKENS = 2**31 - 1


def queries(cfg: DictConfig) -> tuple[list[int], list[int]]:
    """Per-query (cached, input) token lists; a single entry is repeated for all ``batch_size`` queries.
    (``source_tokens``, an encoder-decoder's, is read by :func:`sources`.)"""
    n = positive_int(cfg.batch_size, "batch_size")
    if n > MAX_QUERIES:  # the report lists every query
        raise ConfigError(f"batch_size must be <= {MAX_QUERIES:,} (one row per query), got {n:,}")
    lists = {}
    for name in ("cached_tokens", "input_tokens"):
        value = cfg[name]
        lists[name] = list(value) if isinstance(value, ListConfig | list) else [value]
    cached, new = lists["cached_tokens"], lists["input_tokens"]
    for name, values in (("cached_tokens", cached), ("input_tokens", new)):
        if len(values) == 1:
            values *= n
        if len(values) != n:
            raise ConfigError(f"{name} has {len(values)} entries for batch_size={n}: give 1 or {n}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v <= MAX_TOKENS for v in values):
            raise ConfigError(f"{name} must be integers up to {MAX_TOKENS:,}, got {values}")
    return cached, new


def sources(cfg: DictConfig, spec: ModelSpec, n: int) -> list[int]:
    """Per-query encoder input lengths of an encoder-decoder (``source_tokens``); [] for other models."""
    value = cfg.get("source_tokens")
    if not spec.encoder_layers:
        if value is not None:
            raise ConfigError(f"source_tokens is for encoder-decoder models; {spec.model_type} is not one")
        return []
    if value is None:
        raise ConfigError(
            f"{spec.model_type} is an encoder-decoder: give source_tokens=[n] (the encoder's input tokens "
            "per query; the encoder runs in this step where cached_tokens is 0)"
        )
    values = list(value) if isinstance(value, ListConfig | list) else [value]
    values = values * n if len(values) == 1 else values
    if len(values) != n or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_TOKENS for v in values
    ):
        raise ConfigError(
            f"source_tokens must be 1 or {n} integers in [1, {MAX_TOKENS:,}], got {list(value)}"
        )
    return values


def model_name(cfg: DictConfig) -> str:
    choice = HydraConfig.get().runtime.choices.get("model", "?")
    return str(cfg.model.source) if choice == "path" else choice


def report(cfg: DictConfig) -> dict[str, Any]:
    """The roofline report as a JSON-ready dict (SI units)."""
    if cfg.get("module"):
        return module_report(cfg)
    spec = load_model(cfg.model)
    hw = hardware_from_config(cfg.hardware)
    cached, new = queries(cfg)
    source = sources(cfg, spec, len(new))
    peak, bandwidth = peak_flops(hw, cfg.precision), hw.hbm_bandwidth_Bps
    ops = inference_ops(
        spec,
        cached,
        new,
        cfg.precision,
        source_tokens=source,
        kv_precision=cfg.kv_precision,
        fused_attention=cfg.fused_attention,
        mla_absorb=cfg.mla_absorb,
    )
    points = roofline(ops, peak, bandwidth)
    params = parameter_count(spec)
    kv_precision = cfg.kv_precision or cfg.precision
    rep = {
        "model": model_name(cfg),
        "model_type": spec.model_type,
        "hardware": hw.name,
        "precision": cfg.precision,
        "queries": [
            {"cached_tokens": c, "input_tokens": n} | ({"source_tokens": source[i]} if source else {})
            for i, (c, n) in enumerate(zip(cached, new, strict=True))
        ],
        "peak_flops": float(peak),
        "bandwidth_Bps": float(bandwidth),
        "ridge_flops_per_byte": float(ridge_intensity(peak, bandwidth)),
        "params": params,
        "weights_bytes": params * bytes_per_element(cfg.precision),
        "kv_cache_bytes": kv_cache_bytes(
            spec, [c + n for c, n in zip(cached, new, strict=True)], kv_precision, sources=source
        ),
        "state_bytes": state_bytes(spec, len(new), kv_precision),
        "hbm_capacity_bytes": float(hw.hbm_capacity_bytes),
        "matmul_efficiency": float(hw.matmul_efficiency),
        "memory_efficiency": float(hw.memory_efficiency),
        "ops": [_op_row(p) for p in points],
        "totals": {
            "flops": sum(p.op.flops * p.op.count for p in points),
            "bytes": sum(p.op.bytes * p.op.count for p in points),
            "time_s": sum(p.total_time_s for p in points),
        },
    }
    rep["warnings"] = _warnings(rep)
    check_results(rep, f"dse.roofline with {rep['model']} on {hw.name}")
    return rep


TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _load_factory(spec: str) -> Any:
    """``path/to/file.py:factory`` or ``package.module:factory`` → the callable; a ConfigError naming
    ``module`` otherwise."""
    import importlib
    import importlib.util

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(f"module must be path/to/file.py:factory or package.module:factory, got {spec!r}")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ConfigError(f"module={spec}: no file {path}")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(mod)
        else:
            mod = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:  # the user's code: any import error is theirs to fix, in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"module={spec}: cannot import {where}: {type(exc).__name__}: {first}") from None
    factory = getattr(mod, name, None)
    if not callable(factory):
        raise ConfigError(f"module={spec}: {where} has no callable {name!r}")
    return factory


def _module_inputs(cfg: DictConfig, dtype: Any) -> list[Any]:
    import torch

    shapes = cfg.inputs
    if not isinstance(shapes, ListConfig | list) or not all(isinstance(x, ListConfig | list) for x in shapes):
        raise ConfigError(f"inputs must be a list of shapes, e.g. 'inputs=[[8,3,32,32]]', got {shapes!r}")
    for shape in shapes:
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            raise ConfigError(f"inputs: every dimension must be a positive integer, got {list(shape)}")
    if cfg.input_dtype not in ("float", "int64"):
        raise ConfigError(f"input_dtype must be float or int64, got {cfg.input_dtype!r}")
    kind = torch.long if cfg.input_dtype == "int64" else dtype
    return [torch.zeros(*shape, dtype=kind, device="meta") for shape in shapes]


def module_report(cfg: DictConfig) -> dict[str, Any]:
    """The roofline of any ``torch.nn.Module``'s FX graph (``search.fx_ops``), built on the meta
    device in the precision's type, with each op's time by the kernel model too and their sum: a
    forward pass, or (``training``) a training step on one device."""
    import torch

    from costmodels.compute import KINDS, kernel_time_s
    from search.fx_graph import capture
    from search.fx_ops import graph_ops
    from search.fx_ops import parameter_count as module_parameters

    hw = hardware_from_config(cfg.hardware)
    if cfg.precision not in TORCH_DTYPES:
        raise ConfigError(
            f"precision for a module must be one of {', '.join(TORCH_DTYPES)}, got {cfg.precision!r}"
        )
    dtype = getattr(torch, TORCH_DTYPES[cfg.precision])
    factory = _load_factory(str(cfg.module))
    inputs = _module_inputs(cfg, dtype)
    try:
        with torch.device("meta"):
            module = factory()
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(
                f"module={cfg.module} returned a {type(module).__name__}, not a torch.nn.Module"
            )
        module = module.to(dtype)
        captured = capture(module, inputs, joint=bool(cfg.training))
    except ConfigError:
        raise
    except Exception as exc:  # the shapes or the module do not trace: say which, in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"module={cfg.module} does not trace on inputs {list(map(list, cfg.inputs))}: "
                          f"{type(exc).__name__}: {first}") from None  # fmt: skip
    ops = graph_ops(captured)
    peak, bandwidth = peak_flops(hw, cfg.precision), hw.hbm_bandwidth_Bps
    points = roofline(ops, peak, bandwidth)
    rows = [_op_row(p) for p in points]
    for row, op in zip(rows, ops, strict=True):  # the kernel model: efficiencies, waves, launch overhead
        rows_, cols, reduce = op.mnk or (1.0, 1.0, 1.0)
        kind = KINDS["flash" if op.flash else op.kind]
        row["kernel_time_s"] = float(
            kernel_time_s(
                hw, peak, kind, op.flops, op.bytes, rows_, cols, op.gemms, reduce, precision=cfg.precision
            )
        )
    params = module_parameters(module)
    rep = {
        "model": str(cfg.module),
        "model_type": "torch module, " + ("training step" if cfg.training else "forward pass"),
        "hardware": hw.name,
        "precision": cfg.precision,
        "inputs": [list(x) for x in cfg.inputs],
        "peak_flops": float(peak),
        "bandwidth_Bps": float(bandwidth),
        "ridge_flops_per_byte": float(ridge_intensity(peak, bandwidth)),
        "params": params,
        "weights_bytes": params * bytes_per_element(cfg.precision),
        "hbm_capacity_bytes": float(hw.hbm_capacity_bytes),
        "matmul_efficiency": float(hw.matmul_efficiency),
        "memory_efficiency": float(hw.memory_efficiency),
        "ops": rows,
        "totals": {
            "flops": sum(p.op.flops * p.op.count for p in points),
            "bytes": sum(p.op.bytes * p.op.count for p in points),
            "time_s": sum(p.total_time_s for p in points),
            "kernel_time_s": sum(r["kernel_time_s"] * r["count"] for r in rows),
        },
        "warnings": [],
    }
    check_results(rep, f"dse.roofline with module {cfg.module} on {hw.name}")
    return rep


def _warnings(rep: dict[str, Any]) -> list[str]:
    """The step cannot run on one device when its weights and KV cache exceed the HBM."""
    need = rep["weights_bytes"] + rep["kv_cache_bytes"]
    if need <= rep["hbm_capacity_bytes"]:
        return []
    return [
        f"weights ({fmt_bytes(rep['weights_bytes'])}) + KV cache ({fmt_bytes(rep['kv_cache_bytes'])}) = "
        f"{fmt_bytes(need)} do not fit in one {rep['hardware']}'s "
        f"{fmt_bytes(rep['hbm_capacity_bytes'])} of HBM: "
        "the times above assume they did (shard the model, or use fewer or shorter queries)"
    ]


def _op_row(p: RooflinePoint) -> dict[str, Any]:
    op = p.op
    return {
        "name": op.name,
        "kind": op.kind,
        "count": op.count,
        "flops": op.flops,
        "weight_bytes": op.weight_bytes,
        "input_bytes": op.input_bytes,
        "output_bytes": op.output_bytes,
        "intensity": op.intensity,
        "bound": p.bound,
        "time_s": p.time_s,
        "total_time_s": p.total_time_s,
    }


def render(rep: dict[str, Any]) -> str:
    rows = [
        [
            o["name"],
            o["count"],
            fmt_count(o["flops"]),
            fmt_bytes(o["weight_bytes"]),
            fmt_bytes(o["input_bytes"]),
            fmt_bytes(o["output_bytes"]),
            f"{o['intensity']:.2f}",
            o["bound"],
            fmt_time(o["time_s"]),
            fmt_time(o["total_time_s"]),
        ]
        for o in rep["ops"]
    ]
    table = format_table(
        ["op", "count", "FLOPs", "weights", "inputs", "outputs", "FLOP/B", "bound", "time", "time x count"],
        rows,
        align="lrrrrrrlrr",
    )
    t = rep["totals"]
    what = f"inputs {rep['inputs']}" if "inputs" in rep else f"{len(rep['queries'])} queries"
    summary = [
        f"model {rep['model']} ({rep['model_type']}) on {rep['hardware']}, {rep['precision']}: "
        f"{what}, peak {fmt_count(rep['peak_flops'], 'FLOP/s')}, "
        f"HBM {fmt_count(rep['bandwidth_Bps'], 'B/s')}, ridge {rep['ridge_flops_per_byte']:.1f} FLOP/B",
        "",
        table,
        "",
        f"total FLOPs      {fmt_count(t['flops'])}",
        f"total bytes      {fmt_bytes(t['bytes'])}",
        f"total time       {fmt_time(t['time_s'])} (roofline bound, sum over ops)",
    ]
    if "kernel_time_s" in t:
        what = "training step" if "training" in rep["model_type"] else "forward pass"
        summary.append(
            f"estimated time   {fmt_time(t['kernel_time_s'])} (one {what} on one device: the kernel model's "
            "efficiencies, waves and launch overheads, sum over ops)"
        )
    summary += [f"parameters       {rep['params']:,}", f"weight bytes     {fmt_bytes(rep['weights_bytes'])}"]
    if "kv_cache_bytes" in rep:
        state = rep["state_bytes"]
        summary.append(
            f"KV cache bytes   {fmt_bytes(rep['kv_cache_bytes'])}"
            + (f" (of which {fmt_bytes(state)} state-space state)" if state else "")
        )
    summary += [
        f"HBM capacity     {fmt_bytes(rep['hbm_capacity_bytes'])}",
        *(f"warning: {w}" for w in rep["warnings"]),
    ]
    return "\n".join(summary)


def plot_roofline(rep: dict[str, Any], path: Path) -> None:
    """Save :func:`roofline_figure` to ``path``."""
    import matplotlib.pyplot as plt

    fig = roofline_figure(rep)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def roofline_figure(rep: dict[str, Any], labels: int = 6) -> Any:
    """Ops on the hardware roofline (log-log): x = FLOPs per byte, y = attained FLOP/s; marker area
    by the op's share of the step time, the ``labels`` largest shares named, the derated roof (the
    preset's achievable GEMM and HBM fractions) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    peak, bw = rep["peak_flops"], rep["bandwidth_Bps"]
    ops = [o for o in rep["ops"] if o["flops"] > 0 and o["time_s"] > 0]
    xs = np.array([o["intensity"] for o in ops])
    ys = np.array([o["flops"] / o["time_s"] for o in ops])
    share = np.array([o["total_time_s"] for o in ops]) / rep["totals"]["time_s"]
    grid = np.logspace(
        np.log10(max(min(xs.min(), 1.0) / 4, 1e-3)), np.log10(max(xs.max(), peak / bw) * 4), 200
    )
    fig, ax = plt.subplots(figsize=(9, 6))
    ax.loglog(grid, np.minimum(peak, grid * bw), "k-", lw=2, label="roofline: peak and HBM bandwidth")
    derated = (rep["matmul_efficiency"], rep["memory_efficiency"])
    if min(derated) < 1.0:
        ax.loglog(grid, np.minimum(peak * derated[0], grid * bw * derated[1]), "k--", lw=1,
                  label=f"achievable: {derated[0]:.0%} of peak, {derated[1]:.0%} of bandwidth")  # fmt: skip
    colours = {"memory": "tab:red", "compute": "tab:blue"}
    for bound, colour in colours.items():
        mask = np.array([o["bound"] == bound for o in ops])
        if mask.any():
            ax.scatter(xs[mask], ys[mask], s=20 + 600 * share[mask], color=colour, alpha=0.7,
                       label=f"{bound}-bound op (area: share of step time)")  # fmt: skip
    ranked = np.argsort(-share)[:labels]  # numbered on the plot, named in a list: ops often coincide
    for rank, i in enumerate(ranked, start=1):
        offset = (-4 + 9 * rank, 6)  # side by side, so coinciding ops stay readable
        ax.annotate(str(rank), (xs[i], ys[i]), fontsize=8, xytext=offset, textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.5})  # fmt: skip
    names = "\n".join(
        f"{rank}. {ops[i]['name']}: {share[i]:.1%} of the step" for rank, i in enumerate(ranked, 1)
    )
    ax.text(0.02, 0.98, f"largest shares of the step time\n{names}", transform=ax.transAxes, va="top",
            fontsize=8, bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})  # fmt: skip
    ax.set_xlabel("operational intensity (FLOP/byte)")
    ax.set_ylabel("attained FLOP/s")
    step = f"one step of {len(rep['queries'])} queries" if "queries" in rep else rep["model_type"]
    ax.set_title(f"{rep['model']} on one {rep['hardware']} ({rep['precision']}): {step}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def task(cfg: DictConfig) -> None:
    rep = report(cfg)
    if cfg.plot:
        plot_roofline(rep, Path(str(cfg.plot)))
    if cfg.format == "json":
        print_json(rep)
    elif cfg.format == "table":
        print(render(rep))
    else:
        raise ConfigError(f"format must be 'table' or 'json', got '{cfg.format}'")


def main() -> None:
    run_app(task, "roofline")


if __name__ == "__main__":
    main()
