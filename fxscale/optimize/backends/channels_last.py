"""torch eager with the model and its 4-D tensors in channels_last (NHWC) memory format."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from fxscale.optimize.backends.base import BackendBase
from fxscale.optimize.backends.eager import torch_callable
from fxscale.optimize.backends.registry import register_backend


@register_backend
class ChannelsLastBackend(BackendBase):
    """torch eager; parameters and 4-D activations in channels_last; returns channels_last 4-D tensors."""

    name = "channels_last"
    layout = "channels_last"

    def _compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        model = copy.deepcopy(gm).eval()
        for mod in model.modules():  # 4-D weights (convs) to channels_last; the rest are unaffected
            for pname, p in list(mod.named_parameters(recurse=False)):
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        return torch_callable(model, self.layout)
