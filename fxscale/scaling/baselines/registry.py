"""The timm-style registry of baseline plan generators: register, list, get, create."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol

import torch

from fxscale.analysis.graph import ChannelGraph
from fxscale.errors import FxscaleError
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import Budget, Evaluator


class BaselineFn(Protocol):
    """The signature every baseline shares."""

    def __call__(self, cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *,
                 flops_scale: Optional[float] = None, align: int = 1,
                 importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan: ...


BASELINES: dict[str, BaselineFn] = {}


def register_baseline(name: str) -> Callable[[BaselineFn], BaselineFn]:
    """Decorator: add a plan generator to BASELINES under `name`."""
    def deco(fn: BaselineFn) -> BaselineFn:
        if name in BASELINES:
            raise FxscaleError(f"baseline {name!r} is already registered")
        BASELINES[name] = fn
        return fn
    return deco


def list_baselines() -> list[str]:
    """Registered method names, sorted."""
    return sorted(BASELINES)


def get_baseline(name: str) -> BaselineFn:
    """The plan generator registered as `name`; FxscaleError naming the valid ones otherwise."""
    fn = BASELINES.get(name) if isinstance(name, str) else None
    if fn is None:
        raise FxscaleError(f"unknown baseline {name!r}; valid baselines: {', '.join(list_baselines())}")
    return fn


def create_baseline(name: str, cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget] = None,
                    **kwargs: Any) -> ScalingPlan:
    """The plan of baseline `name` (get_baseline(name)(cg, evaluator, budget, **kwargs))."""
    return get_baseline(name)(cg, evaluator, budget, **kwargs)


__all__ = ["BASELINES", "BaselineFn", "create_baseline", "get_baseline", "list_baselines", "register_baseline"]
