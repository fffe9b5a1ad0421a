"""Baseline scaling methods (fxscale.scaling.baselines) as plan generators on the digits models."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import fxscale
from fxscale.errors import FxscaleError, PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling import baselines as B
from fxscale.scaling.budget import Budget, Evaluator
from fxscale.zoo import digits_resnet, digits_vgg

torch.set_num_threads(1)

METHODS = ["depth", "dollar", "efficientnet", "neuralscale-lite", "resolution", "uniform"]
# registry rows the generic tests below cannot call on a bare graph, each with the reason (tested elsewhere)
EXCLUDED = {"neuralscale": "needs the pruning trajectory of a trained model: tests/test_neuralscale_descent.py"}
MODELS = {"resnet": digits_resnet, "vgg": digits_vgg}


def latency(cg, plan):
    """A known function of the cost model: 1 ms per MFLOP plus a fixed 0.01 ms."""
    return 1e-6 * fxscale.cost(cg, plan, mode="input").flops + 0.01


@pytest.fixture(scope="module", params=sorted(MODELS))
def cg(request):
    torch.manual_seed(0)
    gm = fxscale.trace(MODELS[request.param]().eval(), torch.randn(1, 1, 8, 8))
    return fxscale.analyze(gm)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return fxscale.analyze(fxscale.trace(digits_resnet().eval(), torch.randn(1, 1, 8, 8)))


def flops(cg, plan):
    if plan.depths:
        new = fxscale.transform(cg.gm, ScalingPlan(widths=plan.widths, resolution=plan.resolution,
                                                   depths=plan.depths), init="reinit", resolution_mode="input")
        return fxscale.cost(new, mode="input").flops
    return fxscale.cost(cg, plan, mode="input").flops


def next_plan(cg, plan):
    """The plan one step further along the method's knob (past the bisection's resolution)."""
    m = plan.meta
    stages = B.repeatable_stages(cg)
    eps = 1e-4
    if m["method"] == "uniform":
        return B.uniform_plan(cg, m["w"] * (1 + eps), m["align"])
    if m["method"] == "resolution":
        return B.resolution_plan(cg, m["r"] * (1 + eps))
    if m["method"] == "depth":
        return B.depth_plan(stages, m["increments"] + 1)
    if m["method"] == "efficientnet":
        phi = m["phi"] + eps
        return B.compound_plan(cg, 1.2 ** phi, 1.1 ** phi, 1.15 ** phi, stages=stages, align=m["align"])
    if m["method"] == "dollar":
        s = m["s"] * (1 + eps)
        return B.compound_plan(cg, s ** 0.1, s ** 0.4, s ** 0.05, stages=stages, align=m["align"],
                               depth_rounding="round")
    if m["method"] == "neuralscale-lite":
        p0 = m["params_target"] / m["params_ratio"]
        fit = {k: (v["a"], v["b"]) for k, v in m["fit"].items()}
        return B.neuralscale_plan(cg, fit, m["params_target"] + eps * p0, m["align"])
    raise AssertionError(m["method"])


ABLATIONS = ["random@hacres", "uniform@hacres"]


def test_registry():
    assert B.list_baselines() == sorted(METHODS + ABLATIONS + list(EXCLUDED))
    assert set(B.BASELINES) == set(METHODS + ABLATIONS) | set(EXCLUDED)
    for name in METHODS + ABLATIONS:
        assert B.get_baseline(name) is B.BASELINES[name]
    with pytest.raises(FxscaleError) as e:
        B.get_baseline("mobilenet")
    assert "mobilenet" in str(e.value) and all(n in str(e.value) for n in METHODS)


def test_repeatable_stages(cg):
    stages = B.repeatable_stages(cg)
    expected = {"stages.0": 2, "stages.1": 2} if "stem.0" in cg.by_name else {"features.3": 1, "features.10": 1}
    assert stages == expected and list(stages) == list(expected)  # model order
    ScalingPlan(depths={k: n + 1 for k, n in stages.items()}).validate(cg)


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, x):
        return x + self.conv(x)


class _FlatNet(nn.Module):
    """Blocks in a flat Sequential (torchvision MobileNetV2 style): the blocks are the units, not their layers."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), _Block(8), _Block(8), nn.Conv2d(8, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def test_repeatable_stages_skip_layers_inside_blocks():
    cg = fxscale.analyze(fxscale.trace(_FlatNet().eval(), torch.randn(1, 1, 8, 8)))
    from fxscale.passes.depth import stage_keys
    assert "features.1.conv.0" in stage_keys(cg.gm)
    assert B.repeatable_stages(cg) == {"features.1": 1, "features.2": 1}
    ev = Evaluator(cg, latency)
    plan = B.depth(cg, ev, None, flops_scale=1.6)
    assert plan.depths and set(plan.depths) <= {"features.1", "features.2"}
    fxscale.transform(cg.gm, plan)  # identity-initialised copies


