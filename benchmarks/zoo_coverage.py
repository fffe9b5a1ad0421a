"""Zoo coverage sweep: trace, analyze, randomly rescale (widths x0.5..x2, resolution x1.5) and ONNX-export models.

Models get a seeded random init calibrated on the example input (``zoo.randomize_(..., example_input=x)``, unit
std at every conv/linear) so that deep stacks (resnet152, efficientnet_v2_l) do not produce 1e3..1e12 logits,
and the ONNX Runtime check is judged relative to the output scale: max|diff| <= 1e-4 * max|torch output|
(fxscale.export's own defaults are per-element rtol 1e-3 / atol 1e-4, which a correct export of a model with
huge outputs can miss by float32 rounding alone).

Each model runs in its own subprocess with a time limit and an address-space limit, so one crash, hang or
memory blow-up neither stops the sweep nor takes the shared machine down. With --tp (and torch_pruning
importable) the same models also get Torch-Pruning's DependencyGraph build and a 50% magnitude prune timed
in a second subprocess (TP needs >20 GB on swin_t), reported as fxscale/TP ratios.

    python benchmarks/zoo_coverage.py --models slice --small --csv out/zoo.csv

With ``--zoo timm`` the sweep runs over zoo_timm.TIMM_MODELS (one representative per timm architecture family,
<= 30M parameters, random init; the family table, size table and exclusion list with reasons are in
benchmarks/zoo_timm.py, whose docstring defines the stages, the ``ok-refused`` status and the ``unsound``,
``cost_rel_diff`` and Torch-Pruning columns; ``--models`` may name a subset). It prints the pass count, the median
scalable width fraction, the unsound-group total and, with --tp, Torch-Pruning's pass count on the same list:

    python benchmarks/zoo_coverage.py --zoo timm --tp --jobs 4 --timeout 600 \
        --csv benchmarks/results/zoo_coverage_timm.csv --md benchmarks/results/zoo_coverage_timm.md

(``--jobs`` runs that many model subprocesses at once; the CSV is rewritten after every model.)
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import inspect
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_timm import TIMM_MODELS, run_fxscale_timm, run_torch_pruning_timm  # noqa: E402

RESULT_TAG = "ZOO_RESULT "
PASS = ("ok", "ok-refused")  # ok-refused: see zoo_timm (a resolution change refused for weights over a spatial dim)
FIELDS = ("model", "status", "stage", "reason", "size", "new_size", "groups", "scalable", "width_frac", "widen_rel_diff",
          "trace_ms",
          "analyze_ms", "transform_ms", "forward_ms", "onnx_ms", "onnx_max_abs_diff", "onnx_rel_diff", "seconds",
          "tp_status", "tp_dg_ms", "tp_prune_ms", "ratio_analyze_tp_dg", "ratio_transform_tp_prune",
          "unsound", "unsound_groups", "cost_rel_diff", "cost_ok", "onnx_recalibrated", "exact_claimed",
          "exact_reason", "resolution_note")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", choices=("torchvision", "timm"), default="torchvision",
                   help="torchvision (zoo names) or timm (TIMM_MODELS; --models may name a subset)")
    p.add_argument("--models", default=None, help="'all', 'slice' or a comma-separated list of zoo names")
    p.add_argument("--skip-slow", action="store_true", help="with --models all: leave out >150M-parameter models")
    p.add_argument("--small", action="store_true", help="use each model's small test input instead of 224/299")
    p.add_argument("--csv", type=Path, help="also write one row per model to this CSV file")
    p.add_argument("--from-csv", type=Path, help="summarise this sweep CSV (no models run; with --md, write it)")
    p.add_argument("--md", type=Path, help="with --zoo timm: also write the summary markdown to this file")
    p.add_argument("--tp", action="store_true", help="also time Torch-Pruning (DependencyGraph + 50%% prune)")
    p.add_argument("--jobs", type=int, default=1, help="models run at once (each in its own subprocess)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model before it is killed")
    p.add_argument("--mem-gb", type=float, default=10.0,
                   help="address-space limit per model subprocess in GiB (torch itself maps ~3.5); 0: none")
    p.add_argument("--seed", type=int, default=0, help="seed of the random width plans and of the calibrated random init")
    p.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--part", choices=("fxscale", "tp"), default="fxscale", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def select_models(spec: str | None, skip_slow: bool, which: str = "torchvision") -> list[str]:
    """Resolve --models into zoo names (unknown names fail here, with close matches)."""
    from fxscale import zoo

    if which == "timm":
        names = list(TIMM_MODELS) if spec in (None, "all", "slice") else \
            [n.strip() if n.strip().startswith("timm:") else f"timm:{n.strip()}" for n in spec.split(",") if n.strip()]
        for n in names:
            zoo.get_spec(n)
        return names
    spec = spec or "slice"
    if spec == "all":
        return zoo.list_models(include_slow=not skip_slow)
    if spec == "slice":
        return zoo.representative_slice()
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        zoo.get_spec(n)
    return names


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """One-line 'Type: message' summary of an exception."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run fn and return (result, milliseconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, round((time.perf_counter() - t0) * 1e3, 3)


