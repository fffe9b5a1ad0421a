"""`fxscale scale`: the HACScale pipeline from the command line.

Every option is checked (ScaleConfig.validate with the option names as labels, the out folder, MODEL, --leaf)
before the dataset is loaded or a model built, so a typo costs no latency calibration. Logs go to stderr.
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from fxscale.cli_checks import HelpFormatter as FORMATTER
from fxscale.cli_checks import finite_float, float_list, json_object, stderr_line
from fxscale.scaling.config import METHOD_NAMES, ScaleConfig
from fxscale.scaling.greedy import RULES



def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _noise(text: str) -> Any:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None


def option_labels(parser: argparse.ArgumentParser) -> dict[str, str]:
    """ScaleConfig field -> the option that sets it (--alphas for alphas, ...), for messages in CLI wording."""
    labels = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    labels["model"] = "MODEL"
    return labels


def config_from_args(args: argparse.Namespace) -> ScaleConfig:
    """The ScaleConfig of the parsed options (not validated)."""
    d = ScaleConfig()
    return ScaleConfig(model=args.model, data=args.data, data_kw=args.data_kw or {}, target=args.target,
                       threads=args.threads, latency_budget=args.latency_budget,
                       memory_budget=None if str(args.memory_budget).lower() == "none" else args.memory_budget,
                       flops_scale=args.flops_scale, alphas=args.alphas if args.alphas is not None else d.alphas,
                       alpha=args.alpha, samples=args.samples, sample_epochs=args.sample_epochs,
                       sample_max_epochs=args.sample_max_epochs,
                       sample_mode=args.sample_mode, sample_seeds=args.sample_seeds,
                       importance_holdout=args.importance_holdout, importance_norm=args.importance_norm,
                       search_epochs=args.search_epochs, epochs=args.epochs, rule=args.rule, stride=args.stride,
                       align=args.align, methods=_names(args.methods) if args.methods is not None else d.methods,
                       seeds=tuple(range(max(args.seeds, 0))), lr=args.lr, batch_size=args.batch_size,
                       runs=args.runs, warmup=args.warmup, workers=args.workers, executor=args.executor,
                       ray_address=args.ray_address, inference_plan=args.inference_plan,
                       profile=args.profile, device=args.device, progress=not getattr(args, "quiet", False),
                       leaf=tuple(args.leaf) if args.leaf else None, trtexec=args.trtexec,
                       max_memory=args.max_memory, static_batch=args.static_batch,
                       start=args.start, weights=args.weights, warm_fraction=args.warm_fraction, noise=args.noise,
                       distill=args.distill, variants=_names(args.variants) if args.variants is not None else
                       d.variants, search_s=not args.fixed_s, split_per_seed=not args.fixed_split,
                       flops_tol=args.flops_tol, ci_halfwidth=args.ci_halfwidth, max_rounds=args.max_rounds,
                       baseline_align=args.baseline_align)


def validate(args: argparse.Namespace, labels: dict[str, str]) -> ScaleConfig:
    """Every check that needs no model, data or timing, in CLI wording."""
    from fxscale.cli_checks import check_model_spec, check_out_dir, fail, resolve_leaves
    check_out_dir(args.out, "--out")
    if args.seeds < 1:
        fail(f"--seeds must be >= 1 (number of training seeds), got {args.seeds}")
    cfg = config_from_args(args)
    cfg.validate(labels)
    check_model_spec(cfg.model)
    resolve_leaves(cfg.leaf, "--leaf")
    return cfg


def cmd_scale(args: argparse.Namespace, labels: dict[str, str]) -> int:
    """Run the pipeline and print the Table I-style summary (stdout); logs and progress go to stderr."""
    from fxscale.scaling.pipeline import Pipeline
    from fxscale.scaling.report import table
    cfg = validate(args, labels)
    quiet = getattr(args, "quiet", False)
    summary = Pipeline(cfg, args.out, log=(lambda _m: None) if quiet else stderr_line).run()
    print(table(summary["methods"]))
    print(f"exported {summary['hacscale_choice']['chosen']} (best HACScale row on validation)")
    print(f"wrote {Path(args.out) / 'report.md'}, plan.json, model.pt, model.pt2, model.onnx, results.json")
    return 0


def add_scale_command(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale scale`."""
    d = ScaleConfig()
    p = sub.add_parser("scale", help="HACScale: scale a model for accuracy within latency/memory budgets",
                       formatter_class=FORMATTER,
                       description="Calibrate a latency model, search alpha, fit the importance predictor, run "
                                   "Algorithm 1, train the baselines and HACScale, time them and write OUT/report.md, "
                                   "plan.json, model.pt, model.pt2, model.onnx, results.json. Stages are cached in "
                                   "OUT/stages: rerunning the same command resumes.")
    p.add_argument("model", nargs="?", default=d.model, help="zoo model name, timm:NAME, package.module:callable or "
                   "path/to/file.py:callable (a zoo model gets the data's channels and classes)")
    p.add_argument("--data", default=d.data, help="dataset: digits (embedded), synthetic, cifar10, cifar100, "
                   "imagefolder")
    p.add_argument("--data-kw", type=json_object, default=None,
                   help='dataset options as a JSON object, e.g. \'{"train_fraction": 0.25}\'')
    p.add_argument("--target", default=d.target, help="latency target: ort, torch, trtexec, hybrid (with --inference-plan)")
    p.add_argument("--trtexec", default=None, help="trtexec binary for --target trtexec (default: trtexec on PATH)")
    p.add_argument("--threads", type=_int, default=d.threads, help="intra-op threads of the timed runtime (>= 1)")
    p.add_argument("--latency-budget", default=d.latency_budget,
                   help="a ratio of the baseline's latency (1.05x, >= 1x), an absolute latency in ms (2.5ms), or none")
    p.add_argument("--memory-budget", default=d.memory_budget,
                   help="parameters: a ratio of the baseline's (1.5x, >= 1x), a count (120000), or none")
    p.add_argument("--flops-scale", type=finite_float, default=d.flops_scale,
                   help="s in r = sqrt(s)^a, w = sqrt(s)^(1-a) (> 0)")
    p.add_argument("--alphas", type=float_list, default=None,
                   help="alpha candidates in (0, 1), comma separated (default 0.25,0.5,0.75)")
    p.add_argument("--alpha", type=finite_float, default=None, help="use this alpha in (0, 1) and skip the search")
    p.add_argument("--samples", type=_int, default=d.samples, help="width configurations for the importance fit (>= 2)")
    p.add_argument("--sample-epochs", type=_int, default=d.sample_epochs, help="epochs per sampled configuration")
    p.add_argument("--sample-max-epochs", type=_int, default=d.sample_max_epochs,
                   help="retrain importance runs that fail the convergence test (train loss flat over the last "
                        "quarter, final val accuracy within 1 pp of the best) with twice the epochs, up to this "
                        "many (default 0: no retraining; the report still counts converged runs)")
    p.add_argument("--sample-mode", choices=("grid", "local"), default=d.sample_mode,
                   help="importance samples: grid (0.5x..2x, default) or local (x0.75..x1.25 per group around the "
                        "working point)")
    p.add_argument("--sample-seeds", type=_int, default=d.sample_seeds, help="training seeds per sampled configuration")
    p.add_argument("--importance-norm", choices=("group", "producer"), default=d.importance_norm,
                   help="per-kernel importance of a tied group: group (summed over every layer it ties, default) or "
                        "producer (divided by its number of producing layers)")
    p.add_argument("--importance-holdout", type=_int, default=d.importance_holdout,
                   help="held-out configurations to check the importance fit on (R² of log importance, MAPE; 0: none)")
    p.add_argument("--search-epochs", type=_int, default=d.search_epochs, help="epochs per alpha candidate")
    p.add_argument("--epochs", type=_int, default=d.epochs, help="epochs of the final trainings")
    p.add_argument("--rule", choices=RULES, default=d.rule, help="rule of the hacscale row; paper (default): argmax "
                   "importance, as in Algorithm 1; cost: importance per ms")
    p.add_argument("--stride", type=_int, default=d.stride, help="kernels added per step (paper: 10)")
    p.add_argument("--align", type=_int, default=d.align, help="round widths to multiples of this many channels "
                   "(paper and default: 1; the hacscale-align8 row uses 8)")
    p.add_argument("--variants", default=None,
                   help="extra HACScale rows beside `hacscale` (the paper's rule, --stride, --align): align8 (widths "
                        f"aligned to 8), cost (the cost-aware rule), comma separated (default {','.join(d.variants)}; "
                        "'' for none); the exported model is the row best on validation")
    p.add_argument("--baseline-align", type=_int, default=d.baseline_align,
                   help="round the comparison methods' widths to multiples of this (default 8: ORT/MLAS blocks "
                        "channels by 8, and unaligned widening costs about +50%% latency on a CPU; 1: unaligned)")
    p.add_argument("--fixed-split", action="store_true",
                   help="every seed trains, validates and tests on one data split (default: seed s uses the "
                        "dataset's split seed base + s, so the CIs sample the split too)")
    p.add_argument("--fixed-s", action="store_true",
                   help="use s = --flops-scale for the alpha candidates (default: with a budget, the largest s <= "
                        "--flops-scale whose candidates all fit it)")
    p.add_argument("--flops-tol", type=finite_float, default=d.flops_tol,
                   help="alpha candidates: relative tolerance of the equal-FLOPs-after-rounding rule (0..1)")
    p.add_argument("--ci-halfwidth", type=finite_float, default=d.ci_halfwidth,
                   help="measured latency ratios: add interleaved rounds until the 95%% interval half-width is at most "
                        "this fraction of the ratio (0..1)")
    p.add_argument("--max-rounds", type=_int, default=d.max_rounds,
                   help="... or until this many rounds (>= 6)")
    p.add_argument("--methods", default=None,
                   help=f"baselines to compare, comma separated, from {','.join(METHOD_NAMES)} (default "
                        f"{','.join(d.methods)}; '' for none)")
    p.add_argument("--seeds", type=_int, default=1, help="training seeds per method (>= 1)")
    p.add_argument("--lr", type=finite_float, default=d.lr, help="learning rate (> 0)")
    p.add_argument("--batch-size", type=_int, default=d.batch_size, help="training batch size (images)")
    p.add_argument("--runs", type=_int, default=d.runs, help="timed runs per model (>= 1)")
    p.add_argument("--warmup", type=_int, default=d.warmup, help="warm-up runs per model (>= 0)")
    p.add_argument("--workers", type=_int, default=d.workers, help="parallel training processes (>= 1)")
    p.add_argument("--executor", default=d.executor, help="local, or ray (needs pip install 'fxscale[ray]')")
    p.add_argument("--inference-plan", default=None, metavar="PATH",
                   help="with --target hybrid: time every model under this `fxscale optimize` inference plan "
                        "(its output folder or inference_plan.json), so the budget refers to what ships")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: a running cluster (HOST:PORT or auto; default: $RAY_ADDRESS, else a "
                        "local Ray runtime)")
    p.add_argument("--profile", default=None, help="device profile JSON from `fxscale profile` (default: "
                   "calibrate an analytic latency model here)")
    p.add_argument("--device", default=d.device, help="training device: cpu, cuda, auto")
    p.add_argument("--leaf", action="append", default=None, metavar="pkg.mod.Class",
                   help="a module class traced as one opaque call (for submodules torch.fx cannot trace); repeatable")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="refuse plans whose model needs more memory than this (bytes, or e.g. 64GB); default: "
                        "MemAvailable of /proc/meminfo")
    p.add_argument("--static-batch", action="store_true",
                   help="export ONNX and model.pt2 with a fixed batch of 1 (default: a dynamic batch dimension)")
    p.add_argument("--start", choices=("scratch", "trained"), default=d.start,
                   help="scratch: train every method from scratch (the paper); trained: apply every plan to the trained "
                        "baseline (--weights, or trained first) function-preservingly and fine-tune it warm")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="--start trained: the baseline's state dict (default: the pipeline trains the baseline)")
    p.add_argument("--warm-fraction", type=finite_float, default=d.warm_fraction,
                   help="--start trained: fine-tune epochs as a fraction of each stage's epochs (0..1]")
    p.add_argument("--noise", type=_noise, default=d.noise,
                   help="--start trained: symmetry-breaking noise on replicated channels (>= 0, relative to each "
                        "weight's mean |w|), or auto: the largest with <= 2%% output drift, measured per plan")
    p.add_argument("--distill", type=finite_float, default=d.distill,
                   help="--start trained: weight of distillation from the baseline in [0, 1] (0: off)")
    p.add_argument("--out", default="out", help="output folder (stages are resumed from it)")
    p.set_defaults(func=functools.partial(_run, labels=None, parser=p))


def _run(args: Any, labels: Any, parser: argparse.ArgumentParser) -> int:
    return cmd_scale(args, labels or option_labels(parser))


__all__ = ["add_scale_command", "cmd_scale", "config_from_args", "option_labels", "validate"]
