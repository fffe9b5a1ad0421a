"""Tests of fxscale.executor: ordered results from spawned workers, inline mode, errors, training jobs."""
from __future__ import annotations

import importlib.util
import os
import time

import pytest
import torch
from torch import nn

from fxscale.errors import FxscaleError
from fxscale.executor import Executor, LocalExecutor, get_executor
from fxscale.train import JobOutcome, TrainConfig, TrainJob, run_job


def square_slowly(x: int) -> tuple[int, int, int]:
    """Sleep longer for earlier items so completion order is reversed; report pid and torch threads."""
    time.sleep(0.3 * (3 - x) if x < 3 else 0)
    return x * x, os.getpid(), torch.get_num_threads()


def fail_on_two(x: int) -> int:
    """Raise for item 2."""
    if x == 2:
        raise ValueError("item two is bad")
    return x


@pytest.fixture(scope="module")
def pool():
    with LocalExecutor(workers=2) as ex:
        yield ex


def test_local_two_workers_returns_results_in_order(pool: LocalExecutor) -> None:
    assert isinstance(get_executor("local", workers=2), Executor)
    out = pool.map(square_slowly, range(6))
    assert [r[0] for r in out] == [0, 1, 4, 9, 16, 25]
    pids = {r[1] for r in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {r[2] for r in out} == {1}


def test_inline_worker_runs_in_process_and_accepts_lambdas() -> None:
    ex = LocalExecutor(workers=1)
    assert ex.map(lambda x: (x + 1, os.getpid()), [1, 2]) == [(2, os.getpid()), (3, os.getpid())]
    assert ex.map(fail_on_two, []) == []


def test_errors_unpicklable_function_worker_exception_unknown_name() -> None:
    with pytest.raises(FxscaleError, match="cannot pickle.*top-level function"):
        LocalExecutor(workers=2).map(lambda x: x, [1, 2])
    with pytest.raises(ValueError, match="item two is bad"):
        LocalExecutor(workers=1).map(fail_on_two, [1, 2, 3])
    with pytest.raises(FxscaleError, match="unknown executor 'dask'.*local, ray"):
        get_executor("dask")
    with pytest.raises(FxscaleError, match="workers >= 1"):
        LocalExecutor(workers=0)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_missing_gives_install_hint() -> None:
    with pytest.raises(FxscaleError, match=r"pip install 'fxscale\[ray\]'"):
        get_executor("ray")


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10))


def test_training_jobs_in_two_workers_match_inline_runs(pool: LocalExecutor) -> None:
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="cosine", device="cpu")
    jobs = [TrainJob(_tiny(s), "digits", cfg, {"train_fraction": 0.3}, resolution=r, tag=(s, r))
            for s, r in ((0, None), (1, 12))]
    before = {k: v.clone() for k, v in jobs[0].model.state_dict().items()}
    remote = pool.map(run_job, jobs)
    assert all(isinstance(o, JobOutcome) for o in remote) and [o.tag for o in remote] == [(0, None), (1, 12)]
    assert remote[1].result.resolution == 12
    local = LocalExecutor(workers=1).map(run_job, jobs)
    for k, v in jobs[0].model.state_dict().items():  # workers and inline runs train copies, not the caller's model
        assert torch.equal(v, before[k]), k
    for a, b in zip(remote, local):
        assert a.result.train_loss == pytest.approx(b.result.train_loss, rel=1e-5)
        assert a.test_acc == pytest.approx(b.test_acc, abs=1e-9) and 0.1 < a.test_acc <= 1.0
        assert torch.allclose(a.state_dict["5.weight"], b.state_dict["5.weight"], atol=1e-5)
