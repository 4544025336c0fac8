"""Any PyTorch module through the op model: its FX graph's kernels (``search/fx_ops.py``) priced by the
roofline and the kernel model (``python -m dse.roofline module=...``). FLOPs are checked against hand
counts of each network's matrix products."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.fx_graph import capture
from search.fx_ops import graph_ops

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "experiments" / "fx_models.py"


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fx_models", MODELS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with torch.device("meta"):
        return getattr(mod, name)()


def ops_of(name: str, shape: list[int], joint: bool):
    module = _load(name)
    return module, graph_ops(capture(module, [torch.zeros(*shape, device="meta")], joint=joint))


def gemm_flops(ops) -> float:
    return sum(op.gemm_flops * op.count for op in ops if op.kind == "matmul")


def test_gemm_chain_forward_and_training_step_by_hand() -> None:
    """4 linear layers of 1024 on a batch of 256: forward 4 GEMMs of 2·256·1024² FLOPs (+ 256·1024
    bias adds each), reading each 4 MiB fp32 weight (through its transpose view) as weight bytes.
    A training step adds 4 weight-gradient GEMMs and 3 input-gradient ones (the input needs none):
    11 GEMMs in all."""
    b, w = 256, 1024
    _, fwd = ops_of("gemm_chain", [b, w], joint=False)
    addmm = next(op for op in fwd if op.name == "aten.addmm.default")
    assert (addmm.count, addmm.flops, addmm.mnk) == (4, 2.0 * b * w * w + b * w, (b, w, w))
    assert addmm.weight_bytes == 4.0 * (w * w + w) and addmm.input_bytes == 4.0 * b * w
    _, step = ops_of("gemm_chain", [b, w], joint=True)
    assert gemm_flops(step) == 11 * 2.0 * b * w * w


def test_cnn_convolutions_as_implicit_gemms() -> None:
    """Batch 64 of 32×32 RGB: conv1 (3→64, 3×3, same) = 2·64·1024·64·27 FLOPs + a bias per output;
    conv2 on 16×16 (64→128) = 2·64·256·128·576. Backward: both weight gradients, only conv2's input
    gradient (the image needs none), each as many FLOPs as its forward GEMM; the classifier (8192 → 10)
    its forward and both gradients."""
    conv1, conv2 = 2.0 * 64 * 1024 * 64 * 27, 2.0 * 64 * 256 * 128 * 576
    _, fwd = ops_of("small_cnn", [64, 3, 32, 32], joint=False)
    convs = sorted(op.gemm_flops for op in fwd if op.name == "aten.convolution")
    assert convs == sorted([conv1, conv2])
    first = next(op for op in fwd if op.gemm_flops == conv1)
    assert first.flops == conv1 + 64 * 64 * 1024 and first.mnk == (64 * 1024, 64, 27)
    _, step = ops_of("small_cnn", [64, 3, 32, 32], joint=True)
    linear = 2.0 * 64 * 10 * 8192
    assert gemm_flops(step) == 2 * conv1 + 3 * conv2 + 3 * linear  # the classifier: forward, both gradients


def test_lstm_gemms_by_hand() -> None:
    """An LSTM (256 features, 512 hidden) over 128 steps of a batch of 32: its four gates cost
    2·B·T·4h·(features + h) FLOPs of matrix products however PyTorch batches them, plus the
    read-out 2·B·h."""
    module, fwd = ops_of("lstm", [32, 128, 256], joint=False)
    b, t, f, h = 32, 128, 256, 512
    assert gemm_flops(fwd) == 2.0 * b * t * 4 * h * (f + h) + 2.0 * b * h
    assert sum(p.numel() for p in module.parameters()) == 4 * h * (f + h) + 8 * h + h + 1


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.roofline", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_a_module_gets_a_roofline_and_a_training_step_estimate(tmp_path: Path) -> None:
    proc = run(f"module={MODELS}:small_cnn", "inputs=[[64,3,32,32]]", "format=json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    assert rep["params"] == 157_578 and rep["model_type"] == "torch module, training step"
    names = {o["name"] for o in rep["ops"]}
    assert {"aten.convolution", "aten.convolution.dgrad", "aten.convolution.wgrad"} <= names
    t = rep["totals"]
    assert 0 < t["time_s"] <= t["kernel_time_s"]  # the kernel model never beats the roofline
    table = run(f"module={MODELS}:gemm_chain", "inputs=[[256,1024]]", "training=false", cwd=tmp_path)
    assert table.returncode == 0 and "estimated time" in table.stdout and "one forward pass" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("module=nowhere/models.py:net",), "no file nowhere/models.py"),
        (("module=experiments",), "module must be path/to/file.py:factory"),
        ((f"module={MODELS}:missing",), "has no callable 'missing'"),
        ((f"module={MODELS}:small_cnn", "inputs=[[4,5]]"), "does not trace on inputs [[4, 5]]"),
        ((f"module={MODELS}:small_cnn", "inputs=[[4,0,2]]"), "every dimension must be a positive integer"),
        ((f"module={MODELS}:small_cnn", "precision=fp8"), "precision for a module must be one of"),
    ],
)
def test_a_module_that_cannot_be_priced_is_one_line(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[
        -2000:
    ]
