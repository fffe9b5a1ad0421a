"""HACScale pieces: Taylor importance, power-law predictor, Algorithm 1, back-off, budgets, config checks."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fxscale
from fxscale.errors import FxscaleError, PlanError
from fxscale.scaling.budget import Budget, parse_budget, round_width
from fxscale.scaling.greedy import CostLatency, ParamTracker, importance_aware_widths
from fxscale.scaling.importance import Importance, importance
from fxscale.scaling.pipeline import ScaleConfig
from fxscale.scaling.powerlaw import ImportancePredictor, PowerLaw, fit_power_law, fit_predictor, sample_configs


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_taylor_importance_matches_brute_force():
    torch.manual_seed(0)
    model = Small().eval()
    x, y = torch.randn(8, 3, 5, 5), torch.randint(0, 4, (8,))
    gm = fxscale.trace(model, x)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    imp = importance(gm, batches)
    want = torch.zeros(6)
    for xb, yb in batches:
        model.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        for p in (model.conv.weight, model.conv.bias, model.bn.weight, model.bn.bias):
            want += ((p.grad * p.detach()) ** 2).reshape(6, -1).sum(1)
    want /= 2
    assert torch.allclose(imp.channels["conv"], want, rtol=1e-4, atol=1e-12)
    assert imp.groups["conv"] == pytest.approx(float(want.mean()), rel=1e-4)
    assert imp.batches == 2 and imp.widths == {"conv": 6}
    assert Importance.from_dict(imp.to_dict()).groups == imp.groups


def test_importance_drives_prune_selection():
    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(4, 3, 5, 5)
    gm = fxscale.trace(model, x)
    scores = torch.tensor([0.0, 5.0, 0.0, 4.0, 0.0, 3.0])
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths={"conv": 3}), init="prune", importance={"conv": scores})
    assert torch.equal(new.conv.weight, model.conv.weight[[1, 3, 5]])


def test_importance_rejects_empty_data():
    gm = fxscale.trace(Small().eval(), torch.randn(1, 3, 5, 5))
    with pytest.raises(FxscaleError, match="no batches"):
        importance(gm, [])


def test_power_law_fit_recovers_parameters():
    rng = np.random.default_rng(0)
    c = np.array([8, 12, 16, 24, 32, 48, 64], dtype=float)
    v = 3.0 * c ** -1.4 * np.exp(rng.normal(0, 0.02, len(c)))
    law = fit_power_law(c, v)
    assert law.a == pytest.approx(3.0, rel=0.1) and law.b == pytest.approx(-1.4, abs=0.05)
    assert law.r2 > 0.99 and law.r2_log > 0.99 and law(16) == pytest.approx(3.0 * 16 ** -1.4, rel=0.1)


def test_power_law_needs_two_widths():
    with pytest.raises(FxscaleError, match="2 distinct widths"):
        fit_power_law([16, 16, 16], [1.0, 2.0, 3.0])


def test_predictor_falls_back_with_warning_and_round_trips():
    mk = lambda widths, vals: Importance({}, dict(zip(["a", "b"], vals)), dict(zip(["a", "b"], widths)))  # noqa
    samples = [mk((8, 16), (1.0, 0.5)), mk((16, 16), (0.5, 0.4)), mk((32, 16), (0.25, 0.3))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = fit_predictor(samples)
    assert "b" in pred.failed and any("median law" in str(w.message) for w in caught)
    assert pred.fits["a"].b == pytest.approx(-1.0, abs=1e-6)
    again = ImportancePredictor.from_dict(pred.to_dict())
    assert again("a", 10) == pytest.approx(pred("a", 10))


def test_sample_configs_uniform_then_random(traced_zoo):
    cg = traced_zoo("digits_resnet", 8).cg
    cfgs = sample_configs(cg, 7, seed=1)
    assert cfgs[2] == {g.name: g.width for g in cg.scalable}  # multiplier 1.0
    assert cfgs[0]["stem.0"] == 8 and cfgs[4]["stem.0"] == 32
    assert len({tuple(c.values()) for c in cfgs}) == 7
    for c in cfgs[5:]:
        assert all(0.5 * cg[g].width - 1 <= w <= 2 * cg[g].width + 1 for g, w in c.items())


def _resnet18_setup(traced_zoo):
    cg = traced_zoo("resnet18", 64).cg
    pred = ImportancePredictor({g.name: PowerLaw(float(i + 1), -1.0, 1, 1, 5) for i, g in enumerate(cg.scalable)})
    return cg, pred


def test_greedy_paper_rule_follows_importance_and_budget(traced_zoo):
    cg, pred = _resnet18_setup(traced_zoo)
    start = fxscale.ScalingPlan()
    base = CostLatency(cg, start).total
    budget = Budget(latency_ms=base * 1.3, params=2e7)
    r = importance_aware_widths(cg, pred, CostLatency(cg, start), budget, start=start, rule="paper", stride=10)
    assert r.steps and "break the budget" in r.stopped
    first = max(cg.scalable, key=lambda g: pred(g.name, g.width))
    assert r.steps[0].group == first.name and r.steps[0].width == first.width + 10
    for s in r.steps:  # every accepted step is within budget, and the running totals are exact
        assert s.latency_ms <= budget.latency_ms and s.params <= budget.params
    assert r.params == fxscale.cost(cg, r.plan, mode="input").params
    assert r.latency_ms == pytest.approx(CostLatency(cg, r.plan).total, rel=1e-9)


def test_greedy_cost_rule_and_alignment(traced_zoo):
    cg, pred = _resnet18_setup(traced_zoo)
    start = fxscale.ScalingPlan()
    base = CostLatency(cg, start).total
    budget = Budget(latency_ms=base * 1.3)
    paper = importance_aware_widths(cg, pred, CostLatency(cg, start), budget, start=start, rule="paper")
    cost = importance_aware_widths(cg, pred, CostLatency(cg, start), budget, start=start, rule="cost", align=8)
    assert cost.stopped == "no group fits the budget any more"
    assert cost.latency_ms >= paper.latency_ms  # skipping exhausted groups uses more of the budget
    assert all(w % 8 == 0 for g, w in cost.plan.widths.items() if w != cg[g].width)


def test_greedy_rejects_start_over_budget_and_bad_rule(traced_zoo):
    cg, pred = _resnet18_setup(traced_zoo)
    start = fxscale.ScalingPlan()
    with pytest.raises(FxscaleError, match="already breaks the budget"):
        importance_aware_widths(cg, pred, CostLatency(cg, start), Budget(latency_ms=1e-9), start=start)
    with pytest.raises(FxscaleError, match="rule must be one of"):
        importance_aware_widths(cg, pred, CostLatency(cg, start), Budget(), start=start, rule="best")


def test_back_off_finds_largest_accepted_rung(traced_zoo):
    """One back-off for every method: the largest ladder index whose ratio's upper bound fits (index 0 = baseline)."""
    from fxscale.scaling.backoff import MeasuredRatio, back_off
    cg, pred = _resnet18_setup(traced_zoo)
    start = fxscale.ScalingPlan()
    base = CostLatency(cg, start).total
    r = importance_aware_widths(cg, pred, CostLatency(cg, start), Budget(latency_ms=base * 1.5), start=start,
                                rule="cost")
    ladder = [fxscale.ScalingPlan()] + [r.prefix(k) for k in range(1, len(r.steps) + 1)]

    def measure(p):  # "measured" = predicted, with an interval of +-3%: the upper end decides
        x = CostLatency(cg, p).total / base
        return MeasuredRatio(x, 0.97 * x, 1.03 * x, 0.95, 10, True)
    bo = back_off(ladder, measure, 1.2)
    want = max([0] + [i + 1 for i, s in enumerate(r.steps) if 1.03 * s.latency_ms / base <= 1.2])
    assert bo.index == want and bo.measured.high <= 1.2
    assert [c["accepted"] for c in bo.checks] == [c["high"] <= 1.2 for c in bo.checks]
    assert back_off(ladder, lambda p: MeasuredRatio(9, 9, 9, 0.95, 10, True), 1.2).index == 0  # nothing fits


