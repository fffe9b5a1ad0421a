"""The report's plots: accuracy against measured latency, utilisation per method, per-group widths of HACScale rows.

Every plot has a title, axis labels and a legend; method names sit in the legend or on a category axis, never as
free annotations, so they cannot overlap. Error bars come from the rows' intervals (latency ratio interval, bootstrap
CI of the mean test top-1 over seeds; with one seed there is no accuracy bar).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

MARKERS = "osD^vP*Xhp<>"


def _style(i: int, name: str) -> dict[str, Any]:
    import matplotlib.pyplot as plt
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {"color": "black" if name == "baseline" else colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)]}


def accuracy_vs_latency(rows: Sequence[dict[str, Any]], budget_ratio: Optional[float], title: str, path: Path) -> None:
    """Test top-1 (mean over seeds, CI bars) against the measured latency ratio to the baseline (interval bars)."""
    import matplotlib.pyplot as plt
    from matplotlib.transforms import offset_copy
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    seen: dict[tuple[float, float], int] = {}
    for i, r in enumerate(rows):
        x, y = r["latency_ratio"], 100 * r["test_top1"]
        xerr = [[max(0.0, x - r["latency_ratio_lo"])], [max(0.0, r["latency_ratio_hi"] - x)]]
        lo, hi = r["test_top1_ci"]
        yerr = [[100 * (r["test_top1"] - lo)], [100 * (hi - r["test_top1"])]] if _finite(lo) and _finite(hi) else None
        near = next((k for k in seen if abs(k[0] - x) < 0.01 and abs(k[1] - y) < 0.05), (x, y))
        seen[near] = seen.get(near, -1) + 1  # coincident points: shifted up by a few pixels each, not hidden
        shift = offset_copy(ax.transData, fig=fig, x=0, y=6 * seen[near], units="points")
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, linestyle="none", capsize=3, markersize=7, transform=shift,
                    label=f"{r['method']} ({x:.2f}x, {y:.1f}%)", **_style(i, r["method"]))
        ys = [y] + ([100 * lo, 100 * hi] if yerr is not None else [])
        ax.update_datalim([(r["latency_ratio_lo"], min(ys)), (r["latency_ratio_hi"], max(ys))])
    ax.autoscale_view()
    y0, y1 = ax.get_ylim()
    ax.set_ylim(y0 - 0.05 * (y1 - y0 or 1), y1 + 0.12 * (y1 - y0 or 1))  # room for the shifted markers
    if budget_ratio is not None:
        ax.axvline(budget_ratio, color="red", linestyle="--", linewidth=1, label=f"latency budget {budget_ratio:.2f}x")
    ax.set_xlabel("measured latency / baseline (median of interleaved rounds, 95% interval)\n"
                  "(methods at the same point are drawn a few pixels apart)", fontsize=9)
    ax.set_ylabel("test top-1 (%), mean over seeds (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def utilization(rows: Sequence[dict[str, Any]], title: str, path: Path) -> None:
    """Horizontal bars: utilisation (FLOPs / measured latency) relative to the baseline, one bar per method."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    base = rows[0]["utilization"] or float("nan")
    names = [r["method"] for r in rows]
    vals = [r["utilization"] / base for r in rows]
    kinds = ["baseline" if n == "baseline" else "HACScale" if n.startswith("hacscale") else "other method"
             for n in names]
    colors = {"baseline": "0.4", "HACScale": "tab:orange", "other method": "tab:blue"}
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 2.0))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, vals, color=[colors[k] for k in kinds])
    for y, v, r in zip(ys, vals, rows):
        x = max(v, 1.0) if _finite(v) else 1.0  # right of the 1.0 line, so the text never crosses it
        ax.text(x, y, f"  {v:.2f}x ({r['utilization']:.2f} GFLOP/s)", va="center", fontsize=7)
    ax.set_yticks(ys, names, fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("utilisation relative to the baseline (FLOPs / measured latency)")
    ax.set_xlim(0, max(v for v in vals if _finite(v)) * 1.45 if any(_finite(v) for v in vals) else 2)
    ax.set_title(title, fontsize=10)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items() if k in kinds], fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def widths(groups: Sequence[Any], rows: Sequence[dict[str, Any]], base_res: Sequence[int], title: str,
           path: Path) -> None:
    """Grouped bars per scalable group: the baseline and every HACScale row (legend gives each one's resolution)."""
    import matplotlib.pyplot as plt
    hac = [r for r in rows if r["method"].startswith("hacscale")]
    series = [("baseline", {g.name: g.width for g in groups}, tuple(base_res))]
    for r in hac:
        plan = r["plan"]
        series.append((f"{r['method']} (stride {r['stride']}, align {r['align']})",
                       {g.name: plan["widths"].get(g.name, g.width) for g in groups},
                       tuple(plan["resolution"] or base_res)))
    n = len(series)
    bw = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(groups) + 3), 4.2))
    xs = range(len(groups))
    for i, (label, ws, res) in enumerate(series):
        ax.bar([x - 0.4 + bw * (i + 0.5) for x in xs], [ws[g.name] for g in groups], bw,
               label=f"{label}: input {res[0]}x{res[1]}", color="0.6" if i == 0 else None)
    ax.set_xticks(list(xs), [g.name for g in groups], rotation=35, ha="right", fontsize=7)
    ax.set_xlabel("channel group (named by its first producer)")
    ax.set_ylabel("channels")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_ylim(0, max(max(ws.values()) for _l, ws, _r in series) * (1.25 + 0.08 * n))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


__all__ = ["accuracy_vs_latency", "utilization", "widths"]
