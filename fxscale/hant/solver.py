"""HANT phase 2: choose one candidate per site by an integer linear program under a latency budget.

The problem (one binary x_j per option j; an option covers one site, or several consecutive sites for a
multi-site candidate that replaces them together)::

    maximise    sum_j score_j x_j
    subject to  sum_{j covers s} x_j == 1                           for every site s  (each site covered once)
                fixed_latency + sum_j latency_j x_j <= budget
                fixed_params  + sum_j params_j  x_j <= max_params   (optional)
                x_j in {0, 1}

It is solved with `scipy.optimize.milp` (HiGHS) at a zero relative MIP gap. The objective and the cost rows
are divided by their largest magnitude so HiGHS's absolute tolerances mean the same thing on every problem
(whatever the units): the optimum is exact to within HiGHS's absolute gap, 1e-6 of the largest |score|.
Every answer is re-verified from the `Problem` itself, not from the solver: x is rounded (an entry further
than 1e-6 from 0/1 is a solver bug), each site must be covered exactly once, and the costs are re-summed
with `math.fsum` and checked against the bounds with the relative tolerance `TOL`. A solution that breaks a
bound only within HiGHS's feasibility tolerance is excluded by a cut and the program re-solved; any other
violation raises `RuntimeError` (an internal error, never a user error).

`k` distinct solutions come from diversity cuts: after a solution S, the row sum_{j in S} x_j <= |S| - 1
forbids exactly S (an exact cover containing all of S is S). `solve` stops early, returning fewer than `k`,
when no further assembly fits. Solutions come best first (non-increasing score).

Bad input raises `FxscaleError` naming the culprit; a budget no assembly meets raises `InfeasibleBudget`
with the budget, the minimum achievable latency (a dynamic program over the sites, exact because covers are
consecutive runs) and the sites whose fastest option still costs most.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix

from fxscale.errors import FxscaleError, InfeasibleBudget

TOL = 1e-9  # a total fits a bound when total <= bound + TOL * |bound| (relative, so units do not matter)
_INTEGRALITY_TOL = 1e-6
_MAX_OVERSHOOT_RETRIES = 50


@dataclass(frozen=True)
class Option:
    """One candidate: `covers` are the indices of the (consecutive) sites it replaces; score is higher-better."""

    name: str
    covers: tuple[int, ...]
    score: float
    latency: float
    params: float = 0.0


@dataclass(frozen=True)
class Problem:
    """Sites in network order, every option of every site, and the cost of the rest of the network."""

    sites: tuple[str, ...]
    options: tuple[Option, ...]
    fixed_latency: float = 0.0
    fixed_params: float = 0.0


@dataclass(frozen=True)
class SolveStats:
    """How a solution was found: wall time of its solve, the LP-relaxation bound and gap, branch-and-bound nodes."""

    solve_s: float
    lp_bound: float | None = None
    lp_gap: float | None = None
    nodes: int | None = None
    method: str = "milp"


@dataclass(frozen=True)
class Solution:
    """Chosen option indices (every site covered once); score, latency and params re-summed, fixed parts included."""

    chosen: tuple[int, ...]
    score: float
    latency: float
    params: float
    stats: SolveStats | None = field(default=None, compare=False)


# ----------------------------------------------------------------------------------------------- validation
def _finite(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _check_option(j: int, opt: Option, n_sites: int) -> None:
    where = f"option {j} {opt.name!r}"
    cov = opt.covers
    if not isinstance(cov, tuple) or not cov:
        raise FxscaleError(f"{where}: covers must be a non-empty tuple of site indices, got {cov!r}")
    if any(not isinstance(c, (int, np.integer)) or isinstance(c, bool) for c in cov):
        raise FxscaleError(f"{where}: covers must hold integer site indices, got {cov!r}")
    if min(cov) < 0 or max(cov) >= n_sites:
        raise FxscaleError(f"{where}: covers {cov!r} out of range for {n_sites} sites")
    if tuple(cov) != tuple(range(cov[0], cov[0] + len(cov))):
        raise FxscaleError(f"{where}: covers {cov!r} must be consecutive, ascending site indices")
    if not _finite(opt.score):
        raise FxscaleError(f"{where}: score must be a finite number, got {opt.score!r}")
    for attr in ("latency", "params"):
        value = getattr(opt, attr)
        if not _finite(value) or value < 0:
            raise FxscaleError(f"{where}: {attr} must be a finite number >= 0, got {value!r}")


def validate(problem: Problem) -> None:
    """Raise FxscaleError naming the culprit when the problem is malformed or no exact cover of the sites exists."""
    if not problem.sites:
        raise FxscaleError("problem has no sites")
    if len(set(problem.sites)) != len(problem.sites):
        dup = next(s for s in problem.sites if problem.sites.count(s) > 1)
        raise FxscaleError(f"site names must be unique, {dup!r} repeats")
    for attr in ("fixed_latency", "fixed_params"):
        if not _finite(getattr(problem, attr)):
            raise FxscaleError(f"problem {attr} must be a finite number, got {getattr(problem, attr)!r}")
    for j, opt in enumerate(problem.options):
        _check_option(j, opt, len(problem.sites))
    covered = {c for opt in problem.options for c in opt.covers}
    for s, name in enumerate(problem.sites):
        if s not in covered:
            raise FxscaleError(f"site {s} {name!r} has no option covering it")
    if best_cover(problem, lambda o: o.latency) is None:
        reach = _reachable(problem)
        stuck = max(i for i, ok in enumerate(reach) if ok)
        raise FxscaleError(f"no assembly covers every site exactly once: after sites 0..{stuck - 1} the options "
                           f"cannot continue exactly at site {stuck} {problem.sites[stuck]!r}")


def check_bounds(budget: float, max_params: float | None) -> None:
    """FxscaleError unless budget is a number (+inf: none) and max_params None or a finite number >= 0."""
    if not isinstance(budget, (int, float, np.floating, np.integer)) or isinstance(budget, bool) \
            or math.isnan(float(budget)) or budget == -math.inf:
        raise FxscaleError(f"latency budget must be a number (or +inf for none), got {budget!r}")
    if max_params is not None and (not _finite(max_params) or max_params < 0):
        raise FxscaleError(f"max_params must be a finite number >= 0 or None, got {max_params!r}")


def fits(total: float, bound: float | None) -> bool:
    """The one feasibility test every caller uses: total <= bound within the relative tolerance TOL."""
    return bound is None or total <= bound + TOL * abs(bound)


# ------------------------------------------------------------------------------------ dynamic programs over covers
def _by_start(problem: Problem) -> list[list[int]]:
    starts: list[list[int]] = [[] for _ in problem.sites]
    for j, opt in enumerate(problem.options):
        starts[opt.covers[0]].append(j)
    return starts


def _reachable(problem: Problem) -> list[bool]:
    n = len(problem.sites)
    reach = [True] + [False] * n
    for i, js in enumerate(_by_start(problem)):
        if reach[i]:
            for j in js:
                reach[i + len(problem.options[j].covers)] = True
    return reach


def best_cover(problem: Problem, weight: Callable[[Option], float], lo: int = 0,
               hi: int | None = None) -> tuple[float, tuple[int, ...]] | None:
    """Exact cover of sites [lo, hi) minimising sum(weight), ties to the higher score; None when there is none."""
    hi = len(problem.sites) if hi is None else hi
    inf = (math.inf, math.inf)
    best: list[tuple[float, float]] = [inf] * (hi - lo + 1)
    back: list[int] = [-1] * (hi - lo + 1)
    best[0] = (0.0, 0.0)
    starts = _by_start(problem)
    for i in range(lo, hi):
        if best[i - lo] == inf:
            continue
        for j in starts[i]:
            opt = problem.options[j]
            end = i + len(opt.covers)
            if end > hi:
                continue
            cand = (best[i - lo][0] + weight(opt), best[i - lo][1] - opt.score)
            if cand < best[end - lo]:
                best[end - lo], back[end - lo] = cand, j
    if best[-1] == inf:
        return None
    chosen, end = [], hi
    while end > lo:
        j = back[end - lo]
        chosen.append(j)
        end -= len(problem.options[j].covers)
    return best[-1][0], tuple(sorted(chosen))


# ------------------------------------------------------------------------------------------------ verification
def evaluate(problem: Problem, chosen: Sequence[int], *, stats: SolveStats | None = None) -> Solution:
    """Re-sum an assembly's costs from the problem; RuntimeError unless it covers every site exactly once."""
    counts = [0] * len(problem.sites)
    for j in chosen:
        for c in problem.options[j].covers:
            counts[c] += 1
    bad = [problem.sites[s] for s, n in enumerate(counts) if n != 1]
    if bad:
        raise RuntimeError(f"internal error: assembly {tuple(chosen)} does not cover sites {bad} exactly once")
    opts = [problem.options[j] for j in chosen]
    return Solution(chosen=tuple(sorted(int(j) for j in chosen)),
                    score=math.fsum(o.score for o in opts),
                    latency=math.fsum([problem.fixed_latency] + [o.latency for o in opts]),
                    params=math.fsum([problem.fixed_params] + [o.params for o in opts]), stats=stats)


