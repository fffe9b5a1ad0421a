"""Distributed runs: candidate trainings on a real multi-node Ray cluster, and train_ddp under torchrun (gloo).

Default run: the address/error/runtime_env checks, the fxscale.ddp entry checks and the 2-rank torchrun run
(~35 s on the loaded 2-core box). The cluster test is marked slow (~70 s there): `pytest -m slow -k ray_cluster`.
The Ray cluster is started here with `ray start --head` plus a second `ray start --address=...` node (two raylets
on this machine), each from its own `--block`ed process in a new session, and stopped by signalling exactly those
process groups (never `ray stop`, which stops every Ray process on the machine).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from fxscale.errors import FxscaleError
from fxscale.executor import RayExecutor, check_ray_address, get_executor, ray_address, source_runtime_env

HAVE_RAY = importlib.util.find_spec("ray") is not None and shutil.which("ray") is not None
HAVE_GLOO = torch.distributed.is_available() and torch.distributed.is_gloo_available()
READY = "block forever"  # `ray start --block` prints this once its node is up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], log: Path, env: dict[str, str], timeout: float = 180) -> subprocess.Popen:
    """`ray start ARGS --block` in its own session; returns once it reports the node up (fails with its log)."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["ray", "start", *args, "--block"], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while READY not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_node(proc)
            pytest.fail(f"ray start {' '.join(args)} did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return proc


def _stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM the blocked `ray start` (it stops its node's processes), then SIGKILL leftovers of its group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group holds only this node's processes
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """HOST:PORT of a two-node Ray cluster (head + one worker node, 1 CPU each) started on this machine."""
    root = Path(tempfile.mkdtemp(prefix="fxr", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    # RAY_AUTH_MODE set explicitly (here and in this driver): with it unset, Ray >= 2.5x switches to token auth
    # whenever ~/.ray/auth_token exists, which another Ray user on the machine may create at any moment
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes = []
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    try:
        nodes.append(_start_node(["--head", f"--port={address.rsplit(':', 1)[1]}", "--include-dashboard=false",
                                  f"--temp-dir={root / 'h'}", *common],
                                 root / "head.log", env))
        nodes.append(_start_node([f"--address={address}", f"--temp-dir={root / 'w'}", *common], root / "w.log", env))
        yield address
    finally:
        import ray

        ray.shutdown()  # a connection a test left open would outlive the cluster
        for proc in reversed(nodes):
            _stop_node(proc)
        mp.undo()
        shutil.rmtree(root, ignore_errors=True)


def _candidate_jobs(pipe):
    """What the pipeline trains: an alpha candidate, an importance sample, and one method at two seeds."""
    from fxscale.plan import ScalingPlan
    from fxscale.scaling.alpha import equal_flops_plan
    from fxscale.scaling.baselines.plans import uniform_plan
    from fxscale.scaling.powerlaw import sample_configs

    sample = ScalingPlan(widths=sample_configs(pipe.cg, 6, seed=0)[-1])  # past the uniform ones: perturbed
    method = uniform_plan(pipe.cg, 1.5, align=8)
    return [("alpha=0.5", equal_flops_plan(pipe.cg, 0.5, 2.0), 0), ("sample", sample, 0),
            ("uniform/seed0", method, 0), ("uniform/seed1", method, 1)]


@pytest.mark.slow  # ~25 s to start the two nodes + ~40 s of training on the loaded 2-core box: run with -m slow
@pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed")
@pytest.mark.timeout(400)
def test_pipeline_candidates_on_ray_cluster_match_local(ray_cluster: str, tmp_path, monkeypatch) -> None:
    from fxscale.scaling.config import ScaleConfig
    from fxscale.scaling.pipeline import Pipeline

    settings = dict(model="digits_vgg", target="torch", progress=False, batch_size=64, lr=0.05)
    local = Pipeline(ScaleConfig(**settings), tmp_path / "local", log=lambda s: None)
    on_ray = Pipeline(ScaleConfig(**settings, executor="ray"), tmp_path / "ray", log=lambda s: None)
    plans = _candidate_jobs(local)
    nodes: list[list[str]] = []
    real_map = RayExecutor.map

    def recording_map(self, fn, items):
        out = real_map(self, fn, items)
        nodes.append(list(self.nodes))
        return out

    monkeypatch.setattr(RayExecutor, "map", recording_map)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)  # what `fxscale scale --executor ray` honours
    remote = on_ray.train_many(plans, epochs=1)
    import ray

    port = ray_cluster.rsplit(":", 1)[1]  # Ray reports the node's IP for 127.0.0.1
    assert ray.get_runtime_context().gcs_address.endswith(f":{port}")  # joined this cluster, not a local runtime
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    ray.shutdown()
    inline = local.train_many(plans, epochs=1)
    assert len(nodes) == 1 and len(nodes[0]) == 4 and len(set(nodes[0])) == 2  # tasks ran on both raylets
    assert [o.tag for o in remote] == [tag for tag, _, _ in plans]
    for r, i in zip(remote, inline):  # deterministic 1-thread CPU training: same numbers on any node
        assert r.result.train_loss == pytest.approx(i.result.train_loss, rel=1e-6, abs=1e-9)
        assert r.test_acc == pytest.approx(i.test_acc, abs=1e-12) and 0.0 < r.test_acc <= 1.0
        for k, v in i.state_dict.items():
            assert torch.allclose(r.state_dict[k].float(), v.float(), atol=1e-6), (r.tag, k)
    assert remote[2].test_acc != remote[3].test_acc or remote[2].result.train_loss != remote[3].result.train_loss


@pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed")
def test_ray_address_resolution_and_unreachable_cluster(monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", " 10.1.2.3:6379 ")
    assert ray_address() == "10.1.2.3:6379" and ray_address("auto") == "auto"
    assert RayExecutor().address == "10.1.2.3:6379"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert ray_address() is None and RayExecutor(threads=2).num_cpus == 2.0
    dead = f"127.0.0.1:{_free_port()}"
    with pytest.raises(FxscaleError, match=f"cannot reach the Ray cluster at '{dead}'.*ray start --head"):
        get_executor("ray", address=dead).map(abs, [1])
    with pytest.raises(FxscaleError, match="cannot reach the Ray cluster at 'ray://127.0.0.1:1'"):
        check_ray_address("ray://127.0.0.1:1")
    for bad in ("http://host:1", "host:port", ":6379"):
        with pytest.raises(FxscaleError, match=f"Ray address '{bad}' is not 'auto', HOST:PORT"):
            check_ray_address(bad)
    with pytest.raises(FxscaleError, match="threads >= 1"):
        RayExecutor(threads=0)


@pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed")
def test_ray_runtime_env_ships_this_source_tree() -> None:
    import fxscale

    env = RayExecutor(threads=2, runtime_env={"env_vars": {"A": "1"}, "pip": ["x"]}).runtime_env
    assert env["py_modules"] == [str(Path(fxscale.__file__).resolve().parent)] == source_runtime_env()["py_modules"]
    assert env["env_vars"] == {"OMP_NUM_THREADS": "2", "A": "1"} and env["pip"] == ["x"]
    assert "py_modules" not in RayExecutor(ship_source=False).runtime_env


def test_ddp_entry_without_torchrun_env_is_one_line_exit_2(monkeypatch, capsys) -> None:
    from fxscale import ddp

    for k in ddp.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    assert ddp.main(["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchrun --nproc_per_node=N -m fxscale.ddp" in err
    assert ddp.main(["--epochs", "0"]) == 2 and "invalid TrainConfig" in capsys.readouterr().err


def test_weights_digest_tracks_every_tensor() -> None:
    from fxscale.ddp import weights_digest
    from fxscale.zoo import create_model

    torch.manual_seed(0)
    a = create_model("digits_vgg")
    torch.manual_seed(0)
    b = create_model("digits_vgg")
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        next(b.buffers()).add_(1e-7)
    assert weights_digest(a) != weights_digest(b)


@pytest.mark.skipif(not HAVE_GLOO, reason="gloo backend unavailable in this torch build")
@pytest.mark.timeout(400)
def test_torchrun_two_cpu_ranks_train_ddp_in_sync(tmp_path) -> None:
    out = tmp_path / "result" / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",  # free port
           "-m", "fxscale.ddp", "--model", "digits_vgg", "--epochs", "1", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    # the ranks' stdout lines share one pipe and may interleave, so the per-rank digests are read from the JSON
    # rank 0 gathered (each rank hashes its own trained weights); stdout only says who wrote it
    assert "rank 0 wrote" in run.stdout and "rank 1 wrote" not in run.stdout
    res = json.loads(out.read_text())
    assert res["written_by_rank"] == 0 and res["world_size"] == 2 and res["backend"] == "gloo"
    digests = res["weights_sha256"]
    assert len(digests) == 2 and len(set(digests)) == 1 and res["ranks_agree"] is True  # DDP kept the ranks in sync
    assert len(res["history"]["train_loss"]) == 1 and 0.1 < res["test_acc"] <= 1.0
    assert [p.name for p in out.parent.iterdir()] == ["ddp.json"]  # atomic write: no temporary left behind
