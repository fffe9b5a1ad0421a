"""HANT phase 2: the integer program against brute force, k-best via diversity cuts, infeasible budgets, input
validation, and the greedy and random selection baselines."""
from __future__ import annotations

import math
import random
import re
from collections import Counter

import numpy as np
import pytest

from fxscale.errors import FxscaleError, InfeasibleBudget, PlanError
from fxscale.hant.select import select_greedy, select_random
from fxscale.hant.solver import Option, Problem, evaluate, fits, frontier, plan_of, solve


# ------------------------------------------------------------------------------------------------------ helpers
def exact_covers(problem: Problem, start: int = 0):
    """Every assembly (exact cover of the sites by options), by recursion: the brute-force oracle."""
    if start == len(problem.sites):
        yield ()
        return
    for j, opt in enumerate(problem.options):
        if opt.covers[0] == start:
            for rest in exact_covers(problem, start + len(opt.covers)):
                yield (j, *rest)


def brute_force(problem: Problem, budget: float, max_params: float | None = None) -> list[tuple[float, tuple]]:
    """(score, sorted chosen) of every feasible assembly, best first."""
    out = []
    for chosen in exact_covers(problem):
        opts = [problem.options[j] for j in chosen]
        lat = math.fsum([problem.fixed_latency] + [o.latency for o in opts])
        par = math.fsum([problem.fixed_params] + [o.params for o in opts])
        if fits(lat, budget) and fits(par, max_params):
            out.append((math.fsum(o.score for o in opts), tuple(sorted(chosen))))
    return sorted(out, key=lambda t: -t[0])


def random_problem(seed: int, *, multi: bool) -> Problem:
    rng = random.Random(seed)
    n_sites = rng.randint(2, 5)
    opts = []
    for s in range(n_sites):
        for c in range(rng.randint(2, 5)):
            opts.append(Option(f"s{s}c{c}", (s,), rng.gauss(0, 1), rng.uniform(0.1, 2.0), rng.uniform(0, 10)))
    if multi:
        for m in range(rng.randint(1, 3)):
            s = rng.randrange(n_sites - 1)
            opts.append(Option(f"m{m}@{s}", (s, s + 1), rng.gauss(0, 1.5), rng.uniform(0.1, 2.5), rng.uniform(0, 15)))
    rng.shuffle(opts)
    return Problem(tuple(f"site{s}" for s in range(n_sites)), tuple(opts), fixed_latency=rng.uniform(0, 1),
                   fixed_params=rng.uniform(0, 5))


def random_bounds(problem: Problem, seed: int) -> tuple[float, float | None]:
    """A budget between the fastest and slowest assemblies (sometimes below: infeasible), params bound half the time."""
    rng = random.Random(seed + 10_000)
    lats = sorted(evaluate(problem, c).latency for c in exact_covers(problem))
    pars = sorted(evaluate(problem, c).params for c in exact_covers(problem))
    budget = rng.uniform(lats[0] - 0.2, lats[-1])
    return budget, (rng.uniform(pars[0] - 1, pars[-1]) if rng.random() < 0.5 else None)


def check_solution(problem: Problem, sol, budget, max_params) -> None:
    again = evaluate(problem, sol.chosen)
    assert (again.score, again.latency, again.params) == (sol.score, sol.latency, sol.params)
    assert fits(sol.latency, budget) and fits(sol.params, max_params)
    covered = sorted(c for j in sol.chosen for c in problem.options[j].covers)
    assert covered == list(range(len(problem.sites)))


def toy() -> Problem:
    """Two sites; a multi-site option 'm' replaces both."""
    return Problem(("a", "b"), (Option("teacher", (0,), 1.0, 2.0, 4.0), Option("ds", (0,), 0.5, 1.0, 1.0),
                                Option("teacher", (1,), 1.0, 2.0, 4.0), Option("ds", (1,), 0.2, 0.5, 1.0),
                                Option("m", (0, 1), 1.8, 1.2, 6.0)), fixed_latency=1.0)