def plan_of(problem: Problem, solution: Solution) -> dict[str, str]:
    """Site name -> chosen option name (a multi-site option names each site it covers)."""
    return {problem.sites[c]: problem.options[j].name for j in solution.chosen for c in problem.options[j].covers}


# ------------------------------------------------------------------------------------------------ the program
@dataclass(frozen=True)
class _Program:
    """The program's rows, scaled: each cost row and the objective divided by their largest magnitude."""

    constraints: tuple[LinearConstraint, ...]
    n: int

    @classmethod
    def build(cls, problem: Problem, budget: float, max_params: float | None) -> _Program:
        n_sites, n = len(problem.sites), len(problem.options)
        rows = [c for opt in problem.options for c in opt.covers]
        cols = [j for j, opt in enumerate(problem.options) for _ in opt.covers]
        cover = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_sites, n))
        cons = [LinearConstraint(cover, 1.0, 1.0)]
        for attr, fixed, bound in (("latency", problem.fixed_latency, budget),
                                   ("params", problem.fixed_params, max_params)):
            if bound is None or bound == math.inf:
                continue
            cost = np.array([float(getattr(o, attr)) for o in problem.options])
            rhs = bound - fixed + TOL * abs(bound)
            scale = max(float(cost.max()), abs(rhs), 1e-300)
            cons.append(LinearConstraint(cost[None, :] / scale, -np.inf, rhs / scale))
        return cls(tuple(cons), n)

    def run(self, objective: np.ndarray, cuts: Sequence[tuple[int, ...]], *, integral: bool = True):
        """Minimise objective @ x over the rows plus one diversity cut per earlier assembly; scipy's result."""
        cons = list(self.constraints)
        if cuts:
            rows = [r for r, cut in enumerate(cuts) for _ in cut]
            cols = [j for cut in cuts for j in cut]
            mat = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(cuts), self.n))
            cons.append(LinearConstraint(mat, -np.inf, np.array([len(c) - 1.0 for c in cuts])))
        scale = max(float(np.abs(objective).max(initial=0.0)), 1e-300)
        res = milp(objective / scale, integrality=np.full(self.n, 1 if integral else 0), bounds=Bounds(0.0, 1.0),
                   constraints=cons, options={"mip_rel_gap": 0.0, "presolve": True})
        if res.status not in (0, 2):
            raise RuntimeError(f"internal error: HiGHS stopped with status {res.status}: {res.message}")
        return res, scale