@pytest.mark.parametrize("name", METHODS)
def test_latency_budget(cg, name):
    ev = Evaluator(cg, latency)
    base_ms, _ = ev(ScalingPlan())
    budget = Budget(latency_ms=2.0 * base_ms)
    plan = B.get_baseline(name)(cg, ev, budget)
    plan.validate(cg)
    lat, params = ev(plan)
    assert lat <= budget.latency_ms
    assert lat > base_ms  # every method scales something up at 2x
    assert plan.meta["method"] == name and plan.meta["capped"] is False
    assert plan.meta["predicted"]["latency_ms"] == pytest.approx(lat)
    assert plan.meta["predicted"]["params"] == params
    assert plan.meta["limits"] == {"latency_ms": budget.latency_ms, "params": None, "flops_scale": None}
    nxt = next_plan(cg, plan)  # maximal: one step further does not fit
    assert nxt.to_json() != ScalingPlan(widths=plan.widths, resolution=plan.resolution,
                                        depths=plan.depths).to_json()
    assert not ev.fits(nxt, budget)
    assert ScalingPlan.from_json(plan.to_json()).meta == plan.meta  # meta is plain JSON


@pytest.mark.parametrize("name", METHODS)
def test_flops_scale(cg, name):
    ev = Evaluator(cg, latency)
    base = fxscale.cost(cg, mode="input").flops
    plan = B.get_baseline(name)(cg, ev, Budget(), flops_scale=2.0)
    plan.validate(cg)
    f = flops(cg, plan)
    assert f == plan.meta["predicted"]["flops"]
    assert f <= 2.0 * base
    assert flops(cg, next_plan(cg, plan)) > 2.0 * base
    if name in ("uniform", "dollar", "neuralscale-lite"):  # fine-grained knobs: within a few %
        assert f >= 0.95 * 2.0 * base


def test_resolution_hits_grid_flops(resnet):
    ev = Evaluator(resnet, latency)
    base = fxscale.cost(resnet, mode="input").flops
    target = fxscale.cost(resnet, ScalingPlan(resolution=(12, 12)), mode="input").flops / base
    plan = B.resolution(resnet, ev, None, flops_scale=target)
    assert plan.resolution == (12, 12) and plan.meta["r"] == pytest.approx(1.5, abs=1 / 16)


def test_params_budget_and_cap(resnet):
    ev = Evaluator(resnet, latency)
    _, p0 = ev(ScalingPlan())
    budget = Budget(params=1.5 * p0)
    plan = B.uniform(resnet, ev, budget)
    assert plan.meta["predicted"]["params"] <= 1.5 * p0 and not plan.meta["capped"]
    assert not ev.fits(next_plan(resnet, plan), budget)
    # resolution does not change params: it runs to its cap and says so
    plan = B.resolution(resnet, ev, budget)
    assert plan.meta["capped"] is True and plan.meta["r"] == B.MAX_RESOLUTION
    # both limits together
    plan = B.uniform(resnet, ev, budget, flops_scale=1.2)
    assert plan.meta["predicted"]["flops_ratio"] <= 1.2 and plan.meta["predicted"]["params"] <= 1.5 * p0


def test_compound_exponents(resnet):
    ev = Evaluator(resnet, latency)
    stages = B.repeatable_stages(resnet)
    plan = B.dollar(resnet, ev, None, flops_scale=3.0)
    m = plan.meta
    assert m["alpha"] == 0.8
    assert m["d"] * m["w"] ** 2 * m["r"] ** 2 == pytest.approx(m["s"], rel=1e-9)
    assert (m["d"], m["w"], m["r"]) == pytest.approx((m["s"] ** 0.1, m["s"] ** 0.4, m["s"] ** 0.05))  # pycls d1_w8_r1
    ach = m["achieved"]
    assert abs(ach["r"] - m["r"]) <= 0.5 / 8 + 1e-9  # resolution rounded to a pixel
    assert abs(ach["w"] - m["w"]) <= 0.5 / 16 + 1e-9  # widths rounded to a channel (narrowest group: 16)
    assert plan.depths == {k: round(n * m["d"]) for k, n in stages.items() if round(n * m["d"]) != n}

    plan = B.efficientnet(resnet, ev, None, flops_scale=3.0)
    m = plan.meta
    phi = m["phi"]
    assert (m["d"], m["w"], m["r"]) == pytest.approx((1.2 ** phi, 1.1 ** phi, 1.15 ** phi))
    assert m["bases"] == {"d": 1.2, "w": 1.1, "r": 1.15} and phi > 0
    assert plan.depths == {k: math.ceil(n * m["d"]) for k, n in stages.items()}
    assert plan.widths == B.uniform_plan(resnet, m["w"]).widths
    assert plan.resolution == (round(8 * m["r"]),) * 2


