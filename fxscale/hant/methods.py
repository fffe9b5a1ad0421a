"""Phase 2 and the comparison: solve, assemble, correct L_fixed against the measured student, build the baselines,
time every method in one interleaved session against the teacher, KD fine-tune them by one recipe, test them.

Method rows (results.json): ``teacher``, ``hant``, ``random``, ``greedy`` (the same distilled candidates chosen by
the solver helper's baselines), ``uniform`` and ``taylor`` (channel pruning of the teacher, the family member with
the largest keep fraction whose measured latency is not above HANT's), ``hacscale`` (the teacher shrunk by
HACScale) and ``hant_scale`` (HANT at a tighter budget, widened by HACScale): ladders of fxscale.hant.scaled
picked the same way. latency_ratio is the median of per-round (method / teacher) ratios and latency_ratio_hi the upper end of its 95% interval (fxscale.hw.timing.median_ratio_interval).
test_top1_ci: a 95% t-interval over seeds when there are several, else the Wilson interval of the test set.
"""
from __future__ import annotations

import copy
import math
import statistics
from typing import Any, Optional

import torch.fx as fx

from fxscale.errors import InfeasibleBudget, PlanError
from fxscale.hant.baselines import (
    FinetuneConfig,
    finetune,
    pick_at_latency,
    taylor_family,
    uniform_family,
)
from fxscale.hant.config import parse_budget
from fxscale.hant.latency import LatencyTable, protocol
from fxscale.hant.scores import Eval, score_of
from fxscale.hant.sites import PAIR_SEP, pair_parts
from fxscale.hant.solver import Option, Problem, Solution, solve

MAX_CORRECTIONS = 2
USE = 0.9  # a student measured under USE x the budget is re-solved with L_fixed corrected down


def build_problem(acc: Any, table: LatencyTable, scores: dict[str, Any], distilled: dict[str, Any], kind: str,
                  fixed: Optional[float] = None) -> Problem:
    """One option per legal (site, spec) with its score, measured latency and parameter count."""
    base = Eval(**scores["teacher"])
    options = []
    spans = [((i,), site) for i, site in enumerate(acc.sites)] + [((i, i + 1), site) for i, site in acc.pairs]
    for covers, site in spans:  # a two-site region's options cover both sites (each site covered exactly once)
        for spec, module in acc.modules[site.name].items():
            ev = Eval(**scores["pairs"][site.name][spec])
            local = distilled[site.name][spec]["val_nmse"]
            options.append(Option(spec, covers, score_of(kind, base, ev, local), table.table[site.name][spec],
                                  float(sum(p.numel() for p in module.parameters()))))
    return Problem(tuple(s.name for s in acc.sites), tuple(options),
                   fixed_latency=table.fixed_ms if fixed is None else fixed)


def choice_of(problem: Problem, sol: Solution) -> dict[str, str]:
    """site -> spec of a solution, in site order; an option covering several sites is keyed by their joined name
    (``"a+b"``, fxscale.hant.sites.PAIR_SEP), the region the pipeline distilled it for."""
    picked = sorted((problem.options[j].covers, problem.options[j].name) for j in sol.chosen)
    return {PAIR_SEP.join(problem.sites[i] for i in covers): name for covers, name in picked}


def budget_ms(text: Any, teacher_ms: float) -> float:
    kind, v = parse_budget(text)
    return v * teacher_ms if kind == "ratio" else v


def _time(acc: Any, models: list[fx.GraphModule]) -> list[Any]:
    """Timings of the teacher followed by `models`, in one interleaved session."""
    from fxscale.hw.timing import measure_interleaved
    cfg = acc.cfg
    proto = protocol(acc.target, runs=cfg.runs, warmup=cfg.warmup, rounds=max(cfg.rounds, 5))
    shape = tuple(acc.x.shape)
    return measure_interleaved(acc.target, [(acc.gm, shape)] + [(m, shape) for m in models], proto)


