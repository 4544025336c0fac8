"""The placement experiment end to end: presets, the search function, pictures, MLflow, dse.topoeval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from report_helpers import E_NOTATION

from costmodels.errors import ConfigError
from costmodels.training import group_collectives
from dse import placement_search, schema
from dse._app import CONF_DIR
from dse.models import load_model
from dse.tracking import JobRun
from search.placement import Job, wire_bytes
from search.placement_draw import draw_html, draw_png
from search.topology import gpu_cluster, mark_unavailable

MIXTRAL = load_model("mixtral_8x7b")
PRESETS = sorted(p.stem for p in (CONF_DIR / "topology").glob("*.yaml"))
SMALL = [
    "topology=small_2x8",
    "num_devices=16",
    "placement.tp=4",
    "placement.pp=2",
    "search.time_limit_s=4",
    "search.workers=2",
    "workload.global_batch=64",
]


def _register() -> None:
    schema.register()


def placement_cfg(*overrides: str) -> DictConfig:
    _register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["+experiment=placement", "tracking=none", *overrides])


@pytest.mark.parametrize("name", PRESETS)
def test_topology_presets_build(name: str) -> None:
    topo = placement_search.build_topology(OmegaConf.load(CONF_DIR / "topology" / f"{name}.yaml"))
    assert len(topo.devices) >= 16 and topo.available.all()


def test_unavailable_fraction_drops_whole_nodes() -> None:
    spec = OmegaConf.load(CONF_DIR / "topology" / "dgx_h100_1k.yaml")
    spec.unavailable_fraction = 0.1
    topo = placement_search.build_topology(spec)
    assert int((~topo.available).sum()) == 13 * 8
    assert len(topo.domains) == 128 and len({int(d) for d in topo.domain_of[~topo.available]}) == 13


def test_shuffle_hosts_reorders_whole_nodes() -> None:
    """The same devices and availability, nodes in another order, each node's GPUs still together and
    in order; rank order then follows the new list."""
    spec = OmegaConf.load(CONF_DIR / "topology" / "dgx_h100_1k.yaml")
    spec.unavailable_fraction, spec.shuffle_hosts = 0.1, True
    topo = placement_search.build_topology(spec)
    plain = placement_search.build_topology(OmegaConf.merge(spec, {"shuffle_hosts": False}))
    assert sorted(topo.devices) == sorted(plain.devices) and topo.devices != plain.devices
    assert dict(zip(topo.devices, topo.available, strict=True)) == dict(
        zip(plain.devices, plain.available, strict=True)
    )
    for k in range(0, len(topo.devices), 8):
        node = {d.split("/")[0] for d in topo.devices[k : k + 8]}
        assert len(node) == 1 and [d.split("/")[1] for d in topo.devices[k : k + 8]] == [
            f"gpu{i}" for i in range(8)
        ]


def test_experiment_composes_with_derived_traffic() -> None:
    cfg = placement_cfg()
    assert cfg.search.driver == "cpsat" and cfg.topology.nodes == 128
    d = placement_search.degrees(OmegaConf.to_container(cfg.placement), cfg.num_devices)
    assert d == {"tp": 8, "pp": 4, "cp": 1, "ep": 1, "dp": 32}


def test_dp_is_megatrons_with_experts_carved_out() -> None:
    """Mixtral on 16 devices with tp 2, pp 2, ep 2: dp is 4 as in dse.calc (16 / (tp·pp)), the
    placement's own DP axis holds 4 / 2 = 2 replicas outside the expert groups, the job has 16 ranks
    and reports dp 4; the micro-batch count (and so the TP traffic) is that of dp 4 whatever ep is;
    the memory is the calculator's for the same mapping; an ep that does not divide dp is one line."""
    from costmodels.parallel import make_plan
    from costmodels.training import TrainingJob, training_step
    from dse.hardware import load_hardware

    cfg = placement_cfg(
        *SMALL, "model=mixtral_8x7b", "placement.tp=2", "placement.ep=2", "placement.microbatch=2"
    )
    d = placement_search.degrees(OmegaConf.to_container(cfg.placement), 16)
    assert d == {"tp": 2, "pp": 2, "cp": 1, "ep": 2, "dp": 4}
    job = placement_search.job_from_config(cfg, placement_search.build_topology(cfg.topology), MIXTRAL)
    assert (job.dp, job.ep, job.n_ranks, job.as_dict()["dp"]) == (2, 2, 16, 4)
    w = {"seq_len": 4096, "global_batch": 64, "precision": "bf16"}
    with_ep = placement_search.bytes_per_step(MIXTRAL, w, d | {"microbatch": 2})
    without = placement_search.bytes_per_step(MIXTRAL, w, d | {"ep": 1, "microbatch": 2})
    assert with_ep["tp"] == without["tp"] and with_ep["pp"] == without["pp"] and with_ep["ep"] > 0
    mem = placement_search.job_memory(cfg, job)["per_device_gib"]
    plan = make_plan(tp=2, pp=2, dp=4, ep=2, microbatch=2, global_batch=64, zero_stage=1, sequence_parallel=1)
    train = TrainingJob(MIXTRAL, cfg.workload.seq_len, cfg.workload.precision, True, cfg.workload.optimizer)
    calc = training_step(load_hardware("h100_sxm"), train, plan).memory.total_bytes / 2**30
    assert mem == pytest.approx(float(calc))
    with pytest.raises(ConfigError, match=r"placement.ep = 3 does not divide placement.dp = 4"):
        placement_search.degrees({"tp": 2, "pp": 2, "ep": 3}, 16)


