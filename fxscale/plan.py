"""ScalingPlan: per-group widths, an input resolution and per-stage depths, with JSON round trip and validation."""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from fxscale.errors import PlanError

PLAN_VERSION = 1


@dataclass
class ScalingPlan:
    """What to change: widths by group name, an input resolution (H, W), block counts by stage, provenance.

    ``depths`` maps a stage key to a new block count (see fxscale.passes.depth): ``"layer1": 4`` repeats the
    last block of the nn.Sequential ``layer1`` until it has 4 blocks; ``"features.K": n`` repeats child K of a
    Sequential (a block, or a conv with its BN/ReLU in a flat VGG ``features``) until it appears n times.
    """

    widths: dict[str, int] = field(default_factory=dict)
    resolution: Optional[tuple[int, int]] = None
    meta: dict[str, Any] = field(default_factory=dict)
    depths: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resolution is not None:
            res = self.resolution
            if isinstance(res, int):
                res = (res, res)
            if len(res) != 2 or any(not isinstance(v, int) or isinstance(v, bool) for v in res):
                raise PlanError(f"plan key 'resolution' must be two ints (H, W), got {self.resolution!r}")
            if min(res) <= 0:
                raise PlanError(f"plan key 'resolution' must be positive, got {tuple(res)}")
            self.resolution = (int(res[0]), int(res[1]))
        for k, v in self.widths.items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise PlanError(f"plan width for group {k!r} must be an int, got {v!r}")
            if v < 1:
                raise PlanError(f"plan width for group {k!r} must be >= 1, got {v}")
        if not isinstance(self.depths, dict):
            raise PlanError(f"plan key 'depths' must map stage names to block counts, got {self.depths!r}")
        for k, v in self.depths.items():
            if not isinstance(k, str) or not k:
                raise PlanError(f"plan depth key {k!r} must be a non-empty stage name")
            if not isinstance(v, int) or isinstance(v, bool):
                raise PlanError(f"plan depth for stage {k!r} must be an int, got {v!r}")
            if v < 1:
                raise PlanError(f"plan depth for stage {k!r} must be >= 1, got {v}")

    def to_json(self, indent: int = 2) -> str:
        """Serialise (stable key order); "depths" is written only when the plan has some."""
        d: dict[str, Any] = {"version": PLAN_VERSION, "widths": dict(sorted(self.widths.items())),
                             "resolution": list(self.resolution) if self.resolution else None,
                             "meta": self.meta}
        if self.depths:
            d["depths"] = dict(sorted(self.depths.items()))
        return json.dumps(d, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "ScalingPlan":
        """Parse a plan written by to_json (or by hand)."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise PlanError("plan JSON must be an object with 'widths' and/or 'resolution'")
        unknown = set(d) - {"version", "widths", "resolution", "meta", "depths"}
        if unknown:
            raise PlanError(f"unknown plan keys {sorted(unknown)}; expected widths, resolution, depths, meta, "
                            "version")
        if d.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise PlanError(f"plan version {d.get('version')} is not supported (expected {PLAN_VERSION})")
        res = d.get("resolution")
        depths = d.get("depths") or {}
        if not isinstance(depths, dict):
            raise PlanError(f"plan key 'depths' must be an object of stage -> block count, got {depths!r}")
        return cls(widths=dict(d.get("widths") or {}), resolution=tuple(res) if res else None,
                   meta=dict(d.get("meta") or {}), depths=dict(depths))

    def validate(self, cg: Any) -> None:
        """Check every key against a ChannelGraph; raise PlanError naming the first bad key."""
        groups = cg.by_name
        for name, w in self.widths.items():
            g = groups.get(name)
            if g is None:
                close = difflib.get_close_matches(name, list(groups), n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise PlanError(f"plan key {name!r} names no channel group{hint}")
            if not g.scalable:
                if w == g.width:
                    continue
                raise PlanError(f"plan key {name!r}: group is fixed ({g.reason}); it must stay {g.width}")
            if w % g.divisor:
                raise PlanError(f"plan key {name!r}: width {w} is not a multiple of the group's divisor "
                                f"{g.divisor}")
        if self.depths:
            from fxscale.passes.depth import validate_depths
            validate_depths(cg.gm, self.depths)
