"""Device targets (ONNX Runtime CPU, PyTorch CPU/CUDA, TensorRT via trtexec), their registry, and A/B timing.

CPU timing hygiene: set ``OMP_WAIT_POLICY=PASSIVE`` in the environment *before* the Python process starts
(OpenMP reads it once at load time; the fxscale CLI sets it), so idle OpenMP workers of torch do not spin
and steal cycles from the timed runtime. ONNX Runtime spinning is switched off per session instead.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import re
import statistics
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from fxscale.errors import TargetError
from fxscale.hw.base import (
    PAPER_PROTOCOL,
    LatencyStats,
    MeasureProtocol,
    Target,
    with_batch,
)
from fxscale.hw.timing import Timing, measure_interleaved

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_GRAPH_OPT = ("all", "extended", "basic", "none")


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (x86 "model name", ARM "Hardware"/"Model"), else platform info."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine() or "unknown CPU"


class Runner(ABC):
    """A model prepared on a target (session built, weights loaded): call() runs one batch, run_ms() times it.

    The timing engine times call() with its protocol's clock when `clocked`, else uses sample() (CUDA events).
    """

    clocked: bool = True

    @abstractmethod
    def run_ms(self) -> float:
        """Run one inference and return its latency in milliseconds."""

    def call(self) -> None:
        """Run one inference, untimed (the engine reads its own clock around it)."""
        self.run_ms()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Context in which run_ms() is called (thread settings, inference mode)."""
        yield

    def sample(self, n: int) -> list[float]:
        """Latencies (ms) of `n` consecutive runs."""
        with self.active():
            return [self.run_ms() for _ in range(n)]


class OrtRunner(Runner):
    """An ONNX Runtime session with a fixed input feed."""

    def __init__(self, session: Any, feed: dict[str, np.ndarray]) -> None:
        self.session, self.feed = session, feed

    def call(self) -> None:
        """One session.run."""
        self.session.run(None, self.feed)

    def run_ms(self) -> float:
        """One session.run, timed with perf_counter_ns."""
        t0 = time.perf_counter_ns()
        self.call()
        return (time.perf_counter_ns() - t0) / 1e6


