"""Device targets (ONNX Runtime CPU, PyTorch CPU/CUDA, TensorRT via trtexec), their registry, and A/B timing.

CPU timing hygiene: set ``OMP_WAIT_POLICY=PASSIVE`` in the environment *before* the Python process starts
(OpenMP reads it once at load time; the fxscale CLI sets it), so idle OpenMP workers of torch do not spin
and steal cycles from the timed runtime. ONNX Runtime spinning is switched off per session instead.
"""
from __future__ import annotations

import copy
import os
import platform
import re
import statistics
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fxscale.errors import TargetError
from fxscale.hw.base import PAPER_PROTOCOL, LatencyStats, MeasureProtocol, Target

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
    """A model prepared on a target (session built, weights loaded): run_ms() times one batch."""

    @abstractmethod
    def run_ms(self) -> float:
        """Run one inference and return its latency in milliseconds."""

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

    def run_ms(self) -> float:
        """One session.run, timed with perf_counter_ns."""
        t0 = time.perf_counter_ns()
        self.session.run(None, self.feed)
        return (time.perf_counter_ns() - t0) / 1e6


class TorchRunner(Runner):
    """An eval-mode module copy and its input on one torch device."""

    def __init__(self, model: nn.Module, x: torch.Tensor, threads: int) -> None:
        self.model, self.x, self.threads = model, x, threads
        self.cuda = x.device.type == "cuda"

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


def _with_batch(input_shape: Sequence[int], batch: int) -> tuple[int, ...]:
    """`input_shape` (N, C, H, W) with N replaced by the protocol's batch size."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise TargetError(f"input_shape must be (N, C, ...) with positive sizes, got {tuple(input_shape)}")
    return (batch, *shape[1:])


def _stats(target: Any, samples: list[float], protocol: MeasureProtocol) -> LatencyStats:
    """LatencyStats labelled with the target's description and the protocol used."""
    info = target.describe()
    settings = {**info, "batch": protocol.batch, "statistic": protocol.statistic}
    return LatencyStats.from_samples(samples, protocol.warmup, str(info.get("device", target.name)), settings)


def _measure(target: Any, model_or_onnx: Any, input_shape: Sequence[int], protocol: MeasureProtocol) -> LatencyStats:
    """prepare + warm-up + timed runs, shared by targets that implement prepare()."""
    runner = target.prepare(model_or_onnx, _with_batch(input_shape, protocol.batch))
    runner.sample(protocol.warmup)
    return _stats(target, runner.sample(protocol.runs), protocol)


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


TargetFactory = Callable[..., Target]
BUILTIN_TARGETS: Mapping[str, TargetFactory] = MappingProxyType(
    {"ort": OrtCpuTarget, "torch": TorchTarget, "trtexec": _tensorrt_target})


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
    """Latency of models A and B timed in alternating rounds; ratios are B/A."""

    a: LatencyStats
    b: LatencyStats
    ratio_median: float
    ratio_mean: float
    ratios: list[float]


def _round_sizes(runs: int, rounds: int) -> list[int]:
    """Split `runs` timed runs into at most `rounds` near-equal, non-empty chunks."""
    rounds = min(rounds, runs)
    return [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]


def _samplers(target: Any, models: Sequence[Any], shapes: Sequence[Sequence[int]],
              protocol: MeasureProtocol) -> list[Callable[[int], list[float]]]:
    """Per-model `n -> samples` functions: prepared runners when the target has prepare(), else measure()."""
    if hasattr(target, "prepare"):
        runners = [target.prepare(m, _with_batch(s, protocol.batch)) for m, s in zip(models, shapes)]
        for runner in runners:
            runner.sample(protocol.warmup)
        return [r.sample for r in runners]
    return [lambda n, m=m, s=s: target.measure(m, s, dc_replace(protocol, runs=n)).samples_ms
            for m, s in zip(models, shapes)]


def compare_interleaved(target: Target, model_a: Any, model_b: Any, input_shape: Sequence[int],
                        protocol: MeasureProtocol = PAPER_PROTOCOL, rounds: int = 5,
                        input_shape_b: Sequence[int] | None = None) -> ABResult:
    """Time A and B alternately (A,B then B,A …) in `rounds` rounds of one run to cancel machine drift."""
    if rounds < 1:
        raise TargetError(f"rounds must be >= 1, got {rounds}")
    shapes = (input_shape, input_shape if input_shape_b is None else input_shape_b)
    sample = _samplers(target, (model_a, model_b), shapes, protocol)
    pick = statistics.fmean if protocol.statistic == "mean" else statistics.median
    got: tuple[list[float], list[float]] = ([], [])
    ratios = []
    for k, n in enumerate(_round_sizes(protocol.runs, rounds)):
        this_round: dict[int, list[float]] = {}
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            this_round[i] = sample[i](n)
            got[i].extend(this_round[i])
        ratios.append(pick(this_round[1]) / pick(this_round[0]))
    a, b = (_stats(target, samples, protocol) for samples in got)
    return ABResult(a=a, b=b, ratio_median=statistics.median(ratios), ratio_mean=statistics.fmean(ratios),
                    ratios=ratios)
