"""`fxscale scale`: baseline, latency model, alpha search, importance fit, Algorithm 1, baselines, training, report.

Every stage writes out/stages/<stage>.json (atomically) keyed by a hash of the settings it depends on, so a
rerun with the same settings resumes where it stopped; final artefacts are written only after all stages.
The keys come from STAGES: each stage names the ScaleConfig fields it reads and the stages whose results it
consumes, and its key hashes those fields with the upstream keys, so a changed setting reruns every stage below it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
from torch import nn

import fxscale
from fxscale.analysis.graph import ChannelGraph
from fxscale.errors import FxscaleError
from fxscale.hw.latency import LatencyModel
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import Budget, Evaluator, bisect_max, scaled_resolution, uniform_widths
from fxscale.scaling.config import METHOD_NAMES, ScaleConfig, budget_limit
from fxscale.scaling.greedy import RULES, importance_aware_widths
from fxscale.scaling.powerlaw import ImportancePredictor
from fxscale.scaling.stages import (  # noqa: F401 - STAGES and friends are re-exported
    STAGES,
    UNKEYED,
    atomic_write,
    downstream,
    save_weights,
    stage_cached,
    stage_keys,
    weights_problem,
)


@dataclass
class MethodResult:
    """One scaled model: its plan, cost, measured latency and accuracy."""

    method: str
    plan: dict[str, Any]
    params: int
    flops: int
    latency_ms: float = float("nan")
    latency_p10: float = float("nan")
    latency_p90: float = float("nan")
    val_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    @property
    def utilization(self) -> float:
        """GFLOP/s = FLOPs / latency."""
        return self.flops / (self.latency_ms * 1e6) if self.latency_ms > 0 else float("nan")


class Pipeline:
    """The HACScale pipeline over one model, dataset and target, writing into an out dir."""

    def __init__(self, cfg: ScaleConfig, out: str | os.PathLike, model: Optional[nn.Module] = None,
                 log: Callable[[str], None] = print) -> None:
        cfg.validate()
        self.cfg, self.out, self.log = cfg, Path(out), log
        from fxscale.data import get_dataset
        from fxscale.hw.targets import get_target
        self.bundle = get_dataset(cfg.data, **cfg.data_kw)
        self._bundles: dict[int, Any] = {0: self.bundle}
        opts = {"threads": cfg.threads} if cfg.target in ("ort", "torch") else \
            {"threads": cfg.threads, "plan": cfg.inference_plan} if cfg.target == "hybrid" else \
            {"trtexec": cfg.trtexec} if cfg.target == "trtexec" and cfg.trtexec else {}
        self.target = get_target(cfg.target, **opts)
        from fxscale.scaling.inputs import input_model
        self.gm: fx.GraphModule = input_model(cfg, self.bundle, model, log)
        self.cg: ChannelGraph = fxscale.analyze(self.gm)
        if not self.cg.scalable:
            raise FxscaleError(f"model {cfg.model!r} has no scalable channel group; nothing to scale "
                               f"(run `fxscale analyze {cfg.model}` to see why each group is fixed)")
        self.stages = self.out / "stages"
        self.keys = stage_keys(cfg)

    # ---- stage bookkeeping ---------------------------------------------------------------------------
    def _key(self, stage: str, extra: Any = None) -> str:
        """The stage's STAGES key, combined with `extra`: the upstream results it consumes, when at hand."""
        if extra is None:
            return self.keys[stage]
        blob = json.dumps({"key": self.keys[stage], "extra": extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _stage(self, name: str, key: str, fn: Callable[[], dict[str, Any]],
               valid: Optional[Callable[[dict[str, Any]], Optional[str]]] = None) -> dict[str, Any]:
        return stage_cached(self.stages, name, key, fn, self.log, valid)

    # ---- helpers -------------------------------------------------------------------------------------
    def build(self, plan: ScalingPlan, seed: int = 0) -> fx.GraphModule:
        """The plan's model, freshly initialised (every method trains from scratch)."""
        new = fxscale.transform(self.gm, plan, init="reinit", resolution_mode="input", max_memory=self.cfg.max_memory)
        torch.manual_seed(seed)
        for m in new.modules():
            if m is not new and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return new

    def bundle_for(self, seed: int) -> Any:
        """The data a run with training seed `seed` trains, validates and tests on. With split_per_seed (the
        default) it is the dataset built with split seed base + seed (base: data_kw's seed, else 0), so runs over
        several seeds sample the data split too and seed 0 is `self.bundle`; otherwise `self.bundle` for all. A
        dataset with fixed official splits varies what its seed varies (CIFAR: the validation hold-out; glyphs:
        the rendering and the font split)."""
        if not self.cfg.split_per_seed:
            return self.bundle
        if seed not in self._bundles:
            from fxscale.data import get_dataset
            kw = {**self.cfg.data_kw, "seed": int(self.cfg.data_kw.get("seed", 0)) + seed}
            self._bundles[seed] = get_dataset(self.cfg.data, **kw)
        return self._bundles[seed]

    def resolution_of(self, plan: ScalingPlan) -> tuple[int, int]:
        """Input (H, W) of a plan's model."""
        return tuple(plan.resolution or self.gm.meta["fxscale"]["resolution"])

    def train_cfg(self, epochs: int, seed: int, warm: bool = True) -> Any:
        """Training settings of one run (with start="trained" and warm: the warm fine-tune recipe of them)."""
        from fxscale.train import TrainConfig
        from fxscale.scaling.warm_pipeline import warm_of
        cfg = TrainConfig(epochs=epochs, batch_size=self.cfg.batch_size, lr=self.cfg.lr, seed=seed,
                          device=self.cfg.device, schedule="cosine", threads=1)
        w = warm_of(self) if warm else None
        return w.train_config(cfg) if w is not None else cfg

    def train_many(self, plans: list[tuple[str, ScalingPlan, int]], epochs: int) -> list[Any]:
        """Train (tag, plan, seed) jobs through the executor; returns JobOutcomes in order."""
        from fxscale.executor import get_executor
        from fxscale.train import TrainJob, run_job
        from fxscale.scaling.warm_pipeline import warm_of
        w = warm_of(self)  # start="trained": each plan applied to the trained baseline, then fine-tuned warm
        jobs = [TrainJob(w.build(p, seed) if w else self.build(p, seed), self.bundle_for(seed),
                         self.train_cfg(epochs, seed),
                         resolution=self.resolution_of(p), tag=tag, teacher=w.teacher(p, seed) if w else None)
                for tag, p, seed in plans]
        kw = ({"workers": self.cfg.workers} if self.cfg.executor == "local" else
              {"address": self.cfg.ray_address} if self.cfg.executor == "ray" else {})
        with get_executor(self.cfg.executor, **kw) as ex:
            if not self.cfg.progress or self.cfg.workers > 1 or self.cfg.executor != "local" or not _tty():
                return ex.map(run_job, jobs)
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
            outs = []
            from rich.console import Console
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          transient=True, console=Console(stderr=True)) as bar:
                task = bar.add_task(f"training {len(jobs)} x {epochs} epochs", total=len(jobs))
                for job in jobs:
                    outs += ex.map(run_job, [job])
                    bar.advance(task)
            return outs

    def measure(self, plans: list[ScalingPlan]) -> list[Any]:
        """Latency of each plan's model, timed interleaved in one session."""
        from fxscale.hw.base import MeasureProtocol
        from fxscale.scaling.measure import measure_many
        models = [self.build(p) for p in plans]
        shapes = [(1, self.bundle.input_shape[0], *self.resolution_of(p)) for p in plans]
        proto = MeasureProtocol(warmup=self.cfg.warmup, runs=self.cfg.runs, statistic="median")
        return measure_many(self.target, models, shapes, proto, rounds=self.cfg.rounds)

    # ---- stages --------------------------------------------------------------------------------------
    def latency_model(self) -> LatencyModel:
        """A device profile predictor, or the analytic model calibrated on measured variants."""
        if self.cfg.profile:
            from fxscale.hw.predictor import LatencyPredictor
            return LatencyPredictor(self.cfg.profile, mode="input")

        def calibrate() -> dict[str, Any]:
            variants = [ScalingPlan()] + [ScalingPlan(widths=uniform_widths(self.cg, w)) for w in (0.5, 1.5, 2.0)] \
                + [ScalingPlan(resolution=scaled_resolution(self.cg, r)) for r in (1.5, 2.0)] \
                + [ScalingPlan(widths=uniform_widths(self.cg, 1.5), resolution=scaled_resolution(self.cg, 1.5))]
            stats = self.measure(variants)
            costs = [fxscale.cost(self.cg, p, mode="input") for p in variants]
            return {"points": [(c.macs, c.bytes, s.median) for c, s in zip(costs, stats)]}
        pts = self._stage("latency_model", self._key("latency_model"), calibrate)["points"]
        from fxscale.scaling.measure import fit_analytic
        model = fit_analytic([(m, b) for m, b, _ in pts], [ms for _m, _b, ms in pts])
        self.log(f"[latency_model] analytic: {model.c0 * 1e3:.1f} us + {model.c_mac * 1e9:.3f} ns/MAC + "
                 f"{model.c_byte * 1e9:.4f} ns/byte; in-sample MAPE {model.mape:.1f}%")
        return model

    def alpha_search(self, lat_model: LatencyModel, budget: Budget) -> dict[str, Any]:
        """Equal-FLOPs candidates r = sqrt(s)^a, w = sqrt(s)^(1-a), s searched; best on validation (scaling.alpha)."""
        cfg = self.cfg
        alphas = (cfg.alpha,) if cfg.alpha is not None else cfg.alphas

        def run() -> dict[str, Any]:
            from fxscale.scaling.alpha import TIE_RULE, choose, equal_flops_plan, search_s, time_ties
            t0 = time.perf_counter()
            limited = budget.latency_ms is not None or budget.params is not None
            ev = Evaluator(self.cg, lat_model.predict, mode="input")
            fits = (lambda p: ev.fits(p, budget)) if cfg.search_s and limited else None
            s = search_s(self.cg, alphas, cfg.flops_scale, fits, align=cfg.align)
            plans = [equal_flops_plan(self.cg, a, s, align=cfg.align, tol=cfg.flops_tol) for a in alphas]
            cands = [{"alpha": a, "plan": json.loads(p.to_json()), **{k: p.meta[k] for k in (
                "flops_ratio", "flops_error", "within_tol", "width_multiplier")}} for a, p in zip(alphas, plans)]
            out = {"s": s, "s_max": cfg.flops_scale, "s_searched": fits is not None, "flops_tol": cfg.flops_tol,
                   "tie_rule": TIE_RULE, "candidates": cands, "alpha": alphas[0], "epochs": 0}
            if len(alphas) > 1:
                keys = [_plan_key(p) for p in plans]
                first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())  # identical plans: once
                outs = self.train_many([(alphas[i], plans[i], cfg.seeds[0]) for i in first], cfg.search_epochs)
                val = {keys[i]: o.result.best_val_acc for i, o in zip(first, outs)}
                for c, k in zip(cands, keys):
                    c["val_acc"] = val[k]
                time_ties(cands, keys, plans, lambda ps: [st.median for st in self.measure(ps)])
                out.update(alpha=choose(cands)["alpha"], epochs=len(first) * cfg.search_epochs)
            out["wall_s"] = time.perf_counter() - t0
            return out
        return self._stage("alpha", self._key("alpha"), run)

    def compound_plan(self, alpha: float) -> ScalingPlan:
        """Equation 3 of the paper: d = 1, r = sqrt(s)^alpha, w = sqrt(s)^(1 - alpha)."""
        from fxscale.scaling.baselines import compound_plan
        root = math.sqrt(self.cfg.flops_scale)
        plan = compound_plan(self.cg, 1.0, root ** (1 - alpha), root ** alpha, align=self.cfg.align)
        plan.meta["alpha"] = alpha
        return plan

    def importance_fit(self, resolution: tuple[int, int]) -> ImportancePredictor:
        """Sample width configurations (cfg.sample_mode), train, measure Taylor importance, fit I = a*C^b per group;
        with cfg.importance_holdout, check the fit on held-out configurations (fxscale.scaling.samples)."""
        from fxscale.scaling.samples import sample_and_fit
        return sample_and_fit(self, resolution)

    def run(self) -> dict[str, Any]:
        """Every stage in order; returns the results dict also written to results.json."""
        cfg = self.cfg
        lat_model = self.latency_model()
        base_pred = lat_model.predict(self.cg, ScalingPlan())
        base_params = fxscale.cost(self.cg).params
        limit_pred = budget_limit(cfg.latency_budget, base_pred, "latency", "latency budget")
        limit_params = budget_limit(cfg.memory_budget, base_params, "memory", "memory budget")
        budget = Budget(limit_pred, limit_params)
        ratio = (limit_pred / base_pred) if limit_pred is not None else None
        alpha = self.alpha_search(lat_model, budget)
        res = tuple(alpha["candidates"][[c["alpha"] for c in alpha["candidates"]].index(alpha["alpha"])]
                    ["plan"]["resolution"] or self.resolution_of(ScalingPlan()))
        pred = self.importance_fit(res)
        timer = self.timer()
        try:
            search = self._stage("search", self._key("search", extra=list(res)),
                                 lambda: self._search(lat_model, pred, budget, res, ratio, timer))
            methods = self._stage("methods", self._key("methods", extra=self._ablation_key(search)),
                                  lambda: self._method_plans(lat_model, budget, ratio, timer, search))
            plans = {"baseline": json.loads(ScalingPlan().to_json()),
                     **{n: m["plan"] for n, m in methods.items()}, **{n: r["plan"] for n, r in search["rows"].items()}}
            # the plans themselves are hashed too: a search rerun after its stage file was deleted may back off
            # differently (measured), and then the stale trained/measured models must not be reused
            results = self._stage("train", self._key("train", extra=plans), lambda: self._train_all(plans),
                                  valid=lambda r: weights_problem(self.stages / "weights", r, self.cfg.seeds))
            meas = self._stage("measure", self._key("measure", extra=plans), lambda: self._measure_all(plans, timer))
        finally:
            timer.close()
        from fxscale.scaling.results import choose_hacscale, comparisons, method_rows
        from fxscale.scaling.warm_pipeline import warm_of
        rows = method_rows(self, plans, results, meas, search, methods, alpha, ratio)
        choice = choose_hacscale(rows)
        summary = {"config": asdict(self.cfg), "alpha": alpha, "search": search, "methods": rows,
                   "method_plans": methods,  # each comparison method's predicted plan and measured back-off
                   "hacscale_choice": choice, "comparisons": comparisons(rows, cfg.seeds),
                   "warm_start": getattr(warm_of(self), "record", None),  # baseline source and noise (start=trained)
                   "importance": pred.to_dict(), "importance_check": getattr(self, "importance_check", None),
                   "importance_sampling": getattr(self, "importance_compute", None), "latency_model": lat_model.to_dict(),
                   "baseline_predicted_ms": base_pred, "budget": {**asdict(budget), "latency_ratio": ratio},
                   "conventions": {"flops": "flops = 2 x macs (multiply-accumulates); the paper's Table I 'FLOPs' "
                                   "column counts MACs", "latency_ratio": "median over interleaved rounds of the "
                                   "method's round median / the baseline's, with a 95% order-statistic interval",
                                   "test_top1_ci": "95% percentile bootstrap of the mean over seeds "
                                   "(fxscale.scaling.stats.mean_ci; nan with one seed)",
                                   "splits": "seed s trains, validates and tests on the dataset's split seed base + s"
                                   if cfg.split_per_seed else "every seed trains, validates and tests on one split"}}
        from fxscale.scaling.report import write_outputs
        write_outputs(self, summary, ScalingPlan.from_json(json.dumps(plans[choice["chosen"]])), choice["chosen"])
        return summary

    def timer(self) -> Any:
        """The PlanTimer every measured acceptance and the final measurement go through."""
        from fxscale.hw.base import MeasureProtocol
        from fxscale.scaling.measure import PlanTimer
        proto = MeasureProtocol(warmup=self.cfg.warmup, runs=self.cfg.runs, statistic="median", rounds=self.cfg.rounds)
        return PlanTimer(self.target, self.build, lambda p: (1, self.bundle.input_shape[0], *self.resolution_of(p)),
                         proto, halfwidth=self.cfg.ci_halfwidth, max_rounds=self.cfg.max_rounds)

    def variants(self) -> dict[str, dict[str, Any]]:
        """HACScale rows: `hacscale` (cfg.rule, stride, align: the paper's Algorithm 1 by default) and the variants."""
        cfg = self.cfg
        rows = {"hacscale": {"rule": cfg.rule, "stride": cfg.stride, "align": cfg.align}}
        if "align8" in cfg.variants and cfg.align != 8:
            rows["hacscale-align8"] = {"rule": cfg.rule, "stride": cfg.stride, "align": 8}
        if "cost" in cfg.variants:
            other = next(r for r in RULES if r != cfg.rule)
            rows[f"hacscale-{other}"] = {"rule": other, "stride": cfg.stride, "align": cfg.align}
        return rows

    def _search(self, lat_model: LatencyModel, pred: ImportancePredictor, budget: Budget, res: tuple[int, int],
                ratio: Optional[float], timer: Any) -> dict[str, Any]:
        from fxscale.scaling.backoff import BackOff, back_off, dedupe
        t0 = time.perf_counter()
        start = ScalingPlan(resolution=res)
        h0, w0 = self.resolution_of(ScalingPlan())
        if budget.latency_ms is not None and lat_model.predict(self.cg, start) > budget.latency_ms:
            fits = lambda f: lat_model.predict(self.cg, ScalingPlan(resolution=scaled_resolution(self.cg, f))) \
                <= budget.latency_ms  # noqa: E731
            f = bisect_max(fits, 1.0, res[0] / h0, steps=12)
            self.log(f"[search] resolution {res} alone breaks the latency budget; starting at "
                     f"{scaled_resolution(self.cg, f)} instead")
            start = ScalingPlan(resolution=scaled_resolution(self.cg, f))
        sh, sw = start.resolution
        ramp = [ScalingPlan(resolution=(h0 + k, w0 + round(k * (sw - w0) / max(1, sh - h0))))
                for k in range(1, sh - h0)]  # the resolution knob, below the start, for the back-off
        out: dict[str, Any] = {"start": json.loads(start.to_json()), "rows": {}, "setup_wall_s": 0.0}
        out["setup_wall_s"] = time.perf_counter() - t0
        for name, v in self.variants().items():
            t1 = time.perf_counter()
            r = importance_aware_widths(self.cg, pred, lat_model.bind(self.cg, start), budget, start=start,
                                        stride=v["stride"], rule=v["rule"], align=v["align"])
            gain = sum(pred(g, w) * (w - self.cg[g].width) for g, w in r.plan.widths.items())
            ladder = dedupe([ScalingPlan(), *ramp, *(r.prefix(k) for k in range(len(r.steps) + 1))])
            bo = back_off(ladder, timer.ratio, ratio) if ratio is not None else BackOff(len(ladder) - 1, None)
            plan = ladder[bo.index]
            plan.meta = {"method": name, **v, "steps": plan.meta.get("steps", 0)}
            if bo.index < len(ladder) - 1:
                self.log(f"[search] {name}: measured latency over budget, backed off from {len(ladder) - 1} to "
                         f"{bo.index} of its resolution and width steps")
            out["rows"][name] = {"plan": json.loads(plan.to_json()), **v, "steps": len(r.steps), "stopped": r.stopped,
                                 "predicted_ms": r.latency_ms, "params": r.params, "importance_added": gain,
                                 "steps_kept": plan.meta["steps"], "backoff": bo.to_dict(len(ladder)),
                                 "wall_s": time.perf_counter() - t1}
        main = out["rows"]["hacscale"]
        out.update(plan=main["plan"], steps_kept=main["steps_kept"],
                   measured_ratio=(main["backoff"]["measured"] or {}).get("ratio"))
        return out

    def _ablation_kw(self, search: dict[str, Any]) -> dict[str, Any]:
        """What the ablation rows (baselines.ablation) take from HACScale: its final resolution, align, stride, seed."""
        res = search["rows"]["hacscale"]["plan"]["resolution"] or list(self.resolution_of(ScalingPlan()))
        return {"resolution": tuple(res), "align": self.cfg.align, "stride": self.cfg.stride, "seed": self.cfg.seeds[0]}

    def _ablation_key(self, search: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The methods stage's extra key: HACScale's plan and settings, when an ablation row is asked for."""
        from fxscale.scaling.baselines import ABLATIONS
        if not set(self.cfg.methods) & set(ABLATIONS):
            return None
        return {**self._ablation_kw(search), "hacscale": search["rows"]["hacscale"]["plan"]}

    def _method_plans(self, lat_model: LatencyModel, budget: Budget, ratio: Optional[float],
                      timer: Any, search: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        if not self.cfg.methods:
            return {}
        from fxscale.scaling.backoff import back_off
        from fxscale.scaling.baselines import ABLATIONS, TABLE, ablation_ladder, get_baseline, knob_ladder
        ev = Evaluator(self.cg, lat_model.predict, mode="input")
        out = {}
        for name in self.cfg.methods:
            t0 = time.perf_counter()
            kw = dict(flops_scale=None if budget.latency_ms else self.cfg.flops_scale, align=self.cfg.baseline_align,
                      importance=getattr(self, "base_importance", None))
            if name in ABLATIONS:  # HACScale's resolution, align and stride: only the width allocation differs
                kw.update(self._ablation_kw(search or {}))
            if name == "neuralscale":  # the published method prunes the trained baseline (baselines.descent)
                from fxscale.scaling.baselines.descent import pipeline_trajectory
                kw["importance"] = traj = pipeline_trajectory(self)
            try:
                plan = get_baseline(name)(self.cg, ev, budget, **kw)
            except FxscaleError as e:
                self.log(f"[methods] {name}: skipped ({e})")
                continue
            rec: dict[str, Any] = {"predicted_plan": json.loads(plan.to_json())}
            if ratio is not None:  # the same measured back-off as HACScale's, over the method's own knob
                ladder = ablation_ladder(name, self.cg, ev, budget, plan, **kw) if name in ABLATIONS else \
                    knob_ladder(TABLE[name], self.cg, ev, budget, plan, **kw)
                bo = back_off(ladder, timer.ratio, ratio)
                plan = ladder[bo.index]
                rec["backoff"] = bo.to_dict(len(ladder))
                if bo.index < len(ladder) - 1:
                    self.log(f"[methods] {name}: measured latency over budget, backed off from {len(ladder) - 1} "
                             f"to {bo.index} of its knob steps")
            rec.update(plan=json.loads(plan.to_json()), align=kw["align"], wall_s=time.perf_counter() - t0)
            if name == "neuralscale":
                rec.update(search_epochs=(len(traj.iterations)) * self.cfg.search_epochs,
                           search_what="baseline + descent trainings, pruning with fine-tunes, knob search + "
                                       "measured back-off", trajectory=traj.iterations)
            out[name] = rec
        return out

    def _train_all(self, plans: dict[str, Any]) -> dict[str, Any]:
        jobs = [((name, s), ScalingPlan.from_json(json.dumps(p)), s) for name, p in plans.items()
                for s in self.cfg.seeds]
        self.log(f"[train] {len(jobs)} runs x {self.train_cfg(self.cfg.epochs, 0).epochs} epochs")  # warm: fewer
        outs = self.train_many(jobs, self.cfg.epochs)
        res: dict[str, Any] = {}
        wdir = self.stages / "weights"
        wdir.mkdir(parents=True, exist_ok=True)
        for (tag, _p, _s), o in zip(jobs, outs):
            name, seed = tag
            r = res.setdefault(name, {"val_acc": [], "test_acc": [], "epochs": [], "wall_s": []})
            r["val_acc"].append(o.result.best_val_acc)
            r["test_acc"].append(o.test_acc)
            r["epochs"].append(o.result.epochs)
            r["wall_s"].append(o.result.seconds)
            save_weights(o.state_dict, wdir / f"{name}_s{seed}.pt")
        return res

    def _measure_all(self, plans: dict[str, Any], timer: Any) -> dict[str, Any]:
        """Every plan timed interleaved in the same rounds (adaptive, until every ratio interval is tight)."""
        names = list(plans)
        ratios, rounds = timer.measure([ScalingPlan.from_json(json.dumps(plans[n])) for n in names])
        device = str(self.target.describe().get("device", self.cfg.target))
        return {n: {"median": statistics.median(v), "p10": _quantile(v, 0.1), "p90": _quantile(v, 0.9),
                    "device": device, "ratio": m.to_dict()} for n, m, v in zip(names, ratios, rounds)}


def _plan_key(plan: ScalingPlan) -> str:
    return ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution, depths=dict(plan.depths)).to_json(
        indent=None)


def _quantile(values: list[float], q: float) -> float:
    vals = sorted(values)
    return vals[min(len(vals) - 1, max(0, round(q * (len(vals) - 1))))]


def _tty() -> bool:
    """True when stderr is a terminal (a progress bar elsewhere only leaves blank lines in the log)."""
    import sys
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def scale(model: str | nn.Module = "digits_resnet", out: str | os.PathLike = "out", **settings: Any) -> dict[str, Any]:
    """Run the whole HACScale pipeline (see ScaleConfig for settings); returns the results summary."""
    net = None if isinstance(model, str) else model
    cfg = ScaleConfig(model=model if isinstance(model, str) else type(model).__name__, **settings)
    return Pipeline(cfg, out, net).run()


__all__ = ["METHOD_NAMES", "RULES", "STAGES", "MethodResult", "Pipeline", "ScaleConfig", "downstream", "scale",
           "stage_keys"]
