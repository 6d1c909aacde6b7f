"""The distributed path trains the three stages exactly as the single-process reference path does.

``deepspeed --num_accelerators 2 launch/train.py`` (and torchrun, and two launchers acting as two
nodes) against ``python -m launch.train`` with ``distributed.mode=reference``, on the same tiny data and
config (configs/train/tiny-distributed.yaml: sampled-softmax warm-up, no dropout).

Tolerance 1e-5 on every parameter and every logged value (losses, validation metrics): float32,
identical inputs and initial weights; what differs is only the order in which gradient
contributions are summed (per-rank sums, then an all-reduce). Measured: below 2e-7 on parameters
after the three stages. Runs on the same world size are compared bit for bit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from dist_workers import runner
from dpr_dist.common.ports import free_port
from dpr_dist.modules.item_init import initial_weight
from dpr_dist.training.loop import STAGE_ORDER, TIMING_FIELDS
from dpr_dist.training.resume import ResumeError
from launch import train

pytestmark = pytest.mark.slow

CONFIG = REPO / "configs" / "train" / "tiny-distributed.yaml"
TOL = 1e-5
LAUNCH_TIMEOUT = 600
# The kill-and-resume scenario: a warm-up long enough to be killed in the middle of.
KILL_SETS = ["warmup.epochs=6", "warmup.patience=6", "checkpoint_every_steps=2", "steer.max_steps_per_epoch=4"]


def train_args(tiny_prepared: Path, out: Path, sets=()) -> list[str]:
    return runner.train_args(CONFIG, out, tiny_prepared, list(sets))


def launch(cmd: list[str], timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    return runner.run(cmd, timeout=timeout)


def params(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / stage / "model.safetensors"))


def history(run: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / stage / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def param_difference(a: Path, b: Path, stage: str) -> float:
    pa, pb = params(a, stage), params(b, stage)
    assert pa.keys() == pb.keys(), stage
    return max((pa[k] - pb[k]).abs().max().item() for k in pa)


def max_differences(a: Path, b: Path) -> dict[str, tuple[float, float]]:
    """stage -> (largest parameter difference, largest difference of a logged value)."""
    out = {}
    for stage in STAGE_ORDER:
        ha, hb = history(a, stage), history(b, stage)
        assert [r.keys() for r in ha] == [r.keys() for r in hb], stage
        assert [(r["epoch"], r["steps"]) for r in ha] == [(r["epoch"], r["steps"]) for r in hb], stage
        logged = max((abs(x[k] - y[k]) for x, y in zip(ha, hb) for k in x if isinstance(x[k], float)), default=0.0)
        out[stage] = (param_difference(a, b, stage), logged)
    return out


def assert_same_run(a: Path, b: Path, tol: float) -> None:
    for stage, (param_err, logged_err) in max_differences(a, b).items():
        assert param_err <= tol and logged_err <= tol, f"{stage}: parameters differ by {param_err:.3g}, logs by {logged_err:.3g}"


@pytest.fixture(scope="module")
def reference(tiny_prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert train.main(train_args(tiny_prepared, out, ["distributed.mode=reference"])) == 0
    return out


@pytest.fixture(scope="module")
def two_ranks(tiny_prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    launch(runner.deepspeed_train_cmd(train_args(tiny_prepared, out), 2))
    return out


TAG_OPTIONS = ("model.tag_features=true", "model.experts_read_history_tags=true")


@pytest.fixture(scope="module")
def reference_with_tag_features(tiny_prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference_tags")
    assert train.main(train_args(tiny_prepared, out, ["distributed.mode=reference", *TAG_OPTIONS])) == 0
    return out


def test_the_reference_run_trains_what_each_stage_trains(reference):
    # So that agreeing with it means something: every stage moved the groups it trains.
    first = torch.as_tensor(initial_weight(*params(reference, "warmup")["item_table.embedding.weight"].shape, 0))
    assert (params(reference, "warmup")["item_table.embedding.weight"] - first).abs().max() > 1e-3
    for stage, prefix in (("align", "projection."), ("steer", "experts.")):
        before, after = params(reference, STAGE_ORDER[STAGE_ORDER.index(stage) - 1]), params(reference, stage)
        assert max((after[k] - before[k]).abs().max().item() for k in after if k.startswith(prefix)) > 1e-3
    metrics = json.loads((reference / "steer" / "metrics.json").read_text())
    assert metrics["world_size"] == 1


@pytest.mark.parametrize("sharding,zero", [
    ("row_wise", 0), ("row_wise", 1), ("row_wise", 2), ("table_wise", 0), ("table_wise", 1), ("table_wise", 2),
])
def test_two_ranks_train_like_the_reference(reference, two_ranks, tiny_prepared, tmp_path, sharding, zero):
    if (sharding, zero) == ("row_wise", 0):
        run = two_ranks
    else:
        run = tmp_path / "run"
        launch(runner.deepspeed_train_cmd(train_args(
            tiny_prepared, run, [f"distributed.sharding={sharding}", f"distributed.zero_stage={zero}"]), 2))
    assert json.loads((run / "steer" / "metrics.json").read_text())["world_size"] == 2
    assert_same_run(run, reference, TOL)
    # Rank 0 wrote the per-step metrics and TensorBoard events.
    steps = [json.loads(line) for line in (run / "warmup" / "steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps] == list(range(2, 2 * len(steps) + 1, 2)) and "loss" in steps[0]
    assert list((run / "tensorboard" / "warmup").glob("events.out.tfevents.*"))


def test_fixed_tag_columns_stay_fixed_and_train_like_the_reference(reference_with_tag_features, tiny_prepared, tmp_path):
    from dpr_dist.data.prepared import load_prepared

    run = tmp_path / "run"
    launch(runner.deepspeed_train_cmd(train_args(tiny_prepared, run, list(TAG_OPTIONS)), 2))
    assert_same_run(run, reference_with_tag_features, TOL)
    tags = load_prepared(tiny_prepared).item_tag.float()
    for stage in STAGE_ORDER:
        weight = params(run, stage)["item_table.embedding.weight"]
        assert torch.equal(weight[:, -tags.shape[1]:], tags)


def test_two_torchrun_nodes_train_like_one_node_with_two_ranks(two_ranks, tiny_prepared, tmp_path):
    run, port = tmp_path / "run", free_port()
    nodes = [runner.start(runner.torchrun_train_cmd(train_args(tiny_prepared, run), 1, nnodes=2, node_rank=r, port=port),
                          tmp_path / f"node{r}.log") for r in (0, 1)]
    for node in nodes:
        node.wait(timeout=LAUNCH_TIMEOUT)
    logs = [(tmp_path / f"node{r}.log").read_text()[-3000:] for r in (0, 1)]
    assert [n.returncode for n in nodes] == [0, 0], logs
    assert_same_run(run, two_ranks, 0.0)


# ---- two hosts: network namespaces joined by a veth pair, one deepspeed launcher each (--no_ssh) ----
HOSTS = (("dprnode0", "10.231.7.1"), ("dprnode1", "10.231.7.2"))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed: cannot create the two test hosts")
    try:
        _ip("netns", "add", HOSTS[0][0])
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here (needs root / CAP_SYS_ADMIN): {exc.stderr.strip()}")
    try:
        _ip("netns", "add", HOSTS[1][0])
        _ip("link", "add", "dprveth0", "type", "veth", "peer", "name", "dprveth1")
        for i, (name, addr) in enumerate(HOSTS):
            _ip("link", "set", f"dprveth{i}", "netns", name)
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", f"dprveth{i}")
            _ip("-n", name, "link", "set", f"dprveth{i}", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield HOSTS
    finally:
        for name, _ in HOSTS:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_deepspeed_launchers_on_two_hosts_train_like_one_node(two_ranks, two_hosts, tiny_prepared, tmp_path):
    run, port = tmp_path / "run", free_port()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{name} slots=1\n" for name, _ in two_hosts))
    master = two_hosts[0][1]
    launcher = str(Path(runner.sys.executable).with_name("deepspeed"))
    nodes = []
    for rank, (name, _) in enumerate(two_hosts):
        cmd = ["ip", "netns", "exec", name, launcher, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank),
               "--master_addr", master, "--master_port", str(port), str(runner.TRAIN_SCRIPT), *train_args(tiny_prepared, run)]
        # gloo picks its interface by hostname, which resolves outside the namespace: name the veth.
        nodes.append(runner.start(cmd, tmp_path / f"{name}.log", env={"GLOO_SOCKET_IFNAME": f"dprveth{rank}"}))
    for node in nodes:
        node.wait(timeout=LAUNCH_TIMEOUT)
    logs = [(tmp_path / f"{name}.log").read_text()[-3000:] for name, _ in two_hosts]
    assert [n.returncode for n in nodes] == [0, 0], logs
    assert_same_run(run, two_ranks, 0.0)


# ---- kill -9 and resume -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tiny_prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    launch(runner.deepspeed_train_cmd(train_args(tiny_prepared, out, KILL_SETS), 2))
    return out


def latest_step(run: Path, stage: str) -> int:
    pointer = run / stage / "resume" / "LATEST"
    try:
        return int(pointer.read_text().split("-")[1])
    except (OSError, IndexError, ValueError):
        return -1


@pytest.fixture(scope="module")
def killed(tiny_prepared, tmp_path_factory) -> Path:
    """A 2-rank run killed with SIGKILL (launcher and ranks) in the middle of the warm-up, after
    its resumable state of step >= 8 was written; returned untouched (tests work on copies)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    proc = runner.start(runner.deepspeed_train_cmd(train_args(tiny_prepared, out, KILL_SETS), 2), out.parent / "launch.log")
    deadline = time.time() + LAUNCH_TIMEOUT
    while latest_step(out, "warmup") < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    runner.kill_tree(proc)
    step = latest_step(out, "warmup")
    assert 8 <= step < 36, f"killed at the wrong moment (state of step {step}): {(out.parent / 'launch.log').read_text()[-2000:]}"
    assert not (out / "warmup" / "COMPLETE").exists()
    return out


