"""Choosing one implementation per partition: exact DP on chains, an integer program on DAGs, a genetic search.

The cost of an assignment a (partition -> backend index) is additive:
``sum_p unary[p, a[p]] + sum_(u,v) edge[u,v][a[u], a[v]]``, with unary = the partition's measured latency on the
backend (inf: unsupported) and edge = the measured transition between the two backends' layouts. Graph inputs and
outputs are priced by the caller as unary terms. ``solve_chain`` is Viterbi (exact on chains); ``solve_milp`` is
``scipy.optimize.milp`` with binaries x[p,b] (one per partition) and y[e,b1,b2] >= x[u,b1] + x[v,b2] - 1 for the
edge terms (exact on any DAG); ``genetic`` searches whole-network assignments with a fitness the caller gives
(measured end-to-end latency in ``fxscale optimize``: it catches what the additive model misses, as Woodpecker-DL
searches with a GA). ``brute_force`` is the test oracle.
"""
from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from fxscale.errors import FxscaleError

Assignment = tuple[int, ...]


@dataclass
class Problem:
    """unary: (partitions x backends) ms, inf where unsupported; edges: (u, v, backends x backends ms)."""

    unary: np.ndarray
    edges: list[tuple[int, int, np.ndarray]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.unary.shape[0]), int(self.unary.shape[1])

    def options(self, p: int) -> list[int]:
        """The backends partition p can run on."""
        return [b for b in range(self.shape[1]) if math.isfinite(self.unary[p, b])]

    def check(self) -> None:
        for p in range(self.shape[0]):
            if not self.options(p):
                raise FxscaleError(f"partition {p} has no backend that supports it")

    def cost(self, a: Sequence[int]) -> float:
        """The additive cost of assignment `a`."""
        total = float(sum(self.unary[p, b] for p, b in enumerate(a)))
        return total + float(sum(c[a[u], a[v]] for u, v, c in self.edges))

    def is_chain(self) -> bool:
        return all(v == u + 1 for u, v, _ in self.edges)


def brute_force(problem: Problem) -> tuple[Assignment, float]:
    """The optimum by enumeration (tests only: exponential)."""
    problem.check()
    best: tuple[Assignment, float] = ((), math.inf)
    for a in itertools.product(*(problem.options(p) for p in range(problem.shape[0]))):
        c = problem.cost(a)
        if c < best[1]:
            best = (tuple(a), c)
    return best


def solve_chain(problem: Problem) -> tuple[Assignment, float]:
    """Exact dynamic programming (Viterbi) along a chain: every edge joins partitions p and p + 1."""
    problem.check()
    if not problem.is_chain():
        raise FxscaleError("solve_chain needs a chain (edges between consecutive partitions only); use solve_milp")
    n, nb = problem.shape
    trans = [np.zeros((nb, nb)) for _ in range(max(n - 1, 0))]
    for u, _v, c in problem.edges:
        trans[u] = trans[u] + c
    cost = problem.unary[0].copy()
    back = []
    for p in range(1, n):
        total = cost[:, None] + trans[p - 1] + problem.unary[p][None, :]
        back.append(np.argmin(total, axis=0))
        cost = np.min(total, axis=0)
    b = int(np.argmin(cost))
    best = float(cost[b])
    a = [b]
    for p in range(n - 1, 0, -1):
        b = int(back[p - 1][b])
        a.append(b)
    return tuple(reversed(a)), best


