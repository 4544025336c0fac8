"""Missing fields and aliases resolve as ``transformers`` resolves them, without importing it.

``costmodels.architectures`` reads each family's configuration class from its source (defaults,
``attribute_map``, ``sub_configs``) so that parsing a config imports neither ``transformers`` nor
``torch``. These tests hold that reading to the imported classes, check the documented cases
(GPT-J with three fields, GPT-2 without ``vocab_size``, Llama without ``num_key_value_heads``,
``num_local_experts`` vs ``num_experts``), compare parameter counts with ``transformers``' own model
for configs with fields left out, and keep malformed input a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_param_counts import hf_parameter_count
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from costmodels import architectures
from costmodels.architectures import SUPPORTED_MODEL_TYPES, parse_hf_config
from costmodels.errors import ConfigError
from costmodels.workload import parameter_count

TINY_DIR = Path(__file__).resolve().parent / "data" / "tiny_configs"
TINY = sorted(TINY_DIR.glob("*.json"))
BASE_FIELDS = {f.name for f in dataclasses.fields(PreTrainedConfig)}


def hf_count(config: dict[str, Any]) -> int:
    """Parameters of ``transformers``' model for this config (test_param_counts' reference)."""
    return hf_parameter_count(config)


# --- the source reading equals the imported classes ------------------------------------------------


def _comparable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=repr)


def _assert_same(source: architectures._Schema, imported: architectures._Schema) -> None:
    own = imported.fields - BASE_FIELDS
    assert own <= source.fields, f"fields not read: {sorted(own - source.fields)}"
    for name in own:
        if name in imported.defaults:
            assert name in source.defaults, f"default of {name} not read"
            assert _comparable(source.defaults[name]) == _comparable(imported.defaults[name]), name
    assert dict(source.aliases) == dict(imported.aliases)
    assert set(source.sub_configs) == set(imported.sub_configs)
    for key, sub in source.sub_configs.items():
        _assert_same(sub, imported.sub_configs[key])


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_source_schema_equals_the_imported_class(model_type: str) -> None:
    source = architectures._schema_from_source(model_type)
    assert source.fields, f"no configuration module found for {model_type}"
    _assert_same(source, architectures._class_schema(CONFIG_MAPPING[model_type]))
    _assert_same(source, architectures._schema_from_class(model_type))  # the fallback path


def test_parsing_imports_neither_transformers_nor_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        from costmodels.architectures import SUPPORTED_MODEL_TYPES, _schema, parse_hf_config
        parse_hf_config({"model_type": "gptj", "n_embd": 4096, "n_head": 16, "n_layer": 28})
        for model_type in SUPPORTED_MODEL_TYPES:
            assert _schema(model_type).fields, model_type
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_transformers_4_init_defaults_are_read() -> None:
    """transformers 4.x: defaults are ``__init__`` keyword defaults; bases in the module are merged."""
    tree = ast.parse(
        textwrap.dedent(
            """
            class BaseConfig(PretrainedConfig):
                attribute_map = {"hidden_size": "n_embd"}
                def __init__(self, n_embd=768, n_inner=None, *, eps=1e-5, **kwargs):
                    super().__init__(**kwargs)

            class ToyConfig(BaseConfig):
                model_type = "toy"
                def __init__(self, vocab_size=4 * 1024, n_embd=64, scale=-0.5, **kwargs):
                    super().__init__(**kwargs)
            """
        )
    )
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    schema = architectures._read_class(classes["ToyConfig"], classes)
    assert schema.fields == {"n_embd", "n_inner", "eps", "vocab_size", "scale"}
    assert schema.defaults == {"n_embd": 64, "n_inner": None, "eps": 1e-5, "vocab_size": 4096, "scale": -0.5}
    assert schema.aliases == {"hidden_size": "n_embd"}


# --- the documented cases -----------------------------------------------------------------------------


def test_gptj_with_three_fields_takes_gptjconfig_defaults() -> None:
    spec = parse_hf_config({"model_type": "gptj", "n_embd": 4096, "n_head": 16, "n_layer": 28})
    assert (spec.vocab_size, spec.rotary_dim, spec.max_positions) == (50400, 64, 2048)
    assert spec.intermediate_size == 4 * 4096 and not spec.tie_embeddings  # n_inner None → 4·n_embd


def test_gpt2_without_vocab_size_and_with_aliases() -> None:
    spec = parse_hf_config(
        {"model_type": "gpt2", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2}
    )
    assert (spec.hidden_size, spec.num_heads, spec.num_layers) == (64, 4, 2)
    assert (spec.vocab_size, spec.max_positions, spec.intermediate_size) == (50257, 1024, 256)
    assert (
        parse_hf_config({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": None})
        == spec
    )


def test_llama_without_kv_heads_is_multi_head() -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 8,
        "num_hidden_layers": 2,
        "intermediate_size": 96,
        "vocab_size": 128,
    }
    spec = parse_hf_config(config)
    assert spec.num_kv_heads == 8 == AutoConfig.for_model(**config).num_key_value_heads
    assert spec.head_dim == 8


MOE_BASE = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "vocab_size": 128,
    "num_experts_per_tok": 2,  # at most the 4 experts below (Qwen3-MoE's default is 8)
}
EXPERT_NAMES = [
    {"num_experts": 4},
    {"num_local_experts": 4},
    {"num_experts": 4, "num_local_experts": 6},
    {"num_local_experts": 6, "num_experts": 4},
    {},
]


@pytest.mark.parametrize("names", EXPERT_NAMES, ids=lambda d: "+".join(d) or "neither")
@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_expert_count_aliases_resolve_as_transformers_does(model_type: str, names: dict) -> None:
    config = {"model_type": model_type, **MOE_BASE, **names}
    hf = AutoConfig.for_model(**config)
    expected = hf.num_local_experts if model_type == "mixtral" else hf.num_experts
    assert parse_hf_config(config).moe.num_experts == expected


@pytest.mark.parametrize("names", [{"n_routed_experts": 4}, {"num_local_experts": 4}, {}], ids=str)
def test_deepseek_routed_experts_alias(names: dict) -> None:
    config = json.loads((TINY_DIR / "deepseek_v3.json").read_text())
    config.pop("n_routed_experts")
    config |= names
    assert parse_hf_config(config).moe.num_experts == AutoConfig.for_model(**config).n_routed_experts


def test_none_means_what_the_modeling_code_makes_of_it() -> None:
    tiny = json.loads((TINY_DIR / "deepseek_v3.json").read_text())
    assert parse_hf_config({**tiny, "q_lora_rank": None}).mla.q_lora_rank == 0  # plain q projection
    without = {k: v for k, v in tiny.items() if k != "q_lora_rank"}
    assert parse_hf_config(without).mla.q_lora_rank == 1536  # DeepseekV3Config's default
    falcon = json.loads((TINY_DIR / "falcon.json").read_text())
    assert parse_hf_config({**falcon, "ffn_hidden_size": None}).intermediate_size == 4 * falcon["hidden_size"]
    gptj = {"model_type": "gptj", "n_embd": 64, "n_head": 4, "n_layer": 2, "rotary_dim": None}
    assert parse_hf_config(gptj).rotary_dim == 16  # GPTJAttention: None → the whole head


def test_bloom_legacy_n_embed_overrides_hidden_size() -> None:
    config = {
        "model_type": "bloom",
        "hidden_size": 64,
        "n_embed": 32,
        "n_head": 4,
        "n_layer": 2,
        "vocab_size": 64,
    }
    assert parse_hf_config(config).hidden_size == 32 == AutoConfig.for_model(**config).hidden_size


# --- parameter counts with fields left out: the defaults are transformers' ---------------------------

REQUIRED = {
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "n_embd", "n_layer",
    "n_head", "d_model", "n_layers", "n_heads",
}  # fmt: skip


# Token ids: no parameter depends on them, and a class default may not fit a tiny vocabulary (Phi-3's
# pad_token_id 32000), so transformers itself cannot build the model without them.
TOKEN_IDS = {"pad_token_id", "bos_token_id", "eos_token_id"}


def _drops() -> list[tuple[str, str]]:
    out = []
    for path in TINY:
        for key in json.loads(path.read_text()):
            if key not in REQUIRED | TOKEN_IDS:
                out.append((path.name, key))
    return out


@pytest.mark.parametrize(("name", "key"), _drops(), ids=[f"{n}-{k}" for n, k in _drops()])
def test_count_with_a_field_left_out_matches_transformers(name: str, key: str) -> None:
    config = json.loads((TINY_DIR / name).read_text())
    del config[key]
    try:
        spec = parse_hf_config(config)
    except ConfigError as err:  # a default that does not fit the rest (kv heads 32 for 4 heads,
        # top-8 routing for 4 experts, Mamba-2's 128 heads of 64 for a 128-wide mixer): a cross-field
        # rule, never a malformed value; or a field the class leaves None that the model needs
        # (DeepSeek-V2's num_experts_per_tok)
        rules = ("not a multiple", "must be a multiple", "must be <=", "must equal", "must divide")
        unset = (
            "missing field" in str(err) and getattr(AutoConfig.for_model(config["model_type"]), key) is None
        )
        assert any(rule in str(err) for rule in rules) or unset, err
        return
    assert parameter_count(spec) == hf_count(config)


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "falcon", "mpt"])
def test_only_the_required_fields(model_type: str) -> None:
    """The shape fields alone (small), everything else from the class: counts agree."""
    names = {
        "gpt2": ("n_embd", "n_layer", "n_head"),
        "gptj": ("n_embd", "n_layer", "n_head"),
        "mpt": ("d_model", "n_layers", "n_heads"),
    }.get(model_type, ("hidden_size", "num_hidden_layers", "num_attention_heads"))
    # MistralConfig has 8 KV heads by default: 16 query heads (64 hidden, head_dim 4).
    config = {
        "model_type": model_type,
        **dict(zip(names, (64, 1, 8 if model_type != "mistral" else 16), strict=True)),
    }
    assert parameter_count(parse_hf_config(config)) == hf_count(config)


# --- errors: one line naming the key ------------------------------------------------------------------

GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_layer": None}, "missing field 'n_layer' (alias 'num_hidden_layers'"),
        ({"n_embd": 64.5}, "field 'n_embd' must be an integer, got 64.5"),
        ({"vocab_size": math.nan}, "field 'vocab_size' must be an integer, got nan"),
        ({"vocab_size": math.inf}, "field 'vocab_size' must be an integer, got inf"),
        ({"vocab_size": "50257"}, "field 'vocab_size' must be an integer, got '50257'"),
        ({"vocab_size": True}, "field 'vocab_size' must be an integer, got True"),
        ({"vocab_size": -3}, "field 'vocab_size' must be positive, got -3"),
        ({"n_inner": -1}, "field 'n_inner' must be >= 0, got -1"),
        ({"num_attention_heads": 0}, "field 'num_attention_heads' must be positive, got 0"),
        ({"attn_pdrop": 1.5}, "field 'attn_pdrop' must be a number in [0, 1], got 1.5"),
        ({"resid_pdrop": math.nan}, "field 'resid_pdrop' must be a number in [0, 1], got nan"),
        ({"tie_word_embeddings": "false"}, "field 'tie_word_embeddings' must be true or false, got 'false'"),
        ({"activation_function": 3}, "field 'activation_function' must be one of silu, swish, gelu"),
    ],
)
def test_malformed_field_is_one_line_naming_it(change: dict, message: str) -> None:
    config = {k: v for k, v in {**GPT2, **change}.items() if v is not None}
    if "num_attention_heads" in change:
        del config["n_head"]
    with pytest.raises(ConfigError) as err:
        parse_hf_config(config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_nested_and_list_fields_are_checked() -> None:
    mpt = json.loads((TINY_DIR / "mpt.json").read_text())
    with pytest.raises(ConfigError, match=r"field 'attn_config\.alibi' must be true or false"):
        parse_hf_config({**mpt, "attn_config": {"alibi": 1}})
    with pytest.raises(ConfigError, match="field 'attn_config' must be a JSON object"):
        parse_hf_config({**mpt, "attn_config": [1]})
    qwen = json.loads((TINY_DIR / "qwen3_moe.json").read_text())
    with pytest.raises(ConfigError, match="field 'mlp_only_layers' must be a list of integers"):
        parse_hf_config({**qwen, "mlp_only_layers": ["3"]})
    with pytest.raises(ConfigError, match="field 'decoder_sparse_step' must be positive"):
        parse_hf_config({**qwen, "decoder_sparse_step": 0})


@pytest.mark.parametrize("model_type", ["bart", "roberta", "not_a_model", 3, ["llama"]])
def test_unparsed_model_type_lists_the_supported_ones(model_type: Any) -> None:
    """Known to transformers (bart, roberta) or not: without a parser it is an error."""
    with pytest.raises(ConfigError, match=r"unsupported model_type .*; supported: gpt2, gptj, "):
        parse_hf_config({"model_type": model_type, "d_model": 512})


def test_a_family_transformers_lacks_needs_explicit_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no configuration class (an older transformers), the explicit values are used as given."""
    config = {
        **json.loads((TINY_DIR / "llama.json").read_text()),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "max_position_embeddings": 128,
    }
    with_class = parse_hf_config(config)
    monkeypatch.setattr(architectures, "_schema", lambda model_type: architectures._Schema())
    assert parse_hf_config(config) == with_class
    with pytest.raises(ConfigError, match="missing field 'vocab_size'"):
        parse_hf_config({k: v for k, v in config.items() if k != "vocab_size"})
