"""The fxscale command line: analyze, transform (cost, measure, profile, jetson-bundle and scale register too).

Conventions: every option is checked before any model is built or timed (fxscale.cli_checks); a bad input or a
fault prints one line on stderr and exits 2 (130 after Ctrl-C, with a hint that a rerun resumes; 1 for an
unexpected internal error); `--traceback` or FXSCALE_TRACEBACK=1 adds the traceback. Results go to stdout, logs,
progress and warnings to stderr (`--quiet` drops them). Output folders are written whole or not at all.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from fxscale.cli_checks import (
    HelpFormatter,
    OneLineParser,
    check_in_file,
    check_model_spec,
    check_opset,
    check_out_dir,
    check_resolution,
    fail,
    positive_float,
    positive_int,
    resolve_leaves,
    stderr_line,
    torch_noise_captured,
    traceback_wanted,
)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
FORMATTER = HelpFormatter
MEMORY_HINT = "give --max-memory SIZE (e.g. 64GB) to allow more"


def traced(args: argparse.Namespace):
    """(model, GraphModule, ChannelGraph) of MODEL at --input-size; a huge size is refused before it allocates."""
    import torch
    import fxscale
    from fxscale.modelspec import build_model, default_input
    leaves = resolve_leaves(getattr(args, "leaf", None))
    model = build_model(args.model).eval()
    channels, size = default_input(args.model, model, args.input_size)
    if size > 1024:  # cost the big size on a small trace first: analytic, nothing of that size is allocated
        _guard_input_size(args, model, channels, size, leaves)
    x = torch.randn(1, channels, size, size)
    with torch_noise_captured():
        gm = fxscale.trace(model, x, leaf_modules=leaves)
    return model, gm, fxscale.analyze(gm)


def _guard_input_size(args: argparse.Namespace, model: Any, channels: int, size: int, leaves: tuple) -> None:
    import torch
    import fxscale
    from fxscale.errors import PlanError
    from fxscale.guard import check_memory
    try:
        with torch_noise_captured():
            cg = fxscale.analyze(fxscale.trace(model, torch.zeros(1, channels, 64, 64), leaf_modules=leaves))
    except fxscale.FxscaleError:
        return  # the real trace names the problem
    try:
        check_memory(cg, fxscale.ScalingPlan(resolution=(size, size)), _max_memory(args), mode="input",
                     hint=MEMORY_HINT)
    except PlanError as e:
        raise PlanError(f"--input-size {size}: {e}") from e


def _max_memory(args: argparse.Namespace) -> Optional[int]:
    from fxscale.guard import parse_size
    value = getattr(args, "max_memory", None)
    return None if value is None else parse_size(value, "--max-memory")


def guarded_transform(args: argparse.Namespace, gm: Any, cg: Any, plan: Any, **kw: Any) -> Any:
    """fxscale.transform after the memory guard (CLI wording: --max-memory)."""
    import fxscale
    from fxscale.guard import check_memory
    plan.validate(cg)
    check_memory(cg, plan, _max_memory(args), mode=kw.get("resolution_mode", "resize"), hint=MEMORY_HINT)
    return fxscale.transform(gm, plan, cg=cg, max_memory=math.inf, **kw)


def _console():
    from rich.console import Console
    return Console()


def cmd_analyze(args: argparse.Namespace) -> int:
    """Print the channel groups of a model."""
    from rich.table import Table
    check_model_args(args)
    _model, _gm, cg = traced(args)
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
    """A ScalingPlan from a JSON file (PlanError naming the file when unreadable or malformed)."""
    import fxscale
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise fxscale.PlanError(f"cannot read plan file {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        return fxscale.ScalingPlan.from_json(text)
    except fxscale.PlanError as e:
        raise fxscale.PlanError(f"plan file {path}: {e}") from e


def uniform_plan(cg, factor: float, resolution: Optional[Sequence[int]] = None):
    """Scale every scalable group by `factor`, rounded to its divisor."""
    import fxscale
    widths = {g.name: max(g.divisor, round(g.width * factor / g.divisor) * g.divisor) for g in cg.scalable}
    return fxscale.ScalingPlan(widths=widths, resolution=tuple(resolution) if resolution else None)


def check_model_args(args: argparse.Namespace) -> None:
    """The checks every MODEL command shares: MODEL, --leaf, --plan, --resolution, --max-memory."""
    check_model_spec(args.model)
    resolve_leaves(getattr(args, "leaf", None))
    if getattr(args, "plan", None):
        check_in_file(args.plan, "--plan")
    check_resolution(getattr(args, "resolution", None))
    _max_memory(args)


def _validate_transform(args: argparse.Namespace) -> None:
    check_out_dir(args.out, "--out")
    check_opset(args.opset)
    check_model_args(args)


PRESERVE_REL_TOL = 1e-4  # float32: max|new - old| / max|old| of a claimed-exact preserve transform


def _preserve_check(gm: Any, cg: Any, new: Any, plan: Any) -> dict[str, Any]:
    """Whether the rules claim ``preserve`` exact for this plan (ChannelGraph.preserve_exact), the reasons where
    they do not, and the measured drift against the traced model on its own example input (widths and depths
    only: a resolution change resizes the input, so nothing is measured then). A claim that does not hold warns."""
    import torch

    import fxscale
    claimed, reasons = cg.preserve_exact(plan)
    if plan.depths:
        claimed, reasons = False, reasons + ["the plan changes depths (new blocks start as identities; not claimed)"]
    out: dict[str, Any] = {"exact_claimed": claimed, "not_proven": reasons, "max_rel_diff": None}
    if plan.resolution is None:
        x = fxscale.tracing.example_inputs(gm)[0]
        from torch.utils._pytree import tree_leaves
        with torch.no_grad():
            ref, got = tree_leaves(gm.eval()(x)), tree_leaves(new.eval()(x))  # dense models return dicts
        pairs = [(a, b) for a, b in zip(ref, got) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)]
        if pairs and len(ref) == len(got) and all(a.shape == b.shape for a, b in pairs):
            drift = max(float((b - a).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in pairs)
            out["max_rel_diff"] = drift
            if claimed and drift > PRESERVE_REL_TOL:
                warnings.warn(f"preserve was claimed exact but the outputs differ by {drift:.2e} relative; please "
                              "report this model")
    return out


def cmd_transform(args: argparse.Namespace) -> int:
    """Apply a plan (or a uniform --widen factor) and write the GraphModule, plan, model.pt2 and ONNX, all or none."""
    import fxscale
    from fxscale.artifacts import classes_of, contract_props, input_contract, staged_output, write_model_files
    from fxscale.export import export_onnx
    _validate_transform(args)
    if args.weights:
        check_in_file(args.weights, "--weights")
    if args.data:
        from fxscale.cli_checks import check_dataset
        check_dataset(args.data, "--data")
    plan = read_plan(args.plan) if args.plan else None  # a malformed plan fails before the model is built
    model, gm, cg = traced(args)
    if args.weights:  # the trace shares the model's tensors: loading in place sets both
        from fxscale.scaling.warm import load_state
        load_state(model, args.weights, "--weights")
    if plan is None:
        widen = 1.0 if args.widen is None else args.widen
        if args.widen is not None and widen != 1.0 and not cg.scalable:
            fail(f"--widen {args.widen:g}: model {args.model} has no scalable channel group, so no width can change "
                 f"(run `fxscale analyze {args.model}` to see why each group is fixed)")
        plan = uniform_plan(cg, widen, check_resolution(args.resolution))
    imp = _taylor(args, gm, plan) if args.data else None
    new = guarded_transform(args, gm, cg, plan, init=args.init, resolution_mode=args.resolution_mode, importance=imp)
    changed = sum(1 for g in cg.groups if plan.widths.get(g.name, g.width) != g.width)
    if args.widen not in (None, 1.0) and changed == 0:
        warnings.warn(f"--widen {args.widen:g} changes no group width (each width is rounded to its divisor)")
    xin = fxscale.tracing.example_inputs(new)[0]
    contract = input_contract(xin, dynamic_batch=not args.static_batch, num_classes=classes_of(new, xin))
    plan.meta["input"] = contract
    with staged_output(args.out) as tmp:
        (tmp / "plan.json").write_text(plan.to_json())
        rep = export_onnx(new, tmp / "model.onnx", xin, opset=args.opset, dynamic_batch=not args.static_batch,
                          metadata=contract_props(contract))
        p0, p1 = (sum(p.numel() for p in m.parameters()) for m in (gm, new))
        summary = {"model": args.model, "init": args.init, "params_before": p0, "params_after": p1,
                   "weights": args.weights, "importance": f"taylor on {args.data}" if imp else "l1",
                   "groups_changed": changed, "resolution": list(plan.resolution) if plan.resolution else None,
                   "onnx_opset": rep.opset, "onnx_max_abs_diff": rep.max_abs_diff, "dynamic_batch": rep.dynamic_batch,
                   "input": contract}
        problem = write_model_files(new, tmp, xin, contract, {"plan": json.loads(plan.to_json()), "model": args.model},
                                    log=lambda m: warnings.warn(m))
        summary["model_pt2"] = problem or "model.pt2"
        if args.init == "preserve":
            summary["preserve"] = _preserve_check(gm, cg, new, plan)
        (tmp / "report.json").write_text(json.dumps(summary, indent=2))
    if args.init == "preserve":
        pv = summary["preserve"]
        drift = "" if pv["max_rel_diff"] is None else f", measured max rel diff {pv['max_rel_diff']:.1e}"
        claim = ("exact (proven by the op rules)" if pv["exact_claimed"]
                 else "not claimed exact: " + "; ".join(pv["not_proven"][:2]))
        print(f"{args.model}: preserve {claim}{drift}")
    print(f"{args.model}: params {p0:,} -> {p1:,}, {changed} groups changed; wrote {Path(args.out) / 'model.pt'}, "
          f"{'model.pt2, ' if problem is None else ''}plan.json, model.onnx (opset {rep.opset}, max|diff| "
          f"{rep.max_abs_diff:.2e}), report.json")
    return 0


def _taylor(args: argparse.Namespace, gm: Any, plan: Any) -> Any:
    """Taylor importance of gm's channels on --importance-batches batches of --data (None if nothing shrinks)."""
    from fxscale.data import get_dataset
    from fxscale.scaling.warm import shrinks, taylor_importance
    if args.init == "reinit" or not shrinks(gm, plan):
        return None
    bundle = get_dataset(args.data)
    res = tuple(gm.meta["fxscale"]["resolution"])
    try:
        return taylor_importance(gm, bundle, batches=args.importance_batches, resolution=res)
    except (RuntimeError, IndexError) as e:
        fail(f"--data {args.data}: the model cannot run on its batches ({one_line(e)[:200]}); give data with the "
             "model's input channels and classes")