def resume_copy(killed: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    return run


def rewrite_state(run: Path, edit) -> None:
    """Change a saved state the way a bug would (then re-seal its checksums, so it is accepted)."""
    from dpr_dist.common.atomic import sha256_file

    state = run / "warmup" / "resume" / (run / "warmup" / "resume" / "LATEST").read_text().strip()
    edit(state)
    sums = {str(p.relative_to(state)): sha256_file(p) for p in sorted(state.rglob("*")) if p.is_file() and p.name != "COMPLETE"}
    (state / "COMPLETE").write_text(json.dumps(sums))


def test_a_run_killed_mid_stage_resumes_to_the_uninterrupted_result(killed, uninterrupted, tiny_prepared, tmp_path):
    run = resume_copy(killed, tmp_path)
    proc = launch(runner.deepspeed_train_cmd(train_args(tiny_prepared, run, KILL_SETS), 2))
    assert "[warmup] resuming from" in proc.stdout
    assert_same_run(run, uninterrupted, 0.0)
    steps = [json.loads(line)["step"] for line in (run / "warmup" / "steps.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the rows past the saved step were replaced, not repeated


@pytest.mark.parametrize("what", ["data position", "sampling generator"])
def test_resuming_without_the_saved_position_or_rng_differs(killed, uninterrupted, tiny_prepared, tmp_path, what):
    """Negative controls: the equality above holds because the data position and the RNG state
    are restored; with either one reset, the resumed run differs."""
    run = resume_copy(killed, tmp_path)

    def edit(state: Path) -> None:
        if what == "data position":
            trainer = json.loads((state / "trainer.json").read_text())
            trainer["loop"]["samples_consumed"] = 0
            (state / "trainer.json").write_text(json.dumps(trainer))
        else:
            for path in state.glob("rng-r*.pt"):
                saved = torch.load(path, weights_only=True)
                saved["sampling"] = torch.Generator().manual_seed(12345).get_state()
                torch.save(saved, path)

    rewrite_state(run, edit)
    launch(runner.deepspeed_train_cmd(train_args(tiny_prepared, run, KILL_SETS), 2))
    assert param_difference(run, uninterrupted, "warmup") > 1e-4


@pytest.mark.parametrize("world,sharding", [(1, "row_wise"), (2, "table_wise")])
def test_a_state_saved_by_two_ranks_resumes_on_another_world_or_sharding(
        killed, uninterrupted, tiny_prepared, tmp_path, world, sharding):
    run = resume_copy(killed, tmp_path)
    args = train_args(tiny_prepared, run, KILL_SETS + [f"distributed.sharding={sharding}"])
    cmd = runner.torchrun_train_cmd(args, 1) if world == 1 else runner.deepspeed_train_cmd(args, 2)
    proc = launch(cmd)
    assert "[warmup] resuming from" in proc.stdout
    assert json.loads((run / "steer" / "metrics.json").read_text())["world_size"] == world
    assert_same_run(run, uninterrupted, TOL)


def test_a_corrupt_state_is_refused_by_name(killed, tiny_prepared, tmp_path):
    run = resume_copy(killed, tmp_path)
    state = run / "warmup" / "resume" / (run / "warmup" / "resume" / "LATEST").read_text().strip()
    dense = state / "dense.safetensors"
    raw = bytearray(dense.read_bytes())
    raw[-3] ^= 0xFF
    dense.write_bytes(bytes(raw))
    with pytest.raises(ResumeError, match=f"{dense}: sha256 differs from COMPLETE"):
        train.main(train_args(tiny_prepared, run, KILL_SETS + ["distributed.mode=reference"]))
    (state / "COMPLETE").unlink()
    with pytest.raises(ResumeError, match=r"partial training state \(COMPLETE missing\)"):
        train.main(train_args(tiny_prepared, run, KILL_SETS + ["distributed.mode=reference"]))


def test_a_dead_node_makes_the_other_fail_fast(tiny_prepared, tmp_path):
    """Node 1 (its launcher and rank) is killed mid-run; node 0's rank must stop with a clear
    error within the process-group timeout (30 s here) instead of gloo's default 30 minutes."""
    run, port = tmp_path / "run", free_port()
    args = train_args(tiny_prepared, run, KILL_SETS + ["distributed.timeout_minutes=0.5"])
    nodes = [runner.start(runner.torchrun_train_cmd(args, 1, nnodes=2, node_rank=r, port=port), tmp_path / f"node{r}.log")
             for r in (0, 1)]
    deadline = time.time() + LAUNCH_TIMEOUT
    while latest_step(run, "warmup") < 4 and nodes[0].poll() is None and time.time() < deadline:
        time.sleep(0.02)
    runner.kill_tree(nodes[1])
    killed_at = time.time()
    nodes[0].wait(timeout=LAUNCH_TIMEOUT)
    elapsed = time.time() - killed_at
    log = (tmp_path / "node0.log").read_text()
    assert nodes[0].returncode != 0
    assert elapsed < 30 + 60, log[-3000:]
    assert "DistributedTimeoutError" in log and "Relaunch to resume from the last checkpoint" in log, log[-3000:]


def test_the_consolidated_export_of_two_ranks_serves_like_the_reference(reference, two_ranks, tiny_prepared):
    """What serving loads (the 2-rank run's single-file export, no pickle) answers as the reference
    checkpoint does: same items in the same order, scores within the parity tolerance."""
    from dpr_dist.serving import Recommender

    served = {name: Recommender.load(run / "steer", tiny_prepared) for name, run in (("ref", reference), ("dist", two_ranks))}
    tag = served["ref"].catalogue.tag_names[0]
    for user in (1, 2, 3):
        for prompt in (None, f"more {tag}", {"less": [tag]}):
            got = {name: rec.recommend(user=user, prompt=prompt, k=10) for name, rec in served.items()}
            for side in ("dpr", "backbone"):
                ref, dist = getattr(got["ref"], side), getattr(got["dist"], side)
                assert [s.item.id for s in dist] == [s.item.id for s in ref], (user, prompt, side)
                assert max(abs(a.score - b.score) for a, b in zip(dist, ref)) <= 1e-4