def random_plan(groups: Sequence[Any], size: int, seed: str) -> Any:
    """Per scalable group a width of x0.5..x2 rounded to its divisor, and a square resolution."""
    import fxscale

    rng = random.Random(seed)
    widths = {}
    for g in groups:
        if g.scalable:
            d = max(1, int(g.divisor))
            widths[g.name] = max(d, round(g.width * rng.uniform(0.5, 2.0) / d) * d)
    return fxscale.ScalingPlan(widths=widths, resolution=(size, size))


# Documented exceptions to "small input, resolution x1.5":
# - MaxViT: its window/grid partitions (partition size 7 at stride 32) need every stage's map divisible by 7,
#   i.e. an input that is a multiple of 224 (224 * 1.5 = 336 raises a PlanError naming the nearest sizes that
#   work, 224 and 448), so it is scaled x2. ViT (position embeddings resampled, shape asserts rewritten) and
#   Swin (windows padded at run time) take the x1.5 step like everything else.
# - VGG/AlexNet: AdaptiveAvgPool2d((7, 7)) / ((6, 6)) has no opset-13 ONNX export unless the pooled map is a
#   multiple of the output size, so they run at 224 (VGG scaled to 448, AlexNet kept at 224).
# - ViT: nn.MultiheadAttention lowers to aten::scaled_dot_product_attention, which the TorchScript exporter
#   supports from opset 14 only, so ViTs are exported at opset 14 (everything else at fxscale's default 13).
RESOLUTION_SCALE = {"maxvit": 2.0}
FULL_SIZE = {"vgg": 2.0, "alexnet": 1.0}
ONNX_OPSET = {"vit": 14}
ONNX_REL_TOL = 1e-4  # max|onnx - torch| / max|torch|


def sizes_for(spec: Any, small: bool) -> tuple[int, int]:
    """(traced size, scaled size) of one model in the sweep."""
    if spec.family in FULL_SIZE:
        return spec.full_input_size, round(spec.full_input_size * FULL_SIZE[spec.family])
    # fxscale.trace also runs the train-mode graph (aux heads) at the example input: inception_v3's aux head
    # needs 299 px there, so its small size is its train size (spec.train_input_size; the input size otherwise)
    size = max(spec.small_input_size, spec.train_input_size) if small else spec.full_input_size
    return size, round(size * RESOLUTION_SCALE.get(spec.family, 1.5))


def batch_for(spec: Any) -> int:
    """Batch of the example input: 2 where the traced train-mode graph has BatchNorm on a 1x1 map (inception_v3's
    aux head), which cannot normalise a single value per channel; 1 otherwise."""
    return 2 if spec.train_input_size > spec.small_input_size else 1


