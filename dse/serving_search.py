"""The ``serving`` experiment (``python -m dse.search +experiment=serving``): which deployment of a
model on a pool of GPUs serves the most requests per second per GPU within the SLOs.

Called by ``dse.search`` for ``problem=serving``: builds the requests, SLOs and engine settings from
``cfg.serving``, runs the configured driver (grid, random or Optuna) over ``search/serving.py``'s
problem (tensor parallelism, sequence and token budgets, the share of prefill-only replicas), and
reports the best design, the best colocated and the best disaggregated deployment side by side, the
rate at which each design's SLO attainment falls below the goal (its goodput), and the attainment
curves of the two against the request rate (``attainment.png``); everything is logged to MLflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from costmodels.deployment import ServingPlan
from costmodels.errors import ConfigError
from costmodels.hardware import PRECISIONS
from costmodels.inference import engine_preset
from costmodels.requests import SLO, lengths, synthetic
from dse._app import format_table, progress_callback
from dse.checks import positive_int
from dse.hardware import hardware_from_config
from dse.models import load_model
from dse.serve import check_engine_choices
from dse.tracking import JobRun
from search import drivers
from search.serving import FRACTIONS, KNOBS, OPTIONAL, ServingSetup, serving_problem

COLUMNS = ("goodput_per_gpu", "max_rate_per_s", "ttft_p90_ms", "tpot_p90_ms", "cost_usd_per_mtoken")
CURVE_POINTS = 12  # rates per attainment curve, from a tenth to twice the design's goodput rate


def setup_from_config(cfg: DictConfig) -> tuple[ServingSetup, dict[str, list[float]]]:
    """The shared setup and the searched space of ``cfg.serving``."""
    s = cfg.get("serving")
    if s is None:
        raise ConfigError("the serving search needs serving: settings (use +experiment=serving)")
    if s.precision not in PRECISIONS:
        raise ConfigError(f"serving.precision must be one of {', '.join(PRECISIONS)}, got {s.precision!r}")
    spec, hw = load_model(cfg.model), hardware_from_config(cfg.hardware)
    r = s.requests
    n = positive_int(r.count, "serving.requests.count")
    rng = np.random.default_rng(int(r.seed) + 1)
    inputs = lengths(rng, n, float(r.input_len), float(r.length_spread))
    outputs = lengths(rng, n, float(r.output_len), float(r.length_spread))
    unit = synthetic("poisson", n, 1.0, inputs, outputs, seed=int(r.seed)).arrival_s
    e = s.engine
    goal = float(s.slo.attainment)
    if not 0 < goal <= 1:
        raise ConfigError(f"serving.slo.attainment must be in (0, 1], got {goal}")
    engine_preset(str(e.launch), "serving.engine.launch")  # an unknown preset: one line, before any design
    check_engine_choices(e, "serving.engine.")
    sp = s.get("speculative") or {}
    acceptance = sp.get("acceptance", 0.7)
    if isinstance(acceptance, bool) or not isinstance(acceptance, int | float) or not 0 <= acceptance <= 1:
        raise ConfigError(f"serving.speculative.acceptance must be in [0, 1], got {acceptance!r}")
    draft = sp.get("draft_model")
    plan = ServingPlan(
        launch=str(e.launch),
        kv_precision=s.kv_precision,
        scheduler=str(e.scheduler),
        chunked_prefill=bool(e.chunked_prefill),
        priority=str(e.priority),
        block_size=positive_int(e.block_size, "serving.engine.block_size"),
        kv_admission=str(e.kv_admission),
        preemption=str(e.get("preemption", "recompute")),
        prefix_caching=bool(e.prefix_caching),
        across_nodes=bool(s.across_nodes),
        speculative_acceptance=float(acceptance),
        speculative_seed=int(sp.get("seed", 0)),
    )
    setup = ServingSetup(
        hw,
        spec,
        str(s.precision),
        inputs,
        outputs,
        unit,
        SLO(float(s.slo.ttft_ms), float(s.slo.tpot_ms)),
        goal,
        positive_int(s.gpus, "serving.gpus"),
        plan,
        None if draft is None else load_model(str(draft)),
    )
    space = OmegaConf.to_container(s.space, resolve=True)
    if isinstance(space, dict):
        space = {k: [v] for k, v in OPTIONAL.items()} | space  # left out: no pipeline, no speculation
    if not isinstance(space, dict) or sorted(space) != sorted(KNOBS):
        raise ConfigError(f"serving.space must list {', '.join(KNOBS)}, got {sorted(space or {})}")
    for k, values in space.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
            raise ConfigError(f"serving.space.{k} must be a non-empty list of numbers, got {values!r}")
        if k == "speculative_tokens" and any(v < 0 or v != int(v) for v in values):
            raise ConfigError(f"serving.space.{k} must hold integers >= 0, got {values}")
        if k not in (*FRACTIONS, "speculative_tokens") and any(v < 1 or v != int(v) for v in values):
            raise ConfigError(f"serving.space.{k} must hold positive integers, got {values}")
        if k == "prefill_share" and any(not 0 <= v < 1 for v in values):
            raise ConfigError(f"serving.space.prefill_share must be in [0, 1), got {values}")
    return setup, {k: [float(v) for v in vs] for k, vs in space.items()}


def run(cfg: DictConfig, run_: JobRun) -> dict[str, Any]:
    """Search the deployments, compare colocated and disaggregated, log, and return the report."""
    setup, space = setup_from_config(cfg)
    problem, designs = serving_problem(setup, space)
    options = dict(OmegaConf.to_container(cfg.search, resolve=True)) | {"chunk_size": 1}
    progress = progress_callback(bool(cfg.get("progress")), "serving designs", "design")
    result = drivers.run(
        str(cfg.search.driver), problem, options, seed=int(cfg.get("seed", 0)), progress=progress,
        problem_name="problem=serving",
    )  # fmt: skip
    table = result.table
    feasible = np.asarray(table["feasible"], bool)
    rows, seen = [], set()
    for i in np.argsort(np.asarray(table["objective"], float), kind="stable"):
        design = problem.describe({k: float(np.asarray(table[k])[i]) for k in KNOBS})
        key = tuple(design[k] for k in ("tp", "pp", "ep", "prefill", "decode", "max_num_seqs",
                                        "max_num_batched_tokens", "speculative_tokens"))  # fmt: skip
        if feasible[i] and key not in seen:  # two shares may give the same split: one row
            seen.add(key)
            rows.append(design | {c: float(np.asarray(table[c])[i]) for c in COLUMNS})
    best = {kind: next((r for r in rows if (r["prefill"] > 0) == kind), None) for kind in (False, True)}
    pairs = (("colocated", best[False]), ("disaggregated", best[True]))
    curves = {name: attainment_curve(designs, row) for name, row in pairs if row is not None}
    rep = {
        "model": str(cfg.model.get("_name_or_path", setup.spec.model_type)),
        "hardware": setup.hw.name,
        "gpus": setup.gpus,
        "driver": result.driver,
        "evaluations": result.evaluations,
        "slo": {"ttft_ms": setup.slo.ttft_ms, "tpot_ms": setup.slo.tpot_ms, "attainment": setup.attainment},
        "requests": {
            "count": len(setup.input_len),
            "mean_input_len": float(np.mean(setup.input_len)),
            "mean_output_len": float(np.mean(setup.output_len)),
        },
        "best": rows[0] if rows else None,
        "best_colocated": best[False],
        "best_disaggregated": best[True],
        "designs": rows,
        "curves": curves,
    }
    _log(run_, rep, cfg)
    return rep


def attainment_curve(designs: Any, row: dict[str, Any]) -> dict[str, Any]:
    """SLO attainment of ``row``'s design at ``CURVE_POINTS`` rates around its goodput rate, and its
    capacity (``search.serving.capacity``): above it no rate is sustained, whatever the finite
    trace's attainment, so the curve is 0 there (the limit of a longer trace), as in the search."""
    from search.serving import capacity

    deployment = designs.deploy(designs.plan({k: row[k] for k in KNOBS}))

    def run(rate: float) -> dict[str, float]:
        return designs.run(deployment, rate)

    ceiling = capacity(run)
    rates = np.linspace(0.1, 2.0, CURVE_POINTS) * row["max_rate_per_s"]
    out = [run(float(rate))["slo_attainment"] if rate <= ceiling else 0.0 for rate in rates]
    return {"rate_per_s": rates.tolist(), "slo_attainment": out, "capacity_per_s": ceiling}


