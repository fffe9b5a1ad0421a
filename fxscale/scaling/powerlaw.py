"""Importance predictor: per group I = a * C^b fitted with scipy (log-space start, NLS refinement)."""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from fxscale.analysis.graph import ChannelGraph
from fxscale.errors import FxscaleError
from fxscale.scaling.budget import round_width

POOR_R2 = 0.5  # groups whose fit explains less than this (log space) are reported as poorly fitted


@dataclass
class PowerLaw:
    """I(C) = a * C**b with its fit quality."""

    a: float
    b: float
    r2: float  # coefficient of determination on the importance values
    r2_log: float  # ... on log importance (what the log-space fit optimises)
    n: int  # samples used
    note: str = ""

    def __call__(self, width: float) -> float:
        return self.a * float(width) ** self.b


def fit_power_law(widths: Sequence[float], values: Sequence[float]) -> PowerLaw:
    """Fit I = a*C^b: linear least squares in log space, then non-linear least squares (scipy curve_fit)."""
    from scipy.optimize import curve_fit
    from scipy.stats import linregress

    c = np.asarray(widths, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = (c > 0) & (v > 0) & np.isfinite(v)
    c, v = c[keep], v[keep]
    if len(c) < 2 or len(np.unique(c)) < 2:
        raise FxscaleError(f"power-law fit needs importance at >= 2 distinct widths with positive importance; "
                           f"got widths {sorted(set(c.tolist()))}: sample more width configurations")
    lr = linregress(np.log(c), np.log(v))
    a, b = math.exp(lr.intercept), float(lr.slope)
    note = "log-space fit"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a2, b2), _ = curve_fit(lambda x, a, b: a * np.power(x, b), c, v, p0=(a, b), maxfev=2000)
        if np.isfinite(a2) and np.isfinite(b2) and a2 > 0 and _r2(v, a2 * c ** b2) >= _r2(v, a * c ** b):
            a, b, note = float(a2), float(b2), "NLS"
    except (RuntimeError, ValueError):
        note = "log-space fit (NLS did not converge)"
    return PowerLaw(a, b, _r2(v, a * c ** b), _r2(np.log(v), np.log(a) + b * np.log(c)), len(c), note)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0


@dataclass
class ImportancePredictor:
    """Fitted power laws per scalable group."""

    fits: dict[str, PowerLaw] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # group -> why no fit (predicted from the median law)

    def __call__(self, group: str, width: float) -> float:
        """Predicted per-kernel importance of a group at a width."""
        law = self.fits.get(group)
        if law is None:
            raise FxscaleError(f"importance predictor has no fit for group {group!r}")
        return law(width)

    def poorly_fit(self, threshold: float = POOR_R2) -> list[str]:
        """Groups with log-space R^2 below threshold."""
        return [g for g, f in self.fits.items() if f.r2_log < threshold]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"fits": {g: asdict(f) for g, f in self.fits.items()}, "failed": dict(self.failed),
                "poorly_fit": self.poorly_fit()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImportancePredictor":
        """Inverse of to_dict."""
        return cls({g: PowerLaw(**f) for g, f in d["fits"].items()}, dict(d.get("failed", {})))


def fit_predictor(samples: Sequence[Any]) -> ImportancePredictor:
    """Fit one power law per group from Importance samples (each with .widths and .groups)."""
    groups = sorted({g for s in samples for g in s.groups})
    if not groups:
        raise FxscaleError("no importance samples to fit (the model has no scalable groups?)")
    pred = ImportancePredictor()
    for g in groups:
        pts = [(s.widths[g], s.groups[g]) for s in samples if g in s.groups]
        try:
            pred.fits[g] = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
        except FxscaleError as e:
            pred.failed[g] = str(e)
    if not pred.fits:
        raise FxscaleError("the importance fit failed for every group: " + "; ".join(
            f"{g}: {why}" for g, why in list(pred.failed.items())[:3]))
    if pred.failed:  # a neutral law (median exponent, median scale) keeps the search going, and says so
        a = float(np.median([f.a for f in pred.fits.values()]))
        b = float(np.median([f.b for f in pred.fits.values()]))
        for g in pred.failed:
            pred.fits[g] = PowerLaw(a, b, float("nan"), float("nan"), 0, "fallback: median law (fit failed)")
        warnings.warn(f"importance fit failed for {len(pred.failed)} group(s) ({', '.join(pred.failed)}); "
                      "they use the median law. Sample more width configurations (--samples) or train longer.",
                      stacklevel=2)
    return pred


def sample_configs(cg: ChannelGraph, k: int, seed: int = 0, multipliers: Sequence[float] = (0.5, 0.75, 1.0, 1.5, 2.0),
                   spread: tuple[float, float] = (0.5, 2.0)) -> list[dict[str, int]]:
    """K width configurations: uniform multipliers first, then random per-group perturbations."""
    rng = random.Random(seed)
    out: list[dict[str, int]] = []
    for i in range(k):
        if i < len(multipliers):
            out.append({g.name: round_width(g.width * multipliers[i], g.divisor) for g in cg.scalable})
        else:
            lo, hi = math.log(spread[0]), math.log(spread[1])
            out.append({g.name: round_width(g.width * math.exp(rng.uniform(lo, hi)), g.divisor)
                        for g in cg.scalable})
    return out


__all__ = ["ImportancePredictor", "PowerLaw", "fit_power_law", "fit_predictor", "sample_configs"]
