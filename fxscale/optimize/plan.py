"""The inference plan: JSON naming each partition's nodes, implementation, layout and settings, with the device and
runtime versions it was measured on. ``read_plan`` validates a file (FxscaleError naming the file and key)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from fxscale.errors import FxscaleError

PLAN_FORMAT = "fxscale-inference-plan"
PLAN_VERSION = 1


def make_plan(*, model: str, input_shapes: Sequence[Sequence[int]], target: str, device: Mapping[str, Any],
              granularity: str, partitions: Sequence[Mapping[str, Any]], runtimes: Mapping[str, Any],
              passes: Sequence[str], selection: Mapping[str, Any],
              transitions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The plan as a JSON-ready dict (see the module docstring)."""
    import torch
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "model": model,
            "input_shapes": [list(s) for s in input_shapes], "target": target, "device": dict(device),
            "torch": torch.__version__, "runtimes": dict(runtimes), "passes": list(passes),
            "granularity": granularity, "selection": dict(selection), "partitions": [dict(p) for p in partitions],
            "transitions": [dict(t) for t in transitions]}


def validate_plan(plan: Any, where: str = "inference plan") -> dict[str, Any]:
    """`plan` itself when it is a well-formed inference plan; FxscaleError naming the first problem."""
    if not isinstance(plan, dict):
        raise FxscaleError(f"{where}: not a JSON object")
    if plan.get("format") != PLAN_FORMAT:
        raise FxscaleError(f"{where}: not an fxscale inference plan (format {plan.get('format')!r})")
    if plan.get("version") != PLAN_VERSION:
        raise FxscaleError(f"{where}: plan version {plan.get('version')!r}, this fxscale reads {PLAN_VERSION}")
    parts = plan.get("partitions")
    if not isinstance(parts, list) or not parts:
        raise FxscaleError(f"{where}: 'partitions' must be a non-empty list")
    for i, p in enumerate(parts):
        for key, kind in (("nodes", list), ("backend", str), ("layout", str), ("settings", dict)):
            if not isinstance(p.get(key), kind):
                raise FxscaleError(f"{where}: partitions[{i}].{key} must be a {kind.__name__}")
    return plan


def read_plan(path: Any) -> dict[str, Any]:
    """An inference plan from a JSON file (or the inference_plan.json of an output folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "inference_plan.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise FxscaleError(f"cannot read inference plan {p}: {getattr(e, 'strerror', None) or e}") from e
    except json.JSONDecodeError as e:
        raise FxscaleError(f"inference plan {p} is not valid JSON: {e}") from e
    return validate_plan(data, str(p))


__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "make_plan", "read_plan", "validate_plan"]
