"""HACScale rows of the HANT comparison (fxscale.hant.scaled): the greedy loop's width caps, the MAC ladder of the
shrunk teacher, and the widened student's exactness before fine-tuning."""
from __future__ import annotations

import pytest
import torch

import fxscale
from fxscale.data import get_dataset
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import Budget, uniform_widths
from fxscale.scaling.greedy import CostLatency, importance_aware_widths
from fxscale.scaling.powerlaw import ImportancePredictor, PowerLaw
from fxscale.hant import scaled


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    gm = fxscale.trace(fxscale.zoo.create_model("digits_resnet").eval(), torch.zeros(1, 1, 8, 8))
    return gm, get_dataset("digits", train_fraction=0.3)


def macs(gm) -> float:
    return CostLatency(fxscale.analyze(gm), ScalingPlan()).total


def test_greedy_never_grows_a_group_past_its_cap(setup):
    gm, _ = setup
    cg = fxscale.analyze(gm)
    pred = ImportancePredictor({g.name: PowerLaw(1.0 + i, -0.5, 1, 1, 4) for i, g in enumerate(cg.scalable)})
    caps = {g.name: g.width for g in cg.scalable}
    start = ScalingPlan(widths=uniform_widths(cg, 0.25))
    r = importance_aware_widths(cg, pred, CostLatency(cg, start), Budget(latency_ms=1e9), start=start, stride=3,
                                rule="cost", max_widths=caps)
    assert r.plan.widths == caps and r.stopped == "no group fits the budget any more"
    assert all(s.width <= caps[s.group] for s in r.steps)
    uncapped = importance_aware_widths(cg, pred, CostLatency(cg, start), Budget(latency_ms=2 * macs(gm)),
                                       start=start, stride=3, rule="cost")
    assert any(uncapped.plan.widths[g] > w for g, w in caps.items())


def test_shrunk_teacher_rungs_are_ordered_under_their_mac_level_and_within_the_teacher(setup):
    gm, bundle = setup
    lad = scaled.shrunk_teacher(gm, bundle, None, batches=2)
    teacher = {g.name: g.width for g in fxscale.analyze(gm).scalable}
    assert len(lad.models) >= 5 and set(lad.models) == set(lad.info) and lad.laws["fits"]
    ratios = [macs(lad.models[lv]) / macs(gm) for lv in sorted(lad.models)]
    assert all(r <= lv + 1e-9 for r, lv in zip(ratios, sorted(lad.models)))
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)
    for lv, info in lad.info.items():
        assert all(info["widths"][g] <= teacher[g] for g in teacher)
        assert lad.models[lv](torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert lad.info[max(lad.info)]["widths"] == teacher  # the 1.0 rung is the whole teacher


def test_widened_student_rungs_compute_the_student_exactly_before_fine_tuning(setup):
    gm, bundle = setup
    cg = fxscale.analyze(gm)
    student = fxscale.transform(gm, ScalingPlan(widths=uniform_widths(cg, 0.5)), init="prune", cg=cg).eval()
    lad = scaled.widened_student(student, gm, bundle, None, torch.zeros(1, 1, 8, 8), batches=2)
    assert lad.models and not lad.note
    x = torch.randn(4, 1, 8, 8)
    ref = student(x)
    own = {g.name: g.width for g in fxscale.analyze(fxscale.trace(student, x[:1])).scalable}
    for lv, model in lad.models.items():
        assert all(lad.info[lv]["widths"][g] >= w for g, w in own.items())
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)
    assert macs(lad.models[max(lad.models)]) > macs(student)  # the freed MACs are spent
