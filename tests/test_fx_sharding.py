"""FX-graph auto-sharding: data parallelism with ample memory, sharded parameters under a memory limit,
Megatron tensor parallelism rediscovered on the fast axis of a 2-D mesh, repeated layers shared."""

from __future__ import annotations

import pytest
import torch

from dse.hardware import load_hardware
from search.fx_graph import _view_shard, capture, capture_hf, spec_str
from search.fx_sharding import MeshCosts, build_problem, plan_sharding

HW = load_hardware("h100_sxm")


def _mlp() -> tuple[torch.nn.Module, torch.Tensor]:
    with torch.device("meta"):
        layers = [torch.nn.Linear(4096, 16384), torch.nn.ReLU(), torch.nn.Linear(16384, 4096)]
        model = torch.nn.Sequential(*layers)
    return model.to(torch.bfloat16), torch.empty(4096, 4096, dtype=torch.bfloat16, device="meta")


def _llama(layers: int) -> dict:
    return dict(model_type="llama", hidden_size=4096, intermediate_size=16384, num_attention_heads=32,
                num_key_value_heads=32, num_hidden_layers=layers, vocab_size=32768, tie_word_embeddings=False)


def test_view_shard_tracks_strided_heads() -> None:
    merged = _view_shard((8, 32, 128, 64), (256, 128, 64), 1, 1, 8)  # heads sharded, [b, H] merged
    assert merged == ("S", 0, 8)
    assert _view_shard((256, 128, 64), (8, 32, 128, 64), 0, 8, 8) == ("S", 1, 1)  # split: back on H
    assert _view_shard((8, 1024, 4096), (8192, 4096), 0, 1, 4) == ("S", 0, 1)
    assert _view_shard((2048,), (2, 1024), 0, 1, 4) is None  # split: 2 rows cannot be cut in 4
    assert spec_str((("S", 0, 1), ("R",))) == "[Shard(0), Replicate()]"


def test_mlp_ample_memory_is_data_parallel() -> None:
    model, x = _mlp()
    cap = capture(model, [x])
    plan = plan_sharding(cap, HW, (4,))
    assert set(plan.param_placements.values()) == {"[Replicate()]"}
    input_name = next(n for n in cap.params.keys() ^ {p.name for p in cap.graph.find_nodes(op="placeholder")})
    assert plan.placements[input_name] == "[Shard(0)]"
    assert plan.comm_s == 0.0 and plan.collectives == []


def test_mlp_memory_budget_shards_parameters() -> None:
    model, x = _mlp()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = weights / 4 * 1.05
    plan = plan_sharding(capture(model, [x]), HW, (4,), memory_limit=budget)
    assert plan.param_placements["0.weight"] != "[Replicate()]"
    assert plan.param_placements["2.weight"] != "[Replicate()]"
    assert plan.memory_per_device_bytes <= budget
    assert plan.comm_s > 0.0 and plan.collectives


@pytest.fixture(scope="module")
def llama2() -> object:
    return capture_hf(_llama(2), batch=4, seq=2048)


def test_transformer_2d_mesh_rediscovers_megatron(llama2: object) -> None:
    """4 x 8 mesh, inner axis NVLink: TP on the inner axis, DP on the outer one."""
    params = sum(n.meta["val"].numel() for n in llama2.graph.find_nodes(op="placeholder")
                 if n.name in llama2.params)
    budget = params * 16 / 8 * 1.15  # training states must be cut ~8 ways
    plan = plan_sharding(llama2, HW, (4, 8), memory_per_param_bytes=16, memory_limit=budget)
    p = {k.removeprefix("model.layers.1."): v for k, v in plan.param_placements.items()}
    for column in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                   "mlp.gate_proj.weight", "mlp.up_proj.weight"):
        assert p[column] == "[Replicate(), Shard(0)]", column  # weight [out, in]: output dim
    for row in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        assert p[row] == "[Replicate(), Shard(1)]", row  # input dim
    assert plan.placements["embedding"].startswith("[Shard(0)")  # batch on the outer axis
    inner = [c for c in plan.collectives if "axis 1" in c and "layers" not in c]
    assert any("reduce" in c for c in inner)  # an all-reduce or a reduce-scatter per sub-block
    assert not any("axis 0" in c for c in plan.collectives)  # nothing crosses the slow axis
    assert plan.memory_per_device_bytes <= budget


def test_repeated_layers_share_variables(llama2: object) -> None:
    fx = build_problem(llama2, MeshCosts(HW, (4, 8)))
    assert len(fx.problem.repeats) == 1 and len(fx.problem.repeats[0].blocks) == 2
    assert all(name.startswith(("cumsum", "new_ones", "index", "eq", "le", "bitwise", "where"))
               or "aten" in name for name in fx.unsupported)
