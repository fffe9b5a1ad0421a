"""export_onnx: opset pinning, self-contained files, ORT verification, cleanup on failure."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, helper
from torch import nn

import fxscale.export as export_mod
from fxscale.errors import FxscaleError
from fxscale.export import ExportError, ExportReport, downconvert_opset, export_onnx


def small_net() -> nn.Module:
    """Conv-BN-ReLU-Hardswish-GAP-Linear: exercises ReduceMean, Reshape and HardSwish in the dynamo path."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    net[1].running_mean.normal_(0, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def traced_resnet18() -> torch.fx.GraphModule:
    """torchvision resnet18 (random init, randomised BN statistics) traced by torch.fx in eval mode."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return torch.fx.symbolic_trace(model.eval())


def file_opset(path) -> int:
    """Default-domain opset stored in an .onnx file."""
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def ort_run(path, x: np.ndarray) -> list[np.ndarray]:
    """All outputs of a CPU ORT session on input `x`."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def test_small_net_torchscript_opset13_self_contained(tmp_path):
    net = small_net().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, 3, 16, 16)
    rep = export_onnx(net, tmp_path / "small.onnx", x)
    assert isinstance(rep, ExportReport)
    assert (rep.opset, rep.ir_version, rep.exporter, rep.dynamic_batch) == (13, 7, "torchscript", False)
    assert file_opset(rep.path) == 13 and rep.n_nodes == len(onnx.load(str(rep.path)).graph.node)
    assert rep.max_abs_diff is not None and rep.max_abs_diff < 1e-4 and rep.seconds > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]  # no .data, no partial file
    assert net.training and all(m.training for m in net.modules())  # caller's mode restored
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN stats untouched


@pytest.mark.parametrize("opset", [13, 17])
def test_resnet18_fx_graphmodule_exports_requested_opset(tmp_path, opset):
    gm = traced_resnet18()
    x = torch.randn(1, 3, 64, 64)
    rep = export_onnx(gm, tmp_path / "r18.onnx", x, opset=opset)
    assert rep.opset == opset and file_opset(rep.path) == opset
    assert rep.max_abs_diff < 1e-4
    with torch.no_grad():
        ref = gm(x).numpy()
    assert ref.std() > 1e-3  # non-degenerate outputs, so the comparison means something
    np.testing.assert_allclose(ort_run(rep.path, x.numpy())[0], ref, rtol=1e-3, atol=1e-4)


def test_dynamic_batch_runs_on_batch_3(tmp_path):
    net = small_net()
    rep = export_onnx(net, tmp_path / "dyn.onnx", torch.randn(1, 3, 16, 16), opset=17, dynamic_batch=True)
    assert rep.dynamic_batch and rep.opset == 17
    dim0 = onnx.load(str(rep.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    x3 = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = net.eval()(x3).numpy()
    got = ort_run(rep.path, x3.numpy())[0]
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)


def test_static_batch_rejects_other_batch(tmp_path):
    rep = export_onnx(small_net(), tmp_path / "static.onnx", torch.randn(1, 3, 16, 16))
    with pytest.raises(Exception, match="invalid dimensions"):  # onnxruntime's InvalidArgument
        ort_run(rep.path, np.zeros((3, 3, 16, 16), np.float32))


def test_dynamo_writes_requested_opset13_single_file(tmp_path):
    rep = export_onnx(small_net(), tmp_path / "dyn13.onnx", torch.randn(1, 3, 16, 16), opset=13,
                      exporter="dynamo", dynamic_batch=True)
    model = onnx.load(str(rep.path))
    assert rep.exporter == "dynamo" and rep.opset == 13 and file_opset(rep.path) == 13 and model.ir_version == 7
    ops = [n.op_type for n in model.graph.node]
    assert "HardSwish" not in ops and "HardSigmoid" in ops
    assert all(len(n.input) == 1 for n in model.graph.node if n.op_type == "ReduceMean")
    assert all(a.name != "allowzero" for n in model.graph.node for a in n.attribute)
    assert rep.max_abs_diff < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dyn13.onnx"]


def test_opset_written_is_asserted(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "downconvert_opset", lambda proto, opset: proto)  # the silent opset-18 trap
    with pytest.raises(ExportError, match="requested ONNX opset 13 but the exporter wrote opset 18"):
        export_onnx(small_net(), tmp_path / "m.onnx", torch.randn(1, 3, 16, 16), opset=13, exporter="dynamo")
    assert list(tmp_path.iterdir()) == []


def test_dynamo_below_13_is_refused(tmp_path):
    with pytest.raises(ExportError, match="exporter='torchscript'"):
        export_onnx(small_net(), tmp_path / "m.onnx", torch.randn(1, 3, 16, 16), opset=11, exporter="dynamo")


def _opset18_model(node: onnx.NodeProto, inits: list[TensorProto]) -> onnx.ModelProto:
    """One-node opset-18 model x -> y."""
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_downconvert_rewrites_reduce_axes_and_reports_unsupported_ops():
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    model = _opset18_model(helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1), [axes])
    out = downconvert_opset(model, 13)
    onnx.checker.check_model(out, full_check=True)
    node = out.graph.node[0]
    assert list(node.input) == ["x"] and helper.get_attribute_value(node.attribute[-1]) == [2, 3]
    assert not out.graph.initializer and out.ir_version == 7
    mish = _opset18_model(helper.make_node("Mish", ["x"], ["y"]), [])
    with pytest.raises(ExportError, match="Mish"):
        downconvert_opset(mish, 13)
    dyn_axes = _opset18_model(helper.make_node("ReduceMean", ["x", "x"], ["y"]), [])
    with pytest.raises(ExportError, match="axes is not a constant"):
        downconvert_opset(dyn_axes, 17)