def add_plan_args(p: argparse.ArgumentParser, resolution_help: str) -> None:
    """MODEL, --input-size, --leaf, then --plan | --widen and --resolution (transform, cost, measure)."""
    add_model_args(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--plan", help="plan JSON (widths by group name, resolution, depths)")
    how.add_argument("--widen", type=positive_float, default=None,
                     help="uniform width factor on every scalable group (> 0; 1.0 when no --plan is given)")
    p.add_argument("--resolution", type=positive_int, nargs="+", metavar="PX", help=resolution_help)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """MODEL, --input-size and --leaf (every command that builds a model)."""
    p.add_argument("model", help="torchvision model name, a built-in (digits_vgg, digits_resnet), timm:NAME, "
                   "package.module:callable or path/to/file.py:callable")
    p.add_argument("--input-size", type=positive_int, default=None, metavar="PX",
                   help="square input side in pixels (default: the model's own; 224 for a callable)")
    add_leaf_arg(p)


def add_leaf_arg(p: argparse.ArgumentParser) -> None:
    """--leaf (repeatable)."""
    p.add_argument("--leaf", action="append", default=None, metavar="pkg.mod.Class",
                   help="a module class traced as one opaque call (for submodules torch.fx cannot trace); "
                        "repeatable")


def add_max_memory_arg(p: argparse.ArgumentParser) -> None:
    """--max-memory."""
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="refuse plans whose model needs more memory than this (bytes, or e.g. 64GB, 512MB); "
                        "default: MemAvailable of /proc/meminfo")