def test_adaptive_intervals_add_rounds_until_tight():
    from fxscale.scaling.backoff import adaptive_intervals
    rng = np.random.default_rng(0)
    calls = []

    def rounds_of(n):  # item 1 is 1.3x item 0 with 5% multiplicative noise per round
        calls.append(n)
        base = 1.0 + 0.01 * rng.standard_normal(n)
        return [list(base), list(1.3 * base * np.exp(0.05 * rng.standard_normal(n)))]
    (b, m), vals = adaptive_intervals(rounds_of, halfwidth=0.02, max_rounds=200)
    assert b.ratio == 1.0 and m.tight and m.low <= 1.3 <= m.high and (m.high - m.low) / 2 <= 0.02 * m.ratio
    assert len(calls) > 1 and m.rounds == sum(calls) == len(vals[1])  # 10 noisy rounds are not enough
    (_b, loose), _ = adaptive_intervals(rounds_of, halfwidth=0.001, max_rounds=30)
    assert loose.rounds == 30 and not loose.tight  # the cap stops it and the record says so


@pytest.mark.parametrize("s", [1.3, 2.0, 4.0])
def test_alpha_candidates_have_equal_flops_after_rounding(traced_zoo, s):
    from fxscale.scaling.alpha import equal_flops_plan
    _gm, cg, _x = traced_zoo("resnet18", 64)
    base = fxscale.cost(cg).flops
    plans = [equal_flops_plan(cg, a, s) for a in (0.25, 0.5, 0.75)]
    ratios = [fxscale.cost(cg, p, mode="input").flops / base for p in plans]
    assert all(abs(x / s - 1) <= 0.05 for x in ratios), ratios
    assert [p.meta["flops_ratio"] for p in plans] == pytest.approx(ratios)
    assert plans[0].resolution[0] <= plans[1].resolution[0] <= plans[2].resolution[0]  # alpha moves it to resolution


