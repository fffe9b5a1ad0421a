"""fxscale.materialize: one rebuild per (model, depths), the residual plan on the deeper graph, the same costs."""
import pytest
import torch

import fxscale
import fxscale.materialize as M
from fxscale.cost import cost_model
from fxscale.errors import PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import Evaluator
from fxscale.zoo import digits_resnet, digits_vgg

torch.set_num_threads(1)


def _cg(fn):
    torch.manual_seed(0)
    return fxscale.analyze(fxscale.trace(fn().eval(), torch.randn(1, 1, 8, 8)))


@pytest.fixture(scope="module")
def resnet():
    return _cg(digits_resnet)


@pytest.fixture(scope="module")
def vgg():
    return _cg(digits_vgg)


@pytest.fixture
def count_rebuilds(monkeypatch):
    calls = []
    real = M.depth_pass

    def counting(gm, depths, *a, **kw):
        calls.append(dict(depths))
        return real(gm, depths, *a, **kw)

    monkeypatch.setattr(M, "depth_pass", counting)
    return calls


def _scaled(cg, mult):
    return {g.name: g.divisor * max(1, round(g.width * mult / g.divisor)) for g in cg.scalable}


def test_no_depths_is_a_no_op(resnet, count_rebuilds):
    plan = ScalingPlan(widths=_scaled(resnet, 1.5), resolution=(12, 12))
    cache = M.Materializer()
    assert M.materialize(resnet, plan) == (resnet, plan)
    out = cache(resnet, plan)
    assert out[0] is resnet and out[1] is plan
    assert count_rebuilds == [] and cache.rebuilds == 0 and len(cache) == 0


def test_one_rebuild_per_depths(resnet, count_rebuilds):
    cache = M.Materializer()
    depths = {"stages.0": 3, "stages.1": 4}
    deep, rest = cache(resnet, ScalingPlan(depths=depths))
    assert not rest.depths and rest.widths == {} and rest.resolution is None
    for mult, res in [(1.5, (12, 12)), (2.0, None)]:
        d2, rest = cache(resnet, ScalingPlan(widths=_scaled(resnet, mult), resolution=res, depths=dict(depths)))
        assert d2 is deep and not rest.depths and rest.resolution == res
        rest.validate(deep)
    assert count_rebuilds == [depths] and cache.rebuilds == 1
    cache(resnet, ScalingPlan(depths={"stages.0": 3}))  # other depths: one more
    assert len(count_rebuilds) == 2 and len(cache) == 2
    M.materialize(resnet, ScalingPlan(depths=depths))  # no cache given: rebuilt every call
    assert len(count_rebuilds) == 3


def test_repeated_blocks_take_their_widths(resnet):
    widths = _scaled(resnet, 2.0)
    deep, rest = M.Materializer()(resnet, ScalingPlan(widths=widths, depths={"stages.0": 3}))
    assert set(deep.by_name) > set(resnet.by_name)  # the copy's inner channels are a group of their own
    assert rest.widths["stages.0.2.conv1"] == widths["stages.0.1.conv1"]  # ... scaled like the block it repeats
    assert all(rest.widths[k] == w for k, w in widths.items())


# FLOPs / params the transform-based rebuild gave before materialize (input mode)
GOLDEN = [
    (digits_resnet, ScalingPlan(depths={"stages.0": 3}), 2837120, 47610),
    (digits_resnet, ScalingPlan(depths={"stages.0": 3, "stages.1": 3}, resolution=(12, 12)), 7709824, 66170),
    (digits_vgg, ScalingPlan(depths={"features.3": 2}), 1199360, 38010),
]


@pytest.mark.parametrize("case", range(len(GOLDEN)))
def test_cost_of_depth_plans_is_unchanged(case):
    fn, plan, flops, params = GOLDEN[case]
    cg = _cg(fn)
    rep = fxscale.cost(cg, plan, mode="input")
    assert (rep.flops, rep.params) == (flops, params)
    deep, rest = M.materialize(cg, plan)
    assert cost_model(deep, rest.resolution, mode="input").report(rest).to_dict() == rep.to_dict()


@pytest.mark.parametrize("mode", ["input", "resize"])
def test_same_cost_as_the_full_rebuild(resnet, mode):
    plan = ScalingPlan(widths=_scaled(resnet, 1.5), resolution=(10, 10), depths={"stages.0": 4, "stages.1": 3})
    new = fxscale.transform(resnet.gm, plan, init="reinit", resolution_mode=mode)
    want = fxscale.cost(new, mode=mode).to_dict()
    assert fxscale.cost(resnet, plan, mode=mode).to_dict() == want
    assert fxscale.cost(resnet, plan, mode=mode, materializer=M.Materializer()).to_dict() == want


def test_scaled_vgg_golden(vgg):
    plan = ScalingPlan(widths={g.name: 2 * g.width for g in vgg.scalable}, resolution=(12, 12),
                       depths={"features.3": 3, "features.10": 2})
    rep = fxscale.cost(vgg, plan, mode="input")
    assert (rep.flops, rep.params) == (16010752, 196010)


def test_widths_a_copy_cannot_take_are_refused(vgg):
    # a VGG conv repeated after itself reads its own output: its input and output widths must agree
    plan = ScalingPlan(widths={"features.0": 16, "features.3": 32}, depths={"features.3": 2})
    assert vgg["features.0"].width == vgg["features.3"].width
    with pytest.raises(PlanError):
        fxscale.cost(vgg, plan, mode="input")


def test_unknown_group_is_refused(resnet):
    with pytest.raises(PlanError, match="names no channel group"):
        M.Materializer()(resnet, ScalingPlan(widths={"nope": 8}, depths={"stages.0": 3}))


def test_cache_is_per_graph_module_and_bounded(count_rebuilds):
    cache = M.Materializer(maxsize=2)
    a, b = _cg(digits_resnet), _cg(digits_resnet)
    plan = ScalingPlan(depths={"stages.0": 3})
    da, _ = cache(a, plan)
    db, _ = cache(b, plan)
    assert da is not db and len(count_rebuilds) == 2
    assert cache(a, plan)[0] is da and len(count_rebuilds) == 2
    cache(a, ScalingPlan(depths={"stages.1": 3}))  # a third entry evicts the oldest (b's)
    assert len(cache) == 2 and cache(b, plan)[0] is not db and len(count_rebuilds) == 4


def test_evaluator_rebuilds_once_per_depths(resnet, count_rebuilds):
    ev = Evaluator(resnet, lambda cg, plan: 1e-6 * fxscale.cost(cg, plan, mode="input").flops)
    depths = {"stages.1": 3}
    for mult in (1.0, 1.25, 1.5):
        ev(ScalingPlan(widths=_scaled(resnet, mult), depths=depths))
    assert count_rebuilds == [depths] and ev.materializer.rebuilds == 1
