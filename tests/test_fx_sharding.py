"""FX-graph auto-sharding on the joint forward + backward graph: data parallelism with ample memory (only
gradient all-reduces), FSDP under a memory limit when tokens dominate, tensor parallelism when weights
dominate, Megatron tensor parallelism rediscovered on the fast axis of a 2-D mesh (joint and forward-only),
repeated layers (forward and backward nodes) sharing variables, Megatron's vocab-parallel cross-entropy."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from costmodels.network import all_gather_time_s, all_reduce_time_s, all_to_all_time_s, reduce_scatter_time_s
from dse.hardware import load_hardware
from search.fx_graph import (
    Captured,
    P,
    R,
    _view_shard,
    broadcast_dims,
    capture,
    capture_hf,
    follow_axis,
    is_follower,
    op_strategies,
    spec_str,
)
from search.fx_sharding import MeshCosts, build_problem, default_links, plan_sharding

HW = load_hardware("h100_sxm")


def _mlp(tokens: int, hidden: int, ffn: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """Linear(hidden, ffn) -> ReLU -> Linear(ffn, hidden), no biases (a bias is used once, in the
    forward pass, so sharding it costs an all-gather + reduce-scatter = one all-reduce: a tie)."""
    with torch.device("meta"):
        layers = [
            torch.nn.Linear(hidden, ffn, bias=False),
            torch.nn.ReLU(),
            torch.nn.Linear(ffn, hidden, bias=False),
        ]
        model = torch.nn.Sequential(*layers)
    return model.to(torch.bfloat16), torch.empty(tokens, hidden, dtype=torch.bfloat16, device="meta")


def _input(cap: object) -> str:
    return next(n.name for n in cap.graph.find_nodes(op="placeholder") if n.name not in cap.params)


def _weights(model: torch.nn.Module) -> float:
    return float(sum(p.numel() * p.element_size() for p in model.parameters()))


def _llama(layers: int) -> dict:
    return dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=16384,
        num_attention_heads=32,
        num_key_value_heads=32,
        num_hidden_layers=layers,
        vocab_size=32768,
        tie_word_embeddings=False,
    )


def test_view_shard_tracks_strided_heads() -> None:
    merged = _view_shard((8, 32, 128, 64), (256, 128, 64), 1, 1, 8)  # heads sharded, [b, H] merged
    assert merged == ("S", 0, 8)
    assert _view_shard((256, 128, 64), (8, 32, 128, 64), 0, 8, 8) == ("S", 1, 1)  # split: back on H
    assert _view_shard((8, 1024, 4096), (8192, 4096), 0, 1, 4) == ("S", 0, 1)
    assert _view_shard((2048,), (2, 1024), 0, 1, 4) is None  # split: 2 rows cannot be cut in 4
    assert spec_str((("S", 0, 1), ("R",))) == "[Shard(0), Replicate()]"


def test_reshard_between_split_factors_is_all_to_all() -> None:
    """``[b*H]`` = 256 rows on the 8-way NVLink axis: ``_StridedShard(0, 8)`` (heads j*4..j*4+3 of
    every batch element on device j) and ``Shard(0)`` (batch element j on device j) hold different
    rows, so going from one to the other is an all-to-all of the 1/32 slice each device holds (not a
    free relabeling, which let a head-sharded attention output pass as batch-sharded for free)."""
    costs, nbytes = MeshCosts(HW, (4, 8)), 256 * 2048 * 128 * 2.0
    s0, heads, batch = ("S", 0, 1), ("S", 0, 8), ("S", 0, 1)
    time_s, names = costs.reshard((s0, heads), (s0, batch), nbytes)
    assert names == ["all-to-all(axis 1)"]
    assert time_s == pytest.approx(float(all_to_all_time_s(nbytes / 32, 8, costs.links[1])), rel=1e-12)
    assert costs.reshard((s0, heads), (s0, heads), nbytes) == (0.0, [])
    assert costs.reshard((heads, s0), (s0, heads), nbytes)[1] == ["all-to-all(axis 0)", "all-to-all(axis 1)"]


def test_broadcasting_expand_can_cut_the_new_dim() -> None:
    """RMSNorm's backward pattern ``expand([8, 16, 1] -> [8, 16, 32]) / 32``: the expand is an anchor
    (not a follower) whose per-axis options on a 4-way axis are, by hand: R <- R, S(0) <- S(0),
    S(1) <- S(1) (shards pass), S(2) <- R (each device materializes its slice of the broadcast dim),
    P <- P (expand is linear). A non-broadcasting expand stays a follower, and passes P."""

    def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.expand(8, 16, 32) / 32 + y.expand(8, 16, 32)

    gm = make_fx(f, tracing_mode="fake")(torch.empty(8, 16, 1), torch.empty(8, 16, 32))
    cast, same = gm.graph.find_nodes(op="call_function", target=torch.ops.aten.expand.default)
    assert broadcast_dims(cast) == [2] and broadcast_dims(same) == []
    assert not is_follower(cast) and is_follower(same)
    s = [("S", d, 1) for d in range(3)]
    assert op_strategies(cast, {}, (4,)) == [
        ((R,), ((R,),)),
        ((s[0],), ((s[0],),)),
        ((s[1],), ((s[1],),)),
        ((s[2],), ((R,),)),
        ((P,), ((P,),)),
    ]
    assert follow_axis(same, P, 4) == P and follow_axis(same, s[2], 4) == s[2]


def test_mlp_ample_memory_is_data_parallel() -> None:
    """65,536 tokens of width 1,024 on 4 devices, joint graph, no memory limit. Data parallelism
    computes a quarter of the tokens per device and moves only the weight gradients: one all-reduce
    per weight (8 MiB each, bf16) over the NVLink axis. Any weight sharding moves more: FSDP adds
    all-gathers of the weights (used in forward and backward), tensor parallelism all-reduces
    [65536, 1024] activations (128 MiB). So: weights Replicate, input Shard(0), collectives = the two
    gradient all-reduces and comm_s = Σ all_reduce_time_s(weight bytes, 4, NVLink)."""
    model, x = _mlp(65536, 1024, 4096)
    cap = capture(model, [x])
    assert cap.joint and set(cap.grads.values()) == set(cap.params)
    plan = plan_sharding(cap, HW, (4,))
    assert set(plan.param_placements.values()) == {"[Replicate()]"}
    assert plan.placements[_input(cap)] == "[Shard(0)]"
    assert sorted(c.split(" -> ")[1] for c in plan.collectives) == [
        "grad of 0.weight: all-reduce(axis 0)",
        "grad of 2.weight: all-reduce(axis 0)",
    ]
    link = default_links(HW, 1)[0]
    expected = sum(
        float(all_reduce_time_s(p.numel() * p.element_size(), 4, link)) for p in model.parameters()
    )
    assert plan.comm_s == pytest.approx(expected, rel=1e-9) and plan.comm_s > 0


def test_forward_only_ample_memory_moves_nothing() -> None:
    """The forward graph alone (``joint=False``): data parallel with no collective at all."""
    model, x = _mlp(65536, 1024, 4096)
    cap = capture(model, [x], joint=False)
    plan = plan_sharding(cap, HW, (4,))
    assert not cap.joint and set(plan.param_placements.values()) == {"[Replicate()]"}
    assert plan.placements[_input(cap)] == "[Shard(0)]"
    assert plan.comm_s == 0.0 and plan.collectives == []


def test_mlp_memory_budget_many_tokens_is_fsdp() -> None:
    """Same MLP, training states (16 B/param) must be cut 4 ways. Per step FSDP moves the weights: an
    all-gather of each in the forward pass, one more of the second in the backward (for the gradient of
    its input; the first layer's input needs none) and a reduce-scatter of each gradient: 3 all-gathers
    + 2 reduce-scatters of 8 MiB. Tensor parallelism would all-reduce the [65536, 1024] output
    (128 MiB) at least once. So: weights stored sharded, tokens sharded, and exactly those collectives."""
    model, x = _mlp(65536, 1024, 4096)
    budget = _weights(model) * 16 / 2 / 4 * 1.05
    cap = capture(model, [x])
    plan = plan_sharding(cap, HW, (4,), memory_per_param_bytes=16, memory_limit=budget)
    assert all(p.startswith("[Shard(") for p in plan.param_placements.values()), plan.param_placements
    assert plan.placements[_input(cap)] == "[Shard(0)]"
    kinds = sorted(c.rsplit(": ", 1)[1] for c in plan.collectives)
    assert kinds == ["all-gather(axis 0)"] * 3 + ["reduce-scatter(axis 0)"] * 2, plan.collectives
    assert sum("-> grad of" in c for c in plan.collectives) == 2  # the reduce-scatters are the grads'
    link, size = default_links(HW, 1)[0], 1024 * 4096 * 2
    expected = 3 * float(all_gather_time_s(size, 4, link)) + 2 * float(reduce_scatter_time_s(size, 4, link))
    assert plan.comm_s == pytest.approx(expected, rel=1e-9)
    assert plan.memory_per_device_bytes <= budget


def test_mlp_memory_budget_few_tokens_is_tensor_parallel() -> None:
    """1,024 tokens, 4096 -> 16384 -> 4096 (256 MiB of bf16 weights), cut 4 ways: FSDP would move 3 x
    128 MiB of weights + 2 x 128 MiB of gradients; the activations are 8 MiB ([1024, 4096]) to 32 MiB
    ([1024, 16384]). So the solver shards the weights along the hidden dims and moves activations:
    the first layer column-parallel (weight [out, in] Shard(0), ReLU output Shard(1)), no gradient
    collective on it, and less communication than the FSDP plan pinned on the same problem."""
    model, x = _mlp(1024, 4096, 16384)
    budget = _weights(model) * 16 / 2 / 4 * 1.05
    cap = capture(model, [x])
    plan = plan_sharding(cap, HW, (4,), memory_per_param_bytes=16, memory_limit=budget)
    assert plan.param_placements["0.weight"] == "[Shard(0)]"
    assert plan.placements["relu"] == "[Shard(1)]"
    assert not any("grad of 0.weight" in c for c in plan.collectives)
    fsdp = plan_sharding(
        cap,
        HW,
        (4,),
        memory_per_param_bytes=16,
        memory_limit=budget,
        pins={
            "0.weight": "[Shard(1)]",
            "2.weight": "[Shard(0)]",
            "input": "[Shard(0)]",
            "relu": "[Shard(0)]",
        },
    )
    assert plan.comm_s < fsdp.comm_s and plan.step_time_s < fsdp.step_time_s
    assert plan.memory_per_device_bytes <= budget


@pytest.fixture(scope="module")
def llama2() -> object:
    return capture_hf(_llama(2), batch=8, seq=2048)


@pytest.fixture(scope="module")
def llama2_forward() -> object:
    return capture_hf(_llama(2), batch=4, seq=2048, joint=False)


COLUMN = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
)


def _budget(cap: object, slack: float) -> float:
    """Training states (16 B/param) cut ~8 ways."""
    params = sum(
        n.meta["val"].numel() for n in cap.graph.find_nodes(op="placeholder") if n.name in cap.params
    )
    return params * 16 / 8 * slack


def test_transformer_2d_mesh_rediscovers_megatron_forward(llama2_forward: object) -> None:
    """Forward graph, 4 x 8 mesh, inner axis NVLink: TP on the inner axis, DP on the outer one."""
    budget = _budget(llama2_forward, 1.15)
    plan = plan_sharding(llama2_forward, HW, (4, 8), memory_per_param_bytes=16, memory_limit=budget)
    p = {k.removeprefix("model.layers.1."): v for k, v in plan.param_placements.items()}
    for column in COLUMN:
        assert p[column] == "[Replicate(), Shard(0)]", column  # weight [out, in]: output dim
    for row in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        assert p[row] == "[Replicate(), Shard(1)]", row  # input dim
    assert plan.placements["embedding"].startswith("[Shard(0)")  # batch on the outer axis
    inner = [c for c in plan.collectives if "axis 1" in c and "layers" not in c]
    assert any("reduce" in c for c in inner)  # an all-reduce or a reduce-scatter per sub-block
    assert not any("axis 0" in c for c in plan.collectives)  # nothing crosses the slow axis
    assert plan.memory_per_device_bytes <= budget


def test_transformer_2d_mesh_rediscovers_megatron_joint(llama2: object) -> None:
    """Joint graph (cross-entropy loss, gradients tied), 4 x 8 mesh: the textbook Megatron layer on
    the NVLink axis (q/k/v/gate/up column-, o_proj/down row-parallel), replicated over the slow axis.
    Inside the decoder layers the only slow-axis traffic is the data-parallel all-reduce of every
    weight's gradient; outside them, besides the gradients of the final norm and lm_head, only the
    loss's total weight (a scalar) and the hidden-state gradient entering the embedding backward
    (all-gathered: 4 MiB per device, cheaper than all-reducing the 32 MiB embedding-gradient shard).

    The LM head is pinned to Megatron's place, vocab-parallel over the NVLink axis (``[Replicate(),
    Shard(0)]``), and the solver completes the recipe: the cross-entropy stays vocab-parallel there
    (log-probs ``[Shard(0), Shard(1)]``: tokens over the slow axis, vocab over NVLink), with only the
    three per-token scalar all-reduces on axis 1 (predicted step 20.15 ms; 20.92 ms before the
    vocab-parallel softmax rule, when the logits had to be token-sharded on both axes). Left free, the
    solver now prefers (20.04 ms under this cost model) a layout with the batch on the NVLink axis,
    weights cut over the slow axis and the LM head vocab-parallel over the slow axis, which the
    vocab-parallel softmax made affordable (before it, that layout had to gather 2 GiB of float32
    logits over the slow axis)."""
    budget = _budget(llama2, 1.05)
    plan = plan_sharding(
        llama2,
        HW,
        (4, 8),
        memory_per_param_bytes=16,
        memory_limit=budget,
        pins={"lm_head.weight": "[Replicate(), Shard(0)]"},
    )
    p = {k.removeprefix("model.layers.1."): v for k, v in plan.param_placements.items()}
    for column in COLUMN:
        assert p[column] == "[Replicate(), Shard(0)]", column
    for row in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        assert p[row] == "[Replicate(), Shard(1)]", row
    assert plan.placements["embedding"].startswith("[Shard(0)")  # batch on the outer axis
    grads = {c.split(" -> ")[1] for c in plan.collectives if "-> grad of" in c}
    layer_params = [fqn for fqn in plan.param_placements if fqn.startswith("model.layers.")]
    assert {f"grad of {fqn}: all-reduce(axis 0)" for fqn in layer_params} <= grads  # DP on the slow axis
    slow = [c for c in plan.collectives if "axis 0" in c and "-> grad of" not in c]
    assert sorted(c.split(" -> ")[1].split("[")[0] for c in slow) == [
        "embedding_dense_backward",
        "nll_loss_backward",
    ], slow
    assert not any("-> grad of" in c for c in plan.collectives if "axis 1" in c and "all-reduce" in c)
    assert plan.placements["_log_softmax"] == "[Shard(0), Shard(1)]"
    assert sorted(c for c in plan.collectives if "softmax" in c) == [
        "_log_softmax -> 4096 row maxes: all-reduce(axis 1)",
        "_log_softmax -> 4096 row sums: all-reduce(axis 1)",
        "_log_softmax_backward_data -> 4096 row sums: all-reduce(axis 1)",
    ]
    assert plan.memory_per_device_bytes <= budget


def test_repeated_layers_share_variables(llama2: object) -> None:
    """Backward nodes carry their layer's tag too: both layers of the joint graph have the same number
    of tagged nodes (forward + backward), and they form one repeat group of 2 identical blocks."""
    counts = Counter(llama2.layer.values())
    assert counts[0] == counts[1] > 0
    tagged_backward = [n for n, i in llama2.layer.items() if i == 1 and "backward" in n]
    assert tagged_backward  # e.g. _softmax_backward_data, slice_backward
    fx = build_problem(llama2, MeshCosts(HW, (4, 8)))
    assert len(fx.problem.repeats) == 1 and len(fx.problem.repeats[0].blocks) == 2
    assert all(name.startswith(("cumsum", "index")) for name in fx.unsupported), fx.unsupported


def _op_graph(fn: object, *shapes: tuple[int, ...]) -> Captured:
    """A forward-only graph of ``fn`` on float32 inputs of ``shapes`` (placeholders, no parameters)."""
    gm = make_fx(fn, tracing_mode="fake")(*[torch.empty(s) for s in shapes])
    return Captured(gm.graph, {}, frozenset(), {})


@pytest.mark.parametrize(
    ("op", "count"),
    [
        (lambda x: torch.ops.aten._log_softmax(x, 1, False), 2),
        (lambda x: torch.ops.aten._softmax(x, 1, False), 2),
        (lambda g, y: torch.ops.aten._log_softmax_backward_data(g, y, 1, torch.float32), 1),
        (lambda g, y: torch.ops.aten._softmax_backward_data(g, y, 1, torch.float32), 1),
    ],
)
def test_softmax_over_a_sharded_dim_costs_per_row_all_reduces(op: object, count: int) -> None:
    """``[64, 1024]`` float32 (64 rows, softmax over the 1,024 columns) on a 2 x 4 mesh (axis 0 the
    NIC, α = 2.7 µs; axis 1 NVLink, α = 0.6 µs). A (log-)softmax over a sharded dim keeps the output
    sharded like the input (vocab-parallel) and pays ``count`` all-reduces of one float32 per local row
    on each axis cutting the softmax dim: 2 for the forward (row max, row sum of exp), 1 for the
    backward (row sum of ``g``, or of ``g · out``), per Megatron-LM §3. By hand (ring, 2(n-1)α +
    2(n-1)/n · S/B, S = rows · 4 B, B = 0.83 · link bandwidth):

    - ``[Shard(0), Shard(1)]``: 32 local rows, one axis: ``count · AR(128 B, 4, NVLink)`` = count ·
      (6 · 0.6 µs + 1.5 · 128 B / 373.5 GB/s) = count · 3.6005 µs;
    - ``[Shard(1), Shard(1)]``: 64 rows, both axes: ``count · (AR(256 B, 2, NIC) + AR(256 B, 4,
      NVLink))`` = count · (5.406 + 3.601) µs;
    - ``[Shard(0), Replicate()]`` (rows cut, softmax dim whole), ``[Replicate(), Replicate()]``: 0.

    The backward op is an anchor whose per-axis options are R, Shard(0) and (new) Shard(1) on both
    inputs alike; the forward softmax is a follower: its charge lands on its input's strategies."""
    cap = _op_graph(op, *[(64, 1024)] * (1 if count == 2 else 2))
    costs = MeshCosts(HW, (2, 4))
    fx = build_problem(cap, costs)
    node = next(n for n in cap.graph.nodes if n.op == "call_function")
    var = fx.vars[fx.anchor[node.name]]
    nic, nvl = costs.links
    s0, s1 = ("S", 0, 1), ("S", 1, 1)

    def ar(rows: int, n: int, link: object) -> float:
        return float(all_reduce_time_s(rows * 4, n, link))

    expected = {
        (s0, s1): count * ar(32, 4, nvl),
        (s1, s1): count * (ar(64, 2, nic) + ar(64, 4, nvl)),
        (s1, R): count * ar(64, 2, nic),
        (s0, R): 0.0,
        (R, R): 0.0,
    }
    assert expected[(s0, s1)] == pytest.approx(count * 3.6005e-6, rel=1e-4)
    assert expected[(s1, s1)] == pytest.approx(count * 9.007e-6, rel=1e-3)
    specs = fx.place[node.name]
    for spec, want in expected.items():
        i = specs.index(spec)
        assert var.comm[i] == pytest.approx(want, rel=1e-12, abs=1e-15), spec_str(spec)
        names = fx.implicit.get((fx.anchor[node.name], i), [])
        assert len(names) == count * sum(p == s1 for p in spec), names
    if count == 1:  # the backward anchor: per axis R, Shard(0), Shard(1), both inputs like the output
        per_axis = {(R, (R, R)), (s0, (s0, s0)), (s1, (s1, s1))}
        assert set(op_strategies(node, fx.place, (4,))) == {((o,), ((a,), (b,))) for o, (a, b) in per_axis}
    else:  # the follower keeps its input's spec: every input spec is offered, none replicated first
        assert specs == fx.place[node.args[0].name]