def test_bytes_per_step_follow_the_training_model() -> None:
    from dse.models import load_model

    spec = load_model("llama3_70b")
    w = {"seq_len": 8192, "global_batch": 1024, "precision": "bf16"}
    s = placement_search.bytes_per_step(spec, w, {"tp": 8, "pp": 4, "dp": 32})
    act = 8192 * 8192 * 2  # one micro-batch's activation (bytes)
    assert s["tp"] == pytest.approx(32 * 2 * 2 * 20 * act)  # m · blocks · passes · layers per stage
    assert s["pp"] == pytest.approx(32 * 2 * act / 8)
    assert 70.5e9 / 32 * 4 * 0.9 < s["dp"] < 70.5e9 / 32 * 4 * 1.3  # ≈ params/(tp·pp) fp32 grads


def test_search_end_to_end_cp_sat_not_worse_than_baselines() -> None:
    cfg = placement_cfg(*SMALL, "topology.nodes=4", "topology.unavailable_fraction=0.25", "placement.tp=2")
    with JobRun(cfg, name="placement") as run:
        rep = placement_search.run(cfg, run)
    rows = rep["solvers"]
    assert set(rows) == {"rank_order", "tree_heuristic", "cp_sat"} and rep["job"]["n_ranks"] == 16
    for base in ("rank_order", "tree_heuristic"):
        assert rows["cp_sat"]["cost_sum"] <= rows[base]["cost_sum"] * (1 + 1e-9)
    assert rows["cp_sat"]["tp_in_domain"] and len(set(rep["placement"].values())) == 16
    text = placement_search.render(rep)
    assert "cp_sat" in text and "\nwhy: communication " in text and json.dumps(rep)
    assert not E_NOTATION.search(text), E_NOTATION.findall(text)


def test_a_ulysses_job_is_placed_with_all_to_all_cp_groups() -> None:
    """placement.cp_a2a=true (every plan option is a placement key): the job's CP groups run an
    all-to-all, and the report says so in its first line."""
    cfg = placement_cfg(*SMALL, "placement.tp=4", "placement.cp=2", "placement.cp_a2a=true")
    with JobRun(cfg, name="placement") as run:
        rep = placement_search.run(cfg, run)
    assert rep["job"]["collectives"]["cp"] == "all_to_all" and rep["job"]["cp"] == 2
    assert "(cp groups by all-to-all)" in placement_search.render(rep).splitlines()[0]


def test_search_logs_artifacts_to_mlflow(tmp_path: Path) -> None:
    cfg = placement_cfg(*SMALL, "tracking=sqlite", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    with JobRun(cfg, name="placement") as run:
        placement_search.run(cfg, run)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run.uri)
    names = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"placement.json", "evaluator.csv", "placement.png", "placement.html"} <= names
    assert client.get_run(run.run_id).data.metrics["cp_sat.cost_sum"] > 0


def test_pictures(tmp_path: Path) -> None:
    topo = mark_unavailable(gpu_cluster(4, 8, nodes_per_leaf=2), ["node3", "node0/gpu7"])
    job = Job(tp=4, pp=2, dp=2, bytes_per_step={"tp": 1.0, "dp": 1.0, "pp": 1.0})
    placement = tuple(int(d) for d in topo.available.nonzero()[0][:16])
    png = draw_png(topo, placement, job, tmp_path / "p.png")
    page = draw_html(topo, placement, job, tmp_path / "p.html").read_text()
    assert png.stat().st_size > 1024 and png.read_bytes()[:4] == b"\x89PNG"
    assert (
        "<svg" in page and "<title>" in page and "unavailable" in page and "http" not in page.split("<svg")[0]
    )


