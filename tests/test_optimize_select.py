"""Assignment of backends to partitions: DP and MILP against brute force, the GA against DP, the hybrid module."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fxscale
from fxscale.errors import FxscaleError
from fxscale.optimize.backends import create_backend
from fxscale.optimize.hybrid import build_hybrid
from fxscale.optimize.partition import partition_graph
from fxscale.optimize.search import compile_pairs, merge_runs
from fxscale.optimize.select import GAConfig, Problem, brute_force, genetic, solve, solve_chain, solve_milp
from fxscale.optimize.verify import optimize_graph
from fxscale.zoo import digits_resnet


def random_problem(rng: np.random.Generator, n: int, nb: int, extra_edges: int = 0) -> Problem:
    unary = rng.uniform(0.5, 5.0, (n, nb))
    unary[rng.random((n, nb)) < 0.25] = math.inf
    unary[np.arange(n), rng.integers(0, nb, n)] = rng.uniform(0.5, 5.0, n)  # every partition has an option
    edges = [(i, i + 1, rng.uniform(0.0, 2.0, (nb, nb))) for i in range(n - 1)]
    for _ in range(extra_edges):  # skip connections: a DAG, not a chain
        u = int(rng.integers(0, n - 2))
        v = int(rng.integers(u + 2, n))
        edges.append((u, v, rng.uniform(0.0, 2.0, (nb, nb))))
    return Problem(unary, edges)


@pytest.mark.parametrize("seed", range(12))
def test_dp_equals_brute_force_on_chains(seed):
    rng = np.random.default_rng(seed)
    p = random_problem(rng, int(rng.integers(1, 8)), int(rng.integers(1, 4)))
    a, cost = solve_chain(p)
    best = brute_force(p)[1]
    assert cost == pytest.approx(best) and p.cost(a) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(10))
def test_milp_equals_brute_force_on_dags(seed):
    rng = np.random.default_rng(100 + seed)
    p = random_problem(rng, int(rng.integers(3, 7)), 3, extra_edges=int(rng.integers(1, 4)))
    assert not p.is_chain()
    a, cost = solve_milp(p)
    assert cost == pytest.approx(brute_force(p)[1]) and p.cost(a) == pytest.approx(cost)
    assert solve(p)[2] == "milp"


def test_milp_equals_dp_on_a_chain_and_solve_picks_dp():
    p = random_problem(np.random.default_rng(7), 9, 4)
    assert solve_milp(p)[1] == pytest.approx(solve_chain(p)[1])
    assert solve(p)[2] == "dp"


@pytest.mark.parametrize("seed", range(6))
def test_ga_reaches_the_dp_optimum_on_chains(seed):
    """Additive synthetic fitness (no timing); no seeds from DP, so the GA finds the optimum by itself."""
    p = random_problem(np.random.default_rng(200 + seed), 8, 3)
    options = [p.options(i) for i in range(8)]
    best, value, history = genetic(options, lambda batch: [p.cost(a) for a in batch],
                                   GAConfig(population=16, generations=30, mutation=0.15, seed=seed))
    assert value == pytest.approx(solve_chain(p)[1])
    assert history == sorted(history, reverse=True)  # elitism: the best never gets worse
    assert all(b in o for b, o in zip(best, options))


def test_ga_batches_and_never_reevaluates():
    seen = []

    def fitness(batch):
        seen.extend(batch)
        return [float(sum(a)) for a in batch]
    genetic([[0, 1]] * 3, fitness, GAConfig(population=4, generations=5, seed=1), seeds=[(1, 1, 1)])
    assert len(seen) == len(set(seen)) and (1, 1, 1) in seen


def test_partition_without_backend_is_named():
    p = Problem(np.array([[1.0, 2.0], [math.inf, math.inf]]))
    with pytest.raises(FxscaleError, match="partition 1 has no backend"):
        solve(p)


@pytest.fixture(scope="module")
def resnet_parts():
    model = digits_resnet().eval()
    x = torch.randn(1, 1, 8, 8)
    gm = fxscale.trace(model, x)
    opt, _ = optimize_graph(gm)
    return model, x, opt, partition_graph(opt, "block", max_partitions=5, inputs=(x,))


def test_hybrid_of_mixed_layouts_matches_eager(resnet_parts):
    model, x, opt, parts = resnet_parts
    bes = {"eager": create_backend("eager"), "channels_last": create_backend("channels_last")}
    m = compile_pairs(parts, bes)
    assert len(m.compiled) == 2 * len(parts.partitions) and not m.reasons
    choice = ["channels_last" if i % 2 else "eager" for i in range(len(parts.partitions))]
    hybrid = build_hybrid(parts, choice, m.compiled, m.layouts)
    with torch.no_grad():
        out = hybrid(x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    assert out.is_contiguous()
    assert [hybrid.get_submodule(p.name).backend for p in parts.partitions] == choice
    merged, mchoice, compiled, runs = merge_runs(parts, ["eager"] * len(parts.partitions), bes, opt)
    assert len(merged.partitions) == 1 and runs == [list(range(len(parts.partitions)))]
    with torch.no_grad():
        torch.testing.assert_close(build_hybrid(merged, mchoice, compiled, m.layouts)(x), model(x), rtol=1e-4,
                                   atol=1e-5)


def test_transition_costs_enter_the_additive_model(resnet_parts):
    _, _, _, parts = resnet_parts
    bes = {"eager": create_backend("eager"), "channels_last": create_backend("channels_last")}
    m = compile_pairs(parts, bes)
    m.latency[:] = 1.0
    for e in parts.edges:
        m.transitions[e] = np.array([[0.0, 0.5], [0.25, 0.0]])
    prob = m.problem()
    n = len(parts.partitions)
    assert prob.cost([0] * n) == pytest.approx(n)  # eager (contiguous) everywhere: no transition
    all_cl = prob.cost([1] * n)  # channels_last everywhere: pay entering (0.5) and leaving (0.25) once
    assert all_cl == pytest.approx(n + 0.5 * sum(1 for u, _ in parts.edges if u == -1)
                                   + 0.25 * sum(1 for _, v in parts.edges if v == -2))
