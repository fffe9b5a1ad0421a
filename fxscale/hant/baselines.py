"""The recipe every method shares after its architecture is fixed (KD fine-tune from the teacher), and the
channel-pruning baselines that HANT is compared against at the same measured latency.

- `finetune`: Adam, ``alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE`` over the train split.
- `uniform_family`: the teacher with every scalable channel group cut to one fraction (fxscale.transform,
  init="prune", L1-norm channel choice), for a grid of fractions.
- `taylor_family`: global Taylor pruning: the teacher's per-channel Taylor scores (fxscale.importance), each
  normalised by its group's mean, are ranked over the whole network; a fraction q of all channels is kept
  (threshold on the global ranking), and the kept channels are the highest-scoring ones of each group.
The pipeline times each family with the student in one interleaved session and keeps, per family, the largest
member (by keep fraction) not slower than the student.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F

import fxscale
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import uniform_widths

FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ALIGN = 8  # pruned widths are multiples of 8 (or of the group's divisor, if larger), like `fxscale scale --baseline-align`


@dataclass(frozen=True)
class FinetuneConfig:
    """KD fine-tune settings (epochs 0: no fine-tune)."""

    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.5
    threads: int = 1


def finetune(student: torch.nn.Module, teacher: torch.nn.Module, bundle: Any, resolution: Optional[tuple],
             cfg: FinetuneConfig, seed: int = 0) -> torch.nn.Module:
    """Knowledge-distillation fine-tune of `student` (in place) from the frozen `teacher`; returns it in eval mode."""
    from fxscale.data import loader
    if cfg.epochs <= 0:
        return student.eval()
    torch.manual_seed(seed)
    teacher.eval()
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    t = cfg.temperature
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for epoch in range(cfg.epochs):
            student.train()
            for x, y in loader(bundle, "train", cfg.batch_size, resolution, seed=seed + 1000 * epoch):
                with torch.no_grad():
                    soft = F.log_softmax(teacher(x) / t, 1)
                out = student(x)
                kd = F.kl_div(F.log_softmax(out / t, 1), soft, log_target=True, reduction="batchmean") * t * t
                loss = cfg.alpha * kd + (1 - cfg.alpha) * F.cross_entropy(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(old)
    return student.eval()


def uniform_family(gm: fx.GraphModule, fractions: Sequence[float] = FRACTIONS, align: int = ALIGN
                   ) -> dict[float, fx.GraphModule]:
    """fraction -> the teacher uniformly pruned to that fraction of every scalable group's width (rounded to
    multiples of `align`, as the scale pipeline's baselines: CPU runtimes block channels by 8)."""
    cg = fxscale.analyze(gm)
    return {f: fxscale.transform(gm, ScalingPlan(widths=uniform_widths(cg, f, align)), init="prune", cg=cg).eval()
            for f in fractions}


def taylor_widths(cg: Any, imp: Any, keep: float, align: int = 1) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Widths keeping the globally top `keep` fraction of group-normalised Taylor scores, and the scores used."""
    norm = {g: s / s.mean().clamp_min(1e-30) for g, s in imp.channels.items()}
    allv = torch.cat([v for v in norm.values()])
    thr = torch.quantile(allv.double(), 1 - keep).item() if len(allv) else 0.0
    widths = {}
    for g in cg.scalable:
        s = norm.get(g.name)
        if s is None:
            continue
        div = math.lcm(max(1, int(g.divisor or 1)), align)
        n = int((s >= thr).sum())
        widths[g.name] = min(g.width, max(div, -(-n // div) * div))
    return widths, norm


def taylor_family(gm: fx.GraphModule, bundle: Any, resolution: Optional[tuple], batches: int = 8,
                  fractions: Sequence[float] = FRACTIONS, align: int = ALIGN) -> dict[float, fx.GraphModule]:
    """keep fraction -> the teacher pruned by global Taylor importance."""
    cg = fxscale.analyze(gm)
    imp = fxscale.importance(gm, bundle, batches=batches, resolution=resolution, cg=cg)
    out = {}
    for q in fractions:
        widths, norm = taylor_widths(cg, imp, q, align)
        out[q] = fxscale.transform(gm, ScalingPlan(widths=widths), init="prune", importance=norm, cg=cg).eval()
    return out


def pick_at_latency(latencies: dict[float, float], limit: float) -> float:
    """The largest family member (key: its keep fraction or MAC level) whose measured latency is not above `limit`;
    the fastest member when none is. Largest, not slowest: latency is not monotone in the width (channel counts off
    the runtime's blocking are slow), and at equal latency a baseline gets its biggest network."""
    ok = [k for k, v in latencies.items() if v <= limit]
    return max(ok) if ok else min(latencies, key=latencies.__getitem__)


__all__ = ["ALIGN", "FRACTIONS", "FinetuneConfig", "finetune", "pick_at_latency", "taylor_family", "taylor_widths",
           "uniform_family"]
