"""Warm-start scaling: grow a trained baseline function-preservingly, then fine-tune it for a fraction of the epochs.

`warm_start(baseline, plan)` applies the plan with ``init="preserve"``: width by Net2Net replication (a replica
copies its source channel's producer rows; consumers divide the replicated columns by the replica count), depth
by identity blocks, resolution on the same weights. Without noise the widened model computes the baseline's
function exactly (eval mode; 1e-6 relative in float32, 1e-12 in float64).

Symmetry breaking. Replicas of one channel receive identical gradients, so without noise they stay identical
under SGD and the widened model never uses its extra width. `noise` adds N(0, (noise * mean|W|)^2) to the
producer rows of replicated channels (per weight tensor, relative to its mean absolute value). The scale is
chosen by measurement: `calibrate_noise` returns the largest candidate whose output drift on a validation
batch stays under a target (default 2% of the largest baseline logit) and reports the drift of every candidate.

BatchNorm statistics. ``bn="carry"`` (the default) keeps the running statistics the transform replicates along
with the channels: exact without noise, needs no data, and with the small calibrated noise the replicated
statistics stay close (the drift report includes BN). ``bn="reestimate"`` resets them and re-estimates them
as a cumulative average over training batches (train-mode BN, no gradients, nothing else changes): use it after
a resolution change or a large noise, where the carried statistics no longer match the activations.

Fine-tune recipe (`WarmRecipe`): ``fraction`` of the from-scratch epochs (default 25%), a lower peak learning
rate (``lr_scale`` x the scratch lr), one epoch of linear warm-up, then cosine; optional distillation from the
baseline (``distill`` weight, temperature ``temperature``). When the plan changes the input resolution, the
teacher is `NativeTeacher`: the baseline fed the student's batch resized back to the baseline's own resolution.
The baseline run at the new resolution directly is a poor teacher: on digits at 8 -> 10 px it scored 80% against
99% at its own size, and distilling from it cost 1.4 points (the warm-start benchmark on HACScale's 10 px plan).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxscale
from fxscale.errors import FxscaleError, PlanError
from fxscale.plan import ScalingPlan
from fxscale.tracing import META

BN_MODES = ("carry", "reestimate")
NOISE_CANDIDATES = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Drift:
    """How far a model's outputs moved from a reference's on one batch."""

    max_abs: float  # max |y - y_ref|
    rel: float  # max_abs / max |y_ref|
    agree: float  # fraction of samples whose argmax is unchanged

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NoiseCalibration:
    """The chosen noise and the measured drift of every candidate (relative to the noise-free warm model)."""

    noise: float
    target: float
    drifts: tuple[tuple[float, Drift], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"noise": self.noise, "target": self.target,
                "drifts": [{"noise": n, **d.to_dict()} for n, d in self.drifts]}


@dataclass(frozen=True)
class WarmRecipe:
    """Fine-tune settings of a warm start, applied on top of the from-scratch TrainConfig."""

    fraction: float = 0.25  # fine-tune epochs = max(1, round(fraction * scratch epochs))
    lr_scale: float = 0.2  # peak lr = lr_scale * scratch lr
    warmup_epochs: int = 1  # linear warm-up (capped at epochs - 1), then cosine
    distill: float = 0.0  # KD weight (0: off); the teacher is the baseline
    temperature: float = 4.0

    def __post_init__(self) -> None:
        """Reject invalid settings with a message naming the field."""
        bad = [(0 < self.fraction <= 1, f"fraction must lie in (0, 1], got {self.fraction}"),
               (self.lr_scale > 0, f"lr_scale must be > 0, got {self.lr_scale}"),
               (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
               (0 <= self.distill <= 1, f"distill must lie in [0, 1], got {self.distill}"),
               (self.temperature > 0, f"temperature must be > 0, got {self.temperature}")]
        errors = [msg for ok, msg in bad if not ok]
        if errors:
            raise FxscaleError("invalid WarmRecipe: " + "; ".join(errors))

    def epochs(self, scratch_epochs: int) -> int:
        """Fine-tune epochs for a plan trained `scratch_epochs` from scratch."""
        return max(1, round(self.fraction * scratch_epochs))

    def train_config(self, scratch: Any) -> Any:
        """The warm TrainConfig: fewer epochs, lower peak lr, warm-up then cosine, optional KD."""
        k = self.epochs(scratch.epochs)
        return dataclasses.replace(scratch, epochs=k, lr=scratch.lr * self.lr_scale, schedule="cosine",
                                   warmup_epochs=min(self.warmup_epochs, k - 1), distill_weight=self.distill,
                                   distill_temperature=self.temperature)


def _as_graph_module(baseline: nn.Module, example_input: Optional[torch.Tensor], data: Any) -> fx.GraphModule:
    """The baseline as an fxscale-traced GraphModule (traced here when it is a plain module)."""
    if isinstance(baseline, fx.GraphModule) and META in baseline.meta:
        return baseline
    if example_input is None:
        shape = getattr(data, "input_shape", None)
        if shape is None:
            raise FxscaleError("warm_start: a plain nn.Module baseline needs example_input= (or data= a DataBundle) "
                               "to be traced; or pass fxscale.trace(model, x)")
        example_input = torch.zeros(1, *shape)
    was = baseline.training
    gm = fxscale.trace(baseline.eval(), example_input)
    baseline.train(was)
    gm.train(was)
    return gm


def new_resolution(gm: fx.GraphModule, plan: ScalingPlan) -> tuple[int, int]:
    """Input (H, W) of the plan's model (built with resolution_mode='input')."""
    return tuple(plan.resolution or gm.meta[META]["resolution"])  # type: ignore[return-value]


