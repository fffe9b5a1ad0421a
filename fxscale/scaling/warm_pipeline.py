"""`fxscale scale --start trained`: the pipeline's side of warm starts (see fxscale.scaling.warm).

The trained baseline comes from ``--weights`` (one baseline for every seed: seeds then vary the fine-tune only)
or is trained first for ``epochs`` epochs once per training seed, initialised and trained exactly as the from-scratch
run's baseline row of that seed (so a run over several seeds samples the baseline's training too; cached in
OUT/stages/weights/warm_baseline_<key>.pt). Every model the pipeline trains with seed s (alpha candidates,
importance samples, the final methods, the baseline row itself) is then the plan applied to seed s's baseline
with ``init="preserve"`` plus symmetry-breaking noise (``noise``; "auto" calibrates it per plan on a validation
batch, on the first seed's baseline), fine-tuned with WarmRecipe: ``warm_fraction`` of the epochs that stage
trains from scratch, a lower peak lr with warm-up, optionally distilled from that baseline.
OUT/stages/warm_start.json records each baseline's source and training time (``baselines``, by seed) and each
plan's noise calibration.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, Optional

import torch.fx as fx
from torch import nn

from fxscale.plan import ScalingPlan
from fxscale.scaling.stages import atomic_write, load_weights, save_weights
from fxscale.scaling.warm import WarmRecipe, calibrate_noise, load_state, teacher_for, warm_start

BN = "carry"  # the carried statistics are exact and need no data; see fxscale.scaling.warm


class WarmPipeline:
    """Builds warm-started models and fine-tune settings for a Pipeline whose config has start="trained"."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        cfg = pipe.cfg
        self.recipe = WarmRecipe(fraction=cfg.warm_fraction, distill=cfg.distill)
        self._baselines: dict[Optional[int], fx.GraphModule] = {}  # by training seed (None: the --weights file)
        self._noise: dict[str, Any] = {}  # per plan: its calibrated noise
        self.record: dict[str, Any] = {"bn": BN, "recipe": dataclasses.asdict(self.recipe), "noise": {},
                                       "baselines": {}}

    def _key(self, seed: int) -> str:
        cfg = self.pipe.cfg
        blob = {"input": self.pipe.keys["input"], "epochs": cfg.epochs, "seed": seed, "lr": cfg.lr,
                "batch_size": cfg.batch_size, "device": cfg.device, "split_per_seed": cfg.split_per_seed,
                "init": "as the scratch baseline row"}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def baseline(self, seed: Optional[int] = None) -> fx.GraphModule:
        """The trained baseline of a training seed (eval mode; default: the first seed): loaded from cfg.weights
        (the same for every seed), from the cache, or trained here once per seed."""
        from fxscale.api import copy_graph_module
        from fxscale.train import train
        cfg, pipe = self.pipe.cfg, self.pipe
        seed = cfg.seeds[0] if seed is None else seed
        slot = None if cfg.weights else seed
        if slot in self._baselines:
            return self._baselines[slot]
        if cfg.weights:
            gm = copy_graph_module(pipe.gm)
            load_state(gm, cfg.weights, "weights")
            self.record["baselines"]["all"] = {"source": str(cfg.weights), "epochs": 0, "seconds": 0.0}
        else:
            # initialised and trained exactly as the from-scratch run's baseline row of this seed
            gm = pipe.build(ScalingPlan(), seed)
            path = pipe.stages / "weights" / f"warm_baseline_{self._key(seed)}.pt"
            if path.is_file():
                gm.load_state_dict(load_weights(path))
                pipe.log(f"[warm] trained baseline (seed {seed}) resumed from {path}")
                self.record["baselines"].setdefault(str(seed), {"source": str(path), "epochs": cfg.epochs,
                                                                "seconds": None})
            else:
                pipe.log(f"[warm] training the baseline from scratch for {cfg.epochs} epochs (seed {seed})")
                t0 = time.perf_counter()
                res = train(gm, pipe.bundle_for(seed), pipe.train_cfg(cfg.epochs, seed, warm=False),
                            pipe.resolution_of(ScalingPlan()))
                path.parent.mkdir(parents=True, exist_ok=True)
                save_weights(gm.state_dict(), path)
                self.record["baselines"][str(seed)] = {"source": "trained", "epochs": cfg.epochs,
                                                       "seconds": time.perf_counter() - t0,
                                                       "best_val_acc": res.best_val_acc}
        self._baselines[slot] = gm.eval()
        self._save()
        return self._baselines[slot]

    def teacher(self, plan: ScalingPlan, seed: Optional[int] = None) -> Optional[nn.Module]:
        """The distillation teacher when distill > 0: the seed's baseline, behind NativeTeacher when the plan
        changes the input resolution (see fxscale.scaling.warm.teacher_for)."""
        if self.recipe.distill <= 0:
            return None
        return teacher_for(self.baseline(seed), plan)

    def noise_for(self, plan: ScalingPlan) -> float:
        """cfg.noise, or (noise="auto") the calibrated noise of this plan on the first validation batch."""
        noise = self.pipe.cfg.noise
        if noise != "auto":
            return float(noise)
        key = plan.to_json()
        if key not in self._noise:
            from fxscale.data import loader
            split = "val" if len(self.pipe.bundle.val) else "train"
            x, _y = next(iter(loader(self.pipe.bundle, split, 64, self.pipe.resolution_of(plan), shuffle=False)))
            cal = calibrate_noise(self.baseline(), plan, x)
            self._noise[key] = cal.noise
            self.record["noise"][hashlib.sha256(key.encode()).hexdigest()[:12]] = {"plan": json.loads(key),
                                                                                   **cal.to_dict()}
            self._save()
        return self._noise[key]

    def build(self, plan: ScalingPlan, seed: int = 0) -> fx.GraphModule:
        """The plan's model, warm-started from the seed's trained baseline (train mode, ready to fine-tune)."""
        new = warm_start(self.baseline(seed), plan, noise=self.noise_for(plan), bn=BN, seed=seed,
                         resolution_mode="input")
        return new.train()

    def train_config(self, scratch: Any) -> Any:
        """The warm fine-tune TrainConfig for a from-scratch one."""
        return self.recipe.train_config(scratch)

    def _save(self) -> None:
        self.pipe.stages.mkdir(parents=True, exist_ok=True)
        atomic_write(self.pipe.stages / "warm_start.json", json.dumps(self.record, indent=1, default=float))


def warm_of(pipe: Any) -> Optional[WarmPipeline]:
    """The pipeline's WarmPipeline (created on first use) when its config has start="trained", else None."""
    if getattr(pipe.cfg, "start", "scratch") != "trained":
        return None
    if getattr(pipe, "_warm", None) is None:
        pipe._warm = WarmPipeline(pipe)
    return pipe._warm


__all__ = ["BN", "WarmPipeline", "warm_of"]
