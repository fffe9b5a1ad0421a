"""One LatencyModel protocol: the analytic model and the device-profile predictor predict, bind and drive Algorithm 1
through the same calls (synthetic profile, no timing)."""
from __future__ import annotations

import random

import pytest
from helpers import random_widths
from test_predictor import _synthetic_profile

import fxscale
from fxscale.analysis.graph import ChannelGraph
from fxscale.cost import cost_model
from fxscale.hw.latency import BoundLatency, LatencyModel
from fxscale.hw.predictor import LatencyPredictor, PredictorState, layer_sites
from fxscale.scaling.budget import Budget
from fxscale.scaling.greedy import CostLatency, GreedyResult, importance_aware_widths
from fxscale.scaling.measure import AnalyticLatency
from fxscale.scaling.powerlaw import ImportancePredictor, PowerLaw

CASES = [("digits_resnet", None), ("resnet18", 64)]  # zoo model, traced side (None: its small input size)
KINDS = ("analytic", "profile")


def _bigger(cg: ChannelGraph) -> tuple[int, int]:
    """A resolution 1.5x the traced one (a multiple of 4)."""
    h = cg.gm.meta["fxscale"]["resolution"][0]
    return (4 * round(1.5 * h / 4),) * 2


def _profile_kinds(cg: ChannelGraph) -> list[str]:
    """Every fine kernel kind of the model at the traced and the bigger resolution."""
    kinds: set[str] = set()
    for res in (None, _bigger(cg)):
        cm = cost_model(cg, res, mode="input")
        kinds |= {s.kind for s in layer_sites(cg, cm, cm.sizes()) if not s.view}
    return sorted(kinds)


def _model(kind: str, cg: ChannelGraph) -> LatencyModel:
    if kind == "analytic":
        return AnalyticLatency(c0=0.02, c_mac=3e-9, c_byte=4e-10, mode="input")
    return LatencyPredictor(_synthetic_profile(_profile_kinds(cg)), mode="input")


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def cg(request, traced_zoo) -> ChannelGraph:
    name, side = request.param
    return traced_zoo(name, side).cg


def _plans(cg: ChannelGraph) -> list[fxscale.ScalingPlan]:
    """The traced plan, three random width plans and one at a bigger resolution."""
    rng = random.Random(0)
    plans = [fxscale.ScalingPlan()]
    plans += [fxscale.ScalingPlan(widths=random_widths(cg, 0.5, 2.0, rng)) for _ in range(3)]
    plans.append(fxscale.ScalingPlan(widths=random_widths(cg, 0.5, 2.0, rng), resolution=_bigger(cg)))
    return plans


def _greedy(model: LatencyModel, cg: ChannelGraph, start: fxscale.ScalingPlan, rule: str) -> GreedyResult:
    """Algorithm 1 with any latency model: no branch on its kind."""
    pred = ImportancePredictor({g.name: PowerLaw(1.0 + i, -1.0, 1, 1, 5) for i, g in enumerate(cg.scalable)})
    budget = Budget(latency_ms=1.3 * model.predict(cg, start))
    return _greedy_bound(model.bind(cg, start), pred, budget, cg, start, rule)


def _greedy_bound(state: BoundLatency, pred: ImportancePredictor, budget: Budget, cg: ChannelGraph,
                  start: fxscale.ScalingPlan, rule: str) -> GreedyResult:
    return importance_aware_widths(cg, pred, state, budget, start=start, rule=rule, stride=8, align=8)


def test_both_implementations_satisfy_the_protocol(traced_zoo):
    cg = traced_zoo("digits_resnet").cg
    plan = fxscale.ScalingPlan()
    models = [_model(k, cg) for k in KINDS]
    for m in models:
        assert isinstance(m, LatencyModel)
        state = m.bind(cg, plan)
        assert isinstance(state, BoundLatency)
        assert isinstance(m.to_dict(), dict) and m.to_dict()["kind"] in ("analytic", "device profile")
    assert isinstance(models[0].bind(cg, plan), CostLatency)
    assert isinstance(models[1].bind(cg, plan), PredictorState)
    assert not isinstance(object(), LatencyModel) and not isinstance(object(), BoundLatency)
    assert not isinstance(cg, LatencyModel)


def test_profile_predictor_records_its_profile_path(traced_zoo, tmp_path):
    cg = traced_zoo("digits_resnet").cg
    path = _synthetic_profile(_profile_kinds(cg)).save(tmp_path / "p.json")
    pred = LatencyPredictor(str(path))
    assert pred.to_dict() == {"kind": "device profile", "path": str(path)}  # what the pipeline's summary records


@pytest.mark.parametrize("kind", KINDS)
def test_bound_total_equals_predict(kind, cg):
    model = _model(kind, cg)
    for plan in _plans(cg):
        assert model.bind(cg, plan).total == pytest.approx(model.predict(cg, plan), rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_set_width_tracks_a_fresh_predict(kind, cg):
    model = _model(kind, cg)
    rng = random.Random(1)
    for start in (fxscale.ScalingPlan(), fxscale.ScalingPlan(resolution=_bigger(cg))):
        state = model.bind(cg, start)
        widths = {g.name: g.width for g in cg.scalable}
        for _ in range(6):
            g = rng.choice(cg.scalable)
            width = max(g.divisor, round(g.width * rng.uniform(0.4, 2.2) / g.divisor) * g.divisor)
            before = state.total
            want = model.predict(cg, fxscale.ScalingPlan(widths={**widths, g.name: width},
                                                         resolution=start.resolution))
            assert state.peek(g.name, width) == pytest.approx(want, rel=1e-9)
            assert state.total == before  # peek does not commit
            widths[g.name] = width
            assert state.set_width(g.name, width) == pytest.approx(want, rel=1e-9)
            assert state.total == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("rule", ["paper", "cost"])
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_plans_identical_through_the_protocol(kind, rule, cg):
    model = _model(kind, cg)
    start = fxscale.ScalingPlan(resolution=_bigger(cg))
    got = _greedy(model, cg, start, rule)
    pred = ImportancePredictor({g.name: PowerLaw(1.0 + i, -1.0, 1, 1, 5) for i, g in enumerate(cg.scalable)})
    budget = Budget(latency_ms=1.3 * model.predict(cg, start))
    if isinstance(model, AnalyticLatency):  # the state the greedy loop was handed before the protocol
        before = [CostLatency(cg, start, model.c_mac, model.c_byte, model.c0, mode=model.mode)]
    else:  # the predictor's own bind(cg, resolution, plan)
        before = [model.bind(cg, start.resolution, start)]
    assert got.steps
    for state in before:
        want = _greedy_bound(state, pred, budget, cg, start, rule)
        assert got.plan.widths == want.plan.widths and got.plan.resolution == want.plan.resolution
        assert [(s.group, s.width) for s in got.steps] == [(s.group, s.width) for s in want.steps]
        assert got.latency_ms == want.latency_ms and got.stopped == want.stopped
    assert got.latency_ms == pytest.approx(model.predict(cg, got.plan), rel=1e-9)
