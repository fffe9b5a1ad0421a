"""Profiling sweep: time single-kernel models drawn around the layers of the models to scale, fit a DeviceProfile.

Steps (timed on the target in interleaved rounds, medians, minus the call overhead of an identity model; with one
intra-op thread the runs are timed with the thread CPU clock, which other processes on a shared machine cannot
inflate):
1. channel block: is a conv with 1.5B channels as slow as one with 2B (the runtime pads channels to B)?
2. cache: chains of identical convs / linears whose weights outgrow the last-level cache give the total weight range
   over which weights stream from DRAM and a smooth roofline for the extra time per streamed byte.
3. kernel grid: every costing layer of the given models becomes a one-op model whose input/output channels and
   resolution are multiplied by random factors (channels in [0.5, 2.5], resolution in [0.5, 2]; weights kept in
   cache); per fine kind an NNLS fit linear in (MACs, bytes), GradientBoosting only if it wins held-out.
4. adaptive sampling: new points next to those with the highest leave-one-out error, then refit.
5. fusion: conv vs conv+BN vs conv+BN+ReLU vs relu(x + BN(conv(x))) gives the cost fraction of norms and
   element-wise ops left when the runtime fuses them into the conv (the prior of their whole-model scale).
6. calibration: end-to-end measurements of each model (baseline and random plans) fit shared per-kind scales, the
   DRAM term's scale, a per-kernel cost and a constant, plus a per-model (hot, DRAM, constant) correction.
"""
from __future__ import annotations

import math
import random
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.errors import FxscaleError, ProfileError
from fxscale.hw.devprofile import FUSED_FAMILIES, Calibration, DeviceProfile, fit_calibration, fit_kind, loo_errors
from fxscale.hw.kernels import KernelSample, Replay, Residual, X, add_op, draw_sample, kernel_specs
from fxscale.hw.predictor import LatencyPredictor, fingerprint
from fxscale.hw.timing import Progress, RoundTimer, use_cpu_clock
from fxscale.ops.row import KernelKind
from fxscale.plan import ScalingPlan
from fxscale.tracing import META


CALIBRATION_WARN_MAPE = 0.15  # end-to-end MAPE after calibration above this: recheck for drift, then warn
DRIFT_THRESHOLD = 0.10  # median relative change of the re-measured reference models that counts as drift


@dataclass(frozen=True)
class Settings:
    """Sweep size: points per kind, adaptive rounds, timing budgets (ms of timed runs per point)."""

    points_per_kind: Optional[int] = None  # None: 8 + 4 per distinct layer shape, within [16, 40]
    adaptive_rounds: int = 2
    adaptive_points: int = 4
    kernel_budget_ms: float = 25.0
    calibration_plans: int = 5  # random plans per model besides the baseline (>= 3: a per-model calibration)
    calibration_budget_ms: float = 300.0
    rounds: int = 5  # interleaving rounds
    min_runs: int = 10
    seed: int = 0
    clock: str = "auto"  # "thread": thread CPU time (immune to other processes), "wall", "auto": thread if 1 thread
    statistic: str = "median"  # of all interleaved runs; "fastest_round": robust to co-tenant slowdown episodes

    @classmethod
    def quick(cls, **kw: Any) -> "Settings":
        """A small grid (CI, smoke runs)."""
        base = dict(points_per_kind=8, adaptive_rounds=1, adaptive_points=2, kernel_budget_ms=6.0,
                    calibration_plans=1, calibration_budget_ms=60.0, rounds=3, min_runs=5)
        return cls(**{**base, **kw})


