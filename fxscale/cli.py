"""The fxscale command line: analyze, transform (more commands register themselves in COMMANDS)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

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


def read_plan(path: str):
    """A ScalingPlan from a JSON file (PlanError naming the file when unreadable)."""
    import fxscale
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise fxscale.PlanError(f"cannot read plan file {path}: {e.strerror}") from e
    return fxscale.ScalingPlan.from_json(text)


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
        plan = read_plan(args.plan)
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


# ---- cost and measure ----------------------------------------------------------------------------------
FLOPS_CONVENTION = "FLOPs = 2 x MACs of conv/linear/matmul/attention (norms, activations, pooling: 0 FLOPs)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    """MODEL, --input-size, and --plan | --widen, --resolution (shared by cost and measure)."""
    _add_model_args(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--plan", help="plan JSON (widths by group name, resolution)")
    how.add_argument("--widen", type=float, default=None, help="uniform width factor on every scalable group")
    p.add_argument("--resolution", type=int, nargs="+", metavar="N",
                   help="input resolution H [W] (overrides the plan's); the model is taken at that input size")


def _scaled_graph(args: argparse.Namespace, transform: bool):
    """Trace MODEL, build the plan from the arguments; transform (input mode) when asked and the plan changes it.

    Returns (gm, cg, plan, new) where `new` is None when nothing was transformed.
    """
    import fxscale
    model, x = _model_and_input(args.model, args.input_size)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    res = tuple((args.resolution * 2)[:2]) if args.resolution else None
    if args.plan:
        plan = read_plan(args.plan)
        if res is not None:
            import dataclasses
            plan = dataclasses.replace(plan, resolution=res)
    else:
        plan = uniform_plan(cg, 1.0 if args.widen is None else args.widen, res)
    plan.validate(cg)
    changed = (any(plan.widths.get(g.name, g.width) != g.width for g in cg.groups) or bool(getattr(plan, "depths", None))
               or (plan.resolution is not None and tuple(plan.resolution) != tuple(x.shape[2:])))
    new = fxscale.transform(gm, plan, resolution_mode="input", cg=cg) if transform and changed else None
    return gm, cg, plan, new


def _plan_cost(cg, plan, new=None):
    """Cost of the model under the plan (input mode); a depth plan is costed on the deeper graph (the transformed
    model `new` when there is one, else fxscale.materialize's rebuild)."""
    import fxscale
    if getattr(plan, "depths", None):
        if new is not None:
            return fxscale.cost(new)
        from fxscale.passes.depth import plan_depths
        plan_depths(cg.gm, plan.depths, "preserve")  # as `fxscale transform` would: repeated blocks are identities
    return fxscale.cost(cg, plan, mode="input")


def cmd_cost(args: argparse.Namespace) -> int:
    """Print the per-layer cost table and totals of a (rescaled) model."""
    _gm, cg, plan, _ = _scaled_graph(args, transform=False)
    rep = _plan_cost(cg, plan)
    if args.json:
        print(json.dumps({"model": args.model, "convention": FLOPS_CONVENTION, "plan": json.loads(plan.to_json()),
                          **rep.to_dict()}, indent=2, default=list))
        return 0
    res = "x".join(map(str, rep.resolution)) if rep.resolution else "?"
    print(f"{args.model} at {res}: {FLOPS_CONVENTION}; bytes = fp32 reads + writes per op, unfused")
    print(rep.table(all_layers=args.all_layers))
    print(f"totals: {rep.flops / 1e9:.4f} GFLOPs ({rep.macs / 1e9:.4f} GMACs), {rep.params:,} params, "
          f"{rep.activations:,} activations, {rep.bytes / 2**20:.2f} MiB moved")
    return 0


def _add_cost(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale cost`."""
    p = sub.add_parser("cost", help="per-layer FLOPs (= 2 x MACs), params, activations and bytes of a model",
                       description=f"Analytic cost of MODEL under a plan. {FLOPS_CONVENTION}.")
    _add_plan_args(p)
    p.add_argument("--json", action="store_true", help="print CostReport.to_dict() as JSON")
    p.add_argument("--all-layers", action="store_true", help="list every node, not only computing ones")
    p.set_defaults(func=cmd_cost)


def _measure_target(args: argparse.Namespace):
    """The target named by --target with the options that apply to it (TargetError lists valid names)."""
    from fxscale.hw.targets import get_target
    kwargs: dict = {}
    if args.target in ("ort", "torch"):
        kwargs["threads"] = args.threads or 1
    elif args.threads is not None:
        kwargs["threads"] = args.threads
    if args.target == "torch":
        kwargs["device"] = args.device
    elif args.device != "cpu":
        from fxscale.errors import TargetError
        raise TargetError(f"--device applies to the torch target only (got --target {args.target})")
    if args.target == "trtexec":
        kwargs["trtexec"] = args.trtexec
    return get_target(args.target, **kwargs)


def cmd_measure(args: argparse.Namespace) -> int:
    """Transform MODEL (when a plan changes it), time it on a target, report latency and GFLOP/s."""
    from fxscale.hw.base import MeasureProtocol
    from fxscale.tracing import example_inputs
    target = _measure_target(args)  # fail on a bad target before tracing anything
    protocol = MeasureProtocol(warmup=args.warmup, runs=args.runs, batch=args.batch, statistic=args.statistic)
    gm, cg, plan, new = _scaled_graph(args, transform=True)
    model = new if new is not None else gm
    shape = tuple(example_inputs(model)[0].shape)
    rep = _plan_cost(cg, plan, new)
    stats = target.measure(model, shape, protocol)
    flops = rep.flops * protocol.batch // max(1, shape[0])
    value = stats.value(args.statistic)
    result = {"model": args.model, "plan": json.loads(plan.to_json()), "target": args.target,
              "device": stats.device, "input_shape": [protocol.batch, *shape[1:]], "statistic": args.statistic,
              "latency_ms": {k: getattr(stats, k) for k in ("mean", "median", "p10", "p90")},
              "runs": stats.runs, "warmup": stats.warmup, "flops": flops, "macs": rep.macs * protocol.batch,
              "params": rep.params, "gflops_per_s": flops / (value * 1e-3) / 1e9,
              "gflops_per_s_median": flops / (stats.median * 1e-3) / 1e9, "convention": FLOPS_CONVENTION,
              "settings": stats.settings, "samples_ms": stats.samples_ms}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    lat = result["latency_ms"]
    print(f"{args.model} {'x'.join(map(str, result['input_shape']))} on {args.target}: {stats.device}")
    print(f"latency ms ({stats.runs} runs after {stats.warmup} warm-up): mean {lat['mean']:.3f}  "
          f"median {lat['median']:.3f}  p10 {lat['p10']:.3f}  p90 {lat['p90']:.3f}")
    print(f"cost: {flops / 1e9:.4f} GFLOPs per batch (FLOPs = 2 x MACs of conv/linear/matmul/attention), "
          f"{rep.params:,} params")
    print(f"utilisation: {result['gflops_per_s']:.2f} GFLOP/s ({args.statistic} latency)"
          + (f"; wrote {args.out}" if args.out else ""))
    return 0


def _add_measure(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale measure`."""
    p = sub.add_parser("measure", help="time a (rescaled) model on a target and report GFLOP/s",
                       description="Transform MODEL with a plan (input-resolution mode) and time it on a target.")
    _add_plan_args(p)
    p.add_argument("--target", default="ort", help="device target: ort (default), torch, trtexec, ...")
    p.add_argument("--threads", type=_positive_int, default=None, help="intra-op threads (ort/torch; default 1)")
    p.add_argument("--device", default="cpu", help="torch device for --target torch (cpu, cuda, cuda:1)")
    p.add_argument("--trtexec", default="trtexec", help="trtexec binary for --target trtexec")
    p.add_argument("--runs", type=_positive_int, default=50, help="timed runs (default 50, as in the paper)")
    p.add_argument("--warmup", type=_nonnegative_int, default=10, help="warm-up runs (default 10)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--statistic", choices=["mean", "median"], default="mean",
                   help="latency statistic used for GFLOP/s (default mean, as in the paper)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.set_defaults(func=cmd_measure)


def _add_profile(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale profile` (implemented by fxscale.hw.profile.cli_main)."""
    p = sub.add_parser("profile", help="profile a device target for the latency predictor",
                       description="Time single-kernel models drawn around the layers of MODELS on a target, fit "
                                   "per-kind latency models plus a whole-model calibration, write a profile JSON.")
    p.add_argument("--target", default="ort", help="device target: ort (default), torch, ...")
    p.add_argument("--models", required=True, help="comma-separated zoo names, optionally name@input_size")
    p.add_argument("--input-size", type=_positive_int, default=None, help="input side for names without @size")
    p.add_argument("--threads", type=_positive_int, default=1, help="intra-op threads (ort/torch; default 1)")
    p.add_argument("--quick", action="store_true", help="small grid (about a minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="profile JSON to write (atomically)")

    def run(args: argparse.Namespace) -> int:
        from fxscale.hw.profile import cli_main
        return cli_main(args)

    p.set_defaults(func=run)


def _add_jetson_bundle(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale jetson-bundle OUT` (fxscale.hw.jetson.bundle: works from an installed wheel)."""
    p = sub.add_parser("jetson-bundle", help="write the folder to copy to a Jetson board (runner.py and its parsers)",
                       description="Write runner.py, trtparse.py and tegrastats.py (stdlib only, Python 3.6) into "
                                   "OUT. Copy OUT and the ONNX files to the board and run "
                                   "`python3 OUT/runner.py ONNX_DIR --out RESULTS` there.")
    p.add_argument("out", metavar="OUT", help="folder to write (created; existing bundle files are overwritten)")

    def run(args: argparse.Namespace) -> int:
        from fxscale.hw.jetson import bundle
        written = bundle(args.out)
        print(f"wrote {', '.join(w.name for w in written)} to {args.out}; on the board run: "
              f"python3 {Path(args.out) / 'runner.py'} ONNX_DIR --out RESULTS")
        return 0

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from fxscale._version import __version__
    parser = argparse.ArgumentParser(prog="fxscale", description="Hardware-aware model scaling on torch.fx graphs")
    parser.add_argument("--version", action="version", version=f"fxscale {__version__}")
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
    _add_cost(sub)
    _add_measure(sub)
    _add_profile(sub)
    _add_jetson_bundle(sub)
    from fxscale.scaling.cli import add_scale_command
    add_scale_command(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `fxscale` console script."""
    args = build_parser().parse_args(argv)
    from fxscale.errors import FxscaleError
    try:
        return int(args.func(args) or 0)
    except FxscaleError as e:
        print(f"fxscale: error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """An error's message on one line (multi-line messages joined with "; ")."""
    return "; ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
