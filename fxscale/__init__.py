"""fxscale: a torch.fx compiler for hardware-aware model scaling (HACScale)."""
from fxscale._version import __version__ as __version__  # the one version source (pyproject reads it too)
from fxscale.analysis.graph import ChannelGraph, ChannelGroup, analyze
from fxscale.api import transform
from fxscale.cost import CostReport, cost
from fxscale.errors import FxscaleError, PlanError, TargetError, TraceError, VerificationError
from fxscale.plan import ScalingPlan
from fxscale.tracing import trace, train_graph_module


def export_onnx(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy re-export
    """Export to one self-contained ONNX file, checked and compared with onnxruntime (see fxscale.export)."""
    from fxscale.export import export_onnx as _export
    return _export(*args, **kwargs)


def __getattr__(name: str):
    """Lazy access to the hardware, data and training APIs (they import onnxruntime/sklearn)."""
    lazy = {"get_target": "fxscale.hw.targets", "list_targets": "fxscale.hw.targets",
            "compare_interleaved": "fxscale.hw.targets", "get_dataset": "fxscale.data",
            "list_datasets": "fxscale.data", "TrainConfig": "fxscale.train", "train": "fxscale.train",
            "evaluate": "fxscale.train", "get_executor": "fxscale.executor", "zoo": "fxscale.zoo",
            "scale": "fxscale.scaling.pipeline", "ScaleConfig": "fxscale.scaling.pipeline",
            "importance": "fxscale.scaling.importance", "Importance": "fxscale.scaling.importance",
            "load": "fxscale.artifacts", "optimize": "fxscale.optimize",
            "accelerate": "fxscale.hant.api"}
    if name in lazy:
        import importlib
        mod = importlib.import_module(lazy[name])
        return mod if name in ("zoo", "optimize") else getattr(mod, name)
    raise AttributeError(f"module 'fxscale' has no attribute {name!r}")


__all__ = ["ChannelGraph", "ChannelGroup", "CostReport", "cost", "FxscaleError", "PlanError", "ScalingPlan", "TargetError", "TraceError",
           "VerificationError", "analyze", "export_onnx", "trace", "train_graph_module", "transform"]