# ---------------------------------------------------------------------------------------------- solve vs oracle
@pytest.mark.parametrize("chunk", range(8))
def test_solve_matches_brute_force_top_k(chunk):
    """200 random instances (2-5 sites x 2-5 options, half with multi-site options, half with a params bound)."""
    for seed in range(chunk * 25, chunk * 25 + 25):
        problem = random_problem(seed, multi=seed % 2 == 1)
        budget, max_params = random_bounds(problem, seed)
        oracle = brute_force(problem, budget, max_params)
        if not oracle:
            with pytest.raises(InfeasibleBudget):
                solve(problem, budget, max_params=max_params)
            continue
        sols = solve(problem, budget, max_params=max_params, k=3)
        assert len(sols) == min(3, len(oracle)), seed
        assert len({s.chosen for s in sols}) == len(sols), seed
        assert all(a.score >= b.score for a, b in zip(sols, sols[1:])), seed
        np.testing.assert_allclose([s.score for s in sols], [o[0] for o in oracle[:len(sols)]], atol=1e-6,
                                   err_msg=f"seed {seed}")
        for sol in sols:
            check_solution(problem, sol, budget, max_params)
            assert sol.stats.lp_bound >= sol.score - 1e-6 and sol.stats.lp_gap >= 0.0


@pytest.mark.parametrize(("score_scale", "cost_scale"), [(1e-6, 1e4), (1e5, 1e-5), (1.0, 1.0)])
def test_solutions_do_not_depend_on_the_units_of_scores_and_costs(score_scale, cost_scale):
    """The rows and objective are normalised, so microsecond vs second latencies or tiny loss deltas do not change
    the answer."""
    for seed in range(200, 215):
        problem = random_problem(seed, multi=True)
        budget, max_params = random_bounds(problem, seed)
        oracle = brute_force(problem, budget, max_params)
        if not oracle:
            continue
        scaled = Problem(problem.sites, tuple(Option(o.name, o.covers, o.score * score_scale,
                                                     o.latency * cost_scale, o.params * cost_scale)
                                              for o in problem.options),
                         problem.fixed_latency * cost_scale, problem.fixed_params * cost_scale)
        sols = solve(scaled, budget * cost_scale, max_params=None if max_params is None else max_params * cost_scale,
                     k=2)
        assert [s.chosen for s in sols] == [o[1] for o in oracle[:2]], seed


def test_equal_scores_still_give_a_feasible_exact_cover():
    problem = Problem(("a", "b", "c"), tuple(Option(f"c{c}", (s,), 0.0, float(c + 1)) for s in range(3)
                                             for c in range(3)))
    sols = solve(problem, 5.0, k=4)
    assert len(sols) == 4 and len({s.chosen for s in sols}) == 4
    for sol in sols:
        check_solution(problem, sol, 5.0, None)


def test_k_larger_than_the_feasible_set_returns_all_of_it_distinct():
    problem = toy()
    oracle = brute_force(problem, 3.4)
    sols = solve(problem, 3.4, k=10)
    assert [s.chosen for s in sols] == [o[1] for o in oracle] == [(4,), (1, 3)]
    assert sols[0].latency == pytest.approx(2.2) and sols[0].score == pytest.approx(1.8)


def test_unbounded_budget_picks_the_highest_score_per_site():
    sol, = solve(toy(), math.inf)
    assert plan_of(toy(), sol) == {"a": "teacher", "b": "teacher"} and sol.latency == pytest.approx(5.0)
    assert plan_of(toy(), solve(toy(), 3.0)[0]) == {"a": "m", "b": "m"}


def test_params_bound_is_enforced():
    sol, = solve(toy(), math.inf, max_params=5.0)  # teacher+teacher needs 8, m 6: best within 5 is ds+teacher (1.5)
    assert sol.chosen == (1, 2) and sol.params == pytest.approx(5.0)


def test_an_assembly_over_budget_only_within_highs_tolerance_is_cut_and_the_next_one_returned():
    """The best assembly overshoots the budget by 5e-8 relative: more than TOL (1e-9) but inside HiGHS's own
    feasibility tolerance, so the solver may accept it; the re-verification must cut it and re-solve."""
    budget = 10.0
    opts = (Option("best", (0,), 5.0, budget * (1 + 5e-8)), Option("ok", (0,), 1.0, 9.0),
            Option("slow", (0,), 6.0, 20.0))
    sols = solve(Problem(("x",), opts), budget, k=2)
    assert [s.chosen for s in sols] == [(1,)]


