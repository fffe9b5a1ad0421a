"""Importance predictor: per group I = a * C^b fitted in log space (leave-one-out choice of two log-space fits)."""
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
    """Fit I = a*C^b in log space: importance is compared across widths by ratios, not differences.

    Two fits are candidates: least squares on log I (the exact log-space fit) and non-linear least squares
    weighted by 1/I^2 (relative errors; scipy curve_fit with sigma = I). With at least 3 distinct widths the
    one with the smaller leave-one-out error of log I is kept; otherwise the log-space fit. An unweighted fit
    in linear space is never used: its largest values (the narrowest widths) dominate it.
    """
    c = np.asarray(widths, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = (c > 0) & (v > 0) & np.isfinite(v)
    c, v = c[keep], v[keep]
    if len(c) < 2 or len(np.unique(c)) < 2:
        raise FxscaleError(f"power-law fit needs importance at >= 2 distinct widths with positive importance; "
                           f"got widths {sorted(set(c.tolist()))}: sample more width configurations")
    fits = {"log-space fit": _fit_log, "relative-error NLS": _fit_relative}
    chosen, a, b = "log-space fit", *_fit_log(c, v)
    if len(np.unique(c)) >= 3 and len(c) >= 3:
        errors = {name: _loo_log_error(fn, c, v) for name, fn in fits.items()}
        chosen = min(errors, key=lambda k: (errors[k], k != "log-space fit"))
        a, b = fits[chosen](c, v)
    return PowerLaw(a, b, _r2(v, a * c ** b), _r2(np.log(v), np.log(a) + b * np.log(c)), len(c), chosen)


def _fit_log(c: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Least squares of log I = log a + b log C."""
    b, log_a = np.polyfit(np.log(c), np.log(v), 1)
    return float(math.exp(log_a)), float(b)


def _fit_relative(c: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Least squares of (I - a C^b) / I (curve_fit with sigma = I), started at the log-space fit."""
    from scipy.optimize import curve_fit
    a0, b0 = _fit_log(c, v)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, b), _ = curve_fit(lambda x, a, b: a * np.power(x, b), c, v, p0=(a0, b0), sigma=v, maxfev=2000)
    except (RuntimeError, ValueError):
        return a0, b0
    return (float(a), float(b)) if np.isfinite(a) and np.isfinite(b) and a > 0 else (a0, b0)


def _loo_log_error(fit: Any, c: np.ndarray, v: np.ndarray) -> float:
    """Mean squared error of log I at each point, fitted without that point."""
    errs = []
    for i in range(len(c)):
        rest = np.arange(len(c)) != i
        if len(np.unique(c[rest])) < 2:
            continue
        a, b = fit(c[rest], v[rest])
        errs.append((math.log(v[i]) - math.log(a) - b * math.log(c[i])) ** 2)
    return float(np.mean(errs)) if errs else math.inf


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
