"""`fxscale scale`: the HACScale pipeline from the command line."""
from __future__ import annotations

import argparse
import json

from fxscale.scaling.pipeline import METHOD_NAMES, RULES, ScaleConfig


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def cmd_scale(args: argparse.Namespace) -> int:
    """Run the pipeline and print the Table I-style summary."""
    from fxscale.scaling.pipeline import Pipeline
    from fxscale.scaling.report import table
    d = ScaleConfig()
    cfg = ScaleConfig(model=args.model, data=args.data, data_kw=json.loads(args.data_kw) if args.data_kw else {},
                      target=args.target, threads=args.threads, latency_budget=args.latency_budget,
                      memory_budget=None if args.memory_budget == "none" else args.memory_budget,
                      flops_scale=args.flops_scale, alphas=_floats(args.alphas) if args.alphas else d.alphas,
                      alpha=args.alpha, samples=args.samples, sample_epochs=args.sample_epochs,
                      search_epochs=args.search_epochs, epochs=args.epochs, rule=args.rule, stride=args.stride,
                      align=args.align, methods=_names(args.methods) if args.methods is not None else d.methods,
                      seeds=tuple(range(args.seeds)), lr=args.lr, batch_size=args.batch_size, runs=args.runs,
                      warmup=args.warmup, workers=args.workers, executor=args.executor, profile=args.profile,
                      device=args.device)
    summary = Pipeline(cfg, args.out).run()
    print(table(summary["methods"]))
    print(f"wrote {args.out}/report.md, plan.json, model.pt, model.onnx, results.json")
    return 0


def add_scale_command(sub: argparse._SubParsersAction) -> None:
    """Register `fxscale scale`."""
    d = ScaleConfig()
    p = sub.add_parser("scale", help="HACScale: scale a model for accuracy within latency/memory budgets")
    p.add_argument("model", nargs="?", default=d.model, help="zoo model name (default: digits_resnet)")
    p.add_argument("--data", default=d.data, help="dataset: digits (embedded), synthetic, cifar10, cifar100, "
                   "imagefolder")
    p.add_argument("--data-kw", help='dataset options as JSON, e.g. \'{"train_fraction": 0.25}\'')
    p.add_argument("--target", default=d.target, help="latency target: ort (default), torch, trtexec")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--latency-budget", default=d.latency_budget, help="e.g. 1.05x (of the baseline) or ms")
    p.add_argument("--memory-budget", default=d.memory_budget, help="params: e.g. 1.5x, a count, or none")
    p.add_argument("--flops-scale", type=float, default=d.flops_scale, help="s in r = sqrt(s)^a, w = sqrt(s)^(1-a)")
    p.add_argument("--alphas", help="alpha candidates, comma separated (default 0.25,0.5,0.75)")
    p.add_argument("--alpha", type=float, help="use this alpha (skip the search)")
    p.add_argument("--samples", type=int, default=d.samples, help="width configurations for the importance fit")
    p.add_argument("--sample-epochs", type=int, default=d.sample_epochs)
    p.add_argument("--search-epochs", type=int, default=d.search_epochs)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--rule", choices=RULES, default=d.rule, help="paper: argmax importance; cost: per ms")
    p.add_argument("--stride", type=int, default=d.stride, help="kernels added per step (paper: 10)")
    p.add_argument("--align", type=int, default=d.align, help="round widths to multiples of this (e.g. 8)")
    p.add_argument("--methods", help=f"baselines to compare, comma separated, from {','.join(METHOD_NAMES)}")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--runs", type=int, default=d.runs)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--workers", type=int, default=d.workers, help="parallel training processes")
    p.add_argument("--executor", default=d.executor, help="local or ray")
    p.add_argument("--profile", help="device profile JSON from `fxscale profile` (default: calibrate here)")
    p.add_argument("--device", default=d.device, help="training device: cpu, cuda, auto")
    p.add_argument("--out", default="out", help="output folder (stages are resumed from it)")
    p.set_defaults(func=cmd_scale)
