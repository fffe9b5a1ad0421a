"""torch eager in NCHW: the library default every other implementation is compared with."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxscale.optimize.backends.base import BackendBase, to_layout
from fxscale.optimize.backends.registry import register_backend


def torch_callable(gm: fx.GraphModule, layout: str) -> Callable[..., Any]:
    """`gm` in eval mode under no_grad, with 4-D inputs and outputs converted to `layout`."""

    def run(*args: Any) -> Any:
        with torch.no_grad():
            out = gm(*(to_layout(a, layout) for a in args))
        return pytree.tree_map(lambda t: to_layout(t, layout), out)

    run.__name__ = f"{layout}_{type(gm).__name__}"
    return run


@register_backend
class EagerBackend(BackendBase):
    """torch eager, contiguous (NCHW) tensors."""

    name = "eager"
    layout = "contiguous"

    def _compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        return torch_callable(copy.deepcopy(gm).eval(), self.layout)
