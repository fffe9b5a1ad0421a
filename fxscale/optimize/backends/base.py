"""The one backend interface of `fxscale optimize`: compile an FX partition into a callable on CPU tensors.

A backend is one implementation of a partition (WPK's "third-party operator implementations"): torch eager in
NCHW or channels_last, inductor, onnxruntime, OpenVINO, TVM, TensorRT. Every backend answers four questions:
`available()` (can it run here at all; the reason names the extra to install), `supports(gm, inputs)` (can it
compile this partition at these shapes; the reason says what failed), `compile(gm, inputs)` (a callable taking
and returning torch CPU tensors, with the structure of `gm(*inputs)`) and `describe()` (settings and runtime
version, recorded in the inference plan).

Layout contract: `layout` is the memory format of the 4-D tensors a compiled callable returns ("contiguous" or
"channels_last"). A callable accepts 4-D inputs in either format; one given the other format converts them
itself, at its own cost, so a planner that wants free boundaries feeds each partition its own layout.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Optional, Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxscale.errors import BackendError, FxscaleError  # noqa: F401 - BackendError re-exported here

LAYOUTS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class Capability:
    """Whether a backend can do something; when it cannot, `reason` says why in one line."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def yes(cls) -> Capability:
        return cls(True)

    @classmethod
    def no(cls, reason: str) -> Capability:
        return cls(False, reason)


@runtime_checkable
class Backend(Protocol):
    """What every backend provides (see the module docstring)."""

    name: str
    layout: str

    def available(self) -> Capability: ...

    def supports(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Capability: ...

    def compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]: ...

    def describe(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------------------------- helpers
def missing_extra(module: str, extra: str, what: str = "") -> str:
    """The one-line reason/message when an optional dependency is absent."""
    who = f"the {what} backend" if what else "this backend"
    return f"{who} needs the optional dependency {module}: pip install 'fxscale[{extra}]'"


def import_optional(module: str, extra: str, what: str = "") -> ModuleType:
    """Import `module` or raise BackendError naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(missing_extra(module, extra, what) + f" ({exc})") from exc


def module_available(module: str, extra: str, what: str = "") -> Capability:
    """Capability of importing `module` (import errors become a reason naming the extra)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install is "unavailable" with the error, not a crash
        return Capability.no(missing_extra(module, extra, what) + f" ({type(exc).__name__}: {exc})")
    return Capability.yes()


def dist_version(dist: str) -> str:
    """Installed version of a distribution, or "" when absent."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def to_layout(x: Any, layout: str) -> Any:
    """A 4-D tensor in `layout` (a no-op when it already is); anything else unchanged."""
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        return x.contiguous(memory_format=fmt)
    return x


def output_spec(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, pytree.TreeSpec, list[Any]]:
    """Run `gm(*inputs)` once in eval/no-grad; return (outputs, their pytree spec, flat leaves)."""
    with torch.no_grad():
        out = gm(*inputs)
    leaves, spec = pytree.tree_flatten(out)
    return out, spec, leaves


def check_inputs(inputs: Any) -> tuple[torch.Tensor, ...]:
    """Inputs as a tuple of CPU tensors, or BackendError."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise BackendError(f"partition input {i} is a {type(x).__name__}, not a torch.Tensor")
    return inputs


def _key(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
    return (id(gm), gm.code, tuple((tuple(x.shape), x.dtype) for x in inputs))


class BackendBase:
    """Shared machinery: keyword settings with defaults (`SETTINGS`), validation, describe()."""

    name: ClassVar[str] = "backend"
    layout: str = "contiguous"
    SETTINGS: ClassVar[Mapping[str, Any]] = {}
    DIST: ClassVar[str] = ""  # distribution whose version describe() reports ("" = torch)
    # time.monotonic() after which a tuning backend searches no more (it still applies its tuning database): set
    # by fxscale.optimize from --tune-minutes so one clock bounds all tuning; not a setting, so not in the plan
    tuning_deadline: Optional[float] = None

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(self.SETTINGS))
        if unknown:
            valid = ", ".join(sorted(self.SETTINGS)) or "none"
            raise BackendError(f"backend {self.name!r} has no setting {', '.join(map(repr, unknown))}; "
                               f"valid settings: {valid}")
        self.settings: dict[str, Any] = {**self.SETTINGS, **settings}

    def available(self) -> Capability:
        return Capability.yes()

    # True for backends whose only honest support test is compiling (an exporter or compiler may fail): then
    # supports() compiles, and keeps the result for the compile() call that usually follows
    PROBE_BY_COMPILING: ClassVar[bool] = False

    def supports(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Capability:
        cap = self.available()
        if not cap:
            return cap
        try:
            inputs = check_inputs(inputs)
            if self.PROBE_BY_COMPILING:
                self._probed = (_key(gm, inputs), self._compile(gm, inputs))
        except BackendError as exc:
            return Capability.no(str(exc))
        return Capability.yes()

    def compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        """A callable taking and returning torch CPU tensors, with the output structure of gm(*inputs)."""
        self.require_available()
        inputs = check_inputs(inputs)
        probed, self._probed = getattr(self, "_probed", None), None
        if probed is not None and probed[0] == _key(gm, inputs):
            return probed[1]
        return self._compile(gm, inputs)

    def _compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        raise NotImplementedError

    def require_available(self) -> None:
        cap = self.available()
        if not cap:
            raise BackendError(cap.reason)

    def versions(self) -> dict[str, str]:
        out = {"torch": torch.__version__}
        if self.DIST:
            out[self.DIST] = dist_version(self.DIST)
        return out

    def describe(self) -> dict[str, Any]:
        vers = self.versions()
        main = vers.get(self.DIST) if self.DIST else vers["torch"]
        return {"backend": self.name, "layout": self.layout, "settings": dict(self.settings),
                "version": main or "", "versions": vers}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({args})"


__all__ = ["LAYOUTS", "Backend", "BackendBase", "BackendError", "Capability", "check_inputs", "dist_version",
           "import_optional", "missing_extra", "module_available", "output_spec", "to_layout"]
