"""Selection baselines for HANT phase 2 at the same budget as the integer program: greedy and random.

Greedy (score per ms). Start from a feasible assembly: the fastest one (ties to the higher score; else the
smallest in params, else the fastest within the params bound). A *move* brings in one option o that is not
chosen: it drops every chosen option overlapping o's sites, adds o, and refills any sites the dropped options
covered outside o with their fastest exact cover (so a multi-site option can be merged in or split back out).
Among the moves that raise the total score and keep the assembly within the budget (and params bound), take the
one with the largest gain per added millisecond, d_score / d_latency; a move that adds no latency counts as
infinitely good (the largest d_score among those wins). Ties go to the lower option index. Repeat until no
move improves the score. It terminates because the score strictly rises over a finite set of assemblies.
Known weakness (kept: it is a baseline): splitting a multi-site option refills its other site with the fastest
option there, so a split that would pay off only after a second move is never taken; on instances with many
multi-site options greedy can end far below the optimum (the solver-speed benchmark with --multi shows it).

Random. Draw assemblies uniformly over all exact covers of the sites (with single-site options alone: one
option per site, uniformly and independently; a multi-site option is one assembly choice, weighted by the number
of covers of the sites after it) and keep the first that fits: rejection sampling, so the result is exactly
uniform over the feasible assemblies. When none of `max_tries` proposals fits (a tight budget), fall back to a
Markov chain documented in `_random_walk`, approximately uniform; `Solution.stats.method` says which scheme ran.
"""
from __future__ import annotations

import time

import numpy as np

from fxscale.hant.solver import (TOL, Problem, Solution, SolveStats, best_cover, check_bounds, evaluate,
                                 feasible_start, fits, validate)


# ------------------------------------------------------------------------------------------------------- greedy
def _moves(problem: Problem, chosen: set[int], fill: dict[tuple[int, int], tuple[int, ...] | None]):
    """Yield (dropped, added) option sets for every single-option move from `chosen` (see the module doc)."""
    owner = {c: j for j in chosen for c in problem.options[j].covers}
    for o, opt in enumerate(problem.options):
        if o in chosen:
            continue
        dropped = {owner[c] for c in opt.covers}
        span = [c for j in dropped for c in problem.options[j].covers]
        added = [o]
        for a, b in ((min(span), opt.covers[0]), (opt.covers[-1] + 1, max(span) + 1)):
            if a == b:
                continue
            if (a, b) not in fill:
                best = best_cover(problem, lambda x: x.latency, a, b)
                fill[(a, b)] = None if best is None else best[1]
            if fill[(a, b)] is None:
                break
            added.extend(fill[(a, b)])
        else:
            yield dropped, added


def _delta(values: list[float], dropped, added) -> float:
    return sum(values[j] for j in added) - sum(values[j] for j in dropped)


def select_greedy(problem: Problem, budget: float, *, max_params: float | None = None) -> Solution:
    """Greedy by score per ms from the fastest assembly (module doc); InfeasibleBudget when nothing fits."""
    validate(problem)
    check_bounds(budget, max_params)
    t0 = time.perf_counter()
    current = feasible_start(problem, budget, max_params)
    fill: dict[tuple[int, int], tuple[int, ...] | None] = {}
    score, lat, par = ([float(getattr(o, a)) for o in problem.options] for a in ("score", "latency", "params"))
    steps = 0
    while True:
        best_key, best_move = None, None
        for dropped, added in _moves(problem, set(current.chosen), fill):
            gain, extra = _delta(score, dropped, added), _delta(lat, dropped, added)
            if gain <= 0.0 or not (fits(current.latency + extra, budget)
                                   and fits(current.params + _delta(par, dropped, added), max_params)):
                continue
            key = (1, gain) if extra <= 0.0 else (0, gain / extra)
            if best_key is None or key > best_key:
                best_key, best_move = key, (dropped, added)
        if best_move is None:
            break
        moved = evaluate(problem, sorted((set(current.chosen) - best_move[0]) | set(best_move[1])))
        if moved.score <= current.score or not (fits(moved.latency, budget) and fits(moved.params, max_params)):
            break  # the incremental sums and the re-summed totals disagree at rounding level: stop here
        current, steps = moved, steps + 1
    stats = SolveStats(solve_s=time.perf_counter() - t0, method=f"greedy: {steps} moves")
    return Solution(current.chosen, current.score, current.latency, current.params, stats)


