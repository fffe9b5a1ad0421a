"""Inference graph passes (fxscale.optimize): each is checked against its input, exact where the maths says so;
partitions run alone and together reproduce the graph."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxscale
from fxscale.errors import VerificationError
from fxscale.optimize.graphopt import (
    DeadCodeElimination,
    FoldBatchNorm,
    FoldConstants,
    MarkActivationFusion,
    RemoveDropoutIdentity,
    RemoveRedundantViews,
    fusion_markers,
)
from fxscale.optimize.partition import SINK, SOURCE, partition_graph
from fxscale.optimize.verify import PASS_RULES, check_outputs, optimize_graph
from fxscale.passes.base import PassManager
from fxscale.tracing import META
from tests.nets import BasicBlock, ConvChain


def traced(model: nn.Module, *shape: int) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    model = model.eval()
    for m in model.modules():  # non-trivial BN statistics, so folding is tested on more than identity BNs
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(*shape)
    return fxscale.trace(model, x), x


def run(pass_, gm):
    return PassManager([pass_]).__call__(gm)


def ops(gm, kind):
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)]


class LinearBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(torch.flatten(x, 1)))))


class Droppy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.drop, self.idt, self.drop2 = nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Identity(), nn.Dropout2d()

    def forward(self, x):
        y = self.drop2(self.idt(self.drop(self.conv(x))))
        return F.dropout(y, 0.3, training=False) + 1


class WSConv(nn.Module):
    """Weight standardisation: the normalised weight is computed from the parameter on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.scale = nn.Parameter(torch.rand(6, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return torch.relu(F.conv2d(x, w * self.scale, padding=1))


class Dead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.unused = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        _ = self.unused(x) * 2
        return self.a(x)


class Views(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):
        y = self.conv(x).view(1, 8, 6, 6).contiguous()
        y = y.permute(0, 2, 3, 1).permute(0, 3, 1, 2).transpose(2, 3).transpose(2, 3)
        z = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        return self.fc(torch.flatten(z, 1).reshape(1, 8))


def test_conv_bn_folding_is_close_and_removes_every_bn():
    gm, x = traced(ConvChain(), 1, 3, 16, 16)
    want = gm(x)
    res = run(FoldBatchNorm(), gm)
    assert res.modified and not ops(res.graph_module, nn.BatchNorm2d)
    torch.testing.assert_close(res.graph_module(x), want, rtol=1e-4, atol=1e-5)
    assert res.report["fold_bn"]["folded"]


def test_linear_bn_folding():
    gm, x = traced(LinearBN(), 2, 3, 2, 2)
    want = gm(x)
    res = run(FoldBatchNorm(), gm)
    assert not ops(res.graph_module, nn.BatchNorm1d)
    torch.testing.assert_close(res.graph_module(x), want, rtol=1e-4, atol=1e-5)


def test_dropout_and_identity_removal_is_exact():
    gm, x = traced(Droppy(), 1, 3, 8, 8)
    want = gm(x)
    res = run(RemoveDropoutIdentity(), gm)
    g = res.graph_module
    assert not ops(g, (nn.Dropout, nn.Dropout2d, nn.Identity))
    assert not [n for n in g.graph.nodes if n.target is F.dropout]
    assert torch.equal(g(x), want)


def test_constant_folding_of_weight_standardisation_is_exact():
    gm, x = traced(WSConv(), 1, 3, 8, 8)
    want = gm(x)
    res = run(FoldConstants(), gm)
    g = res.graph_module
    assert res.modified
    assert not [n for n in g.graph.nodes if n.op == "call_method" and n.target in ("mean", "std")]
    folded = [n for n in g.graph.nodes if n.op == "get_attr" and n.target.startswith("_folded_")]
    assert len(folded) == 1 and not getattr(g, folded[0].target).requires_grad
    assert torch.equal(g(x), want)


def test_dead_code_elimination_removes_unused_branch_and_module():
    gm, x = traced(Dead(), 1, 3, 4, 4)
    want = gm(x)
    res = run(DeadCodeElimination(), gm)
    assert res.modified and not hasattr(res.graph_module, "unused")
    assert torch.equal(res.graph_module(x), want)


def test_redundant_views_are_removed_exactly():
    gm, x = traced(Views(), 1, 3, 6, 6)
    want = gm(x)
    res = run(RemoveRedundantViews(), gm)
    g = res.graph_module
    left = [n.target for n in g.graph.nodes if n.op == "call_method"]
    assert left == [] and sum(n.target is torch.flatten for n in g.graph.nodes) == 1  # the one real flatten stays
    assert torch.equal(g(x), want)


def test_activation_fusion_markers():
    gm, x = traced(WSConv(), 1, 3, 8, 8)
    g = run(MarkActivationFusion(), gm).graph_module
    (conv,) = [n for n in g.graph.nodes if n.target is F.conv2d]
    assert conv.meta[META]["fuse"]["activation"] == "relu"
    relu = next(iter(conv.users))
    assert relu.meta[META]["fused_into"] == conv.name and fusion_markers(g) == {conv.name: "relu"}


def test_check_outputs_names_the_pass_and_rule():
    a = torch.zeros(3)
    with pytest.raises(VerificationError, match="pass dce must be exact"):
        check_outputs("dce", PASS_RULES["dce"], [a + 1e-7], [a])
    with pytest.raises(VerificationError, match="pass fold_bn: output 0 differs"):
        check_outputs("fold_bn", PASS_RULES["fold_bn"], [a + 1e-2], [a])
    assert check_outputs("fold_bn", PASS_RULES["fold_bn"], [a + 1e-7], [a]) == pytest.approx(1e-7, rel=1e-3)


def test_passes_are_inference_only():
    gm, _ = traced(ConvChain(), 1, 3, 8, 8)
    gm.train()
    with pytest.raises(VerificationError, match="inference-only"):
        FoldBatchNorm()(gm)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_pipeline(name):
    model = getattr(torchvision.models, name)(num_classes=10)
    gm, x = traced(model, 1, 3, 32, 32)
    nodes = len(gm.graph.nodes)
    opt, report = optimize_graph(gm)
    assert len(gm.graph.nodes) == nodes  # the input graph is untouched
    assert not ops(opt, nn.BatchNorm2d) and report["fold_bn"]["modified"]
    assert len(fusion_markers(opt)) >= (8 if name == "resnet18" else 30)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x), rtol=1e-4, atol=1e-4)
    assert all(r["max_abs_diff"] < 1e-3 for r in report.values())


