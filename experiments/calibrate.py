"""Calibrate one accelerator's efficiency parameters on the validation set (A100 by default).

    python experiments/calibrate.py            # errors of the preset's current parameters
    python experiments/calibrate.py --fit 150  # Nelder-Mead over the parameters, then the errors

The parameters are hardware-level kernel-class fractions (``matmul``, ``attention``, ``memory``,
``elementwise``, ``collective``, ``kernel_overhead``): one set for every case of the hardware,
never one per case. The objective is the mean absolute % error of the training cases plus that of
the inference cases, with Korthikanti et al. 2022 Table 5 counted three times (it is the most
carefully controlled table) and a small weight on the worst case. Training cases with a null
micro-batch or vpp take the fastest admissible choice, as ``dse.predict`` does.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from scipy.optimize import minimize

from costmodels.architectures import parse_hf_config
from costmodels.inference import InferenceJob, inference_step
from costmodels.parallel import make_plan
from costmodels.training import TrainingJob, training_step
from dse.hardware import load_hardware
from dse.predict import _plans

CASES = Path(__file__).parent / "validation" / "calibration.yaml"
PARAMS = (
    "matmul_efficiency",
    "attention_efficiency",
    "memory_efficiency",
    "elementwise_efficiency",
    "collective_efficiency",
    "kernel_overhead_s",
)
SCALE = np.array([1, 1, 1, 1, 1, 1e-6])


def stack(plans: list) -> object:
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, float) for x in xs]), *plans)


def training_items(cases: list[dict], hardware: str) -> list[tuple]:
    """(id, family, measured, jitted best-step-time function of hw, stacked plans) per training case."""
    items = []
    for c in cases:
        if c["kind"] != "training" or "iteration_time_s" not in c["measured"] or c["hardware"] != hardware:
            continue
        spec = parse_hf_config(c["model"])
        job = TrainingJob(spec, c["batch"]["seq_len"], c["precision"], fused_attention=False)
        table = job.table()
        plans = stack([make_plan(**v) for v in _plans(c, spec.num_layers)])

        def best(hw, plans, job=job, table=table):
            out = jax.vmap(lambda q: training_step(hw, job, q, table))(plans)
            return jnp.min(jnp.where(out.feasible, out.step_time_s, jnp.inf))

        items.append((c["id"], c["family"], c["measured"]["iteration_time_s"], jax.jit(best), plans))
    return items


def inference_items(cases: list[dict], hardware: str) -> list[tuple]:
    """Inference e2e-latency cases grouped by (model, lengths): one jitted vmap over (tp, batch) each."""
    groups = collections.defaultdict(list)
    for c in cases:
        if c["kind"] == "inference" and "latency_ms" in c["measured"] and c["hardware"] == hardware:
            groups[(c.get("model_name"), c["batch"]["input_len"], c["batch"]["output_len"])].append(c)
    items = []
    for (_, n_in, n_out), group in groups.items():
        job = InferenceJob(parse_hf_config(group[0]["model"]), n_in, n_out, group[0]["precision"])
        tables = job.tables()
        tp = jnp.array([float(c["parallelism"]["tp"]) for c in group])
        batch = jnp.array([float(c["batch"]["batch_size"]) for c in group])

        def latency(hw, tp, batch, job=job, tables=tables):
            return jax.vmap(lambda t, b: inference_step(hw, job, t, 1.0, b, tables=tables).latency_s)(
                tp, batch
            )

        items.append(
            (
                [c["id"] for c in group],
                group[0].get("model_name"),
                np.array([c["measured"]["latency_ms"] for c in group]) / 1e3,
                jax.jit(latency),
                tp,
                batch,
            )
        )
    return items


def errors(hw, train: list, infer: list) -> tuple[list, list]:
    tr = [(i, fam, 100 * (float(f(hw, p)) - m) / m) for i, fam, m, f, p in train]
    inf = []
    for ids, name, measured, f, tp, batch in infer:
        pred = np.asarray(f(hw, tp, batch))
        inf += [(i, name, e) for i, e in zip(ids, 100 * (pred - measured) / measured, strict=True)]
    return tr, inf


def objective(tr: list, inf: list) -> float:
    t = np.abs([e for *_, e in tr])
    i = np.abs([e for *_, e in inf]) if inf else np.zeros(1)
    k = np.abs([e for _, fam, e in tr if fam == "korthikanti2022_t5"] or [0.0])
    return float(t.mean() + i.mean() + 2 * k.mean() + 0.1 * t.max() + 0.05 * i.max())


def report(tr: list, inf: list) -> None:
    for i, _, e in tr:
        print(f"  {i:45s} {e:+6.1f} %")
    groups = collections.defaultdict(list)
    for _, fam, e in tr + inf:
        groups[fam].append(abs(e))
    for fam, v in groups.items():
        print(f"  {fam:25s} n={len(v):3d} mean |err| {np.mean(v):5.2f} %  max {np.max(v):6.2f} %")
    print(
        f"training MAPE {np.mean([abs(e) for *_, e in tr]):.2f} %, "
        f"inference MAPE {np.mean([abs(e) for *_, e in inf] or [0]):.2f} %"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", default="a100_80gb_sxm")
    ap.add_argument("--fit", type=int, default=0, help="Nelder-Mead function evaluations (0: no fit)")
    args = ap.parse_args()
    cases = yaml.load(CASES.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["cases"]
    base = load_hardware(args.hardware)
    train, infer = training_items(cases, args.hardware), inference_items(cases, args.hardware)
    x0 = np.array([getattr(base, p) for p in PARAMS]) / SCALE

    def hw_of(x: np.ndarray):
        return dataclasses.replace(
            base, **{p: float(v * s) for p, v, s in zip(PARAMS, x, SCALE, strict=True)}
        )

    def loss(x: np.ndarray) -> float:
        if np.any(x <= 0) or np.any(x[:5] > 1):
            return 1e9
        return objective(*errors(hw_of(x), train, infer))

    x = x0
    if args.fit:
        x = minimize(loss, x0, method="Nelder-Mead", options={"maxfev": args.fit, "xatol": 1e-3}).x
    print(
        {p: round(float(v * s), 8) for p, v, s in zip(PARAMS, x, SCALE, strict=True)},
        f"objective {loss(x):.3f}",
    )
    report(*errors(hw_of(x), train, infer))


if __name__ == "__main__":
    main()