class NativeTeacher(nn.Module):
    """The baseline as a distillation teacher for a student at another input resolution: each batch is resized
    back to the baseline's own ``resolution`` before it runs, so the teacher keeps most of the accuracy it was
    trained with. Bilinear without antialiasing, chosen by measurement: digits_resnet trained at 8 px (97.5% val)
    scores 91-94% on 10, 12 and 16 px batches resized back this way, 80-81% with antialiasing, 72-94% with area
    and 32-75% run at those sizes directly."""

    def __init__(self, baseline: nn.Module, resolution: Sequence[int]) -> None:
        super().__init__()
        self.baseline, self.resolution = baseline, tuple(int(v) for v in resolution)

    def forward(self, x: torch.Tensor) -> Any:
        if tuple(x.shape[-2:]) != self.resolution:
            x = F.interpolate(x, size=self.resolution, mode="bilinear", align_corners=False, antialias=False)
        return self.baseline(x)


def teacher_for(baseline: fx.GraphModule, plan: ScalingPlan) -> nn.Module:
    """The distillation teacher of a plan's student: the baseline itself, or at a new input resolution the
    baseline behind `NativeTeacher`."""
    res = tuple(baseline.meta[META]["resolution"])
    return baseline if tuple(new_resolution(baseline, plan)) == res else NativeTeacher(baseline, res)


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_bn(model: nn.Module, data: Any, *, resolution: Optional[Sequence[int]] = None, batches: int = 8,
                  batch_size: int = 64) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as a cumulative average over training
    batches (train-mode BN only, no gradients; weights and other modules untouched). Returns the batches used.

    `data` is a DataBundle (its train split, resized to `resolution`) or an iterable of (x, y) batches.
    """
    from fxscale.data import DataBundle, loader
    layers = _bn_layers(model)
    if not layers:
        return 0
    it = loader(data, "train", batch_size, resolution, shuffle=False) if isinstance(data, DataBundle) else data
    modes = [(m, m.training) for m in model.modules()]
    moms = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    n = 0
    try:
        for x, _y in it:
            model(x)
            n += 1
            if n >= batches:
                break
    finally:
        for m, mom in zip(layers, moms):
            m.momentum = mom
        for m, was in modes:
            m.train(was)
    if n == 0:
        raise FxscaleError("reestimate_bn: the data yielded no batches")
    return n


def warm_start(baseline: nn.Module, plan: ScalingPlan, *, noise: float = 0.0, bn: str = "carry", data: Any = None,
               seed: int = 0, example_input: Optional[torch.Tensor] = None, resolution_mode: str = "input",
               importance: Optional[Mapping[str, torch.Tensor]] = None, bn_batches: int = 8,
               batch_size: int = 64) -> fx.GraphModule:
    """The plan's model initialised from a trained baseline (see the module docstring); the baseline is not changed.

    baseline: a GraphModule from fxscale.trace, or a plain module (traced on example_input, or on a zero batch of
    data's input shape). noise: symmetry-breaking noise relative to each weight's mean |w| (>= 0). bn: "carry"
    or "reestimate" (needs data: a DataBundle or (x, y) batches at the new resolution). importance: per-channel
    scores choosing the channels a shrink keeps (e.g. Taylor scores from fxscale.scaling.importance).
    """
    if bn not in BN_MODES:
        raise FxscaleError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise FxscaleError(f"noise must be a finite number >= 0, got {noise!r}")
    if bn == "reestimate" and data is None:
        raise FxscaleError("bn='reestimate' needs data= (a DataBundle or an iterable of (x, y) training batches)")
    gm = _as_graph_module(baseline, example_input, data)
    new = fxscale.transform(gm, plan, init="preserve", noise=float(noise), seed=seed, importance=importance,
                            resolution_mode=resolution_mode)
    if bn == "reestimate":
        res = new_resolution(gm, plan) if resolution_mode == "input" else None
        reestimate_bn(new, data, resolution=res, batches=bn_batches, batch_size=batch_size)
    new.meta[META]["warm_start"] = {"noise": float(noise), "bn": bn, "seed": seed}
    return new


@torch.no_grad()
def output_drift(model: nn.Module, reference: nn.Module, x: torch.Tensor, x_ref: Optional[torch.Tensor] = None) -> Drift:
    """Drift of model(x) from reference(x_ref or x), both in eval mode (their modes are restored)."""
    from fxscale.train_kd import teacher_logits  # eval-mode logits, the module's mode restored
    y, ref = teacher_logits(model, x), teacher_logits(reference, x if x_ref is None else x_ref)
    diff = float((y - ref).abs().max())
    scale = float(ref.abs().max())
    agree = float((y.argmax(1) == ref.argmax(1)).double().mean()) if y.dim() == 2 else float("nan")
    return Drift(diff, diff / scale if scale > 0 else math.inf, agree)


def calibrate_noise(baseline: fx.GraphModule, plan: ScalingPlan, x: torch.Tensor, *, target: float = 0.02,
                    candidates: Sequence[float] = NOISE_CANDIDATES, seed: int = 0,
                    resolution_mode: str = "input") -> NoiseCalibration:
    """The largest candidate noise whose relative output drift on the batch x (at the plan's input size) from the
    noise-free warm model stays at most `target`; every candidate's drift is reported. A plan that replicates no
    channel (noise changes nothing) gets 0."""
    if not target > 0:
        raise FxscaleError(f"noise target must be > 0, got {target}")
    if any(c < 0 for c in candidates) or not candidates:
        raise FxscaleError(f"noise candidates must be >= 0 and at least one, got {list(candidates)}")
    exact = warm_start(baseline, plan, seed=seed, resolution_mode=resolution_mode)
    drifts, chosen = [], 0.0
    for c in sorted(candidates):
        d = output_drift(warm_start(baseline, plan, noise=c, seed=seed, resolution_mode=resolution_mode), exact, x) \
            if c > 0 else Drift(0.0, 0.0, 1.0)
        drifts.append((float(c), d))
        if d.rel <= target and (c == 0 or d.max_abs > 0):  # no drift at all: no replicas, nothing to break
            chosen = float(c)
    return NoiseCalibration(chosen, target, tuple(drifts))


def taylor_importance(gm: fx.GraphModule, data: Any, *, batches: int = 4, batch_size: int = 64,
                      resolution: Optional[Sequence[int]] = None) -> dict[str, torch.Tensor]:
    """Per-channel first-order Taylor scores of a trained model on a few training batches (for shrinking)."""
    from fxscale.scaling.importance import importance
    if batches < 1:
        raise FxscaleError(f"importance batches must be >= 1, got {batches}")
    imp = importance(gm, data, batches=batches, batch_size=batch_size,
                     resolution=tuple(resolution) if resolution else None)
    return dict(imp.channels)


def shrinks(gm: fx.GraphModule, plan: ScalingPlan) -> bool:
    """True when the plan narrows some channel group of gm."""
    cg = fxscale.analyze(gm)
    try:
        return any(w < cg[g].width for g, w in plan.widths.items())
    except KeyError as e:
        raise PlanError(f"plan names an unknown group {e}") from e


def load_state(model: nn.Module, path: Union[str, Any], what: str = "--weights") -> None:
    """Load a state dict (or a fxscale.train checkpoint's "model", or a {"state_dict": ...} file) into model."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise FxscaleError(f"{what}: no such file {path}") from e
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
        raise FxscaleError(f"{what}: cannot read weights from {path} ({type(e).__name__}: {e})") from e
    if isinstance(blob, dict):
        for key in ("model", "state_dict"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise FxscaleError(f"{what}: {path} holds no state dict (tensors by parameter name)")
    try:
        model.load_state_dict(blob)
    except RuntimeError as e:
        text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise FxscaleError(f"{what}: {path} does not fit the model: {text[:400]}") from e


__all__ = ["BN_MODES", "NOISE_CANDIDATES", "Drift", "NativeTeacher", "NoiseCalibration", "WarmRecipe",
           "calibrate_noise", "load_state", "new_resolution", "output_drift", "reestimate_bn", "shrinks",
           "taylor_importance", "teacher_for", "warm_start"]
