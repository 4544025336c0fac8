"""Exact parameter counts: ``costmodels`` against ``transformers``' own models, built without weights.

The reference for every config is the model ``transformers`` builds from it on the meta device (shapes
only, no memory): ``sum(p.numel() for p in model.parameters())``, which counts tied weights once and
leaves buffers out (rotary ``inv_freq``, GPT-J's ``embed_positions``, DeepSeek-V3's
``e_score_correction_bias``). Configs: every shipped ``conf/model/*.yaml`` (a model's Hugging Face
``config.json``) and every tiny config in ``tests/data/tiny_configs/`` (one or more per supported
``model_type``, small but with the features that change the count). A second check compares the
shipped configs with counts their authors published, so a mistyped config field is caught too.
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.utils import logging as hf_logging

from costmodels.architectures import SUPPORTED_MODEL_TYPES, parse_hf_config
from costmodels.workload import parameter_count
from dse.models import SOURCE_OPTION

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "conf" / "model"
TINY_DIR = Path(__file__).resolve().parent / "data" / "tiny_configs"
CALIBRATION = REPO / "experiments" / "validation" / "calibration.yaml"  # published cases, copied in

SHIPPED = sorted(p for p in MODEL_DIR.glob("*.yaml") if p.stem != SOURCE_OPTION)  # path.yaml: not a config
TINY = sorted(TINY_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    """A config file (JSON, also for the ``.yaml`` ones) as a dict."""
    return json.loads(path.read_text())


@cache
def _hf_count(config_json: str) -> int:
    """Parameters of ``transformers``' causal LM (or, for an encoder-decoder, its conditional
    generation model) for this config (JSON text, so it can be cached)."""
    hf_config = AutoConfig.for_model(**json.loads(config_json))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # unused legacy keys (auto_map-era fields) only log notices
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            auto = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
            model = auto.from_config(hf_config)
    finally:
        hf_logging.set_verbosity(verbosity)
    return sum(p.numel() for p in model.parameters())


def hf_parameter_count(config: dict[str, Any]) -> int:
    """The reference count: ``transformers`` builds the model on the meta device (no weights)."""
    return _hf_count(json.dumps(config, sort_keys=True))


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# --- the shipped configs and the tiny ones: costmodels' formula equals transformers' count -------


@pytest.mark.parametrize("path", SHIPPED + TINY, ids=ids(SHIPPED + TINY))
def test_parameter_count_matches_transformers(path: Path) -> None:
    config = load(path)
    assert parameter_count(parse_hf_config(config)) == hf_parameter_count(config)


# --- the shipped configs: present, valid JSON, the same under Hydra, accepted by the parser -------

# The models the documentation and the validation cases name; more may be added.
EXPECTED_SHIPPED = {
    "llama2_7b", "llama2_13b", "llama2_70b", "llama3_8b", "llama3_70b", "llama3_1_405b",
    "mistral_7b", "mixtral_8x7b", "qwen2_72b", "qwen3_8b", "qwen3_30b_a3b", "deepseek_v3",
    "gpt3_175b", "megatron_gpt_22b", "megatron_gpt_175b", "megatron_gpt_530b", "megatron_gpt_1t",
    "mpt_7b", "mpt_30b", "bloom_176b", "gptj_6b", "gpt_neox_20b", "falcon_7b", "falcon_40b",
    "gemma2_9b", "mamba_2_8b", "jamba_v0_1", "bert_base_uncased", "t5_small",
}  # fmt: skip


def test_expected_models_are_shipped() -> None:
    missing = EXPECTED_SHIPPED - {p.stem for p in SHIPPED}
    assert not missing, f"not shipped: {sorted(missing)}"


@pytest.mark.parametrize("path", SHIPPED, ids=ids(SHIPPED))
def test_shipped_config_is_json_and_parses(path: Path) -> None:
    config = load(path)  # raises on anything that is YAML but not JSON
    assert isinstance(config, dict)
    assert config["model_type"] in SUPPORTED_MODEL_TYPES
    assert "auto_map" not in config, "remote code: transformers' native class must be the one used"
    spec = parse_hf_config(config)
    assert spec.model_type == config["model_type"]


@pytest.mark.parametrize("path", SHIPPED, ids=ids(SHIPPED))
def test_shipped_config_reads_the_same_through_omegaconf(path: Path) -> None:
    """Hydra composes these files as YAML: every value (``1e-05``, ``null``, nested dicts) must survive."""
    assert OmegaConf.to_container(OmegaConf.load(path)) == load(path)


# --- the tiny configs cover every supported model_type ---------------------------------------------


def test_every_supported_model_type_has_a_tiny_config() -> None:
    missing = set(SUPPORTED_MODEL_TYPES) - {load(p)["model_type"] for p in TINY}
    assert not missing, f"no tiny config for {sorted(missing)}"


@pytest.mark.parametrize("path", TINY, ids=ids(TINY))
def test_tiny_config_is_tiny(path: Path) -> None:
    """Small enough that building it costs nothing; its file name is its model_type (plus a suffix)."""
    config = load(path)
    spec = parse_hf_config(config)
    assert path.stem.startswith(config["model_type"])
    assert spec.hidden_size <= 128 and spec.num_layers <= 4 and spec.vocab_size <= 1024


# --- independent references: counts the models' authors published -----------------------------------

# name -> (published count, its precision: the published figure's last digit, source).
PUBLISHED: dict[str, tuple[float, float, str]] = {
    # Exact totals of each repository's safetensors weights as the Hugging Face hub reports them (the model
    # page rounds them, in parentheses); from the project's list of published counts, not re-fetched here.
    "llama2_7b": (6_738_415_616, 0, "meta-llama/Llama-2-7b-hf safetensors metadata (6.74B)"),
    "llama3_8b": (8_030_261_248, 0, "meta-llama/Meta-Llama-3-8B safetensors metadata (8.03B)"),
    "llama3_1_405b": (405_853_388_800, 0, "meta-llama/Llama-3.1-405B safetensors metadata (406B)"),
    "mistral_7b": (7_241_732_096, 0, "mistralai/Mistral-7B-v0.1 safetensors metadata (7.24B)"),
    "mixtral_8x7b": (46_702_792_704, 0, "mistralai/Mixtral-8x7B-v0.1 safetensors metadata (46.7B)"),
    "falcon_7b": (6_921_720_704, 0, "tiiuae/falcon-7b safetensors metadata (6.92B)"),
    "gemma2_9b": (9_241_705_984, 0, "google/gemma-2-9b safetensors metadata (9.24B)"),
    "mpt_7b": (6_649_286_656, 0, "mosaicml/mpt-7b checkpoint (6.65B; model card: 6.7B)"),
    # Model cards and papers.
    "bloom_176b": (176_247_271_424, 0, "bigscience/bloom model card, 'Number of Parameters'"),
    "gpt_neox_20b": (20_554_567_680, 0, "Black et al. 2022, GPT-NeoX-20B paper, Table 1"),
    "qwen2_72b": (72.7e9, 0.1e9, "Qwen/Qwen2-72B model page (72.7B)"),
    "qwen3_8b": (8.2e9, 0.1e9, "Qwen/Qwen3-8B model card, 'Number of Parameters: 8.2B'"),
    "qwen3_30b_a3b": (30.5e9, 0.1e9, "Qwen/Qwen3-30B-A3B model card, '30.5B in total'"),
    "mpt_30b": (30e9, 1e9, "mosaicml/mpt-30b model card: 30B"),
    "jamba_v0_1": (52e9, 1e9, "ai21labs/Jamba-v0.1 model card: 52B total parameters (12B active)"),
    "mamba_2_8b": (2.8e9, 0.1e9, "Gu & Dao 2023, Table 3: Mamba-2.8B"),
    # BertLMHeadModel: BertModel's 110M less its pooler, plus the prediction head's transform and bias
    "bert_base_uncased": (110e6, 10e6, "Devlin et al. 2019, Sec. 3: BERT-BASE, 110M total parameters"),
    "t5_small": (60e6, 10e6, "Raffel et al. 2020, Sec. 3.7: T5-Small, about 60 million parameters"),
    # Main model without the multi-token-prediction module (which adds 11.5B unique parameters).
    "deepseek_v3": (671e9, 1e9, "deepseek-ai/DeepSeek-V3 README_WEIGHTS.md, main model: 671B"),
    # Brown et al.'s "175.0B" is nominal: their Table 2.1 dimensions give 174.6B (as Narayanan's Table 2 has).
    "gpt3_175b": (175e9, 1e9, "Brown et al. 2020, Table 2.1, GPT-3 175B"),
    # Narayanan et al. 2021 (SC21), Table 1 (l=105, h=20480; l=128, h=25600) and Table 2 (175B).
    "megatron_gpt_175b": (174.6e9, 0.1e9, "Narayanan et al. 2021, Table 2: 174.6B"),
    "megatron_gpt_530b": (529.6e9, 0.1e9, "Narayanan et al. 2021, Table 1: 529.6B"),
    "megatron_gpt_1t": (1008.0e9, 0.1e9, "Narayanan et al. 2021, Table 1: 1008.0B"),
    "megatron_gpt_22b": (22e9, 1e9, "Korthikanti et al. 2022, Table 3: 22B"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_config_reproduces_the_published_count(name: str) -> None:
    published, precision, source = PUBLISHED[name]
    count = hf_parameter_count(load(MODEL_DIR / f"{name}.yaml"))
    assert abs(count - published) <= precision / 2, f"{name}: {count:,} vs {published:,.0f} ({source})"


def narayanan_parameter_count(config: dict[str, Any]) -> int:
    """Narayanan et al. 2021, Sec. 5.1: P = 12·l·h²·(1 + 13/(12h) + (V+s)/(12·l·h)), i.e. per layer
    12h² + 13h, plus (V + s)·h embeddings (tied); the paper leaves out the final LayerNorm's 2h."""
    gpt2 = AutoConfig.for_model(**config)  # fields left out: GPT2Config's defaults (V = 50257, s = 1024)
    h, layers = gpt2.n_embd, gpt2.n_layer
    embeddings = gpt2.vocab_size + gpt2.n_positions
    return 12 * layers * h * h + 13 * layers * h + embeddings * h


