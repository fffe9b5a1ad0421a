"""Importance samples for the power-law fit, and a held-out check of the fitted predictor (issue 11, item 2).

Sampling modes (``ScaleConfig.sample_mode``):

- ``"grid"`` (the default, as before): uniform multipliers 0.5, 0.75, 1, 1.5, 2 of every group, then random
  per-group configurations with multipliers log-uniform in [0.5, 2] (``powerlaw.sample_configs``).
- ``"local"``: around the working point (the traced widths at the alpha's resolution, where Algorithm 1 starts):
  the working point itself, then configurations whose every group's width is the working width times a
  multiplier drawn log-uniformly from [0.75, 1.25] independently per group (``local_configs``), so a group's
  width varies while the others stay near where the search will use them.

Each configuration is trained ``sample_seeds`` times (training seeds seeds[0], seeds[0] + 1, ...), each run
giving one sample; the fit sees every run. Training length: ``sample_epochs`` with the recipe of every other
training. Every run is judged by a convergence criterion (``converged``: the train loss changed by at most 5% over
the last quarter of the epochs and the final validation accuracy is within 1 pp of the run's best); with
``sample_max_epochs`` above ``sample_epochs`` a run that fails it is trained again from scratch with twice the
epochs until it passes or the cap is reached (``train_to_convergence``). results.json's importance compute lists
how many runs converged; fxscale warns when some did not.

Held-out check (``importance_holdout`` > 0): that many further local configurations (another seed stream, never
used in the fit) are trained and scored the same way; ``prediction_check`` compares the predictor's per-kernel
importance with the measured one over every (configuration, group): R² of log importance and the mean absolute
percentage error, overall and per group. It lands in results.json as ``importance_check``.

What a "layer" is here: importance is per channel *group* (``fxscale.analysis``): channels tied across layers
(a residual stream's producers, concatenations) form one group, and one kernel of a group is every parameter slice
that selects that channel in all its producers and followers, so a tied group's per-kernel importance sums over
all of them (``fxscale.scaling.importance``). That is ``importance_norm="group"`` (the default). With
``"producer"`` (``per_producer``) a group's scores are divided by its number of producing layers, so a residual
stream written by five convs is not five times as important as a single conv's output by construction. The
choice only rescales each group by a constant: it leaves every group's fitted exponent b and the held-out R² of
each group unchanged, and changes which group Algorithm 1 widens first; the allocation ablation's `--norms`
option compares both on the scaled models' test accuracy.
"""
from __future__ import annotations

import json
import math
import random
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fxscale.analysis.graph import ChannelGraph
from fxscale.errors import FxscaleError
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import round_width

SAMPLE_MODES = ("grid", "local")
LOCAL_SPREAD = (0.75, 1.25)
HOLDOUT_SEED = 1000  # held-out configurations: seed + HOLDOUT_SEED, a stream the fitted samples never use
CONVERGE_LOSS = 0.05  # convergence: relative train-loss drop over the last quarter of the epochs at most this
CONVERGE_ACC = 0.01  # ... and the final validation accuracy within this of the run's best


def local_configs(cg: ChannelGraph, k: int, seed: int = 0, around: Optional[Mapping[str, int]] = None,
                  spread: tuple[float, float] = LOCAL_SPREAD, include_center: bool = True) -> list[dict[str, int]]:
    """k width configurations around `around` (default: the traced widths): the center first (when included), then
    every group times a multiplier log-uniform in `spread`, drawn independently per group (seeded)."""
    if k < 1:
        raise FxscaleError(f"local_configs needs k >= 1, got {k}")
    if not 0 < spread[0] <= 1 <= spread[1]:
        raise FxscaleError(f"spread must satisfy 0 < low <= 1 <= high, got {spread}")
    center = {g.name: int((around or {}).get(g.name, g.width)) for g in cg.scalable}
    rng = random.Random(seed)
    lo, hi = math.log(spread[0]), math.log(spread[1])
    out = [dict(center)] if include_center else []
    while len(out) < k:
        out.append({g.name: round_width(center[g.name] * math.exp(rng.uniform(lo, hi)), g.divisor)
                    for g in cg.scalable})
    return out


