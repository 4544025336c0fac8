"""Tests of ``python -m dse.ckpt_summarize``: pure summarizing, file readers, and the CLI."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from costmodels.errors import ConfigError
from dse.ckpt_summarize import (
    TensorMeta,
    collect,
    human_bytes,
    prefix_of,
    read_safetensors,
    read_torch,
    render_table,
    summarize,
    walk,
)


class Tiny(nn.Module):
    """encoder = Linear(4, 3): 12 + 3 = 15 parameters; head = Linear(3, 2): 6 + 2 = 8 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)


def tiny_state(head_bf16: bool = False) -> dict[str, torch.Tensor]:
    model = Tiny()
    if head_bf16:
        model.head.to(torch.bfloat16)
    return model.state_dict()


def summary_of(path: Path, **kwargs: int) -> dict:
    files, metas, non_tensor = collect(path)
    return summarize(metas, non_tensor_entries=non_tensor, files=[str(f) for f in files], **kwargs)


# --- pure logic: no files ---------------------------------------------------------------------------


def test_prefix_of() -> None:
    assert prefix_of("model.layers.0.mlp.weight", 1) == "model"
    assert prefix_of("model.layers.0.mlp.weight", 2) == "model.layers"
    assert prefix_of("bias", 3) == "bias"


def test_summarize_metadata_only() -> None:
    """a: fp32 [4, 3] = 12 elements, 48 B; b: bf16 [10] = 10 elements, 20 B; c: bf16 [2, 5] = 10, 20 B.

    ``a_tied`` has a's storage key, so it is an alias: 3 tensors, 32 parameters, 88 bytes, 1 alias.
    """
    metas = [
        TensorMeta("enc.a", "float32", (4, 3), storage_key=("s", 0)),
        TensorMeta("enc.b", "bfloat16", (10,), storage_key=("s", 1)),
        TensorMeta("dec.c", "bfloat16", (2, 5)),
        TensorMeta("dec.a_tied", "float32", (4, 3), storage_key=("s", 0)),
    ]
    s = summarize(metas, non_tensor_entries=2, top=2)
    assert (s["tensors"], s["parameters"], s["bytes"], s["aliases"]) == (3, 32, 88, 1)
    assert s["alias_of"] == {"dec.a_tied": "enc.a"}
    assert s["by_dtype"] == {
        "float32": {"tensors": 1, "parameters": 12, "bytes": 48},
        "bfloat16": {"tensors": 2, "parameters": 20, "bytes": 40},
    }
    assert s["by_prefix"] == {
        "enc": {"tensors": 2, "parameters": 22, "bytes": 68},
        "dec": {"tensors": 1, "parameters": 10, "bytes": 20},
    }
    assert [t["name"] for t in s["largest"]] == ["enc.a", "dec.c"]  # 48 B, then 20 B (name breaks the tie)
    assert s["largest"][0] == {
        "name": "enc.a",
        "dtype": "float32",
        "shape": [4, 3],
        "elements": 12,
        "bytes": 48,
    }
    assert s["non_tensor_entries"] == 2


def test_walk_names_and_non_tensor_leaves() -> None:
    """Lists of plain values (betas, params) are one leaf each; an empty dict yields nothing."""
    t = torch.zeros(2)
    ckpt = {
        "model": {"w": t},
        "optimizer": {
            "state": {0: {"step": 7, "exp_avg": t}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}],
        },
        "extra": {},
        "epoch": 3,
    }
    names = [name for name, _ in walk(ckpt)]
    assert names == [
        "model.w",
        "optimizer.state.0.step",
        "optimizer.state.0.exp_avg",
        "optimizer.param_groups.0.lr",
        "optimizer.param_groups.0.betas",
        "epoch",
    ]
    assert [name for name, _ in walk(t)] == ["<root>"]


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.50 KiB"
    assert human_bytes(7 * 2**30 + 2**29) == "7.50 GiB"


