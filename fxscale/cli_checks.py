"""Checks of command-line options that run before any model is built, traced or timed (each well under a second).

Every check raises FxscaleError with one line naming the option (``label``: ``--workers`` on the command line,
``workers`` from the Python API) and, where there is one, the unit. The argparse ``type=`` converters below raise
argparse.ArgumentTypeError instead, which OneLineParser prints as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional, Sequence

from fxscale.errors import FxscaleError

TRAIN_DEVICES = ("cpu", "cuda", "auto")
EXECUTOR_NAMES = ("local", "ray")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2), naming the option."""

    def error(self, message: str) -> NoReturn:
        """Print `PROG: error: MESSAGE (see PROG --help)` and exit 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends with "(default: X)" ("none" for None, "off" for a flag) unless the text states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if not action.option_strings or action.required or default is argparse.SUPPRESS or "default" in text or \
                action.nargs == 0 and default is None:
            return text
        shown = "none" if default is None else "off" if default is False else "%(default)s"
        return f"{text} (default: {shown})"


# ---- argparse converters ---------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """An int >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """A finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def float_list(text: str) -> tuple[float, ...]:
    """Comma-separated finite floats."""
    return tuple(finite_float(v) for v in text.split(",") if v.strip())


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (as for --data-kw)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}): {text!r}; give an "
                                         "object such as '{\"train_fraction\": 0.25}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"train_fraction\": 0.25}}', got "
                                         f"{type(value).__name__} {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


# ---- checks ----------------------------------------------------------------------------------------------
def fail(message: str) -> NoReturn:
    """Raise the one-line FxscaleError every check raises."""
    raise FxscaleError(message)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, label: str, path: Any) -> None:
    """Create and remove an empty folder in `folder` (os.access does not see read-only mounts or root's limits)."""
    try:
        probe = tempfile.mkdtemp(prefix=".fxscale-probe-", dir=folder)
    except OSError as e:
        fail(f"{label} {path}: cannot write in {folder} ({e.strerror or e})")
    os.rmdir(probe)


def check_out_dir(path: Any, label: str = "--out") -> None:
    """An output folder: an existing writable folder, or one that can be created (nothing is created here)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        fail(f"{label} {path} is a file, not a folder; give a folder path")
    base = _nearest_existing(p)
    if not base.is_dir():
        fail(f"{label} {path}: {base} is a file, so the folder cannot be created there")
    _probe_writable(base, label, path)


def check_out_file(path: Any, label: str = "--out") -> None:
    """An output file: not a folder, in a folder that exists or can be created, writable."""
    p = Path(path)
    if p.is_dir():
        fail(f"{label} {path} is a folder; give a file path such as {p / 'result.json'}")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        fail(f"{label} {path}: {base} is a file, so the file cannot be written below it")
    _probe_writable(base, label, path)


def check_in_file(path: Any, label: str) -> None:
    """An input file that exists and is readable."""
    p = Path(path)
    if not p.exists():
        fail(f"{label} {path}: no such file")
    if not p.is_file():
        fail(f"{label} {path} is a folder, not a file")
    if not os.access(p, os.R_OK):
        fail(f"{label} {path}: not readable (permission denied)")


def check_train_device(value: str, label: str = "--device") -> None:
    """A training device: cpu, cuda (when torch sees one) or auto."""
    if value not in TRAIN_DEVICES:
        fail(f"{label} {value!r} is not a training device; use one of {', '.join(TRAIN_DEVICES)}")
    if value == "cuda":
        _need_cuda(value, label)


def check_torch_device(value: str, label: str = "--device") -> None:
    """A torch device string (cpu, cuda, cuda:N) that exists on this machine."""
    import torch
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        fail(f"{label} {value!r} is not a device; use cpu, cuda or cuda:N")
    if dev.type not in ("cpu", "cuda"):
        fail(f"{label} {value!r}: only cpu and cuda devices are supported")
    if dev.type == "cuda":
        _need_cuda(value, label)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            fail(f"{label} {value}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                 f"numbered 0..{torch.cuda.device_count() - 1}")


def _need_cuda(value: str, label: str) -> None:
    import torch
    if not torch.cuda.is_available():
        fail(f"{label} {value}: torch sees no CUDA device on this machine; use {label} cpu")


def check_executor(name: str, workers: int, label: str = "--executor", workers_label: str = "--workers") -> None:
    """A known executor whose package is importable, and workers >= 1."""
    if name not in EXECUTOR_NAMES:
        fail(f"{label} {name!r} is not an executor; use one of {', '.join(EXECUTOR_NAMES)}")
    if name == "ray" and importlib.util.find_spec("ray") is None:
        fail(f"{label} ray needs the optional package ray, which is not installed: pip install 'fxscale[ray]' "
             f"(or use {label} local {workers_label} N)")
    if workers < 1:
        fail(f"{workers_label} must be >= 1 (parallel training processes), got {workers}")


_NUMBER = r"([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?)"
UNITS = {"latency": "ms", "memory": "params"}


def parse_budget_text(value: Any, what: str, label: str) -> tuple[Optional[str], Optional[float]]:
    """("ratio" | "absolute" | None, number) of a budget: '1.05x', '2.5ms' / '120000', or none."""
    if value is None or str(value).strip().lower() == "none":
        return None, None
    unit = UNITS[what]
    text = str(value).strip().lower()
    example = "2.5ms" if what == "latency" else "120000"
    ratio = re.fullmatch(_NUMBER + r"\s*x", text)
    absolute = re.fullmatch(_NUMBER + rf"\s*(?:{unit})?", text)
    if not (ratio or absolute):
        fail(f"{label} {value!r} is not a budget; give a ratio of the baseline such as 1.05x, an absolute "
             f"{what} in {unit} such as {example}, or none")
    number = float((ratio or absolute).group(1))  # type: ignore[union-attr]
    if not math.isfinite(number) or number <= 0:
        fail(f"{label} {value} must be > 0 (a ratio such as 1.05x or an absolute {what} in {unit})")
    if ratio and number < 1:
        fail(f"{label} {value} is below the baseline's own {what} (1x): a budget allows at least the model "
             f"it starts from; give a ratio >= 1x such as 1.05x")
    return ("ratio" if ratio else "absolute"), number


def check_opset(opset: int, label: str = "--opset") -> None:
    """An ONNX opset the TorchScript exporter writes."""
    lo, hi = opset_range()
    if not lo <= opset <= hi:
        fail(f"{label} {opset} is outside the supported ONNX opsets {lo}..{hi}")


def opset_range() -> tuple[int, int]:
    """(lowest, highest) opset of torch's TorchScript ONNX exporter."""
    try:
        from torch.onnx import _constants as c
        return int(c.ONNX_MIN_OPSET), int(getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):
        return 7, 20


def check_trtexec(path: str, label: str = "--trtexec") -> None:
    """The trtexec binary exists (a name on PATH or a path)."""
    if shutil.which(path) is None:
        fail(f"{label} {path!r}: trtexec binary not found on this machine; give its full path, e.g. {label} "
             "/usr/src/tensorrt/bin/trtexec")


def check_target(name: str, label: str = "--target") -> None:
    """A registered device target."""
    from fxscale.hw.targets import list_targets
    if name not in list_targets():
        fail(f"{label}: unknown target {name!r}; valid targets: {', '.join(list_targets())}")


def check_dataset(name: str, label: str = "--data") -> None:
    """A registered dataset."""
    from fxscale.data import list_datasets
    if name not in list_datasets():
        fail(f"{label}: unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")


def check_resolution(values: Optional[Sequence[int]], label: str = "--resolution") -> Optional[tuple[int, int]]:
    """(H, W) from one or two positive ints, or None."""
    if not values:
        return None
    if len(values) > 2:
        fail(f"{label} takes H or H W (pixels), got {len(values)} values")
    hw = (list(values) * 2)[:2]
    return int(hw[0]), int(hw[1])


def resolve_leaf(name: str, label: str = "--leaf") -> type:
    """The nn.Module subclass named `pkg.mod.Class`, `pkg.mod:Class` or `path/to/file.py:Class`."""
    from torch import nn
    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not module_name or not attr:
        fail(f"{label} {name!r}: give a class as pkg.module.Class")
    try:
        if module_name.endswith(".py"):  # path/to/file.py:Class, the same module as a file.py:callable MODEL
            from fxscale.modelspec import file_module
            obj: Any = file_module(Path(module_name), name)
        else:
            obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as e:
        fail(f"{label} {name}: cannot import module {module_name!r} ({e})")
    except FxscaleError as e:
        fail(f"{label} {name}: {e}")
    except AttributeError:
        fail(f"{label} {name}: module {module_name!r} has no attribute {attr!r}")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        fail(f"{label} {name} is not an nn.Module subclass")
    return obj


def resolve_leaves(names: Optional[Sequence[str]], label: str = "--leaf") -> tuple[type, ...]:
    """Every --leaf class."""
    return tuple(resolve_leaf(n, label) for n in names or ())


def check_model_spec(spec: str, label: str = "MODEL") -> None:
    """A zoo name, `module:callable` or `path/to/file.py:callable` (importable); nothing is built."""
    from fxscale.modelspec import check_spec
    check_spec(spec, label)


def traceback_wanted(argv: Sequence[str]) -> bool:
    """--traceback on the command line or FXSCALE_TRACEBACK=1 in the environment."""
    return "--traceback" in argv or os.environ.get("FXSCALE_TRACEBACK", "") not in ("", "0")


@contextlib.contextmanager
def torch_noise_captured() -> Iterator[None]:
    """Hold back what Python code writes to sys.stderr inside the block (torch's ShapeProp prints a traceback
    before raising, even when fxscale then recovers or raises its own one-line error); shown under --traceback."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:
        if held.getvalue() and traceback_wanted(sys.argv):
            sys.stderr.write(held.getvalue())


@contextlib.contextmanager
def native_output_captured(fds: Sequence[int] = (1, 2)) -> Iterator[None]:
    """Hold back what native code writes to file descriptors 1 and 2 inside the block (torch.onnx logs the whole
    Torch IR graph to stdout before it raises); shown on stderr under --traceback / FXSCALE_TRACEBACK=1."""
    with contextlib.ExitStack() as stack:
        held = stack.enter_context(tempfile.TemporaryFile())
        saved: list[tuple[int, int]] = []
        try:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                os.dup2(held.fileno(), fd)
        except (OSError, ValueError, AttributeError):  # no usable descriptors (embedded interpreters): no capture
            pass
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            if saved and traceback_wanted(sys.argv):
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def stderr_line(text: str) -> None:
    """One line on stderr (logs, warnings, errors)."""
    print(text, file=sys.stderr, flush=True)


__all__ = ["HelpFormatter", "OneLineParser", "check_dataset", "check_executor", "check_in_file", "check_model_spec", "check_opset",
           "check_out_dir", "check_out_file", "check_resolution", "check_target", "check_torch_device",
           "check_train_device", "check_trtexec", "fail", "finite_float", "float_list", "json_object",
           "nonnegative_int", "opset_range", "parse_budget_text", "positive_float", "positive_int", "resolve_leaf",
           "native_output_captured", "resolve_leaves", "stderr_line", "torch_noise_captured", "traceback_wanted"]