def prediction_check(pred: Any, samples: Sequence[Any]) -> dict[str, Any]:
    """Predicted vs measured per-kernel importance over held-out samples: R² of log I and MAPE, overall and per group."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for g, measured in s.groups.items():
            if g in getattr(pred, "fits", {}) and measured > 0 and g in s.widths:
                pairs.setdefault(g, []).append((float(pred(g, s.widths[g])), float(measured)))
    if not pairs:
        raise FxscaleError("no held-out importance to check the predictor against")

    def stats(pts: Sequence[tuple[float, float]]) -> dict[str, float]:
        p = np.array([a for a, _ in pts])
        m = np.array([b for _, b in pts])
        lp, lm = np.log(np.maximum(p, 1e-300)), np.log(m)
        ss = float(((lm - lm.mean()) ** 2).sum())
        r2 = 1.0 - float(((lm - lp) ** 2).sum()) / ss if ss > 0 else float("nan")
        return {"r2_log": r2, "mape": float(np.mean(np.abs(p - m) / m) * 100), "n": len(pts),
                "median_ratio": float(np.median(p / m))}
    every = [pt for pts in pairs.values() for pt in pts]
    return {"overall": stats(every), "groups": {g: stats(p) for g, p in sorted(pairs.items())},
            "what": "per-kernel importance a*C^b predicted by the fit vs Taylor importance measured on held-out "
                    "configurations never used in the fit; r2_log: R² of log importance; mape in %"}


def per_producer(imp: Any, cg: ChannelGraph) -> Any:
    """`imp` with every group's scores divided by its number of producing layers (see the module docstring)."""
    from fxscale.scaling.importance import Importance
    n = {g.name: max(1, len(g.producers)) for g in cg.scalable}
    return Importance({g: v / n.get(g, 1) for g, v in imp.channels.items()},
                      {g: v / n.get(g, 1) for g, v in imp.groups.items()}, dict(imp.widths), imp.batches)


def converged(train_loss: Sequence[float], val_acc: Sequence[float]) -> bool:
    """The samples' convergence criterion: at least 3 epochs, the train loss fell by at most CONVERGE_LOSS (relative)
    over the last quarter of the epochs, and the final validation accuracy is within CONVERGE_ACC of the run's best."""
    n = len(train_loss)
    if n < 3 or len(val_acc) != n:
        return False
    k = max(1, n // 4)
    flat = (train_loss[-1 - k] - train_loss[-1]) <= CONVERGE_LOSS * max(abs(train_loss[-1]), 1e-12)
    return bool(flat and val_acc[-1] >= max(val_acc) - CONVERGE_ACC)


def train_samples(pipe: Any, configs: Sequence[Mapping[str, int]], resolution: tuple[int, int],
                  seeds: Sequence[int], tag: str, epochs: Optional[int] = None
                  ) -> tuple[list[Any], int, list[dict[str, Any]]]:
    """Importance of each (configuration, seed) at `resolution` after `epochs` (default cfg.sample_epochs), cached
    per run; returns the samples, the runs trained now, and per run {"epochs", "converged"} (see `converged`)."""
    from fxscale.scaling.importance import Importance, importance
    from fxscale.scaling.stages import atomic_write
    cfg = pipe.cfg
    epochs = epochs or cfg.sample_epochs
    cache = pipe.out / "cache" / "importance"
    samples: dict[int, Any] = {}
    records: dict[int, dict[str, Any]] = {}
    todo = []
    jobs = [(ScalingPlan(widths=dict(w), resolution=resolution), s) for w in configs for s in seeds]
    for i, (plan, seed) in enumerate(jobs):
        extra: Any = plan.to_json() if seed == cfg.seeds[0] else {"plan": plan.to_json(), "seed": seed}
        if epochs != cfg.sample_epochs:  # a longer run of the same configuration (convergence) is its own entry
            extra = {"sample": extra, "epochs": epochs}
        path = cache / f"{pipe._key('importance_sample', extra=extra)}.json"
        if path.exists():
            d = json.loads(path.read_text())
            samples[i] = Importance.from_dict(d)
            records[i] = d.get("train", {"epochs": epochs, "converged": None})
        else:
            todo.append((i, path, plan, seed))
    if todo:
        pipe.log(f"[importance] training {len(todo)} of {len(jobs)} {tag} runs x {epochs} epochs "
                 f"({len(jobs) - len(todo)} cached)")
        outs = pipe.train_many([(str(p), plan, seed) for _i, p, plan, seed in todo], epochs)
        for (i, path, plan, _seed), o in zip(todo, outs):
            model = pipe.build(plan)
            model.load_state_dict(o.state_dict)
            imp = importance(model, pipe.bundle, batches=8, batch_size=cfg.batch_size,
                             resolution=pipe.resolution_of(plan))
            missing = sorted(set(plan.widths) - set(imp.groups))
            if missing:
                raise FxscaleError(f"importance of the sampled model has no groups {missing}")
            r = o.result
            records[i] = {"epochs": r.epochs, "converged": converged(r.train_loss, r.val_acc),
                          "train_loss": list(r.train_loss), "val_acc": list(r.val_acc)}
            cache.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps({**imp.to_dict(), "train": records[i]}))
            samples[i] = imp
    return [samples[i] for i in range(len(jobs))], len(todo), [records[i] for i in range(len(jobs))]


