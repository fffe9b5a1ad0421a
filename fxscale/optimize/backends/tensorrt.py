"""TensorRT: the partition exported to ONNX, built into an engine by the `tensorrt` wheel, run on a CUDA GPU.

Available only with CUDA and the tensorrt wheel (pip install 'fxscale[tensorrt]'); available() says which is
missing. The compiled callable takes and returns torch CPU tensors (it copies to and from the GPU), so its
timings include the transfers; a GPU plan keeps whole models on one engine.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from fxscale.optimize.backends.base import BackendBase, BackendError, Capability, import_optional, module_available
from fxscale.optimize.backends.onnx_export import DEFAULT_OPSET, export_partition
from fxscale.optimize.backends.registry import register_backend

_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64,
           "BOOL": torch.bool, "INT8": torch.int8}


@register_backend
class TensorRtBackend(BackendBase):
    """tensorrt.Builder + OnnxParser; `fp16` allows half-precision kernels; `workspace_mb` caps tactic memory."""

    name = "tensorrt"
    layout = "contiguous"
    DIST = "tensorrt"
    PROBE_BY_COMPILING = True
    SETTINGS = {"fp16": False, "workspace_mb": 1024, "opset": DEFAULT_OPSET, "device": 0}

    def available(self) -> Capability:
        if not torch.cuda.is_available():
            return Capability.no("the tensorrt backend needs a CUDA GPU (torch.cuda.is_available() is False) and "
                                 "the optional dependency tensorrt: pip install 'fxscale[tensorrt]'")
        return module_available("tensorrt", "tensorrt", self.name)

    def versions(self) -> dict[str, str]:
        out = super().versions()
        if torch.cuda.is_available():
            out["cuda"] = str(torch.version.cuda)
            out["gpu"] = torch.cuda.get_device_name(int(self.settings["device"]))
        return out

    def _engine(self, trt: Any, onnx_bytes: bytes) -> Any:
        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_bytes):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse the partition: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.settings["workspace_mb"]) << 20)
        if self.settings["fp16"]:
            config.set_flag(trt.BuilderFlag.FP16)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError("TensorRT could not build an engine for the partition")
        return trt.Runtime(logger).deserialize_cuda_engine(plan)

    def _compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        trt = import_optional("tensorrt", "tensorrt", self.name)
        with tempfile.TemporaryDirectory(prefix="fxscale-trt-") as tmp:
            exported = export_partition(gm, inputs, tmp, opset=int(self.settings["opset"]))
        try:
            engine = self._engine(trt, exported.model.SerializeToString())
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"TensorRT failed on the partition: {type(exc).__name__}: {exc}") from exc
        device = torch.device("cuda", int(self.settings["device"]))
        context = engine.create_execution_context()
        stream = torch.cuda.Stream(device)
        outs = []
        for name in exported.output_names:
            shape = tuple(engine.get_tensor_shape(name))
            dtype = _DTYPES.get(engine.get_tensor_dtype(name).name, torch.float32)
            outs.append(torch.empty(shape, dtype=dtype, device=device))
            context.set_tensor_address(name, outs[-1].data_ptr())

        def run(*args: torch.Tensor) -> Any:
            with torch.cuda.stream(stream):
                feeds = {n: args[i].to(device, non_blocking=True).contiguous()
                         for n, i in zip(exported.input_names, exported.input_index)}
                for n, t in feeds.items():
                    context.set_tensor_address(n, t.data_ptr())
                if not context.execute_async_v3(stream.cuda_stream):
                    raise BackendError("TensorRT execution failed")
                result = [o.to("cpu", non_blocking=False) for o in outs]
            stream.synchronize()
            return exported.unflatten(result)

        try:
            run(*inputs)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"TensorRT cannot run the partition: {type(exc).__name__}: {exc}") from exc
        return run