def test_depth_round_robin(resnet):
    stages = B.repeatable_stages(resnet)
    assert B.depth_plan(stages, 0).depths == {}
    assert B.depth_plan(stages, 1).depths == {"stages.0": 3}
    assert B.depth_plan(stages, 3).depths == {"stages.0": 4, "stages.1": 3}
    ev = Evaluator(resnet, latency)
    plan = B.depth(resnet, ev, None, flops_scale=2.0)
    assert plan.meta["stages"] == {k: [n, plan.depths.get(k, n)] for k, n in stages.items()}
    assert plan.widths == {} and plan.resolution is None


def test_neuralscale_importance(resnet):
    ev = Evaluator(resnet, latency)
    gen = torch.Generator().manual_seed(0)
    imp = {g.name: torch.rand(g.width, generator=gen) for g in resnet.scalable}
    imp["stages.1.1.conv1"] = imp["stages.1.1.conv1"] + 10.0  # never pruned: keeps its width
    budget = Budget(latency_ms=1.5 * ev(ScalingPlan())[0])
    plan = B.neuralscale_lite(resnet, ev, budget, importance=imp)
    assert plan.meta["importance"] == "given" and plan.meta["samples"] >= 3
    assert plan.meta["fit"]["stages.1.1.conv1"]["b"] == pytest.approx(0.0, abs=1e-9)
    ratios = {g.name: plan.widths[g.name] / g.width for g in resnet.scalable}
    assert ratios["stages.1.1.conv1"] == 1.0
    assert max(ratios.values()) > 1.2 and max(ratios.values()) - min(ratios.values()) > 0.2  # non-uniform
    assert plan.meta["predicted"]["latency_ms"] <= budget.latency_ms
    fr = plan.meta["fractions"]
    assert fr[0] == 1.0 and min(fr) <= 0.31 and fr == sorted(fr, reverse=True)
    # an Importance-like object with .channels works the same
    same = B.neuralscale_lite(resnet, ev, budget, importance=SimpleNamespace(channels=imp))
    assert same.widths == plan.widths
    # default scores (weight magnitudes)
    assert B.neuralscale_lite(resnet, ev, budget).meta["importance"] == "l1"
    with pytest.raises(PlanError, match="entries"):
        B.neuralscale_lite(resnet, ev, budget, importance={**imp, "stem.0": torch.ones(3)})
    with pytest.raises(PlanError, match="no scores"):
        B.neuralscale_lite(resnet, ev, budget, importance={"stem.0": imp["stem.0"]})


def test_align(resnet):
    ev = Evaluator(resnet, latency)
    budget = Budget(latency_ms=2.0 * ev(ScalingPlan())[0])
    for name in ("uniform", "dollar", "neuralscale-lite"):
        plan = B.get_baseline(name)(resnet, ev, budget, align=8)
        plan.validate(resnet)
        assert all(w % 8 == 0 for w in plan.widths.values()), (name, plan.widths)
        assert ev.fits(plan, budget)


@pytest.mark.parametrize("name", METHODS)
def test_infeasible_raises(resnet, name):
    ev = Evaluator(resnet, latency)
    base_ms, base_params = ev(ScalingPlan())
    with pytest.raises(PlanError, match="infeasible"):
        B.get_baseline(name)(resnet, ev, Budget(latency_ms=0.5 * base_ms))
    with pytest.raises(PlanError, match="infeasible"):
        B.get_baseline(name)(resnet, ev, Budget(params=base_params - 1))
    with pytest.raises(PlanError, match="infeasible"):
        B.get_baseline(name)(resnet, ev, None, flops_scale=0.5)
    with pytest.raises(FxscaleError, match="nothing to scale"):
        B.get_baseline(name)(resnet, ev, Budget())


