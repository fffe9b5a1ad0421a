"""ONNX export of nn.Modules/GraphModules with opset pinning, self-contained files and ORT verification."""
from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from fxscale.cli_checks import native_output_captured
from fxscale.errors import ExportError, FxscaleError  # ExportError re-exported from fxscale.errors
from fxscale.passes.lower import LoweringError, lowered_copy

EXPORTERS = ("torchscript", "dynamo")
TORCHLIB_OPSET = 18  # the dynamo exporter's op library is written for opset 18
MIN_DOWNCONVERT_OPSET = 13
_REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


@dataclass(frozen=True)
class ExportReport:
    """What export_onnx wrote and how well ONNX Runtime reproduces the torch outputs."""

    path: Path
    opset: int
    ir_version: int
    n_nodes: int
    exporter: str
    max_abs_diff: float | None  # None when check=False
    seconds: float  # export (incl. down-conversion and save), without the checks
    dynamic_batch: bool
    check_seconds: float = 0.0
    output_names: tuple[str, ...] = ()
    lowered: tuple[str, ...] = ()  # nodes rewritten by fxscale.passes.lower so that `opset` can express them


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor, opset: int = 13,
                dynamic_batch: bool = False, check: bool = True, exporter: str = "torchscript",
                rtol: float = 1e-3, atol: float = 1e-4, input_name: str = "x",
                output_name: str = "y", metadata: Mapping[str, str] | None = None) -> ExportReport:
    """Export `model` (eval mode) to one self-contained .onnx file at exactly `opset`, optionally verified by ORT.

    For a GraphModule, ops the exporter cannot write at `opset` (scaled_dot_product_attention below 14,
    antialiased bilinear/bicubic resize) are first lowered on a copy (fxscale.passes.lower); the ORT check
    still compares with the unlowered `model`, which is never modified. `metadata` is written into the file's
    metadata_props (fxscale records the input contract there as "fxscale.input").
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not isinstance(example_input, torch.Tensor):
        raise ExportError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial.onnx")
    with _eval_mode(model):
        names = _output_names(output_name, len(_torch_outputs(model, example_input)))
        try:
            t0 = time.perf_counter()
            target, lowered = _lowered(model, opset, example_input, exporter)
            export = _export_torchscript if exporter == "torchscript" else _export_dynamo
            export(target, tmp, example_input, opset, dynamic_batch, input_name, names)
            seconds = time.perf_counter() - t0
            proto = _validate_file(tmp, opset)
            if metadata:
                helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
                onnx.save(proto, str(tmp))
            t1 = time.perf_counter()
            diff = _check(model, tmp, example_input, dynamic_batch, input_name, names, rtol, atol) if check else None
            check_seconds = time.perf_counter() - t1
            os.replace(tmp, path)
        except BaseException as exc:  # Ctrl-C included: no partial file is left
            _remove(tmp)
            _remove(Path(f"{tmp}.data"))
            if isinstance(exc, FxscaleError) or not isinstance(exc, Exception):
                raise
            raise ExportError(f"{exporter} ONNX export of {type(model).__name__} to {path} failed: "
                              f"{type(exc).__name__}: {exc}{_lowering_hint(model, exc)}") from exc
    return ExportReport(path=path, opset=_default_opset(proto), ir_version=proto.ir_version,
                        n_nodes=len(proto.graph.node), exporter=exporter, max_abs_diff=diff, seconds=seconds,
                        dynamic_batch=dynamic_batch, check_seconds=check_seconds, output_names=tuple(names),
                        lowered=tuple(lowered))


def _lowering_hint(model: nn.Module, exc: Exception) -> str:
    """Advice for ops export_onnx lowers only in fx GraphModules."""
    lowerable = ("scaled_dot_product_attention", "2d_aa")
    if isinstance(model, torch.fx.GraphModule) or not any(op in str(exc) for op in lowerable):
        return ""
    return (". export_onnx lowers scaled_dot_product_attention and antialiased resizes for low opsets only in fx "
            "GraphModules: export fxscale.trace(model, example_input) instead")


def _lowered(model: nn.Module, opset: int, x: torch.Tensor, exporter: str) -> tuple[nn.Module, list[str]]:
    """`model`, or a copy with the ops `exporter` cannot write at `opset` lowered (see fxscale.passes.lower)."""
    try:
        return lowered_copy(model, opset, x, exporter=exporter)
    except LoweringError as e:
        raise ExportError(f"cannot export {type(model).__name__} at opset {opset}: {e}") from e


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.train(training)


def _flatten(out: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) tuple/list/dict output, in exporter order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten(item)]
    return []


def _torch_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Reference outputs of the torch model as numpy arrays."""
    with torch.no_grad():
        outs = _flatten(model(x))
    if not outs:
        raise ExportError(f"{type(model).__name__} returned no tensors; nothing to export")
    return [t.detach().cpu().numpy() for t in outs]


