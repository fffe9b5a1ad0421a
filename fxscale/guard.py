"""Resource guard: refuse a plan whose model would not fit in memory, before anything is allocated.

The estimate is analytic (fxscale.cost at the traced resolution: no tensor is built, nothing is shape-propagated):
fp32 parameters of the model before and after the plan (transform holds both) plus the activations of one forward
at batch 1 under the plan (scaled by the resolution's area). The limit is the
``MemAvailable`` line of /proc/meminfo unless a limit is given (``max_memory`` / ``--max-memory``).
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from fxscale.errors import PlanError

DTYPE_BYTES = 4
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def mem_available(meminfo: Union[str, Path] = "/proc/meminfo") -> Optional[int]:
    """Bytes of MemAvailable (None when the file or the line is missing: no limit is applied)."""
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def parse_size(text: Union[str, int, float], label: str = "--max-memory") -> int:
    """Bytes of '64GB', '512MiB', '2e9' (plain numbers are bytes)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS:
        raise PlanError(f"{label} {text!r} is not a memory size; give bytes or a size such as 64GB or 512MB")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise PlanError(f"{label} {text!r} must be > 0")
    return int(value)


def fmt_bytes(n: float) -> str:
    """'12.3 GB', '512.0 MB' (binary units)."""
    if n >= 2**50:
        return f"{n / 2**40:.3g} TB"
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.1f} KB" if n >= 2**10 else f"{int(n)} bytes"


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """fp32 bytes a transform of a plan needs."""

    params_before: int
    params_after: int
    activations: int

    @property
    def bytes(self) -> int:
        """Total bytes (parameters before and after, activations at batch 1)."""
        return DTYPE_BYTES * (self.params_before + self.params_after + self.activations)

    def describe(self) -> str:
        """'about 460.2 GB (parameters 460.0 GB + activations 0.2 GB, fp32, batch 1)'."""
        return (f"about {fmt_bytes(self.bytes)} (parameters {fmt_bytes(DTYPE_BYTES * (self.params_before + self.params_after))}"
                f" + activations {fmt_bytes(DTYPE_BYTES * self.activations)}, fp32, batch 1)")


def estimate(cg: Any, plan: Any, mode: str = "input") -> MemoryEstimate:
    """Analytic memory of transforming `cg` by `plan`, without building or shape-propagating anything.

    Parameters come from the cost model at the traced resolution under the plan's widths; activations are
    scaled from it by the area ratio of the plan's resolution (exact for convolutional stacks; attention maps
    grow faster). Depths are left out: their blocks are copies of existing ones.
    """
    from fxscale.cost import cost_model
    model = cost_model(cg, None, mode=mode)
    before = model.report(type(plan)())
    after = model.report(dataclasses.replace(plan, resolution=None, depths={}))
    return MemoryEstimate(int(before.params), int(after.params), int(after.activations * _area_ratio(cg, plan)))


def _area_ratio(cg: Any, plan: Any) -> float:
    res, traced = plan.resolution, cg.gm.meta.get("fxscale", {}).get("resolution")
    if not res or not traced:
        return 1.0
    return res[0] * res[1] / (traced[0] * traced[1])


def _bound(cg: Any, plan: Any, mode: str) -> float:
    """Cheap upper bound of estimate(): the traced model's cost grown by the plan's width and area ratios."""
    from fxscale.cost import cost_model
    base = cost_model(cg, None, mode=mode).report(type(plan)())
    r = max([1.0] + [w / cg[g].width for g, w in plan.widths.items() if g in cg.by_name and cg[g].width])
    a = max(1.0, _area_ratio(cg, plan))
    depth = max([1] + list((getattr(plan, "depths", None) or {}).values()))
    return DTYPE_BYTES * depth * (base.params * (1 + r * r * a) + base.activations * r * r * a * a)


def check_memory(cg: Any, plan: Any, max_memory: Optional[Union[int, float, str]] = None, *, mode: str = "input",
                 hint: str = "pass max_memory=BYTES (fxscale --max-memory SIZE) to allow more"
                 ) -> Optional[MemoryEstimate]:
    """Raise PlanError naming the figures when the plan needs more than `max_memory` (default: MemAvailable).

    `max_memory` may be bytes or a size string ('64GB'); math.inf switches the guard off. Returns the estimate,
    or None when no limit applies.
    """
    if max_memory is not None and not isinstance(max_memory, str) and math.isinf(max_memory):
        return None
    limit = mem_available() if max_memory is None else parse_size(max_memory, "max_memory")
    if limit is None:
        return None
    try:
        with warnings.catch_warnings():  # the cost model's own notes (uncosted leaves) are not this guard's to give
            warnings.simplefilter("ignore")
            if _bound(cg, plan, mode) <= limit:  # far below the limit: no need for the finer estimate
                return None
            est = estimate(cg, plan, mode)
    except PlanError:
        raise
    except Exception:  # noqa: BLE001 - a graph the cost model cannot read: the guard stands aside
        return None
    if est.bytes > limit:
        source = "MemAvailable" if max_memory is None else "the memory limit"
        raise PlanError(f"plan needs {est.describe()} but {source} is {fmt_bytes(limit)}; shrink the widths or "
                        f"resolution, or {hint}")
    return est


__all__ = ["MemoryEstimate", "check_memory", "estimate", "fmt_bytes", "mem_available", "parse_size"]
