"""Leave-one-family-out cross-validation of the per-generation calibration.

    python experiments/crossval.py                 # every family, 120 Nelder-Mead evaluations each
    python experiments/crossval.py --fit 60 --families trtllm05 nemo2407

For each family, every generation it has cases in is refitted without it (the parameters of
``calibrate.GENERATIONS``, from their prior values ``calibrate.prior``: the fractions the preset
carried before any of that generation's cases were seen), and the family is scored with the refitted
fractions. That error is the honest figure for runs the model has not seen; the in-sample error (the
shipped presets, fitted on every case) is printed beside it. A low-precision GEMM fraction that no
remaining case exercises (FP4 without the FP4 serving table) is the other low precision's fitted
fraction times the public benchmarks' ratio (``transfer_unseen``); any other parameter no remaining
case exercises stays at its prior.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from calibrate import CASES, GENERATIONS, SOURCED_PRIORS, errors, fit, items, load_cases, prior

LOW = ("fp8", "fp4")


def transfer_unseen(generation: str, values: dict[str, float], seen: set[str]) -> dict[str, float]:
    """A low-precision GEMM fraction no remaining case exercises takes the fitted fraction of the
    other low precision times the public benchmarks' ratio of the two (``SOURCED_PRIORS``): the
    level from this generation's runs, the step between precisions from the GEMM benchmarks."""
    sourced, out = SOURCED_PRIORS.get(generation, {}), dict(values)
    for p, q in (LOW, LOW[::-1]):
        name, other = f"matmul_efficiency_{p}", f"matmul_efficiency_{q}"
        if name in out and other in out and p not in seen and q in seen:
            out[name] = out[other] * sourced[name] / sourced[other]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", type=int, default=120, help="Nelder-Mead evaluations per refit")
    ap.add_argument("--families", nargs="*", default=None, help="only these families (default: all)")
    args = ap.parse_args()
    t0 = time.time()
    cases = load_cases(CASES)
    precision = {c["id"]: c.get("precision") for c in cases}
    by_generation = {g: items(cases, g) for g in GENERATIONS}
    print(f"compiled {sum(map(len, by_generation.values()))} cases in {time.time() - t0:.0f} s")
    families = args.families or sorted({c[1] for gen in by_generation.values() for c in gen})
    rows = []
    for family in families:
        held, inside = [], []
        for g, gen_items in by_generation.items():
            mine = [c for c in gen_items if c[1] == family]
            if not mine:
                continue
            rest = [c for c in gen_items if c[1] != family]
            values = fit(g, rest, args.fit, start=prior(g)) if rest else prior(g)
            values = transfer_unseen(g, values, {precision[c[0]] for c in rest})
            held += errors(values, mine)
            inside += errors({}, mine)
        h, i = np.array([e for *_, e in held]), np.array([e for *_, e in inside])
        rows.append((family, len(h), np.mean(np.abs(h)), np.mean(h), np.mean(np.abs(i))))
        mape, mape_in = rows[-1][2], rows[-1][4]
        print(f"  {family:24s} n={len(h):3d} held-out MAPE {mape:5.1f} %, in-sample {mape_in:5.1f} %")
    print()
    print("family                    cases  held-out MAPE %  held-out bias %  in-sample MAPE %")
    for family, n, mape, bias, mape_in in rows:
        print(f"{family:24s}  {n:5d}  {mape:15.1f}  {bias:+15.1f}  {mape_in:16.1f}")
    print(f"mean over families        {len(rows):5d}  {np.mean([r[2] for r in rows]):15.1f}")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