def _output_names(base: str, n: int) -> list[str]:
    """`base` for a single output, `base_0 … base_{n-1}` for several."""
    return [base] if n == 1 else [f"{base}_{i}" for i in range(n)]


def _export_torchscript(model: nn.Module, f: Path, x: torch.Tensor, opset: int, dynamic_batch: bool,
                        input_name: str, names: list[str]) -> None:
    """Legacy TorchScript-based exporter (dynamo=False): honours low opsets such as 13."""
    axes = {n: {0: "N"} for n in [input_name, *names]} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        with native_output_captured():  # torch.onnx logs the whole IR graph to fd 1 before it raises
            torch.onnx.export(model, (x,), str(f), dynamo=False, opset_version=opset, input_names=[input_name],
                              output_names=names, dynamic_axes=axes)


def _export_dynamo(model: nn.Module, f: Path, x: torch.Tensor, opset: int, dynamic_batch: bool,
                   input_name: str, names: list[str]) -> None:
    """torch.export-based exporter at opset max(opset, 18), down-converted by `downconvert_opset` when lower."""
    if opset < MIN_DOWNCONVERT_OPSET:
        raise ExportError(f"the dynamo exporter writes opset {TORCHLIB_OPSET}; down-conversion supports opset >= "
                          f"{MIN_DOWNCONVERT_OPSET}, got {opset}: use exporter='torchscript'")
    shapes = ({0: torch.export.Dim("N", min=1, max=4096)},) if dynamic_batch else None
    program = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=max(opset, TORCHLIB_OPSET),
                                dynamic_shapes=shapes, input_names=[input_name], output_names=names,
                                external_data=False, optimize=True, verbose=False)
    proto = program.model_proto
    if opset < TORCHLIB_OPSET:
        proto = downconvert_opset(proto, opset)
    onnx.save_model(proto, str(f), save_as_external_data=False)


def _default_opset(proto: onnx.ModelProto) -> int:
    """Version of the default ("" / "ai.onnx") operator set imported by the model."""
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ExportError("exported model imports no default-domain operator set")
    return versions[0]


def _validate_file(f: Path, opset: int) -> onnx.ModelProto:
    """Assert the written file is self-contained and carries exactly the requested opset."""
    sidecar = Path(str(f) + ".data")
    if sidecar.exists():
        _remove(sidecar)
        raise ExportError(f"exporter wrote external weights to {sidecar.name}; fxscale needs one self-contained file")
    proto = onnx.load_model(str(f), load_external_data=False)
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"initializers stored as external data: {external[:5]}")
    written = _default_opset(proto)
    if written != opset:
        raise ExportError(f"requested ONNX opset {opset} but the exporter wrote opset {written}")
    return proto


