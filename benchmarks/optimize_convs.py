"""WPK's per-conv comparison: every distinct conv shape of resnet18 and mobilenet_v2, under every implementation.

For each distinct nn.Conv2d (input shape + hyper-parameters) of each model, extracted as a one-op module, the
table times torch eager (the library default), channels_last, onnxruntime, OpenVINO, inductor, TVM with its
default schedules and, with --tune-trials > 0, TVM tuned by MetaSchedule, interleaved in one timing-engine run
per shape (one thread, median of rounds), and reports each implementation's median ms with the 95% interval of its
ratio to the library default, the fastest, its speed-up, and the shapes where tuned TVM beats the library default.
Rows are cached on disk (~/.cache/fxscale or $FXSCALE_CACHE); --no-cache re-times. Writes OUT/STEM.md and
OUT/STEM.csv (STEM: --stem, default convs).

    python benchmarks/optimize_convs.py --models resnet18,mobilenet_v2 --size 64 --tune-trials 64
    python benchmarks/optimize_convs.py --size 32 --max-shapes 2 --backends torch_default,channels_last,ort
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def _csv(rows_by_model: dict[str, list[dict]], labels: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "shape", "layers", *[f"{k}_{f}" for k in labels for f in ("ms", "ratio", "ratio_lo",
                                                                                   "ratio_hi")],
                "fastest", "speedup", "skipped"])
    for model, rows in rows_by_model.items():
        for r in rows:
            cells = []
            for k in labels:
                v = r["impl"].get(k)
                cells += ["" if v is None else f"{v[f]:.5g}" for f in ("ms", "ratio", "ratio_lo", "ratio_hi")]
            w.writerow([model, r["shape"], " ".join(r["layers"]), *cells, r["fastest"], f"{r['speedup']:.4g}",
                        "; ".join(f"{k}: {v}" for k, v in r["skipped"].items())])
    return buf.getvalue()


def _tuned_lines(rows_by_model: dict[str, list[dict]]) -> list[str]:
    out = []
    for model, rows in rows_by_model.items():
        for r in rows:
            t = r["impl"].get("tvm_tuned")
            if t is None:
                continue
            d = r["impl"].get("tvm_default")
            beat = "beats" if t["ratio_hi"] < 1.0 else ("is slower than" if t["ratio_lo"] > 1.0 else "ties")
            extra = f"; {d['ms'] / t['ms']:.2f}x over TVM's default schedule" if d and t["ms"] > 0 else ""
            out.append(f"- {model} `{r['shape']}`: tuned TVM {beat} torch eager ({t['ratio']:.2f}x time "
                       f"[{t['ratio_lo']:.2f}, {t['ratio_hi']:.2f}]){extra}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2", help="comma-separated fxscale.zoo models")
    p.add_argument("--size", type=int, default=64, help="input side (px)")
    p.add_argument("--backends", default="", help="comma-separated implementation labels (default: all)")
    p.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule trials per conv (0: no tuned TVM)")
    p.add_argument("--tune-minutes", type=float, default=None, help="time budget per conv's tuning")
    p.add_argument("--population", type=int, default=128, help="evolutionary-search population")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-shapes", type=int, default=None, help="only the first N distinct shapes per model")
    p.add_argument("--no-cache", action="store_true", help="re-time every row")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "optimize"))
    p.add_argument("--stem", default="convs", help="output file names: OUT/STEM.md and OUT/STEM.csv")
    args = p.parse_args(argv)
    import torch

    from fxscale import zoo
    from fxscale.artifacts import write_text_atomic
    from fxscale.errors import FxscaleError
    from fxscale.optimize.backends.convtable import IMPLEMENTATIONS, conv_table, table_markdown
    from fxscale.optimize.backends.registry import backend_reasons
    from fxscale.optimize.measure import default_protocol

    torch.set_num_threads(1)
    tune = None
    if args.tune_trials > 0:
        tune = {"trials": args.tune_trials, "population": args.population,
                "time_budget_s": args.tune_minutes * 60 if args.tune_minutes else None}
    labels = [b for b in args.backends.split(",") if b] or None
    protocol = default_protocol(runs=args.runs, rounds=args.rounds, warmup=args.warmup)
    rows_by_model: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    try:
        for name in [m for m in args.models.split(",") if m]:
            model = zoo.create_model(name).eval()
            gm = torch.fx.symbolic_trace(model)
            rows = conv_table(gm, torch.randn(1, 3, args.size, args.size), backends=labels, protocol=protocol,
                              tune=tune, use_cache=not args.no_cache, limit=args.max_shapes,
                              progress=lambda s, n=name: print(f"[{n}] {s}", file=sys.stderr, flush=True))
            rows_by_model[name] = rows
    except FxscaleError as exc:
        print(f"optimize_convs: error: {exc}", file=sys.stderr)
        return 2
    used = [k for k in IMPLEMENTATIONS if any(k in r["impl"] for rs in rows_by_model.values() for r in rs)]
    skipped = {k: r for k, r in backend_reasons().items() if r}
    head = [f"# Per-conv implementations (WPK's per-conv comparison), {args.size} px input",
            "", f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, one thread; median ms (time ratio to torch eager [95% interval]); "
            f"{args.runs} runs in {args.rounds} interleaved rounds per implementation; "
            f"{time.perf_counter() - t0:.0f} s. Command: `python benchmarks/optimize_convs.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    n_rows = sum(len(rs) for rs in rows_by_model.values())
    n_cached = sum(r.get("cached", False) for rs in rows_by_model.values() for r in rs)
    head += [f"{n_cached} of {n_rows} rows came from the disk cache (timed by an earlier run; --no-cache re-times)."]
    head += [f"Skipped backends: {k}: {r}" for k, r in skipped.items()]
    body = [table_markdown(rows, name) for name, rows in rows_by_model.items()]
    wins = {m: sum(r["fastest"] != "torch_default" and r["impl"][r["fastest"]]["ratio_hi"] < 1.0 for r in rows)
            for m, rows in rows_by_model.items()}
    summary = ["## Summary", ""] + [f"- {m}: {wins[m]}/{len(rows_by_model[m])} shapes where another implementation "
                                    f"beats torch eager beyond noise" for m in rows_by_model]
    tuned = _tuned_lines(rows_by_model)
    if not tuned:
        why = sorted({r["skipped"]["tvm_tuned"] for rs in rows_by_model.values() for r in rs
                      if "tvm_tuned" in r["skipped"]})
        tuned = [f"- no tuned build: {w}" for w in why] or ["- not run (--tune-trials 0)"]
    summary += ["", "### Tuned TVM (MetaSchedule) against the library default", ""] + tuned
    text = "\n".join(head) + "\n\n" + "\n".join(body) + "\n" + "\n".join(summary) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{args.stem}.md", text)
    write_text_atomic(out / f"{args.stem}.csv", _csv(rows_by_model, used))
    return 0


if __name__ == "__main__":
    sys.exit(main())