def test_s_search_and_tie_rule(traced_zoo):
    from fxscale.scaling.alpha import choose, equal_flops_plan, search_s
    _gm, cg, _x = traced_zoo("resnet18", 64)
    base = fxscale.cost(cg).flops
    fits = lambda p: fxscale.cost(cg, p, mode="input").flops <= 1.6 * base  # noqa: E731
    s = search_s(cg, (0.25, 0.75), 4.0, fits)
    assert 1.3 < s <= 1.6 and all(fits(equal_flops_plan(cg, a, s)) for a in (0.25, 0.75))
    assert search_s(cg, (0.5,), 3.0, None) == 3.0  # no budget: s is the given scale
    cands = [{"alpha": 0.75, "val_acc": 0.9, "measured_ms": 1.0}, {"alpha": 0.25, "val_acc": 0.9, "measured_ms": 1.0},
             {"alpha": 0.5, "val_acc": 0.9, "measured_ms": 0.8}, {"alpha": 0.1, "val_acc": 0.8}]
    assert choose(cands)["alpha"] == 0.5  # tie on val -> lower measured latency
    assert choose(cands[:2])["alpha"] == 0.25  # then the smaller alpha


def test_tied_candidates_with_one_plan_share_one_timing():
    """Identical plans are timed once: their tie goes to the smaller alpha, never to timing noise."""
    from fxscale.scaling.alpha import choose, time_ties
    calls = []

    def measure(plans):  # a noisy clock: every timing differs, later ones faster
        calls.append(list(plans))
        return [1.0 - 0.01 * (len(calls) + k) for k in range(len(plans))]
    cands = [{"alpha": a, "val_acc": v} for a, v in ((0.25, 0.99), (0.5, 0.99), (0.75, 0.99), (0.9, 0.5))]
    keys, plans = ["p8", "p9", "p9", "p10"], ["plan8", "plan9", "plan9", "plan10"]
    time_ties(cands, keys, plans, measure)
    assert calls == [["plan8", "plan9"]]  # each distinct tied plan once, in one call; the untied one not at all
    assert cands[1]["measured_ms"] == cands[2]["measured_ms"] < cands[0]["measured_ms"]
    assert "measured_ms" not in cands[3] and choose(cands)["alpha"] == 0.5
    one = [{"alpha": 0.5, "val_acc": 0.9}, {"alpha": 0.75, "val_acc": 0.9}]
    time_ties(one, ["p", "p"], ["plan", "plan"], measure)  # one distinct plan: nothing to time
    assert len(calls) == 1 and choose(one)["alpha"] == 0.5


def test_param_tracker_matches_cost_model(traced_zoo):
    cg, _ = _resnet18_setup(traced_zoo)
    t = ParamTracker(cg, fxscale.ScalingPlan())
    t.set_width("layer2.0.conv1", 200)
    assert t.total == fxscale.cost(cg, fxscale.ScalingPlan(widths={"layer2.0.conv1": 200})).params


def test_budget_parsing():
    assert parse_budget("1.05x", 10.0, "latency") == pytest.approx(10.5)
    assert parse_budget(12, 10.0, "latency") == 12.0 and parse_budget(None, 1.0, "x") is None
    with pytest.raises(PlanError, match="below the baseline's own latency"):
        parse_budget("0.5x", 10.0, "latency")
    with pytest.raises(PlanError, match="neither a number"):
        parse_budget("fast", 10.0, "latency")
    assert round_width(37, 4, 8) == 40 and round_width(1, 3) == 3


@pytest.mark.parametrize("kw,msg", [({"alpha": 1.0}, "alpha must lie in"), ({"alphas": (0.0, 0.5)}, "alpha must"),
                                    ({"methods": ("magic",)}, "unknown methods"), ({"rule": "x"}, "rule must"),
                                    ({"samples": 1}, "samples must"), ({"variants": ("wide",)}, "unknown variants"),
                                    ({"ci_halfwidth": 0.0}, "ci_halfwidth must"), ({"max_rounds": 5}, "max_rounds"),
                                    ({"flops_tol": 1.5}, "flops_tol must"), ({"baseline_align": 0}, "baseline_align")])
