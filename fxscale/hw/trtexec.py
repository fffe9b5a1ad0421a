"""TensorRTTarget: time models with NVIDIA trtexec, on this machine or on a Jetson reached through a prefix (ssh)."""
from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fxscale.errors import TargetError
from fxscale.hw import trtparse
from fxscale.hw.base import PAPER_PROTOCOL, LatencyStats, MeasureProtocol

METRICS = {"gpu": "computeMs", "host": "latencyMs"}
_HOW_TO = ("pass TensorRTTarget(trtexec='/usr/src/tensorrt/bin/trtexec') with the full path, or "
           "prefix=['ssh', '<board>'] to run trtexec on a Jetson")


class TensorRTTarget:
    """Times an ONNX file or nn.Module with trtexec: batch 1, warm-up (ms), `protocol.runs` timed iterations.

    Latency samples come from `--exportTimes` (GPU compute time `computeMs` by default, `metric="host"` for
    H2D + compute + D2H), else from the console summary. With `prefix` (e.g. ["ssh", "tx2"]) every command runs
    through it, and files move with `copy_cmd` (e.g. scp) to and from `remote_workdir` on `remote_host`
    (default: the last prefix item); remote paths must not contain spaces (ssh joins the arguments).
    """

    def __init__(self, trtexec: str = "trtexec", prefix: Sequence[str] | None = None, precision: str = "fp32",
                 workdir: str | Path | None = None, version: str | Sequence[int] | None = None, *,
                 copy_cmd: Sequence[str] = ("scp", "-q"), remote_host: str | None = None,
                 remote_workdir: str = "/tmp/fxscale-trt", warmup_ms: float = 500.0,
                 workspace_mib: int | None = None, metric: str = "gpu", timeout_s: float = 3600.0) -> None:
        if precision not in trtparse.PRECISIONS:
            raise TargetError(f"precision must be one of {trtparse.PRECISIONS}, got {precision!r}")
        if metric not in METRICS:
            raise TargetError(f"metric must be 'gpu' (GPU compute) or 'host' (H2D+compute+D2H), got {metric!r}")
        self.trtexec, self.precision, self.metric = trtexec, precision, metric
        self.prefix = list(prefix) if prefix else []
        self.workdir = Path(workdir) if workdir is not None else None
        self.copy_cmd, self.remote_workdir = list(copy_cmd), remote_workdir
        self.remote_host = remote_host or (self.prefix[-1] if self.prefix else None)
        self.warmup_ms, self.workspace_mib, self.timeout_s = float(warmup_ms), workspace_mib, float(timeout_s)
        self._version = _as_version(version)
        self.name = f"tensorrt-{precision}"

    # ------------------------------------------------------------------------------------- public API
    @property
    def version(self) -> tuple[int, ...]:
        """TensorRT version: the one given, else read once from the `trtexec --help` banner."""
        self._check_binary()
        if self._version is None:
            self._version = self._detect_version()
        return self._version

    def describe(self) -> dict[str, Any]:
        """trtexec path, prefix, precision and TensorRT version (None when trtexec cannot be reached)."""
        try:
            version = trtparse.format_version(self._version or self.version)
        except TargetError:
            version = None
        where = f" via {' '.join(self.prefix)}" if self.prefix else ""
        return {"target": self.name, "device": f"TensorRT {version or '?'} {self.precision}{where}",
                "runtime": "tensorrt", "runtime_version": version, "precision": self.precision,
                "trtexec": self.trtexec, "prefix": self.prefix or None, "metric": self.metric,
                "warmup_ms": self.warmup_ms}

    def measure(self, model_or_onnx: Any, input_shape: Sequence[int],
                protocol: MeasureProtocol = PAPER_PROTOCOL) -> LatencyStats:
        """Run trtexec on the model at (protocol.batch, *input_shape[1:]) and summarise the timed iterations."""
        shape = _with_batch(input_shape, protocol.batch)
        version = self.version  # fails early (TargetError) when trtexec cannot be reached
        with self._local_dir() as work:
            onnx = self._onnx_file(model_or_onnx, shape, work)
            shapes = _input_shapes(onnx, shape)
            remote = self._stage(onnx, work)
            argv = trtparse.trtexec_command(
                version, onnx=remote["onnx"], shapes=shapes, precision=self.precision,
                warmup_ms=self.warmup_ms, iterations=protocol.runs, duration_s=0,
                export_times=remote["times"], workspace_mib=self.workspace_mib, trtexec=self.trtexec)
            log = self._run(argv)
            times = self._fetch(remote["times"], work / "times.json")
            return self._stats(log, times, argv, protocol)

    # ------------------------------------------------------------------------------------ processes
    def _run(self, argv: Sequence[str], check: bool = True) -> str:
        """Run argv (through the prefix); combined output, TargetError when missing, failing or timing out."""
        full = [*self.prefix, *argv]
        try:
            done = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=self.timeout_s, check=False)
        except FileNotFoundError as exc:
            raise TargetError(f"{full[0]!r} not found ({exc}); {_HOW_TO}") from exc
        except subprocess.TimeoutExpired as exc:
            raise TargetError(f"{' '.join(full)} did not finish within {self.timeout_s:g} s") from exc
        out = done.stdout.decode("utf-8", "replace")
        if done.returncode == 127:
            raise TargetError(f"{argv[0]!r} not found{' on ' + self.remote_host if self.prefix else ''}; {_HOW_TO}")
        if check and done.returncode != 0:
            tail = "\n".join(out.splitlines()[-15:])
            raise TargetError(f"{Path(argv[0]).name} failed with exit status {done.returncode}; "
                              f"last lines of its log:\n{tail}")
        return out

    def _check_binary(self) -> None:
        """TargetError early when a local trtexec is not on PATH / not a file."""
        if not self.prefix and shutil.which(self.trtexec) is None:
            raise TargetError(f"trtexec binary {self.trtexec!r} not found on this machine; {_HOW_TO}")

    def _detect_version(self) -> tuple[int, ...]:
        """Version from the banner of `trtexec --help` ((7,) for the unversioned 7.x banner)."""
        version = trtparse.parse_trtexec_version(self._run([self.trtexec, "--help"], check=False))
        if version is None:
            raise TargetError(f"could not read the TensorRT version from `{self.trtexec} --help`; "
                              f"pass TensorRTTarget(version='8.2.1')")
        return version

    # --------------------------------------------------------------------------------------- files
    @contextmanager
    def _local_dir(self) -> Iterator[Path]:
        """The configured workdir (kept), else a temporary directory (removed)."""
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            yield Path(tempfile.mkdtemp(prefix="trt-", dir=self.workdir))
            return
        with tempfile.TemporaryDirectory(prefix="fxscale-trt-") as tmp:
            yield Path(tmp)

    def _onnx_file(self, model_or_onnx: Any, shape: tuple[int, ...], work: Path) -> Path:
        """The .onnx to time: the given path, or the module exported at opset 13 into `work`."""
        if isinstance(model_or_onnx, (str, Path)):
            path = Path(model_or_onnx)
            if not path.is_file():
                raise TargetError(f"ONNX file not found: {path}")
            return path.resolve()
        import torch  # lazy: parsing and remote timing of .onnx files need no torch

        if not isinstance(model_or_onnx, torch.nn.Module):
            raise TargetError(f"TensorRTTarget times an nn.Module or an .onnx path, got {type(model_or_onnx).__name__}")
        from fxscale.export import export_onnx  # lazy: imports onnx / onnxruntime

        path = work / "model.onnx"
        export_onnx(model_or_onnx, path, torch.randn(*shape), opset=13)
        return path

    def _stage(self, onnx: Path, work: Path) -> dict[str, str]:
        """Paths trtexec sees; with a prefix, the ONNX file is copied to remote_workdir first."""
        if not self.prefix:
            return {"onnx": str(onnx), "times": str(work / "times.json")}
        stem = f"{onnx.stem}-{uuid.uuid4().hex[:8]}"
        remote = {"onnx": f"{self.remote_workdir}/{stem}.onnx", "times": f"{self.remote_workdir}/{stem}.times.json"}
        self._run(["mkdir", "-p", self.remote_workdir])
        self._copy(str(onnx), f"{self.remote_host}:{remote['onnx']}")
        return remote

    def _copy(self, src: str, dst: str) -> None:
        """Run the copy command (scp-like: SRC DST)."""
        try:
            done = subprocess.run([*self.copy_cmd, src, dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=self.timeout_s, check=False)
        except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
            raise TargetError(f"copy command {self.copy_cmd} failed: {exc}") from exc
        if done.returncode != 0:
            raise TargetError(f"copy {src} -> {dst} failed ({done.returncode}): "
                              f"{done.stdout.decode('utf-8', 'replace').strip()[-500:]}")

    def _fetch(self, trt_path: str, local: Path) -> Path | None:
        """Local copy of a file trtexec wrote (None when it did not write it)."""
        if not self.prefix:
            return Path(trt_path) if Path(trt_path).is_file() else None
        try:
            self._copy(f"{self.remote_host}:{trt_path}", str(local))
        except TargetError:
            return None
        return local

    # --------------------------------------------------------------------------------------- results
    def _stats(self, log: str, times: Path | None, argv: list[str], protocol: MeasureProtocol) -> LatencyStats:
        """LatencyStats from --exportTimes samples, else from the console summary."""
        try:
            console = trtparse.parse_trtexec_log(log)
        except ValueError as exc:
            tail = "\n".join(log.splitlines()[-15:])
            raise TargetError(f"trtexec finished without a timing summary ({exc}); last lines:\n{tail}") from exc
        settings = {**self.describe(), "dialect": console["dialect"], "argv": argv, "batch": protocol.batch,
                    "statistic": protocol.statistic, "throughput_qps": console["throughput_qps"],
                    "cov_percent": console["cov_percent"]}
        device = console["device"] or settings["device"]
        if times is not None:
            trace = trtparse.parse_export_times(trtparse.load_json_file(times, "--exportTimes"),
                                                warmup_ms=self.warmup_ms, includes_warmup=self.version < (8, 5))
            settings["source"] = "exportTimes"
            warmup = trace["dropped_warmup"] or int(console["warmup_queries"] or 0)
            return LatencyStats.from_samples(trace[METRICS[self.metric]], warmup, device, settings)
        return _console_stats(console, self.metric, device, {**settings, "source": "console"})


def _as_version(version: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """Version tuple of a user-given version; TargetError when unreadable."""
    try:
        return trtparse.as_version(tuple(version) if isinstance(version, (list, tuple)) else version)
    except ValueError as exc:
        raise TargetError(str(exc)) from exc


def _with_batch(input_shape: Sequence[int], batch: int) -> tuple[int, ...]:
    """`input_shape` (N, C, H, W) with N replaced by the protocol's batch size."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise TargetError(f"input_shape must be (N, C, ...) with positive sizes, got {tuple(input_shape)}")
    return (batch, *shape[1:])


def _input_shapes(onnx: Path, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """{input name: shape} for --shapes; TargetError for multi-input models or a static-shape mismatch."""
    try:
        inputs = trtparse.onnx_info(onnx)["inputs"]
    except ValueError as exc:
        raise TargetError(str(exc)) from exc
    if len(inputs) != 1:
        raise TargetError(f"{onnx.name} has {len(inputs)} graph inputs; TensorRTTarget times single-input models")
    name, dims = inputs[0]
    static = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if len(dims) != len(shape) or any(s is not None and s != want for s, want in zip(static, shape, strict=True)):
        raise TargetError(f"{onnx.name} input {name!r} has shape {dims}, which does not accept {list(shape)}")
    return {name: shape}


def _console_stats(console: dict[str, Any], metric: str, device: str, settings: dict[str, Any]) -> LatencyStats:
    """LatencyStats from the console summary (no per-run samples; p10 is unknown -> nan)."""
    summary = console["gpu_compute" if metric == "gpu" else "host_latency"]
    pct = summary.get("percentiles", {})
    mean = summary.get("mean", summary.get("median"))
    return LatencyStats(mean=mean, median=summary.get("median", mean), p10=math.nan, p90=pct.get("90", math.nan),
                        runs=int(console["timed_queries"] or 0), warmup=int(console["warmup_queries"] or 0),
                        device=device, settings=settings)
