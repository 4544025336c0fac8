"""Host time per eager PyTorch kernel launch, and device time per kernel under CUDA-graph replay.

Run on a GPU machine: ``python experiments/device/launch_overhead.py``. Prints, for a chain of tiny
kernels (an in-place add on a 1-element tensor, whose own work is negligible):

* eager: wall time per op with no synchronisation inside the loop — the host's cost of one
  ``torch`` op (Python, dispatcher, ``cudaLaunchKernel``), since the GPU finishes each tiny kernel
  before the host issues the next;
* graph: the same chain captured once in a CUDA graph and replayed — the device's cost per kernel
  when the host launches nothing;
* gemm: a 4096³ bf16 GEMM, eager, as a check that the machine runs at its usual speed.

This is the measurement behind ``costmodels.inference.ENGINES``' per-kernel host time.
"""

import time

import torch


def per_op_s(fn, n: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    x = torch.zeros(1, device="cuda")
    n = 20000

    def eager() -> None:
        for _ in range(n):
            x.add_(1.0)

    eager()
    eager_s = per_op_s(eager, n)

    m = 2000
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            x.add_(1.0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(m):
            x.add_(1.0)
    graph.replay()
    graph_s = per_op_s(lambda: [graph.replay() for _ in range(10)], 10 * m)

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    gemm_s = per_op_s(lambda: [a @ a for _ in range(20)], 20)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    print(f"eager host time per tiny op: {eager_s * 1e6:.2f} us")
    print(f"graph replay time per tiny kernel: {graph_s * 1e6:.2f} us")
    print(f"4096^3 bf16 GEMM: {gemm_s * 1e6:.1f} us = {2 * 4096**3 / gemm_s / 1e12:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