def test_thirty_sites_by_thirty_candidates_matches_an_exact_dynamic_program():
    """Integer latencies make the multiple-choice knapsack exactly solvable by DP over the latency used."""
    rng = np.random.default_rng(0)
    n_sites, n_cand = 30, 30
    lat = rng.integers(1, 40, size=(n_sites, n_cand))
    score = -np.abs(rng.normal(size=(n_sites, n_cand))) * lat.max() / lat  # slower candidates score better
    opts = tuple(Option(f"c{c}", (s,), float(score[s, c]), float(lat[s, c]))
                 for s in range(n_sites) for c in range(n_cand))
    budget = int(lat.min(axis=1).sum() + 0.3 * (lat.max(axis=1).sum() - lat.min(axis=1).sum()))
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    for s in range(n_sites):
        new = np.full(budget + 1, -np.inf)
        for c in range(n_cand):
            d = int(lat[s, c])
            new[d:] = np.maximum(new[d:], best[:budget + 1 - d] + score[s, c])
        best = new
    problem = Problem(tuple(f"s{s}" for s in range(n_sites)), opts, fixed_latency=0.0)
    sols = solve(problem, float(budget), k=3)
    assert sols[0].score == pytest.approx(best.max(), abs=1e-6)
    assert len({s.chosen for s in sols}) == 3 and sols[0].score >= sols[1].score >= sols[2].score
    for sol in sols:
        check_solution(problem, sol, budget, None)


def test_frontier_is_monotone_and_none_below_the_fastest_assembly():
    problem = random_problem(7, multi=True)
    lats = sorted(evaluate(problem, c).latency for c in exact_covers(problem))
    budgets = [lats[0] - 0.1] + list(np.linspace(lats[0], lats[-1], 6))
    front = frontier(problem, budgets)
    assert front[0] is None and all(f is not None for f in front[1:])
    assert all(a.score <= b.score + 1e-9 for a, b in zip(front[1:], front[2:]))
    assert front[-1].score == pytest.approx(brute_force(problem, math.inf)[0][0])


# ----------------------------------------------------------------------------------------- infeasible / invalid
def test_infeasible_budget_names_budget_minimum_and_slowest_sites():
    problem = toy()  # the fastest assembly is m (1.2) + fixed 1.0 = 2.2
    with pytest.raises(InfeasibleBudget, match=re.escape("latency budget 2 is below the minimum achievable "
                                                         "latency 2.2")) as info:
        solve(problem, 2.0)
    assert "a+b (m, 1.2)" in str(info.value)
    assert isinstance(info.value, PlanError) and isinstance(info.value, FxscaleError)
    for select in (select_greedy, lambda p, b: select_random(p, b, seed=0)):
        with pytest.raises(InfeasibleBudget, match="minimum achievable latency 2.2"):
            select(problem, 2.0)


def test_infeasible_params_bound_and_joint_bounds():
    problem = toy()
    with pytest.raises(InfeasibleBudget, match=re.escape("max_params 1.5 is below the minimum achievable params 2")):
        solve(problem, 10.0, max_params=1.5)
    # within 2.6 only m (2.2, 6 params) and ds+ds (2.5, 2 params) fit latency; params <= 1.9 rules out both jointly
    with pytest.raises(InfeasibleBudget, match=re.escape("no assembly meets both the latency budget 2.4 and "
                                                         "max_params 5.5: the fastest assembly within the params "
                                                         "bound takes 2.5")):
        solve(problem, 2.4, max_params=5.5)


