"""Model configs: a shipped name under ``conf/model/``, a ``config.json`` path, or a hub id.

Shipped configs are the models' Hugging Face ``config.json`` files, verbatim (JSON is YAML, so
Hydra composes them as the ``model`` group and ``model.num_hidden_layers=2`` overrides work).
``model=path/to/config.json`` or ``model=org/name`` is rewritten by ``dse._app`` to the ``path``
option with ``model.source`` set; :func:`model_config` resolves it here. A hub id needs a network
and ``transformers``; nothing is downloaded otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from costmodels.architectures import ModelSpec, parse_hf_config
from costmodels.errors import ConfigError
from dse._app import MODEL_DIR
from dse.checks import read_json

SOURCE_OPTION = "path"  # conf/model/path.yaml: {source: ???}


def available_models() -> list[str]:
    """Names of the shipped model configs."""
    return sorted(p.stem for p in MODEL_DIR.glob("*.yaml") if p.stem != SOURCE_OPTION)


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse a config.json file (``dse.checks.read_json``: one-line errors naming the line and
    column of malformed JSON, non-UTF-8 or oversized files)."""
    data = read_json(path, "model config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model config must be a JSON object, got {type(data).__name__}")
    return data


def _from_hub(hub_id: str) -> dict[str, Any]:
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(hub_id).to_dict()
    except Exception as exc:  # network, auth, or unknown repo: all the user's to fix
        raise ConfigError(
            f"model '{hub_id}' is not a shipped name or an existing path, and loading it from the "
            f"Hugging Face hub failed ({type(exc).__name__}); shipped: {', '.join(available_models())}"
        ) from None


def resolve_source(source: str) -> dict[str, Any]:
    """A shipped name, a config.json path (or a directory holding one), else a hub id."""
    shipped = MODEL_DIR / f"{source}.yaml"
    if shipped.is_file() and source != SOURCE_OPTION:
        return read_config_json(shipped)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"model directory {source} has no config.json")
    if path.is_file():
        return read_config_json(path)
    if source.endswith(".json") or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ConfigError(
            f"model config {source} does not exist; shipped models: {', '.join(available_models())}"
        )
    return _from_hub(source)


def model_config(model: Mapping[str, Any] | DictConfig | str) -> dict[str, Any]:
    """The Hugging Face config dict of a composed ``model`` group, or of a name/path/hub id."""
    if isinstance(model, str):
        return resolve_source(model)
    data = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
    if "source" in data:
        if data["source"] in (None, "???"):
            raise ConfigError("model.source is not set: pass model=path/to/config.json")
        return resolve_source(str(data["source"]))
    return data


def load_model(model: Mapping[str, Any] | DictConfig | str) -> ModelSpec:
    """The :class:`ModelSpec` of a model given as in :func:`model_config`."""
    return parse_hf_config(model_config(model))


def model_assumptions(spec: ModelSpec, mode: str) -> tuple[str, ...]:
    """What a ``mode`` ("training" | "inference") report assumes about ``spec`` beyond its config:
    printed with its figures by dse.calc and dse.search."""
    if spec.encoder_layers and mode == "training":
        return (
            "encoder-decoder: each sequence is seq_len source tokens through the encoder and seq_len "
            "target tokens through the decoder; tokens/s counts target tokens",
        )
    if spec.encoder_layers:
        return (
            "encoder-decoder: the prompt goes through the encoder at the prefill (TTFT: encoder + the "
            "decoder's first step); each decoder layer caches the keys and values of the encoded prompt",
        )
    if not spec.causal and mode == "inference":
        return ("encoder: one forward pass of input_len tokens per request, the LM head on one token each",)
    return ()
