"""Seeded training/evaluation loop: SGD/Adam, step/cosine/exp schedules with optional linear warm-up, label
smoothing, knowledge distillation from a teacher (fxscale.train_kd), checkpoints, DDP."""
from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from fxscale.data import DataBundle, Resolution, get_dataset, loader
from fxscale.errors import FxscaleError
from fxscale.train_kd import distill_loss, teacher_logits

SCHEDULES = ("step", "cosine", "exp")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("cpu", "cuda", "auto")
CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; defaults follow the paper's CIFAR recipe (SGD 0.9, step LR, smoothing 0.1)."""

    epochs: int = 10
    batch_size: int = 64  # per process under DDP
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step" | "cosine" | "exp" (lr * beta ** (t / T), the paper's ImageNet schedule)
    milestones: tuple[int, ...] | None = None  # None: 1/3, 2/3, 5/6 of epochs (the paper's 100/200/250 of 300)
    gamma: float = 0.1  # step decay factor
    beta: float = 0.02  # exp decay factor
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"  # "cpu" | "cuda" | "auto"
    threads: int | None = 1  # torch intra-op threads while training; None leaves the setting alone
    optimizer: str = "sgd"  # "sgd" | "adam"
    checkpoint_dir: str | None = None  # writes <dir>/last.pt after every epoch
    resume: bool = False  # continue from <checkpoint_dir>/last.pt when it exists
    progress: bool = False  # rich progress bar
    deterministic: bool = True  # torch.use_deterministic_algorithms(warn_only) + cudnn.deterministic
    restore_best: bool = False  # load the best-val-accuracy weights into the model at the end
    num_workers: int = 0  # DataLoader worker processes
    eval_batch_size: int = 256
    warmup_epochs: int = 0  # linear warm-up epochs (lr*(t+1)/(w+1)) before `schedule` runs over the rest
    distill_weight: float = 0.0  # KD: (1-w)*CE + w*T^2*KL(teacher/T || student/T); needs train(..., teacher=)
    distill_temperature: float = 4.0  # KD softmax temperature T

    def __post_init__(self) -> None:
        """Reject invalid settings with a message naming the field."""
        bad = [(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
               (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
               (self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}"),
               (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
               (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
               (0 <= self.label_smoothing < 1, "label_smoothing must lie in [0, 1)"),
               (0 < self.beta <= 1 and 0 < self.gamma <= 1, "beta and gamma must lie in (0, 1]"),
               (self.threads is None or self.threads >= 1, "threads must be >= 1 or None"),
               (not self.resume or self.checkpoint_dir is not None, "resume=True needs checkpoint_dir"),
               (0 <= self.warmup_epochs < self.epochs, "warmup_epochs must lie in [0, epochs)"),
               (0 <= self.distill_weight <= 1, "distill_weight must lie in [0, 1]"),
               (self.distill_temperature > 0, "distill_temperature must be > 0")]
        errors = [msg for ok, msg in bad if not ok]
        if errors:
            raise FxscaleError("invalid TrainConfig: " + "; ".join(errors))


@dataclass
class TrainResult:
    """Per-epoch history of one training run; the model keeps the final (or best, if asked) weights."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_val_acc: float = float("nan")
    best_epoch: int = -1
    seconds: float = 0.0  # wall time of this call (excludes epochs loaded from a checkpoint)
    device: str = "cpu"
    resolution: Resolution | None = None
    resumed_from: int = 0  # epochs already done in the checkpoint this run resumed from

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.train_loss)

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time per epoch."""
        return float(np.mean(self.epoch_seconds)) if self.epoch_seconds else float("nan")


EpochCallback = Callable[[int, TrainResult], "bool | None"]


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of the given epoch (0-based): linear warm-up for cfg.warmup_epochs, then cfg's schedule."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    t, total = epoch - cfg.warmup_epochs, cfg.epochs - cfg.warmup_epochs
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t / total))
    if cfg.schedule == "exp":
        return cfg.lr * cfg.beta ** (t / total)
    steps = cfg.milestones if cfg.milestones is not None else tuple(round(total * f) for f in (1 / 3, 2 / 3, 5 / 6))
    return cfg.lr * cfg.gamma ** sum(t >= m for m in steps)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """torch.device for "cpu" | "cuda" | "auto" (cuda when available)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise FxscaleError("device='cuda' asked for but torch sees no CUDA device; use device='cpu' or 'auto'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


@contextlib.contextmanager
def torch_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Temporarily set torch threads and deterministic-algorithm flags, restoring them afterwards."""
    old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.deterministic,
           torch.backends.cudnn.benchmark)
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(old[0])
        torch.use_deterministic_algorithms(old[1], warn_only=old[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[3], old[4]


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU when it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, bundle: DataBundle, split: str = "test", resolution: Resolution | None = None,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of model on one split, on the model's device; restores the model's train/eval mode."""
    device, was_training = _model_device(model), model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in loader(bundle, split, batch_size, resolution, shuffle=False):
            out = model(x.to(device))
            correct += int((out.argmax(1).cpu() == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return correct / total


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam over the model's parameters."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    """CPU and CUDA torch RNG states."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, result: TrainResult,
                    cfg: TrainConfig, best_state: dict[str, torch.Tensor] | None) -> None:
    """Atomically write model, optimizer, history, RNG state and config to path."""
    history = {k: v for k, v in asdict(result).items() if isinstance(v, list)}
    payload = {"epoch": result.epochs, "model": model.state_dict(), "optimizer": opt.state_dict(),
               "history": history, "best": (result.best_val_acc, result.best_epoch), "best_state": best_state,
               "rng": _rng_state(), "config": asdict(cfg)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    result: TrainResult) -> dict[str, torch.Tensor] | None:
    """Restore model, optimizer, history and RNG state from path into the given objects; returns the best state."""
    try:
        ck = torch.load(path, map_location=_model_device(model), weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise FxscaleError(f"cannot resume from checkpoint {path}: {exc}; delete it or point checkpoint_dir "
                           "at a checkpoint of the same model") from exc
    for key, values in ck["history"].items():
        setattr(result, key, list(values))
    result.best_val_acc, result.best_epoch = ck["best"]
    result.resumed_from = int(ck["epoch"])
    torch.set_rng_state(ck["rng"]["cpu"].cpu())
    if "cuda" in ck["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"]])
    return ck["best_state"]


# ----------------------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class _Dist:
    """Distributed context: rank, world size, device and whether the model is wrapped in DDP."""

    rank: int = 0
    world: int = 1
    ddp: bool = False

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor across ranks (identity when not distributed)."""
        if self.ddp:
            torch.distributed.all_reduce(values)
        return values

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running stats) to every rank so all ranks evaluate one model."""
        if self.ddp:
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)

    def barrier(self) -> None:
        """Wait for every rank (no-op when not distributed)."""
        if self.ddp:
            torch.distributed.barrier()