def _ort_session(f: Path) -> Any:
    """Single-threaded CPU ONNX Runtime session for verification."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])


def _check_inputs(x: torch.Tensor, dynamic_batch: bool) -> list[torch.Tensor]:
    """The example input, plus a batch-3 input when the batch dimension is dynamic."""
    if not dynamic_batch:
        return [x]
    shape = (3, *x.shape[1:])
    if x.is_floating_point():
        gen = torch.Generator().manual_seed(0)
        return [x, torch.randn(shape, generator=gen, dtype=x.dtype).to(x.device)]
    return [x, x[:1].expand(shape).contiguous()]


def _check(model: nn.Module, f: Path, x: torch.Tensor, dynamic_batch: bool, input_name: str,
           names: list[str], rtol: float, atol: float) -> float:
    """Full onnx.checker pass, then compare every ORT output with torch; returns the max |diff|."""
    onnx.checker.check_model(str(f), full_check=True)
    sess = _ort_session(f)
    worst = 0.0
    for xi in _check_inputs(x, dynamic_batch):
        ref = _torch_outputs(model, xi)
        got = sess.run(names, {input_name: xi.detach().cpu().numpy()})
        for name, r, g in zip(names, ref, got):
            worst = max(worst, _compare(name, r, np.asarray(g), xi.shape[0], rtol, atol))
    return worst


def _compare(name: str, ref: np.ndarray, got: np.ndarray, batch: int, rtol: float, atol: float) -> float:
    """Max |diff| of one output; raises ExportError naming the output when outside tolerance."""
    if ref.shape != got.shape:
        raise ExportError(f"ONNX output {name!r} has shape {got.shape}, torch gives {ref.shape} (batch {batch})")
    diff = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))) if ref.size else 0.0
    if not np.allclose(got, ref, rtol=rtol, atol=atol):
        raise ExportError(f"ONNX output {name!r} differs from torch at batch {batch}: max |diff| = {diff:.3g} "
                          f"(rtol={rtol:g}, atol={atol:g})")
    return diff


def _remove(f: Path) -> None:
    """Delete a file if present."""
    try:
        f.unlink()
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- opset 18 -> 13..17 down-conversion

def downconvert_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Rewrite an opset-18 model to `opset` (13..17); raises ExportError naming ops it cannot convert."""
    src = _default_opset(proto)
    if not MIN_DOWNCONVERT_OPSET <= opset <= src:
        raise ExportError(f"down-conversion supports opset {MIN_DOWNCONVERT_OPSET}..{src}, got {opset}")
    if any(n.domain not in ("", "ai.onnx") for n in proto.graph.node) or len(proto.functions):
        raise ExportError("down-conversion handles only default-domain graphs without local functions")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    consts = _constants(model.graph)
    nodes, problems = [], []
    for node in model.graph.node:
        rewritten, problem = _convert_node(node, opset, consts)
        nodes.extend(rewritten)
        if problem:
            problems.append(f"{node.op_type} ({node.name or node.output[0]}): {problem}")
    if problems:
        raise ExportError(f"cannot down-convert to opset {opset}: " + "; ".join(problems))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model.graph)
    _strip_metadata(model.graph)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", opset))
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of initializers and Constant-node outputs, by name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Value of a node attribute, or `default`."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attrs(node: onnx.NodeProto, drop: Sequence[str] = (), **new: Any) -> None:
    """Remove attributes named in `drop` and add `new` ones."""
    kept = [a for a in node.attribute if a.name not in drop and a.name not in new]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(k, v) for k, v in new.items()])


def _changed_after(op: str, opset: int) -> bool:
    """True when the opset-18 schema of `op` is newer than the one valid at `opset` (or unknown)."""
    try:
        return onnx.defs.get_schema(op, TORCHLIB_OPSET, "").since_version > opset
    except onnx.defs.SchemaError:
        return True


def _convert_node(node: onnx.NodeProto, opset: int, consts: dict[str, np.ndarray]
                  ) -> tuple[list[onnx.NodeProto], str | None]:
    """Converted node(s) and an error message (None when the node is valid at `opset`)."""
    if not _changed_after(node.op_type, opset):
        return [node], None
    rule = _RULES.get(node.op_type)
    if rule is None:
        return [node], f"schema changed after opset {opset} and no conversion rule exists"
    return rule(node, opset, consts)


def _reduce(node: onnx.NodeProto, opset: int, consts: dict[str, np.ndarray]) -> tuple[list, str | None]:
    """Reduce*(data, axes) (opset 18) -> Reduce*(data){axes} (opset 13..17)."""
    if _attr(node, "noop_with_empty_axes", 0):
        return [node], "noop_with_empty_axes=1 has no pre-18 equivalent"
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in consts:
            return [node], "axes is not a constant"
        axes = [int(a) for a in np.atleast_1d(consts[node.input[1]])]
        del node.input[1:]
        _set_attrs(node, drop=("noop_with_empty_axes",), axes=axes)
    else:
        _set_attrs(node, drop=("noop_with_empty_axes",))
    return [node], None


