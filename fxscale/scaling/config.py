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

METHOD_NAMES = ("uniform", "resolution", "depth", "efficientnet", "dollar", "neuralscale")


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
    search_epochs: int = 8
    epochs: int = 20
    rule: str = "paper"
    stride: int = 10
    align: int = 8  # ORT/MLAS and TensorRT block channels by 8/16: on this CPU 32 -> 33 channels cost +52% latency
    methods: tuple[str, ...] = ("uniform", "resolution", "efficientnet", "dollar", "neuralscale")
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 64
    lr: float = 0.05
    runs: int = 200  # the paper times 50 runs; sub-0.1 ms models on a shared CPU need more for a stable median
    warmup: int = 10
    rounds: int = 5
    workers: int = 1
    executor: str = "local"
    profile: Optional[str] = None  # a device profile JSON (fxscale profile); None: analytic model calibrated here
    device: str = "cpu"
    progress: bool = True
    leaf: Optional[tuple[str, ...]] = None  # module classes (pkg.mod.Class) traced as opaque leaves
    trtexec: Optional[str] = None  # trtexec binary for target "trtexec" (None: trtexec on PATH)
    max_memory: Optional[str] = None  # refuse plans above this (bytes or '64GB'); None: MemAvailable
    static_batch: bool = False  # ONNX / model.pt2 with a fixed batch of 1 instead of a dynamic batch dim

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
                ("sample_epochs", 1, ""), ("stride", 1, "kernels added per step"), ("align", 1, "channels"),
                ("batch_size", 1, "images"), ("runs", 1, "timed runs"), ("warmup", 0, "runs"), ("rounds", 1, ""),
                ("threads", 1, "")]
        for name, low, what in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise PlanError(f"{lab(name)} must be >= {low}, got {value!r}{f' ({what})' if what else ''}")
        checks = [(self.flops_scale > 0, f"{lab('flops_scale')} must be > 0, got {self.flops_scale}"),
                  (self.lr > 0, f"{lab('lr')} must be > 0, got {self.lr}"),
                  (self.rule in RULES, f"{lab('rule')} must be one of {RULES}, got {self.rule!r}"),
                  (bool(self.seeds), f"{lab('seeds')} must not be empty"),
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
        check_target(self.target, lab("target"))
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


__all__ = ["METHOD_NAMES", "ScaleConfig", "budget_limit"]
