"""HANT phase 1: the normalised MSE, capture, training that lowers the loss, checkpoints that make a rerun resume,
single-site swap scores, the latency table's bookkeeping, and the executor (local processes; a real Ray cluster)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fxscale
from fxscale.executor import LocalExecutor
from fxscale.hant.assemble import extract_site
from fxscale.hant.candidates import create_candidate
from fxscale.hant.distill import (
    DistillConfig,
    PairJob,
    capture_sites,
    distill,
    nmse,
    run_pair,
    save_activations,
)
from fxscale.hant.latency import LatencyTable
from fxscale.hant.scores import Eval, evaluate_swap, score_of
from fxscale.hant.sites import find_sites


class Tiny(nn.Module):
    """conv-bn-relu stem, one residual basic block, a head: two sites."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    gm = fxscale.trace(Tiny().eval(), torch.zeros(1, 1, 8, 8))
    sites = find_sites(gm)
    torch.manual_seed(1)
    xs = torch.randn(96, 1, 8, 8)
    return gm, sites, xs


def test_nmse_definition():
    t = torch.tensor([1.0, -2.0, 2.0])
    assert float(nmse(t, t)) == 0.0
    assert float(nmse(torch.zeros(3), t)) == pytest.approx(1.0)
    assert float(nmse(t + 1, t)) == pytest.approx(3 / 9)
    assert float(nmse(2 * t, t)) == pytest.approx(1.0)  # scale-free: the same for 10 * t
    assert float(nmse(20 * t, 10 * t)) == pytest.approx(1.0)


def test_sites_of_tiny_and_capture(tiny):
    gm, sites, xs = tiny
    assert [(s.name, s.kind, s.residual) for s in sites] == [("stem", "conv_norm_act", False), ("c1", "basic", True)]
    acts = capture_sites(gm, sites, [(xs[:50], None), (xs[50:], None)], 80)
    entry, out = acts["c1"]
    assert entry.shape == out.shape == (80, 8, 8, 8)
    torch.testing.assert_close(extract_site(gm, sites[1])(entry), out)


def _jobs(tiny, tmp_path: Path, specs=("teacher", "ds_k3", "ir_e3_k3"), epochs=4, key="k1"):
    gm, sites, xs = tiny
    train = capture_sites(gm, sites, [(xs[:64], None)], 64)
    val = capture_sites(gm, sites, [(xs[64:], None)], 64)
    paths = save_activations(tmp_path / "acts", train, val)
    site = sites[1]
    jobs = []
    for spec in specs:
        torch.manual_seed(0)
        cfg = DistillConfig(epochs=0 if spec == "teacher" else epochs, lr=5e-3, batch_size=16)
        jobs.append(PairJob(site.name, spec, create_candidate(spec, site, extract_site(gm, site)), paths[site.name],
                            str(tmp_path / "pairs" / f"{spec}.pt"), cfg, key=key))
    return jobs


def test_distillation_lowers_the_loss_and_reports_time(tiny, tmp_path):
    jobs = _jobs(tiny, tmp_path, specs=("ir_e3_k3",), epochs=6)
    r = run_pair(jobs[0])
    assert len(r.losses) == 6 and r.losses[-1] < 0.6 * r.losses[0]
    assert 0 <= r.val_nmse < 1.0 and r.seconds > 0 and not r.resumed
    teacher = run_pair(_jobs(tiny, tmp_path / "t", specs=("teacher",))[0])
    assert teacher.losses == [] and teacher.val_nmse == pytest.approx(0.0, abs=1e-10)


def test_rerun_resumes_finished_pairs(tiny, tmp_path):
    jobs = _jobs(tiny, tmp_path)
    first = distill(jobs, LocalExecutor(workers=1))
    assert [r.resumed for r in first] == [False] * 3
    Path(jobs[2].checkpoint).write_bytes(b"torn")  # an interrupted write of the last pair
    again = distill(_jobs(tiny, tmp_path), LocalExecutor(workers=1))
    assert [r.resumed for r in again] == [True, True, False]
    for a, b in zip(first[:2], again[:2]):
        assert a.losses == b.losses and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    other = distill(_jobs(tiny, tmp_path, key="k2"), LocalExecutor(workers=1))  # other settings: retrain
    assert not any(r.resumed for r in other)


