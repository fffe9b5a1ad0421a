"""Latency predictor: exact fits on a synthetic target, profile JSON round trip and errors, incremental updates, CLI."""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import fxscale
from fxscale import zoo
from fxscale.cli import main
from fxscale.cost import cost_model
from fxscale.errors import FxscaleError, TargetError
from fxscale.hw.base import LatencyStats
from fxscale.hw.devprofile import (COLD_KIND, KERNEL_KIND, PROFILE_VERSION, Calibration, DeviceProfile, KindFit,
                                   ProfileError, fit_kind)
from fxscale.hw.predictor import LatencyPredictor, conv_taps, features, layer_features, layer_sites
from fxscale.hw.profile import LayerShape, Settings, profile, random_plan

torch.set_num_threads(1)
OVERHEAD_MS = 0.004
TRUE = {  # base kind -> (intercept ms, ms per MAC, ms per byte): the synthetic target's ground truth
    "conv": (2e-3, 1.1e-8, 2e-9), "norm": (5e-4, 0.0, 3e-9), "elementwise": (3e-4, 0.0, 2e-9),
    "pool": (4e-4, 0.0, 4e-9), "gpool": (6e-4, 0.0, 1e-9), "linear": (1e-3, 3e-8, 5e-10)}


def _family(kind: str) -> str:
    return "conv" if kind.startswith(("conv_", "dwconv_", "gconv_")) else kind


class FakeTarget:
    """Latency = call overhead + sum over layers of TRUE[kind](MACs, bytes): no noise, no fusion, no cache."""

    name = "fake"

    def __init__(self) -> None:
        self.cache: dict[int, tuple[object, float]] = {}

    def latency(self, model: nn.Module, shape: tuple) -> float:
        """The synthetic latency of a module at an input shape (memoised per module object)."""
        hit = self.cache.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        cg = fxscale.analyze(fxscale.trace(model.eval(), torch.randn(shape)))
        cm = cost_model(cg)
        sizes = cm.sizes()
        ms = OVERHEAD_MS
        for site in layer_sites(cg, cm, sizes):
            if not site.view:
                _lc, mf, bf, _wf = layer_features(site, cm, sizes, 1)
                a, b, c = TRUE[_family(site.kind)]
                ms += a + b * mf + c * bf
        self.cache[id(model)] = (model, ms)
        return ms

    def measure(self, model, input_shape, protocol):
        """LatencyStats of `protocol.runs` identical samples."""
        v = self.latency(model, tuple(input_shape))
        return LatencyStats.from_samples([v] * protocol.runs, protocol.warmup, "synthetic")

    def describe(self) -> dict:
        """Metadata stored in the profile."""
        return {"target": "fake", "device": "synthetic", "threads": 1}


@pytest.fixture(scope="module")
def fake_profile() -> DeviceProfile:
    """A quick profile of the synthetic target around digits_resnet plus explicit depthwise-5x5 and grouped shapes."""
    settings = Settings.quick(points_per_kind=6, adaptive_rounds=1, calibration_plans=3)
    shapes = [LayerShape("conv", 32, size=8, kernel=5, groups=32), LayerShape("conv", 32, size=8, groups=4)]
    return profile(FakeTarget(), ["digits_resnet", *shapes], settings=settings)


def test_fit_recovers_known_coefficients(fake_profile):
    prof = fake_profile
    assert prof.channel_block == 1 and prof.overhead_ms == pytest.approx(OVERHEAD_MS, rel=1e-9)
    assert {"conv_k3", "conv_k3_s2", "conv_k1_s2", "dwconv_k5", "gconv_k3", "norm", "elementwise", "gpool",
            "linear"} <= set(prof.kinds)
    for kind, fit in prof.kinds.items():
        a, b, c = TRUE[_family(kind)]
        assert fit.model == "linear" and fit.n >= 3
        assert fit.mape < 1e-6 and fit.r2 > 0.999999, kind
        x = np.array(fit.samples)
        assert x.shape[1] == 4  # MACs, bytes, weight bytes, ms
        np.testing.assert_allclose([fit.predict(*row[:3]) for row in x], a + x[:, :2] @ [b, c], rtol=1e-6)
        assert fit.intercept_ms == pytest.approx(a, rel=1e-4, abs=1e-9)
        if b:
            assert fit.ms_per_mac == pytest.approx(b, rel=1e-4)
        if x[:, 2].any():  # weight bytes cost what any byte costs on this target
            assert fit.ms_per_weight_byte == pytest.approx(c, rel=1e-3)
    assert prof.fusion["norm"] == pytest.approx(1.0, abs=1e-6)  # nothing is fused on this target
    assert prof.cache.get("kappa_conv", 0.0) == pytest.approx(0.0, abs=1e-15)  # and no cache cliff
    assert prof.calibration.mape_after < 1e-3


