"""HANT sites, candidates and assembly: sites found from graph structure with the right shapes, every candidate spec
builds a module of legal shapes, and assembled students run and verify."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxscale
from fxscale.errors import VerificationError
from fxscale.hant import candidates as cand_mod
from fxscale.hant.assemble import assemble, extract_site, fold_batchnorm
from fxscale.hant.candidates import CandidateError, create_candidate, default_grid, list_candidates, parse_spec
from fxscale.hant.sites import find_sites


def _trace(model: nn.Module, shape: tuple[int, ...]) -> tuple[fxscale.tracing.fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    return fxscale.trace(model.eval(), x), x


@pytest.fixture(scope="module")
def mbv2():
    torch.manual_seed(0)
    return _trace(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25), (2, 3, 32, 32))


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return _trace(torchvision.models.resnet18(num_classes=10), (2, 3, 32, 32))


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return _trace(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                       hidden_dim=32, mlp_dim=64, num_classes=10), (2, 3, 32, 32))


def _disjoint(sites) -> bool:
    seen: set[str] = set()
    for s in sites:
        if seen & set(s.nodes):
            return False
        seen |= set(s.nodes)
    return True


def test_mobilenet_v2_sites(mbv2):
    sites = find_sites(mbv2[0])
    by = {s.name: s for s in sites}
    assert len(sites) == 19 and _disjoint(sites)
    assert [s.kind for s in sites[1:18]] == ["inverted_residual"] * 17
    assert sites[0].kind == sites[-1].kind == "conv_norm_act"
    s2, s3 = by["features.2"], by["features.3"]
    assert (s2.in_shape, s2.out_shape, s2.stride, s2.residual) == ((2, 8, 16, 16), (2, 8, 8, 8), 2, False)
    assert (s3.in_shape, s3.out_shape, s3.stride, s3.residual) == ((2, 8, 8, 8), (2, 8, 8, 8), 1, True)
    assert s3.groups == (1, 48, 1) and s3.act == "ReLU6" and not s3.act_out
    res = [f"features.{i}" for i, m in enumerate(torchvision.models.mobilenet_v2(width_mult=0.25).features) if getattr(m, "use_res_connect", False)]
    assert [s.name for s in sites if s.residual] == res and len(res) >= 10  # torchvision's own flag


def test_resnet18_sites(r18):
    sites = find_sites(r18[0])
    assert [s.name for s in sites] == ["conv1"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert sites[0].nodes == ("conv1", "bn1", "relu") and sites[0].act_out
    down = {s.name: s for s in sites}["layer2.0"]
    assert down.kind == "basic" and down.residual and down.stride == 2 and down.act_out
    assert (down.in_shape, down.out_shape) == ((2, 64, 8, 8), (2, 128, 4, 4))
    assert _disjoint(sites)


def test_bottleneck_and_efficientnet_kinds():
    r50, _ = _trace(torchvision.models.resnet50(num_classes=10), (1, 3, 32, 32))
    kinds = [s.kind for s in find_sites(r50)]
    assert kinds[0] == "conv_norm_act" and set(kinds[1:]) == {"bottleneck"} and len(kinds) == 17
    eff, _ = _trace(torchvision.models.efficientnet_b0(num_classes=10), (1, 3, 32, 32))
    sites = find_sites(eff)
    assert sum(s.se for s in sites) == 16 and {s.kind for s in sites} == {"conv_norm_act", "inverted_residual"}
    assert _disjoint(sites)


def test_vit_sites(vit):
    sites = find_sites(vit[0])
    names = [s.name for s in sites]
    assert names[1:] == [f"encoder.layers.encoder_layer_{i}:{k}" for i in range(2) for k in ("attention", "mlp")]
    for s in sites[1:]:
        assert s.tokens and s.residual and s.in_shape == s.out_shape == (2, 17, 32)
    assert sites[0].name == "conv_proj" and sites[0].stride == 8


def test_extracted_site_reproduces_the_teacher(mbv2):
    gm, x = mbv2
    from fxscale.hant.distill import capture_sites
    sites = find_sites(gm)
    got = capture_sites(gm, sites, [(x, None)], 2)
    for s in sites[:4]:
        entry, out = got[s.name]
        torch.testing.assert_close(extract_site(gm, s)(entry), out)


@pytest.mark.parametrize("site_name", ["features.2", "features.3", "features.17"])
def test_every_default_candidate_has_legal_shapes(mbv2, site_name):
    gm, _x = mbv2
    site = {s.name: s for s in find_sites(gm)}[site_name]
    sub = extract_site(gm, site)
    specs = list_candidates(site, sub)
    assert len(specs) >= 20 and specs[0] == "teacher"
    for spec in specs:
        y = create_candidate(spec, site, sub)(torch.randn(3, *site.in_shape[1:]))
        assert tuple(y.shape[1:]) == tuple(site.out_shape[1:]), spec
    assert ("skip" in specs) == (site.in_shape == site.out_shape)


def test_pruned_teacher_is_narrower(mbv2):
    gm, _x = mbv2
    site = {s.name: s for s in find_sites(gm)}["features.3"]
    sub = extract_site(gm, site)
    n = sum(p.numel() for p in sub.parameters())
    half = sum(p.numel() for p in create_candidate("prune_x0.5", site, sub).parameters())
    assert half < 0.7 * n


def test_candidate_errors(mbv2, vit):
    gm, _x = mbv2
    sites = {s.name: s for s in find_sites(gm)}
    with pytest.raises(CandidateError, match=r"candidate 'skip' at site 'features.2': input \[2, 8, 16, 16\]"):
        create_candidate("skip", sites["features.2"])
    with pytest.raises(CandidateError, match=r"unknown candidate 'ir2_k3'; did you mean 'ir'"):
        create_candidate("ir2_k3", sites["features.3"])
    with pytest.raises(CandidateError, match=r"cannot read option .3k."):
        parse_spec("ir_3k")
    token_site = find_sites(vit[0])[2]
    with pytest.raises(CandidateError, match="works on tokens"):
        create_candidate("ir_e3_k3", token_site)
    assert parse_spec("ir_e6_k5_se") == ("ir", {"e": 6.0, "k": 5, "se": True})
    assert len(default_grid(sites["features.3"])) >= 20


def test_register_candidate(mbv2, monkeypatch):
    gm, _x = mbv2
    site = {s.name: s for s in find_sites(gm)}["features.3"]
    monkeypatch.setattr(cand_mod, "_REGISTRY", dict(cand_mod._REGISTRY))

    def grouped(opts, site, teacher):
        return nn.Conv2d(site.in_channels, site.out_channels, 3, site.stride, 1, groups=int(opts.get("g", 1)))
    cand_mod.register_candidate("gconv", grouped)
    assert isinstance(create_candidate("gconv_g2", site), nn.Conv2d)
    with pytest.raises(CandidateError, match="gives"):
        cand_mod.register_candidate("bad", lambda o, s, t: nn.Conv2d(s.in_channels, 3, 1))
        create_candidate("bad", site)


def test_assembled_student_runs_and_verifies(r18, vit):
    for gm, x in (r18, vit):
        sites = find_sites(gm)
        same = assemble(gm, {s.name: s for s in sites}, {s.name: extract_site(gm, s) for s in sites})
        torch.testing.assert_close(same(x), gm(x))
        torch.manual_seed(0)
        mods = {}
        for s in sites:
            specs = list_candidates(s, None, ["mlp_r1", "ds_k3", "prune_x0.5", "cn_k1"])
            if specs:
                mods[s.name] = create_candidate(specs[0], s, extract_site(gm, s))
        student = assemble(gm, {s.name: s for s in sites}, mods)
        assert student(x).shape == gm(x).shape
        assert {n.target for n in student.graph.nodes if n.op == "call_module" and
                str(n.target).startswith("hant_")} == {f"hant_{i}" for i in range(len(mods))}
        assert student.meta["fxscale"]["hant"]["swapped"].keys() == mods.keys()
    with pytest.raises(VerificationError, match="unknown site 'nope'"):
        assemble(gm, {s.name: s for s in sites}, {"nope": nn.Identity()})


def test_batchnorm_folding_keeps_numerics(mbv2):
    gm, x = mbv2
    sites = find_sites(gm)
    torch.manual_seed(0)
    student = assemble(gm, {s.name: s for s in sites}, {s.name: create_candidate("ds_k3", s) for s in sites[2:5]})
    folded = fold_batchnorm(student)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), student(x), rtol=1e-4, atol=1e-5)


class _Branchy(nn.Module):
    """Three conv-bn-relu sites in a chain; the first one's output is also read by the head (outside the second)."""

    def __init__(self) -> None:
        super().__init__()
        self.s0, self.s1, self.s2 = (nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                                     for c in (3, 8, 8))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y0 = self.s0(x)
        y2 = self.s2(self.s1(y0))
        return self.fc(torch.cat([y2, y0], 1).mean((2, 3)))


