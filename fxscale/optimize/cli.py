"""`fxscale optimize`: Woodpecker-DL-style inference optimisation from the command line.

Every option is checked (target, backends, granularity, budget, --plan, --out) before a model is built or timed; a
bad input prints one line on stderr and exits 2 with the out folder untouched (outputs are staged). Progress goes
to stderr through rich; the summary line to stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fxscale.cli_checks import HelpFormatter as FORMATTER
from fxscale.cli_checks import nonnegative_int, positive_int


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/fxscale/optimize (~/.cache/fxscale/optimize)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fxscale" / "optimize"


def add_optimize_command(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale optimize`."""
    from fxscale.cli import add_model_args
    from fxscale.optimize.api import DEFAULT_BACKENDS, TARGETS
    from fxscale.optimize.partition import GRANULARITIES
    p = sub.add_parser("optimize", help="the fastest deployable form of a model: graph passes, partitions, one "
                       "measured implementation per partition (Woodpecker-DL)", formatter_class=FORMATTER,
                       description="Apply --plan (a scaling plan) first, optimise the inference graph, split it into "
                                   "partitions, time every partition on every backend, choose by DP/MILP and a GA "
                                   "on measured latency, and write OUT/inference_plan.json, optimized.pt, "
                                   "results.json and report.md (all of them, or nothing on error).")
    add_model_args(p)
    p.add_argument("--plan", default=None, help="scaling plan JSON applied before optimising (fxscale transform)")
    p.add_argument("--target", default="cpu", help=f"device target: {', '.join(TARGETS)}")
    p.add_argument("--backends", type=_names, default=None,
                   help=f"comma-separated backends (default: {','.join(DEFAULT_BACKENDS)}; also inductor, tvm, "
                        "tensorrt); unavailable ones are skipped with a line in the report")
    p.add_argument("--granularity", default="block", help=f"partitions: {', '.join(GRANULARITIES)}")
    p.add_argument("--max-partitions", type=positive_int, default=12, help="at most this many blocks (block mode)")
    p.add_argument("--tune-minutes", type=_nonnegative_float, default=1.0,
                   help="time budget of all tuning on one clock: TVM's MetaSchedule search (--tvm-trials), then the "
                        "genetic search on measured latency with what is left (default 1.0; 0: no search, the "
                        "exact DP/MILP choice and cached tuning only)")
    p.add_argument("--population", type=positive_int, default=8, help="GA population")
    p.add_argument("--generations", type=nonnegative_int, default=4, help="GA generations (0: no GA)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the GA and the example input")
    p.add_argument("--runs", type=positive_int, default=15, help="timed runs per item (split into --rounds)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds")
    p.add_argument("--cache-dir", default=None, help=f"timing cache folder (default {default_cache_dir()}; "
                   "'none' disables it)")
    p.add_argument("--onnx-simplify", action="store_true",
                   help="also write OUT/model.onnx: the optimised graph exported and simplified by onnxslim")
    p.add_argument("--no-conv-table", action="store_true", help="skip the per-conv-shape table of the report")
    p.add_argument("--tvm-trials", type=nonnegative_int, default=0,
                   help="with tvm in --backends: MetaSchedule trials per partition and per conv shape of the table "
                        "(tuning databases cached in --cache-dir)")
    p.add_argument("--out", required=True, help="output folder (created; its files are replaced together)")
    p.set_defaults(func=cmd_optimize)


def validate(args: argparse.Namespace) -> list[str]:
    """Every check that needs no model; FxscaleError with the option's name. Returns the backend names."""
    from fxscale.cli import check_model_args
    from fxscale.cli_checks import check_out_dir, fail
    from fxscale.errors import FxscaleError
    from fxscale.optimize.api import check_options
    check_out_dir(args.out, "--out")
    check_model_args(args)
    if args.cache_dir not in (None, "none") and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        fail(f"--cache-dir {args.cache_dir} is a file, not a folder")
    if args.backends is not None and not args.backends:
        fail("--backends is empty; give comma-separated backend names")
    try:
        return check_options(args.target, args.backends, args.granularity, args.max_partitions, args.tune_minutes)
    except FxscaleError as e:
        msg = str(e)
        for word, opt in (("target", "--target"), ("backend", "--backends"), ("granularity", "--granularity")):
            if msg.startswith(f"unknown {word}") or msg.startswith(f"unknown optimize {word}"):
                fail(f"{opt}: {msg}")
        raise


def _progress(quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=True, console=Console(stderr=True))
    tasks: dict[str, Any] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)
    return bar, report


def _tvm_settings(args: argparse.Namespace, names: list[str], cache: Any) -> dict[str, dict[str, Any]]:
    """With --tvm-trials and tvm among the backends: MetaSchedule tuning of every partition, its database cached."""
    if "tvm" not in names or not args.tvm_trials:
        return {}
    settings: dict[str, Any] = {"trials": args.tvm_trials}
    if cache is not None:
        settings["cache_dir"] = str(Path(cache) / "tvm")
    return {"tvm": settings}


def cmd_optimize(args: argparse.Namespace) -> int:
    """Run fxscale.optimize and write OUT."""
    import contextlib
    import torch
    from fxscale.cli import read_plan
    from fxscale.cli_checks import resolve_leaves, torch_noise_captured
    from fxscale.modelspec import build_model, default_input
    from fxscale.optimize.api import optimize
    names = validate(args)
    plan = read_plan(args.plan) if args.plan else None  # a malformed plan fails before the model is built
    leaves = resolve_leaves(getattr(args, "leaf", None))
    model = build_model(args.model).eval()
    channels, size = default_input(args.model, model, args.input_size)
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(args.seed))
    cache = None if args.cache_dir == "none" else Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    bar, report = _progress(getattr(args, "quiet", False))
    with (bar if bar is not None else contextlib.nullcontext()), torch_noise_captured():
        result = optimize(model, x, target=args.target, backends=names, plan=plan, out=args.out,
                          tune_minutes=args.tune_minutes, granularity=args.granularity,
                          max_partitions=args.max_partitions, ga_population=args.population,
                          ga_generations=args.generations, seed=args.seed, runs=args.runs, rounds=args.rounds,
                          cache_dir=cache, model_name=args.model, leaf_modules=leaves, progress=report,
                          conv_table=not args.no_conv_table, onnx_simplify=args.onnx_simplify,
                          conv_tune={"trials": args.tvm_trials} if args.tvm_trials else None,
                          backend_settings=_tvm_settings(args, names, cache))
    res = result.results
    single, eager = res["speedup_vs_best_single"], res["speedup_vs_eager"]
    hyb = res["builds"][0]
    text = f"{args.model}: hybrid {hyb['latency_ms']:.3f} ms ({result.plan['selection']['method']}, " \
           f"{len(result.plan['partitions'])} partitions)"
    if single:
        text += f"; {single['ratio']:.2f}x vs best single backend {single['vs']}"
    text += f"; {eager['ratio']:.2f}x vs torch eager; wrote {Path(args.out) / 'inference_plan.json'}, " \
            "optimized.pt, results.json, report.md"
    print(text)
    return 0


__all__ = ["add_optimize_command", "cmd_optimize", "default_cache_dir", "validate"]