class ExportSkew(nn.Module):
    """Second output differs by 0.25 only while being exported: a wrong graph the check must catch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor):
        y = self.conv(x)
        z = y.relu()
        if torch.onnx.is_in_onnx_export():
            z = z + 0.25
        return y, (z, y.mean())


def test_mismatch_names_output_and_diff_and_removes_file(tmp_path):
    with pytest.raises(FxscaleError, match=r"'out_1' differs from torch at batch 1: max \|diff\| = 0\.25"):
        export_onnx(ExportSkew(), tmp_path / "bad.onnx", torch.randn(1, 3, 8, 8), output_name="out")
    assert list(tmp_path.iterdir()) == []


def test_multiple_outputs_all_compared(tmp_path):
    class Tri(ExportSkew):
        def forward(self, x):
            y = self.conv(x)
            return y, (y.relu(), y.mean())

    rep = export_onnx(Tri(), tmp_path / "tri.onnx", torch.randn(1, 3, 8, 8), dynamic_batch=True)
    assert rep.output_names == ("y_0", "y_1", "y_2")
    assert [o.name for o in onnx.load(str(rep.path)).graph.output] == ["y_0", "y_1", "y_2"]


def test_external_data_is_rejected(tmp_path, monkeypatch):
    original = export_mod._export_torchscript

    def export_with_sidecar(model, f, *args):
        original(model, f, *args)
        onnx.save_model(onnx.load(str(f)), str(f), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f.name + ".data", size_threshold=0)

    monkeypatch.setattr(export_mod, "_export_torchscript", export_with_sidecar)
    with pytest.raises(ExportError, match="external"):
        export_onnx(small_net(), tmp_path / "ext.onnx", torch.randn(1, 3, 16, 16))
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_existing_file_and_bad_exporter_is_named(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError, match="out_1"):
        export_onnx(ExportSkew(), target, torch.randn(1, 3, 8, 8), output_name="out")
    assert target.read_bytes() == b"previous" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ExportError, match="torchscript, dynamo"):
        export_onnx(small_net(), target, torch.randn(1, 3, 16, 16), exporter="tensorrt")


def test_check_false_skips_verification(tmp_path):
    rep = export_onnx(ExportSkew(), tmp_path / "unchecked.onnx", torch.randn(1, 3, 8, 8), check=False)
    assert rep.max_abs_diff is None and rep.path.exists() and rep.opset == 13


class _DownAA(nn.Module):
    """Antialiased downscale (a bare aten::_upsample_bilinear2d_aa at every torchscript opset) then a conv."""

    def __init__(self, factor_from_graph: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.factor_from_graph = nn.Conv2d(3, 4, 3), factor_from_graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = x.shape[-1] / 32 if self.factor_from_graph else 0.5
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear", antialias=True))


def test_lowering_is_reported_and_checked_against_the_unlowered_model(tmp_path, monkeypatch):
    import fxscale.passes.lower as lower_mod

    gm, x = torch.fx.symbolic_trace(_DownAA()), torch.randn(1, 3, 16, 16)
    rep = export_onnx(gm, tmp_path / "aa.onnx", x)
    assert len(rep.lowered) == 1 and "antialiased bilinear" in rep.lowered[0] and rep.max_abs_diff < 1e-5
    assert export_onnx(small_net(), tmp_path / "plain.onnx", torch.randn(1, 3, 16, 16)).lowered == ()
    # a wrong lowering must be caught: ORT is compared with the original module, not the lowered copy
    monkeypatch.setattr(lower_mod, "resize_separable", lambda x, rows, cols_t: (rows @ x @ cols_t) * 1.01)
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(gm, tmp_path / "bad.onnx", x)
    assert not (tmp_path / "bad.onnx").exists()


def test_unlowerable_node_is_an_export_error(tmp_path):
    gm = torch.fx.symbolic_trace(_DownAA(factor_from_graph=True))
    with pytest.raises(ExportError, match="opset 13.*'interpolate'.*scale_factor is computed in the graph"):
        export_onnx(gm, tmp_path / "m.onnx", torch.randn(1, 3, 16, 16))
    with pytest.raises(ExportError, match="fxscale.trace"):  # plain modules are not lowered: say how to get there
        export_onnx(_DownAA(), tmp_path / "m.onnx", torch.randn(1, 3, 16, 16))
