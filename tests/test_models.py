"""Resolving a model: shipped name, config.json path, directory, hub id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from costmodels.errors import ConfigError
from dse._app import rewrite_argv
from dse.models import available_models, model_config, resolve_source


def test_shipped_name_path_and_directory_agree(tmp_path: Path) -> None:
    shipped = resolve_source("mistral_7b")
    (tmp_path / "config.json").write_text(json.dumps(shipped))
    assert resolve_source(str(tmp_path / "config.json")) == shipped
    assert resolve_source(str(tmp_path)) == shipped
    assert model_config({"source": str(tmp_path)}) == shipped


def test_hub_id_goes_through_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a network, ``org/name`` is loaded by ``AutoConfig.from_pretrained`` (stubbed here)."""
    calls = []

    class Stub:
        def to_dict(self) -> dict:
            return {"model_type": "llama", "hidden_size": 8}

    def from_pretrained(hub_id: str) -> Stub:
        calls.append(hub_id)
        return Stub()

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    assert resolve_source("meta-llama/Llama-2-7b-hf")["hidden_size"] == 8
    assert calls == ["meta-llama/Llama-2-7b-hf"]


def test_hub_id_offline_is_one_clear_line() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dse.roofline", "model=some-org/some-model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "loading it from the Hugging Face hub failed" in proc.stderr and "llama2_7b" in proc.stderr


def test_missing_relative_json_is_not_a_hub_id() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_source("configs/missing.json")


def test_argv_rewrite() -> None:
    """A path or hub id selects the ``path`` option; shipped names, sweeps and other keys pass through."""
    assert rewrite_argv(["model=a/b.json", "x=1"]) == ["model=path", "model.source=a/b.json", "x=1"]
    assert rewrite_argv(["model=llama2_7b"]) == ["model=llama2_7b"]
    assert rewrite_argv(["-m", "model=llama2_7b,llama3_8b"]) == ["-m", "model=llama2_7b,llama3_8b"]
    assert rewrite_argv(["ckpt.pt", "top=3"], positional=("path",)) == ["path=ckpt.pt", "top=3"]
    with pytest.raises(ConfigError, match="unexpected argument"):
        rewrite_argv(["a", "b"], positional=("path",))


def test_available_models_excludes_the_path_option() -> None:
    names = available_models()
    assert "path" not in names and {"llama2_7b", "deepseek_v3", "megatron_gpt_1t"} <= set(names)