def test_exact_budget_returns_baseline(resnet):
    ev = Evaluator(resnet, latency)
    base_ms, _ = ev(ScalingPlan())
    plan = B.uniform(resnet, ev, Budget(latency_ms=base_ms))
    assert plan.widths == {g.name: g.width for g in resnet.scalable} and plan.meta["w"] < 1.04


def test_plans_transform(resnet):
    """Every method's plan goes through the ordinary transform (identity-initialised depth included)."""
    ev = Evaluator(resnet, latency)
    for name in METHODS:
        plan = B.get_baseline(name)(resnet, ev, None, flops_scale=2.0)
        new = fxscale.transform(resnet.gm, plan, resolution_mode="input")
        assert fxscale.cost(new, mode="input").flops == plan.meta["predicted"]["flops"]
        h, w = plan.resolution or (8, 8)
        assert new(torch.randn(2, 1, h, w)).shape == (2, 10), name


def test_no_repeatable_stage():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    cg = fxscale.analyze(fxscale.trace(net.eval(), torch.randn(1, 1, 8, 8)))
    assert B.repeatable_stages(cg) == {}
    ev = Evaluator(cg, latency)
    with pytest.raises(PlanError, match="no repeatable stage"):
        B.depth(cg, ev, None, flops_scale=2.0)
    plan = B.efficientnet(cg, ev, None, flops_scale=2.0)
    assert plan.depths == {} and "d = 1" in plan.meta["depth_note"] and plan.meta["phi"] > 0


# The plans the six hand-written baselines gave before they became rows of one table (digits_resnet, 2x FLOPs).
GOLDEN_RESNET_FS2 = {
    "depth": ({}, None, {"stages.0": 4, "stages.1": 3}, 3, 4016768),
    "dollar": ({"stages.0.0.conv1": 22, "stages.0.1.conv1": 22, "stages.1.0.conv1": 45, "stages.1.0.conv2": 45,
                "stages.1.1.conv1": 45, "stem.0": 22}, (8, 8), {}, 2.3450728058815002, 4322916),
    "efficientnet": ({"stages.0.0.conv1": 17, "stages.0.1.conv1": 17, "stages.1.0.conv1": 33, "stages.1.0.conv2": 33,
                      "stages.1.1.conv1": 33, "stem.0": 17}, (8, 8), {"stages.0": 3, "stages.1": 3},
                     0.4337705969810486, 3765492),
    "neuralscale-lite": ({"stages.0.0.conv1": 26, "stages.0.1.conv1": 20, "stages.1.0.conv1": 38, "stages.1.0.conv2": 57,
                     "stages.1.1.conv1": 43, "stem.0": 20}, None, {}, 2.036512943533282, 4434804),
    "resolution": ({}, (10, 10), {}, 1.3125, 3511040),
    "uniform": ({"stages.0.0.conv1": 22, "stages.0.1.conv1": 22, "stages.1.0.conv1": 45, "stages.1.0.conv2": 45,
                 "stages.1.1.conv1": 45, "stem.0": 22}, None, {}, 1.40625, 4322916),
}


def test_dollar_factors_are_pycls_fast_compound_scaling():
    """Dollar et al. "d1_w8_r1" (alpha = 0.8): d = s^0.1, w = s^0.4, r = s^0.05, and d * w^2 * r^2 = s."""
    for s in (1.0, 2.0, 4.0, 10.0):
        d, w, r = B.dollar_factors(s)
        assert (d, w, r) == pytest.approx((s ** 0.1, s ** 0.4, s ** 0.05))
        assert d * w * w * r * r == pytest.approx(s)
    d, w, r = B.dollar_factors(4.0, alpha=0.5)
    assert (d, w, r) == pytest.approx((4.0 ** 0.25, 4.0 ** 0.25, 4.0 ** 0.125))


def test_table_rows_are_the_registry():
    assert sorted(B.TABLE) == sorted(METHODS + list(EXCLUDED))
    for name, row in B.TABLE.items():
        fn = B.get_baseline(name)
        assert fn.__name__ == name and fn.__doc__ == row.doc and getattr(B, name.replace("-", "_")) is fn


@pytest.mark.parametrize("name", METHODS)
def test_golden_plans(resnet, name):
    widths, res, depths, knob, f = GOLDEN_RESNET_FS2[name]
    plan = B.create_baseline(name, resnet, Evaluator(resnet, latency), flops_scale=2.0)
    assert (plan.widths, plan.resolution, plan.depths) == (widths, res, depths)
    assert plan.meta["method"] == name and plan.meta[plan.meta["knob"]] == pytest.approx(knob, rel=1e-9)
    assert plan.meta["predicted"]["flops"] == f


