"""The fxscale command line: analyze, transform (more commands register themselves in COMMANDS)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _model_and_input(spec: str, input_size: Optional[int], batch: int = 1):
    """Build MODEL (zoo name or module:callable) and an example input."""
    import torch
    from fxscale import zoo
    model = zoo.model_from_string(spec).eval()
    size, channels = input_size, 3
    if ":" not in spec:
        s = zoo.get_spec(spec)
        size, channels = input_size or s.full_input_size, s.in_channels
    return model, torch.randn(batch, channels, size or 224, size or 224)


def _console():
    from rich.console import Console
    return Console()


def cmd_analyze(args: argparse.Namespace) -> int:
    """Print the channel groups of a model."""
    from rich.table import Table
    import fxscale
    model, x = _model_and_input(args.model, args.input_size)
    cg = fxscale.analyze(fxscale.trace(model, x))
    if args.json:
        print(json.dumps([{"name": g.name, "width": g.width, "scalable": g.scalable, "divisor": g.divisor,
                           "reason": g.reason, "producers": g.producers, "consumers": [c for c, _ in g.consumers],
                           "followers": g.followers} for g in cg.groups], indent=2))
        return 0
    table = Table(title=f"{args.model}: {len(cg.groups)} channel groups, {len(cg.scalable)} scalable")
    for col in ("group", "width", "divisor", "producers", "consumers", "status"):
        table.add_column(col, justify="right" if col in ("width", "divisor", "producers", "consumers") else "left")
    for g in cg.groups:
        status = "scalable" if g.scalable else f"fixed: {g.reason}"
        table.add_row(g.name, str(g.width), str(g.divisor), str(len(g.producers)), str(len(g.consumers)), status)
    _console().print(table)
    return 0


def uniform_plan(cg, factor: float, resolution: Optional[Sequence[int]] = None):
    """Scale every scalable group by `factor`, rounded to its divisor."""
    import fxscale
    widths = {g.name: max(g.divisor, round(g.width * factor / g.divisor) * g.divisor) for g in cg.scalable}
    return fxscale.ScalingPlan(widths=widths, resolution=tuple(resolution) if resolution else None)


def cmd_transform(args: argparse.Namespace) -> int:
    """Apply a plan (or a uniform --widen factor) and write the GraphModule, plan and ONNX."""
    import torch
    import fxscale
    from fxscale.export import export_onnx
    model, x = _model_and_input(args.model, args.input_size)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    if args.plan:
        try:
            text = Path(args.plan).read_text()
        except OSError as e:
            raise fxscale.PlanError(f"cannot read plan file {args.plan}: {e.strerror}") from e
        plan = fxscale.ScalingPlan.from_json(text)
    else:
        res = (args.resolution * 2)[:2] if args.resolution else None
        plan = uniform_plan(cg, args.widen, res)
    new = fxscale.transform(gm, plan, init=args.init, resolution_mode=args.resolution_mode, cg=cg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(plan.to_json())
    torch.save(new, out / "model.pt")
    xin = fxscale.tracing.example_inputs(new)[0]
    rep = export_onnx(new, out / "model.onnx", xin, opset=args.opset)
    p0, p1 = (sum(p.numel() for p in m.parameters()) for m in (gm, new))
    summary = {"model": args.model, "init": args.init, "params_before": p0, "params_after": p1,
               "groups_changed": sum(1 for g in cg.groups if plan.widths.get(g.name, g.width) != g.width),
               "resolution": list(plan.resolution) if plan.resolution else None, "onnx_opset": rep.opset,
               "onnx_max_abs_diff": rep.max_abs_diff}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    _console().print(f"[bold]{args.model}[/]: params {p0:,} -> {p1:,}, {summary['groups_changed']} groups changed; "
                     f"wrote {out}/model.pt, plan.json, model.onnx (opset {rep.opset}, max|diff| "
                     f"{rep.max_abs_diff:.2e})")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision model name, a built-in (digits_vgg, digits_resnet) or module:callable")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the model's own)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="fxscale", description="Hardware-aware model scaling on torch.fx graphs")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="print the channel groups of a model")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("transform", help="rescale a model with a plan and export it")
    _add_model_args(p)
    p.add_argument("--plan", help="plan JSON (widths by group name, resolution)")
    p.add_argument("--widen", type=float, default=1.0, help="uniform width factor when no --plan is given")
    p.add_argument("--resolution", type=int, nargs="+", help="new input resolution H [W] when no --plan is given")
    p.add_argument("--init", choices=["preserve", "prune", "reinit"], default="preserve")
    p.add_argument("--resolution-mode", choices=["resize", "input"], default="resize")
    p.add_argument("--opset", type=int, default=13)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_transform)
    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `fxscale` console script."""
    args = build_parser().parse_args(argv)
    from fxscale.errors import FxscaleError
    try:
        return int(args.func(args) or 0)
    except FxscaleError as e:
        print(f"fxscale: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
