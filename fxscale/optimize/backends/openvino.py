"""OpenVINO: the partition exported to ONNX and compiled for the CPU plugin (one inference thread by default)."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from fxscale.optimize.backends.base import (
    BackendBase,
    BackendError,
    Capability,
    import_optional,
    module_available,
)
from fxscale.optimize.backends.onnx_export import DEFAULT_OPSET, export_partition
from fxscale.optimize.backends.registry import register_backend


@register_backend
class OpenVinoBackend(BackendBase):
    """ov.Core().compile_model(onnx, device, {INFERENCE_NUM_THREADS: threads, PERFORMANCE_HINT: hint})."""

    name = "openvino"
    layout = "contiguous"
    DIST = "openvino"
    PROBE_BY_COMPILING = True
    SETTINGS = {"threads": 1, "device": "CPU", "hint": "LATENCY", "opset": DEFAULT_OPSET, "precision": "f32"}

    def available(self) -> Capability:
        return module_available("openvino", "openvino", self.name)

    def _compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        ov = import_optional("openvino", "openvino", self.name)
        config = {"INFERENCE_NUM_THREADS": int(self.settings["threads"]), "PERFORMANCE_HINT": self.settings["hint"],
                  "INFERENCE_PRECISION_HINT": self.settings["precision"]}
        with tempfile.TemporaryDirectory(prefix="fxscale-ov-") as tmp:
            exported = export_partition(gm, inputs, tmp, opset=int(self.settings["opset"]))
            try:
                core = ov.Core()
                compiled = core.compile_model(core.read_model(str(exported.path)), self.settings["device"], config)
            except Exception as exc:  # noqa: BLE001 - an OpenVINO failure makes the partition unsupported
                raise BackendError(f"OpenVINO cannot compile the partition: {type(exc).__name__}: {exc}") from exc
        request = compiled.create_infer_request()
        outputs = [compiled.output(n) for n in exported.output_names]

        def run(*args: torch.Tensor) -> Any:
            res = request.infer(exported.feeds(args))
            return exported.unflatten([torch.from_numpy(res[o].copy()) for o in outputs])

        try:
            run(*inputs)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"OpenVINO cannot run the partition: {type(exc).__name__}: {exc}") from exc
        return run
