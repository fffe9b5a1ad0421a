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


class _Timed:
    def __init__(self, ms: float) -> None:
        self.ms = ms

    def ratio_to(self, other: "_Timed"):
        from types import SimpleNamespace
        return SimpleNamespace(ratio=self.ms / other.ms)


def test_solve_measured_re_solves_a_student_far_under_budget(monkeypatch):
    """Summed site timings overpredict (the measured student is 0.5x its prediction): the first student uses half
    the budget, L_fixed is corrected down, and the re-solved, higher-scoring student is kept."""
    from types import SimpleNamespace

    from fxscale.hant import methods
    from fxscale.hant.solver import Option, Problem

    opts = tuple(Option(n, (i,), sc, lat) for i in (0, 1)
                 for n, sc, lat in (("teacher", 0.0, 3.0), ("ds_k3", -1.0, 1.5), ("skip", -5.0, 0.2)))
    monkeypatch.setattr(methods, "build_problem", lambda acc, table, sc, d, kind, fixed=None:
                        Problem(("a", "b"), opts, fixed_latency=table.fixed_ms if fixed is None else fixed))
    seen: list[dict] = []

    def fake_time(acc, models):
        choice = models[0]
        seen.append(choice)
        predicted = 1.0 + sum(next(o.latency for o in opts if o.name == choice[s] and o.covers == (i,))
                              for i, s in enumerate(("a", "b")))
        return [_Timed(10.0), _Timed(0.5 * predicted)]
    monkeypatch.setattr(methods, "_time", fake_time)
    acc = SimpleNamespace(cfg=SimpleNamespace(latency_budget="0.4x", score="dloss"), assemble=lambda c: dict(c),
                          log=lambda line: None)
    table = SimpleNamespace(teacher_ms=10.0, fixed_ms=1.0)
    _problem, sol, choice, corrections = methods.solve_measured(acc, table, {}, {})
    assert corrections[0]["measured_ms"] < methods.USE * 4.0 and len(corrections) >= 2
    kept = [c for c in corrections if c["kept"]]
    assert len(kept) == 1 and kept[0]["measured_ms"] <= 4.0 * 1.02 and kept[0]["score"] > corrections[0]["score"]
    assert sol.score == kept[0]["score"] and choice == seen[corrections.index(kept[0])]


def test_baselines_take_their_largest_member_within_the_latency():
    from fxscale.hant.baselines import pick_at_latency
    lat = {0.3: 0.78, 0.5: 0.43, 0.7: 0.62, 0.9: 0.95}  # 0.3 is slow: its channel counts miss the runtime's blocking
    assert pick_at_latency(lat, 0.8) == 0.7 and pick_at_latency(lat, 0.5) == 0.5
    assert pick_at_latency(lat, 0.1) == 0.5  # none fits: the fastest


def test_pruned_widths_are_aligned_to_8(setup):
    from fxscale.hant.baselines import uniform_family
    gm, _ = setup
    fam = uniform_family(gm, fractions=(0.3, 0.7))
    for model in fam.values():
        assert all(g.width % 8 == 0 for g in fxscale.analyze(model).scalable)