def train_to_convergence(pipe: Any, configs: Sequence[Mapping[str, int]], resolution: tuple[int, int],
                         seeds: Sequence[int], tag: str) -> tuple[list[Any], int, list[dict[str, Any]]]:
    """train_samples, then (cfg.sample_max_epochs > cfg.sample_epochs) every run that fails `converged` is trained
    again from scratch with twice the epochs, until all converge or the next doubling would pass the cap."""
    cfg = pipe.cfg
    samples, trained, records = train_samples(pipe, configs, resolution, seeds, tag)
    epochs = cfg.sample_epochs
    while 2 * epochs <= cfg.sample_max_epochs:
        redo = [i for i, r in enumerate(records) if not r.get("converged")]
        if not redo:
            break
        epochs *= 2
        pipe.log(f"[importance] {len(redo)} of {len(records)} {tag} runs not converged: retraining with {epochs} "
                 "epochs")
        jobs = [(i // len(seeds), seeds[i % len(seeds)]) for i in redo]
        for (c, seed), i in zip(jobs, redo):
            got, n, rec = train_samples(pipe, [configs[c]], resolution, [seed], tag, epochs)
            samples[i], records[i], trained = got[0], rec[0], trained + n
    return samples, trained, records


def sample_and_fit(pipe: Any, resolution: tuple[int, int]) -> Any:
    """The importance stage of Pipeline: sample configurations (by cfg.sample_mode), train, score, fit, check."""
    import warnings

    from fxscale.scaling.powerlaw import POOR_R2, fit_predictor, sample_configs
    cfg = pipe.cfg
    t0 = time.perf_counter()
    seeds = [cfg.seeds[0] + i for i in range(cfg.sample_seeds)]
    configs = (local_configs(pipe.cg, cfg.samples, seed=cfg.seeds[0]) if cfg.sample_mode == "local"
               else sample_configs(pipe.cg, cfg.samples, seed=cfg.seeds[0]))
    samples, trained, records = train_to_convergence(pipe, configs, resolution, seeds, "sampled width configuration")
    norm = (lambda ss: [per_producer(x, pipe.cg) for x in ss]) if cfg.importance_norm == "producer" else list
    samples = norm(samples)
    base = {g.name: g.width for g in pipe.cg.scalable}
    pipe.base_importance = next((s.channels for s in samples if s.widths == base), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = fit_predictor(samples)
    for w in caught:
        pipe.log(f"[importance] warning: {w.message}")
    runs = len(samples)
    pipe.importance_check = None
    if cfg.importance_holdout:
        held_cfgs = local_configs(pipe.cg, cfg.importance_holdout, seed=cfg.seeds[0] + HOLDOUT_SEED,
                                  include_center=False)
        held, n, held_records = train_to_convergence(pipe, held_cfgs, resolution, seeds[:1], "held-out configuration")
        records = records + held_records
        held = norm(held)
        trained, runs = trained + n, runs + len(held)
        pipe.importance_check = {**prediction_check(pred, held), "configs": held_cfgs}
        o = pipe.importance_check["overall"]
        pipe.log(f"[importance] held-out check on {len(held)} configurations: R² (log) {o['r2_log']:.3f}, "
                 f"MAPE {o['mape']:.1f}%")
    judged = [r for r in records if r.get("converged") is not None]
    conv = {"criterion": f"train loss within {CONVERGE_LOSS:.0%} over the last quarter of epochs and final val "
                         f"accuracy within {CONVERGE_ACC:.0%} of the best", "runs": len(records),
            "converged": sum(1 for r in judged if r["converged"]), "judged": len(judged),
            "epochs": sorted({int(r["epochs"]) for r in records}), "max_epochs": cfg.sample_max_epochs}
    if judged and conv["converged"] < len(judged):
        pipe.log(f"[importance] warning: {len(judged) - conv['converged']} of {len(judged)} importance runs did not "
                 "converge (" + conv["criterion"] + "); raise --sample-epochs or --sample-max-epochs")
    pipe.importance_compute = {"epochs": sum(int(r["epochs"]) for r in records), "wall_s": time.perf_counter() - t0,
                               "convergence": conv,
                               "cached_samples": max(0, runs - trained), "mode": cfg.sample_mode, "seeds": seeds,
                               "norm": cfg.importance_norm}
    if pred.poorly_fit():
        pipe.log(f"[importance] warning: poorly fitted groups (log-space R² < {POOR_R2}): "
                 f"{', '.join(pred.poorly_fit())}")
    return pred


__all__ = ["CONVERGE_ACC", "CONVERGE_LOSS", "HOLDOUT_SEED", "LOCAL_SPREAD", "converged", "train_to_convergence", "SAMPLE_MODES", "local_configs", "per_producer", "prediction_check",
           "sample_and_fit", "train_samples"]
