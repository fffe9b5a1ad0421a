"""Backends of `fxscale optimize`: one interface (base.Backend), one registry, one small module per backend.

    from fxscale.optimize.backends import create_backend, list_backends
    be = create_backend("ort", threads=1)
    if be.supports(gm, inputs):
        fn = be.compile(gm, inputs)      # torch CPU tensors in, same output structure as gm(*inputs)

Optional runtimes (OpenVINO, TVM, TensorRT) are imported lazily; a missing one makes its backend report
`available().ok == False` with a reason naming the extra, never an import error here.
"""
from __future__ import annotations

from fxscale.optimize.backends import (  # noqa: F401 - importing registers each backend
    channels_last,
    eager,
    inductor,
    openvino,
    ort,
    tensorrt,
    tvm,
)
from fxscale.optimize.backends.base import (
    LAYOUTS,
    Backend,
    BackendBase,
    BackendError,
    Capability,
)
from fxscale.optimize.backends.registry import backend_reasons, create_backend, list_backends, register_backend

__all__ = ["LAYOUTS", "Backend", "BackendBase", "BackendError", "Capability", "backend_reasons", "create_backend",
           "list_backends", "register_backend"]
