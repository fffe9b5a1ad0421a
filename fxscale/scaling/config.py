"""ScaleConfig: every setting of one `fxscale scale` run, checked in well under a second before any work.

validate(labels) names each setting by its label: the field name from the Python API, the option (``--workers``)
when the command line passes its labels, so the one-line errors use the words the user typed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from fxscale.cli_checks import (
    UNITS,
    check_dataset,
    check_executor,
    check_in_file,
    check_target,
    check_train_device,
    check_trtexec,
    parse_budget_text,
)
from fxscale.errors import PlanError
from fxscale.scaling.greedy import RULES

METHOD_NAMES = ("uniform", "resolution", "depth", "efficientnet", "dollar", "neuralscale-lite", "neuralscale", "uniform@hacres",
                "random@hacres")  # the @hacres rows: the allocation ablation at HACScale's resolution
VARIANTS = ("align8", "cost")  # extra HACScale rows beside the paper's: aligned widths, the cost-aware rule


@dataclass
class ScaleConfig:
    """Every setting of one scaling run (defaults: the embedded digits job, a few minutes on 2 CPU cores)."""

    model: str = "digits_resnet"
    data: str = "digits"
    data_kw: dict[str, Any] = field(default_factory=dict)
    target: str = "ort"
    threads: int = 1
    latency_budget: Any = "1.05x"  # a ratio of the baseline ('1.05x'), absolute ms ('2.5' or '2.5ms'), or None
    memory_budget: Any = "1.5x"  # params: a ratio, a count, or None
    flops_scale: float = 2.0
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    alpha: Optional[float] = None  # skip the alpha search
    samples: int = 8  # importance-predictor width configurations
    sample_epochs: int = 4
    sample_max_epochs: int = 0  # > sample_epochs: retrain runs that fail the convergence test with 2x epochs up to it
    sample_mode: str = "grid"  # importance samples: "grid" (0.5x..2x) or "local" (x0.75..x1.25 per group), scaling.samples
    sample_seeds: int = 1  # training seeds per sampled configuration (each run is one sample of the fit)
    importance_norm: str = "group"  # "group": a kernel sums over its tied group's layers; "producer": per layer
    importance_holdout: int = 0  # held-out local configurations to check the fit on (R² of log I, MAPE); 0: none
    search_epochs: int = 8
    epochs: int = 20
    rule: str = "paper"
    stride: int = 10
    align: int = 1  # the paper: no alignment (the "hacscale-align8" row aligns to 8: ORT/MLAS block channels by 8)
    variants: tuple[str, ...] = VARIANTS  # extra HACScale rows ("align8": align 8, "cost": rule cost)
    baseline_align: int = 8  # widths of the comparison methods (uniform, compound, NeuralScale-lite) round to this
    search_s: bool = True  # with a budget, s = the largest value <= flops_scale whose alpha candidates all fit
    flops_tol: float = 0.05  # alpha candidates: stated tolerance of the equal-FLOPs-after-rounding rule
    ci_halfwidth: float = 0.02  # measured ratios: add rounds until the interval half-width <= this x the ratio
    max_rounds: int = 60  # ... or this many interleaved rounds
    methods: tuple[str, ...] = ("uniform", "resolution", "efficientnet", "dollar", "neuralscale-lite")
    seeds: tuple[int, ...] = (0,)
    split_per_seed: bool = True  # seed s trains/validates/tests on the dataset built with split seed base + s
    batch_size: int = 64
    lr: float = 0.05
    runs: int = 200  # the paper times 50 runs; sub-0.1 ms models on a shared CPU need more for a stable median
    warmup: int = 10
    rounds: int = 5
    workers: int = 1
    executor: str = "local"
    inference_plan: Optional[str] = None  # target "hybrid": an `fxscale optimize` output folder or its plan JSON
    ray_address: Optional[str] = None  # executor "ray": a running cluster (host:port, auto); None: RAY_ADDRESS or a local Ray
    profile: Optional[str] = None  # a device profile JSON (fxscale profile); None: analytic model calibrated here
    device: str = "cpu"
    progress: bool = True
    leaf: Optional[tuple[str, ...]] = None  # module classes (pkg.mod.Class) traced as opaque leaves
    trtexec: Optional[str] = None  # trtexec binary for target "trtexec" (None: trtexec on PATH)
    max_memory: Optional[str] = None  # refuse plans above this (bytes or '64GB'); None: MemAvailable
    static_batch: bool = False  # ONNX / model.pt2 with a fixed batch of 1 instead of a dynamic batch dim
    # warm start (fxscale.scaling.warm): "trained" fine-tunes every method from the trained baseline's weights
    start: str = "scratch"  # "scratch" | "trained"
    weights: Optional[str] = None  # start="trained": the baseline's weights file (None: the pipeline trains it)
    warm_fraction: float = 0.25  # start="trained": fine-tune epochs = max(1, round(fraction x epochs))
    noise: Any = "auto"  # start="trained": symmetry-breaking noise >= 0, or "auto" (calibrated per plan)
    distill: float = 0.0  # start="trained": weight of distillation from the baseline (0: off)

    def validate(self, labels: Optional[Mapping[str, str]] = None) -> None:
        """Reject bad settings with one line naming the setting (by its label in `labels`, else its field name)."""
        def lab(name: str) -> str:
            return (labels or {}).get(name, name)
        for name, values in (("alpha", (self.alpha,)) if self.alpha is not None else ("alphas", self.alphas),):
            if not values:
                raise PlanError(f"{lab(name)} must name at least one alpha in (0, 1)")
            for a in values:
                if not 0 < a < 1:
                    raise PlanError(f"{lab(name)}: alpha must lie in (0, 1), got {a} (alpha=0 is width-only, "
                                    "1 resolution-only)")
        ints = [("samples", 2, "to fit a power law"), ("epochs", 1, ""), ("search_epochs", 1, ""),
                ("sample_epochs", 1, ""), ("sample_seeds", 1, "training seeds per sample"),
                ("importance_holdout", 0, "held-out configurations"), ("stride", 1, "kernels added per step"), ("align", 1, "channels"), ("baseline_align", 1, "channels"),
                ("batch_size", 1, "images"), ("runs", 1, "timed runs"), ("warmup", 0, "runs"), ("rounds", 1, ""),
                ("threads", 1, ""), ("max_rounds", 6, "interleaved rounds (>= 6 for a 95% interval)")]
        for name, low, what in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise PlanError(f"{lab(name)} must be >= {low}, got {value!r}{f' ({what})' if what else ''}")
        checks = [(self.flops_scale > 0, f"{lab('flops_scale')} must be > 0, got {self.flops_scale}"),
                  (self.lr > 0, f"{lab('lr')} must be > 0, got {self.lr}"),
                  (self.rule in RULES, f"{lab('rule')} must be one of {RULES}, got {self.rule!r}"),
                  (self.sample_mode in ("grid", "local"),
                   f"{lab('sample_mode')} must be one of grid, local, got {self.sample_mode!r}"),
                  (self.sample_max_epochs == 0 or self.sample_max_epochs >= self.sample_epochs,
                   f"{lab('sample_max_epochs')} must be 0 (no retraining) or >= {lab('sample_epochs')} "
                   f"({self.sample_epochs}), got {self.sample_max_epochs}"),
                  (self.importance_norm in ("group", "producer"),
                   f"{lab('importance_norm')} must be one of group, producer, got {self.importance_norm!r}"),
                  (bool(self.seeds), f"{lab('seeds')} must not be empty"),
                  (0 < self.ci_halfwidth < 1, f"{lab('ci_halfwidth')} must lie in (0, 1), got {self.ci_halfwidth}"),
                  (0 < self.flops_tol < 1, f"{lab('flops_tol')} must lie in (0, 1), got {self.flops_tol}"),
                  (all(v in VARIANTS for v in self.variants),
                   f"{lab('variants')}: unknown variants {[v for v in self.variants if v not in VARIANTS]}; choose "
                   f"from {', '.join(VARIANTS)}"),
                  (isinstance(self.data_kw, dict), f"{lab('data_kw')} must be a JSON object / dict")]
        for ok, msg in checks:
            if not ok:
                raise PlanError(msg)
        bad = [m for m in self.methods if m not in METHOD_NAMES]
        if bad:
            raise PlanError(f"{lab('methods')}: unknown methods {bad}; choose from {', '.join(METHOD_NAMES)}")
        parse_budget_text(self.latency_budget, "latency", lab("latency_budget"))
        parse_budget_text(self.memory_budget, "memory", lab("memory_budget"))
        check_train_device(self.device, lab("device"))
        check_executor(self.executor, self.workers, lab("executor"), lab("workers"))
        if self.executor == "ray":
            from fxscale.executor import check_ray_address, ray_address
            check_ray_address(ray_address(self.ray_address))
        check_target(self.target, lab("target"))
        if (self.target == "hybrid") != (self.inference_plan is not None):
            raise PlanError(f"{lab('inference_plan')} and {lab('target')} hybrid go together: the hybrid target "
                            "times each model under an `fxscale optimize` inference plan")
        if self.inference_plan is not None:
            from fxscale.optimize.plan import read_plan
            read_plan(self.inference_plan)
        check_dataset(self.data, lab("data"))
        if self.target == "trtexec":
            check_trtexec(self.trtexec or "trtexec", lab("trtexec"))
        if self.profile:
            check_in_file(self.profile, lab("profile"))
        if self.max_memory is not None:
            from fxscale.guard import parse_size
            parse_size(self.max_memory, lab("max_memory"))
        from fxscale.hw.base import MeasureProtocol
        MeasureProtocol(warmup=self.warmup, runs=self.runs)  # TargetError naming any other bad protocol field
        check_warm(self, lab)


START_MODES = ("scratch", "trained")


def check_warm(cfg: "ScaleConfig", lab: Any) -> None:
    """The warm-start settings: start, weights (a readable file), warm_fraction, noise, distill."""
    import math
    if cfg.start not in START_MODES:
        raise PlanError(f"{lab('start')} must be one of {', '.join(START_MODES)}, got {cfg.start!r}")
    if cfg.weights is not None:
        if cfg.start != "trained":
            raise PlanError(f"{lab('weights')} is only used with {lab('start')} trained")
        check_in_file(cfg.weights, lab("weights"))
    if not (isinstance(cfg.warm_fraction, (int, float)) and 0 < cfg.warm_fraction <= 1):
        raise PlanError(f"{lab('warm_fraction')} must lie in (0, 1], got {cfg.warm_fraction!r}")
    if cfg.noise != "auto" and not (isinstance(cfg.noise, (int, float)) and not isinstance(cfg.noise, bool)
                                    and math.isfinite(cfg.noise) and cfg.noise >= 0):
        raise PlanError(f"{lab('noise')} must be 'auto' or a number >= 0, got {cfg.noise!r}")
    if not (isinstance(cfg.distill, (int, float)) and 0 <= cfg.distill <= 1):
        raise PlanError(f"{lab('distill')} must lie in [0, 1], got {cfg.distill!r}")


def budget_limit(value: Any, baseline: float, what: str, label: str) -> Optional[float]:
    """The absolute limit of a budget ('1.05x' of `baseline`, or absolute), in ms / params; None: unconstrained."""
    kind, number = parse_budget_text(value, what, label)
    if kind is None or number is None:
        return None
    limit = number * baseline if kind == "ratio" else number
    if limit < baseline * (1 - 1e-9):
        unit = UNITS[what]
        fmt = (lambda v: f"{v:.4g} ms") if what == "latency" else (lambda v: f"{v:,.0f} {unit}")
        raise PlanError(f"{label} {value} ({fmt(limit)}) is below the baseline's own {what} {fmt(baseline)}"
                        f"{' (predicted)' if what == 'latency' else ''}; give at least 1.0x")
    return limit


__all__ = ["METHOD_NAMES", "START_MODES", "VARIANTS", "ScaleConfig", "budget_limit", "check_warm"]