def test_nll_loss_class_sharded_options() -> None:
    """``nll_loss_forward(logp [N, C], target [N])`` with classes sharded and the target replicated:
    each device picks ``logp[n, target[n]]`` where the target falls in its slice (0 elsewhere), so the
    loss is ``Partial``; the backward writes ``-g / total_weight`` at ``(n, target[n])`` in its class
    slice: ``Shard(1) <- (R, Shard(1), R, R)``."""

    def f(logp: torch.Tensor, target: torch.Tensor) -> tuple:
        loss, weight = torch.ops.aten.nll_loss_forward(logp, target, None, 1, -100)
        return torch.ops.aten.nll_loss_backward(torch.ones_like(loss), logp, target, None, 1, -100, weight)

    gm = make_fx(f, tracing_mode="fake")(torch.empty(16, 64), torch.zeros(16, dtype=torch.long))
    fwd, bwd = (
        next(iter(gm.graph.find_nodes(op="call_function", target=t)))
        for t in (torch.ops.aten.nll_loss_forward.default, torch.ops.aten.nll_loss_backward.default)
    )
    s0, s1 = ("S", 0, 1), ("S", 1, 1)
    assert ((P,), ((s1,), (R,))) in op_strategies(fwd, {}, (4,))
    assert ((P,), ((s0,), (s0,))) in op_strategies(fwd, {}, (4,))
    assert ((s1,), ((R,), (s1,), (R,), (R,))) in op_strategies(bwd, {}, (4,))


