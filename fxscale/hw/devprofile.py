"""DeviceProfile: per-kernel-kind latency fits plus a whole-model calibration, stored as versioned JSON."""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from scipy.optimize import nnls

from fxscale.errors import ProfileError  # re-exported: defined in fxscale.errors
from fxscale.ops.row import CONV_FAMILIES, FAMILIES, MAC_FAMILIES, KernelKind

PROFILE_FORMAT = "fxscale.latency-profile"
PROFILE_VERSION = 1
COLD_KIND = "dram_weights"  # calibration key of the DRAM-weights term (its scale)
KERNEL_KIND = "kernel_count"  # calibration key of a per-runtime-kernel cost, in units of KERNEL_UNIT_MS
KERNEL_UNIT_MS = 0.01
MIN_MS = 1e-4  # floor (0.1 us) on measured times when used as relative-error weights
GBR_MIN_SAMPLES = 12
FUSED_FAMILIES = frozenset({"norm", "elementwise"})  # fused into a preceding conv by runtimes (fusion factors)
GEMM_FAMILIES = MAC_FAMILIES - CONV_FAMILIES  # stream their weights from DRAM like GEMMs (kappa_linear)


@dataclass
class KindFit:
    """One kernel kind: ms = a + b*MACs + c*activation bytes + d*weight bytes (NNLS, all >= 0), or GBR."""

    # activation bytes = bytes - weight bytes (inputs and outputs)

    kind: str
    intercept_ms: float
    ms_per_mac: float
    ms_per_byte: float
    ms_per_weight_byte: float = 0.0
    model: str = "linear"  # "linear", or "gbr" when gradient boosting measurably won on held-out points
    n: int = 0
    r2: float = float("nan")
    mape: float = float("nan")  # in-sample, relative
    loo_mape: float = float("nan")  # leave-one-out, linear model
    cv_mape_linear: float = float("nan")  # k-fold held-out MAPE of the linear model
    cv_mape_gbr: float = float("nan")  # k-fold held-out MAPE of GradientBoosting (nan: too few samples)
    samples: list[list[float]] = field(default_factory=list)  # [macs_f, bytes_f, weight_bytes, ms] per point
    _gbr: Any = field(default=None, repr=False, compare=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def linear(self, macs: float, nbytes: float, wbytes: float = 0.0) -> float:
        """The linear model's latency (ms) for one layer's features."""
        return self.intercept_ms + self.ms_per_mac * macs + self.ms_per_byte * (nbytes - wbytes) + \
            self.ms_per_weight_byte * wbytes

    def predict(self, macs: float, nbytes: float, wbytes: float = 0.0) -> float:
        """Latency (ms) of one layer: the linear model, or the boosted trees when model == "gbr"."""
        if self.model != "gbr":
            return self.linear(macs, nbytes, wbytes)
        key = (macs, nbytes, wbytes)
        hit = self._cache.get(key)
        if hit is None:
            if self._gbr is None:
                self._gbr = _fit_gbr(_as_samples(self.samples))
            hit = float(np.exp(self._gbr.predict(_log_features(np.array([[macs, nbytes, wbytes]])))[0]))
            if len(self._cache) < 100_000:
                self._cache[key] = hit
        return hit

    def is_zero(self) -> bool:
        """True when every prediction is 0 (linear model with all coefficients 0)."""
        return self.model == "linear" and not (self.intercept_ms or self.ms_per_mac or self.ms_per_byte or
                                               self.ms_per_weight_byte)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KindFit":
        """Inverse of to_dict (nulls read back as nan)."""
        known = {k for k in cls.__dataclass_fields__ if not k.startswith("_")}
        vals = {k: (float("nan") if v is None and k not in ("kind", "model", "samples") else v)
                for k, v in d.items() if k in known}
        return cls(**vals)


@dataclass
class Calibration:
    """Whole-model term: total = constant_ms + sum over layers of scales[kind] * layer prediction."""

    scales: dict[str, float]
    constant_ms: float
    mode: str = "per_kind"  # "per_kind", "global" (one scale for every kind) or "none" (priors: fit did not help)
    n: int = 0
    mape_before: float = float("nan")  # on the calibration measurements, uncalibrated
    mape_after: float = float("nan")
    points: list[dict[str, Any]] = field(default_factory=list)  # model, fingerprint, plan, measured_ms, by_kind
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # fingerprint -> name, hot, cold, constant_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        """Inverse of to_dict."""
        vals = {k: (float("nan") if v is None and k.startswith("mape") else v) for k, v in d.items()
                if k in cls.__dataclass_fields__}
        return cls(**vals)


@dataclass
class DeviceProfile:
    """What a target's latency predictor needs: fits per kind, channel block, fusion factors, calibration."""

    target: dict[str, Any]
    kinds: dict[str, KindFit]
    channel_block: int = 1  # channels are padded to this multiple by the runtime (measured)
    dtype_bytes: int = 4
    overhead_ms: float = 0.0  # one inference call of a trivial model (subtracted from every kernel sample)
    fusion: dict[str, float] = field(default_factory=dict)  # measured cost fraction left when fused into a conv
    cache: dict[str, float] = field(default_factory=dict)  # c0/c1_bytes, kappa_conv/linear (ms/B), roofline_p
    calibration: Optional[Calibration] = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = field(default=None, compare=False)  # file it was loaded from

    def fit(self, kind: Union[KernelKind, str]) -> KindFit:
        """The fit for a (fine) kind; stride variants fall back to the stride-1 fit; ProfileError if absent."""
        key, base = _keys(kind)
        fit = self.kinds.get(key) or self.kinds.get(base)
        if fit is None:
            where = f" ({self.source})" if self.source else ""
            raise ProfileError(f"the latency profile{where} has no kernel kind {key!r}; profiled kinds: "
                               f"{', '.join(sorted(self.kinds))}. Re-run `fxscale profile` with a model "
                               f"that contains it")
        return fit

    def scale(self, kind: Union[KernelKind, str]) -> float:
        """Whole-model scale of a kind (or of COLD_KIND, KERNEL_KIND): calibrated, else its fusion factor, else 1."""
        key, base = _keys(kind)
        if self.calibration is not None:
            for k in (key, base):
                if k in self.calibration.scales:
                    return self.calibration.scales[k]
        if key == KERNEL_KIND:
            return 0.0
        return self.fusion.get(key, self.fusion.get(base, 1.0))

    def ramp_fn(self) -> Callable[[float], float]:
        """Model weight bytes -> fraction streamed from DRAM per inference (clipped ramp c0..c1, 0 if cached)."""
        # measured with chains of identical layers whose weights outgrow the last-level cache
        c0 = self.cache.get("c0_bytes", math.inf)
        inv = 1.0 / max(self.cache.get("c1_bytes", c0) - c0, 1.0) if math.isfinite(c0) else 0.0
        return lambda w: min(1.0, max(0.0, (w - c0) * inv))

    def roofline_p(self) -> float:
        """Exponent of the smooth roofline that combines a layer's hot time with its DRAM streaming time."""
        return float(self.cache.get("roofline_p", 2.0))

    def kappa(self, kind: Union[KernelKind, str]) -> float:
        """ms per weight byte streamed from DRAM by a layer of this kind (GEMM-like vs conv-like kernels)."""
        kk = _as_kind_or_none(kind)
        gemm = kk is not None and kk.family in GEMM_FAMILIES
        return float(self.cache.get("kappa_linear" if gemm else "kappa_conv", 0.0))

    def constant_ms(self) -> float:
        """Per-inference constant: calibrated, else the measured call overhead."""
        return self.calibration.constant_ms if self.calibration is not None else self.overhead_ms

    def model_terms(self, fingerprint: Optional[str]) -> tuple[float, float, float]:
        """(hot scale, DRAM scale, constant ms) of a calibrated model, else (1, 1, the global constant)."""
        m = self.calibration.models.get(fingerprint) if self.calibration and fingerprint else None
        if m is None:
            return 1.0, 1.0, self.constant_ms()
        return float(m["hot"]), float(m["cold"]), float(m["constant_ms"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with format and version."""
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "target": self.target,
                "channel_block": self.channel_block, "dtype_bytes": self.dtype_bytes,
                "overhead_ms": self.overhead_ms, "fusion": self.fusion, "cache": self.cache,
                "kinds": {k: f.to_dict() for k, f in sorted(self.kinds.items())},
                "calibration": self.calibration.to_dict() if self.calibration else None, "meta": self.meta}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically (temp file + rename): nothing partial is left on failure."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False, default=_json_default)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600: give the file the user's usual mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_dict(cls, d: Any, source: Optional[str] = None) -> "DeviceProfile":
        """Parse a dict written by to_dict; ProfileError on a wrong format/version or missing fields."""
        where = source or "<dict>"
        if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{where} is not an fxscale latency profile (format must be {PROFILE_FORMAT!r})")
        if d.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{where}: latency profile version {d.get('version')!r} is not supported "
                               f"(expected {PROFILE_VERSION}); re-run `fxscale profile`")
        try:
            for key in d["kinds"]:  # where a profile's kind keys enter: each must be a kind of a known family
                profile_kind(key)
            kinds = {k: KindFit.from_dict(v) for k, v in d["kinds"].items()}
            cal = Calibration.from_dict(d["calibration"]) if d.get("calibration") else None
            return cls(target=dict(d["target"]), kinds=kinds, channel_block=int(d["channel_block"]),
                       dtype_bytes=int(d["dtype_bytes"]), overhead_ms=float(d["overhead_ms"]),
                       fusion=dict(d.get("fusion") or {}), cache=dict(d.get("cache") or {}), calibration=cal,
                       meta=dict(d.get("meta") or {}), source=source)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProfileError(f"{where}: malformed latency profile ({type(e).__name__}: {e})") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "DeviceProfile":
        """Read a profile file; ProfileError naming the file when unreadable, not JSON, or another version."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ProfileError(f"cannot read latency profile {path}: {e.strerror or e}") from e
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileError(f"latency profile {path} is not valid JSON: {e}") from e
        return cls.from_dict(d, source=str(path))


def as_kind(kind: Union[KernelKind, str]) -> KernelKind:
    """A kind as KernelKind: strings are parsed ('conv_k3_s2' -> KernelKind('conv', 3, 2)); ValueError if not one."""
    return kind if isinstance(kind, KernelKind) else KernelKind.parse(kind)


def _as_kind_or_none(kind: Union[KernelKind, str]) -> Optional[KernelKind]:
    try:
        return as_kind(kind)
    except ValueError:
        return None


def _keys(kind: Union[KernelKind, str]) -> tuple[str, str]:
    """(profile key of a kind, key of the fit it falls back to); a string that is no kind is its own fallback."""
    kk = _as_kind_or_none(kind)
    return str(kind), str(kk.base) if kk is not None else str(kind)


def profile_kind(key: str) -> KernelKind:
    """A profile's kind key parsed; ValueError naming it when it is no kind of a known family."""
    kind = KernelKind.parse(key)
    if not kind.known:
        raise ValueError(f"unknown kernel family {kind.family!r} in kind {key!r} (known families: "
                         f"{', '.join(sorted(FAMILIES))})")
    return kind


def base_kind(kind: Union[KernelKind, str]) -> str:
    """conv_k3_s2 -> conv_k3; gpool -> pool; other kinds (and strings that are no kind) unchanged."""
    return _keys(kind)[1]


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---- fitting ------------------------------------------------------------------------------------------
def _as_samples(samples: Any) -> np.ndarray:
    """[macs_f, bytes_f, weight_bytes, ms] rows (3-column [macs_f, bytes_f, ms] rows get weight_bytes 0)."""
    s = np.asarray(samples, dtype=float)
    s = s.reshape(-1, s.shape[-1] if s.size else 4)
    return np.column_stack([s[:, :2], np.zeros(len(s)), s[:, 2]]) if s.shape[1] == 3 else s


def _design(x: np.ndarray) -> np.ndarray:
    """Feature columns (MACs, activation bytes, weight bytes) from (MACs, bytes, weight bytes)."""
    x = np.asarray(x, dtype=float).reshape(-1, 3)
    return np.column_stack([x[:, 0], x[:, 1] - x[:, 2], x[:, 2]])


def fit_linear(x: np.ndarray, y: np.ndarray) -> tuple[float, ...]:
    """NNLS fit of y ~ a + b*macs + c*activation bytes + d*weight bytes, relative error; returns (a, b, c, d)."""
    y = np.asarray(y, dtype=float)
    a = np.column_stack([np.ones(len(y)), _design(x)])
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)
    w = 1.0 / np.maximum(y, MIN_MS)
    coef, _ = nnls((a / scale) * w[:, None], y * w)
    return tuple(float(c) for c in coef / scale)


def _predict(coef: Sequence[float], x: np.ndarray) -> np.ndarray:
    return coef[0] + _design(x) @ np.asarray(coef[1:])


def mape(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute percentage error (fraction), measured values floored at MIN_MS."""
    pred, y = np.asarray(pred, dtype=float), np.asarray(y, dtype=float)
    return float(np.mean(np.abs(pred - y) / np.maximum(y, MIN_MS))) if len(y) else float("nan")


def r2(pred: np.ndarray, y: np.ndarray) -> float:
    """Coefficient of determination (nan with < 2 samples or constant y)."""
    y = np.asarray(y, dtype=float)
    ss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((np.asarray(pred) - y) ** 2)) / ss if len(y) > 1 and ss > 0 else float("nan")


def loo_errors(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out relative error of the linear fit at every sample."""
    n = len(y)
    if n < 4:
        return np.zeros(n)
    out = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        coef = fit_linear(x[keep], y[keep])
        out[i] = abs(_predict(coef, x[i:i + 1])[0] - y[i]) / max(y[i], MIN_MS)
    return out


def _log_features(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(np.asarray(x, dtype=float), 0.0))


def _fit_gbr(samples: np.ndarray) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor
    model = GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.1, random_state=0)
    return model.fit(_log_features(samples[:, :3]), np.log(np.maximum(samples[:, 3], MIN_MS)))


def cv_compare(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """k-fold held-out MAPE of the linear NNLS model and of GradientBoosting (nan when too few samples)."""
    n = len(y)
    if n < GBR_MIN_SAMPLES:
        return float("nan"), float("nan")
    order = np.random.default_rng(seed).permutation(n)
    lin, gbr = np.empty(n), np.empty(n)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        lin[test] = _predict(fit_linear(x[train], y[train]), x[test])
        model = _fit_gbr(np.column_stack([x[train], y[train]]))
        gbr[test] = np.exp(model.predict(_log_features(x[test])))
    return mape(lin, y), mape(gbr, y)


def fit_kind(kind: str, samples: Sequence[Sequence[float]], allow_gbr: bool = True) -> KindFit:
    """Fit one kind from [macs_f, bytes_f, weight_bytes, ms] samples; GBR only if it wins held-out."""
    s = _as_samples(samples)
    x, y = s[:, :3], s[:, 3]
    if len(y) == 0:
        raise ProfileError(f"no samples to fit kernel kind {kind!r}")
    coef = fit_linear(x, y)
    pred = _predict(coef, x)
    loo = loo_errors(x, y)
    cv_lin, cv_gbr = cv_compare(x, y)
    if math.isnan(cv_lin) and len(y) >= 4:
        cv_lin = float(loo.mean())
    wins = allow_gbr and not math.isnan(cv_gbr) and cv_gbr < 0.75 * cv_lin and cv_lin - cv_gbr > 0.02
    return KindFit(kind=kind, intercept_ms=coef[0], ms_per_mac=coef[1], ms_per_byte=coef[2],
                   ms_per_weight_byte=coef[3], model="gbr" if wins else "linear", n=len(y), r2=r2(pred, y),
                   mape=mape(pred, y), loo_mape=float(loo.mean()) if len(y) >= 4 else float("nan"),
                   cv_mape_linear=cv_lin, cv_mape_gbr=cv_gbr, samples=[[float(v) for v in row] for row in s])


def _fit_shared(raw: np.ndarray, y: np.ndarray, kinds: list[str], prior: np.ndarray, prior_constant: float,
                mode: str, strength: float) -> tuple[float, np.ndarray]:
    """(constant ms, scale per kind) of the calibration shared by all models (bounded least squares)."""
    from scipy.optimize import lsq_linear
    w = 1.0 / np.maximum(y, MIN_MS)
    nk = len(kinds)
    cscale = max(float(np.median(y)) * 0.05, 1e-6)  # the constant enters in units of 5 % of a typical model
    # columns: constant, common scale a, one scale per kind
    a_data = np.column_stack([np.ones(len(y)) * cscale, np.zeros(len(y)), raw]) * w[:, None]
    lam = math.sqrt(strength)
    share = raw.sum(axis=0) / max(raw.sum(), 1e-30)
    rows, target = [], []
    for j, k in enumerate(kinds):
        row = np.zeros(nk + 2)
        if k in (COLD_KIND, KERNEL_KIND):
            row[2 + j] = lam
            target.append(lam * prior[j])
        else:
            weight = 1e3 if mode == "global" else lam * (1.0 + 1.0 / max(share[j] * nk, 1e-3))
            row[2 + j], row[1] = weight, -weight * prior[j]
            target.append(0.0)
        rows.append(row)
    row = np.zeros(nk + 2)
    row[1] = 0.2 * lam  # a -> 1, weakly
    rows.append(row)
    target.append(0.2 * lam)
    row = np.zeros(nk + 2)
    row[0] = 0.2 * lam  # constant -> the measured call overhead, weakly
    rows.append(row)
    target.append(0.2 * lam * prior_constant / cscale)
    sol = lsq_linear(np.vstack([a_data, np.array(rows)]), np.concatenate([y * w, target]), bounds=(0.0, np.inf)).x
    return float(sol[0] * cscale), sol[2:]


def fit_calibration(points: list[dict[str, Any]], priors: dict[str, float], prior_constant: float,
                    mode: str = "per_kind", strength: float = 0.05, min_model_points: int = 4) -> Calibration:
    """Fit total = c + sum_k s_k * raw_k (+ per-model terms) to end-to-end measurements; keep what helps LOO."""
    # Kernel kinds share one scale a: s_k = a * prior_k ("global"), or are pulled towards it with a strength that
    # grows as the kind's share of the latency shrinks ("per_kind"); the DRAM term is pulled towards 1, the
    # per-kernel cost towards 0. Models with >= min_model_points measurements (same fingerprint) also get their own
    # (hot scale, DRAM scale, constant). Each level is kept only if it lowers the leave-one-point-out error (the
    # shared fit over all points, a model's own term over its points); otherwise the priors / shared fit are used.
    if mode not in ("per_kind", "global"):
        raise ProfileError(f"calibration mode must be 'per_kind' or 'global', got {mode!r}")
    kinds = sorted({k for p in points for k in p["by_kind"]})
    prior = np.array([priors.get(k, 1.0) for k in kinds])
    if not points:
        return Calibration(dict(zip(kinds, prior.tolist())), prior_constant, "none")
    y = np.array([p["measured_ms"] for p in points], dtype=float)
    raw = np.array([[p["by_kind"].get(k, 0.0) for k in kinds] for p in points], dtype=float).reshape(len(y), -1)
    before = prior_constant + raw @ prior
    n = len(y)
    loo = np.empty(n)
    for j in range(n):
        keep = np.arange(n) != j
        c, sc = _fit_shared(raw[keep], y[keep], kinds, prior, prior_constant, mode, strength)
        loo[j] = c + raw[j] @ sc
    const, sc = _fit_shared(raw, y, kinds, prior, prior_constant, mode, strength)
    use_shared = n >= 3 and mape(loo, y) < mape(before, y)
    if not use_shared:
        const, sc, mode = prior_constant, prior.copy(), "none"
    after = const + raw @ sc
    cal = Calibration({k: float(v) for k, v in zip(kinds, sc)}, const, mode, n, mape(before, y), mape(after, y),
                      points)
    cold = np.array([k == COLD_KIND for k in kinds], dtype=bool)
    hot_part, cold_part = raw[:, ~cold] @ sc[~cold], raw[:, cold] @ sc[cold]
    for fp in dict.fromkeys(p.get("fingerprint") for p in points):
        idx = np.array([j for j, p in enumerate(points) if p.get("fingerprint") == fp])
        if not fp or len(idx) < min_model_points:
            continue
        name = points[idx[0]]["model"]
        held = []
        for j in range(len(idx)):
            k = np.delete(idx, j)
            m = _fit_model(name, y[k], hot_part[k], cold_part[k], const)
            held.append(m["constant_ms"] + m["hot"] * hot_part[idx[j]] + m["cold"] * cold_part[idx[j]])
        m = _fit_model(name, y[idx], hot_part[idx], cold_part[idx], const)
        m["loo_mape"], m["loo_mape_shared"] = mape(np.array(held), y[idx]), mape(after[idx], y[idx])
        if m["loo_mape"] < m["loo_mape_shared"]:
            cal.models[fp] = m
    return cal


def _fit_model(name: str, y: np.ndarray, hot: np.ndarray, cold: np.ndarray, const: float,
               strength: float = 0.02) -> dict[str, Any]:
    """One model's own y = c + a * hot + b * cold on top of the shared calibration (a, b -> 1, c -> shared)."""
    from scipy.optimize import lsq_linear
    w = 1.0 / np.maximum(y, MIN_MS)
    cscale = max(float(np.median(y)) * 0.05, 1e-6)
    lam = math.sqrt(strength)
    a = np.vstack([np.column_stack([np.ones(len(y)) * cscale, hot, cold]) * w[:, None], np.diag([lam, lam, lam])])
    b = np.concatenate([y * w, [lam * const / cscale, lam, lam]])
    sol = lsq_linear(a, b, bounds=(0.0, np.inf)).x
    before, after = const + hot + cold, sol[0] * cscale + sol[1] * hot + sol[2] * cold
    return {"name": name, "hot": float(sol[1]), "cold": float(sol[2]), "constant_ms": float(sol[0] * cscale),
            "n": int(len(y)), "mape_before": mape(before, y), "mape_after": mape(after, y)}


__all__ = ["COLD_KIND", "FUSED_FAMILIES", "GEMM_FAMILIES", "KERNEL_KIND", "KERNEL_UNIT_MS", "Calibration",
           "DeviceProfile", "KindFit", "PROFILE_FORMAT", "PROFILE_VERSION", "ProfileError", "as_kind", "base_kind",
           "cv_compare", "fit_calibration", "fit_kind", "fit_linear", "loo_errors", "mape", "profile_kind", "r2"]