def solve_measured(acc: Any, table: LatencyTable, scores: dict[str, Any], distilled: dict[str, Any]
                   ) -> tuple[Problem, Solution, dict[str, str], list[dict[str, float]]]:
    """Solve and time the student against the teacher; correct L_fixed by (measured - predicted) and re-solve when
    the student is over budget, or under USE x the budget (summed per-site timings overpredict a whole graph, so
    without this a student can leave much of the budget unused). Of the students measured within budget, the one of
    highest score is kept (the last one when none fits)."""
    limit = budget_ms(acc.cfg.latency_budget, table.teacher_ms)
    fixed, corrections, tried = table.fixed_ms, [], []
    for it in range(MAX_CORRECTIONS + 1):
        problem = build_problem(acc, table, scores, distilled, acc.cfg.score, fixed)
        try:
            sol = solve(problem, limit)[0]
        except InfeasibleBudget:
            if not tried:
                raise
            break
        choice = choice_of(problem, sol)
        if any(choice == t[2] for t in tried):
            break  # the corrected program chose an assembly already measured
        t_teacher, t_student = _time(acc, [acc.assemble(choice)])
        measured = t_student.ratio_to(t_teacher).ratio * table.teacher_ms  # in the table's teacher units
        tried.append((problem, sol, choice, measured))
        corrections.append({"iteration": it, "predicted_ms": sol.latency, "measured_ms": measured,
                            "fixed_ms": fixed, "budget_ms": limit, "score": sol.score})
        acc.log(f"[solve] predicted {sol.latency:.4f} ms, measured {measured:.4f} ms, budget {limit:.4f} ms")
        if USE * limit <= measured <= limit * 1.02:
            break
        fixed += measured - sol.latency
    fits = [t for t in tried if t[3] <= limit * 1.02]
    problem, sol, choice, _ = max(fits, key=lambda t: t[1].score) if fits else tried[-1]
    for c, t in zip(corrections, tried):
        c["kept"] = t[2] == choice
    return problem, sol, choice, corrections