def test_single_site_swap_scores(tiny):
    gm, sites, xs = tiny
    y = gm(xs).argmax(1)
    batches = [(xs, y)]
    base = evaluate_swap(gm, batches)
    assert base.acc == 1.0  # labels are the teacher's own predictions
    same = evaluate_swap(gm, batches, sites[1], extract_site(gm, sites[1]))
    assert same.loss == pytest.approx(base.loss) and same.acc == base.acc
    zero = evaluate_swap(gm, batches, sites[0], nn.Sequential(nn.Conv2d(1, 8, 1), nn.ReLU()))
    assert zero.loss > base.loss
    assert score_of("dloss", base, zero, 0.3) == pytest.approx(-(zero.loss - base.loss))
    assert score_of("dacc", base, zero, 0.3) == pytest.approx(100 * (zero.acc - base.acc))
    assert score_of("local", Eval(0, 0), Eval(0, 0), 0.25) == -0.25


def test_latency_table_bookkeeping():
    t = LatencyTable({"a": {"teacher": 1.0, "skip": 0.0}, "b": {"teacher": 2.0, "ds": 0.5}}, teacher_ms=3.5,
                     fixed_ms=0.5)
    assert t.predict({}) == 3.5 and t.predict({"a": "skip", "b": "ds"}) == 1.0
    assert LatencyTable.from_dict(t.to_dict()).to_dict() == t.to_dict()


def test_latency_table_predicted_from_a_device_profile(tiny, tmp_path):
    from test_predictor import _synthetic_profile

    from fxscale.hant.assemble import extract_site
    from fxscale.hant.latency import predict_table
    from fxscale.hw.predictor import LatencyPredictor
    gm, sites, _xs = tiny
    _synthetic_profile(["conv_k3", "norm", "elementwise", "reduce", "linear"]).save(tmp_path / "p.json")
    pred = LatencyPredictor(tmp_path / "p.json")
    modules = {s.name: {"teacher": extract_site(gm, s)} for s in sites}
    for s in sites:
        if tuple(s.in_shape) == tuple(s.out_shape):
            modules[s.name]["skip"] = nn.Identity()
    t = predict_table(pred, gm, (1, 1, 8, 8), sites, modules)
    assert t.source == "predicted" and t.teacher_ms > 0 and any("skip" in row for row in t.table.values())
    assert all(v >= 0 for row in t.table.values() for v in row.values())
    assert all(row["skip"] == 0.0 and row["teacher"] > 0 for row in t.table.values() if "skip" in row)
    assert t.predict({}) == pytest.approx(t.teacher_ms)  # L_fixed closes the sum at the teacher
    assert LatencyTable.from_dict(t.to_dict()).source == "predicted"


def test_missing_latency_profile_is_named():
    from fxscale.errors import PlanError
    from fxscale.hant.config import AccelerateConfig
    with pytest.raises(PlanError, match="latency_profile is not a file"):
        AccelerateConfig(latency_profile="no/such/profile.json").validate()


@pytest.mark.slow
def test_pairs_on_local_worker_processes(tiny, tmp_path):
    jobs = _jobs(tiny, tmp_path, specs=("ds_k3", "ir_e3_k3"), epochs=1)
    with LocalExecutor(workers=2) as ex:
        got = distill(jobs, ex)
    assert [r.spec for r in got] == ["ds_k3", "ir_e3_k3"] and all(Path(j.checkpoint).is_file() for j in jobs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(marker: str) -> list[int]:
    """Processes whose command line names `marker` (this test's Ray temp dir), and their children."""
    pids, parents = [], {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if marker in cmd:
            pids.append(int(proc.name))
    return pids + [p for p, pp in parents.items() if pp in pids and p not in pids]


def _stop_session(marker: str) -> None:
    """End only the Ray processes this test started (by pid), TERM then KILL."""
    import os
    import signal
    import time
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ray") is None, reason="needs the ray CLI (pip install 'fxscale[ray]')")
def test_pairs_on_a_ray_cluster(tiny, tmp_path):
    """`ray start --head` plus one worker node on this machine (not local mode); pairs run as Ray tasks."""
    import tempfile

    from fxscale.executor import get_executor
    port = _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    try:
        subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                        "--temp-dir", temp, *common], check=True, capture_output=True, timeout=180)
        subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{port}", *common], check=True, capture_output=True,
                       timeout=180)
        import ray
        ray.init(address=f"127.0.0.1:{port}")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        jobs = _jobs(tiny, tmp_path, specs=("ds_k3", "ir_e3_k3"), epochs=1)
        got = distill(jobs, get_executor("ray", address=f"127.0.0.1:{port}"))
        assert [r.spec for r in got] == ["ds_k3", "ir_e3_k3"] and all(len(r.losses) == 1 for r in got)
    finally:
        try:
            import ray
            ray.shutdown()
        finally:
            _stop_session(temp)
            shutil.rmtree(temp, ignore_errors=True)
