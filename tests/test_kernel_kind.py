"""KernelKind: the kernel kind of the latency predictor and profiles (parsed once, str() round-trips)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fxscale
from fxscale import zoo
from fxscale.cost import cost_model
from fxscale.errors import ProfileError
from fxscale.hw.devprofile import COLD_KIND, KERNEL_KIND, DeviceProfile, KindFit, base_kind
from fxscale.hw.predictor import CHANNEL_PADDING, features, fine_kind, layer_sites
from fxscale.ops import ROWS, KernelKind
from fxscale.ops.row import CONV_FAMILIES, FAMILIES, MAC_FAMILIES
from nets import NETS

SAVED_PROFILE = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "predictor_profile.json"


def _graphs() -> dict[str, fxscale.ChannelGraph]:
    out = {name: fxscale.analyze(fxscale.trace(zoo.create_model(name).eval(), torch.randn(1, 3, side, side)))
           for name, side in (("resnet18", 64), ("mobilenet_v2", 32))}  # mobilenet_v2: depthwise convs
    for name in ("conv_transpose", "grouped_conv", "tiny_vit", "dense_concat", "spatial_reduce"):
        model, x = NETS[name]()
        out[name] = fxscale.analyze(fxscale.trace(model, x))
    return out


@pytest.fixture(scope="module")
def graphs() -> dict[str, fxscale.ChannelGraph]:
    return _graphs()


def _round_trips(text: str) -> KernelKind:
    kind = KernelKind.parse(text)
    assert KernelKind.parse(str(kind)) == kind and str(kind) == text, text
    return kind


def test_parse_of_str_is_identity_on_cost_report_kinds(graphs):
    seen = set()
    for name, cg in graphs.items():
        for layer in fxscale.cost(cg).layers:
            kind = _round_trips(layer.kind)
            assert kind.known, (name, layer.kind)
            seen.add(kind.family)
        cm = cost_model(cg)
        sizes = cm.sizes()
        for site in layer_sites(cg, cm, sizes):  # the predictor's fine kinds (stride, gpool) too
            assert _round_trips(site.kind) == site.fine and str(site.cost_kind) == site.base
            assert site.fine.known and (site.view or site.fine.base == site.cost_kind)  # gpool.base is pool
            seen.add(site.fine.family)
    assert {"conv", "dwconv", "gconv", "convT", "linear", "attention", "norm", "elementwise", "pool", "gpool",
            "concat", "reduce", "view"} <= seen


@pytest.mark.skipif(not SAVED_PROFILE.exists(), reason="no saved latency profile")
def test_parse_of_str_is_identity_on_saved_profile_keys():
    d = json.loads(SAVED_PROFILE.read_text())
    keys = set(d["kinds"]) | set(d.get("fusion") or {}) | set((d.get("calibration") or {}).get("scales", {}))
    assert keys
    for key in keys - {COLD_KIND, KERNEL_KIND}:
        assert _round_trips(key).known
    prof = DeviceProfile.load(SAVED_PROFILE)
    for key in d["kinds"]:
        assert prof.fit(KernelKind.parse(key)) is prof.kinds[key] is prof.fit(key)


def test_fields_and_properties():
    assert KernelKind.parse("conv_k3_s2") == KernelKind("conv", 3, 2) and str(KernelKind("conv", 3, 2)) == "conv_k3_s2"
    assert KernelKind.parse("convT") == KernelKind("convT") and KernelKind.parse("convT").is_conv
    assert KernelKind.parse("dwconv_k5").k == 5 and KernelKind.parse("norm") == KernelKind("norm")
    assert KernelKind("conv", 3, 2).base == KernelKind("conv", 3) and KernelKind("gpool").base == KernelKind("pool")
    assert KernelKind("view").moves_nothing and not KernelKind("norm").has_macs and KernelKind("matmul").has_macs
    assert {f for f in FAMILIES if KernelKind(f).is_conv} == CONV_FAMILIES
    assert {f for f in FAMILIES if KernelKind(f).has_macs} == MAC_FAMILIES
    assert not KernelKind("warp").known
    for text in ("", "conv-3x3", "conv_k3x", "3x3"):
        with pytest.raises(ValueError, match="not a kernel kind"):
            KernelKind.parse(text)
    # the string helpers keep their answers
    assert [base_kind(k) for k in ("conv_k3_s2", "gpool", "norm", COLD_KIND, "conv-3x3")] == \
        ["conv_k3", "pool", "norm", COLD_KIND, "conv-3x3"]


def test_every_op_table_kind_is_a_known_family():
    for row in ROWS:
        assert _round_trips(row.kind).known, row.name


def test_predictor_tables_by_family():
    ins, out = [(1, 24, 8, 8)], (1, 24, 4, 4)
    assert fine_kind("conv_k3", 2, ins, out) == "conv_k3_s2" and fine_kind("dwconv_k3", 1, ins, out) == "dwconv_k3"
    assert fine_kind("convT", 2, ins, out) == "convT"  # ConvTranspose kinds are not refined by stride
    assert fine_kind("pool", 8, ins, (1, 24, 1, 1)) == "gpool" and fine_kind("pool", 2, ins, out) == "pool"
    assert set(CHANNEL_PADDING) == CONV_FAMILIES - {"convT"}
    costed = (1000.0, 4000.0, 4.0 * 9 * 24)
    assert features("convT", ins, out, 1000, 4000, 9 * 24, 4, 16) == costed  # runs as costed
    assert features("gconv_k3", ins, out, 1000, 4000, 9 * 24, 4, 16) != costed  # padding taps, bytes recounted
    assert features(KernelKind("dwconv", 3), ins, out, 1000, 4000, 9 * 24, 4, 16) == \
        features("dwconv_k3", ins, out, 1000, 4000, 9 * 24, 4, 16)


def _profile_dict(*kinds: str) -> dict:
    fits = {k: KindFit(k, 1e-3, 1e-8, 1e-9) for k in kinds}
    return DeviceProfile(target={"target": "synthetic"}, kinds=fits).to_dict()


def test_unknown_family_in_profile_is_a_profile_error_naming_it(tmp_path):
    path = tmp_path / "warp.json"
    path.write_text(json.dumps(_profile_dict("conv_k3", "warp_k3", "norm")))
    with pytest.raises(ProfileError, match=r"warp\.json.*malformed.*unknown kernel family 'warp'.*'warp_k3'"):
        DeviceProfile.load(path)
    with pytest.raises(ProfileError, match=r"not a kernel kind: 'conv-3x3'"):
        DeviceProfile.from_dict(_profile_dict("conv-3x3"))
    prof = DeviceProfile.from_dict(_profile_dict("conv_k3", "norm"))  # known families load
    assert prof.fit(KernelKind("conv", 3, 2)) is prof.kinds["conv_k3"]  # stride variants fall back
    with pytest.raises(ProfileError, match="no kernel kind 'attention'"):  # a family the profile lacks
        prof.fit(KernelKind("attention"))