def _round(x: np.ndarray) -> tuple[int, ...]:
    rounded = np.round(x)
    off = float(np.abs(x - rounded).max(initial=0.0))
    if off > _INTEGRALITY_TOL:
        raise RuntimeError(f"internal error: HiGHS returned a fractional x (max distance to 0/1 is {off:.3g})")
    return tuple(int(j) for j in np.flatnonzero(rounded > 0.5))


def _overshoot(total: float, bound: float | None, costs: Sequence[float]) -> float:
    """How far a total breaks its bound, relative to the row's scale (0 when it fits)."""
    if fits(total, bound):
        return 0.0
    assert bound is not None
    return (total - bound) / max(max(costs, default=0.0), abs(bound), 1e-300)


def _part(problem: Problem, j: int) -> str:
    opt = problem.options[j]
    return f"{'+'.join(problem.sites[c] for c in opt.covers)} ({opt.name}, {opt.latency:.4g})"


def _infeasible(problem: Problem, budget: float, max_params: float | None) -> InfeasibleBudget:
    """The InfeasibleBudget for a budget no assembly meets, with the minimum achievable latency (or params)."""
    fastest = evaluate(problem, best_cover(problem, lambda o: o.latency)[1])  # validate() ensured a cover exists
    if not fits(fastest.latency, budget):
        heavy = sorted(fastest.chosen, key=lambda j: -problem.options[j].latency)[:3]
        return InfeasibleBudget(
            f"latency budget {budget:.6g} is below the minimum achievable latency {fastest.latency:.6g} "
            f"(fixed {problem.fixed_latency:.6g} + the fastest assembly of options); its slowest sites, even at "
            f"their fastest option: {', '.join(_part(problem, j) for j in heavy)}")
    if max_params is not None:
        lightest = evaluate(problem, best_cover(problem, lambda o: o.params)[1])
        if not fits(lightest.params, max_params):
            return InfeasibleBudget(f"max_params {max_params:.6g} is below the minimum achievable params "
                                    f"{lightest.params:.6g} (fixed {problem.fixed_params:.6g} + the smallest assembly "
                                    f"of options)")
        prog = _Program.build(problem, math.inf, max_params)
        res, _ = prog.run(np.array([o.latency for o in problem.options]), ())
        within = evaluate(problem, _round(res.x)).latency if res.status == 0 else math.nan
        return InfeasibleBudget(
            f"no assembly meets both the latency budget {budget:.6g} and max_params {max_params:.6g}: the fastest "
            f"assembly within the params bound takes {within:.6g} (the fastest overall, {fastest.latency:.6g}, "
            f"needs {fastest.params:.6g} params)")
    return InfeasibleBudget(f"no assembly meets the latency budget {budget:.6g} within tolerance {TOL:g} "
                            f"(minimum achievable latency {fastest.latency:.6g})")