class TorchRunner(Runner):
    """An eval-mode module copy and its input on one torch device."""

    def __init__(self, model: nn.Module, x: torch.Tensor, threads: int) -> None:
        self.model, self.x, self.threads = model, x, threads
        self.cuda = x.device.type == "cuda"
        self.clocked = not self.cuda  # CUDA runs are asynchronous: timed with events in run_ms()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Inference mode with torch's intra-op thread count set to `threads` (restored afterwards)."""
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(previous)

    def call(self) -> None:
        """One forward pass (CPU: the engine's clock times it)."""
        self.model(self.x)

    def run_ms(self) -> float:
        """One forward pass: CUDA events + synchronize on GPU, perf_counter_ns on CPU."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.x.device)
            start.record()
            self.model(self.x)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter_ns()
        self.model(self.x)
        return (time.perf_counter_ns() - t0) / 1e6


_with_batch = with_batch  # older name


def _stats(target: Any, timing: Timing, protocol: MeasureProtocol) -> LatencyStats:
    """LatencyStats of one item's Timing, labelled with the target's description and the protocol used."""
    info = target.describe()
    settings = {**info, **protocol.describe()}
    return timing.to_stats(protocol.warmup, str(info.get("device", target.name)), settings)


def _measure(target: Any, model_or_onnx: Any, input_shape: Sequence[int], protocol: MeasureProtocol) -> LatencyStats:
    """One item through the timing engine, shared by targets that implement prepare()."""
    return _stats(target, measure_interleaved(target, [(model_or_onnx, input_shape)], protocol)[0], protocol)


@dataclass
class OrtCpuTarget:
    """ONNX Runtime CPUExecutionProvider: `threads` intra-op threads, 1 inter-op thread, sequential, no spinning.

    Set OMP_WAIT_POLICY=PASSIVE before the process starts so torch's OpenMP pool does not compete.
    """

    threads: int = 1
    spinning: bool = False
    graph_optimization: str = "all"
    name: str = field(default="ort", init=False)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise TargetError(f"ort target needs threads >= 1, got {self.threads}")
        if self.graph_optimization not in _GRAPH_OPT:
            raise TargetError(f"graph_optimization must be one of {_GRAPH_OPT}, got {self.graph_optimization!r}")

    def session_options(self) -> Any:
        """onnxruntime.SessionOptions implementing this target's settings."""
        import onnxruntime as ort

        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = levels[self.graph_optimization]
        spin = "1" if self.spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        return so

    def prepare(self, model_or_onnx: Any, input_shape: Sequence[int]) -> OrtRunner:
        """Build a session (exporting an nn.Module at opset 13 to a temp dir first) and a random input feed."""
        shape = tuple(int(d) for d in input_shape)
        if isinstance(model_or_onnx, nn.Module):
            with tempfile.TemporaryDirectory(prefix="fxscale-ort-") as tmp:
                session = self._session(_export_for_timing(model_or_onnx, Path(tmp) / "model.onnx", shape))
        elif isinstance(model_or_onnx, (str, os.PathLike)):
            session = self._session(Path(model_or_onnx))
        else:
            raise TargetError(f"ort target times an nn.Module or an .onnx path, got {type(model_or_onnx).__name__}")
        return OrtRunner(session, _ort_feed(session, shape))

    def _session(self, path: Path) -> Any:
        """InferenceSession on CPUExecutionProvider; TargetError when the file is missing or invalid."""
        import onnxruntime as ort

        if not path.is_file():
            raise TargetError(f"ONNX file not found: {path}")
        try:
            return ort.InferenceSession(str(path), self.session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise TargetError(f"onnxruntime could not load {path.name}: {exc}") from exc

    def measure(self, model_or_onnx: Any, input_shape: Sequence[int],
                protocol: MeasureProtocol = PAPER_PROTOCOL) -> LatencyStats:
        """Time `protocol.runs` session runs after `protocol.warmup` warm-ups (batch = protocol.batch)."""
        return _measure(self, model_or_onnx, input_shape, protocol)

    def describe(self) -> dict[str, Any]:
        """CPU model, onnxruntime version, threads, spinning, optimisation level and providers."""
        import onnxruntime as ort

        cpu = cpu_model()
        return {"target": self.name, "device": f"{cpu} | onnxruntime {ort.__version__} | {self.threads} thread(s) | "
                                               f"CPUExecutionProvider", "cpu": cpu, "runtime": "onnxruntime",
                "runtime_version": ort.__version__, "threads": self.threads, "inter_op_threads": 1,
                "spinning": self.spinning, "graph_optimization": self.graph_optimization,
                "execution_mode": "sequential", "providers": ["CPUExecutionProvider"],
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def _export_for_timing(model: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    """Static-batch opset-13 export without numerical check (fast path for timing)."""
    from fxscale.export import export_onnx

    export_onnx(model, path, torch.randn(shape), opset=13, check=False)
    return path


def _ort_feed(session: Any, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Random input for a single-input session; TargetError when shape or dtype do not fit."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise TargetError(f"ort target times single-input models; this one has {[i.name for i in inputs]}")
    spec = inputs[0]
    if spec.type not in _ORT_DTYPES:
        raise TargetError(f"unsupported ONNX input type {spec.type} for {spec.name!r}")
    dims = list(spec.shape)
    if len(dims) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
        raise TargetError(f"input {spec.name!r} of the ONNX model has shape {dims}; cannot feed {list(shape)}")
    data = np.random.default_rng(0).standard_normal(shape).astype(_ORT_DTYPES[spec.type])
    return {spec.name: data}


@dataclass
class TorchTarget:
    """Eager PyTorch on CPU (`threads` intra-op threads) or CUDA (timed with CUDA events).

    Set OMP_WAIT_POLICY=PASSIVE before the process starts for stable single-thread CPU timings.
    """

    device: str = "cpu"
    threads: int = 1
    channels_last: bool = False
    name: str = field(default="torch", init=False)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise TargetError(f"torch target needs threads >= 1, got {self.threads}")
        try:
            dev = torch.device(self.device)
        except RuntimeError as exc:
            raise TargetError(f"invalid torch device {self.device!r}: {exc}") from exc
        if dev.type not in ("cpu", "cuda"):
            raise TargetError(f"torch target supports 'cpu' and 'cuda' devices, got {self.device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise TargetError(f"torch target device {self.device!r} requested but CUDA is not available here")

    def prepare(self, model_or_onnx: Any, input_shape: Sequence[int]) -> TorchRunner:
        """Eval-mode copy of the module on the device, plus a random input of `input_shape`."""
        if not isinstance(model_or_onnx, nn.Module):
            raise TargetError(f"torch target times nn.Modules, got {type(model_or_onnx).__name__}; "
                              f"use the 'ort' or 'trtexec' target for .onnx files")
        model = copy.deepcopy(model_or_onnx).eval().to(self.device)
        x = torch.randn(tuple(int(d) for d in input_shape), device=self.device)
        if self.channels_last:
            if x.dim() != 4:
                raise TargetError(f"channels_last needs a 4-d input, got shape {tuple(x.shape)}")
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return TorchRunner(model, x, self.threads)

    def measure(self, model_or_onnx: Any, input_shape: Sequence[int],
                protocol: MeasureProtocol = PAPER_PROTOCOL) -> LatencyStats:
        """Time `protocol.runs` forward passes after `protocol.warmup` warm-ups (batch = protocol.batch)."""
        return _measure(self, model_or_onnx, input_shape, protocol)

    def describe(self) -> dict[str, Any]:
        """Device name, torch version, threads and memory format."""
        on_gpu = torch.device(self.device).type == "cuda"
        hw = torch.cuda.get_device_name(torch.device(self.device)) if on_gpu else cpu_model()
        threads = "" if on_gpu else f" | {self.threads} thread(s)"
        return {"target": self.name, "device": f"{hw} | torch {torch.__version__}{threads}",
                "torch_device": self.device, "hardware": hw, "runtime": "torch",
                "runtime_version": torch.__version__, "threads": self.threads,
                "channels_last": self.channels_last, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def _tensorrt_target(**kwargs: Any) -> Target:
    """TensorRT via trtexec, imported lazily (needs the Jetson toolchain only when used)."""
    try:
        from fxscale.hw.trtexec import TensorRTTarget
    except ImportError as exc:
        raise TargetError(f"the 'trtexec' target is unavailable: {exc}") from exc
    return TensorRTTarget(**kwargs)


def _hybrid_target(**kwargs: Any) -> Target:
    """The model under an `fxscale optimize` inference plan (fxscale.optimize.target), imported lazily."""
    from fxscale.optimize.target import HybridTarget
    return HybridTarget(**kwargs)


TargetFactory = Callable[..., Target]
BUILTIN_TARGETS: Mapping[str, TargetFactory] = MappingProxyType(
    {"ort": OrtCpuTarget, "torch": TorchTarget, "trtexec": _tensorrt_target, "hybrid": _hybrid_target})


class TargetRegistry:
    """Named target factories: built-ins plus whatever callers register on this instance."""

    def __init__(self, factories: Mapping[str, TargetFactory] = BUILTIN_TARGETS) -> None:
        self._factories: dict[str, TargetFactory] = dict(factories)

    def register(self, name: str, factory: TargetFactory, replace: bool = False) -> None:
        """Add a factory under `name`; refuses to shadow an existing name unless `replace`."""
        if not isinstance(name, str) or not name:
            raise TargetError(f"target name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise TargetError(f"factory for target {name!r} is not callable")
        if name in self._factories and not replace:
            raise TargetError(f"target {name!r} is already registered (pass replace=True to override)")
        self._factories[name] = factory

    def names(self) -> list[str]:
        """Registered target names, sorted."""
        return sorted(self._factories)

    def create(self, name: str, **kwargs: Any) -> Target:
        """Instantiate target `name` with `kwargs`; TargetError lists the valid names when unknown."""
        factory = self._factories.get(name)
        if factory is None:
            raise TargetError(f"unknown target {name!r}; valid targets: {', '.join(self.names())}")
        try:
            return factory(**kwargs)
        except TypeError as exc:
            raise TargetError(f"target {name!r} rejected options {sorted(kwargs)}: {exc}") from exc


DEFAULT_REGISTRY = TargetRegistry()


def get_target(name: str, **kwargs: Any) -> Target:
    """Create a target by name from the default registry (e.g. get_target("ort", threads=1))."""
    return DEFAULT_REGISTRY.create(name, **kwargs)


def list_targets() -> list[str]:
    """Names accepted by get_target."""
    return DEFAULT_REGISTRY.names()


def register_target(name: str, factory: TargetFactory, replace: bool = False) -> None:
    """Register a target factory in the default registry."""
    DEFAULT_REGISTRY.register(name, factory, replace=replace)


# ---------------------------------------------------------------- interleaved A/B comparison

@dataclass
class ABResult:
    """Latency of models A and B timed in alternating rounds; ratios are B/A per round (in round order).

    ratio_median is their median, [ratio_low, ratio_high] an order-statistic interval covering it with probability
    `confidence` (see fxscale.hw.timing.median_ratio_interval).
    """

    a: LatencyStats
    b: LatencyStats
    ratio_median: float
    ratio_mean: float
    ratios: list[float]
    ratio_low: float = float("nan")
    ratio_high: float = float("nan")
    confidence: float = float("nan")


def compare_interleaved(target: Target, model_a: Any, model_b: Any, input_shape: Sequence[int],
                        protocol: MeasureProtocol = PAPER_PROTOCOL, rounds: int | None = None,
                        input_shape_b: Sequence[int] | None = None, confidence: float = 0.95) -> ABResult:
    """Time A and B in one measure_interleaved run (A,B then B,A … by default) to cancel machine drift.

    `rounds` overrides protocol.rounds (default 5); the B/A ratio of every round gives the median and its interval.
    """
    proto = protocol if rounds is None else dc_replace(protocol, rounds=rounds)  # TargetError naming a bad rounds
    shape_b = input_shape if input_shape_b is None else input_shape_b
    ta, tb = measure_interleaved(target, [(model_a, input_shape), (model_b, shape_b)], proto)
    ci = tb.ratio_to(ta, confidence)
    ratios = list(ci.ratios)
    finite = [r for r in ratios if not math.isnan(r)]
    return ABResult(a=_stats(target, ta, proto), b=_stats(target, tb, proto), ratio_median=ci.ratio,
                    ratio_mean=statistics.fmean(finite) if finite else math.nan, ratios=ratios,
                    ratio_low=ci.low, ratio_high=ci.high, confidence=ci.confidence)
