"""fxscale: a torch.fx compiler for hardware-aware model scaling (HACScale)."""
from fxscale.analysis.graph import ChannelGraph, ChannelGroup, analyze
from fxscale.api import transform
from fxscale.errors import FxscaleError, PlanError, TargetError, TraceError, VerificationError
from fxscale.plan import ScalingPlan
from fxscale.tracing import trace


def export_onnx(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy re-export
    """Export to one self-contained ONNX file, checked and compared with onnxruntime (see fxscale.export)."""
    from fxscale.export import export_onnx as _export
    return _export(*args, **kwargs)


__all__ = ["ChannelGraph", "ChannelGroup", "FxscaleError", "PlanError", "ScalingPlan", "TargetError", "TraceError",
           "VerificationError", "analyze", "export_onnx", "trace", "transform"]
__version__ = "0.1.0"