def run_fxscale(name: str, small: bool, seed: int, row: dict[str, Any]) -> None:
    """Build, trace, analyze, transform, run and export one model, filling ``row`` stage by stage."""
    import torch

    import fxscale
    from fxscale import zoo

    spec = zoo.get_spec(name)
    size, new_size = sizes_for(spec, small)
    row.update(size=size, new_size=new_size, stage="build")
    model = zoo.create_model(name).eval()
    x = spec.example_input(batch=batch_for(spec), size=size)
    zoo.randomize_(model, seed=seed, example_input=x)
    with torch.no_grad():
        ref_shape = tuple(model(x).shape)
    row["stage"] = "trace"
    gm, row["trace_ms"] = timed(lambda: fxscale.trace(model, x))
    row["stage"] = "analyze"
    cg, row["analyze_ms"] = timed(lambda: fxscale.analyze(gm))
    row["groups"], row["scalable"] = len(cg.groups), sum(bool(g.scalable) for g in cg.groups)
    plan = random_plan(cg.groups, row["new_size"], f"{seed}:{name}")
    extra = {"cg": cg} if "cg" in inspect.signature(fxscale.transform).parameters else {}
    row["stage"] = "transform"
    new, row["transform_ms"] = timed(lambda: fxscale.transform(gm, plan, init="preserve", **extra))
    row["stage"] = "forward"
    x_new = spec.example_input(batch=batch_for(spec), size=row["new_size"])
    with torch.no_grad():
        out, row["forward_ms"] = timed(lambda: new(x_new))
    if tuple(out.shape) != ref_shape or not torch.isfinite(out).all():
        raise RuntimeError(f"scaled output has shape {tuple(out.shape)} (want {ref_shape}) or is not finite")
    row["stage"] = "onnx"
    scale = float(out.abs().max())
    with tempfile.TemporaryDirectory() as tmp:  # ORT check relative to the output scale (see module docstring)
        opset = ONNX_OPSET.get(spec.family, 13)
        report, row["onnx_ms"] = timed(lambda: fxscale.export_onnx(new, Path(tmp) / f"{name}.onnx", x_new, opset=opset,
                                                                   rtol=0.0, atol=ONNX_REL_TOL * scale))
    row["onnx_max_abs_diff"] = getattr(report, "max_abs_diff", None)
    if row["onnx_max_abs_diff"] is not None and scale > 0:
        row["onnx_rel_diff"] = row["onnx_max_abs_diff"] / scale
    row.update(status="ok", stage="")


def run_torch_pruning(name: str, small: bool, row: dict[str, Any]) -> None:
    """Time Torch-Pruning's DependencyGraph build and a 50% magnitude prune of the same model."""
    import torch
    import torch_pruning as tp

    from fxscale import zoo

    spec = zoo.get_spec(name)
    model = zoo.create_model(name).eval()
    x = spec.example_input(size=spec.small_input_size if small else spec.full_input_size)
    _, row["tp_dg_ms"] = timed(lambda: tp.DependencyGraph().build_dependency(copy.deepcopy(model), example_inputs=x))
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == spec.num_classes]
    pruner_cls = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MagnitudePruner
    importance_cls = getattr(tp.importance, "GroupMagnitudeImportance", None) or tp.importance.MagnitudeImportance
    pruner, init_ms = timed(lambda: pruner_cls(model, x, importance=importance_cls(p=2), pruning_ratio=0.5,
                                               ignored_layers=heads))
    _, step_ms = timed(pruner.step)
    row["tp_prune_ms"] = init_ms + step_ms
    with torch.no_grad():
        model(x)
    row["tp_status"] = "ok"