def _add_transform(sub: argparse._SubParsersAction) -> None:
    from fxscale.cli_checks import opset_range
    p = sub.add_parser("transform", help="rescale a model with a plan and export it", formatter_class=FORMATTER,
                       description="Apply --plan or a uniform --widen factor and write OUT/model.pt, model.pt2, "
                                   "plan.json, model.onnx and report.json (all of them, or nothing on error).")
    add_plan_args(p, "new input resolution H [W] in pixels when no --plan is given")
    p.add_argument("--init", choices=["preserve", "prune", "reinit"], default="preserve",
                   help="weights of changed layers: preserve the function, prune, or re-initialise")
    p.add_argument("--resolution-mode", choices=["resize", "input"], default="resize",
                   help="resize: the model resizes its input inside; input: the model takes the new size")
    lo, hi = opset_range()
    p.add_argument("--opset", type=int, default=13, help=f"ONNX opset ({lo}..{hi})")
    p.add_argument("--static-batch", action="store_true",
                   help="export ONNX and model.pt2 with a fixed batch of 1 (default: a dynamic batch dimension)")
    add_max_memory_arg(p)
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="load this state dict (or fxscale.train checkpoint) into MODEL before rescaling it")
    p.add_argument("--data", default=None, metavar="NAME",
                   help="a dataset (e.g. digits): channels a shrink keeps are chosen by Taylor importance on a few of "
                        "its training batches instead of by L1 norm")
    p.add_argument("--importance-batches", type=positive_int, default=4, metavar="N",
                   help="batches of --data for the Taylor importance (default 4)")
    p.add_argument("--out", required=True, help="output folder (created; its files are replaced together)")
    p.set_defaults(func=cmd_transform)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from fxscale._version import __version__
    from fxscale.cli_measure import add_cost, add_jetson_bundle, add_measure, add_profile
    parser = OneLineParser(prog="fxscale", description="Hardware-aware model scaling on torch.fx graphs")
    parser.add_argument("--version", action="version", version=f"fxscale {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="print the channel groups of a model", formatter_class=FORMATTER,
                       description="Trace MODEL and print its channel groups (scalable or fixed, and why).")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_analyze)
    _add_transform(sub)
    add_cost(sub)
    add_measure(sub)
    add_profile(sub)
    add_jetson_bundle(sub)
    from fxscale.scaling.cli import add_scale_command
    add_scale_command(sub)
    from fxscale.optimize.cli import add_optimize_command
    add_optimize_command(sub)
    from fxscale.hant.cli import add_accelerate_command
    add_accelerate_command(sub)
    for p in sub.choices.values():
        _add_common(p)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                   help="on error, print the Python traceback too (or set FXSCALE_TRACEBACK=1)")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no logs, progress or warnings on stderr; results still go to stdout")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `fxscale` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    show = traceback_wanted(argv)
    quiet = getattr(args, "quiet", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            code = int(args.func(args) or 0)
        except KeyboardInterrupt:
            return _failed(show, "fxscale: interrupted; rerun the same command to resume", 130)
        except BaseException as e:  # noqa: BLE001 - every fault becomes one line (SystemExit passes through)
            if isinstance(e, SystemExit):
                raise
            line, code = describe(e)
            return _failed(show, line, code, caught)
    if not quiet:
        seen: set[str] = set()
        for w in caught:
            text = one_line(w.message if isinstance(w.message, Warning) else Warning(str(w.message)))
            if text not in seen:
                seen.add(text)
                stderr_line(f"fxscale: warning: {text}")
    return code


def _failed(show: bool, line: str, code: int, caught: Sequence[Any] = ()) -> int:
    if show:
        traceback.print_exc()
        for w in caught:
            stderr_line(f"fxscale: warning: {one_line(w.message)}")
    stderr_line(line)
    return code


def describe(e: BaseException) -> tuple[str, int]:
    """(the one line, exit status) of an exception: 2 for user errors and faults, 1 for an unexpected error."""
    from fxscale.errors import FxscaleError
    if isinstance(e, FxscaleError):
        return f"fxscale: error: {one_line(e)}", 2
    if isinstance(e, OSError):
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return f"fxscale: error: {where}{e.strerror or one_line(e)}", 2
    text = one_line(e)
    if isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        return (f"fxscale: error: out of memory ({type(e).__name__}: {text[:200]}); use a smaller plan or "
                "--input-size, or free memory"), 2
    return (f"fxscale: error: unexpected {type(e).__name__}: {text[:300]} (a bug? rerun with --traceback and "
            "report it)"), 1


def one_line(error: BaseException) -> str:
    """An error's message on one line (multi-line messages joined with "; ")."""
    return "; ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