@pytest.mark.parametrize("name", ["uniform", "resolution", "depth", "neuralscale-lite"])
def test_knob_ladder_runs_from_the_baseline_to_the_plan(resnet, name):
    """The measured back-off's ladder: baseline first, the chosen plan last, cost non-decreasing, all within budget."""
    ev = Evaluator(resnet, latency)
    budget = Budget(latency_ms=1.8 * ev(ScalingPlan())[0])
    plan = B.get_baseline(name)(resnet, ev, budget)
    ladder = B.knob_ladder(B.TABLE[name], resnet, ev, budget, plan)
    assert ladder[0].to_json() == ScalingPlan().to_json() and ladder[-1] is plan and len(ladder) >= 2
    lat = [ev(p)[0] for p in ladder]
    assert all(b >= a - 1e-12 for a, b in zip(lat[1:], lat[2:])) and lat[-1] <= budget.latency_ms  # the knob
    # (rung 1 may cost less than the baseline: NeuralScale-lite's fitted law at 1.0x params is not the baseline)
    keys = [(p.widths, p.resolution, p.depths) for p in ladder]
    assert all(a != b for a, b in zip(keys, keys[1:]))  # consecutive duplicates removed


# ---- the allocation ablation (issue 11): uniform / random widths at HACScale's resolution ---------------------------
HACRES = (10, 10)


def _ablation(resnet, name, **kw):
    ev = Evaluator(resnet, latency)
    budget = Budget(latency_ms=2.0 * ev(ScalingPlan())[0])
    plan = B.create_baseline(name, resnet, ev, budget, resolution=HACRES, align=1, **kw)
    return ev, budget, plan


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_rows_use_the_given_resolution_and_fit_the_budget(resnet, name):
    ev, budget, plan = _ablation(resnet, name)
    assert tuple(plan.resolution) == HACRES and plan.meta["method"] == name
    lat, _params = ev(plan)
    assert lat <= budget.latency_ms and plan.meta["predicted"]["latency_ms"] == pytest.approx(lat)
    assert any(plan.widths[g.name] > g.width for g in resnet.scalable)  # the budget leaves room: width is added
    if name == "uniform@hacres":  # one multiplier: every group's ratio to its width agrees up to rounding
        assert plan.meta["w"] > 1 and all(abs(plan.widths[g.name] / g.width - plan.meta["w"]) <= 1 / g.width + 1e-9
                                          for g in resnet.scalable)
    else:  # no group can take one more stride of kernels
        for g in resnet.scalable:
            wider = ScalingPlan(widths={**plan.widths, g.name: plan.widths[g.name] + 10}, resolution=HACRES)
            assert ev(wider)[0] > budget.latency_ms


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_ladder_reaches_the_plan_at_the_resolution(resnet, name):
    ev, budget, plan = _ablation(resnet, name)
    ladder = B.ablation_ladder(name, resnet, ev, budget, plan, resolution=HACRES, align=1)
    assert ladder[0].to_json() == ScalingPlan().to_json() and ladder[-1] is plan
    lat = [ev(p)[0] for p in ladder]
    assert all(b >= a - 1e-12 for a, b in zip(lat, lat[1:])) and lat[-1] <= budget.latency_ms
    assert [tuple(p.resolution or (8, 8)) for p in ladder[:3]] == [(8, 8), (9, 9), HACRES]


def test_random_ablation_is_seeded(resnet):
    plans = [_ablation(resnet, "random@hacres", seed=s, stride=4)[2] for s in (0, 0, 1)]
    assert plans[0].widths == plans[1].widths and plans[0].meta["steps"] == plans[1].meta["steps"]
    assert plans[0].meta["steps"] != plans[2].meta["steps"]


def test_ablation_rows_need_the_resolution(resnet):
    ev = Evaluator(resnet, latency)
    with pytest.raises(FxscaleError, match="resolution="):
        B.create_baseline("uniform@hacres", resnet, ev, Budget(latency_ms=2 * ev(ScalingPlan())[0]))
    with pytest.raises(PlanError, match="does not fit"):
        B.create_baseline("random@hacres", resnet, ev, Budget(latency_ms=ev(ScalingPlan())[0]), resolution=(16, 16))