def _ci(accs: list[float], n_test: int) -> list[float]:
    m = statistics.fmean(accs)
    if len(accs) > 1:
        from scipy.stats import t as student_t
        h = student_t.ppf(0.975, len(accs) - 1) * statistics.stdev(accs) / math.sqrt(len(accs))
        return [m - h, m + h]
    z, n = 1.959964, n_test
    centre = (m + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(m * (1 - m) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def compare(acc: Any, table: LatencyTable, scores: dict[str, Any], distilled: dict[str, Any]
            ) -> tuple[dict[str, Any], fx.GraphModule]:
    """Every method's measured latency ratio and test top-1; returns (results, the fine-tuned HANT student)."""
    from fxscale.hant.select import select_greedy, select_random
    from fxscale.train import evaluate
    cfg = acc.cfg
    problem, sol, choice, corrections = solve_measured(acc, table, scores, distilled)
    limit = corrections[-1]["budget_ms"]
    models: dict[str, fx.GraphModule] = {"hant": acc.assemble(choice)}
    choices = {"hant": choice}
    for name, pick in (("random", lambda: select_random(problem, limit, seed=cfg.seed)),
                       ("greedy", lambda: select_greedy(problem, limit))):
        if name in cfg.baselines:
            choices[name] = choice_of(problem, pick())
            models[name] = acc.assemble(choices[name])
    families: dict[str, dict[float, fx.GraphModule]] = {}
    if "uniform" in cfg.baselines:
        families["uniform"] = uniform_family(acc.gm)
    if "taylor" in cfg.baselines:
        families["taylor"] = taylor_family(acc.gm, acc.bundle, acc.resolution)
    ladders = _ladders(acc, problem, limit)
    families.update({name: lad.models for name, lad in ladders.items() if lad.models})
    flat = list(models.values()) + [m for fam in families.values() for m in fam.values()]
    acc.log(f"[measure] timing {len(flat)} models against the teacher, interleaved")
    timings = _time(acc, flat)
    t0, rest = timings[0], timings[1:]
    ratios = {name: t.ratio_to(t0) for name, t in zip(models, rest)}
    k = len(models)
    for fam, members in families.items():
        ts = dict(zip(members, rest[k:k + len(members)]))
        k += len(members)
        lat = {f: t.ratio_to(t0).ratio for f, t in ts.items()}
        best = pick_at_latency(lat, ratios["hant"].ratio)
        models[fam], ratios[fam] = members[best], ts[best].ratio_to(t0)
        choices[fam] = {"level": best, **ladders[fam].info[best]} if fam in ladders else {"fraction": best}
    ft = FinetuneConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, batch_size=cfg.batch_size,
                        threads=cfg.threads)
    n_test = len(acc.bundle.test)
    rows = [{"method": "teacher", "latency_ratio": 1.0, "latency_ratio_hi": 1.0,
             "test_top1": acc.teacher_info["test_acc"], "test_top1_ci": _ci([acc.teacher_info["test_acc"]], n_test),
             "seeds": 1, "choice": {}}]
    student: Optional[fx.GraphModule] = None
    for name, model in models.items():
        accs = []
        for seed in cfg.seeds:
            tuned = finetune(copy.deepcopy(model), acc.gm, acc.bundle, acc.resolution, ft, seed=seed)
            accs.append(evaluate(tuned, acc.bundle, "test", acc.resolution))
            if name == "hant" and student is None:
                student = tuned
        r = ratios[name]
        rows.append({"method": name, "latency_ratio": r.ratio, "latency_ratio_hi": r.high,
                     "test_top1": statistics.fmean(accs), "test_top1_ci": _ci(accs, n_test), "seeds": len(accs),
                     "test_top1_per_seed": accs, "choice": choices[name]})
        acc.log(f"[results] {name}: latency x{r.ratio:.3f} (<= {r.high:.3f}), test top-1 {statistics.fmean(accs):.4f}")
    index = {s.name: i for i, s in enumerate(acc.sites)}
    site_rows = [{"site": key, "kind": acc.site_map[key].kind, "spec": spec, "latency_ms": table.table[key][spec],
                  "teacher_ms": sum(table.table[part]["teacher"] for part in pair_parts(key)),
                  "score": next(o.score for o in problem.options if o.name == spec
                                and o.covers == tuple(index[part] for part in pair_parts(key))),
                  "val_nmse": distilled[key][spec]["val_nmse"]} for key, spec in choice.items()]
    results = {"methods": rows, "plan": choice, "sites": site_rows, "corrections": corrections,
               "solve_s": sol.stats.solve_s if sol.stats else None, "budget_ms": limit,
               "teacher_ms": table.teacher_ms, "fixed_ms": table.fixed_ms, "additivity": table.additivity,
               "frontier": frontier(acc, table, scores, distilled), "score": cfg.score, "latency_source": table.source,
               "ladders": {name: {"rungs": sorted(lad.info), "laws": lad.laws, "note": lad.note}
                           for name, lad in ladders.items()}}
    if student is None:  # cfg.validate() demands at least one seed
        raise PlanError("accelerate needs at least one fine-tuning seed")
    return results, student


def _ladders(acc: Any, problem: Problem, limit: float) -> dict[str, Any]:
    """The HACScale rows (fxscale.hant.scaled): the shrunk teacher, and HANT at FREE x the budget then widened."""
    from fxscale.hant import scaled
    cfg, out = acc.cfg, {}
    if "hacscale" in cfg.baselines:
        acc.log("[hacscale] fitting importance laws on the pruned teacher; Algorithm 1 ladder")
        out["hacscale"] = scaled.shrunk_teacher(acc.gm, acc.bundle, acc.resolution)
    if "hant_scale" in cfg.baselines:
        try:
            low = solve(problem, scaled.FREE * limit)[0]
        except InfeasibleBudget as e:
            out["hant_scale"] = scaled.Ladder(note=f"HANT at {scaled.FREE}x the budget is infeasible: {e}")
            acc.log(f"[hant_scale] skipped: {out['hant_scale'].note}")
            return out
        low_choice = choice_of(problem, low)
        acc.log(f"[hant_scale] HANT at {scaled.FREE}x the budget, then HACScale widening")
        lad = scaled.widened_student(acc.assemble(low_choice), acc.gm, acc.bundle, acc.resolution, acc.x)
        for info in lad.info.values():
            info["hant_choice"] = low_choice
        lad.note = lad.note or ("" if lad.models else "the HANT student has no scalable channel group")
        out["hant_scale"] = lad
    return out


def frontier(acc: Any, table: LatencyTable, scores: dict[str, Any], distilled: dict[str, Any]) -> list[dict]:
    """Per budget ratio: the solved assembly's predicted latency ratio and its test top-1 (distilled, no fine-tune)."""
    from fxscale.train import evaluate
    problem = build_problem(acc, table, scores, distilled, acc.cfg.score)
    out = []
    for b in acc.cfg.frontier:
        try:
            sol = solve(problem, b * table.teacher_ms)[0]
        except InfeasibleBudget:
            out.append({"budget": b, "feasible": False})
            continue
        model = acc.assemble(choice_of(problem, sol))
        out.append({"budget": b, "feasible": True, "predicted_ratio": sol.latency / table.teacher_ms,
                    "score": sol.score, "test_top1": evaluate(model, acc.bundle, "test", acc.resolution)})
    return out


def scores_summary(acc: Any, scores: dict[str, Any]) -> dict[str, Any]:
    """How the two global scores agree: their Spearman rank correlation over all non-teacher pairs."""
    from scipy.stats import spearmanr
    base = Eval(**scores["teacher"])
    dl, da = [], []
    for site, specs in scores["pairs"].items():
        for spec, e in specs.items():
            if spec != "teacher":
                dl.append(score_of("dloss", base, Eval(**e), math.nan))
                da.append(score_of("dacc", base, Eval(**e), math.nan))
    rho = float(spearmanr(dl, da).statistic) if len(dl) > 2 else math.nan
    return {"pairs": len(dl), "spearman_dloss_dacc": rho}


__all__ = ["build_problem", "budget_ms", "choice_of", "compare", "frontier", "scores_summary", "solve_measured"]