def test_unknown_pass_is_named():
    gm, _ = traced(ConvChain(), 1, 3, 8, 8)
    with pytest.raises(VerificationError, match="unknown graph pass 'fold_everything'"):
        optimize_graph(gm, ["fold_everything"])


@pytest.fixture(scope="module")
def resnet18_opt():
    gm, x = traced(torchvision.models.resnet18(num_classes=10), 1, 3, 32, 32)
    return optimize_graph(gm)[0], x


@pytest.mark.parametrize("granularity", ["op", "block", "whole"])
def test_partitions_run_alone_and_together(granularity, resnet18_opt):
    opt, x = resnet18_opt
    parts = partition_graph(opt, granularity, max_partitions=6, inputs=(x,))
    n = len(parts.partitions)
    assert (n == 1) if granularity == "whole" else (n <= 6 if granularity == "block" else n > 6)
    with torch.no_grad():
        assert torch.equal(parts.split(x), opt(x))
        for p in parts.partitions:  # each runnable alone at its exact shapes
            out = p.gm(*p.inputs)
            assert [list(t.shape) for t in torch.utils._pytree.tree_leaves(out)] == p.output_shapes
    assert sorted(n for p in parts.partitions for n in p.nodes) == sorted(
        n.name for n in opt.graph.nodes if n.op not in ("placeholder", "output", "get_attr"))
    assert any(u == SOURCE for u, _ in parts.edges) and any(v == SINK for _, v in parts.edges)


def test_chain_detection_and_rebuild_from_node_groups():
    gm, x = traced(ConvChain(), 1, 3, 8, 8)
    opt, _ = optimize_graph(gm)
    parts = partition_graph(opt, "op", inputs=(x,))
    assert parts.is_chain() and len(parts.partitions) >= 2
    again = partition_graph(opt, inputs=(x,), groups=[p.nodes for p in parts.partitions])
    assert [p.nodes for p in again.partitions] == [p.nodes for p in parts.partitions]
    block, y = traced(BasicBlock(8, 8), 1, 8, 8, 8)
    res = partition_graph(optimize_graph(block)[0], "op", inputs=(y,))
    assert not res.is_chain()  # the residual edge skips a partition