def _train_epoch(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, opt: torch.optim.Optimizer,
                 epoch: int, resolution: Resolution | None, device: torch.device, ctx: _Dist,
                 teacher: nn.Module | None = None) -> tuple[float, float]:
    """One pass over the train split; returns (mean loss, accuracy) over all ranks."""
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    shard = (ctx.rank, ctx.world) if ctx.ddp else None
    per_rank = math.ceil(len(bundle.train) / ctx.world)
    data = loader(bundle, "train", cfg.batch_size, resolution, seed=cfg.seed + epoch, num_workers=cfg.num_workers,
                  shard=shard, drop_last=per_rank % cfg.batch_size == 1)  # a 1-sample batch breaks BatchNorm
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    for x, y in data:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = crit(out, y)
        if teacher is not None and cfg.distill_weight > 0:
            loss = distill_loss(loss, out, teacher_logits(teacher, x), cfg.distill_weight, cfg.distill_temperature)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    sums = torch.stack([loss_sum, correct.double(), torch.tensor(float(n), dtype=torch.float64, device=device)])
    total_loss, total_correct, total = ctx.all_sum(sums).tolist()
    if not math.isfinite(total_loss):
        raise FxscaleError(f"training diverged on {bundle.name!r} at epoch {epoch} (loss {total_loss / total}); "
                           f"lower lr (now {lr_at(cfg, epoch):g}) or check the data")
    return total_loss / total, total_correct / total