@dataclass(frozen=True)
class LayerShape:
    """An explicit kernel to profile without a model: kind conv (k, stride, groups), linear, pool, norm, relu, add."""

    kind: str
    channels: int
    size: int = 16
    out_channels: Optional[int] = None
    kernel: int = 3
    stride: int = 1
    groups: int = 1

    def model(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A one-layer model and its input shape."""
        c, co, s = self.channels, self.out_channels or self.channels, self.size
        builders: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
            "conv": lambda: (nn.Conv2d(c, co, self.kernel, self.stride, self.kernel // 2, groups=self.groups,
                                       bias=False), (1, c, s, s)),
            "linear": lambda: (nn.Linear(c, co), (1, c)),
            "pool": lambda: (nn.MaxPool2d(self.kernel, self.stride, self.kernel // 2), (1, c, s, s)),
            "norm": lambda: (nn.BatchNorm2d(c), (1, c, s, s)), "relu": lambda: (nn.ReLU(), (1, c, s, s)),
            "add": lambda: (Replay(add_op, (X, X), {}), (1, c, s, s)),
        }
        if self.kind not in builders:
            raise ProfileError(f"LayerShape kind must be one of conv, linear, pool, norm, relu, add; "
                               f"got {self.kind!r}")
        mod, shape = builders[self.kind]()
        return nn.Sequential(mod), shape


@dataclass
class ModelEntry:
    """A model to profile around (and calibrate on)."""

    name: str
    cg: ChannelGraph
    input_shape: tuple[int, ...]
    calibrate: bool = True


# ---- models ---------------------------------------------------------------------------------------------
def resolve_models(models_or_shapes: Iterable[Any]) -> list[ModelEntry]:
    """Zoo names ("resnet18@64"), ([name,] module, input or shape), traced GraphModules, ChannelGraphs, LayerShapes."""
    import fxscale
    out = []
    for item in models_or_shapes:
        calibrate = True
        if isinstance(item, str):
            from fxscale import zoo
            name, _, size = item.partition("@")
            spec = zoo.get_spec(name)
            side = int(size) if size else spec.full_input_size
            model, shape = zoo.create_model(name).eval(), (1, spec.in_channels, side, side)
            label = item
        elif isinstance(item, LayerShape):
            (model, shape), label, calibrate = item.model(), f"{item.kind}:{item.channels}@{item.size}", False
        elif isinstance(item, ChannelGraph):
            out.append(ModelEntry(type(item.gm).__name__, item, tuple(item.gm.meta[META]["input_shapes"][0])))
            continue
        elif isinstance(item, fx.GraphModule) and META in item.meta:
            out.append(ModelEntry(type(item).__name__, analyze(item), tuple(item.meta[META]["input_shapes"][0])))
            continue
        elif isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[-2], nn.Module):
            model, x = item[-2:]
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)
            label = item[0] if len(item) == 3 else type(model).__name__
        else:
            raise ProfileError(f"cannot profile {item!r}: give a zoo name, ([name,] module, input shape), an "
                               f"fxscale GraphModule or ChannelGraph, or a LayerShape")
        gm = fxscale.trace(model.eval(), torch.randn(shape))
        out.append(ModelEntry(label, analyze(gm), tuple(shape), calibrate))
    if not out:
        raise ProfileError("nothing to profile: pass at least one model or LayerShape")
    return out


# ---- sweep ----------------------------------------------------------------------------------------------
def _detect_block(timer: RoundTimer) -> tuple[int, dict[str, float]]:
    """Largest B in (32, 16, 8, 4) with t(conv 1.5B ch) ~ t(conv 2B ch): the runtime pads channels to B."""
    # 1.5B, not B+1: ORT's NCHWc conv has a cheaper path for 16k+1 input channels.
    cands = (32, 16, 8, 4)
    items = []
    for b in cands:
        hw = 16 if b >= 16 else 64
        for c in (b + b // 2, 2 * b):
            items.append((nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False)).eval(), (1, c, hw, hw)))
    t = timer.run(items, 2 * timer.s.kernel_budget_ms, "channel block")
    ratios = {f"{b + b // 2}/{2 * b}": t[2 * k] / max(t[2 * k + 1], 1e-6) for k, b in enumerate(cands)}
    for k, b in enumerate(cands):
        if t[2 * k] / max(t[2 * k + 1], 1e-6) > 0.85:
            return b, ratios
    return 1, ratios


def _cache_sweep(timer: RoundTimer, quick: bool) -> dict[str, Any]:
    """Chains of identical layers outgrowing the cache: DRAM ramp c0..c1 and roofline kappa_conv/linear, p."""
    # A chain of N 384-channel 3x3 convs on 2x2 maps (5.3 MB of weights each) gives the range c0..c1 of total weight
    # bytes over which weights start streaming from DRAM; hot (N=1) and cold (about 64 MB of weights) per-layer
    # times of convs of three arithmetic intensities and of a linear chain fit the smooth roofline
    # cold = (hot^p + (kappa * weight_bytes)^p)^(1/p).
    ramp_ns = (1, 2, 4, 8, 12) if quick else (1, 2, 3, 4, 6, 8, 12, 16)
    chains = [("conv", 384, 2, n) for n in ramp_ns] + [("conv", 256, 4, 1), ("conv", 256, 4, 27),
                                                       ("conv", 128, 8, 1), ("conv", 128, 8, 108),
                                                       ("linear", 1024, 1, 1), ("linear", 1024, 1, 16)]
    items = []
    for fam, c, hw, n in chains:
        if fam == "conv":
            items.append((nn.Sequential(*[nn.Conv2d(c, c, 3, padding=1, bias=False) for _ in range(n)]).eval(),
                          (1, c, hw, hw)))
        else:
            items.append((nn.Sequential(*[nn.Linear(c, c, bias=False) for _ in range(n)]).eval(), (1, c)))
    t = timer.run(items, 4 * timer.s.kernel_budget_ms, "cache")
    per = {(fam, c, hw, n): ti / n for (fam, c, hw, n), ti in zip(chains, t)}
    out: dict[str, Any] = {"per_layer_ms": [[*k, v] for k, v in per.items()]}
    if any(math.isnan(v) for v in per.values()):
        return out
    wb = {("conv", 384, 2): 384 * 384 * 9 * 4, ("conv", 256, 4): 256 * 256 * 9 * 4,
          ("conv", 128, 8): 128 * 128 * 9 * 4, ("linear", 1024, 1): 1024 * 1024 * 4}
    pairs = {k: (per[(*k, 1)], statistics.fmean([per[(*k, n)] for n in ramp_ns[-2:]]) if k[1] == 384 else
                 per[(*k, max(n for f, c, h, n in chains if (f, c, h) == k))]) for k in wb}
    best = None
    for p in [1.0 + 0.05 * i for i in range(21)]:
        for kappa in [0.0] + [1e-9 * 1.03 ** i for i in range(160)]:
            err = sum(((h ** p + (kappa * wb[k]) ** p) ** (1 / p) / c - 1) ** 2
                      for k, (h, c) in pairs.items() if k[0] == "conv")
            if best is None or err < best[0]:
                best = (err, p, kappa)
    _err, p, k_conv = best
    (h, c), w = pairs[("linear", 1024, 1)], wb[("linear", 1024, 1)]
    k_lin = max(c ** p - h ** p, 0.0) ** (1 / p) / w
    h, cold = pairs[("conv", 384, 2)]
    span = max(cold - h, 1e-9)
    fracs = [min(1.0, max(0.0, (per[("conv", 384, 2, n)] - h) / span)) for n in ramp_ns]
    weights = [n * wb[("conv", 384, 2)] for n in ramp_ns]
    grid = [2 ** (20 + k / 4) for k in range(37)]  # 1 MB .. 512 MB
    ramp = lambda x, a, b: min(1.0, max(0.0, (x - a) / (b - a)))  # noqa: E731
    _e, c0, c1 = min((sum((ramp(x, a, b) - f) ** 2 for x, f in zip(weights, fracs)), a, b)
                     for a in grid for b in grid if b > a)
    return {**out, "kappa_conv": k_conv, "kappa_linear": k_lin, "roofline_p": p, "c0_bytes": c0, "c1_bytes": c1}


def _fusion(timer: RoundTimer) -> dict[str, Any]:
    """Cost fraction of BN, ReLU and residual add left after a conv (0: fused away, 1: standalone)."""
    # Cheap convs on large maps (element-wise work is a sizeable part): conv, conv+BN, conv+BN+ReLU,
    # relu(x + BN(conv(x))), and BN, ReLU, add alone.
    items, shapes = [], []
    for c, hw, k in ((32, 48, 1), (16, 64, 3)):
        shape = (1, c, hw, hw)
        conv = lambda: nn.Conv2d(c, c, k, padding=k // 2, bias=False)  # noqa: E731
        items += [(nn.Sequential(conv()), shape), (nn.Sequential(conv(), nn.BatchNorm2d(c)), shape),
                  (nn.Sequential(conv(), nn.BatchNorm2d(c), nn.ReLU()), shape),
                  (Residual(nn.Sequential(conv(), nn.BatchNorm2d(c))), shape),
                  (nn.Sequential(nn.BatchNorm2d(c)), shape), (nn.Sequential(nn.ReLU()), shape),
                  (nn.Sequential(Replay(add_op, (X, X), {})), shape)]
        shapes.append(list(shape))
    t = timer.run([(m.eval(), sh) for m, sh in items], 3 * timer.s.kernel_budget_ms, "fusion")
    fn, fe, raw = [], [], []
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    for k in range(len(shapes)):
        c, cb, cbr, res, bn, relu, add = t[7 * k:7 * k + 7]
        fn.append(clip((cb - c) / max(bn, 1e-4)))
        fe += [clip((cbr - cb) / max(relu, 1e-4)), clip((res - cbr) / max(add, 1e-4))]
        raw.append({"shape": shapes[k], "conv": c, "conv_bn": cb, "conv_bn_relu": cbr, "conv_bn_add_relu": res,
                    "bn": bn, "relu": relu, "add": add})
    if any(math.isnan(v) for v in fn + fe):
        return {"measured": raw}
    return {"norm": statistics.fmean(fn), "elementwise": statistics.fmean(fe), "measured": raw}


def random_plan(cg: ChannelGraph, rng: random.Random, width_range: tuple[float, float] = (0.5, 2.0),
                res_range: tuple[float, float] = (0.75, 1.5)) -> ScalingPlan:
    """Per-group random widths (multiples of 8 where the group is) and a random resolution."""
    widths = {}
    for g in cg.scalable:
        step = g.divisor * 8 // math.gcd(8, g.divisor) if g.width >= 16 and g.width % 8 == 0 else g.divisor
        widths[g.name] = max(step, round(g.width * rng.uniform(*width_range) / step) * step)
    res = cg.gm.meta[META].get("resolution")
    if res and len(res) == 2 and res_range != (1.0, 1.0):
        m = 8 if min(res) >= 32 else 4
        f = rng.uniform(*res_range)
        res = tuple(max(m, int(round(r * f / m)) * m) for r in res)
        return ScalingPlan(widths=widths, resolution=res)
    return ScalingPlan(widths=widths)


def plan_model(cg: ChannelGraph, plan: ScalingPlan) -> tuple[nn.Module, tuple[int, ...]]:
    """The transformed model (resolution fed directly at the input) and its input shape."""
    import fxscale
    new = fxscale.transform(cg.gm, plan, init="reinit", resolution_mode="input", cg=cg)
    return new.eval(), tuple(new.meta[META]["input_shapes"][0])


def _calibrate(timer: RoundTimer, prof: DeviceProfile, entries: Sequence[ModelEntry], rng: random.Random,
               settings: Settings, mode: str) -> tuple[Optional[Calibration], Optional[dict[str, Any]]]:
    """The whole-model calibration and its quality check (CALIBRATION_WARN_MAPE, DRIFT_THRESHOLD).

    When the end-to-end MAPE after calibration is above CALIBRATION_WARN_MAPE, the reference models are timed once
    more; if their median change exceeds DRIFT_THRESHOLD (the machine drifted), the calibration is refitted on the new
    timings. A MAPE still above the threshold is reported with warnings.warn (one `fxscale: warning:` line in the CLI).
    """
    items, meta = [], []
    pred = LatencyPredictor(prof)
    for e in (e for e in entries if e.calibrate):
        plans = [ScalingPlan()] + [random_plan(e.cg, rng) for _ in range(settings.calibration_plans)]
        for plan in plans:
            try:
                items.append(plan_model(e.cg, plan))
                meta.append((e.name, fingerprint(e.cg), plan, pred.by_kind(e.cg, plan, raw=True)))
            except FxscaleError as err:
                timer.failures.append(f"calibration {e.name}: {err}")
    if not items:
        return None, None

    def fit(times: Sequence[float]) -> Calibration:
        points = [{"model": name, "fingerprint": fp, "plan": plan.to_json(indent=0), "measured_ms": ms,
                   "by_kind": by_kind} for (name, fp, plan, by_kind), ms in zip(meta, times) if not math.isnan(ms)]
        priors = {k: prof.scale(k) for p in points for k in p["by_kind"]}  # COLD_KIND: 1, KERNEL_KIND: 0
        return fit_calibration(points, priors, prof.overhead_ms, mode=mode)

    first = timer.run(items, settings.calibration_budget_ms, "calibration", chunk=8, subtract=False)
    cal = fit(first)
    check: dict[str, Any] = {"threshold_mape": CALIBRATION_WARN_MAPE, "drift_threshold": DRIFT_THRESHOLD,
                             "mape_after": cal.mape_after}
    if cal.n and cal.mape_after > CALIBRATION_WARN_MAPE:
        # poor: re-measure the reference models once; if they moved (drift between profiling and now, or within
        # the calibration), refit on the new measurements
        again = timer.run(items, settings.calibration_budget_ms, "recalibration", chunk=8, subtract=False)
        drift = _median_drift(first, again)
        check.update(remeasured=True, drift=drift)
        if drift > DRIFT_THRESHOLD:
            refit = fit(again)
            check.update(refit=True, mape_before_refit=cal.mape_after, mape_after=refit.mape_after)
            cal = refit
        if cal.mape_after > CALIBRATION_WARN_MAPE:
            warnings.warn(f"latency profile calibration is poor: end-to-end MAPE {cal.mape_after:.1%} after "
                          f"calibration (warning above {CALIBRATION_WARN_MAPE:.0%}; re-measured drift "
                          f"{drift:.1%}{', refitted' if check.get('refit') else ''}); predictions for these models "
                          "may be off by that much, profile on a quieter machine or with more calibration plans")
    return cal, check


def _median_drift(a: Sequence[float], b: Sequence[float]) -> float:
    """Median |b/a - 1| over pairs where both timings exist (0 when none do)."""
    rel = sorted(abs(y / x - 1) for x, y in zip(a, b) if x > 0 and not (math.isnan(x) or math.isnan(y)))
    return rel[len(rel) // 2] if rel else 0.0


def profile(target: Any, models_or_shapes: Iterable[Any], *, quick: bool = False,
            settings: Optional[Settings] = None, calibration: str = "per_kind",
            progress: Optional[Progress] = None) -> DeviceProfile:
    """Profile `target` around the layers of the given models and return a fitted DeviceProfile."""
    t0 = time.perf_counter()
    s = settings or (Settings.quick() if quick else Settings())
    entries = resolve_models(models_or_shapes)
    rng = random.Random(s.seed)
    timer = RoundTimer(target, s, progress)
    specs = kernel_specs(entries)
    if not specs:
        raise ProfileError("the given models have no costing layers to profile")
    convs = any(sp.family == "conv" for sp in specs)
    block, block_ratios = _detect_block(timer) if convs else (1, {})
    cache = _cache_sweep(timer, quick) if convs else {}
    prof = DeviceProfile(target=dict(target.describe()), kinds={}, channel_block=block,
                         cache={k: v for k, v in cache.items() if not isinstance(v, dict)})
    hot = prof.cache.get("c0_bytes", math.inf)
    by_kind: dict[str, list[int]] = {}
    for i, sp in enumerate(specs):
        by_kind.setdefault(str(sp.kind), []).append(i)  # grid in the order of the profile's (string) keys
    samples: list[KernelSample] = []
    seen: set = set()
    for kind, idx in sorted(by_kind.items()):
        n = s.points_per_kind or min(40, max(16, 8 + 4 * len(idx)))
        for j in range(n):
            smp = draw_sample(specs, idx[j % len(idx)], rng, block, prof.dtype_bytes, seen, max_weight_bytes=hot)
            if smp is not None:
                samples.append(smp)
    _measure(timer, prof, samples, s.kernel_budget_ms, "kernels")
    for r in range(s.adaptive_rounds):
        new = []
        for kind, group in _group(samples).items():
            if len(group) < 4:
                continue
            loo = loo_errors(np.array([[g.macs_f, g.bytes_f, g.weight_bytes] for g in group]),
                             np.array([g.ms for g in group]))
            for k in np.argsort(-loo)[:s.adaptive_points]:
                smp = draw_sample(specs, group[k].spec, rng, block, prof.dtype_bytes, seen, near=group[k],
                            max_weight_bytes=hot)
                if smp is not None:
                    new.append(smp)
        _measure(timer, prof, new, s.kernel_budget_ms, f"adaptive {r + 1}")
        samples += new
    prof.kinds = {str(kind): fit_kind(str(kind), [[g.macs_f, g.bytes_f, g.weight_bytes, g.ms] for g in group])
                  for kind, group in sorted(_group(samples).items(), key=lambda kv: str(kv[0]))}
    fusion = _fusion(timer) if convs else {}
    prof.fusion = {k: v for k, v in fusion.items() if k in FUSED_FAMILIES}
    prof.overhead_ms = timer.overhead
    prof.calibration, check = _calibrate(timer, prof, entries, rng, s, calibration)
    prof.meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fxscale_version": _version(),
                 "models": [{"name": e.name, "input_shape": list(e.input_shape), "calibrated": e.calibrate}
                            for e in entries],
                 "settings": {k: getattr(s, k) for k in s.__dataclass_fields__}, "quick": quick,
                 "clock": "thread" if use_cpu_clock(target, s.clock) else "wall",
                 "channel_block_ratios": block_ratios, "cache_sweep": cache,
                 "fusion_measurements": fusion.get("measured", []), "kernel_samples": len(samples),
                 "failures": timer.failures, "seconds": round(time.perf_counter() - t0, 1),
                 "calibration_check": check}
    return prof


def _measure(timer: RoundTimer, prof: DeviceProfile, samples: list[KernelSample], budget_ms: float, stage: str) -> None:
    """Time samples (hot caches: their weights were kept below the cache ramp when they were drawn)."""
    times = timer.run([(smp.model, smp.shape) for smp in samples], budget_ms, stage)
    for smp, ms in zip(samples, times):
        smp.ms = ms
        smp.model = None  # free the weights


def _group(samples: Sequence[KernelSample]) -> dict[Optional[KernelKind], list[KernelSample]]:
    out: dict[Optional[KernelKind], list[KernelSample]] = {}
    for smp in samples:
        if not math.isnan(smp.ms):
            out.setdefault(smp.kind, []).append(smp)
    return out


def _version() -> str:
    import fxscale
    return getattr(fxscale, "__version__", "?")


def cli_main(args: Any) -> int:
    """`fxscale profile`: profile a target around the given models with a rich progress bar, write the JSON."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from fxscale.hw.targets import get_target
    target = get_target(args.target, **({"threads": args.threads} if args.target in ("ort", "torch") else {}))
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise ProfileError("--models needs at least one model name")
    if args.input_size:
        names = [m if "@" in m else f"{m}@{args.input_size}" for m in names]
    settings = (Settings.quick if args.quick else Settings)(seed=args.seed)
    console = Console(stderr=True)  # progress on stderr, results on stdout
    with Progress(TextColumn("{task.description:14s}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        prof = profile(target, names, quick=args.quick, settings=settings, progress=progress)
    try:
        path = prof.save(args.out)
    except OSError as e:
        raise ProfileError(f"cannot write latency profile {args.out}: {e.strerror or e}") from e
    cal = prof.calibration
    console.print(f"[bold]{args.target}[/] profiled in {prof.meta.get('seconds')} s: {len(prof.kinds)} kernel kinds, "
                  f"channel block {prof.channel_block}"
                  + (f", end-to-end MAPE {cal.mape_before:.1%} -> {cal.mape_after:.1%} after calibration "
                     f"({cal.n} points)" if cal and cal.n else "") + f"; wrote {path}")
    for kind, fit in sorted(prof.kinds.items()):
        console.print(f"  {kind:14s} n={fit.n:3d}  R2={fit.r2:6.3f}  MAPE={fit.mape:6.1%}  held-out MAPE: linear "
                      f"{fit.cv_mape_linear:6.1%}, GBR {fit.cv_mape_gbr:6.1%} -> {fit.model}", highlight=False)
    return 0


__all__ = ["CALIBRATION_WARN_MAPE", "DRIFT_THRESHOLD", "DeviceProfile", "LayerShape", "ModelEntry", "ProfileError", "Settings", "cli_main", "plan_model",
           "profile", "random_plan", "resolve_models"]
