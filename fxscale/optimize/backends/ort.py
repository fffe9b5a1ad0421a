"""onnxruntime: the partition exported to ONNX and run by the CPU execution provider (CUDA/TensorRT EPs on a GPU)."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from fxscale.optimize.backends.base import BackendBase, BackendError, Capability
from fxscale.optimize.backends.onnx_export import DEFAULT_OPSET, ExportedPartition, export_partition
from fxscale.optimize.backends.registry import register_backend

_LEVELS = ("disable", "basic", "extended", "all")


def ort_providers(requested: str) -> list[str]:
    """Execution providers: "auto" = TensorRT, CUDA when available, then CPU; or a comma-separated list."""
    import onnxruntime as ort
    have = ort.get_available_providers()
    if requested == "auto":
        want = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if torch.cuda.is_available() else []
        return [p for p in want if p in have] + ["CPUExecutionProvider"]
    chosen = [p.strip() for p in requested.split(",") if p.strip()]
    missing = [p for p in chosen if p not in have]
    if missing:
        raise BackendError(f"onnxruntime has no provider {', '.join(missing)}; available: {', '.join(have)}")
    return chosen


@register_backend
class OrtBackend(BackendBase):
    """onnxruntime InferenceSession, `threads` intra-op threads (1 by default), full graph optimisation."""

    name = "ort"
    layout = "contiguous"
    DIST = "onnxruntime"
    PROBE_BY_COMPILING = True
    SETTINGS = {"threads": 1, "opset": DEFAULT_OPSET, "providers": "auto", "graph_optimization": "all"}

    def available(self) -> Capability:
        try:
            import onnxruntime  # noqa: F401  (a core dependency of fxscale)
        except ImportError as exc:
            return Capability.no(f"the ort backend needs onnxruntime: pip install onnxruntime ({exc})")
        return Capability.yes()

    def session(self, exported: ExportedPartition) -> Any:
        import onnxruntime as ort
        level = self.settings["graph_optimization"]
        if level not in _LEVELS:
            raise BackendError(f"graph_optimization must be one of {', '.join(_LEVELS)}, got {level!r}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.settings["threads"])
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
        try:
            return ort.InferenceSession(exported.model.SerializeToString(), so,
                                        providers=ort_providers(self.settings["providers"]))
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - an ORT load failure makes the partition unsupported
            raise BackendError(f"onnxruntime cannot load the partition: {type(exc).__name__}: {exc}") from exc

    def _compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        with tempfile.TemporaryDirectory(prefix="fxscale-ort-") as tmp:
            exported = export_partition(gm, inputs, tmp, opset=int(self.settings["opset"]))
        sess = self.session(exported)
        names = list(exported.output_names)

        def run(*args: torch.Tensor) -> Any:
            outs = sess.run(names, exported.feeds(args))
            return exported.unflatten([torch.from_numpy(o) for o in outs])

        try:
            run(*inputs)
        except Exception as exc:  # noqa: BLE001 - a failing first run makes the partition unsupported
            raise BackendError(f"onnxruntime cannot run the partition: {type(exc).__name__}: {exc}") from exc
        return run
