"""HANT on digits: a torchvision teacher (mobilenet_v2 at 64 px by default: about 1.2 ms at batch 1 on one ORT thread
here; or efficientnet_b0 at 32 px, about 1.7 ms) adapted to digits and trained, accelerated to 0.6x and 0.8x of its measured latency, against uniform / global-Taylor pruning and
random / greedy selection at equal measured latency, for the default score (dloss) and dacc.

Phase 1 (latency table, distillation, scores) runs once and is shared by every budget and score; each budget then
solves, measures, builds the baselines and KD fine-tunes every method with each seed. Stages land in
--out (resumable) and the table in --summary/hant_digits.{json,md}.

Quick proof (about 20 minutes on 2 shared cores; mobilenet_v2 at 32 px, 0.6 ms, so below the 1 ms goal):
    python benchmarks/hant_digits.py --quick
Final figures (quiet machine, 5 seeds; hours on 2 cores):
    python benchmarks/hant_digits.py --seeds 5 --teacher-epochs 15 --distill-epochs 5 --finetune-epochs 5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICK_CANDIDATES = "teacher,skip,cn_k3,ds_k3,ir_e3_k3,ir_e6_k3_se,er_e4_k3,prune_x0.5,prune_x0.75"


def paired_lines(run: dict) -> list[str]:
    """HANT minus every other fine-tuned method, per seed (the seeds share their fine-tune seed and data split):
    paired bootstrap mean difference in points with its 95% interval and p, Holm-adjusted over the run's family."""
    from fxscale.scaling.stats import holm, paired_bootstrap
    rows = {m["method"]: m for m in run["methods"] if m.get("test_top1_per_seed")}
    if "hant" not in rows:
        return []
    hant = [100 * v for v in rows["hant"]["test_top1_per_seed"]]
    diffs = {name: paired_bootstrap(hant, [100 * v for v in m["test_top1_per_seed"]])
             for name, m in rows.items() if name != "hant"}
    adj = holm({k: d.p_value for k, d in diffs.items()})
    out = ["", "Paired differences, HANT minus each method (points; paired bootstrap over seeds, 95% interval; p "
           "Holm-adjusted over this budget's comparisons):", ""]
    for name, d in diffs.items():
        out.append(f"- {name}: {d.mean:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}], p = {d.p_value:.3f} (Holm "
                   f"{adj.adjusted[name]:.3f})")
    return out


