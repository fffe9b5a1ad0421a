"""`fxscale cost`, `measure`, `profile` and `jetson-bundle` (registered by fxscale.cli.build_parser)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from fxscale.cli import (
    FORMATTER,
    MEMORY_HINT,
    add_max_memory_arg,
    add_plan_args,
    check_model_args,
    guarded_transform,
    read_plan,
    traced,
    uniform_plan,
)
from fxscale.cli_checks import (
    check_out_dir,
    check_out_file,
    check_resolution,
    check_target,
    check_torch_device,
    check_trtexec,
    fail,
    nonnegative_int,
    positive_int,
    stderr_line,
)

FLOPS_CONVENTION = "FLOPs = 2 x MACs of conv/linear/matmul/attention (norms, activations, pooling: 0 FLOPs)"


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    """MODEL, --input-size, --leaf, and --plan | --widen, --resolution (shared by cost and measure)."""
    add_plan_args(p, "input resolution H [W] in pixels (overrides the plan's); the model is taken at that size")


def _scaled_graph(args: argparse.Namespace, transform: bool):
    """Trace MODEL, build the plan from the arguments; transform (input mode) when asked and the plan changes it.

    Returns (gm, cg, plan, new) where `new` is None when nothing was transformed.
    """
    plan = read_plan(args.plan) if args.plan else None
    _model, gm, cg = traced(args)
    res = check_resolution(args.resolution)
    if plan is not None:
        if res is not None:
            plan = dataclasses.replace(plan, resolution=res)
    else:
        plan = uniform_plan(cg, 1.0 if args.widen is None else args.widen, res)
    plan.validate(cg)
    x_res = tuple(gm.meta["fxscale"].get("resolution") or ())
    changed = (any(plan.widths.get(g.name, g.width) != g.width for g in cg.groups) or bool(getattr(plan, "depths", None))
               or (plan.resolution is not None and tuple(plan.resolution) != x_res))
    new = guarded_transform(args, gm, cg, plan, resolution_mode="input") if transform and changed else None
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


def _warn_memory(cg: Any, plan: Any) -> None:
    """A stderr warning when the plan's model would not fit in memory (cost itself allocates nothing)."""
    from fxscale.guard import estimate, fmt_bytes, mem_available
    limit = mem_available()
    try:
        est = estimate(cg, plan, "input")
    except Exception:  # noqa: BLE001 - the warning is best effort; the cost table is the result
        return
    if limit is not None and est.bytes > limit:
        import warnings
        warnings.warn(f"this plan's model needs {est.describe()} but MemAvailable is {fmt_bytes(limit)}: "
                      f"transform and measure would refuse it ({MEMORY_HINT})")


def cmd_cost(args: argparse.Namespace) -> int:
    """Print the per-layer cost table and totals of a (rescaled) model."""
    check_model_args(args)
    _gm, cg, plan, _ = _scaled_graph(args, transform=False)
    rep = _plan_cost(cg, plan)
    _warn_memory(cg, plan)
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