def feasible_start(problem: Problem, budget: float, max_params: float | None = None) -> Solution:
    """A feasible assembly: the fastest (ties to the higher score), else the smallest, else the fastest within the
    params bound (a small MILP). Raises InfeasibleBudget when none fits. Expects a validated problem."""
    for weight in (lambda o: o.latency, lambda o: o.params):
        sol = evaluate(problem, best_cover(problem, weight)[1])
        if fits(sol.latency, budget) and fits(sol.params, max_params):
            return sol
    if max_params is not None:
        res, _ = _Program.build(problem, budget, max_params).run(np.array([o.latency for o in problem.options]), ())
        if res.status == 0:
            sol = evaluate(problem, _round(res.x))
            if fits(sol.latency, budget) and fits(sol.params, max_params):
                return sol
    raise _infeasible(problem, budget, max_params)


def solve(problem: Problem, budget: float, *, max_params: float | None = None, k: int = 1) -> list[Solution]:
    """The k best distinct assemblies (best first) with fixed + sum(latency) <= budget and params <= max_params.

    Returns fewer than k when no further assembly fits. Each Solution is re-verified from the problem and carries
    `stats` (solve time, the LP-relaxation bound and gap at the time it was found, branch-and-bound nodes).
    Raises InfeasibleBudget when not even one assembly fits, FxscaleError on malformed input.
    """
    validate(problem)
    check_bounds(budget, max_params)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise FxscaleError(f"k must be an integer >= 1, got {k!r}")
    prog = _Program.build(problem, budget, max_params)
    objective = -np.array([float(o.score) for o in problem.options])
    lats = [o.latency for o in problem.options]
    params = [o.params for o in problem.options]
    cuts: list[tuple[int, ...]] = []
    out: list[Solution] = []
    retries = 0
    while len(out) < k:
        t0 = time.perf_counter()
        res, scale = prog.run(objective, cuts)
        if res.status == 2:
            if not out:
                raise _infeasible(problem, budget, max_params)
            break
        sol = evaluate(problem, _round(res.x))
        solve_s = time.perf_counter() - t0
        over = max(_overshoot(sol.latency, budget, lats), _overshoot(sol.params, max_params, params))
        if over > 0.0:  # within HiGHS's feasibility tolerance only: exclude it and re-solve
            if over > 1e-5 or retries >= _MAX_OVERSHOOT_RETRIES:
                raise RuntimeError(f"internal error: assembly {sol.chosen} breaks a bound (latency {sol.latency!r} "
                                   f"vs budget {budget!r}, params {sol.params!r} vs {max_params!r})")
            retries += 1
            cuts.append(sol.chosen)
            continue
        if abs(-res.fun * scale - sol.score) > 1e-5 * scale * len(problem.sites):
            raise RuntimeError(f"internal error: HiGHS objective {-res.fun * scale!r} != re-summed {sol.score!r}")
        lp, lp_scale = prog.run(objective, cuts, integral=False)
        lp_bound = -lp.fun * lp_scale if lp.status == 0 else None
        stats = SolveStats(solve_s=solve_s, lp_bound=lp_bound,
                           lp_gap=None if lp_bound is None else max(lp_bound - sol.score, 0.0),
                           nodes=getattr(res, "mip_node_count", None))
        out.append(Solution(sol.chosen, sol.score, sol.latency, sol.params, stats))
        cuts.append(sol.chosen)
    return sorted(out, key=lambda s: -s.score)


def frontier(problem: Problem, budgets: Sequence[float], *,
             max_params: float | None = None) -> list[Solution | None]:
    """The best assembly at each budget (None where no assembly fits), for an accuracy-against-latency frontier."""
    best: list[Solution | None] = []
    for budget in budgets:
        try:
            best.append(solve(problem, budget, max_params=max_params)[0])
        except InfeasibleBudget:
            best.append(None)
    return best


__all__ = ["TOL", "Option", "Problem", "SolveStats", "Solution", "best_cover", "check_bounds", "evaluate",
           "feasible_start", "fits", "frontier", "plan_of", "solve", "validate"]