class _LMHead(torch.nn.Module):
    """The LM head alone: ``Linear(hidden, vocab)`` without bias; the targets pass through."""

    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__()
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lm_head(x), target


def _cross_entropy(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.nll_loss(torch.log_softmax(out[0].float(), dim=-1), out[1])


def test_lm_head_under_memory_budget_is_vocab_parallel() -> None:
    """Megatron's vocab-parallel cross-entropy, found by the solver. 1,024 tokens, hidden 256, vocab
    32,768, float32 (weight W = 32 MiB, logits [1024, 32768] = 128 MiB), 8 devices on NVLink (α =
    0.6 µs, B = 0.83 · 450 GB/s = 373.5 GB/s); training states (16 B/param) must be cut 8 ways. Per
    step, by hand (ring):

    - vocab-parallel (W ``Shard(0)``: vocab rows; x and targets replicated; logits, log-probs and their
      gradients ``Shard(1)``; loss ``Partial``; W's gradient ``t(grad_logits) @ x`` lands in W's own
      ``Shard(0)``): only per-token scalars move, 2 all-reduces forward (row max, row sum) + 1 backward
      (row sum) of 1024 · 4 B = 4 KiB: 3 · (14 · 0.6 µs + 1.75 · 4 KiB / B) = 3 · 8.42 µs = 25.3 µs;
    - gathering the logits instead (same W and mm, log-softmax on whole rows) all-gathers the 128 MiB of
      float32 logits: 7 · 0.6 µs + 0.875 · 128 MiB / B = 319 µs before the backward;
    - token-parallel (the plan before this rule: FSDP-like, W all-gathered, tokens cut) moves the weight:
      all-gather of W (32 MiB, 82.8 µs), an all-to-all of the [V, N] gradient (16 MiB per device,
      43.5 µs) and the total weight's all-reduce (8.4 µs): 134.7 µs.

    Compute is the same (each device multiplies 1/8 of the [1024, 256] x [256, 32768] product), so
    vocab-parallel wins by ~110 µs, and its only collectives are the three scalar all-reduces."""
    hidden, vocab, tokens, n = 256, 32768, 1024, 8
    with torch.device("meta"):
        model = _LMHead(hidden, vocab)
    x = torch.empty(tokens, hidden, device="meta")
    target = torch.zeros(tokens, dtype=torch.long, device="meta")
    cap = capture(model, [x, target], joint=True, loss_fn=_cross_entropy)
    budget = _weights(model) * 16 / 4 / n * 1.5  # replicated: 128 MiB; sharded 8 ways: 16 MiB
    plan = plan_sharding(cap, HW, (n,), memory_per_param_bytes=16, memory_limit=budget)
    assert plan.param_placements["lm_head.weight"] == "[Shard(0)]"  # [vocab, hidden]: vocab rows
    logits = next(iter(cap.graph.find_nodes(op="call_function", target=torch.ops.aten.mm.default)))
    assert plan.placements[logits.name] == "[Shard(1)]"
    for name in ("_log_softmax", "nll_loss_backward", "_log_softmax_backward_data"):
        assert plan.placements[name] == "[Shard(1)]", name
    assert plan.placements["nll_loss_forward"] == "[Partial()]"
    assert plan.placements["getitem_1"] == "[Replicate()]"  # the total weight: every device counts all
    assert sorted(plan.collectives) == [
        "_log_softmax -> 1024 row maxes: all-reduce(axis 0)",
        "_log_softmax -> 1024 row sums: all-reduce(axis 0)",
        "_log_softmax_backward_data -> 1024 row sums: all-reduce(axis 0)",
    ]
    link = default_links(HW, 1)[0]
    assert plan.comm_s == pytest.approx(3 * float(all_reduce_time_s(tokens * 4, n, link)), rel=1e-9)
    assert plan.comm_s == pytest.approx(25.26e-6, rel=1e-3)
    assert plan.memory_per_device_bytes <= budget
    tokens_cut = plan_sharding(
        cap, HW, (n,), memory_per_param_bytes=16, memory_limit=budget, pins={logits.name: "[Shard(0)]"}
    )
    assert tokens_cut.comm_s == pytest.approx(134.7e-6, rel=1e-3)
    assert plan.step_time_s < tokens_cut.step_time_s


# --- a model of alike layers is traced with three and unrolled ---------------------------------------


def _canonical(cap: Captured) -> tuple:
    """A captured graph up to node names: per node its op, target, value's shape and dtype, its
    arguments as graph positions, its layer and parameter; the gradients, loss and buffers by position."""
    nodes = list(cap.graph.nodes)
    at = {n: k for k, n in enumerate(nodes)}
    by_name = {n.name: k for k, n in enumerate(nodes)}
    rows = []
    for n in nodes:
        val = n.meta.get("val")
        args = torch.utils._pytree.tree_leaves((n.args, n.kwargs))
        rows.append((
            n.op, "" if n.op == "placeholder" else str(n.target),
            tuple(getattr(val, "shape", ())), str(getattr(val, "dtype", "")),
            tuple(at[a] if isinstance(a, torch.fx.Node) else repr(a) for a in args),
            cap.layer.get(n.name), cap.params.get(n.name),
        ))  # fmt: skip
    grads = sorted((by_name[g], by_name[p]) for g, p in cap.grads.items())
    return rows, grads, by_name.get(cap.loss), cap.buffers


@pytest.mark.parametrize("joint", [True, False])
def test_an_unrolled_trace_is_the_full_trace_node_for_node(joint: bool, monkeypatch) -> None:
    """Llama with 6 layers: unrolling the trace of 3 (first, middle, last) gives the graph a trace of
    all 6 gives, node for node (ops, shapes, arguments, layer tags, parameters, gradients, loss), so
    the ILP and its plan are the same; capture_hf unrolls it by itself."""
    import search.fx_graph as fx

    def full_trace(layers: int) -> Captured:
        with monkeypatch.context() as m:
            m.setattr(fx, "UNIFORM_LAYERS", ())  # no unrolling: the plain trace
            return capture_hf(_llama(layers), batch=2, seq=256, joint=joint)

    unrolled = fx.unroll(full_trace(3), 6)
    assert unrolled is not None
    assert _canonical(unrolled) == _canonical(full_trace(6))
    assert _canonical(capture_hf(_llama(6), batch=2, seq=256, joint=joint)) == _canonical(unrolled)


def test_layers_that_are_not_alike_are_not_unrolled() -> None:
    """Three layers of which the last is wider: no template for the others, so no unrolled graph."""

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(
                [torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8)]
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    with torch.device("meta"):
        module = Stack()
    from search.fx_graph import unroll

    assert unroll(capture(module, [torch.zeros(4, 8, device="meta")]), 6) is None