def _design(row: dict[str, Any] | None) -> str:
    if row is None:
        return "none feasible"
    split = (
        f"{row['prefill']} prefill + {row['decode']} decode"
        if row["prefill"]
        else f"{row['decode']} colocated"
    )
    speculating = f", {row['speculative_tokens']} speculative tokens" if row["speculative_tokens"] else ""
    stages = f" × pp={row['pp']}" if row["pp"] > 1 else ""
    stages += f", experts over ep={row['ep']} devices" if row["ep"] > 1 else ""
    return (
        f"tp={row['tp']}{stages}, {split} replica(s), max_num_seqs={row['max_num_seqs']}, "
        f"max_num_batched_tokens={row['max_num_batched_tokens']}{speculating}"
    )


def render(rep: dict[str, Any]) -> str:
    """The report a person reads."""
    slo, req = rep["slo"], rep["requests"]
    head = (
        f"serving {rep['model']} on {rep['gpus']} × {rep['hardware']}: the highest Poisson request rate "
        f"per GPU with {slo['attainment']:.0%} of requests meeting TTFT ≤ {slo['ttft_ms']:g} ms and TPOT ≤ "
        f"{slo['tpot_ms']:g} ms\nrequests: {req['count']} per run, mean {req['mean_input_len']:.0f} input + "
        f"{req['mean_output_len']:.0f} output tokens; {rep['evaluations']} designs by {rep['driver']}"
    )
    lines = [head, "", f"best: {_design(rep['best'])}"]
    compare = []
    for name in ("colocated", "disaggregated"):
        row = rep[f"best_{name}"]
        if row is not None:
            compare.append([name, _design(row), *(_cell(c, row[c]) for c in COLUMNS)])
    if compare:
        lines += ["", format_table(["best", "design", *HEADERS], compare, align="ll" + "r" * len(COLUMNS))]
    top = [[_design(r), *(_cell(c, r[c]) for c in COLUMNS)] for r in rep["designs"][:10]]
    lines += [
        "",
        f"top {len(top)} designs:",
        format_table(["design", *HEADERS], top, align="l" + "r" * len(COLUMNS)),
    ]
    return "\n".join(lines)