def add_cost(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale cost`."""
    p = sub.add_parser("cost", help="per-layer FLOPs (= 2 x MACs), params, activations and bytes of a model",
                       description=f"Analytic cost of MODEL under a plan. {FLOPS_CONVENTION}.", formatter_class=FORMATTER)
    _add_plan_args(p)
    p.add_argument("--json", action="store_true", help="print CostReport.to_dict() as JSON")
    p.add_argument("--all-layers", action="store_true", help="list every node, not only computing ones")
    p.set_defaults(func=cmd_cost)


def _measure_target(args: argparse.Namespace):
    """The target named by --target with the options that apply to it (checked before anything is built)."""
    from fxscale.hw.targets import get_target
    check_target(args.target)
    kwargs: dict = {}
    if args.target in ("ort", "torch"):
        kwargs["threads"] = args.threads or 1
    elif args.threads is not None:
        kwargs["threads"] = args.threads
    if args.target == "torch":
        check_torch_device(args.device)
        kwargs["device"] = args.device
    elif args.device != "cpu":
        fail(f"--device applies to the torch target only (got --target {args.target})")
    if args.target == "trtexec":
        check_trtexec(args.trtexec)
        kwargs["trtexec"] = args.trtexec
    return get_target(args.target, **kwargs)


def cmd_measure(args: argparse.Namespace) -> int:
    """Transform MODEL (when a plan changes it), time it on a target, report latency and GFLOP/s."""
    from fxscale.artifacts import write_text_atomic
    from fxscale.hw.base import MeasureProtocol
    from fxscale.tracing import example_inputs
    if args.out:
        check_out_file(args.out, "--out")  # before the timing, which would otherwise be lost
    target = _measure_target(args)
    protocol = MeasureProtocol(warmup=args.warmup, runs=args.runs, batch=args.batch, statistic=args.statistic)
    check_model_args(args)
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
        write_text_atomic(args.out, json.dumps(result, indent=2, default=str))
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


def add_measure(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale measure`."""
    p = sub.add_parser("measure", help="time a (rescaled) model on a target and report GFLOP/s", formatter_class=FORMATTER,
                       description="Transform MODEL with a plan (input-resolution mode) and time it on a target.")
    _add_plan_args(p)
    p.add_argument("--target", default="ort", help="device target: ort, torch, trtexec")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (ort/torch: 1 when unset)")
    p.add_argument("--device", default="cpu", help="torch device for --target torch (cpu, cuda, cuda:1)")
    p.add_argument("--trtexec", default="trtexec", help="trtexec binary for --target trtexec (a name on PATH or a path)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs (50 as in the paper)")
    p.add_argument("--warmup", type=nonnegative_int, default=10, help="warm-up runs")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (images)")
    p.add_argument("--statistic", choices=["mean", "median"], default="mean",
                   help="latency statistic used for GFLOP/s (mean as in the paper)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_max_memory_arg(p)
    p.add_argument("--out", default=None, help="also write the JSON result to this file (atomically)")
    p.set_defaults(func=cmd_measure)


def add_profile(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale profile` (implemented by fxscale.hw.profile.cli_main)."""
    p = sub.add_parser("profile", help="profile a device target for the latency predictor", formatter_class=FORMATTER,
                       description="Time single-kernel models drawn around the layers of MODELS on a target, fit "
                                   "per-kind latency models plus a whole-model calibration, write a profile JSON.")
    p.add_argument("--target", default="ort", help="device target: ort, torch, ...")
    p.add_argument("--models", required=True, help="comma-separated zoo names, optionally name@input_size")
    p.add_argument("--input-size", type=positive_int, default=None, metavar="PX",
                   help="input side in pixels for names without @size (default: each model's own)")
    p.add_argument("--threads", type=positive_int, default=1, help="intra-op threads (ort/torch)")
    p.add_argument("--quick", action="store_true", help="small grid (about a minute)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampled kernel shapes")
    p.add_argument("--out", required=True, help="profile JSON to write (atomically)")

    def run(args: argparse.Namespace) -> int:
        from fxscale.artifacts import apply_umask
        from fxscale.hw.profile import cli_main
        check_out_file(args.out, "--out")
        check_target(args.target)
        if not [m for m in args.models.split(",") if m.strip()]:
            fail("--models needs at least one model name")
        code = cli_main(args)
        if Path(args.out).is_file():
            apply_umask(args.out)  # the profile is written through mkstemp (0600): give it the user's umask
        return code

    p.set_defaults(func=run)


def add_jetson_bundle(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale jetson-bundle OUT` (fxscale.hw.jetson.bundle: works from an installed wheel)."""
    p = sub.add_parser("jetson-bundle", help="write the folder to copy to a Jetson board (runner.py and its parsers)",
                       formatter_class=FORMATTER,
                       description="Write runner.py, trtparse.py and tegrastats.py (stdlib only, Python 3.6) into "
                                   "OUT. Copy OUT and the ONNX files to the board and run "
                                   "`python3 OUT/runner.py ONNX_DIR --out RESULTS` there.")
    p.add_argument("out", metavar="OUT", help="folder to write (created; existing bundle files are overwritten)")

    def run(args: argparse.Namespace) -> int:
        from fxscale.hw.jetson import bundle
        check_out_dir(args.out, "OUT")
        written = bundle(args.out)
        print(f"wrote {', '.join(w.name for w in written)} to {args.out}; on the board run: "
              f"python3 {Path(args.out) / 'runner.py'} ONNX_DIR --out RESULTS")
        return 0

    p.set_defaults(func=run)


__all__ = ["FLOPS_CONVENTION", "add_cost", "add_jetson_bundle", "add_measure", "add_profile", "cmd_cost",
           "cmd_measure", "stderr_line"]
