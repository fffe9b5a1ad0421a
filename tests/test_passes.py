"""Pass pipeline: Pass/PassResult/PassManager, verification as named rules, shapes refreshed after transform."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

import fxscale
from fxscale.errors import VerificationError
from fxscale.passes.base import Pass, PassManager, PassResult
from fxscale.passes.channel_map import build_maps
from fxscale.passes.scale import ResolutionPass, WidthPass
from fxscale.passes.verify import RULES, check_param_shapes
from fxscale.tracing import META

torch.set_num_threads(1)


def _net():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 16, 16)
    gm = fxscale.trace(model, x)
    return gm, fxscale.analyze(gm), x


class Widen0ButForgetBN(Pass):
    """A broken width pass: widens conv 0 and its consumer but not the BatchNorm that follows it."""

    name = "broken"

    def call(self, gm: fx.GraphModule) -> PassResult:
        gm.get_submodule("0").weight = nn.Parameter(torch.randn(16, 3, 3, 3))
        gm.get_submodule("0").bias = nn.Parameter(torch.zeros(16))
        gm.get_submodule("3").weight = nn.Parameter(torch.randn(8, 16, 3, 3))
        return PassResult(gm, True, {"touched": 2})


def test_static_rule_names_the_misgrouped_parameter_without_a_forward():
    gm, cg, _x = _net()
    plan = fxscale.ScalingPlan(widths={"0": 16})
    maps = build_maps(cg, plan, "preserve")
    new = fxscale.api.copy_graph_module(gm)
    calls = []
    rules = [r if r.name != "forward" else type(r)("forward", lambda g, c: calls.append(1) or [], "") for r in RULES]
    with pytest.raises(VerificationError, match=r"rule param_shapes: parameter 1\.(weight|bias|running_mean|running_var) "
                                                r"dim 0 has 8 channels.*\['0'\] give 16"):
        PassManager([Widen0ButForgetBN()], context={"cg": cg, "maps": maps}, rules=rules)(new)
    assert not calls  # caught before any forward pass


def test_static_rule_is_silent_on_a_correct_transform():
    gm, cg, x = _net()
    plan = fxscale.ScalingPlan(widths={"0": 16})
    maps = build_maps(cg, plan, "preserve")
    new = fxscale.api.copy_graph_module(gm)
    result = PassManager([WidthPass(cg, maps)], context={"cg": cg, "maps": maps})(new)
    assert result.modified and result.report["width"]["modules"] == 3  # conv 0, bn 1, conv 3
    assert check_param_shapes(result.graph_module, {"cg": cg, "maps": maps}) == []
    with torch.no_grad():
        assert torch.allclose(result.graph_module(x), gm(x), atol=1e-5)


def test_manager_lints_after_every_pass():
    class DanglingUse(Pass):
        name = "dangling"

        def call(self, gm):
            out = next(n for n in gm.graph.nodes if n.op == "output")
            first = next(n for n in gm.graph.nodes if n.op == "call_module")
            with gm.graph.inserting_before(first):
                bad = gm.graph.call_function(torch.relu, (out,))  # uses a node defined later
            first.args = (bad,)
            return PassResult(gm, True)

    gm, _cg, _x = _net()
    with pytest.raises(VerificationError, match="graph lint failed"):
        PassManager([DanglingUse()])(fxscale.api.copy_graph_module(gm))


def test_a_plugged_in_pass_runs_under_the_manager_and_reports():
    class InsertIdentity(Pass):
        name = "identity"

        def call(self, gm):
            out = next(n for n in gm.graph.nodes if n.op == "output")
            with gm.graph.inserting_before(out):
                ident = gm.graph.call_function(torch.clone, (out.args[0],))
            out.args = (ident,)
            return PassResult(gm, True, {"inserted": 1})

    gm, _cg, x = _net()
    result = PassManager([InsertIdentity(), ResolutionPass((16, 16))])(fxscale.api.copy_graph_module(gm))
    assert result.report == {"identity": {"inserted": 1}}  # the no-op resolution pass reports nothing
    assert any(n.target is torch.clone for n in result.graph_module.graph.nodes)
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), gm(x))


def test_node_shapes_are_refreshed_by_transform():
    gm, cg, _x = _net()
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths={"0": 24}, resolution=(24, 24)), resolution_mode="input",
                            cg=cg)
    shapes = {n.name: n.meta[META]["shape"] for n in new.graph.nodes}
    assert shapes["_0"][1] == 24 and shapes["_0"][2:] == (24, 24)
    assert fxscale.analyze(new)["0"].width == 24
    assert new.meta[META]["transform"]["width"]["modules"] == 3


def test_rules_are_named_and_ordered_static_first():
    names = [r.name for r in RULES]
    assert names[0] == "param_shapes" and names.index("forward") < names.index("output_shapes")
    assert len(set(names)) == len(names)


class _FunctionalConv(nn.Module):
    """A conv called functionally on its own parameter (``F.conv2d(x, self.weight)``), as timm's std-convs do."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3))
        with torch.no_grad():
            self.weight[[1, 4]] *= 10.0  # channels 1 and 4 dominate by L1 norm
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.nn.functional.conv2d(x, self.weight, padding=1))


def test_prune_scores_read_the_weight_of_a_functional_conv():
    from fxscale.passes.channel_map import channel_scores
    gm = fxscale.trace(_FunctionalConv().eval(), torch.randn(1, 3, 8, 8))
    cg = fxscale.analyze(gm)
    (g,) = [g for g in cg.scalable if g.width == 6]
    scores = list(channel_scores(cg).values())
    want = gm.weight.detach().abs().reshape(6, -1).sum(1)
    assert any(len(s) == 6 and torch.allclose(s, want) for s in scores)
    maps = build_maps(cg, fxscale.ScalingPlan(widths={g.name: 2}), "prune")
    assert any(torch.equal(m, torch.tensor([1, 4])) for m in maps.maps.values())


class _HaloUnfold(nn.Module):
    """timm's HaloAttn blocks: overlapping windows cut with ``F.pad(x).unfold(2, win, block).unfold(3, ...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = torch.nn.functional.pad(self.conv(x), [1, 1, 1, 1]).unfold(2, 4, 2).unfold(3, 4, 2)
        return y.reshape(y.shape[0], 4, -1, 16).amax(-1)


def test_unfold_is_lowered_to_a_gather_and_exports(tmp_path):
    from fxscale.passes.lower import UNFOLD, lowered_copy
    x = torch.randn(1, 3, 8, 8)
    gm = fxscale.trace(_HaloUnfold().eval(), x)
    low, done = lowered_copy(gm, 17, x)
    assert len(done) == 2 and all("unfold" in d for d in done)
    assert not any(n.op == "call_method" and n.target == "unfold" for n in low.graph.nodes)
    with torch.no_grad():
        assert torch.equal(low(x), gm(x))
    report = fxscale.export_onnx(gm, tmp_path / "halo.onnx", x, opset=17)
    assert report.max_abs_diff < 1e-5 and UNFOLD == "tensor_unfold"
