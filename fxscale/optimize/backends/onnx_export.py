"""ONNX export of one FX partition with any number of tensor inputs (shared by the ort, openvino, tvm backends).

fxscale.export.export_onnx exports single-input models; a partition may take several tensors (a residual add),
so this module exports with the same exporter (TorchScript-based, opset 13 by default, the opset fxscale uses)
after the same lowering (fxscale.passes.lower.lowered_copy), and records the pytree structure of the outputs so
that a backend can return them as `gm(*inputs)` would.
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxscale.cli_checks import native_output_captured
from fxscale.errors import LoweringError
from fxscale.optimize.backends.base import BackendError, check_inputs, output_spec
from fxscale.passes.lower import lowered_copy

DEFAULT_OPSET = 13


@dataclass(frozen=True)
class ExportedPartition:
    """An exported partition: the .onnx file, its input names (those the graph kept), outputs' structure."""

    path: Path
    input_names: tuple[str, ...]  # x{i} for partition input i that the ONNX graph still uses
    input_index: tuple[int, ...]  # partition input index of each name
    output_names: tuple[str, ...]
    spec: pytree.TreeSpec
    opset: int
    model: onnx.ModelProto

    def feeds(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """name -> contiguous numpy array of the partition inputs the graph uses."""
        return {n: args[i].detach().contiguous().numpy() for n, i in zip(self.input_names, self.input_index)}

    def unflatten(self, leaves: list[torch.Tensor]) -> Any:
        return pytree.tree_unflatten(leaves, self.spec)


def export_partition(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], directory: str | Path | None = None,
                     opset: int = DEFAULT_OPSET) -> ExportedPartition:
    """Export `gm` at the exact shapes of `inputs` to `directory`/partition.onnx; BackendError when it cannot."""
    inputs = check_inputs(inputs)
    gm = gm.eval()
    _, spec, leaves = output_spec(gm, inputs)
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        raise BackendError("partition outputs must be one or more tensors to export it to ONNX")
    directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="fxscale-onnx-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "partition.onnx"
    in_names = [f"x{i}" for i in range(len(inputs))]
    out_names = [f"y{i}" for i in range(len(leaves))]
    try:
        target, _ = lowered_copy(gm, opset, *inputs, exporter="torchscript")
        with warnings.catch_warnings(), native_output_captured():
            warnings.simplefilter("ignore")
            torch.onnx.export(target, inputs, str(path), dynamo=False, opset_version=opset,
                              input_names=in_names, output_names=out_names)
        model = onnx.load(str(path))
    except (LoweringError, Exception) as exc:  # noqa: BLE001 - any exporter failure makes the partition unsupported
        raise BackendError(f"ONNX export (opset {opset}) failed: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    kept = {i.name for i in model.graph.input}
    used = [(n, i) for i, n in enumerate(in_names) if n in kept]
    return ExportedPartition(path=path, input_names=tuple(n for n, _ in used), input_index=tuple(i for _, i in used),
                             output_names=tuple(o.name for o in model.graph.output), spec=spec, opset=opset,
                             model=model)


__all__ = ["DEFAULT_OPSET", "ExportedPartition", "export_partition"]