def test_predict_matches_synthetic_truth(fake_profile):
    target, pred = FakeTarget(), LatencyPredictor(fake_profile)
    model = zoo.create_model("digits_resnet").eval()
    gm = fxscale.trace(model, torch.randn(1, 1, 8, 8))
    cg = fxscale.analyze(gm)
    rng = random.Random(7)
    for _ in range(3):
        plan = random_plan(cg, rng, res_range=(1.0, 1.0))
        new = fxscale.transform(gm, plan, init="reinit")
        assert pred.predict(cg, plan) == pytest.approx(target.latency(new, (1, 1, 8, 8)), rel=2e-3)


def test_gbr_only_when_it_wins_held_out():
    rng = np.random.default_rng(0)
    macs = rng.uniform(1e5, 1e7, 60)
    nbytes = rng.uniform(1e4, 1e6, 60)
    linear = fit_kind("conv_k3", np.column_stack([macs, nbytes, 1e-3 + 1e-8 * macs + 1e-9 * nbytes]))
    assert linear.model == "linear" and linear.cv_mape_linear < 1e-6
    step = fit_kind("pool", np.column_stack([macs, nbytes, np.where(nbytes > 5e5, 1.0, 0.1)]))
    assert step.model == "gbr" and step.cv_mape_gbr < step.cv_mape_linear
    assert step.predict(0.0, 9e5) == pytest.approx(1.0, rel=0.05)
    assert step.predict(0.0, 1e5) == pytest.approx(0.1, rel=0.05)


def test_features_pad_channels_and_skip_padding_taps():
    assert conv_taps((1, 1), (1, 1), (3, 3), (1, 1), (1, 1), (1, 1)) == pytest.approx((1 / 9, 1 / 9))
    assert conv_taps((2, 2), (2, 2), (3, 3), (1, 1), (1, 1), (1, 1)) == pytest.approx((4 / 9, 1.0))
    ins, out = [(1, 40, 8, 8)], (1, 40, 8, 8)
    macs, params = 40 * 40 * 9 * 64, 40 * 40 * 9
    mf, bf, wf = features("conv_k3", ins, out, macs, 4 * (2 * 40 * 64 + params), params, 4, 16)
    assert mf == pytest.approx(macs * (48 / 40) ** 2) and wf == pytest.approx(4 * params * (48 / 40) ** 2)
    assert features("norm", ins, out, 0, 1000, 80, 4, 16) == (0.0, 1000.0, 320.0)


def test_profile_json_round_trip(fake_profile, tmp_path):
    path = fake_profile.save(tmp_path / "p.json")
    loaded = DeviceProfile.load(path)
    assert loaded.to_dict() == fake_profile.to_dict()
    assert json.loads(path.read_text())["version"] == PROFILE_VERSION
    assert loaded.target["target"] == "fake" and loaded.meta["kernel_samples"] > 0
    cg = fxscale.analyze(fxscale.trace(zoo.create_model("digits_resnet").eval(), torch.randn(1, 1, 8, 8)))
    plan = random_plan(cg, random.Random(1))
    assert LatencyPredictor(path).predict(cg, plan) == pytest.approx(LatencyPredictor(fake_profile).predict(cg, plan))
    assert list(tmp_path.iterdir()) == [path]  # no temp files left


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ProfileError, match="missing.json"):
        DeviceProfile.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="bad.json.*not valid JSON"):
        DeviceProfile.load(bad)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "fxscale.latency-profile", "version": PROFILE_VERSION + 1}))
    with pytest.raises(ProfileError, match="version"):
        DeviceProfile.load(old)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"widths": {}}))
    with pytest.raises(TargetError, match="not an fxscale latency profile"):
        DeviceProfile.load(other)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "fxscale.latency-profile", "version": PROFILE_VERSION, "kinds": {}}))
    with pytest.raises(FxscaleError, match="malformed"):
        DeviceProfile.load(broken)