def worker(args: argparse.Namespace) -> int:
    """Subprocess entry: run one part for one model and print its row as a tagged JSON line."""
    if args.mem_gb > 0:
        limit = int(args.mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(1)
    row: dict[str, Any] = {"model": args.worker}
    t0 = time.perf_counter()
    if args.part == "fxscale":
        row.update(status="fail", stage="build", reason="")
        try:
            if args.worker.startswith("timm:"):
                run_fxscale_timm(args.worker, args.seed, row)
            else:
                run_fxscale(args.worker, args.small, args.seed, row)
        except Exception as exc:  # noqa: BLE001 - every failure is a result of the sweep
            row["reason"] = short_reason(exc)
        row["seconds"] = round(time.perf_counter() - t0, 2)
    else:
        try:
            if args.worker.startswith("timm:"):
                run_torch_pruning_timm(args.worker, args.seed, row)
            else:
                run_torch_pruning(args.worker, args.small, row)
        except Exception as exc:  # noqa: BLE001
            row["tp_status"] = short_reason(exc, 80)
    print(RESULT_TAG + json.dumps(row, default=str), flush=True)
    return 0


def _failure(proc: subprocess.CompletedProcess[str]) -> str:
    """Why a worker died without printing its row."""
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode} (out of memory?)"
    tail = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    return (tail[-1] if tail else f"exit code {proc.returncode}")[:160]


