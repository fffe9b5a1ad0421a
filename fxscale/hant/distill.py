"""Phase 1: layer-wise distillation of every (site, candidate) pair on the teacher's captured feature maps.

`capture_sites` runs the teacher once per batch under an `fx.Interpreter` and keeps every site's entry and output
tensors. Each pair is then an independent job (`run_pair`, a top-level function, so it runs through any
fxscale Executor: inline, local processes or a Ray cluster): Adam on the normalised MSE
``sum((y - t)^2) / sum(t^2)`` (so losses compare across layers), then the held-out (val) NMSE. A finished pair writes
its checkpoint (weights, losses, seconds) atomically; a rerun loads it instead of training again.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from fxscale.errors import FxscaleError
from fxscale.hant.sites import Site


@dataclass(frozen=True)
class DistillConfig:
    """Phase-1 settings: Adam(lr) for `epochs` over at most `max_samples` captured train images."""

    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0
    max_samples: int = 1024
    threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.max_samples < 1 or not self.lr > 0:
            raise FxscaleError(f"invalid DistillConfig: epochs >= 0, batch_size >= 1, max_samples >= 1 and lr > 0 "
                               f"needed, got {self}")


def nmse(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Normalised MSE: sum((y - t)^2) / sum(t^2) (0 for a perfect match, 1 for y = 0)."""
    return ((y - t) ** 2).sum() / (t ** 2).sum().clamp_min(1e-12)


class _Capture(fx.Interpreter):
    """Runs the teacher and keeps the values of the nodes named in `keep`."""

    def __init__(self, gm: fx.GraphModule, keep: set[str]) -> None:
        super().__init__(gm)
        self.keep, self.values = keep, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.keep:
            self.values[n.name] = out.detach()
        return out


@torch.no_grad()
def capture_sites(gm: fx.GraphModule, sites: Sequence[Site], batches: Any, max_samples: int
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """site name -> (entry tensors, output tensors) over the batches (x, y), at most `max_samples` rows."""
    keep = {s.entry for s in sites} | {s.output for s in sites}
    got: dict[str, list[torch.Tensor]] = {k: [] for k in keep}
    n = 0
    gm.eval()
    for x, _y in batches:
        cap = _Capture(gm, keep)
        cap.run(x)
        for k in keep:
            got[k].append(cap.values[k])
        n += len(x)
        if n >= max_samples:
            break
    cat = {k: torch.cat(v)[:max_samples] for k, v in got.items()}
    return {s.name: (cat[s.entry], cat[s.output]) for s in sites}


def safe_name(text: str) -> str:
    """A file-name-safe, unique form of a site or spec name."""
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', text)[:80]}-{digest}"


@dataclass
class PairJob:
    """One picklable distillation job: a candidate module and where its site's activations and checkpoint live."""

    site: str
    spec: str
    module: nn.Module
    acts: str  # torch file: {"train": (x, t), "val": (x, t)}
    checkpoint: str
    cfg: DistillConfig
    key: str = ""  # identifies the settings; a checkpoint with another key is retrained


@dataclass
class PairResult:
    """A trained pair: weights, per-epoch train NMSE, held-out NMSE, seconds of training, resumed or not."""

    site: str
    spec: str
    state_dict: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    val_nmse: float = float("nan")
    seconds: float = 0.0
    resumed: bool = False


def _eval_nmse(module: nn.Module, x: torch.Tensor, t: torch.Tensor, batch: int = 256) -> float:
    module.eval()
    num = den = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            y = module(x[i:i + batch])
            num += float(((y - t[i:i + batch]) ** 2).sum())
            den += float((t[i:i + batch] ** 2).sum())
    return num / max(den, 1e-12)


def _load_checkpoint(job: PairJob) -> Optional[PairResult]:
    path = Path(job.checkpoint)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a torn checkpoint: train again
        return None
    if saved.get("key") != job.key:
        return None
    return PairResult(job.site, job.spec, saved["state_dict"], list(saved["losses"]), float(saved["val_nmse"]),
                      float(saved["seconds"]), resumed=True)


def run_pair(job: PairJob) -> PairResult:
    """Train one (site, candidate) pair on its site's captured tensors, or load its finished checkpoint."""
    done = _load_checkpoint(job)
    if done is not None:
        return done
    torch.set_num_threads(job.cfg.threads)
    acts = torch.load(job.acts, map_location="cpu", weights_only=True)
    (x, t), (xv, tv) = acts["train"], acts["val"]
    module, cfg = job.module, job.cfg
    params = [p for p in module.parameters() if p.requires_grad]
    start = time.perf_counter()
    losses: list[float] = []
    if params and cfg.epochs:
        opt = torch.optim.Adam(params, lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        for _epoch in range(cfg.epochs):
            module.train()
            total = 0.0
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                loss = nmse(module(x[idx]), t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(x))
    seconds = time.perf_counter() - start
    result = PairResult(job.site, job.spec, {k: v.detach().clone() for k, v in module.state_dict().items()},
                        losses, _eval_nmse(module, xv, tv), seconds)
    path = Path(job.checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        torch.save({"key": job.key, "state_dict": result.state_dict, "losses": losses, "val_nmse": result.val_nmse,
                    "seconds": seconds}, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def save_activations(folder: Path, train: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                     val: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, str]:
    """One torch file per site holding its train and val (entry, output) tensors; site -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in train:
        path = folder / f"{safe_name(name)}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"train": train[name], "val": val[name]}, tmp)
        os.replace(tmp, path)
        paths[name] = str(path)
    return paths


def distill(jobs: list[PairJob], executor: Any, progress: Optional[Callable[[int, int], None]] = None,
            chunk: int = 8) -> list[PairResult]:
    """Run the pair jobs through `executor` (in chunks, for progress), results in job order."""
    out: list[PairResult] = []
    for i in range(0, len(jobs), chunk):
        out += executor.map(run_pair, jobs[i:i + chunk])
        if progress is not None:
            progress(len(out), len(jobs))
    return out


__all__ = ["DistillConfig", "PairJob", "PairResult", "capture_sites", "distill", "nmse", "run_pair",
           "safe_name", "save_activations"]
