"""Warm-start scaling (fxscale.scaling.warm): exact growth of a trained net, noise calibration and drift, BN carried
or re-estimated, the fine-tune recipe (warm-up, lower peak lr, distillation), `fxscale scale --start trained` and
the CLI faults of the new options (--start, --weights, --warm-fraction, --noise, --distill; transform --weights,
--data)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fxscale
from fxscale.cli import main, uniform_plan
from fxscale.data import get_dataset
from fxscale.errors import FxscaleError
from fxscale.plan import ScalingPlan
from fxscale.scaling.warm import (
    WarmRecipe,
    calibrate_noise,
    load_state,
    output_drift,
    reestimate_bn,
    taylor_importance,
    warm_start,
)
from fxscale.train import TrainConfig, lr_at, train
from fxscale.train_kd import distill_loss
from fxscale.zoo import create_model


def _traced(name: str = "digits_resnet", seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.fx.GraphModule:
    torch.manual_seed(seed)
    net = create_model(name).to(dtype).eval()
    with torch.no_grad():  # non-trivial BN statistics, as a trained net has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return fxscale.trace(net, torch.zeros(1, 1, 8, 8, dtype=dtype))


@pytest.fixture(scope="module")
def small_digits():
    """The digits data (1077 train images: a few seconds per training in tests)."""
    return get_dataset("digits")


@pytest.fixture(scope="module")
def trained(small_digits):
    """digits_resnet trained 3 epochs (shared read-only; tests copy it through warm_start)."""
    torch.manual_seed(0)
    gm = fxscale.trace(create_model("digits_resnet").eval(), torch.zeros(1, 1, 8, 8))
    train(gm, small_digits, TrainConfig(epochs=3, lr=0.05, schedule="cosine", batch_size=64))
    return gm.eval()


# ---------------------------------------------------------------------------------------------- exactness, noise


@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_noise_free_widening_equals_the_baseline_in_float64(factor: float) -> None:
    gm = _traced(dtype=torch.float64)
    plan = uniform_plan(fxscale.analyze(gm), factor)
    new = warm_start(gm, plan)
    assert sum(p.numel() for p in new.parameters()) > 1.8 * sum(p.numel() for p in gm.parameters())
    x = torch.randn(32, 1, 8, 8, dtype=torch.float64)
    d = output_drift(new, gm, x)
    assert d.rel < 1e-12 and d.agree == 1.0
    assert not new.training or gm.training  # eval-mode baseline gives an eval-mode copy


def test_identity_depth_and_width_together_are_exact() -> None:
    gm = _traced(dtype=torch.float64)
    plan = ScalingPlan(widths=uniform_plan(fxscale.analyze(gm), 1.5).widths, depths={"stages.0": 3})
    new = warm_start(gm, plan)
    assert len([m for m in new.modules() if isinstance(m, torch.nn.Conv2d)]) > \
        len([m for m in gm.modules() if isinstance(m, torch.nn.Conv2d)])
    assert output_drift(new, gm, torch.randn(8, 1, 8, 8, dtype=torch.float64)).rel < 1e-12


def test_warm_start_accepts_a_plain_module_and_does_not_change_it() -> None:
    torch.manual_seed(1)
    net = create_model("digits_vgg").eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    new = warm_start(net, uniform_plan(fxscale.analyze(fxscale.trace(net, torch.zeros(1, 1, 8, 8))), 2.0),
                     example_input=torch.zeros(1, 1, 8, 8), noise=0.05)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert new.meta["fxscale"]["warm_start"] == {"noise": 0.05, "bn": "carry", "seed": 0}
    with pytest.raises(FxscaleError, match="example_input"):
        warm_start(net, ScalingPlan())


def test_noise_drift_grows_with_noise_and_calibration_picks_the_largest_under_target() -> None:
    gm = _traced()
    plan = uniform_plan(fxscale.analyze(gm), 1.5)
    x = torch.randn(64, 1, 8, 8)
    cal = calibrate_noise(gm, plan, x, target=0.02, candidates=(0.0, 0.003, 0.03, 0.3))
    rel = [d.rel for _n, d in cal.drifts]
    assert rel[0] == 0 and all(a < b for a, b in zip(rel, rel[1:]))
    assert cal.noise == max(n for n, d in cal.drifts if d.rel <= 0.02)
    assert 0 < cal.noise < 0.3 and cal.drifts[-1][1].rel > 0.02
    assert json.loads(json.dumps(cal.to_dict()))["drifts"][1]["noise"] == 0.003
    noisy = warm_start(gm, plan, noise=cal.noise)
    assert 0 < output_drift(noisy, gm, x).rel <= 0.02  # against the baseline itself too
    with pytest.raises(FxscaleError, match="noise must be"):
        warm_start(gm, plan, noise=-0.1)


def test_noise_breaks_replica_symmetry_and_zero_noise_keeps_it() -> None:
    gm = _traced()
    cg = fxscale.analyze(gm)
    g = cg.scalable[0]
    plan = ScalingPlan(widths={g.name: 2 * g.width})
    w0 = warm_start(gm, plan).get_submodule(g.producers[0]).weight
    w1 = warm_start(gm, plan, noise=0.01).get_submodule(g.producers[0]).weight
    assert len(torch.unique(w0.detach().flatten(1), dim=0)) == g.width  # every added channel copies one
    assert len(torch.unique(w1.detach().flatten(1), dim=0)) == 2 * g.width  # noise makes the copies differ
    assert torch.allclose(w1, w0, atol=0.1 * float(w0.detach().abs().max()))


# ---------------------------------------------------------------------------------------------- BatchNorm


def test_bn_carry_replicates_running_statistics() -> None:
    gm = _traced()
    new = warm_start(gm, uniform_plan(fxscale.analyze(gm), 2.0))
    old_bn, new_bn = gm.get_submodule("stem.1"), new.get_submodule("stem.1")
    n = old_bn.num_features
    assert new_bn.num_features == 2 * n
    for name in ("running_mean", "running_var"):  # each old channel appears twice (replicas are permuted)
        new_v, old_v = getattr(new_bn, name).sort().values, getattr(old_bn, name).sort().values
        assert torch.equal(new_v[0::2], old_v) and torch.equal(new_v[1::2], old_v)


def test_bn_reestimate_uses_the_data_and_keeps_weights(small_digits) -> None:
    gm = _traced()
    plan = uniform_plan(fxscale.analyze(gm), 2.0)
    new = warm_start(gm, plan, bn="reestimate", data=small_digits, bn_batches=2, batch_size=32)
    carried = warm_start(gm, plan)
    bn, old = new.get_submodule("stem.1"), carried.get_submodule("stem.1")
    n = gm.get_submodule("stem.1").num_features
    assert not torch.allclose(bn.running_mean, old.running_mean)
    pairs = bn.running_mean.sort().values
    assert torch.allclose(pairs[0::2], pairs[1::2]) and len(pairs) == 2 * n  # replicas see the same activations
    assert bn.momentum == old.momentum and bn.num_batches_tracked == 2
    assert torch.equal(bn.weight, old.weight)
    # the stem BN's statistics are the batch statistics of its conv output over the 2 x 32 images
    xs = torch.stack([small_digits.train[i][0] for i in range(64)])
    with torch.no_grad():
        y = new.get_submodule("stem.0")(xs)
    assert torch.allclose(bn.running_mean, y.mean((0, 2, 3)), atol=1e-5)
    with pytest.raises(FxscaleError, match="needs data"):
        warm_start(gm, plan, bn="reestimate")
    with pytest.raises(FxscaleError, match="bn must be one of"):
        warm_start(gm, plan, bn="fresh")
    assert reestimate_bn(torch.nn.Linear(2, 2), small_digits) == 0


# ---------------------------------------------------------------------------------------------- fine-tune recipe


def test_warm_recipe_and_warmup_schedule() -> None:
    scratch = TrainConfig(epochs=20, lr=0.05, schedule="step")
    cfg = WarmRecipe().train_config(scratch)
    assert (cfg.epochs, cfg.schedule, cfg.warmup_epochs, cfg.distill_weight) == (5, "cosine", 1, 0.0)
    assert math.isclose(cfg.lr, 0.01)
    lrs = [lr_at(cfg, e) for e in range(cfg.epochs)]
    assert math.isclose(lrs[0], 0.005) and math.isclose(lrs[1], 0.01)  # warm-up, then the cosine peak
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))
    assert WarmRecipe(fraction=0.01).train_config(scratch).epochs == 1
    assert WarmRecipe(fraction=0.01).train_config(scratch).warmup_epochs == 0  # capped at epochs - 1
    assert lr_at(TrainConfig(epochs=4, schedule="cosine"), 0) == 0.1  # no warm-up: unchanged
    with pytest.raises(FxscaleError, match="fraction must lie"):
        WarmRecipe(fraction=0)
    with pytest.raises(FxscaleError, match="warmup_epochs must lie"):
        TrainConfig(epochs=2, warmup_epochs=2)
    with pytest.raises(FxscaleError, match="distill_weight"):
        TrainConfig(distill_weight=1.5)


def test_distill_loss_values() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    hard = F.cross_entropy(s, y)
    assert torch.equal(distill_loss(hard, s, t, 0.0, 4.0), hard)
    assert float(distill_loss(hard, s, s, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)
    kl = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean")
    assert float(distill_loss(hard, s, t, 0.5, 2.0)) == pytest.approx(float(0.5 * hard + 0.5 * 4 * kl), rel=1e-5)


def test_warm_fine_tune_with_distillation_starts_at_the_baseline(trained, small_digits) -> None:
    from fxscale.train import evaluate
    base_acc = evaluate(trained, small_digits, "val")
    new = warm_start(trained, uniform_plan(fxscale.analyze(trained), 1.5), noise=0.01)
    assert abs(evaluate(new, small_digits, "val") - base_acc) <= 0.01  # begins near the baseline, not at chance
    assert base_acc > 0.8
    cfg = WarmRecipe(fraction=0.5, distill=0.5).train_config(TrainConfig(epochs=2, lr=0.05))
    res = train(new.train(), small_digits, cfg, teacher=trained)
    assert res.epochs == 1 and res.lr == [pytest.approx(0.01)] and res.best_val_acc >= base_acc - 0.05
    assert not trained.training  # the teacher's mode is restored
    with pytest.raises(FxscaleError, match="needs a teacher"):
        train(new, small_digits, cfg)


def test_teacher_at_a_new_resolution_sees_its_own_resolution(trained, small_digits) -> None:
    """A student at 12 px distils from the baseline fed its batch resized back to 8 px: the same logits as the
    baseline on the resized batch, and a better teacher than the baseline run at 12 px directly."""
    from fxscale.data import loader
    from fxscale.scaling.warm import NativeTeacher, teacher_for
    from fxscale.train import evaluate
    assert teacher_for(trained, uniform_plan(fxscale.analyze(trained), 1.5)) is trained  # same resolution
    plan = ScalingPlan(resolution=(12, 12))
    teacher = teacher_for(trained, plan)
    assert isinstance(teacher, NativeTeacher) and teacher.resolution == (8, 8)
    x = next(iter(loader(small_digits, "val", 64, (12, 12), shuffle=False)))[0]
    with torch.no_grad():
        back = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
        assert torch.equal(teacher(x), trained(back))
    direct = evaluate(warm_start(trained, plan), small_digits, "val", (12, 12))
    native = evaluate(teacher, small_digits, "val", (12, 12))
    assert native > direct + 0.2 and native >= evaluate(trained, small_digits, "val") - 0.06


def test_taylor_importance_of_a_trained_net_keeps_other_channels_than_l1(trained, small_digits) -> None:
    imp = taylor_importance(trained, small_digits, batches=2, batch_size=32)
    cg = fxscale.analyze(trained)
    assert set(imp) == {g.name for g in cg.scalable} and all(v.ge(0).all() for v in imp.values())
    plan = uniform_plan(cg, 0.5)
    a, b = warm_start(trained, plan, importance=imp), warm_start(trained, plan)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_load_state_errors(tmp_path: Path) -> None:
    net = create_model("digits_vgg")
    with pytest.raises(FxscaleError, match="no such file"):
        load_state(net, tmp_path / "missing.pt")
    torch.save({"a": 1}, tmp_path / "junk.pt")
    with pytest.raises(FxscaleError, match="holds no state dict"):
        load_state(net, tmp_path / "junk.pt")
    torch.save(create_model("digits_resnet").state_dict(), tmp_path / "other.pt")
    with pytest.raises(FxscaleError, match="does not fit the model"):
        load_state(net, tmp_path / "other.pt")
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")  # a fxscale.train checkpoint
    load_state(create_model("digits_vgg"), tmp_path / "ckpt.pt")


# ---------------------------------------------------------------------------------------------- pipeline hook


def _pipe(tmp_path: Path, **kw):
    from fxscale.scaling.pipeline import Pipeline, ScaleConfig
    cfg = ScaleConfig(model="digits_vgg", data="digits", data_kw={"train_fraction": 0.1}, epochs=4, batch_size=32,
                      start="trained", progress=False, **kw)
    return Pipeline(cfg, tmp_path / "out", log=lambda _m: None)


def test_pipeline_start_trained_fine_tunes_plans_from_the_trained_baseline(tmp_path: Path) -> None:
    pipe = _pipe(tmp_path, distill=0.3)
    plan = uniform_plan(pipe.cg, 1.5)
    cfg = pipe.train_cfg(8, seed=0)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.distill_weight) == (2, 1, 0.3) and cfg.lr < pipe.cfg.lr
    assert pipe.train_cfg(8, seed=0, warm=False).epochs == 8
    (out,) = pipe.train_many([("wide", plan, 0)], epochs=4)
    assert out.result.epochs == 1  # 25% of 4 epochs
    record = json.loads((pipe.stages / "warm_start.json").read_text())
    assert record["baselines"]["0"]["source"] == "trained" and record["baselines"]["0"]["epochs"] == 4
    (cal,) = record["noise"].values()
    assert cal["noise"] >= 0 and cal["drifts"][0]["rel"] == 0.0
    weights = list((pipe.stages / "weights").glob("warm_baseline_*.pt"))
    assert len(weights) == 1
    # a second pipeline loads the cached baseline; one given --weights loads that file and trains nothing first
    again = _pipe(tmp_path, noise=0.0)
    assert torch.equal(_baseline(again).get_submodule("features.0").weight,
                       _baseline(pipe).get_submodule("features.0").weight)
    given = _pipe(tmp_path / "w", weights=str(weights[0]), noise=0.0)
    b = _baseline(given)
    assert torch.equal(b.get_submodule("features.0").weight, _baseline(pipe).get_submodule("features.0").weight)
    assert json.loads((given.stages / "warm_start.json").read_text())["baselines"]["all"]["epochs"] == 0
    from fxscale.scaling.warm_pipeline import warm_of
    assert warm_of(given).baseline(7) is b  # a given file is every seed's baseline
    from fxscale.train import train as train_run
    same = pipe.build(ScalingPlan(), 0)  # seed 0's baseline is the from-scratch baseline row of seed 0, exactly
    train_run(same, pipe.bundle, pipe.train_cfg(pipe.cfg.epochs, 0, warm=False), pipe.resolution_of(ScalingPlan()))
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), _baseline(pipe).state_dict().values()))
    other = warm_of(pipe).baseline(1)  # without one, each training seed trains (and caches) its own
    assert not torch.equal(other.get_submodule("features.0").weight, _baseline(pipe).get_submodule("features.0").weight)
    assert set(json.loads((pipe.stages / "warm_start.json").read_text())["baselines"]) == {"0", "1"}


def test_scale_start_trained_reports_warm_table_rows(tmp_path: Path) -> None:
    """The whole pipeline warm: every Table I row is fine-tuned for 25% of the epochs from the trained baseline,
    and results.json / report.md say so, with the baseline's training cost."""
    from fxscale.scaling.pipeline import Pipeline, ScaleConfig
    cfg = ScaleConfig(model="digits_vgg", data="digits", data_kw={"train_fraction": 0.2}, epochs=4, batch_size=32,
                      start="trained", noise=0.0, progress=False, methods=("uniform",), seeds=(0, 1), samples=3,
                      sample_epochs=1, search_epochs=1, runs=4, warmup=1, rounds=2, max_rounds=6, stride=4,
                      latency_budget="1.5x", memory_budget="3x", variants=())
    summary = Pipeline(cfg, tmp_path / "out", log=lambda _m: None).run()
    rows = {r["method"]: r for r in summary["methods"]}
    assert set(summary["warm_start"]["baselines"]) == {"0", "1"}  # one trained baseline per training seed
    assert {"baseline", "uniform", "hacscale"} <= set(rows)
    for r in rows.values():
        assert (r["train_compute"]["epochs_per_seed"], r["train_compute"]["start"]) == (1, "trained")
    for b in summary["warm_start"]["baselines"].values():
        assert (b["source"], b["epochs"]) == ("trained", 4)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Warm start: every model above" in report and "2 baseline(s) came from training here (4 epochs" in report


def _baseline(pipe):
    from fxscale.scaling.warm_pipeline import warm_of
    return warm_of(pipe).baseline()


@pytest.mark.parametrize("kw, match", [
    ({"start": "warm"}, "start must be one of"),
    ({"start": "scratch", "weights": "x.pt"}, "only used with start trained"),
    ({"start": "trained", "weights": "/nonexistent/x.pt"}, "x.pt"),
    ({"start": "trained", "warm_fraction": 0.0}, "warm_fraction must lie"),
    ({"start": "trained", "noise": -1.0}, "noise must be 'auto' or a number"),
    ({"start": "trained", "noise": "lots"}, "noise must be 'auto' or a number"),
    ({"start": "trained", "distill": 2.0}, "distill must lie"),
])
def test_scale_config_rejects_bad_warm_settings(kw, match) -> None:
    from fxscale.scaling.config import ScaleConfig
    with pytest.raises(FxscaleError, match=match):
        ScaleConfig(**kw).validate()


# ---------------------------------------------------------------------------------------------- CLI faults


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize("argv, match", [
    (["scale", "--start", "warm"], "invalid choice"),
    (["scale", "--start", "trained", "--weights", "{w}/missing.pt"], "--weights.*missing.pt"),
    (["scale", "--weights", "{w}/vgg.pt"], "--weights is only used with --start trained"),
    (["scale", "--start", "trained", "--warm-fraction", "1.5"], "--warm-fraction must lie in"),
    (["scale", "--start", "trained", "--noise", "-0.1"], "--noise must be 'auto' or a number"),
    (["scale", "--start", "trained", "--noise", "big"], "not a number or 'auto'"),
    (["scale", "--start", "trained", "--distill", "-1"], "--distill must lie in"),
    (["transform", "digits_vgg", "--widen", "2", "--weights", "{w}/missing.pt"], "--weights.*missing.pt"),
    (["transform", "digits_resnet", "--widen", "2", "--weights", "{w}/vgg.pt"], "--weights: .*does not fit"),
    (["transform", "digits_vgg", "--widen", "2", "--data", "nodata"], "--data: unknown dataset 'nodata'"),
    (["transform", "resnet18", "--input-size", "32", "--widen", "0.5", "--data", "digits"],
     "--data digits: the model cannot run on its batches"),
    (["transform", "digits_vgg", "--widen", "0.5", "--data", "digits", "--importance-batches", "0"], "must be"),
])
def test_cli_faults_of_warm_options(argv, match, tmp_path: Path, capsys) -> None:
    torch.save(create_model("digits_vgg").state_dict(), tmp_path / "vgg.pt")
    out = tmp_path / "out"
    code, line = _cli([a.replace("{w}", str(tmp_path)) for a in argv] + ["--out", str(out)], capsys)
    assert code == 2 and re.search(match, line), line
    assert line.startswith("fxscale: error") or "usage" in line or "error" in line
    assert not out.exists()


def test_cli_transform_with_weights_keeps_the_trained_function(trained, small_digits, tmp_path: Path, capsys) -> None:
    torch.save(trained.state_dict(), tmp_path / "resnet.pt")
    out = tmp_path / "out"
    code, _ = _cli(["transform", "digits_resnet", "--weights", str(tmp_path / "resnet.pt"), "--widen", "2",
                    "--out", str(out)], capsys)
    assert code == 0
    new = torch.load(out / "model.pt", weights_only=False)
    x = torch.stack([small_digits.val[i][0] for i in range(16)])
    assert output_drift(new, trained, x).rel < 1e-5  # the trained function, widened
    report = json.loads((out / "report.json").read_text())
    assert report["weights"].endswith("resnet.pt") and report["importance"] == "l1"


@pytest.mark.slow
def test_cli_transform_taylor_shrink_of_a_trained_model(trained, tmp_path: Path, capsys) -> None:
    torch.save(trained.state_dict(), tmp_path / "resnet.pt")
    code, _ = _cli(["transform", "digits_resnet", "--weights", str(tmp_path / "resnet.pt"), "--widen", "0.5",
                    "--init", "prune", "--data", "digits", "--importance-batches", "2", "--out",
                    str(tmp_path / "small")], capsys)
    assert code == 0
    assert json.loads((tmp_path / "small" / "report.json").read_text())["importance"] == "taylor on digits"

