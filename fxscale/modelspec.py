"""MODEL strings of the command line and the input a model takes.

A MODEL is a zoo name (torchvision, digits_vgg, digits_resnet, timm:NAME), ``package.module:callable`` or
``path/to/file.py:callable`` (the callable is called with no arguments and must return an nn.Module). The input
channels of a model are those of its first convolution; a zoo model built for data with other channels gets a
new stem convolution (``adapt_stem``), any other model gets "model takes N channels, data has M".
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

from fxscale.errors import FxscaleError


def is_callable_spec(spec: str) -> bool:
    """True for `module:callable` and `file.py:callable` (False for zoo names, timm:NAME included)."""
    return ":" in spec and not spec.startswith("timm:")


def file_module(path: Path, spec: str) -> Any:
    """Import a .py file as a module (registered in sys.modules under a name derived from its path)."""
    if not path.is_file():
        raise FxscaleError(f"model file {path} not found (from {spec!r})")
    name = f"fxscale_user_{path.stem}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise FxscaleError(f"cannot import {path} (from {spec!r}): not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the user's file: one line naming it
        del sys.modules[name]
        raise FxscaleError(f"cannot import {path} (from {spec!r}): {type(e).__name__}: {e}") from e
    return module


def _callable(spec: str) -> Callable[[], Any]:
    target, _, attr_path = spec.rpartition(":")
    if not target or not attr_path:
        raise FxscaleError(f"MODEL {spec!r}: give a zoo name, module:callable or path/to/file.py:callable")
    if target.endswith(".py") or "/" in target:
        obj: Any = file_module(Path(target), spec)
    else:
        try:
            obj = importlib.import_module(target)
        except ImportError as e:
            raise FxscaleError(f"cannot import module {target!r} from {spec!r}: {e}") from e
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise FxscaleError(f"{target} has no attribute {attr_path!r} (from {spec!r})")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise FxscaleError(f"{spec!r} is not callable")
    return obj


def check_spec(spec: str, label: str = "MODEL") -> None:
    """Fail fast on an unknown zoo name or a callable that cannot be imported (nothing is built)."""
    if is_callable_spec(spec):
        _callable(spec)
        return
    from fxscale import zoo
    try:
        zoo.get_spec(spec)
    except FxscaleError as e:
        raise FxscaleError(f"{label} {spec}: {e}") from e


def build_model(spec: str, num_classes: Optional[int] = None) -> nn.Module:
    """The model a MODEL string names (zoo models with `num_classes` outputs when given)."""
    if not is_callable_spec(spec):
        from fxscale import zoo
        return zoo.create_model(spec, num_classes=num_classes)
    model = _callable(spec)()
    if not isinstance(model, nn.Module):
        raise FxscaleError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def first_conv(model: nn.Module) -> Optional[tuple[str, nn.Module]]:
    """(qualified name, module) of the first convolution in definition order, or None."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def input_channels(model: nn.Module) -> Optional[int]:
    """The input channels a model takes: those of its first convolution (None without one)."""
    found = first_conv(model)
    return None if found is None else int(found[1].in_channels)


def default_input(spec: str, model: nn.Module, input_size: Optional[int]) -> tuple[int, int]:
    """(channels, side) of the example input of a MODEL: a zoo model's own, else its first conv's and 224."""
    if not is_callable_spec(spec):
        from fxscale import zoo
        s = zoo.get_spec(spec)
        return s.in_channels, input_size or s.full_input_size
    return input_channels(model) or 3, input_size or 224


def adapt_stem(model: nn.Module, channels: int, *, name: str, data: str, adaptable: bool,
               log: Callable[[str], None]) -> nn.Module:
    """Make `model` take `channels` input channels: a zoo model gets a new first conv (logged), others an error."""
    found = first_conv(model)
    if found is None or found[1].in_channels == channels:
        return model
    qual, conv = found
    if not adaptable or not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise FxscaleError(f"model {name} takes {_channels(conv.in_channels)}, data {data} has "
                           f"{_channels(channels)}; use a model whose first conv ({qual}) takes {_channels(channels)}")
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups=1, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    parent, _, leaf = qual.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    log(f"[input] {name} takes {_channels(conv.in_channels)}, data {data} has {_channels(channels)}: replaced the "
        f"stem conv {qual} with a {channels}-channel one (freshly initialised)")
    return model


def _channels(n: int) -> str:
    return f"{n} channel{'' if n == 1 else 's'}"


def check_classes(out: Any, num_classes: int, *, name: str, data: str) -> None:
    """A model's logits have one entry per class of the data."""
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) == 2 and shape[1] != num_classes:
        raise FxscaleError(f"model {name} outputs {shape[1]} classes, data {data} has {num_classes}; build the "
                           f"model with {num_classes} outputs")


__all__ = ["adapt_stem", "build_model", "check_classes", "check_spec", "default_input", "file_module",
           "first_conv", "input_channels", "is_callable_spec"]
