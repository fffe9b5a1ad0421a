"""Optional inference-only simplification of the exported ONNX graph with onnxslim.

Why onnxslim and not onnxsim: both are maintained, and here (Python 3.11, x86-64) both install — `pip download
onnxsim` fetches onnxsim 0.8.1 as a cp311 manylinux wheel — so availability on this machine is not the reason.
onnxslim is pure Python (a ``py3-none-any`` wheel), so it installs on any Python version and platform (aarch64
Jetsons, new CPython releases) without waiting for a compiled extension, and it is already installed beside fxscale;
onnxsim's C++ extension must be built per Python version and platform. The simplified model is checked against the
input model with onnxruntime (max abs diff reported), and nothing is written when the check fails.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fxscale.errors import ExportError


@dataclass(frozen=True)
class SimplifyReport:
    """Node counts before and after, the onnxslim version and the max abs diff on a random input."""

    nodes_before: int
    nodes_after: int
    max_abs_diff: float
    version: str

    def to_dict(self) -> dict[str, Any]:
        return {"nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "max_abs_diff": self.max_abs_diff, "onnxslim": self.version}


def _run(model: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def simplify_onnx(src: str | Path, dst: str | Path, atol: float = 1e-4, seed: int = 0) -> SimplifyReport:
    """Simplify `src` with onnxslim into `dst`, checked with onnxruntime (ExportError when it does not match)."""
    try:
        import onnxslim
    except ImportError as e:
        raise ExportError(f"ONNX simplification needs onnxslim: pip install 'fxscale[onnxslim]' ({e})") from e
    import onnx
    model = onnx.load(str(src))
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise ExportError(f"onnxslim could not simplify {src}: {type(e).__name__}: {e}") from e
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        feed[inp.name] = rng.standard_normal(dims).astype(np.float32)
    want, got = _run(model, feed), _run(slim, feed)
    diff = max((float(np.abs(a - b).max()) for a, b in zip(got, want) if a.size), default=0.0)
    scale = max([1.0] + [float(np.abs(w).max()) for w in want if w.size])
    if len(got) != len(want) or diff > atol * scale:
        raise ExportError(f"onnxslim changed the outputs of {src} (max abs diff {diff:.2e})")
    onnx.save(slim, str(dst))
    return SimplifyReport(len(model.graph.node), len(slim.graph.node), diff, onnxslim.__version__)


__all__ = ["SimplifyReport", "simplify_onnx"]