def topoeval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dse.topoeval", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_topoeval_scores_a_placement_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({str(r): f"node{r // 8}/gpu{r % 8}" for r in range(16)}))
    proc = topoeval("p.json", "topology=small_2x8", "job.tp=4", "job.pp=2", "format=json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["ranks"] == 16 and rep["job"]["dp"] == 2 and rep["by_type"]["tp"]["max_nodes"] == 1
    assert rep["by_type"]["pp"]["max_leaves"] == 2 and rep["comm_time_s"] > 0 and rep["max_link"]


@pytest.mark.parametrize("case", ["too_many_ranks", "unknown_device", "dangling_link"])
def test_topoeval_bad_input_is_one_line_error(tmp_path: Path, case: str) -> None:
    ranks = 17 if case == "too_many_ranks" else 16
    placement = {str(r): f"node{r // 8}/gpu{r % 8}" for r in range(ranks)}
    args = ["topology=small_2x8"]
    if case == "unknown_device":
        placement["3"] = "node7/gpu3"
    if case == "dangling_link":
        topo = {
            "nodes": [{"id": f"node{k}", "network_node_ids": ["leafA"], "gpus": 8} for k in range(2)],
            "links": [{"source": "leafA", "target": "nowhere"}],
        }
        (tmp_path / "t.json").write_text(json.dumps(topo))
        args = ["topology=instance_json", f"topology.path={tmp_path / 't.json'}"]
    (tmp_path / "p.json").write_text(json.dumps(placement))
    proc = topoeval("p.json", *args, "job.tp=8", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and len(proc.stderr.splitlines()) == 1
    assert {"too_many_ranks": "17 ranks", "unknown_device": "node7/gpu3", "dangling_link": "nowhere"}[
        case
    ] in proc.stderr


def test_pictures_stay_readable_at_4096_gpus(tmp_path: Path) -> None:
    """4,096 GPUs (512 nodes of 8): the PNG is a grid of node blocks, not a 30,000-pixel strip; with
    ranks in order (tp 8 innermost, pp outermost) each of the 4 pipeline stages fills a quarter of
    the nodes, so each stage colour covers the same area; the HTML page has a stage legend."""
    import matplotlib.image
    import numpy as np

    from search.placement_draw import PALETTE

    topo = gpu_cluster(512, 8, nodes_per_leaf=32)
    job = Job(tp=8, pp=4, dp=128, bytes_per_step={"tp": 1.0, "dp": 1.0, "pp": 1.0})
    png = draw_png(topo, tuple(range(4096)), job, tmp_path / "p.png")
    image = matplotlib.image.imread(png)[..., :3]
    assert image.shape[0] <= 2500 and image.shape[1] <= 2500
    areas = []
    for colour in PALETTE[:4]:
        rgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        areas.append(int(np.sum(np.all(np.abs(image - rgb) < 0.02, axis=-1))))
    assert min(areas) > 0 and max(areas) <= 1.1 * min(areas), areas
    page = draw_html(topo, tuple(range(4096)), job, tmp_path / "p.html").read_text()
    assert all(f"stage {k}" in page for k in range(4))


def test_placed_job_memory_equals_the_calculator_and_warns_when_it_cannot_fit() -> None:
    """The placement experiment's job (Llama-3-70B, tp 8 · pp 4 · dp 32, ZeRO-1, sequence parallel,
    8,192 tokens, global batch 1,024 on H100s) needs what ``dse.calc`` computes for that mapping
    (36.4 GiB); without model parallelism it cannot fit in 80 GiB, and the report says so."""
    cfg = placement_cfg()
    topo = placement_search.build_topology(cfg.topology)
    job = placement_search.job_from_config(cfg, topo, load_model(cfg.model))
    memory = placement_search.job_memory(cfg, job)
    calc = subprocess.run(
        [sys.executable, "-m", "dse.calc", "model=llama3_70b", "hardware=h100_sxm", "num_devices=1024",
         "seq_len=8192", "global_batch=1024", "parallelism.tp=8", "parallelism.pp=4", "parallelism.dp=32",
         "parallelism.zero_stage=1", "parallelism.sequence_parallel=true", "format=json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert calc.returncode == 0, calc.stderr
    assert memory["per_device_gib"] * 2**30 == pytest.approx(
        json.loads(calc.stdout)["memory"]["total_bytes"], rel=1e-6
    )
    assert placement_search._memory_warnings(memory) == [] and memory["capacity_gib"] == pytest.approx(80.0)
    cfg = placement_cfg("placement.tp=1", "placement.pp=1")
    job = placement_search.job_from_config(cfg, topo, load_model(cfg.model))
    (warning,) = placement_search._memory_warnings(placement_search.job_memory(cfg, job))
    assert "cannot run as placed" in warning and "80 GiB" in warning


def test_ulysses_cp_traffic_is_an_all_to_all_of_qkv_and_output() -> None:
    """Llama-3-70B (64 heads of 128, 8 KV heads), tp 4, cp 2 (so 8 KV heads ≥ tp·cp), micro-batch 1,
    seq 8,192, bf16, global batch 32 over dp 4: m = 8 micro-batches; per layer and pass the all-to-all
    buffers are tok·(64 + 2·8)·128 and tok·64·128 with tok = 8192/2 · 2 B / 4 = 2,048 B per feature:
    S_cp = 8 · 2 passes · 80 layers (pp 1) · 2048 · (2·64 + 2·8)·128. A CP group then runs an
    all-to-all, whose ring pairs carry (n−1)/n of it, not a ring all-reduce's 2(n−1)/n."""
    spec = load_model("llama3_70b")
    w = {"seq_len": 8192, "global_batch": 32, "precision": "bf16"}
    p = {"tp": 4, "pp": 1, "dp": 4, "cp": 2, "microbatch": 1}
    s = placement_search.bytes_per_step(spec, w, p | {"cp_a2a": True})
    assert s["cp"] == pytest.approx(8 * 2 * 80 * 2048 * (2 * 64 + 2 * 8) * 128)
    ring = placement_search.bytes_per_step(spec, w, p)["cp"]
    assert ring != s["cp"]
    degrees = {"tp": 4, "pp": 1, "dp": 4, "cp": 2, "ep": 1}
    collectives = group_collectives(placement_search.placement_plan(p | {"cp_a2a": True}, w))
    job = placement_search.placement_job(degrees, s, ("tp", "cp", "ep", "dp", "pp"), collectives)
    assert job.collective("cp") == "all_to_all" and job.collective("dp") == "all_reduce"
    assert wire_bytes(job, "cp") == pytest.approx(s["cp"] / 2)
    assert job.as_dict()["collectives"]["cp"] == "all_to_all"
    with pytest.raises(ConfigError, match=r"placement.cp_a2a must be true or false"):
        placement_search.placement_plan(p | {"cp_a2a": "yes"}, w)


def test_a_reports_job_carries_its_collectives() -> None:
    """dse.topoeval reads each group's collective from a placement report's job, and from a report
    that says ``cp_a2a`` instead (written before jobs carried them); anything else is one line."""
    from dse.topoeval import _report_collectives

    job = Job(tp=2, cp=2, collectives=group_collectives(placement_search.placement_plan(
        {"tp": 2, "cp": 2, "dp": 1, "cp_a2a": True}, {"global_batch": 8})))  # fmt: skip
    assert _report_collectives(json.loads(json.dumps(job.as_dict())))["cp"] == "all_to_all"
    assert _report_collectives({"cp_a2a": True})["cp"] == "all_to_all"
    assert _report_collectives({})["cp"] == "all_reduce"
    with pytest.raises(ConfigError, match=r"the report's job.collectives must map tp, cp, ep, dp, pp"):
        _report_collectives({"collectives": {"tp": "broadcast"}})


def test_placement_wires_carry_the_training_models_bytes() -> None:
    """Mixtral on 64 ranks (tp 2, pp 2, vpp 2, ep 4, dp 16, sequence parallelism, ZeRO-1, full
    recomputation): for every group type, the bytes placement puts on each ring pair (bus factor ×
    S_t over its group) equal what the training model's step sends per rank
    (``costmodels.training.comm_bytes``), and the hand count of the TP part: m = 128 / (16 · 1) = 8
    micro-batches, 2 blocks × 3 passes (full recomputation) × 16 layers per stage (32 / 2), each
    all-reduce sending 2·(2−1)/2 of one micro-batch's 4096 × 4096 × 2 B activations."""
    from costmodels.parallel import make_plan
    from costmodels.training import TrainingJob, comm_bytes

    w = {"seq_len": 4096, "global_batch": 128, "precision": "bf16"}
    p = {"tp": 2, "pp": 2, "dp": 16, "cp": 1, "ep": 4, "vpp": 2, "microbatch": 1, "zero_stage": 1}
    p |= {"recompute": "full", "sequence_parallel": True}
    s = placement_search.bytes_per_step(MIXTRAL, w, p)
    job = placement_search.placement_job(
        {k: p[k] for k in ("tp", "pp", "dp", "cp", "ep")}, s, ("tp", "cp", "ep", "dp", "pp")
    )
    plan = make_plan(tp=2, pp=2, dp=16, ep=4, vpp=2, microbatch=1, global_batch=128, zero_stage=1,
                     recompute=2, sequence_parallel=1)  # fmt: skip
    sent = comm_bytes(TrainingJob(MIXTRAL, 4096, "bf16"), plan)
    for t in ("tp", "pp", "ep", "dp"):
        assert wire_bytes(job, t) == pytest.approx(float(sent[t]), rel=1e-6), t
    assert float(sent["tp"]) == pytest.approx(8 * 2 * 3 * 16 * (2 * 1 / 2) * 4096 * 4096 * 2, rel=1e-9)
    assert "cp" not in s  # cp = 1: no context-parallel traffic
