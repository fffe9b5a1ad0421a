"""The timm-style registry of backends: register_backend, list_backends, create_backend."""
from __future__ import annotations

import difflib
from typing import Any, TypeVar

from fxscale.optimize.backends.base import Backend, BackendBase, BackendError

B = TypeVar("B", bound=type[BackendBase])

# name -> backend class; filled by @register_backend when fxscale.optimize.backends imports its modules
_BACKENDS: dict[str, type[BackendBase]] = {}
# the order a report lists backends in (library default first)
ORDER = ("eager", "channels_last", "inductor", "ort", "openvino", "tvm", "tensorrt")


def register_backend(cls: B) -> B:
    """Class decorator: register a backend class under its `name`."""
    if cls.name in _BACKENDS:
        raise BackendError(f"backend {cls.name!r} is already registered")
    _BACKENDS[cls.name] = cls
    return cls


def _sorted(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def list_backends(available_only: bool = False) -> list[str]:
    """Registered backend names (library default first); with available_only, those that can run here."""
    names = _sorted(list(_BACKENDS))
    if available_only:
        names = [n for n in names if _BACKENDS[n]().available().ok]
    return names


def create_backend(name: str, **settings: Any) -> Backend:
    """A backend instance with `settings`; BackendError naming the valid backends for an unknown name."""
    cls = _BACKENDS.get(name) if isinstance(name, str) else None
    if cls is None:
        close = difflib.get_close_matches(str(name), list(_BACKENDS), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise BackendError(f"unknown backend {name!r}{hint}; valid backends: {', '.join(list_backends())}")
    return cls(**settings)


def backend_reasons() -> dict[str, str]:
    """name -> why it is unavailable here ("" when available): the report's 'skipped' lines."""
    return {n: _BACKENDS[n]().available().reason for n in list_backends()}


__all__ = ["ORDER", "backend_reasons", "create_backend", "list_backends", "register_backend"]