def _progress(enabled: bool) -> Any:
    """A rich Progress bar context (or a null context when disabled)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


def _fit(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, resolution: Resolution | None,
         device: torch.device, ctx: _Dist, on_epoch_end: EpochCallback | None,
         teacher: nn.Module | None = None) -> TrainResult:
    """Shared single-process / DDP training loop."""
    if cfg.distill_weight > 0 and teacher is None:
        raise FxscaleError("distill_weight > 0 needs a teacher model: train(..., teacher=model)")
    start = time.perf_counter()
    seed_everything(cfg.seed)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    opt = make_optimizer(model, cfg)
    result = TrainResult(device=str(device), resolution=resolution)
    ckpt = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir else None
    best_state = load_checkpoint(ckpt, model, opt, result) if cfg.resume and ckpt and ckpt.exists() else None
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ctx.ddp else model
    has_val = len(bundle.val) > 0
    with _progress(cfg.progress and ctx.rank == 0) as bar:
        task = bar.add_task(f"train {bundle.name}", total=cfg.epochs, completed=result.epochs) if bar else None
        for epoch in range(result.epochs, cfg.epochs):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch)
            loss, acc = _train_epoch(net, bundle, cfg, opt, epoch, resolution, device, ctx, teacher)
            ctx.sync_buffers(model)
            val = evaluate(model, bundle, "val", resolution, cfg.eval_batch_size) if has_val else float("nan")
            for key, value in (("train_loss", loss), ("train_acc", acc), ("val_acc", val), ("lr", lr_at(cfg, epoch)),
                               ("epoch_seconds", time.perf_counter() - t0)):
                getattr(result, key).append(value)
            if has_val and not val <= result.best_val_acc:
                result.best_val_acc, result.best_epoch = val, epoch
                best_state = copy.deepcopy(model.state_dict()) if cfg.restore_best else None
            if ckpt and ctx.rank == 0:
                save_checkpoint(ckpt, model, opt, result, cfg, best_state)
            ctx.barrier()
            if bar:
                bar.update(task, advance=1, description=f"train {bundle.name} loss {loss:.3f} val {val:.3f}")
            if on_epoch_end is not None and on_epoch_end(epoch, result):
                break
    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result


def train(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, resolution: Resolution | None = None,
          on_epoch_end: EpochCallback | None = None, teacher: nn.Module | None = None) -> TrainResult:
    """Train model in place on bundle's train split (resized to resolution), validating every epoch.

    on_epoch_end(epoch, result) runs after each epoch's checkpoint; returning True stops training early.
    teacher (eval mode, frozen, fed the same batches) is distilled into model when cfg.distill_weight > 0.
    """
    with torch_settings(cfg.threads, cfg.deterministic):
        return _fit(model, bundle, cfg, resolution, resolve_device(cfg.device), _Dist(), on_epoch_end, teacher)


def train_ddp(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, resolution: Resolution | None = None,
              backend: str | None = None, on_epoch_end: EpochCallback | None = None,
              teacher: nn.Module | None = None) -> TrainResult:
    """Data-parallel train(): run one process per GPU under torchrun (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set).

    Each rank sees a DistributedSampler shard of cfg.batch_size samples per step; rank 0 writes checkpoints;
    every rank returns the same all-reduced history. Uses NCCL on CUDA and gloo on CPU unless backend is given.
    """
    import torch.distributed as dist

    device = resolve_device(cfg.device)
    if device.type == "cuda":  # bind this rank's GPU before NCCL starts
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise FxscaleError(f"train_ddp needs the torchrun environment; {missing} are unset "
                               "(launch with `torchrun --nproc_per_node=N your_script.py`)")
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    try:
        with torch_settings(cfg.threads, cfg.deterministic):
            ctx = _Dist(dist.get_rank(), dist.get_world_size(), ddp=True)
            return _fit(model, bundle, cfg, resolution, device, ctx, on_epoch_end, teacher)
    finally:
        if created:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------- executor jobs


@dataclass
class TrainJob:
    """One picklable training task for an Executor: a model, its data (bundle or registry name) and config."""

    model: nn.Module
    dataset: str | DataBundle
    cfg: TrainConfig
    dataset_kw: dict[str, Any] = field(default_factory=dict)
    resolution: Resolution | None = None
    tag: Any = None
    teacher: nn.Module | None = None  # distilled into model when cfg.distill_weight > 0


@dataclass
class JobOutcome:
    """What run_job returns: the job's tag, its history, test accuracy and trained weights (on CPU)."""

    tag: Any
    result: TrainResult
    test_acc: float
    state_dict: dict[str, torch.Tensor]


def run_job(job: TrainJob) -> JobOutcome:
    """Train and test one TrainJob (a top-level function, so Executors can ship it to worker processes)."""
    bundle = job.dataset if isinstance(job.dataset, DataBundle) else get_dataset(job.dataset, **job.dataset_kw)
    result = train(job.model, bundle, job.cfg, job.resolution, teacher=job.teacher)
    with torch_settings(job.cfg.threads, False):
        test_acc = evaluate(job.model, bundle, "test", job.resolution, job.cfg.eval_batch_size)
    state = {k: v.detach().cpu() for k, v in job.model.state_dict().items()}
    return JobOutcome(job.tag, result, test_acc, state)
