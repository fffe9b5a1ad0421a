"""The `hybrid` device target: time a model as it ships, under an `fxscale optimize` inference plan.

`get_target("hybrid", plan="OUT")` (OUT: an `fxscale optimize` output folder or its inference_plan.json) prepares a
model by tracing it, running the plan's graph passes and building the hybrid module with the plan's per-partition
backends (`fxscale.optimize.rebuild`): where every partition's nodes still exist (a width or resolution change
keeps node names) each partition is recompiled at its new shapes on its chosen backend; otherwise the graph is
re-partitioned and each partition takes the fastest of the plan's backends. `fxscale scale --target hybrid
--inference-plan OUT` thereby measures every scaled model under the same optimised plan, so the latency budget
refers to what ships.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from fxscale.errors import TargetError
from fxscale.hw.base import MeasureProtocol, PAPER_PROTOCOL
from fxscale.hw.targets import TorchRunner, _measure, cpu_model


@dataclass
class HybridTarget:
    """CPU timing of the hybrid module an inference plan builds for each model (one thread by default)."""

    plan: Optional[str] = None
    threads: int = 1
    name: str = field(default="hybrid", init=False)

    def __post_init__(self) -> None:
        if self.plan is None:
            raise TargetError("target 'hybrid' needs an inference plan: an `fxscale optimize` output folder or its "
                              "inference_plan.json (fxscale scale --inference-plan PATH)")
        if self.threads < 1:
            raise TargetError(f"hybrid target needs threads >= 1, got {self.threads}")
        from fxscale.optimize.plan import read_plan
        try:
            self._plan = read_plan(self.plan)
        except TargetError:
            raise
        except Exception as e:  # noqa: BLE001 - FxscaleError from read_plan: one line naming the file
            raise TargetError(str(e)) from e

    def build(self, model: nn.Module, x: torch.Tensor) -> nn.Module:
        """The hybrid module of `model` at the input `x` under this target's plan."""
        import fxscale
        from fxscale.optimize.rebuild import _reselect, compile_plan
        from fxscale.optimize.measure import default_protocol
        from fxscale.optimize.verify import optimize_graph
        gm = fxscale.trace(model.eval(), x)
        opt, _ = optimize_graph(gm, self._plan.get("passes"), inputs=(x,))
        names = {n.name for n in opt.graph.nodes}
        if all(n in names for p in self._plan["partitions"] for n in p["nodes"]):
            return compile_plan(opt, self._plan, (x,))
        hybrid, _ = _reselect(opt, self._plan, x, default_protocol(runs=5, rounds=3))
        return hybrid

    def prepare(self, model_or_onnx: Any, input_shape: Sequence[int]) -> TorchRunner:
        if not isinstance(model_or_onnx, nn.Module):
            raise TargetError(f"hybrid target times nn.Modules, got {type(model_or_onnx).__name__}")
        x = torch.randn(tuple(int(d) for d in input_shape))
        with torch.no_grad():
            hybrid = self.build(model_or_onnx, x)
        return TorchRunner(hybrid, x, self.threads)

    def measure(self, model_or_onnx: Any, input_shape: Sequence[int],
                protocol: MeasureProtocol = PAPER_PROTOCOL) -> Any:
        return _measure(self, model_or_onnx, input_shape, protocol)

    def describe(self) -> dict[str, Any]:
        backends = sorted({p["backend"] for p in self._plan["partitions"]})
        hw = cpu_model()
        return {"target": self.name, "device": f"{hw} | hybrid ({', '.join(backends)}) | {self.threads} thread(s)",
                "hardware": hw, "runtime": "hybrid", "runtime_version": torch.__version__,
                "threads": self.threads, "inference_plan": str(Path(str(self.plan))), "backends": backends}


__all__ = ["HybridTarget"]