def run_part(name: str, part: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one part for one model in a fresh interpreter; a timeout or crash becomes a failure entry."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--part", part,
           "--seed", str(args.seed), "--mem-gb", str(args.mem_gb)] + ["--small"] * args.small
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    fail = {"fxscale": lambda why, stage: {"status": "fail", "stage": stage, "reason": why},
            "tp": lambda why, stage: {"tp_status": f"{stage}: {why}"[:80]}}[part]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return fail(f"killed after {args.timeout:g} s", "timeout")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return fail(_failure(proc), "crash")


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The fxscale part and, with --tp, the Torch-Pruning part of one model, merged into one row."""
    row = {"model": name, **run_part(name, "fxscale", args)}
    if args.tp:
        row.update(run_part(name, "tp", args))
    add_ratios(row)
    return row


def add_ratios(row: dict[str, Any]) -> None:
    """fxscale/TP time ratios where both sides succeeded."""
    if row.get("status") in PASS and row.get("tp_status") == "ok":
        row["ratio_analyze_tp_dg"] = round(row["analyze_ms"] / row["tp_dg_ms"], 3)
        row["ratio_transform_tp_prune"] = round(row["transform_ms"] / row["tp_prune_ms"], 3)


def _ms(value: Any) -> str:
    """A right-aligned millisecond cell."""
    return f"{value:9.1f}" if isinstance(value, (int, float)) else f"{'-':>9s}"


def format_row(row: dict[str, Any], tp: bool) -> str:
    """One table line."""
    status = row["status"] if row.get("status") in PASS else f"fail@{row.get('stage')}: {row.get('reason', '')}"
    if row.get("unsound"):
        status += f" [unsound: {row.get('unsound_groups')}]"
    cells = f"{row['model']:22s} {row.get('groups', '-'):>6} {row.get('scalable', '-'):>6} " \
            f"{row.get('width_frac', '-'):>6} " \
            f"{_ms(row.get('analyze_ms'))} {_ms(row.get('transform_ms'))} "
    if tp:
        cells += f"{_ms(row.get('tp_dg_ms'))} {_ms(row.get('tp_prune_ms'))} {str(row.get('tp_status', '-'))[:14]:14s} "
    return cells + status


def header(tp: bool) -> str:
    """The table header."""
    cols = f"{'model':22s} {'groups':>6s} {'scal.':>6s} {'wfrac':>6s} {'analyze':>9s} {'transform':>9s} "
    if tp:
        cols += f"{'tp_dg':>9s} {'tp_prune':>9s} {'tp':14s} "
    return cols + "result"


def summary(rows: Sequence[dict[str, Any]], tp: bool) -> str:
    """'N/M models ok' plus median timings and, with --tp, median fxscale/TP ratios."""
    ok = [r for r in rows if r.get("status") in PASS]
    refused = sum(r.get("status") == "ok-refused" for r in rows)
    text = f"{len(ok)}/{len(rows)} models pass every stage ({refused} of them ok-refused at resolution)"
    if any("unsound" in r for r in rows):
        text += f"; unsound groups {sum(int(r.get('unsound') or 0) for r in rows)} in total"
    claims = [r for r in rows if r.get("exact_claimed") not in (None, "")]
    if claims:
        held = [r for r in claims if str(r["exact_claimed"]) == "True"]
        text += f"; preserve claimed exact on {len(held)}/{len(claims)} widen plans (each claim checked in float64)"
    costs = [r for r in rows if "cost_ok" in r]
    if costs:
        text += f"; cost model = FlopCounterMode on {sum(r['cost_ok'] is True for r in costs)}/{len(costs)}"
    if tp:
        text += f"; Torch-Pruning ok on {sum(r.get('tp_status') == 'ok' for r in rows)}/{len(rows)}"
    fracs = [r["width_frac"] for r in rows if isinstance(r.get("width_frac"), (int, float))]
    if fracs:
        text += f"; median scalable width fraction {statistics.median(fracs):.3f} ({len(fracs)} analysed)"
    if ok:
        text += f"; median analyze {statistics.median(r['analyze_ms'] for r in ok):.1f} ms, " \
                f"transform {statistics.median(r['transform_ms'] for r in ok):.1f} ms"
    both = [r for r in rows if "ratio_analyze_tp_dg" in r]
    if tp and both:
        text += f"; fxscale/TP median ratios: analyze/DG-build " \
                f"{statistics.median(r['ratio_analyze_tp_dg'] for r in both):.2f}, transform/prune " \
                f"{statistics.median(r['ratio_transform_tp_prune'] for r in both):.2f} ({len(both)} models)"
    return text


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One CSV row per model with the FIELDS columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a sweep CSV with numbers and booleans parsed back and empty cells dropped."""
    def value(v: str) -> Any:
        if v in ("True", "False"):
            return v == "True"
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v
    with path.open(newline="") as f:
        return [{k: value(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def write_md(path: Path, rows: Sequence[dict[str, Any]], tp: bool, argv: Sequence[str]) -> None:
    """The timm summary markdown (zoo_timm.summary_markdown)."""
    from zoo_timm import summary_markdown
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary_markdown(rows, summary(rows, tp), "python benchmarks/zoo_coverage.py " + " ".join(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; exit status 0 only when every model passed."""
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.from_csv:
        rows = read_csv(args.from_csv)
        tp = any("tp_status" in r for r in rows)
        print(summary(rows, tp))
        if args.md:
            write_md(args.md, rows, tp, sys.argv[1:] if argv is None else list(argv))
        return 0
    if args.tp and importlib.util.find_spec("torch_pruning") is None:
        print("torch_pruning is not importable: --tp ignored", file=sys.stderr)
        args.tp = False
    try:
        names = select_models(args.models, args.skip_slow, args.zoo)
    except ValueError as exc:
        print(f"zoo_coverage: {exc}", file=sys.stderr)
        return 2
    print(header(args.tp), flush=True)
    rows = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # threads only wait on the model subprocesses
        for row in pool.map(lambda name: run_model(name, args), names):
            rows.append(row)
            print(format_row(row, args.tp), flush=True)
            if args.csv:  # rewritten after every model: an interrupted sweep keeps what it finished
                write_csv(args.csv, rows)
    print(summary(rows, args.tp))
    if args.csv:
        write_csv(args.csv, rows)
    if args.md and args.zoo == "timm":
        write_md(args.md, rows, args.tp, sys.argv[1:] if argv is None else list(argv))
    return 0 if all(r.get("status") in PASS for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
