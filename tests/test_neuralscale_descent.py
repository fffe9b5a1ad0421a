"""NeuralScale as published (fxscale.scaling.baselines.descent): iterative pruning with rescoring, the power-law fit
on its trajectory, architecture descent, the `neuralscale` row, and its place in `fxscale scale`."""
from __future__ import annotations

import pytest
import torch

import fxscale
import fxscale.scaling.baselines as B
from fxscale.cost import cost_model
from fxscale.data import get_dataset
from fxscale.errors import PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling.baselines.descent import DescentConfig, Trajectory, descend, prune_trajectory
from fxscale.scaling.budget import Budget, Evaluator

QUICK = DescentConfig(step=0.25, floor=0.4, score_batches=1, finetune_batches=2, batch_size=32)


@pytest.fixture(scope="module")
def setup():
    gm = fxscale.trace(fxscale.zoo.create_model("digits_resnet").eval(), torch.zeros(1, 1, 8, 8))
    return gm, fxscale.analyze(gm), get_dataset("digits", train_fraction=0.3)


def test_pruning_trajectory_shrinks_to_the_floor_in_steps(setup):
    gm, cg, bundle = setup
    traj = prune_trajectory(gm, cg, bundle, None, QUICK)
    params = [p for p, _ in traj]
    assert params[0] == cost_model(cg, None).report(ScalingPlan()).params
    assert len(traj) >= 3 and all(b < a for a, b in zip(params, params[1:])) and params[-1] <= 0.4 * params[0]
    names = {g.name: g for g in cg.scalable}
    for _p, widths in traj:
        assert set(widths) == set(names)
        assert all(w >= names[g].divisor and w % names[g].divisor == 0 and w <= names[g].width
                   for g, w in widths.items())
    assert torch.equal(gm(torch.ones(1, 1, 8, 8)), gm(torch.ones(1, 1, 8, 8)))  # the input model is left as it was


def test_descent_trains_the_fitted_architecture_and_refits(setup):
    gm, cg, bundle = setup
    built: list[ScalingPlan] = []

    def train_plan(plan):  # stands in for the pipeline's training: a fresh model of the plan
        built.append(plan)
        return fxscale.transform(gm, plan, init="reinit").eval()
    traj = descend(cg, gm, train_plan, bundle, None, QUICK)
    assert [it["iteration"] for it in traj.iterations] == [0, 1] and len(built) == 1
    p0 = traj.iterations[0]["samples"][0][0]
    assert 0.7 * p0 <= traj.iterations[1]["start_params"] <= 1.3 * p0  # the descent architecture has ~p0 params
    assert traj.samples == traj.iterations[1]["samples"] and traj.samples[0][1] == built[0].widths


def test_neuralscale_row_scales_to_the_budget_from_a_trajectory(setup):
    gm, cg, bundle = setup
    ev = Evaluator(cg, lambda c, p: cost_model(c, p.resolution).report(p).macs * 1e-6)
    budget = Budget(latency_ms=1.5 * ev(ScalingPlan())[0])
    traj = Trajectory(prune_trajectory(gm, cg, bundle, None, QUICK))
    traj.iterations = [{"iteration": 0}]
    plan = B.neuralscale(cg, ev, budget, importance=traj)
    assert plan.meta["method"] == "neuralscale" and plan.meta["iterations"] == 0
    assert ev(plan)[0] <= budget.latency_ms and ev(plan)[0] > 1.2 * ev(ScalingPlan())[0]
    with pytest.raises(PlanError, match="neuralscale needs the pruning trajectory of a trained model"):
        B.neuralscale(cg, ev, budget)
