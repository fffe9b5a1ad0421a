"""Small, seeded statistics for scaling results: bootstrap CIs, paired differences and Holm's correction.

numpy only; every function is deterministic given its `seed`.

- `mean_ci(values)`: the mean of per-seed results with a percentile-bootstrap confidence interval.
- `paired_bootstrap(a, b)`: the mean of the paired differences a[i] - b[i] (e.g. a method minus the baseline, the
  same seed and data split in both), a percentile-bootstrap CI and a two-sided bootstrap p-value.
- `holm(p_values)`: Holm-Bonferroni step-down adjusted p-values and reject flags over a family of comparisons.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fxscale.errors import FxscaleError

_CHUNK = 2_000_000  # resampled values held in memory at once


@dataclass(frozen=True)
class PairedDiff:
    """Mean paired difference a - b, its bootstrap CI [lo, hi] and a two-sided bootstrap p-value."""

    mean: float
    lo: float
    hi: float
    p_value: float
    n: int

    def excludes_zero(self) -> bool:
        """True when the CI lies entirely above or below zero."""
        return bool(self.lo > 0 or self.hi < 0)


@dataclass(frozen=True)
class HolmResult:
    """Holm-adjusted p-values and reject flags, keyed like the input (a dict for a mapping, else a list)."""

    adjusted: dict[str, float] | list[float]
    reject: dict[str, bool] | list[bool]
    alpha: float


def _vector(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A finite, non-empty 1-d float array, or FxscaleError."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise FxscaleError(f"{name}: need a non-empty 1-d sequence of numbers; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise FxscaleError(f"{name}: values must be finite; got {arr.tolist()}")
    return arr


def _check(confidence: float, n_boot: int) -> None:
    if not 0 < confidence < 1:
        raise FxscaleError(f"confidence must lie in (0, 1); got {confidence}")
    if n_boot < 1:
        raise FxscaleError(f"n_boot must be >= 1; got {n_boot}")


def bootstrap_means(values: Sequence[float] | np.ndarray, n_boot: int = 10000, seed: int = 0) -> np.ndarray:
    """n_boot means of resamples (with replacement, same size) of values; seeded with numpy's default_rng(seed)."""
    x = _vector("bootstrap_means", values)
    if n_boot < 1:
        raise FxscaleError(f"n_boot must be >= 1; got {n_boot}")
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // x.size)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        k = min(rows, n_boot - start)
        out[start:start + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    return out


def _interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_boot: int = 10000,
            seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and its percentile-bootstrap confidence interval.

    With a single value there is no spread to resample: the result is (value, nan, nan), so a one-seed run never
    shows a zero-width interval that looks like certainty.
    """
    _check(confidence, n_boot)
    x = _vector("mean_ci", values)
    if x.size == 1:
        return float(x[0]), math.nan, math.nan
    lo, hi = _interval(bootstrap_means(x, n_boot, seed), confidence)
    return float(x.mean()), lo, hi


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95,
                     n_boot: int = 10000, seed: int = 0) -> PairedDiff:
    """Paired bootstrap of the mean difference a - b (a[i] and b[i] share seed i and its data split).

    The CI is the percentile interval of n_boot resampled mean differences. The two-sided p-value inverts that
    interval: p = min(1, 2 * min(#{boot <= 0} + 1, #{boot >= 0} + 1) / (n_boot + 1)), the smallest 1 - confidence
    at which the percentile CI would touch zero (with the usual +1 so that p is never exactly 0). Hence
    p < 1 - confidence exactly when the CI excludes zero (up to quantile interpolation). With one pair the result
    is (difference, nan, nan, nan). Identical non-zero differences give the smallest p, 2 / (n_boot + 1); with
    5 seeds the bootstrap is coarse (126 distinct resamples), so treat p-values near alpha with care.
    """
    _check(confidence, n_boot)
    x, y = _vector("paired_bootstrap a", a), _vector("paired_bootstrap b", b)
    if x.size != y.size:
        raise FxscaleError(f"paired_bootstrap: a and b must pair up (one value per seed); got {x.size} and {y.size}")
    d = x - y
    if d.size == 1:
        return PairedDiff(float(d[0]), math.nan, math.nan, math.nan, 1)
    boot = bootstrap_means(d, n_boot, seed)
    lo, hi = _interval(boot, confidence)
    below, above = int(np.sum(boot <= 0)), int(np.sum(boot >= 0))
    p = min(1.0, 2.0 * (min(below, above) + 1) / (n_boot + 1))
    return PairedDiff(float(d.mean()), lo, hi, p, int(d.size))


def holm(p_values: Mapping[str, float] | Sequence[float], alpha: float = 0.05) -> HolmResult:
    """Holm-Bonferroni step-down correction over one family of comparisons.

    Sorted ascending, the i-th smallest of m p-values (i from 0) is adjusted to max_{j<=i} min(1, (m - j) p_(j)),
    so adjusted values are monotone in the raw ones; reject[k] is adjusted[k] <= alpha, which controls the
    family-wise error rate at alpha. NaN p-values (e.g. one-seed comparisons) are left out of the family:
    adjusted NaN, never rejected, and they do not count in m.
    """
    if not 0 < alpha < 1:
        raise FxscaleError(f"holm: alpha must lie in (0, 1); got {alpha}")
    keys = list(p_values) if isinstance(p_values, Mapping) else None
    raw = np.asarray([p_values[k] for k in keys] if keys is not None else list(p_values), dtype=float)
    if raw.ndim != 1:
        raise FxscaleError(f"holm: need a flat sequence or mapping of p-values; got shape {raw.shape}")
    valid = ~np.isnan(raw)
    if np.any((raw[valid] < 0) | (raw[valid] > 1)):
        raise FxscaleError(f"holm: p-values must lie in [0, 1]; got {raw.tolist()}")
    adjusted = np.full(raw.shape, math.nan)
    idx = np.flatnonzero(valid)
    order = idx[np.argsort(raw[idx], kind="stable")]
    m = order.size
    running = 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(raw[k])))
        adjusted[k] = running
    reject = [bool(v <= alpha) for v in adjusted]  # NaN compares False
    adj = [float(v) for v in adjusted]
    if keys is not None:
        return HolmResult({str(k): v for k, v in zip(keys, adj)}, {str(k): r for k, r in zip(keys, reject)}, alpha)
    return HolmResult(adj, reject, alpha)
