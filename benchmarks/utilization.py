"""Hardware utilisation of width, resolution and depth scaling (HACScale Fig. 2) on a CPU target.

Each model is scaled up along one dimension at a time to a range of FLOPs multipliers:

- width: one factor on every scalable channel group (widths rounded to multiples of --round, 16), via
  ``fxscale.transform(gm, ScalingPlan(widths=...))``;
- resolution: a larger square input (multiples of 4 px), ``ScalingPlan(resolution=...)``, input mode;
- depth: blocks added round-robin over the stages that can take a copy (ResNet ``layerN`` stages, the
  same-width convs of a VGG ``features`` stack), ``ScalingPlan(depths=...)``.

The factor that hits each multiplier is solved with the analytic cost model (``fxscale.cost``; FLOPs =
2 x MACs of conv/linear). Every scaled model is re-initialised (``init="reinit"``, as HACScale trains the
scaled nets from scratch) and timed at batch 1 on a target (default onnxruntime CPU, 1 thread). Latency is
the median of ``--runs`` runs, taken interleaved over ``--rounds`` rounds across all configurations of a
model (so machine drift hits every configuration alike) after a warm-up. Utilisation = FLOPs / latency.
Each run also records the CPU time of the calling thread (onnxruntime and torch compute in it with 1
intra-op thread): on a shared machine, wall time includes time the thread waited for a core, thread CPU
time does not, so the ``cpu_ms`` / ``gflops_per_s_cpu`` columns are the contention-free view (the
``contention`` column is their ratio; 1.0 means a quiet machine). A single-thread GEMM (torch.mm and an
onnxruntime MatMul) is timed as a practical ceiling and drawn as a dotted line.

Outputs in --out (default benchmarks/results/): ``<tag>.csv`` (one row per model, method, multiplier and
target), ``<tag>_gflops.png`` (utilisation vs FLOPs) and ``<tag>_latency.png`` (latency vs FLOPs), one panel
per model and target, one line per method. The baseline (multiplier 1) is timed once and shared by the
three methods.

    python benchmarks/utilization.py                      # resnet18 @112, vgg11 @64, ort, ~5 min
    python benchmarks/utilization.py --target ort torch   # both CPU targets
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/onnxruntime load OpenMP

import argparse  # noqa: E402
import csv  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field, fields  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import fxscale  # noqa: E402
from fxscale.hw.base import LatencyStats, MeasureProtocol  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("width", "resolution", "depth")
FIELDS = ("model", "method", "flops_mult", "flops", "params", "latency_ms", "p10_ms", "p90_ms", "gflops_per_s",
          "target", "input_size", "flops_ratio", "mean_ms", "runs", "cpu_ms", "gflops_per_s_cpu", "contention", "flops_per_byte",
          "config", "device")


class VGG11CIFAR(nn.Module):
    """VGG11-BN as used on CIFAR-10 (the paper's VGG11 baseline, 9.2M parameters): torchvision's cfg "A"
    ``features`` stack, global average pool and one Linear(512, num_classes)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers
        self.features = make_layers(cfgs["A"], batch_norm=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, num_classes]."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: builder, input channels, default input side, and the depth keys (round-robin)."""

    build: Callable[[], nn.Module]
    size: int
    depth_keys: tuple[str, ...]
    in_channels: int = 3
    note: str = ""


def _zoo(name: str) -> Callable[[], nn.Module]:
    return lambda: fxscale.zoo.create_model(name)


MODELS = {
    "resnet18": ModelSpec(_zoo("resnet18"), 112, ("layer1", "layer2", "layer3", "layer4"),
                          note="torchvision resnet18 (1000 classes)"),
    # cfg A with BN: convs at 0 (3->64), 4 (64->128), 8 (128->256), 11, 15 (256->512), 18, 22, 25. Only the
    # convs whose input and output widths match can be repeated: 11, 18 and 25 are the last conv of stages
    # 3-5 (as vgg13 -> vgg16 -> vgg19 deepen); stages 1-2 have a single, width-changing conv.
    "vgg11": ModelSpec(VGG11CIFAR, 64, ("features.11", "features.18", "features.25"),
                       note="VGG11-BN, CIFAR-style head (global pool + Linear(512, 10))"),
    "digits_resnet": ModelSpec(_zoo("digits_resnet"), 16, ("stages.0", "stages.1"), in_channels=1,
                               note="tiny smoke-test model"),
}


@dataclass
class Config:
    """One scaled model of one method at one FLOPs multiplier."""

    model: str
    method: str
    mult: float
    plan: Any
    flops: int = 0
    params: int = 0
    bytes: int = 0  # cost model: fp32 reads + writes per op, unfused
    input_size: int = 0
    config: str = ""
    gm: Any = None
    stats: dict[str, LatencyStats] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # median thread CPU time


# ------------------------------------------------------------------------------------------- solving plans

def width_plan(cg: Any, factor: float, round_to: int) -> fxscale.ScalingPlan:
    """Every scalable group times `factor`, rounded to a multiple of lcm(divisor, round_to) (at least one such
    multiple); a group whose base width is not such a multiple is rounded to its divisor only."""
    widths = {}
    for g in cg.scalable:
        q = math.lcm(g.divisor, round_to)
        q = q if g.width % q == 0 else g.divisor
        widths[g.name] = max(q, round(g.width * factor / q) * q)
    return fxscale.ScalingPlan(widths=widths)


def solve_width(cg: Any, mult: float, round_to: int) -> tuple[fxscale.ScalingPlan, float]:
    """The width factor (scanned from 1 in small steps) whose plan's FLOPs are closest to mult x the baseline."""
    base = fxscale.cost(cg).flops
    best: Optional[tuple] = None
    seen: dict[tuple, float] = {}
    f = 1.0
    while f * f <= 2 * mult:
        plan = width_plan(cg, f, round_to)
        key = tuple(sorted(plan.widths.items()))
        if key not in seen:
            seen[key] = fxscale.cost(cg, plan).flops / base
            err = abs(seen[key] - mult)
            if best is None or err < best[0]:
                best = (err, plan, f)
        f += 0.005
    return best[1], best[2]


def solve_resolution(cg: Any, size: int, mult: float) -> fxscale.ScalingPlan:
    """The square input side (a multiple of 4 px, of 1 px below 32 px) whose FLOPs are closest to mult x base."""
    step = 4 if size >= 32 else 1
    base = fxscale.cost(cg).flops
    guess = size * math.sqrt(mult)
    cands = sorted({max(step, int(round(guess / step)) * step + k * step) for k in (-2, -1, 0, 1, 2)})
    if mult == 1:
        cands = [size]
    scored = [(abs(fxscale.cost(cg, fxscale.ScalingPlan(resolution=(s, s)), mode="input").flops / base - mult), s)
              for s in cands]
    return fxscale.ScalingPlan(resolution=(min(scored)[1],) * 2)


def _current_depth(model: nn.Module, key: str) -> int:
    """Blocks in stage "S" (a Sequential whose last child is a container), else 1 (a unit key "S.K")."""
    mod = model.get_submodule(key)
    if isinstance(mod, nn.Sequential) and len(mod) and len(list(mod[-1].children())) > 0:
        return len(mod)
    return 1


def solve_depth(model: nn.Module, gm: Any, cg: Any, keys: Sequence[str], mult: float) -> fxscale.ScalingPlan:
    """Add one block at a time round-robin over `keys`; keep the count whose FLOPs are closest to the target.

    The FLOPs of one extra block per key come from costing a transformed copy (cost.py costs widths and
    resolution only); blocks of one stage are identical, so the prediction is exact.
    """
    base = fxscale.cost(cg).flops
    start = {k: _current_depth(model, k) for k in keys}
    step = {}
    for k in keys:
        new = fxscale.transform(gm, fxscale.ScalingPlan(depths={k: start[k] + 1}), init="reinit", cg=cg)
        step[k] = fxscale.cost(new).flops - base
    depths, flops = dict(start), base
    best = (abs(1.0 - mult), dict(depths))
    for i in range(10_000):
        if flops / base >= mult:
            break
        k = keys[i % len(keys)]
        depths[k] += 1
        flops += step[k]
        err = abs(flops / base - mult)
        if err < best[0]:
            best = (err, dict(depths))
    return fxscale.ScalingPlan(depths={k: v for k, v in best[1].items() if v != start[k]})


def build_configs(name: str, spec: ModelSpec, size: int, mults: Sequence[float], methods: Sequence[str],
                  round_to: int, log: Callable[[str], None]) -> list[Config]:
    """Trace the model, solve one plan per method and multiplier, transform and cost each."""
    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.randn(1, spec.in_channels, size, size)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    base = fxscale.cost(cg)
    configs = [Config(name, "baseline", 1.0, fxscale.ScalingPlan(), base.flops, base.params, base.bytes, size,
                      "as built", gm)]
    for method in methods:
        for mult in mults:
            if mult == 1:
                continue
            t0 = time.perf_counter()
            if method == "width":
                plan, f = solve_width(cg, mult, round_to)
                desc = f"width x{f:.3f}"
            elif method == "resolution":
                plan = solve_resolution(cg, size, mult)
                desc = f"{plan.resolution[0]} px"
            else:
                plan = solve_depth(model, gm, cg, spec.depth_keys, mult)
                desc = "depths " + ",".join(f"{k}={v}" for k, v in sorted(plan.depths.items()))
            new = fxscale.transform(gm, plan, init="reinit", resolution_mode="input", cg=cg)
            rep = fxscale.cost(new)
            res = plan.resolution[0] if plan.resolution else size
            configs.append(Config(name, method, mult, plan, rep.flops, rep.params, rep.bytes, res, desc, new.eval()))
            log(f"  {name} {method:10s} x{mult:<4g} -> {rep.flops / base.flops:5.2f}x FLOPs "
                f"({rep.flops / 1e9:.3f} GFLOPs, {rep.params / 1e6:.2f} M params) {desc} "
                f"[{time.perf_counter() - t0:.1f} s]")
    return configs


# ------------------------------------------------------------------------------------------------- timing

def _sample(runner: Any, n: int) -> list[tuple[float, float]]:
    """`n` runs: (wall ms from the runner, CPU ms of this thread). With 1 intra-op thread, onnxruntime and torch
    compute in the calling thread, so the thread CPU time leaves out time the thread was preempted."""
    out = []
    with runner.active():
        for _ in range(n):
            c0 = time.thread_time_ns()
            ms = runner.run_ms()
            out.append((ms, (time.thread_time_ns() - c0) / 1e6))
    return out


def time_configs(configs: list[Config], target_name: str, threads: int, protocol: MeasureProtocol,
                 rounds: int, log: Callable[[str], None]) -> None:
    """Prepare every config on the target, then time them interleaved over `rounds` rounds."""
    target = fxscale.get_target(target_name, threads=threads)
    t0 = time.perf_counter()
    runners = []
    for c in configs:
        shape = (1, *fxscale.tracing.example_inputs(c.gm)[0].shape[1:])
        runner = target.prepare(c.gm, shape)
        _sample(runner, protocol.warmup)
        runners.append(runner)
    log(f"  prepared {len(runners)} models on {target_name} in {time.perf_counter() - t0:.1f} s")
    samples: list[list[tuple[float, float]]] = [[] for _ in configs]
    chunks = [protocol.runs // rounds + (1 if r < protocol.runs % rounds else 0) for r in range(rounds)]
    order = list(range(len(configs)))
    t0 = time.perf_counter()
    for r, n in enumerate(chunks):
        for i in (order if r % 2 == 0 else order[::-1]):
            _sample(runners[i], 1)  # re-warm caches after the previous model
            samples[i].extend(_sample(runners[i], n))
    log(f"  timed {len(runners)} x {protocol.runs} runs in {rounds} rounds in {time.perf_counter() - t0:.1f} s")
    info = target.describe()
    for c, s in zip(configs, samples):
        c.stats[target_name] = LatencyStats.from_samples([w for w, _ in s], protocol.warmup, info["device"], info)
        c.cpu_ms[target_name] = statistics.median(cpu for _, cpu in s)
    del runners


def _median_gflops(fn: Callable[[], Any], flops: float, runs: int = 15) -> float:
    """GFLOP/s of fn() from the median thread CPU time of `runs` calls after 3 warm-ups."""
    times = []
    for i in range(runs + 3):
        c0 = time.thread_time_ns()
        fn()
        if i >= 3:
            times.append((time.thread_time_ns() - c0) / 1e9)
    return flops / statistics.median(times) / 1e9


def sgemm_reference(sizes: Sequence[int] = (256, 512, 1024)) -> dict[str, float]:
    """Single-thread fp32 GEMM GFLOP/s per runtime, best over n x n x n sizes: a practical ceiling for the convs.

    "torch": torch.mm (MKL here); "ort": an onnxruntime MatMul session with the ort target's settings (MLAS).
    """
    torch.set_num_threads(1)
    out: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out["torch"] = max(out.get("torch", 0.0), _median_gflops(lambda: torch.mm(a, b), 2 * n ** 3))
        try:
            import onnxruntime as ort
            from onnx import TensorProto, helper, numpy_helper
            graph = helper.make_graph(
                [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
                [numpy_helper.from_array(b.numpy(), "b")])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            model.ir_version = min(model.ir_version, 8)
            so = fxscale.get_target("ort", threads=1).session_options()
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            feed = {"a": a.numpy()}
            out["ort"] = max(out.get("ort", 0.0), _median_gflops(lambda: sess.run(None, feed), 2 * n ** 3))
        except Exception as exc:  # the reference is optional
            print(f"onnxruntime GEMM reference skipped: {exc}", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------------ outputs

def rows_of(configs: list[Config], target: str) -> list[dict[str, Any]]:
    """CSV rows; the baseline is repeated as multiplier 1 of every method."""
    base = next(c for c in configs if c.method == "baseline")
    methods = sorted({c.method for c in configs} - {"baseline"}, key=METHODS.index)
    rows = []
    for method in methods:
        for c in [base] + [c for c in configs if c.method == method]:
            st = c.stats[target]
            rows.append({"model": c.model, "method": method, "flops_mult": c.mult, "flops": c.flops,
                         "params": c.params, "latency_ms": round(st.median, 4), "p10_ms": round(st.p10, 4),
                         "p90_ms": round(st.p90, 4), "gflops_per_s": round(c.flops / st.median / 1e6, 3),
                         "target": target, "input_size": c.input_size,
                         "flops_ratio": round(c.flops / base.flops, 4), "mean_ms": round(st.mean, 4),
                         "runs": st.runs, "cpu_ms": round(c.cpu_ms[target], 4),
                         "gflops_per_s_cpu": round(c.flops / c.cpu_ms[target] / 1e6, 3),
                         "contention": round(st.median / c.cpu_ms[target], 3),
                         "flops_per_byte": round(c.flops / c.bytes, 3), "config": c.config,
                         "device": st.device})
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per (model, method, multiplier, target)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path, ykey: str, ylabel: str, ykey2: Optional[str] = None,
         label2: str = "", hlines: Optional[dict[str, float]] = None, hlabel: str = "") -> None:
    """One panel per (target, model), one line per method, y against GFLOPs; `ykey2` dashed in the same colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(len(targets), len(models), figsize=(5.2 * len(models), 4 * len(targets)),
                             squeeze=False)
    styles = {"width": ("tab:blue", "o"), "resolution": ("tab:green", "s"), "depth": ("tab:red", "^")}
    for ti, target in enumerate(targets):
        for mi, model in enumerate(models):
            ax = axes[ti][mi]
            for method in METHODS:
                sel = sorted((r for r in rows if r["model"] == model and r["target"] == target
                              and r["method"] == method), key=lambda r: r["flops"])
                if not sel:
                    continue
                color, marker = styles[method]
                x = [r["flops"] / 1e9 for r in sel]
                ax.plot(x, [r[ykey] for r in sel], marker=marker, color=color, label=method)
                if ykey2:
                    ax.plot(x, [r[ykey2] for r in sel], marker=marker, color=color, ls="--", alpha=0.45,
                            mfc="none", label=f"{method} ({label2})")
            if hlines and target in hlines:
                ax.axhline(hlines[target], color="gray", ls=":", label=hlabel)
            ax.set_title(f"{model} - {target}")
            ax.set_xlabel("GFLOPs (2 x MACs)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    device = rows[0]["device"].split(" | ")[0] if rows else ""
    fig.suptitle(f"{ylabel} vs FLOPs, batch 1, {device}, 1 thread", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(rows: list[dict[str, Any]], peak: Optional[dict[str, float]] = None) -> list[str]:
    """The table, and a data-driven reading of it (ratios of the largest multiplier to the baseline)."""
    lines = [f"{'target':6s} {'model':9s} {'method':10s} {'mult':>4s} {'ratio':>5s} {'GFLOPs':>6s} {'Mpar':>5s} "
             f"{'med ms':>7s} {'p10':>7s} {'p90':>7s} {'GFLOP/s':>7s} {'cpu ms':>7s} {'GF/s cpu':>8s} {'F/B':>5s}  config"]
    for r in rows:
        lines.append(f"{r['target']:6s} {r['model']:9s} {r['method']:10s} {r['flops_mult']:4g} "
                     f"{r['flops_ratio']:5.2f} {r['flops'] / 1e9:6.3f} {r['params'] / 1e6:5.1f} "
                     f"{r['latency_ms']:7.2f} {r['p10_ms']:7.2f} {r['p90_ms']:7.2f} {r['gflops_per_s']:7.1f} "
                     f"{r['cpu_ms']:7.2f} {r['gflops_per_s_cpu']:8.1f} {r['flops_per_byte']:5.1f}  {r['config']}")
    lines.append("")
    worst = max(r["contention"] for r in rows)
    lines.append(f"contention (median wall / median thread CPU time): {min(r['contention'] for r in rows):.2f}"
                 f"..{worst:.2f}" + ("  <- the machine was busy: trust the CPU-time columns more" if worst > 1.15
                                      else ""))
    if peak:
        lines.append("single-thread fp32 GEMM reference, best of n = 256/512/1024 (thread CPU time): "
                     + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))
    lines.append("reading (largest multiplier vs baseline; utilisation ratio = FLOPs ratio / latency ratio; F/B = "
                 "FLOPs per byte moved, cost model):")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["target"], r["model"], r["method"]), []).append(r)
    for (target, model, method), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["flops_mult"])
        b, top = rs[0], rs[-1]
        parts = []
        for key, what in (("gflops_per_s", "wall"), ("gflops_per_s_cpu", "cpu")):
            u = top[key] / b[key]
            verdict = "up" if u > 1.1 else "down" if u < 0.9 else "flat"
            parts.append(f"{what} {b[key]:.1f}->{top[key]:.1f} GFLOP/s ({u:.2f}x {verdict})")
        lines.append(f"  {target}/{model}/{method}: {top['flops_ratio']:.2f}x FLOPs, F/B {b['flops_per_byte']:.1f}->"
                     f"{top['flops_per_byte']:.1f} -> "
                     f"{top['latency_ms'] / b['latency_ms']:.2f}x latency ({top['cpu_ms'] / b['cpu_ms']:.2f}x cpu); "
                     + "; ".join(parts))
    for target in dict.fromkeys(r["target"] for r in rows):
        for model in dict.fromkeys(r["model"] for r in rows):
            tops = {m: max((r for r in groups.get((target, model, m), [])), key=lambda r: r["flops_mult"],
                           default=None) for m in METHODS}
            tops = {m: r for m, r in tops.items() if r is not None}
            if len(tops) > 1:
                order = sorted(tops, key=lambda m: tops[m]["cpu_ms"])
                lines.append(f"  {target}/{model}: at the largest multiplier, cpu time ranks "
                             + " < ".join(f"{m} ({tops[m]['cpu_ms']:.2f} ms, x{tops[m]['flops_ratio']:.2f})"
                                          for m in order))
    return lines


# --------------------------------------------------------------------------------------------------- main

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,vgg11", help=f"comma-separated, from {sorted(MODELS)}")
    p.add_argument("--sizes", default="", help="input sides per model, e.g. resnet18=112,vgg11=64 "
                                               "(defaults: resnet18 112, vgg11 64)")
    p.add_argument("--mults", default="1,1.5,2,3,4", help="FLOPs multipliers (1 = baseline)")
    p.add_argument("--methods", default=",".join(METHODS), help="subset of width,resolution,depth")
    p.add_argument("--target", nargs="+", default=["ort"], help="targets (ort, torch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50, help="timed runs per configuration (paper: 50)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds the runs are split into")
    p.add_argument("--round", dest="round_to", type=int, default=16,
                   help="round widths to multiples of this (16 = one AVX-512 fp32 vector; with 8, torch/oneDNN "
                        "lost ~20%% at vgg11 width x2 = 1032 channels here)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--tag", default="utilization", help="file name stem of the CSV and PNGs")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Solve, transform, time, write CSV + PNGs, print the summary."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        print(f"unknown models {unknown}; choose from {sorted(MODELS)}", file=sys.stderr)
        return 2
    sizes = {k: int(v) for k, v in (kv.split("=") for kv in args.sizes.split(",") if kv)}
    mults = sorted({float(m) for m in args.mults.split(",")} | {1.0})
    methods = [m for m in args.methods.split(",") if m]
    if "depth" in methods and "depths" not in {f.name for f in fields(fxscale.ScalingPlan)}:
        log("depth scaling left out: this fxscale has no ScalingPlan.depths (depth pass not available)")
        methods.remove("depth")
    protocol = MeasureProtocol(warmup=args.warmup, runs=args.runs, statistic="median")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for name in names:
        spec = MODELS[name]
        size = sizes.get(name, spec.size)
        log(f"{name} at {size}x{size}: {spec.note}")
        configs = build_configs(name, spec, size, mults, methods, args.round_to, log)
        for target in args.target:
            time_configs(configs, target, args.threads, protocol, args.rounds, log)
            rows.extend(rows_of(configs, target))
        del configs
    rows.sort(key=lambda r: (args.target.index(r["target"]), names.index(r["model"]),
                             METHODS.index(r["method"]), r["flops_mult"]))
    csv_path = args.out / f"{args.tag}.csv"
    write_csv(rows, csv_path)
    peak = sgemm_reference()
    plot(rows, args.out / f"{args.tag}_gflops.png", "gflops_per_s", "utilisation (GFLOP/s)", "gflops_per_s_cpu",
         "thread CPU time", hlines=peak, hlabel="1-thread GEMM (best n<=1024)")
    plot(rows, args.out / f"{args.tag}_latency.png", "latency_ms", "latency (ms, median)", "cpu_ms",
         "thread CPU time")
    for line in summarise(rows, peak):
        print(line)
    print(f"\nwrote {csv_path}, {args.tag}_gflops.png, {args.tag}_latency.png in {args.out} "
          f"({time.perf_counter() - t_all:.0f} s); device: {rows[0]['device'] if rows else '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