def test_two_site_regions_chain_and_assemble(mbv2, r18):
    from fxscale.hant.sites import PAIR_SEP, find_pairs, merge_sites, pair_parts
    gm, x = mbv2
    sites = find_sites(gm)
    pairs = find_pairs(gm, sites)
    assert [i for i, _ in pairs] == list(range(len(sites) - 1))  # mobilenet_v2's sites form one chain
    i, p = pairs[2]
    a, b = sites[i], sites[i + 1]
    assert p.name == f"{a.name}{PAIR_SEP}{b.name}" and pair_parts(p.name) == (a.name, b.name)
    assert (p.kind, p.entry, p.output, p.in_shape, p.out_shape) == ("pair", a.entry, b.output, a.in_shape, b.out_shape)
    assert p.stride == a.stride * b.stride and merge_sites(gm, b, a) is None  # order matters
    torch.testing.assert_close(extract_site(gm, p)(gm_entry(gm, a, x)), gm_entry(gm, b, x, output=True))
    torch.manual_seed(0)
    student = assemble(gm, {p.name: p}, {p.name: create_candidate("ds_k3", p, None)})
    assert student(x).shape == gm(x).shape
    assert sum(str(n.target).startswith("hant_") for n in student.graph.nodes if n.op == "call_module") == 1
    r_gm, _ = r18  # the stem's max pool sits between the stem site and layer1.0: no region spans it
    r_sites = find_sites(r_gm)
    assert r_sites[0].name == "conv1" and r_sites[1].name == "layer1.0" and r_sites[1].entry != r_sites[0].output
    assert [i for i, _ in find_pairs(r_gm, r_sites)] == list(range(1, len(r_sites) - 1))
    b_gm, _ = _trace(_Branchy(), (2, 3, 8, 8))
    b_sites = find_sites(b_gm)
    assert [s.name for s in b_sites] == ["s0", "s1", "s2"]
    # s0's output also feeds the head: merging s0 and s1 would lose it; s1 -> s2 chains
    assert [q.name for _, q in find_pairs(b_gm, b_sites)] == [f"s1{PAIR_SEP}s2"]


def gm_entry(gm, site, x, output=False):
    """The value of a site's entry (or output) node on input x."""
    from fxscale.hant.distill import capture_sites
    entry, out = capture_sites(gm, [site], [(x, None)], len(x))[site.name]
    return out if output else entry
