"""Gradient descent vs random search vs Optuna TPE on the wafer design, at equal evaluations.

    python experiments/wafer_search_comparison.py [--seeds 3] [--steps 19] [--restarts 4]

One evaluation = one design scored over the whole mapping grid (the unit of ``search.wafer``'s
loss). Gradient descent gets ``restarts · (steps + 1)`` loss evaluations plus its rounded-neighbourhood
re-score; random search and TPE get the same number of exact evaluations. All three run through the
driver registry (``search.drivers``) on the same problem, with no adapter. Prints, per method, the
best step time found for each seed and the mean, on the ``wafer_arch`` experiment's defaults
(Llama-3-70B, 5 nm, 4 wafers, 25 kW per wafer).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import optuna
from hydra import compose, initialize_config_dir

from costmodels.training import TrainingJob
from dse import schema
from dse._app import CONF_DIR
from dse.models import load_model
from dse.wafer_search import knobs_of, system_of
from search import drivers
from search.wafer import wafer_problem

METHODS = {"gradient descent": "gd", "random search": "random", "optuna TPE": "optuna"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=19)
    ap.add_argument("--restarts", type=int, default=4)
    args = ap.parse_args()
    schema.register()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per study otherwise
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=wafer_arch", "tracking=none"])
    system, knobs = system_of(cfg), knobs_of(cfg)
    job = TrainingJob(load_model(cfg.model), cfg.workload.seq_len, cfg.workload.precision)
    wafer = wafer_problem(system, job, cfg.workload.global_batch, knobs, temperature=cfg.search.temperature)
    problem = wafer.problem()  # the one problem every driver of search.drivers runs on
    budget = args.restarts * (args.steps + 1)
    options = {
        "gd": {"steps": args.steps, "learning_rate": cfg.search.learning_rate, "restarts": args.restarts},
        "random": {"n_samples": budget},
        "optuna": {"n_trials": budget, "sampler": "tpe", "objective": "objective"},
    }
    results: dict[str, list[float]] = {name: [] for name in METHODS}
    times: dict[str, float] = dict.fromkeys(METHODS, 0.0)
    for seed in range(args.seeds):
        for name, driver in METHODS.items():
            t0 = time.perf_counter()
            found = drivers.run(driver, problem, options[driver], seed=seed)
            results[name].append(wafer.evaluate(found.best)["objective"])  # exact, whatever the driver
            times[name] += time.perf_counter() - t0
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