# ------------------------------------------------------------------------------------------------------- random
def _sampler(problem: Problem) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per start site: option indices starting there and the cumulative probabilities of a uniform-cover draw."""
    n = len(problem.sites)
    starts: list[list[int]] = [[] for _ in range(n)]
    for j, opt in enumerate(problem.options):
        starts[opt.covers[0]].append(j)
    count = [0] * n + [1]  # exact covers of sites [i, n), exact integers
    for i in range(n - 1, -1, -1):
        count[i] = sum(count[i + len(problem.options[j].covers)] for j in starts[i])
    table = []
    for i in range(n):
        js = [j for j in starts[i] if count[i + len(problem.options[j].covers)] > 0]
        weights = [count[i + len(problem.options[j].covers)] / count[i] if count[i] else 0.0 for j in js]
        table.append((np.array(js, dtype=np.int64), np.cumsum(weights)))
    return table


def _draw(problem: Problem, table, rng: np.random.Generator, batch: int):
    """`batch` uniform exact covers at once: (option indices per sample, padded by -1), latency, params."""
    n = len(problem.sites)
    lat = np.array([o.latency for o in problem.options])
    par = np.array([o.params for o in problem.options])
    size = np.array([len(o.covers) for o in problem.options])
    picks = np.full((batch, n), -1, dtype=np.int64)
    pos = np.zeros(batch, dtype=np.int64)
    for step in range(n):
        at = pos.copy()
        for i in np.unique(at[at < n]):
            rows = np.flatnonzero(at == i)
            js, cum = table[i]
            pick = js[np.minimum(np.searchsorted(cum, rng.random(rows.size) * cum[-1], side="right"), js.size - 1)]
            picks[rows, step] = pick
            pos[rows] += size[pick]
    used = np.where(picks >= 0, picks, 0)
    mask = picks >= 0
    return (picks, problem.fixed_latency + (lat[used] * mask).sum(axis=1),
            problem.fixed_params + (par[used] * mask).sum(axis=1))


def _random_walk(problem: Problem, budget: float, max_params: float | None, rng: np.random.Generator,
                 steps: int) -> Solution:
    """Fallback when rejection finds nothing: a Metropolis walk from a feasible start. Each step picks one chosen
    option uniformly and proposes a uniformly random option with the same covers, kept if the assembly still fits.
    The proposal is symmetric, so the walk's stationary law is uniform over the feasible assemblies reachable this
    way: those sharing the start's partition of sites (the fastest assembly's, usually)."""
    current = feasible_start(problem, budget, max_params)
    same: dict[tuple[int, ...], list[int]] = {}
    for j, opt in enumerate(problem.options):
        same.setdefault(opt.covers, []).append(j)
    for _ in range(steps):
        chosen = list(current.chosen)
        slot = int(rng.integers(len(chosen)))
        peers = same[problem.options[chosen[slot]].covers]
        chosen[slot] = peers[int(rng.integers(len(peers)))]
        sol = evaluate(problem, chosen)
        if fits(sol.latency, budget) and fits(sol.params, max_params):
            current = sol
    return current


def _fit_all(totals: np.ndarray, bound: float | None) -> np.ndarray:
    """`fits` over an array of totals."""
    if bound is None:
        return np.ones(totals.shape, dtype=bool)
    return totals <= bound + TOL * abs(bound)


def select_random(problem: Problem, budget: float, *, seed: int, max_params: float | None = None,
                  max_tries: int = 100_000, walk_steps: int | None = None) -> Solution:
    """A seeded random feasible assembly, uniform over the feasible ones (module doc); InfeasibleBudget if none."""
    validate(problem)
    check_bounds(budget, max_params)
    feasible_start(problem, budget, max_params)  # raises InfeasibleBudget with the minimum achievable latency
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    table = _sampler(problem)
    tries = 0
    while tries < max_tries:
        batch = min(4096, max_tries - tries)
        picks, lat, par = _draw(problem, table, rng, batch)
        ok = _fit_all(lat, budget) & _fit_all(par, max_params)
        if ok.any():
            first = int(np.argmax(ok))
            sol = evaluate(problem, [int(j) for j in picks[first] if j >= 0])
            method = f"random: rejection, {tries + first + 1} proposals"
            return Solution(sol.chosen, sol.score, sol.latency, sol.params,
                            SolveStats(solve_s=time.perf_counter() - t0, method=method))
        tries += batch
    steps = walk_steps if walk_steps is not None else 200 * len(problem.sites)
    sol = _random_walk(problem, budget, max_params, rng, steps)
    method = f"random: walk of {steps} steps after {tries} rejected proposals"
    return Solution(sol.chosen, sol.score, sol.latency, sol.params,
                    SolveStats(solve_s=time.perf_counter() - t0, method=method))


__all__ = ["select_greedy", "select_random"]
