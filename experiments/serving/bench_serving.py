"""Time the request simulator: build one deployment's step table, then simulate 10,000 requests at
loads from light to saturated, and print the seconds of each (issue 16's goal: 10,000 requests in
≤ 2 s after the table is built, on the 2-core CI machine). A fixed reference workload (NumPy sorting
10 million floats) runs first so that the figures can be read as a ratio on a noisy machine.

    python experiments/serving/bench_serving.py
"""

from __future__ import annotations

import time

import numpy as np

from costmodels.inference import ENGINES, InferenceJob
from costmodels.requests import Scheduler, lengths, simulate, synthetic
from costmodels.serving import kv_capacity_tokens, step_table
from dse.hardware import load_hardware
from dse.models import load_model


def main() -> None:
    start = time.perf_counter()
    np.sort(np.random.default_rng(0).random(10_000_000))
    print(f"reference (sort 1e7 floats): {time.perf_counter() - start:.2f} s")
    hw, spec = load_hardware("h100_sxm"), load_model("llama3_8b")
    job = InferenceJob(spec, 1024, 128, precision="bf16", engine=ENGINES["tensorrt-llm"])
    start = time.perf_counter()
    table = step_table(hw, job, 1, 8192, 256, 8192)
    print(
        f"step table (8,192 tokens, 256 sequences, 8,192-token contexts): {time.perf_counter() - start:.2f} s"
    )
    blocks = kv_capacity_tokens(hw, job, 1, 8192) // 16
    rng = np.random.default_rng(0)
    n = 10_000
    inputs, outputs = lengths(rng, n, 1024, 0.5), lengths(rng, n, 128, 0.5)
    for rate in (1.0, 10.0, 30.0, 100.0):
        w = synthetic("poisson", n, rate, inputs, outputs, seed=1)
        start = time.perf_counter()
        sim = simulate(w, table, Scheduler(kv_blocks=blocks))
        took = time.perf_counter() - start
        print(f"10,000 requests at {rate:5.1f} req/s: {took:.2f} s ({sim.steps:,} engine steps)")


if __name__ == "__main__":
    main()
