"""torch.compile with the inductor backend (C++/OpenMP codegen on CPU; max-autotune as a setting)."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxscale.optimize.backends.base import BackendBase, BackendError, Capability, to_layout
from fxscale.optimize.backends.registry import register_backend


@register_backend
class InductorBackend(BackendBase):
    """torch.compile(gm, backend="inductor", options={"max_autotune": ...}); compiled and run once in compile()."""

    name = "inductor"
    layout = "contiguous"
    PROBE_BY_COMPILING = True
    SETTINGS = {"max_autotune": False, "freezing": True, "dynamic": False}

    def available(self) -> Capability:
        try:
            import torch._inductor  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return Capability.no(f"the inductor backend needs torch._inductor ({type(exc).__name__}: {exc})")
        from torch._inductor import cpp_builder
        try:
            cpp_builder.get_cpp_compiler()
        except Exception as exc:  # noqa: BLE001
            return Capability.no(f"the inductor backend needs a C++ compiler on CPU ({exc})")
        return Capability.yes()

    def _compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        model = copy.deepcopy(gm).eval()
        options = {"max_autotune": bool(self.settings["max_autotune"]), "freezing": bool(self.settings["freezing"])}
        compiled = torch.compile(model, backend="inductor", options=options, dynamic=bool(self.settings["dynamic"]),
                                 fullgraph=True)
        layouts = [x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in inputs]

        def run(*args: torch.Tensor) -> Any:
            # feed the layout it was compiled for (another layout would recompile), return contiguous tensors
            args = tuple(to_layout(a, "channels_last" if cl else "contiguous") for a, cl in zip(args, layouts))
            with torch.no_grad():
                out = compiled(*args)
            return pytree.tree_map(lambda t: to_layout(t, self.layout), out)

        try:
            run(*inputs)
        except Exception as exc:  # noqa: BLE001 - a compile failure makes the partition unsupported
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BackendError(f"torch.compile (inductor) failed: {type(exc).__name__}: {msg}") from exc
        return run
