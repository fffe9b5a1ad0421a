"""Tests of fxscale.train: accuracy on digits, determinism, schedules, checkpoint resume, resolution, DDP."""
from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed
from torch import nn

from fxscale.data import DataBundle, get_dataset
from fxscale.errors import FxscaleError
from fxscale.train import TrainConfig, evaluate, lr_at, train, train_ddp

FAST = dict(epochs=5, batch_size=32, lr=0.05, schedule="cosine", weight_decay=5e-4, device="cpu")


def tiny_cnn(widths=(8, 16, 32), channels: int = 1, classes: int = 10, seed: int = 0) -> nn.Module:
    """A 3-layer conv-BN-ReLU CNN with global pooling, deterministically initialised."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        channels = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_digits_tiny_cnn_reaches_85_percent(digits: DataBundle) -> None:
    model = tiny_cnn()
    res = train(model, digits, TrainConfig(**FAST))
    assert res.epochs == 5 and len(res.val_acc) == len(res.lr) == 5
    assert res.best_val_acc > 0.85 and res.val_acc[-1] > 0.85
    assert res.train_loss[-1] < res.train_loss[0]
    assert evaluate(model, digits, "test") > 0.85  # final weights stay in the model
    assert res.seconds < 60 and res.device == "cpu"


def test_same_seed_gives_identical_history_and_weights(digits: DataBundle) -> None:
    cfg = TrainConfig(**{**FAST, "epochs": 2})
    a, b = tiny_cnn(), tiny_cnn()
    ra, rb = train(a, digits, cfg), train(b, digits, cfg)
    assert ra.train_loss == rb.train_loss and ra.val_acc == rb.val_acc
    assert all(torch.equal(x, y) for x, y in zip(_weights(a).values(), _weights(b).values()))
    rc = train(tiny_cnn(), digits, TrainConfig(**{**FAST, "epochs": 2, "seed": 1}))
    assert rc.train_loss != ra.train_loss


def test_resume_from_checkpoint_matches_uninterrupted_run(digits: DataBundle, tmp_path) -> None:
    cfg = TrainConfig(**{**FAST, "epochs": 4, "schedule": "step", "milestones": (2, 3)})
    whole = tiny_cnn()
    ref = train(whole, digits, cfg)

    class Crash(Exception):
        pass

    def crash_after_two(epoch: int, _res) -> None:
        if epoch == 1:
            raise Crash

    ck = TrainConfig(**{**FAST, "epochs": 4, "schedule": "step", "milestones": (2, 3),
                        "checkpoint_dir": str(tmp_path), "resume": True})
    with pytest.raises(Crash):
        train(tiny_cnn(), digits, ck, on_epoch_end=crash_after_two)
    assert (tmp_path / "last.pt").exists()
    resumed = tiny_cnn(seed=123)  # different init: the checkpoint must overwrite it
    res = train(resumed, digits, ck)
    assert res.resumed_from == 2 and res.epochs == 4 and len(res.epoch_seconds) == 4
    assert res.train_loss == pytest.approx(ref.train_loss, rel=1e-6) and res.val_acc == ref.val_acc
    for k, v in _weights(whole).items():
        assert torch.allclose(v.float(), _weights(resumed)[k].float(), atol=1e-6), k


def test_lr_schedules() -> None:
    step = TrainConfig(epochs=300, lr=0.1)
    assert [lr_at(step, e) for e in (0, 99, 100, 200, 250, 299)] == pytest.approx([0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4])
    exp = TrainConfig(epochs=10, lr=2.0, schedule="exp", beta=0.02)
    assert lr_at(exp, 0) == 2.0 and lr_at(exp, 5) == pytest.approx(2.0 * 0.02 ** 0.5)
    cos = TrainConfig(epochs=10, lr=1.0, schedule="cosine")
    assert lr_at(cos, 0) == 1.0 and lr_at(cos, 5) == pytest.approx(0.5)
    assert lr_at(TrainConfig(epochs=6, milestones=(1,), gamma=0.5, lr=1.0), 3) == 0.5


@pytest.mark.parametrize("bad", [dict(schedule="linear"), dict(optimizer="rmsprop"), dict(device="tpu"),
                                 dict(epochs=0), dict(resume=True), dict(label_smoothing=1.0)])
def test_invalid_config_raises(bad: dict) -> None:
    with pytest.raises(FxscaleError, match="invalid TrainConfig"):
        TrainConfig(**bad)


def test_training_at_scaled_resolution(digits: DataBundle) -> None:
    model = tiny_cnn()
    seen: list[tuple[int, ...]] = []
    model[0].register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    res = train(model, digits, TrainConfig(**{**FAST, "epochs": 1}), resolution=16)
    assert set(seen) == {(16, 16)} and res.resolution == 16
    seen.clear()
    evaluate(model, digits, "val", resolution=12)
    assert set(seen) == {(12, 12)}


def test_synthetic_is_learnable_and_adam_works() -> None:
    data = get_dataset("synthetic", shape=(3, 16, 16), num_classes=4, size=600)
    model = tiny_cnn((8, 16, 16), channels=3, classes=4)
    res = train(model, data, TrainConfig(epochs=3, batch_size=32, lr=3e-3, optimizer="adam", weight_decay=0,
                                         schedule="cosine", device="cpu", progress=True))
    assert res.val_acc[-1] > 0.9 and evaluate(model, data, "test") > 0.9


def test_restore_best_early_stop_and_settings_restored(digits: DataBundle) -> None:
    threads = torch.get_num_threads()
    model = tiny_cnn()
    cfg = TrainConfig(**{**FAST, "epochs": 4, "restore_best": True, "threads": 1})
    res = train(model, digits, cfg, on_epoch_end=lambda e, r: e == 2)
    assert res.epochs == 3
    assert evaluate(model, digits, "val") == res.best_val_acc == max(res.val_acc)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    assert model.training  # evaluate restores train mode


def test_last_batch_of_one_is_dropped_not_fed_to_batchnorm() -> None:
    data = get_dataset("synthetic", shape=(1, 8, 8), num_classes=3, size=55)
    assert len(data.train) % 32 == 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model.train()(torch.zeros(1, 1, 8, 8))
    res = train(model, data, TrainConfig(epochs=1, batch_size=32, device="cpu"))
    assert res.epochs == 1 and math.isfinite(res.train_loss[0])


def test_divergence_is_reported(digits: DataBundle) -> None:
    with pytest.raises(FxscaleError, match="diverged on 'digits'.*lower lr"):
        train(tiny_cnn(), digits, TrainConfig(epochs=1, lr=1e12, momentum=0.9, device="cpu", schedule="cosine"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_gpu_raises(digits: DataBundle) -> None:
    with pytest.raises(FxscaleError, match="no CUDA device"):
        train(tiny_cnn(), digits, TrainConfig(epochs=1, device="cuda"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="gloo backend unavailable in this torch build")
def test_train_ddp_world_size_one_matches_train(digits: DataBundle, monkeypatch, tmp_path) -> None:
    cfg = TrainConfig(**{**FAST, "epochs": 2})
    ref = train(tiny_cnn(), digits, cfg)
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(k, v)
    model = tiny_cnn()
    res = train_ddp(model, digits, TrainConfig(**{**FAST, "epochs": 2, "checkpoint_dir": str(tmp_path)}))
    assert not torch.distributed.is_initialized()  # the group it created is torn down
    assert res.train_loss == pytest.approx(ref.train_loss, rel=1e-5) and res.val_acc == ref.val_acc
    assert (tmp_path / "last.pt").exists() and not isinstance(model, nn.parallel.DistributedDataParallel)
    assert math.isclose(evaluate(model, digits, "val"), res.val_acc[-1])


def test_train_ddp_without_torchrun_env_raises(digits: DataBundle, monkeypatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(FxscaleError, match="torchrun"):
        train_ddp(tiny_cnn(), digits, TrainConfig(epochs=1, device="cpu"))


DDP_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from test_train import tiny_cnn
from fxscale.data import get_dataset
from fxscale.train import TrainConfig, evaluate, train_ddp
b = get_dataset("digits")
m = tiny_cnn()
r = train_ddp(m, b, TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="cosine", device="cpu"))
print("RESULT", json.dumps([os.environ["RANK"], r.train_loss, r.val_acc, evaluate(m, b, "val")]))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~8 s, but the torchrun subprocess may take its own 300 s timeout: outlive it
def test_torchrun_two_cpu_ranks_agree(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line.split("RESULT ", 1)[1]) for line in out.stdout.splitlines() if "RESULT " in line]
    assert sorted(r[0] for r in rows) == ["0", "1"]
    assert rows[0][1:] == rows[1][1:]  # same all-reduced history and same synced model on both ranks
    assert rows[0][1][-1] < rows[0][1][0]