def solve_milp(problem: Problem, time_limit: float = 60.0) -> tuple[Assignment, float]:
    """Exact integer program on any partition DAG (scipy.optimize.milp, HiGHS)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    problem.check()
    n, nb = problem.shape
    xs = {(p, b): i for i, (p, b) in enumerate((p, b) for p in range(n) for b in problem.options(p))}
    ys: dict[tuple[int, int, int], int] = {}
    ycost: list[float] = []
    for e, (u, v, c) in enumerate(problem.edges):
        for b1 in problem.options(u):
            for b2 in problem.options(v):
                if c[b1, b2] != 0:
                    ys[(e, b1, b2)] = len(xs) + len(ys)
                    ycost.append(float(c[b1, b2]))
    nv = len(xs) + len(ys)
    obj = np.zeros(nv)
    for (p, b), i in xs.items():
        obj[i] = problem.unary[p, b]
    obj[len(xs):] = ycost
    rows, lo, hi = [], [], []
    for p in range(n):  # exactly one backend per partition
        r = np.zeros(nv)
        for b in problem.options(p):
            r[xs[p, b]] = 1
        rows.append(r), lo.append(1), hi.append(1)
    for (e, b1, b2), j in ys.items():  # y >= x[u,b1] + x[v,b2] - 1
        u, v, _ = problem.edges[e]
        r = np.zeros(nv)
        r[j], r[xs[u, b1]], r[xs[v, b2]] = 1, -1, -1
        rows.append(r), lo.append(-1), hi.append(np.inf)
    integrality = np.r_[np.ones(len(xs)), np.zeros(len(ys))]
    res = milp(obj, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=Bounds(0, 1), options={"time_limit": time_limit})
    if res.x is None:
        raise FxscaleError(f"the assignment integer program found no solution: {res.message}")
    a = [0] * n
    for (p, b), i in xs.items():
        if res.x[i] > 0.5:
            a[p] = b
    a_t = tuple(a)
    return a_t, problem.cost(a_t)  # re-summed from the costs, not taken from the solver


def solve(problem: Problem) -> tuple[Assignment, float, str]:
    """DP on chains, the integer program otherwise: (assignment, additive cost, method)."""
    if problem.is_chain():
        return (*solve_chain(problem), "dp")
    return (*solve_milp(problem), "milp")


@dataclass(frozen=True)
class GAConfig:
    """Population, generations, mutation rate, elites, seed and an optional time budget (s) of the search."""

    population: int = 8
    generations: int = 5
    mutation: float = 0.2
    elites: int = 2
    seed: int = 0
    budget_s: float = math.inf
    polish: int = 2  # rounds of local search around the best at the end (a memetic GA)
    polish_span: int = 1  # the local search sets runs of up to this many consecutive partitions to one backend


def genetic(options: Sequence[Sequence[int]], fitness: Callable[[list[Assignment]], list[float]],
            config: GAConfig = GAConfig(), seeds: Sequence[Assignment] = ()) -> tuple[Assignment, float, list[float]]:
    """Minimise `fitness` over whole-network assignments (a GA in autotvm's GATuner style).

    options[p]: the backends partition p may take. fitness(batch) -> one value per assignment (a generation's new
    candidates are evaluated together, so measured fitness is timed interleaved). Elites survive, parents are
    picked by tournament, children by two-point crossover (partitions are in topological order, so neighbouring
    choices, whose transitions interact, travel together) and per-gene mutation; assignments already evaluated are
    not evaluated again; then up to `polish` rounds of local search refine the best (every change of a run of up to
    `polish_span` consecutive partitions to one backend, evaluated as one batch). Returns (best, its fitness, the
    best fitness after each generation and polish round).
    """
    rng = random.Random(config.seed)
    seen: dict[Assignment, float] = {}
    start = time.monotonic()

    def evaluate(batch: list[Assignment]) -> None:
        new = list(dict.fromkeys(a for a in batch if a not in seen))
        if new:
            seen.update(zip(new, fitness(new)))

    def rand() -> Assignment:
        return tuple(rng.choice(list(o)) for o in options)

    pop = list(dict.fromkeys(tuple(s) for s in seeds))[:config.population]
    tries = 0
    while len(pop) < config.population and tries < 50 * config.population:
        a, tries = rand(), tries + 1
        if a not in pop:
            pop.append(a)
    evaluate(pop)
    history = [min(seen[a] for a in pop)]
    for _ in range(config.generations):
        if time.monotonic() - start > config.budget_s:
            break
        ranked = sorted(set(pop), key=lambda a: seen[a])
        children = ranked[:config.elites]
        tries = 0
        while len(children) < config.population and tries < 50 * config.population:
            tries += 1
            p1 = min(rng.sample(ranked, min(2, len(ranked))), key=lambda a: seen[a])
            p2 = min(rng.sample(ranked, min(2, len(ranked))), key=lambda a: seen[a])
            i, j = sorted(rng.sample(range(len(p1) + 1), 2)) if len(p1) > 1 else (0, len(p1))
            child = list(p1[:i]) + list(p2[i:j]) + list(p1[j:])  # two-point: runs of neighbours stay together
            for i, o in enumerate(options):
                if rng.random() < config.mutation and len(o) > 1:
                    child[i] = rng.choice([b for b in o if b != child[i]])
            movable = [i for i, o in enumerate(options) if len(o) > 1]
            for _ in range(8):  # an already evaluated child is mutated further (keeps the search exploring)
                if tuple(child) not in seen or not movable:
                    break
                i = rng.choice(movable)
                child[i] = rng.choice([b for b in options[i] if b != child[i]])
            c = tuple(child)
            if (c not in seen and c not in children) or tries > 10 * config.population:
                children.append(c)
        pop = children
        evaluate(pop)
        history.append(min(seen.values()))
    for _ in range(config.polish):
        if time.monotonic() - start > config.budget_s:
            break
        best = min(seen, key=lambda a: seen[a])
        evaluate(_neighbours(best, options, config.polish_span))
        history.append(min(seen.values()))
        if min(seen, key=lambda a: seen[a]) == best:
            break
    best = min(seen, key=lambda a: seen[a])
    return best, seen[best], history


def _neighbours(best: Assignment, options: Sequence[Sequence[int]], span: int) -> list[Assignment]:
    """Assignments that set a run of 1..span consecutive partitions of `best` to one backend they all support."""
    out = []
    for i in range(len(best)):
        for j in range(i + 1, min(i + span, len(best)) + 1):
            common = set(options[i]).intersection(*options[i:j])
            for b in sorted(common):
                a = best[:i] + (b,) * (j - i) + best[j:]
                if a != best:
                    out.append(a)
    return list(dict.fromkeys(out))


__all__ = ["Assignment", "GAConfig", "Problem", "brute_force", "genetic", "solve", "solve_chain", "solve_milp"]
