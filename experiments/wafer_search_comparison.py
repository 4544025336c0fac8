"""Gradient descent vs random search vs Optuna TPE on the wafer design, at equal evaluations.

    python experiments/wafer_search_comparison.py [--seeds 3] [--steps 19] [--restarts 4]

One evaluation = one design scored over the whole mapping grid (the unit of ``search.wafer``'s
loss). Gradient descent gets ``restarts · (steps + 1)`` loss evaluations plus its rounded-neighbourhood
re-score; random search and TPE get the same number of exact evaluations. Prints, per method, the
best step time found for each seed and the mean, on the ``wafer_arch`` experiment's defaults
(Llama-3-70B, 5 nm, 4 wafers, 25 kW per wafer).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from hydra import compose, initialize_config_dir

from costmodels.training import TrainingJob
from dse import schema
from dse._app import CONF_DIR
from dse.models import load_model
from dse.wafer_search import knobs_of, system_of
from search.gd import gradient_descent
from search.optuna_driver import Param, optuna_search
from search.wafer import wafer_problem


def random_design(knobs: dict, rng: np.random.Generator) -> dict[str, float]:
    """Uniform within bounds; a simplex group drawn from a flat Dirichlet, rejected until within bounds."""
    out = {}
    groups: dict[str, list[str]] = {}
    for name, k in knobs.items():
        if k.group:
            groups.setdefault(k.group, []).append(name)
        elif k.integer:
            out[name] = float(rng.integers(int(k.low), int(k.high) + 1))
        else:
            lo, hi = (np.log(k.low), np.log(k.high)) if k.log else (k.low, k.high)
            x = rng.uniform(lo, hi)
            out[name] = float(np.exp(x) if k.log else x)
    for names in groups.values():
        while True:
            x = rng.dirichlet(np.ones(len(names)))
            if all(knobs[n].low <= v <= knobs[n].high for n, v in zip(names, x, strict=True)):
                break
        out |= {n: float(v) for n, v in zip(names, x, strict=True)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=19)
    ap.add_argument("--restarts", type=int, default=4)
    args = ap.parse_args()
    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=wafer_arch", "tracking=none"])
    system, knobs = system_of(cfg), knobs_of(cfg)
    job = TrainingJob(load_model(cfg.model), cfg.workload.seq_len, cfg.workload.precision)
    problem = wafer_problem(system, job, cfg.workload.global_batch, knobs, temperature=cfg.search.temperature)
    budget = args.restarts * (args.steps + 1)
    results: dict[str, list[float]] = {"gradient descent": [], "random search": [], "optuna TPE": []}
    times: dict[str, float] = dict.fromkeys(results, 0.0)
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        gd = gradient_descent(
            problem.loss,
            knobs,
            steps=args.steps,
            learning_rate=cfg.search.learning_rate,
            restarts=args.restarts,
            seed=seed,
            rescore=lambda v: problem.evaluate(v)["objective"],
        )
        results["gradient descent"].append(problem.evaluate(gd.best)["objective"])
        times["gradient descent"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        results["random search"].append(
            min(problem.evaluate(random_design(knobs, rng))["objective"] for _ in range(budget))
        )
        times["random search"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        space = {n: Param(low=k.low, high=k.high, integer=k.integer, log=k.log) for n, k in knobs.items()}

        def evaluate(v: dict) -> dict:
            total = sum(v[n] for n, k in knobs.items() if k.group)
            v = {n: (x / total if knobs[n].group else x) for n, x in v.items()}  # onto the simplex
            inside = all(knobs[n].low <= x <= knobs[n].high for n, x in v.items())  # after normalising
            m = problem.evaluate(v)
            return {"objective": min(m["objective"], 1e6), "feasible": m["feasible"] and inside}

        tpe = optuna_search(space, evaluate, n_trials=budget, seed=seed, sampler="tpe")
        results["optuna TPE"].append(float(tpe.metrics["objective"]))  # best feasible, in bounds
        times["optuna TPE"] += time.perf_counter() - t0
    print(f"wafer_arch defaults, {budget} evaluations per method and seed, {args.seeds} seeds")
    print(f"{'method':18s} {'mean step s':>12s} {'best':>9s} {'worst':>9s} {'wall s':>8s}  per seed")
    for name, vals in results.items():
        v = np.array(vals)
        print(
            f"{name:18s} {v.mean():12.4f} {v.min():9.4f} {v.max():9.4f} {times[name]:8.1f}  "
            + " ".join(f"{x:.4f}" for x in v)
        )


if __name__ == "__main__":
    main()
