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
import warnings
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
from fxscale.scaling.greedy import RULES, back_off, importance_aware_widths
from fxscale.scaling.importance import Importance, importance
from fxscale.scaling.powerlaw import (
    POOR_R2,
    ImportancePredictor,
    fit_predictor,
    sample_configs,
)
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
        opts = {"threads": cfg.threads} if cfg.target in ("ort", "torch") else \
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

    def resolution_of(self, plan: ScalingPlan) -> tuple[int, int]:
        """Input (H, W) of a plan's model."""
        return tuple(plan.resolution or self.gm.meta["fxscale"]["resolution"])

    def train_cfg(self, epochs: int, seed: int) -> Any:
        """Training settings of one run."""
        from fxscale.train import TrainConfig
        return TrainConfig(epochs=epochs, batch_size=self.cfg.batch_size, lr=self.cfg.lr, seed=seed,
                           device=self.cfg.device, schedule="cosine", threads=1)

    def train_many(self, plans: list[tuple[str, ScalingPlan, int]], epochs: int) -> list[Any]:
        """Train (tag, plan, seed) jobs through the executor; returns JobOutcomes in order."""
        from fxscale.executor import get_executor
        from fxscale.train import TrainJob, run_job
        jobs = [TrainJob(self.build(p, seed), self.bundle, self.train_cfg(epochs, seed),
                         resolution=self.resolution_of(p), tag=tag) for tag, p, seed in plans]
        kw = {"workers": self.cfg.workers} if self.cfg.executor == "local" else {}
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

    def alpha_search(self) -> dict[str, Any]:
        """Train the compound candidates r = sqrt(s)^a, w = sqrt(s)^(1-a) and keep the best on validation."""
        cfg = self.cfg
        alphas = (cfg.alpha,) if cfg.alpha is not None else cfg.alphas

        def run() -> dict[str, Any]:
            plans = [self.compound_plan(a) for a in alphas]
            if len(alphas) == 1:
                return {"alpha": alphas[0], "candidates": [{"alpha": alphas[0], "plan": json.loads(plans[0].to_json())}]}
            outs = self.train_many([(a, p, cfg.seeds[0]) for a, p in zip(alphas, plans)], cfg.search_epochs)
            cands = [{"alpha": a, "val_acc": o.result.best_val_acc, "plan": json.loads(p.to_json())}
                     for a, p, o in zip(alphas, plans, outs)]
            best = max(cands, key=lambda c: c["val_acc"])
            return {"alpha": best["alpha"], "candidates": cands}
        return self._stage("alpha", self._key("alpha"), run)

    def compound_plan(self, alpha: float) -> ScalingPlan:
        """Equation 3 of the paper: d = 1, r = sqrt(s)^alpha, w = sqrt(s)^(1 - alpha)."""
        from fxscale.scaling.baselines import compound_plan
        root = math.sqrt(self.cfg.flops_scale)
        plan = compound_plan(self.cg, 1.0, root ** (1 - alpha), root ** alpha, align=self.cfg.align)
        plan.meta["alpha"] = alpha
        return plan

    def importance_fit(self, resolution: tuple[int, int]) -> ImportancePredictor:
        """Sample width configurations, train briefly, measure Taylor importance, fit I = a*C^b per group."""
        cfg = self.cfg
        configs = sample_configs(self.cg, cfg.samples, seed=cfg.seeds[0])
        cache = self.out / "cache" / "importance"
        samples: list[Importance] = []
        todo = []
        for widths in configs:
            plan = ScalingPlan(widths=widths, resolution=resolution)
            key = self._key("importance_sample", extra=plan.to_json())
            path = cache / f"{key}.json"
            if path.exists():
                samples.append(Importance.from_dict(json.loads(path.read_text())))
            else:
                todo.append((path, plan))
        if todo:
            self.log(f"[importance] training {len(todo)} of {len(configs)} sampled width configurations "
                     f"({len(configs) - len(todo)} cached)")
            outs = self.train_many([(str(p), plan, cfg.seeds[0]) for p, plan in todo], cfg.sample_epochs)
            for (path, plan), o in zip(todo, outs):
                model = self.build(plan)
                model.load_state_dict(o.state_dict)
                imp = importance(model, self.bundle, batches=8, batch_size=cfg.batch_size,
                                 resolution=self.resolution_of(plan))
                missing = sorted(set(plan.widths) - set(imp.groups))
                if missing:
                    raise FxscaleError(f"importance of the sampled model has no groups {missing}")
                cache.mkdir(parents=True, exist_ok=True)
                atomic_write(path, json.dumps(imp.to_dict()))
                samples.append(imp)
        base = {g.name: g.width for g in self.cg.scalable}
        self.base_importance = next((s.channels for s in samples if s.widths == base), None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pred = fit_predictor(samples)
        for w in caught:
            self.log(f"[importance] warning: {w.message}")
        if pred.poorly_fit():
            self.log(f"[importance] warning: poorly fitted groups (log-space R² < {POOR_R2}): "
                     f"{', '.join(pred.poorly_fit())}")
        return pred

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
        alpha = self.alpha_search()
        res = tuple(alpha["candidates"][[c["alpha"] for c in alpha["candidates"]].index(alpha["alpha"])]
                    ["plan"]["resolution"] or self.resolution_of(ScalingPlan()))
        pred = self.importance_fit(res)
        search = self._stage("search", self._key("search", extra=list(res)),
                             lambda: self._search(lat_model, pred, budget, res, ratio))
        plans = self._stage("methods", self._key("methods"), lambda: self._method_plans(lat_model, budget, pred))
        plans["hacscale"] = search["plan"]
        other = next(r for r in RULES if r != cfg.rule)
        plans[f"hacscale-{other}"] = search["rules"][other]["plan"]  # the other rule, trained for comparison
        plans = {"baseline": json.loads(ScalingPlan().to_json()), **plans}
        # the plans themselves are hashed too: a search rerun after its stage file was deleted may back off
        # differently (measured), and then the stale trained/measured models must not be reused
        results = self._stage("train", self._key("train", extra=plans), lambda: self._train_all(plans),
                              valid=lambda res: weights_problem(self.stages / "weights", res, self.cfg.seeds))
        meas = self._stage("measure", self._key("measure", extra=plans), lambda: self._measure_all(plans))
        rows = self._rows(plans, results, meas)
        if ratio is not None:  # the same measured check for every method (baselines have no back-off of their own)
            base_ms = rows[0]["latency_ms"]
            for r in rows:
                r["within_budget"] = bool(r["latency_ms"] <= ratio * base_ms)
        summary = {"config": asdict(self.cfg), "alpha": alpha, "search": search, "methods": rows,
                   "importance": pred.to_dict(), "latency_model": lat_model.to_dict(),
                   "baseline_predicted_ms": base_pred, "budget": asdict(budget)}
        from fxscale.scaling.report import write_outputs
        write_outputs(self, summary, ScalingPlan.from_json(json.dumps(search["plan"])))
        return summary

    def _search(self, lat_model: LatencyModel, pred: ImportancePredictor, budget: Budget, res: tuple[int, int],
                ratio: Optional[float]) -> dict[str, Any]:
        start = ScalingPlan(resolution=res)
        if budget.latency_ms is not None and lat_model.predict(self.cg, start) > budget.latency_ms:
            h0 = self.resolution_of(ScalingPlan())[0]
            fits = lambda f: lat_model.predict(self.cg, ScalingPlan(resolution=scaled_resolution(self.cg, f))) \
                <= budget.latency_ms  # noqa: E731
            f = bisect_max(fits, 1.0, res[0] / h0, steps=12)
            self.log(f"[search] resolution {res} alone breaks the latency budget; starting at "
                     f"{scaled_resolution(self.cg, f)} instead")
            start = ScalingPlan(resolution=scaled_resolution(self.cg, f))
        out: dict[str, Any] = {"start": json.loads(start.to_json()), "rules": {}}
        base = self.measure([ScalingPlan()])[0].median if ratio is not None else None
        for rule in RULES:  # both rules run and are measured; the chosen one is "hacscale"
            r = importance_aware_widths(self.cg, pred, lat_model.bind(self.cg, start), budget, start=start,
                                        stride=self.cfg.stride, rule=rule, align=self.cfg.align)
            gain = sum(pred(g, w) * (w - self.cg[g].width) for g, w in r.plan.widths.items())
            k, measured_ratio = self._back_off(r, ratio, base)
            plan = r.prefix(k)
            plan.meta.pop("start_widths", None)
            out["rules"][rule] = {"plan": json.loads(plan.to_json()), "steps": len(r.steps), "stopped": r.stopped,
                                  "predicted_ms": r.latency_ms, "params": r.params, "importance_added": gain,
                                  "steps_kept": k, "measured_ratio": measured_ratio}
        out.update({k: out["rules"][self.cfg.rule][k] for k in ("plan", "steps_kept", "measured_ratio")})
        return out

    def _back_off(self, r: Any, ratio: Optional[float], base: Optional[float]) -> tuple[int, Optional[float]]:
        """Steps of a greedy result kept after measuring against the baseline (interleaved)."""
        if ratio is None or base is None:
            return len(r.steps), None

        def measure(plan: ScalingPlan) -> float:
            a, b = self.measure([ScalingPlan(), plan])
            return b.median / a.median * base
        k, m = back_off(r, measure, ratio * base)
        if k < len(r.steps):
            self.log(f"[search] {r.plan.meta['rule']} rule: measured latency over budget, backed off from "
                     f"{len(r.steps)} to {k} steps")
        return k, m / base

    def _method_plans(self, lat_model: LatencyModel, budget: Budget, pred: ImportancePredictor) -> dict[str, Any]:
        if not self.cfg.methods:
            return {}
        from fxscale.scaling.baselines import get_baseline
        ev = Evaluator(self.cg, lat_model.predict, mode="input")
        out = {}
        for name in self.cfg.methods:
            try:
                plan = get_baseline(name)(self.cg, ev, budget, flops_scale=None if budget.latency_ms else
                                          self.cfg.flops_scale, align=self.cfg.align,
                                          importance=getattr(self, "base_importance", None))
            except FxscaleError as e:
                self.log(f"[methods] {name}: skipped ({e})")
                continue
            out[name] = json.loads(plan.to_json())
        return out

    def _train_all(self, plans: dict[str, Any]) -> dict[str, Any]:
        jobs = [((name, s), ScalingPlan.from_json(json.dumps(p)), s) for name, p in plans.items()
                for s in self.cfg.seeds]
        self.log(f"[train] {len(jobs)} runs x {self.cfg.epochs} epochs")
        outs = self.train_many(jobs, self.cfg.epochs)
        res: dict[str, Any] = {}
        wdir = self.stages / "weights"
        wdir.mkdir(parents=True, exist_ok=True)
        for (tag, _p, _s), o in zip(jobs, outs):
            name, seed = tag
            r = res.setdefault(name, {"val_acc": [], "test_acc": []})
            r["val_acc"].append(o.result.best_val_acc)
            r["test_acc"].append(o.test_acc)
            save_weights(o.state_dict, wdir / f"{name}_s{seed}.pt")
        return res

    def _measure_all(self, plans: dict[str, Any]) -> dict[str, Any]:
        names = list(plans)
        stats = self.measure([ScalingPlan.from_json(json.dumps(plans[n])) for n in names])
        return {n: {"median": s.median, "mean": s.mean, "p10": s.p10, "p90": s.p90, "device": s.device}
                for n, s in zip(names, stats)}

    def _rows(self, plans: dict[str, Any], results: dict[str, Any], meas: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for name, p in plans.items():
            plan = ScalingPlan.from_json(json.dumps(p))
            c = fxscale.cost(self.cg, plan, mode="input")  # depth plans are costed on the deeper graph
            r = MethodResult(name, p, c.params, c.flops, meas[name]["median"], meas[name]["p10"], meas[name]["p90"],
                             results[name]["val_acc"], results[name]["test_acc"])
            rows.append({**asdict(r), "utilization": r.utilization})
        return rows


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
