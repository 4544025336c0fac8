"""The roofline bound of an op: time = max(FLOPs / peak FLOP/s, bytes / memory bandwidth).

Williams, Waterman & Patterson, "Roofline: an insightful visual performance model for multicore
architectures", CACM 2009. An op whose operational intensity (FLOPs per byte) is below the ridge
point ``peak / bandwidth`` is memory-bound, above it compute-bound. This is the ideal bound with
no efficiency losses; the compute cost model refines it per kernel class.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.workload import Op


@dataclass(frozen=True)
class RooflinePoint:
    """An op on the roofline; times are per execution, ``total_time_s`` over its ``count``."""

    op: Op
    compute_s: float
    memory_s: float

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def total_time_s(self) -> float:
        return self.time_s * self.op.count

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


def ridge_intensity(peak_flops: float, bandwidth_Bps: float) -> float:
    """FLOPs per byte at which the memory roof meets the compute roof."""
    return peak_flops / bandwidth_Bps


def roofline(ops: list[Op], peak_flops: float, bandwidth_Bps: float) -> list[RooflinePoint]:
    """Each op's compute time ``flops / peak`` and memory time ``bytes / bandwidth``."""
    return [RooflinePoint(op, op.flops / peak_flops, op.bytes / bandwidth_Bps) for op in ops]