def _reshape(node: onnx.NodeProto, opset: int, consts: dict[str, np.ndarray]) -> tuple[list, str | None]:
    """Drop Reshape{allowzero} when it cannot matter (allowzero=0, or a constant shape without zeros)."""
    if _attr(node, "allowzero", 0):
        shape = consts.get(node.input[1])
        if shape is None or (shape == 0).any():
            return [node], "allowzero=1 with a shape that is not constant or contains 0"
    _set_attrs(node, drop=("allowzero",))
    return [node], None


def _hardswish(node: onnx.NodeProto, opset: int, consts: dict[str, np.ndarray]) -> tuple[list, str | None]:
    """HardSwish(x) (opset 14) -> Mul(x, HardSigmoid(x){alpha=1/6, beta=0.5})."""
    hs = f"{node.output[0]}__hardsigmoid"
    return [helper.make_node("HardSigmoid", [node.input[0]], [hs], name=f"{node.name}_hs", alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", [node.input[0], hs], list(node.output), name=node.name)], None


def _unchanged_if(check: Callable[[onnx.NodeProto, int], str | None]) -> Callable[..., tuple[list, str | None]]:
    """Rule for ops whose newer versions only add types/options: keep the node if `check` finds nothing."""
    return lambda node, opset, consts: ([node], check(node, opset))


def _no_problem(node: onnx.NodeProto, opset: int) -> None:
    """Type-only schema changes (e.g. bfloat16 added): always fine for float CNNs."""
    return None


def _bn(node: onnx.NodeProto, opset: int) -> str | None:
    """BatchNormalization: inference form only."""
    return "training_mode=1" if _attr(node, "training_mode", 0) or len(node.output) > 1 else None


def _shape(node: onnx.NodeProto, opset: int) -> str | None:
    """Shape: start/end attributes exist only from opset 15."""
    sliced = _attr(node, "start") is not None or _attr(node, "end") is not None
    return "start/end need opset 15" if sliced and opset < 15 else None


def _pad(node: onnx.NodeProto, opset: int) -> str | None:
    """Pad: the axes input exists only from opset 18."""
    return "axes input needs opset 18" if len(node.input) > 3 and node.input[3] else None


def _resize(node: onnx.NodeProto, opset: int) -> str | None:
    """Resize: antialias/axes/keep_aspect_ratio_policy exist only from opset 18."""
    new = _attr(node, "antialias", 0) or _attr(node, "axes") is not None or \
        _attr(node, "keep_aspect_ratio_policy", b"stretch") not in (b"stretch", "stretch")
    return "antialias/axes/keep_aspect_ratio_policy need opset 18" if new else None


def _split(node: onnx.NodeProto, opset: int) -> str | None:
    """Split: the num_outputs attribute exists only from opset 18."""
    return "num_outputs needs opset 18" if _attr(node, "num_outputs") is not None else None


def _scatter(node: onnx.NodeProto, opset: int) -> str | None:
    """ScatterElements/ScatterND: reductions need opset 16 (add/mul) or 18 (max/min)."""
    red = _attr(node, "reduction", b"none")
    red = red.decode() if isinstance(red, bytes) else red
    ok = red == "none" or (red in ("add", "mul") and opset >= 16)
    return None if ok else f"reduction={red} not available at opset {opset}"


_RULES: dict[str, Callable[..., tuple[list, str | None]]] = {
    **{op: _reduce for op in _REDUCE_OPS},
    "Reshape": _reshape,
    "HardSwish": _hardswish,
    **{op: _unchanged_if(_no_problem) for op in (
        "Add", "Sub", "Mul", "Div", "Relu", "Identity", "Pow", "CumSum", "Where", "LeakyRelu", "PRelu",
        "Less", "Greater", "LessOrEqual", "GreaterOrEqual")},
    "BatchNormalization": _unchanged_if(_bn),
    "Shape": _unchanged_if(_shape),
    "Pad": _unchanged_if(_pad),
    "Resize": _unchanged_if(_resize),
    "Split": _unchanged_if(_split),
    "ScatterElements": _unchanged_if(_scatter),
    "ScatterND": _unchanged_if(_scatter),
}


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers no node or graph output reads (e.g. former axes inputs)."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _strip_metadata(graph: onnx.GraphProto) -> None:
    """Drop per-node/value metadata_props (IR >= 10) so the file is valid at the older IR version."""
    for item in [*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if hasattr(item, "metadata_props"):
            del item.metadata_props[:]