MEGATRON = [p for p in SHIPPED if p.stem.startswith(("megatron_gpt_", "gpt3_"))]


@pytest.mark.parametrize("path", MEGATRON, ids=ids(MEGATRON))
def test_megatron_gpt_matches_narayanans_formula(path: Path) -> None:
    config = load(path)
    expected = narayanan_parameter_count(config) + 2 * config["n_embd"]  # + the final LayerNorm
    assert hf_parameter_count(config) == expected
    assert parameter_count(parse_hf_config(config)) == expected


# --- the validation set's model dicts (experiments/validation/calibration.yaml) ---------------------


def _calibration_models() -> list[tuple[str, dict[str, Any]]]:
    """One (first case id, model dict) per distinct model in calibration.yaml."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 5x faster on this 260-case file
    for case in yaml.load(CALIBRATION.read_text(), Loader=loader)["cases"]:
        seen.setdefault(json.dumps(case["model"], sort_keys=True), (case["id"], case["model"]))
    return list(seen.values())


CALIBRATION_MODELS = _calibration_models()


# Some give no vocab_size (NeMo GPT-3, TensorRT-LLM GPT-J): both sides take the transformers class's.
@pytest.mark.parametrize("model", [m for _, m in CALIBRATION_MODELS], ids=[i for i, _ in CALIBRATION_MODELS])
def test_validation_case_models_match_transformers(model: dict[str, Any]) -> None:
    assert parameter_count(parse_hf_config(model)) == hf_parameter_count(model)
    if model["model_type"] == "gpt2" and model.get("tie_word_embeddings", True):
        assert hf_parameter_count(model) == narayanan_parameter_count(model) + 2 * model["n_embd"]
