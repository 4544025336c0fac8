"""``python -m dse.compare``: one model and workload on several hardware presets, side by side.

    python -m dse.compare model=llama3_70b hardware=a100_80gb,h100_sxm,h200,b200,mi300x
    python -m dse.compare +experiment=inference_slo hardware=h100_sxm,h200,b200
    python -m dse.compare +experiment=gpu_cluster hardware=a100_80gb,h100_sxm search=optuna

Each preset gets its own search for its best mapping (the configured driver, the grid by default),
so every preset is compared at its best, not at one mapping that suits one of them. The searches run
as one Hydra multirun of ``dse.search`` (``-m`` over ``hardware``): each is an MLflow run under one
sweep run, and at the end one table — the best mapping, step time (training) or TTFT and TPOT
(serving), tokens/s, MFU, memory, cost per million tokens and energy per token of each preset — is
printed, written to the sweep directory as ``sweep.csv`` and ``sweep.png`` and logged to the sweep
run. Each job prints one line instead of its full report (``job_report=true`` prints them all).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dse._app import fail


def search_argv(argv: Sequence[str]) -> list[str]:
    """The ``dse.search`` command line of a comparison: a multirun over ``hardware``, job reports off
    unless asked for."""
    args = [a for a in argv if a not in ("-m", "--multirun")]
    presets = [a.partition("=")[2] for a in args if a.startswith("hardware=")]
    if not presets or not presets[-1]:
        fail("give the presets to compare: hardware=a100_80gb,h100_sxm,... (see conf/hardware/)")
    if not any(a.startswith("job_report=") for a in args):
        args.append("job_report=false")
    return ["-m", *args]


def main() -> None:
    from dse import search

    sys.argv[1:] = search_argv(sys.argv[1:])
    search.main()


if __name__ == "__main__":
    main()
