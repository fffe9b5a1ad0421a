"""`fxscale.accelerate(...)`: HANT end to end, writing plan.json, model.pt/.pt2, model.onnx, report.md and
results.json into `out` (together, through fxscale.artifacts.staged_output; stages stay under out/stages)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace as dc_replace
from typing import Any, Callable, Optional

from torch import nn

from fxscale.errors import PlanError
from fxscale.hant.config import AccelerateConfig
from fxscale.hant.pipeline import Accelerator
from fxscale.scaling.stages import load_weights, save_weights, stage_cached


def _model_key(model: nn.Module) -> str:
    """A name for a user's model that changes with its class and weights (so stages are not reused wrongly)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return f"module:{type(model).__name__}:{h.hexdigest()[:12]}"


def run(cfg: AccelerateConfig, out: str | os.PathLike, model: Optional[nn.Module] = None,
        log: Callable[[str], None] = print, executor: Any = None) -> dict[str, Any]:
    """Run every stage (resuming finished ones) and write the output files; returns results.json's content."""
    from fxscale.artifacts import input_contract, staged_output, write_model_files
    from fxscale.export import export_onnx
    from fxscale.hant.assemble import fold_batchnorm
    from fxscale.hant.methods import compare, scores_summary
    from fxscale.hant.report import render
    if model is not None:
        cfg = dc_replace(cfg, model=_model_key(model))
    acc = Accelerator(cfg, out, model=model, log=log)
    table = acc.latency()
    distilled = acc.distill(executor)
    scores = acc.scores()
    student_path = acc.stages / "student.pt"
    holder: dict[str, Any] = {}

    def final() -> dict[str, Any]:
        results, student = compare(acc, table, scores, distilled)
        save_weights(student.state_dict(), student_path)
        holder["student"] = student
        return results
    results = stage_cached(acc.stages, "results", cfg.stage_keys()["results"], final, log,
                           lambda _v: None if student_path.is_file() else f"{student_path} is missing")
    student = holder.get("student")
    if student is None:
        student = acc.assemble(results["plan"])
        student.load_state_dict(load_weights(student_path))
    student = student.eval()
    results["scores"] = scores_summary(acc, scores)
    results["teacher"] = acc.teacher_info
    results["phase1_seconds_per_pair"] = {f"{s}/{p}": v["seconds"] for s, d in distilled.items() for p, v in d.items()}
    bundle = acc.bundle
    contract = input_contract(acc.x, mean=bundle.mean, std=bundle.std, num_classes=bundle.num_classes)
    plan = {"version": 1, "method": "hant", "plan": results["plan"], "budget": str(cfg.latency_budget),
            "budget_ms": results["budget_ms"], "score": cfg.score, "sites": [s.to_dict() for s in acc.sites],
            "meta": {"input": contract, "model": cfg.model, "data": cfg.data, "target": cfg.target}}
    with staged_output(out) as tmp:
        export_onnx(fold_batchnorm(student), tmp / "model.onnx", acc.x)  # conv-BN folded for deployment
        (tmp / "plan.json").write_text(json.dumps(plan, indent=2, default=float))
        (tmp / "results.json").write_text(json.dumps(results, indent=1, default=float))
        (tmp / "report.md").write_text(render(results, cfg, distilled, acc.teacher_info, results["scores"]))
        write_model_files(student, tmp, acc.x, contract, {"method": "hant"}, log=log)
    return results


def accelerate(model: nn.Module | str = "digits_resnet", data: str = "digits", target: str = "ort",
               latency_budget: float | str = 0.6, out: str | os.PathLike = "out", *, log: Callable[[str], None] = print,
               executor: Any = None, **settings: Any) -> dict[str, Any]:
    """Make a trained model faster on `target` with HANT (see fxscale/hant/__init__.py); returns results.json.

    `model` is a zoo name / MODEL string (trained first for `teacher_epochs`) or a trained nn.Module (used as is).
    `latency_budget` is a ratio of the teacher's measured latency (0.6 or "0.6x") or a latency ("2.5ms"). Other
    settings are AccelerateConfig fields (distill_epochs, candidates, score, seeds, resolution, ...).
    """
    budget = f"{latency_budget}x" if isinstance(latency_budget, (int, float)) else str(latency_budget)
    name = model if isinstance(model, str) else "module"
    for k in ("candidates", "multi_site", "seeds", "baselines", "frontier"):
        if k in settings and settings[k] is not None:
            settings[k] = tuple(settings[k])
    known = set(AccelerateConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        import difflib
        near = difflib.get_close_matches(unknown[0], known, 1)
        raise PlanError(f"accelerate: unknown setting {unknown[0]!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
    cfg = AccelerateConfig(model=name, data=data, target=target, latency_budget=budget, **settings)
    return run(cfg, out, model=None if isinstance(model, str) else model, log=log, executor=executor)


__all__ = ["accelerate", "run"]
