"""Timing protocol, latency statistics and the Target protocol shared by every device target."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Protocol_:  # noqa: N801 - the name Protocol is taken by typing
    """How a model is timed: warm-up runs, timed runs, batch size and the reported statistic."""

    warmup: int = 10
    runs: int = 50  # the paper: "averaging the latency of 50 inferences with a batch size of 1"
    batch: int = 1
    statistic: str = "mean"  # "mean" (paper) or "median" (robust on shared machines)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.runs < 1 or self.batch < 1:
            raise ValueError(f"invalid timing protocol {self}: need warmup>=0, runs>=1, batch>=1")
        if self.statistic not in ("mean", "median"):
            raise ValueError(f"timing protocol statistic must be 'mean' or 'median', got {self.statistic!r}")


MeasureProtocol = Protocol_
PAPER_PROTOCOL = MeasureProtocol()


def _percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted samples."""
    if len(sorted_ms) == 1:
        return float(sorted_ms[0])
    pos = (len(sorted_ms) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return float(sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo))


@dataclass
class LatencyStats:
    """Latency of one model on one target, in milliseconds per batch."""

    mean: float
    median: float
    p10: float
    p90: float
    runs: int
    warmup: int
    device: str
    settings: dict[str, Any] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], warmup: int, device: str,
                     settings: dict[str, Any] | None = None) -> "LatencyStats":
        """Summarise raw per-run timings (ms)."""
        if not samples_ms:
            raise ValueError("no timing samples")
        s = sorted(float(x) for x in samples_ms)
        return cls(mean=statistics.fmean(s), median=statistics.median(s), p10=_percentile(s, 10),
                   p90=_percentile(s, 90), runs=len(s), warmup=warmup, device=device,
                   settings=dict(settings or {}), samples_ms=list(samples_ms))

    def value(self, statistic: str = "mean") -> float:
        """The statistic a protocol reports ("mean" or "median")."""
        return self.mean if statistic == "mean" else self.median

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (samples included)."""
        return asdict(self)


@runtime_checkable
class Target(Protocol):
    """A device that times a model: an nn.Module/GraphModule or a path to an .onnx file."""

    name: str

    def measure(self, model_or_onnx: Any, input_shape: Sequence[int],
                protocol: MeasureProtocol = PAPER_PROTOCOL) -> LatencyStats:
        """Time one model at `input_shape` (N, C, H, W) under `protocol`."""
        ...

    def describe(self) -> dict[str, Any]:
        """Device/runtime/threads metadata stored with profiles and reports."""
        ...