HEADERS = ("goodput/GPU", "rate (req/s)", "TTFT p90", "TPOT p90", "$/M tokens")


def _cell(column: str, value: float) -> str:
    if column.endswith("_ms"):
        return f"{value:.0f} ms"
    if column == "cost_usd_per_mtoken":
        return f"${value:.2f}"
    return f"{value:.3f}" if column == "goodput_per_gpu" else f"{value:.2f}"


def _log(run_: JobRun, rep: dict[str, Any], cfg: DictConfig) -> None:
    """Parameters, the best design's metrics, the designs as CSV and the attainment curves."""
    run_.log_params({f"serving.{k}": v for k, v in OmegaConf.to_container(cfg.serving, resolve=True).items()
                     if not isinstance(v, dict)} | {"gpus": rep["gpus"]})  # fmt: skip
    if rep["best"] is not None:
        run_.log_metrics({c: rep["best"][c] for c in COLUMNS})
    if rep["designs"]:
        run_.log_table_csv({k: [r[k] for r in rep["designs"]] for k in rep["designs"][0]}, "designs.csv")
    if rep["curves"]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4))
        for name, curve in rep["curves"].items():
            (line,) = ax.plot(
                np.array(curve["rate_per_s"]) / rep["gpus"], curve["slo_attainment"], marker="o", label=name
            )
            ax.axvline(curve["capacity_per_s"] / rep["gpus"], color=line.get_color(), ls=":", lw=1)
        ax.axhline(rep["slo"]["attainment"], color="tab:red", ls="--", lw=1, label="goal")
        ax.set_xlabel("request rate per GPU (req/s); dotted: capacity, no rate above it is sustained")
        ax.set_ylabel("SLO attainment")
        ax.legend()
        fig.tight_layout()
        run_.log_figure(fig, "attainment.png")
        plt.close(fig)