@pytest.mark.parametrize(("options", "needle"), [
    ((Option("t", (0,), 1.0, 1.0),), "site 1 'b' has no option covering it"),
    ((Option("t", (0,), 1.0, 1.0), Option("t", (1,), 1.0, -0.5)), "option 1 't': latency must be a finite number >= 0"),
    ((Option("t", (0,), float("nan"), 1.0), Option("t", (1,), 1.0, 1.0)), "option 0 't': score must be a finite"),
    ((Option("t", (0,), 1.0, 1.0), Option("t", (1,), 1.0, 1.0), Option("x", (0, 2), 1.0, 1.0)),
     "option 2 'x': covers (0, 2) must be consecutive"),
    ((Option("t", (0,), 1.0, 1.0), Option("t", (1,), 1.0, 1.0), Option("x", (1, 2, 3), 1.0, 1.0)),
     "option 2 'x': covers (1, 2, 3) out of range for 3 sites"),
    ((Option("t", (0,), 1.0, 1.0), Option("t", (2,), 1.0, 1.0), Option("x", (), 1.0, 1.0)),
     "option 2 'x': covers must be a non-empty tuple"),
    ((Option("u", (0, 1), 1.0, 1.0), Option("v", (1, 2), 1.0, 1.0)),
     "no assembly covers every site exactly once: after sites 0..1 the options cannot continue exactly at site 2"),
])
def test_malformed_problems_raise_fxscale_error_naming_the_culprit(options, needle):
    problem = Problem(("a", "b", "c"), options)
    with pytest.raises(FxscaleError, match=re.escape(needle)):
        solve(problem, 10.0)


@pytest.mark.parametrize(("kwargs", "needle"), [({"budget": float("nan")}, "latency budget must be a number"),
                                                ({"budget": 10.0, "max_params": -1.0}, "max_params must be"),
                                                ({"budget": 10.0, "k": 0}, "k must be an integer >= 1")])
def test_bad_bounds_and_k_raise_fxscale_error(kwargs, needle):
    with pytest.raises(FxscaleError, match=needle):
        solve(toy(), **kwargs)


def test_duplicate_site_names_are_rejected():
    with pytest.raises(FxscaleError, match="'a' repeats"):
        solve(Problem(("a", "a"), (Option("t", (0,), 1.0, 1.0), Option("t", (1,), 1.0, 1.0))), 5.0)


# ----------------------------------------------------------------------------------------------------- baselines
def test_greedy_is_feasible_no_better_than_optimal_and_deterministic():
    for seed in range(60):
        problem = random_problem(seed, multi=seed % 3 == 0)
        budget, max_params = random_bounds(problem, seed)
        oracle = brute_force(problem, budget, max_params)
        if not oracle:
            continue
        sol = select_greedy(problem, budget, max_params=max_params)
        check_solution(problem, sol, budget, max_params)
        assert sol.score <= oracle[0][0] + 1e-9
        assert select_greedy(problem, budget, max_params=max_params) == sol


def test_greedy_takes_the_best_score_per_ms_first():
    """From the fastest assembly (f0, f1: 2 ms), upgrade to a0 (+1 score, +1 ms) beats b1 (+1.5 score, +3 ms);
    after a0 the 2 ms left do not fit b1 (+3 ms), so greedy stops below the optimum (f0 + b1)."""
    opts = (Option("f", (0,), 0.0, 1.0), Option("a", (0,), 1.0, 2.0), Option("f", (1,), 0.0, 1.0),
            Option("b", (1,), 1.5, 4.0))
    problem = Problem(("x", "y"), opts)
    sol = select_greedy(problem, 5.0)
    assert sol.chosen == (1, 2) and sol.stats.method == "greedy: 1 moves"
    assert solve(problem, 5.0)[0].chosen == (0, 3)


def test_greedy_merges_into_a_multi_site_option_when_it_pays():
    sol = select_greedy(toy(), 3.0)  # from ds+ds (2.5): m (2.2, score 1.8) is faster and better
    assert plan_of(toy(), sol) == {"a": "m", "b": "m"}


def test_random_is_feasible_seeded_and_varied():
    problem = random_problem(3, multi=True)
    budget = sorted(evaluate(problem, c).latency for c in exact_covers(problem))[-1] * 0.9
    sols = [select_random(problem, budget, seed=s) for s in range(20)]
    for sol in sols:
        check_solution(problem, sol, budget, None)
    assert select_random(problem, budget, seed=5) == sols[5]
    assert len({s.chosen for s in sols}) > 3
    assert all(s.stats.method.startswith("random: rejection") for s in sols)