def test_scale_config_rejects_bad_settings(kw, msg):
    with pytest.raises(PlanError, match=msg):
        ScaleConfig(**kw).validate()


def test_compound_exponents(traced_zoo):
    from fxscale.scaling.pipeline import Pipeline
    pipe = Pipeline.__new__(Pipeline)
    pipe.cfg = ScaleConfig(flops_scale=4.0)
    pipe.gm, pipe.cg, _x = traced_zoo("resnet18", 64)
    plan = pipe.compound_plan(0.5)  # r = w = 4^(1/4) = sqrt(2)
    assert plan.resolution == (round(64 * math.sqrt(2)),) * 2
    flops = fxscale.cost(pipe.cg, plan, mode="input").flops / fxscale.cost(pipe.cg).flops
    assert flops == pytest.approx(4.0, rel=0.1)


# ---- importance samples around the working point and the held-out check (fxscale.scaling.samples) -----------------
def _resnet_cg():
    from fxscale.zoo import digits_resnet
    torch.manual_seed(0)
    return fxscale.analyze(fxscale.trace(digits_resnet().eval(), torch.randn(1, 1, 8, 8)))


def test_local_configs_stay_around_the_working_point():
    from fxscale.scaling.samples import local_configs
    cg = _resnet_cg()
    configs = local_configs(cg, 6, seed=3)
    assert configs[0] == {g.name: g.width for g in cg.scalable} and len(configs) == 6
    assert configs == local_configs(cg, 6, seed=3) and configs != local_configs(cg, 6, seed=4)
    for c in configs[1:]:
        for g in cg.scalable:  # x0.75..x1.25, then rounded to the divisor
            assert 0.75 * g.width - g.divisor <= c[g.name] <= 1.25 * g.width + g.divisor and c[g.name] % g.divisor == 0
    assert local_configs(cg, 3, seed=3, include_center=False) == configs[1:4]  # the same stream, no center
    with pytest.raises(FxscaleError, match="spread"):
        local_configs(cg, 2, spread=(1.1, 1.2))


def test_prediction_check_recovers_a_perfect_and_a_biased_predictor():
    from fxscale.scaling.samples import prediction_check
    rng = np.random.default_rng(0)
    laws = {"g0": PowerLaw(2.0, -1.0, 1, 1, 5), "g1": PowerLaw(0.5, -2.0, 1, 1, 5)}
    held = [Importance({}, {g: law(w) for g, law in laws.items()}, {"g0": w, "g1": w + 3}) for w in
            rng.integers(8, 40, size=6).tolist()]
    for s in held:  # widths differ per group: measure each at its own width
        s.groups = {g: laws[g](s.widths[g]) for g in laws}
    exact = prediction_check(ImportancePredictor(laws), held)
    assert exact["overall"]["r2_log"] == pytest.approx(1.0) and exact["overall"]["mape"] == pytest.approx(0, abs=1e-9)
    assert exact["overall"]["n"] == 12 and set(exact["groups"]) == {"g0", "g1"}
    biased = {g: PowerLaw(law.a * 1.5, law.b, 1, 1, 5) for g, law in laws.items()}
    off = prediction_check(ImportancePredictor(biased), held)
    assert off["overall"]["mape"] == pytest.approx(50.0) and off["overall"]["median_ratio"] == pytest.approx(1.5)
    assert off["overall"]["r2_log"] < 1.0
    with pytest.raises(FxscaleError, match="held-out"):
        prediction_check(ImportancePredictor(laws), [])


def test_sampling_settings_are_checked():
    for kw, needle in (({"sample_mode": "everywhere"}, "sample_mode"), ({"sample_seeds": 0}, "sample_seeds"),
                       ({"importance_holdout": -1}, "importance_holdout"), ({"importance_norm": "layer"},
                                                                            "importance_norm must be one of group")):
        with pytest.raises(PlanError, match=needle):
            ScaleConfig(**kw).validate()


@pytest.mark.parametrize(("loss", "val", "ok"), [
    ([2.0, 1.0, 0.50, 0.49], [0.5, 0.8, 0.9, 0.9], True),     # flat over the last quarter, val at its best
    ([2.0, 1.0, 0.50, 0.30], [0.5, 0.8, 0.9, 0.9], False),    # still falling
    ([2.0, 1.0, 0.50, 0.49], [0.5, 0.95, 0.9, 0.9], False),   # final val 5 pp under the best
    ([2.0, 1.9], [0.5, 0.6], False),                          # too short to judge
])
def test_sample_convergence_criterion(loss, val, ok):
    from fxscale.scaling.samples import converged
    assert converged(loss, val) is ok
