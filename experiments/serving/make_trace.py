"""Write ``bursty_trace.jsonl``: a synthetic request trace for ``dse.serve workload.arrival=trace``.

300 requests whose gaps are gamma-distributed (mean 0.25 s, coefficient of variation 3: bursts and
lulls), prompts log-normal around 600 tokens (σ = 0.8, 16 to 4,000) and outputs log-normal around 150
tokens (σ = 0.7, 4 to 1,000), rounded to whole tokens; seed 7. It is an example of the format (JSON
Lines: ``arrival_s``, ``input_len``, ``output_len``), not a measured trace.

    python experiments/serving/make_trace.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def main() -> None:
    rng = np.random.default_rng(7)
    n, mean_gap, cv = 300, 0.25, 3.0
    shape = 1.0 / cv**2
    arrivals = np.cumsum(rng.gamma(shape, mean_gap / shape, n))
    prompts = np.clip(np.rint(rng.lognormal(np.log(600), 0.8, n)), 16, 4000).astype(int)
    outputs = np.clip(np.rint(rng.lognormal(np.log(150), 0.7, n)), 4, 1000).astype(int)
    out = Path(__file__).with_name("bursty_trace.jsonl")
    with out.open("w") as f:
        for t, i, o in zip(arrivals, prompts, outputs, strict=True):
            f.write(
                json.dumps({"arrival_s": round(float(t), 4), "input_len": int(i), "output_len": int(o)})
                + "\n"
            )
    print(f"wrote {out} ({n} requests over {arrivals[-1]:.1f} s)")


if __name__ == "__main__":
    main()
