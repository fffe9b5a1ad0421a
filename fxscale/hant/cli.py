"""`fxscale accelerate`: HANT from the command line.

Every option is checked (AccelerateConfig.validate in option wording, the out folder, MODEL, target, data, executor)
before any data is loaded or model built, so a typo costs nothing and leaves OUT untouched. Logs go to stderr.
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from fxscale.cli_checks import HelpFormatter as FORMATTER
from fxscale.cli_checks import float_list, json_object, nonnegative_int, positive_int, stderr_line
from fxscale.hant.config import BASELINES, AccelerateConfig
from fxscale.scaling.cli import option_labels  # field -> option, for messages in CLI wording


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def config_from_args(args: argparse.Namespace) -> AccelerateConfig:
    """The AccelerateConfig of the parsed options (not validated)."""
    d = AccelerateConfig()
    return AccelerateConfig(
        model=args.model, data=args.data, data_kw=args.data_kw or {}, resolution=args.resolution,
        target=args.target, threads=args.threads, latency_budget=args.latency_budget,
        latency_profile=args.latency_profile,
        candidates=_names(args.candidates) if args.candidates else None, score=args.score,
        multi_site=_names(args.multi_site) if args.multi_site else (),
        teacher_epochs=args.teacher_epochs, distill_epochs=args.distill_epochs, distill_samples=args.distill_samples,
        finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, seed=args.seed,
        seeds=tuple(range(args.seeds)), baselines=_names(args.baselines) if args.baselines is not None else
        d.baselines, frontier=args.frontier if args.frontier is not None else d.frontier,
        additivity=args.additivity, runs=args.runs, warmup=args.warmup, rounds=args.rounds,
        executor=args.executor, workers=args.workers,
        executor_kw={"address": args.ray_address} if args.ray_address else {},
        progress=not getattr(args, "quiet", False))


def validate(args: argparse.Namespace, labels: dict[str, str]) -> AccelerateConfig:
    """Every check that needs no model, data or timing, in CLI wording."""
    from fxscale.cli_checks import (
        check_dataset,
        check_executor,
        check_model_spec,
        check_out_dir,
        check_target,
        fail,
    )
    check_out_dir(args.out, "--out")
    if args.seeds < 1:
        fail(f"--seeds must be >= 1 (number of fine-tuning seeds), got {args.seeds}")
    cfg = config_from_args(args)
    cfg.validate(labels)
    check_model_spec(cfg.model)
    check_target(cfg.target, "--target")
    check_dataset(cfg.data, "--data")
    check_executor(cfg.executor, cfg.workers, "--executor", "--workers")
    return cfg


def cmd_accelerate(args: argparse.Namespace, labels: dict[str, str]) -> int:
    """Run HANT and print the methods table (stdout); logs and progress go to stderr."""
    from fxscale.hant.api import run
    from fxscale.hant.report import methods_table
    cfg = validate(args, labels)
    quiet = getattr(args, "quiet", False)
    results = run(cfg, args.out, log=(lambda _m: None) if quiet else stderr_line)
    print(methods_table(results["methods"]))
    print(f"wrote {Path(args.out) / 'report.md'}, plan.json, model.pt, model.pt2, model.onnx, results.json")
    return 0


def add_accelerate_command(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale accelerate`."""
    d = AccelerateConfig()
    p = sub.add_parser("accelerate", help="HANT: replace slow blocks by distilled cheaper ones under a latency budget",
                       formatter_class=FORMATTER,
                       description="Find the replaceable sites of MODEL, train many candidate operations per site by "
                                   "layer-wise distillation, time them on the target, pick one per site with an "
                                   "integer program under the budget, fine-tune, compare with pruning and "
                                   "random/greedy selection at the same measured latency, and write OUT/report.md, "
                                   "plan.json, model.pt, model.pt2, model.onnx, results.json. Stages are cached in "
                                   "OUT/stages: rerunning the same command resumes.")
    p.add_argument("model", nargs="?", default=d.model, help="zoo model name, timm:NAME, package.module:callable or "
                   "path/to/file.py:callable (trained for --teacher-epochs first)")
    p.add_argument("--data", default=d.data, help="dataset: digits (embedded), synthetic, cifar10, ...")
    p.add_argument("--data-kw", type=json_object, default=None, help="dataset options as a JSON object")
    p.add_argument("--resolution", type=positive_int, default=None, help="square input size (default: the data's)")
    p.add_argument("--target", default=d.target, help="latency target: ort, torch")
    p.add_argument("--latency-profile", default=None,
                   help="device profile (fxscale profile) to predict the latency table from instead of timing every "
                        "(site, candidate) pair; the solve loop still measures the student on --target (default: "
                        "time every pair)")
    p.add_argument("--threads", type=positive_int, default=d.threads, help="intra-op threads of the timed runtime")
    p.add_argument("--latency-budget", default=d.latency_budget,
                   help="a ratio of the teacher's measured latency (0.6x) or a latency in ms (2.5ms)")
    p.add_argument("--candidates", default=None,
                   help="candidate specs, comma separated (default: the grid of candidates.default_grid per site), "
                        "e.g. teacher,skip,cn_k3,ds_k3,ir_e3_k3,ir_e6_k5_se,er_e4_k3,prune_x0.5")
    p.add_argument("--multi-site", default=None,
                   help="candidate specs, comma separated, for one block replacing two consecutive sites that chain "
                        "(depth reduction; the integer program covers each site exactly once), e.g. skip,ds_k3,"
                        "ir_e3_k3 (default: none)")
    p.add_argument("--score", default=d.score, help="dloss (default), dacc or local")
    p.add_argument("--teacher-epochs", type=nonnegative_int, default=d.teacher_epochs, help="teacher training epochs")
    p.add_argument("--distill-epochs", type=nonnegative_int, default=d.distill_epochs, help="epochs per pair")
    p.add_argument("--distill-samples", type=positive_int, default=d.distill_samples,
                   help="captured train images per site")
    p.add_argument("--finetune-epochs", type=nonnegative_int, default=d.finetune_epochs,
                   help="KD fine-tune epochs of every method")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="batch size")
    p.add_argument("--seed", type=nonnegative_int, default=d.seed, help="seed of teacher, candidates and selection")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per method (>= 1)")
    p.add_argument("--baselines", default=None, help=f"comma separated from {','.join(BASELINES)} ('' for none)")
    p.add_argument("--frontier", type=float_list, default=None, help="budget ratios of the accuracy/latency frontier")
    p.add_argument("--additivity", type=nonnegative_int, default=d.additivity,
                   help="random assemblies timed to check the latency table's additivity")
    p.add_argument("--runs", type=positive_int, default=d.runs, help="timed runs per model and round")
    p.add_argument("--warmup", type=nonnegative_int, default=d.warmup, help="warm-up runs per model")
    p.add_argument("--rounds", type=positive_int, default=d.rounds, help="interleaved timing rounds")
    p.add_argument("--executor", default=d.executor, help="local, or ray (phase-1 pairs)")
    p.add_argument("--workers", type=positive_int, default=d.workers, help="local worker processes")
    p.add_argument("--ray-address", default=None, help="Ray cluster address for --executor ray (e.g. auto)")
    p.add_argument("--out", default="out", help="output folder (stages are resumed from it)")
    p.set_defaults(func=functools.partial(_run, parser=p))


def _run(args: Any, parser: argparse.ArgumentParser) -> int:
    return cmd_accelerate(args, option_labels(parser))


__all__ = ["add_accelerate_command", "cmd_accelerate", "config_from_args", "validate"]