def test_render_table_sections() -> None:
    """One 3 GiB bf16 tensor (1.5 Gi elements × 2 B) renders in GiB with two decimals."""
    metas = [TensorMeta("model.embed.weight", "bfloat16", (3 * 2**29,))]
    text = render_table(summarize(metas, path="x.safetensors"))
    assert "checkpoint: x.safetensors" in text
    assert "3.00 GiB" in text
    for header in ("dtype", "prefix (depth 1)", "largest 1 tensors:"):
        assert header in text


# --- file readers ----------------------------------------------------------------------------------


def test_torch_state_dict_counts_and_dtypes(tmp_path: Path) -> None:
    """encoder fp32: 15 parameters × 4 B = 60 B; head bf16: 8 parameters × 2 B = 16 B; total 23, 76 B."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_state(head_bf16=True), path)
    s = summary_of(path)
    assert (s["tensors"], s["parameters"], s["bytes"], s["aliases"], s["non_tensor_entries"]) == (
        4,
        23,
        76,
        0,
        0,
    )
    assert s["by_dtype"]["float32"] == {"tensors": 2, "parameters": 15, "bytes": 60}
    assert s["by_dtype"]["bfloat16"] == {"tensors": 2, "parameters": 8, "bytes": 16}
    assert s["by_prefix"] == {
        "encoder": {"tensors": 2, "parameters": 15, "bytes": 60},
        "head": {"tensors": 2, "parameters": 8, "bytes": 16},
    }
    assert s["largest"][0] == {
        "name": "encoder.weight",
        "dtype": "float32",
        "shape": [3, 4],
        "elements": 12,
        "bytes": 48,
    }


def test_nested_checkpoint_with_optimizer_state(tmp_path: Path) -> None:
    """model: 23 parameters; optimizer exp_avg [3, 4]: 12 → 35 parameters, 140 B (all fp32).

    Non-tensor leaves: step, lr, betas, params, epoch = 5. At depth 2, prefixes are
    model.encoder (15), model.head (8), optimizer.state (12), and no tensor sits under param_groups.
    """
    ckpt = {
        "model": tiny_state(),
        "optimizer": {
            "state": {0: {"step": 10, "exp_avg": torch.zeros(3, 4)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
        },
        "epoch": 2,
    }
    path = tmp_path / "train.pth"
    torch.save(ckpt, path)
    s = summary_of(path)
    assert (s["tensors"], s["parameters"], s["bytes"], s["non_tensor_entries"]) == (5, 35, 140, 5)
    assert {k: v["parameters"] for k, v in s["by_prefix"].items()} == {"model": 23, "optimizer": 12}
    s2 = summary_of(path, depth=2)
    assert {k: v["parameters"] for k, v in s2["by_prefix"].items()} == {
        "model.encoder": 15,
        "model.head": 8,
        "optimizer.state": 12,
    }


def test_tied_weights_are_counted_once(tmp_path: Path) -> None:
    """embed [10, 4] = 40 and lm_head.weight tied to it; lm_head.bias = 10: 2 tensors, 50 parameters, 1 alias.

    Two halves of one storage (different offsets) are distinct tensors, not aliases: +6 parameters.
    """
    embed, head = nn.Embedding(10, 4), nn.Linear(4, 10)
    head.weight = embed.weight
    base = torch.zeros(6)
    ckpt = {
        "embed.weight": embed.weight,
        "lm_head.weight": head.weight,
        "lm_head.bias": head.bias,
        "halves.lo": base[:3],
        "halves.hi": base[3:],
    }
    path = tmp_path / "tied.bin"
    torch.save(ckpt, path)
    s = summary_of(path)
    assert (s["tensors"], s["parameters"], s["aliases"]) == (4, 56, 1)
    assert s["alias_of"] == {"lm_head.weight": "embed.weight"}
    assert s["by_prefix"]["lm_head"] == {"tensors": 1, "parameters": 10, "bytes": 40}


def test_legacy_non_zip_format_falls_back(tmp_path: Path) -> None:
    """The pre-1.6 (non-zip) format cannot be mmapped; it still loads: 23 parameters."""
    path = tmp_path / "legacy.pt"
    torch.save(tiny_state(), path, _use_new_zipfile_serialization=False)
    metas, non_tensor = read_torch(path)
    assert sum(m.elements for m in metas) == 23 and non_tensor == 0


def test_safetensors_header_only(tmp_path: Path) -> None:
    """fp32 [3, 4] = 12 × 4 = 48 B; bf16 [5] = 5 × 2 = 10 B; the names match safe_open's."""
    path = tmp_path / "m.safetensors"
    save_file({"a.w": torch.ones(3, 4), "b.w": torch.ones(5, dtype=torch.bfloat16)}, path)
    metas = read_safetensors(path)
    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == sorted(m.name for m in metas)
    s = summarize(metas)
    assert (s["tensors"], s["parameters"], s["bytes"]) == (2, 17, 58)
    assert s["by_dtype"] == {
        "float32": {"tensors": 1, "parameters": 12, "bytes": 48},
        "bfloat16": {"tensors": 1, "parameters": 5, "bytes": 10},
    }


