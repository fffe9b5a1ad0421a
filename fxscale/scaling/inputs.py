"""The traced model `fxscale scale` works on, fitted to its data: input channels (stem) and classes (head).

A zoo model is built with the data's class count; when its first conv takes other channels than the data has
(``fxscale scale resnet18 --data digits``: 3 vs 1) that conv is replaced by one taking the data's channels, and the
log says so. A model given as an nn.Module or ``module:callable`` is the user's: a mismatch is an error naming
both counts ("model takes 1 input channels, data synthetic has 3") instead of a shape-propagation traceback.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.fx as fx
from torch import nn

import fxscale
from fxscale.cli_checks import resolve_leaves, torch_noise_captured
from fxscale.modelspec import adapt_stem, build_model, check_classes, first_conv, is_callable_spec


def input_model(cfg: Any, bundle: Any, model: Optional[nn.Module], log: Callable[[str], None]) -> fx.GraphModule:
    """Build (or take) the model, fit it to the data's channels and classes, and trace it at the data's shape."""
    user = model is not None or is_callable_spec(cfg.model)
    net = model if model is not None else build_model(cfg.model, num_classes=bundle.num_classes)
    channels = int(bundle.input_shape[0])
    if not user:
        net = adapt_stem(net, channels, name=cfg.model, data=cfg.data, adaptable=True, log=log)
    x = torch.zeros(1, *bundle.input_shape)
    leaves = resolve_leaves(cfg.leaf, "leaf")
    found = first_conv(net)
    if user and found is not None and found[1].in_channels != channels:
        try:  # the first conv in definition order may not be the stem: a plain forward decides
            with torch.no_grad():
                net.eval()(x)
        except Exception:  # noqa: BLE001 - it does not take the data: name both channel counts
            adapt_stem(net, channels, name=cfg.model, data=cfg.data, adaptable=False, log=log)  # raises
    with torch_noise_captured():
        gm = fxscale.trace(net.eval(), x, leaf_modules=leaves)
    if user:
        with torch.no_grad():
            check_classes(gm(x), bundle.num_classes, name=cfg.model, data=cfg.data)
    return gm


__all__ = ["input_model"]