@pytest.mark.parametrize("multi", [False, True])
def test_random_is_uniform_over_feasible_assemblies(multi):
    opts = [Option(f"c{c}", (s,), 0.0, float(c)) for s in range(2) for c in range(3)]
    if multi:
        opts.append(Option("m", (0, 1), 0.0, 1.0))
    problem = Problem(("a", "b"), tuple(opts))
    feasible = {chosen for _s, chosen in brute_force(problem, 2.0)}  # latency c0 + c1 <= 2: 6 (+1 with m)
    assert len(feasible) == 6 + multi
    draws = Counter(select_random(problem, 2.0, seed=s, max_tries=64).chosen for s in range(700))
    assert set(draws) == feasible
    expected = 700 / len(feasible)
    assert all(abs(n - expected) < 5 * math.sqrt(expected) for n in draws.values()), draws


def test_random_falls_back_to_a_walk_when_rejection_finds_nothing():
    opts = tuple(Option(f"c{c}", (s,), 0.0, float(c)) for s in range(12) for c in range(4))
    problem = Problem(tuple(f"s{s}" for s in range(12)), opts)
    sol = select_random(problem, 1.0, seed=1, max_tries=8)  # 13 of 4**12 assemblies fit: acceptance ~1e-6
    check_solution(problem, sol, 1.0, None)
    assert "walk" in sol.stats.method


# ------------------------------------------------------------------------------------------- re-verification
@pytest.mark.parametrize(("x", "needle"), [([0.5, 0.5, 1.0, 0.0, 0.0], "fractional x"),
                                           ([1.0, 1.0, 1.0, 0.0, 0.0], "does not cover sites ['a'] exactly once"),
                                           ([1.0, 0.0, 0.0, 0.0, 0.0], "does not cover sites ['b'] exactly once")])
def test_a_solver_answer_that_breaks_the_problem_is_an_internal_error(monkeypatch, x, needle):
    """The answer is re-verified from the Problem, not trusted: a broken one raises RuntimeError, not FxscaleError."""
    import types

    import fxscale.hant.solver as solver_mod

    def broken_milp(c, **_kw):
        return types.SimpleNamespace(status=0, x=np.array(x), fun=float(np.dot(c, x)), message="", mip_node_count=0)

    monkeypatch.setattr(solver_mod, "milp", broken_milp)
    with pytest.raises(RuntimeError, match=re.escape(needle)):
        solve(toy(), 10.0)


def test_a_solver_answer_far_over_budget_is_an_internal_error(monkeypatch):
    import types

    import fxscale.hant.solver as solver_mod

    x = [1.0, 0.0, 1.0, 0.0, 0.0]  # teacher+teacher: 5.0 against a budget of 3.0
    monkeypatch.setattr(solver_mod, "milp", lambda c, **_kw: types.SimpleNamespace(
        status=0, x=np.array(x), fun=float(np.dot(c, x)), message="", mip_node_count=0))
    with pytest.raises(RuntimeError, match="breaks a bound"):
        solve(toy(), 3.0)


def test_two_site_options_through_table_choice_and_random_assemblies():
    from fxscale.hant.latency import LatencyTable, _random_choices
    from fxscale.hant.methods import choice_of
    table = LatencyTable({"a": {"teacher": 1.0, "x": 0.5}, "b": {"teacher": 2.0, "x": 1.0},
                          "c": {"teacher": 4.0, "x": 2.0}, "a+b": {"m": 0.25}, "b+c": {"m": 0.75}},
                         teacher_ms=10.0, fixed_ms=3.0)
    assert table.predict({}) == 10.0  # every site keeps its teacher
    assert table.predict({"a+b": "m", "c": "x"}) == 3.0 + 0.25 + 2.0  # the pair replaces a and b
    assert table.predict({"a": "x", "b+c": "m"}) == 3.0 + 0.5 + 0.75
    for choice in _random_choices(table, 40, seed=1):
        covered = [part for key in choice for part in key.split("+")]
        assert sorted(covered) == ["a", "b", "c"]  # each site exactly once
    assert any("+" in k for c in _random_choices(table, 40, seed=1) for k in c)
    problem = Problem(("a", "b", "c"), (Option("x", (0,), 1.0, 0.5), Option("m", (1, 2), 2.0, 0.75),
                                        Option("teacher", (1,), 0.0, 2.0), Option("teacher", (2,), 0.0, 4.0)),
                      fixed_latency=3.0)
    sol = solve(problem, 5.0)[0]
    assert choice_of(problem, sol) == {"a": "x", "b+c": "m"}