def render(summary: dict, data: str) -> str:
    """The summary markdown: the methods table and the paired differences of every (budget, score) run."""
    from fxscale.hant.report import methods_table
    md = [f"# HANT on {data}: {summary['model']} at {summary['resolution']} px on {summary['target']}", "",
          f"teacher {summary['teacher_ms']:.3f} ms, test top-1 {100 * summary['teacher']['test_acc']:.2f}%; "
          f"{summary['pairs']} pairs; phase 1 {summary['phase1_s']:.0f} s; additivity "
          f"{summary['additivity'].get('mean_abs_rel_error', float('nan')):.1%} mean"]
    if summary.get("command"):
        md += ["", f"Command: `{summary['command']}`"]
    if summary.get("note"):
        md += ["", summary["note"]]
    for r in summary["runs"]:
        md += ["", f"## budget {r['budget']}x, score {r['score']}", "", methods_table(r["methods"])]
        md += paired_lines(r)
        md += ["", "HANT plan (`a+b`: one block for two sites): " + ", ".join(
            f"{site} `{spec}`" for site, spec in r["plan"].items())]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", help="mobilenet_v2 or efficientnet_b0 (torchvision)")
    p.add_argument("--data", default="digits", help="digits, or glyphs (font-split characters; the summary files "
                   "are then hant_glyphs.*)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--target", default="ort")
    p.add_argument("--budgets", default="0.6,0.8")
    p.add_argument("--scores", default="dloss,dacc", help="scores to compare (the first also runs the baselines)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--teacher-lr", type=float, default=3e-3, help="Adam, cosine (mobilenet_v2 at 32 px: 97.5%% val "
                   "top-1 after 8 epochs)")
    p.add_argument("--distill-epochs", type=int, default=3)
    p.add_argument("--distill-samples", type=int, default=1024)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--candidates", default=None, help="comma-separated specs (default: the full grid per site)")
    p.add_argument("--baselines", default=None,
                   help="comma-separated baselines run with the first score (default: all of AccelerateConfig's)")
    p.add_argument("--multi-site", default="", help="comma-separated specs of two-site candidates (default: none)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="small proof run: 1 seed, 9 candidates, 256 samples, 1-epoch distill/fine-tune, 4 teacher epochs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hant" / "run"),
                   help="stage folder (git-ignored; rerunning the same command resumes)")
    p.add_argument("--append", action="store_true",
                   help="keep the runs of other budgets/scores already in the summary JSON (same model, data, "
                        "resolution and target), so budgets can be run in separate sessions")
    p.add_argument("--summary", default=str(ROOT / "benchmarks" / "results" / "hant"),
                   help="folder for hant_digits.json and hant_digits.md (kept in git)")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="only re-render the markdown next to this summary JSON (nothing is run)")
    a = p.parse_args(argv)
    if a.render:
        src = Path(a.render)
        summary = json.loads(src.read_text())
        src.with_suffix(".md").write_text(render(summary, summary["settings"]["data"]))
        print(f"wrote {src.with_suffix('.md')}")
        return 0
    if a.quick:
        a.seeds, a.distill_samples, a.distill_epochs, a.finetune_epochs = 1, 256, 1, 1
        a.teacher_epochs, a.candidates, a.runs, a.rounds = 8, a.candidates or QUICK_CANDIDATES, 10, 5
        a.resolution = 32

    from fxscale.cli_checks import stderr_line
    from fxscale.hant.config import AccelerateConfig
    from fxscale.hant.methods import compare, scores_summary
    from fxscale.hant.pipeline import Accelerator
    from fxscale.hant.report import methods_table

    budgets = [float(b) for b in a.budgets.split(",") if b.strip()]
    kinds = [s.strip() for s in a.scores.split(",") if s.strip()]
    cfg = AccelerateConfig(model=a.model, data=a.data, resolution=a.resolution, target=a.target,
                           latency_budget=f"{budgets[0]}x", score=kinds[0],
                           candidates=tuple(a.candidates.split(",")) if a.candidates else None,
                           multi_site=tuple(c for c in a.multi_site.split(",") if c),
                           **({"baselines": tuple(b for b in a.baselines.split(",") if b)} if a.baselines is not None
                              else {}),
                           teacher_epochs=a.teacher_epochs, teacher_lr=a.teacher_lr, distill_epochs=a.distill_epochs,
                           distill_samples=a.distill_samples, finetune_epochs=a.finetune_epochs,
                           seeds=tuple(range(a.seeds)), runs=a.runs, rounds=a.rounds, workers=a.workers,
                           frontier=(0.5, 0.6, 0.7, 0.8, 0.9), progress=False)
    t0 = time.perf_counter()
    acc = Accelerator(cfg, a.out, log=stderr_line)
    table = acc.latency()
    print(f"teacher {a.model} at {a.resolution} px, batch-1 latency on {a.target}: {table.teacher_ms:.3f} ms"
          + ("" if table.teacher_ms >= 1.0 else "  (below 1 ms: overhead matters; use a larger --resolution)"))
    distilled = acc.distill()
    scores = acc.scores()
    phase1 = time.perf_counter() - t0
    runs = []
    for b in budgets:
        for i, kind in enumerate(kinds):
            acc.cfg = replace(cfg, latency_budget=f"{b}x", score=kind,
                              baselines=cfg.baselines if i == 0 else ())
            results, _student = compare(acc, table, scores, distilled)
            runs.append({"budget": b, "score": kind, **{k: results[k] for k in
                                                         ("methods", "plan", "corrections", "solve_s", "frontier")}})
            print(f"\n## budget {b}x, score {kind} (solve {results['solve_s']:.3f} s)\n")
            print(methods_table(results["methods"]))
    summary = {"model": a.model, "resolution": a.resolution, "target": a.target, "teacher_ms": table.teacher_ms,
               "fixed_ms": table.fixed_ms, "additivity": table.additivity, "teacher": acc.teacher_info,
               "pairs": sum(len(d) for d in distilled.values()), "phase1_s": phase1,
               "score_agreement": scores_summary(acc, scores), "settings": vars(a), "runs": runs}
    out = Path(a.summary)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"hant_{a.data}"
    for r in runs:
        r["settings"] = vars(a)
    if a.append and (out / f"{stem}.json").exists():
        old = json.loads((out / f"{stem}.json").read_text())
        same = all(old.get(k) == summary[k] for k in ("model", "resolution", "target"))
        if not same:
            raise SystemExit(f"--append: {out / stem}.json holds another model/resolution/target")
        done = {(r["budget"], r["score"]) for r in runs}
        kept = [{"settings": old.get("settings"), **r} for r in old["runs"] if (r["budget"], r["score"]) not in done]
        runs[:] = sorted(kept + runs, key=lambda r: (r["budget"], r["score"]))
        summary["phase1_s"] = max(phase1, old.get("phase1_s") or 0.0)  # a resumed phase 1 takes seconds
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=float))
    md = render(summary, a.data)
    (out / f"{stem}.md").write_text(md)
    print(f"\nwrote {out / stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