def make_shards(root: Path) -> Path:
    """Two shards: encoder (15 fp32 parameters, 60 B) and head (8 fp32 parameters, 32 B) plus an index."""
    root.mkdir()
    state = tiny_state()
    shards = {
        "model-00001-of-00002.safetensors": ["encoder.weight", "encoder.bias"],
        "model-00002-of-00002.safetensors": ["head.weight", "head.bias"],
    }
    for name, keys in shards.items():
        save_file({k: state[k] for k in keys}, root / name)
    index = root / "model.safetensors.index.json"
    weight_map = {k: name for name, keys in shards.items() for k in keys}
    index.write_text(json.dumps({"metadata": {"total_size": 92}, "weight_map": weight_map}))
    return index


def test_sharded_index_and_directory(tmp_path: Path) -> None:
    """Index and directory give the same totals: 4 tensors, 23 parameters, 92 B over 2 files."""
    index = make_shards(tmp_path / "hf")
    for path in (index, index.parent):
        s = summary_of(path)
        assert (len(s["files"]), s["tensors"], s["parameters"], s["bytes"]) == (2, 4, 23, 92)
        assert {k: v["parameters"] for k, v in s["by_prefix"].items()} == {"encoder": 15, "head": 8}


def test_sharded_bin_index(tmp_path: Path) -> None:
    """pytorch_model.bin shards: equal storage pointers in different files are never aliases."""
    root = tmp_path / "bin"
    root.mkdir()
    state = tiny_state()
    torch.save({"encoder.weight": state["encoder.weight"]}, root / "pytorch_model-1.bin")
    torch.save({"head.weight": state["head.weight"]}, root / "pytorch_model-2.bin")
    (root / "training_args.bin").write_bytes(b"not a weights file")
    (root / "pytorch_model.bin.index.json").write_text(
        json.dumps(
            {"weight_map": {"encoder.weight": "pytorch_model-1.bin", "head.weight": "pytorch_model-2.bin"}}
        )
    )
    s = summary_of(root)
    assert (len(s["files"]), s["tensors"], s["parameters"], s["aliases"]) == (2, 2, 18, 0)


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda p: p.with_suffix(".pt"), "does not exist"),
        (lambda p: (p.with_suffix(".onnx").write_bytes(b"x"), p.with_suffix(".onnx"))[1], "unsupported"),
        (lambda p: (torch.save({"step": 1}, p.with_suffix(".pt")), p.with_suffix(".pt"))[1], "no tensors"),
        (
            lambda p: (save_file({}, p.with_suffix(".safetensors")), p.with_suffix(".safetensors"))[1],
            "no tensors",
        ),
    ],
)
def test_in_process_errors(tmp_path: Path, setup, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        collect(setup(tmp_path / "ckpt"))


def test_truncated_safetensors_data_and_missing_shard(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ConfigError, match="corrupt or truncated"):
        read_safetensors(path)
    index = make_shards(tmp_path / "hf")
    (index.parent / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match="does not exist: download all shards"):
        collect(index)


# --- the CLI: all subprocesses start together, and only three import torch, to keep the module fast ----


class Evil:
    """A class the weights_only unpickler must refuse."""


def build_cli_cases(root: Path) -> dict[str, list[str]]:
    """Files for each CLI case under ``root``; returns case -> argv (paths relative to ``root``)."""
    (root / "sub").mkdir()
    torch.save(tiny_state(head_bf16=True), root / "sub" / "tiny.pt")
    save_file({"a.w": torch.ones(3, 4), "b.w": torch.ones(5, dtype=torch.bfloat16)}, root / "m.safetensors")
    (root / "random.pt").write_bytes(os.urandom(2048))
    (root / "random.safetensors").write_bytes(os.urandom(2048))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (root / "truncated.safetensors").write_bytes(struct.pack("<Q", len(header)) + header[: len(header) // 2])
    torch.save({"w": torch.ones(2), "obj": Evil()}, root / "evil.pt")
    save_file({}, root / "empty.safetensors", metadata={"format": "pt"})  # torch's empty case runs in-process
    (root / "notes.txt").write_text("hello")
    return {
        "json": ["m.safetensors", "format=json"],
        "table": ["sub/tiny.pt", "top=2"],
        "missing": ["nope.pt", "format=json"],
        "extension": ["notes.txt", "format=json"],
        "random_pt": ["random.pt", "format=json"],
        "random_safetensors": ["random.safetensors", "format=json"],
        "truncated_header": ["truncated.safetensors", "format=json"],
        "refused": ["evil.pt", "format=json"],
        "empty": ["empty.safetensors", "format=json"],
    }


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("cli")
    cases = build_cli_cases(root)
    procs = {
        case: subprocess.Popen(
            [sys.executable, "-m", "dse.ckpt_summarize", *argv],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, argv in cases.items()
    }
    results = {}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[case] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_cli_json(cli: dict[str, subprocess.CompletedProcess]) -> None:
    """m.safetensors: fp32 [3, 4] (48 B) + bf16 [5] (10 B) = 2 tensors, 17 parameters, 58 B."""
    res = cli["json"]
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) >= {
        "path",
        "files",
        "tensors",
        "parameters",
        "bytes",
        "by_dtype",
        "by_prefix",
        "largest",
        "non_tensor_entries",
        "aliases",
    }
    assert (doc["path"], doc["files"]) == ("m.safetensors", ["m.safetensors"])
    assert (doc["tensors"], doc["parameters"], doc["bytes"], doc["aliases"]) == (2, 17, 58, 0)
    assert doc["by_dtype"]["bfloat16"] == {"tensors": 1, "parameters": 5, "bytes": 10}


def test_cli_table_relative_path(cli: dict[str, subprocess.CompletedProcess]) -> None:
    """sub/tiny.pt (relative to the working directory): 23 parameters, 76 B; top=2 lists two tensors."""
    res = cli["table"]
    assert res.returncode == 0, res.stderr
    assert "parameters: 23" in res.stdout and "bytes: 76 (76 B)" in res.stdout
    assert "largest 2 tensors:" in res.stdout and "encoder.weight" in res.stdout
    assert "bfloat16" in res.stdout


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing", "does not exist"),
        ("extension", "unsupported checkpoint extension"),
        ("random_pt", "not a readable PyTorch checkpoint"),
        ("random_safetensors", "not a valid safetensors file"),
        ("truncated_header", "not a valid safetensors file"),
        ("refused", "arbitrary code execution"),
        ("empty", "no tensors"),
    ],
)
def test_cli_errors(cli: dict[str, subprocess.CompletedProcess], case: str, fragment: str) -> None:
    res = cli[case]
    assert res.returncode != 0
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert fragment in lines[0]
    assert "Traceback" not in res.stderr