def test_save_is_atomic(fake_profile, tmp_path, monkeypatch):
    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        fake_profile.save(tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []


def test_missing_kind_names_the_kind(fake_profile, tmp_path):
    path = fake_profile.save(tmp_path / "digits.json")
    cg = fxscale.analyze(fxscale.trace(zoo.create_model("mobilenet_v2").eval(), torch.randn(1, 3, 32, 32)))
    with pytest.raises(ProfileError, match=r"digits\.json.*dwconv_k3"):
        LatencyPredictor(path).predict(cg)
    with pytest.raises(ProfileError, match="dwconv_k3"):
        LatencyPredictor(fake_profile).bind(cg)


def _synthetic_profile(kinds: list[str]) -> DeviceProfile:
    """Every kind with distinct coefficients, a DRAM term that engages, per-kind scales and a per-kernel cost."""
    fits = {k: KindFit(k, 1e-3 * (i + 1), 1e-8 * (1 + i % 3), 1e-9 * (1 + i % 2), 2e-9) for i, k in enumerate(kinds)}
    cal = Calibration(scales={**{k: 0.5 + 0.1 * i for i, k in enumerate(kinds)}, "norm": 0.0, COLD_KIND: 0.9,
                              KERNEL_KIND: 0.4}, constant_ms=0.01)
    return DeviceProfile(target={"target": "synthetic"}, kinds=fits, channel_block=16, calibration=cal,
                         cache={"c0_bytes": 8e6, "c1_bytes": 40e6, "kappa_conv": 4e-8, "kappa_linear": 3e-8})


def test_incremental_updates_equal_full_predict():
    cg = fxscale.analyze(fxscale.trace(zoo.create_model("resnet18").eval(), torch.randn(1, 3, 64, 64)))
    prof = _synthetic_profile(["conv_k7_s2", "conv_k3", "conv_k3_s2", "conv_k1_s2", "norm", "elementwise", "pool",
                               "gpool", "linear"])
    pred = LatencyPredictor(prof)
    rng = random.Random(0)
    for res in (None, (48, 48)):
        state = pred.bind(cg, res)
        plan0 = fxscale.ScalingPlan(resolution=res)
        assert state.total == pytest.approx(pred.predict(cg, plan0), rel=1e-12)
        groups = cg.scalable
        for step in range(200):
            g = rng.choice(groups)
            width = max(g.divisor, int(g.width * rng.uniform(0.3, 2.5)))
            before = state.total
            d = state.delta(g.name, width)
            assert state.total == before  # delta does not commit
            assert state.peek(g.name, width) == pytest.approx(before + d, rel=1e-12)
            if step % 3 == 0:
                trial = state.copy()
                trial.set_width(g.name, width)
                assert trial.total == pytest.approx(before + d, rel=1e-9, abs=1e-12)
                assert state.total == before  # the copy is independent
            else:
                assert state.set_width(g.name, width) == pytest.approx(before + d, rel=1e-9, abs=1e-12)
        assert state.total == pytest.approx(pred.predict(cg, state.plan()), rel=1e-9)
        assert state.weight_bytes > prof.cache["c0_bytes"]  # the DRAM term took part
        assert pred.bind(cg, res, state.plan()).total == pytest.approx(state.total, rel=1e-9)
        layers = pred.predict_layers(cg, state.plan())
        assert sum(r.cold_ms for r in layers) > 0 and all(r.ms == r.cold_ms for r in layers if r.kind == "norm")
    with pytest.raises(fxscale.PlanError, match="no channel group"):
        state.set_width("nope", 8)


def test_cli_profile_writes_loadable_file_and_rejects_unknown_target(tmp_path, capsys):
    out = tmp_path / "bad.json"
    assert main(["profile", "--target", "nope", "--models", "digits_vgg", "--out", str(out)]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err and not out.exists()
    assert main(["profile", "--target", "ort", "--models", "digits_zzz", "--quick", "--out", str(out)]) == 2
    assert not out.exists()
    out = tmp_path / "ort.json"
    assert main(["profile", "--target", "ort", "--models", "digits_vgg", "--quick", "--out", str(out)]) == 0
    prof = DeviceProfile.load(out)
    assert prof.target["runtime"] == "onnxruntime" and prof.target["threads"] == 1
    assert prof.meta["clock"] == "thread" and prof.calibration is not None
    assert {"conv_k3", "pool", "gpool", "linear"} <= set(prof.kinds)
    for fit in prof.kinds.values():
        assert fit.n >= 4 and not math.isnan(fit.mape)
    cg = fxscale.analyze(fxscale.trace(zoo.create_model("digits_vgg").eval(), torch.randn(1, 1, 8, 8)))
    ms = LatencyPredictor(prof).predict(cg, random_plan(cg, random.Random(0)))
    assert 0.0 < ms < 10.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ort.json"]


def test_saved_profile_kind_keys_round_trip_through_kernel_kind(fake_profile, tmp_path):
    from fxscale.ops import KernelKind
    d = json.loads(fake_profile.save(tmp_path / "p.json").read_text())
    keys = (set(d["kinds"]) | set(d["fusion"]) | set(d["calibration"]["scales"])) - {COLD_KIND, KERNEL_KIND}
    assert {"conv_k3_s2", "dwconv_k5", "gpool", "norm"} <= keys
    for key in keys:
        kind = KernelKind.parse(key)
        assert KernelKind.parse(str(kind)) == kind and str(kind) == key and kind.known
        if key in d["kinds"]:
            assert fake_profile.fit(kind) is fake_profile.fit(key) is fake_profile.kinds[key]
    bad = {**d, "kinds": {**d["kinds"], "warp_k3": d["kinds"]["conv_k3"]}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ProfileError, match=r"bad\.json.*unknown kernel family 'warp' in kind 'warp_k3'"):
        DeviceProfile.load(tmp_path / "bad.json")


class _StageTimer:
    """A RoundTimer stand-in for the calibration stage: per stage, the synthetic truth times a per-item factor."""

    def __init__(self, factors: dict[str, list[float]]) -> None:
        self.factors, self.failures, self.stages = factors, [], []
        self.truth = FakeTarget()

    def run(self, items, budget_ms, stage, chunk=32, subtract=True):
        self.stages.append(stage)
        f = self.factors[stage]
        return [self.truth.latency(m, tuple(s)) * f[i % len(f)] for i, (m, s) in enumerate(items)]


@pytest.mark.parametrize("drift", [True, False])
def test_poor_calibration_is_rechecked_for_drift_and_warned(fake_profile, drift):
    """Calibration above CALIBRATION_WARN_MAPE re-measures the references; drift -> refit, else one warning."""
    import warnings as _w

    from fxscale.hw.profile import CALIBRATION_WARN_MAPE, _calibrate, resolve_models
    noisy = [3.0, 0.4, 2.5, 0.5, 1.8, 0.3]  # a loaded machine while the references were first timed
    timer = _StageTimer({"calibration": noisy, "recalibration": [1.0] if drift else noisy})
    entries = resolve_models(["digits_resnet"])
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        cal, check = _calibrate(timer, fake_profile, entries, random.Random(0),
                                Settings.quick(calibration_plans=5), "per_kind")
    assert timer.stages == ["calibration", "recalibration"] and check["remeasured"]
    poor = [str(w.message) for w in caught if "calibration is poor" in str(w.message)]
    if drift:
        assert check["refit"] and check["mape_before_refit"] > CALIBRATION_WARN_MAPE
        assert cal.mape_after == check["mape_after"] < CALIBRATION_WARN_MAPE and not poor
    else:
        assert not check.get("refit") and check["drift"] == 0.0 and len(poor) == 1
        assert f"{CALIBRATION_WARN_MAPE:.0%}" in poor[0]
