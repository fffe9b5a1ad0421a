"""HACScale Table I: merge Jetson runner results with params / FLOPs / accuracy; write Markdown and CSV.

Conventions: FLOPs = 2 x MACs (a multiply-accumulate is two floating-point operations); a costs entry gives
"flops", or "macs" (then flops = 2 * macs), and "params". Latency is the mean GPU compute time of the timed
trtexec iterations (`latency="host"`: H2D + compute + D2H); power is the mean board power of the runner's power
run. Utilization (GFLOP/s) = FLOPs / latency; Power efficiency (GFLOP/J) = FLOPs / (power x latency). Against the
baseline row, Utilization and Power efficiency carry ratios and Top-1 a difference, as in the paper:
"127.03 (1x)", "241.34 (1.9x)", "72.97 (+2.41)". Missing power, costs or accuracy leave blank cells.

    python -m fxscale.hw.table1 RESULTS_DIR --costs costs.json [--accuracy acc.json] --baseline NAME --out DIR
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fxscale.errors import ReportError

RESULT_SCHEMA = "fxscale.jetson.result/1"
COLUMNS = (("method", "Method"), ("params_m", "Params (M)"), ("flops_m", "FLOPs (M)"),
           ("latency_ms", "Latency (ms)"), ("power_w", "Power (W)"),
           ("utilization_gflops", "Utilization (GFLOPS)"), ("efficiency_gflop_per_j", "Power Efficiency (GFLOPs/J)"),
           ("top1", "Top1 (%)"))
RATIOS = {"utilization_gflops": "utilization_ratio", "efficiency_gflop_per_j": "efficiency_ratio"}
CSV_FIELDS = ("method", "params_m", "flops_m", "latency_ms", "power_w", "utilization_gflops", "utilization_ratio",
              "efficiency_gflop_per_j", "efficiency_ratio", "top1", "top1_delta", "device")
LATENCY_FIELDS = {"gpu": "gpu_compute", "host": "host"}


def load_results(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{model: result} of the runner's per-model JSON files with status "ok" (failed ones are warned about)."""
    results = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.name.endswith((".times.json", ".profile.json")):
            continue
        data = _load_json(path, "runner result")
        if not isinstance(data, dict) or data.get("schema") != RESULT_SCHEMA:
            continue
        if data.get("status") != "ok":
            warnings.warn(f"{path.name}: model {data.get('model')!r} failed on the board: {data.get('error')}",
                          stacklevel=2)
            continue
        results[data["model"]] = data
    if not results:
        raise ReportError(f"no successful runner results ({RESULT_SCHEMA} JSON files) in {results_dir}")
    return results


def flops_of(cost: Mapping[str, Any]) -> float | None:
    """FLOPs of a costs entry: "flops", else 2 x "macs", else None."""
    if cost.get("flops") is not None:
        return float(cost["flops"])
    if cost.get("macs") is not None:
        return 2.0 * float(cost["macs"])
    return None


def _power_w(result: Mapping[str, Any]) -> float | None:
    """Mean board power (W) of a result, None when the power run was skipped or failed."""
    power = result.get("power") or {}
    return power.get("board_power_w")


def _row(name: str, result: Mapping[str, Any], cost: Mapping[str, Any], top1: float | None,
         latency: str) -> dict[str, Any]:
    """One table row with raw numbers (None where unknown)."""
    try:
        lat = float(result["latency_ms"][LATENCY_FIELDS[latency]]["mean"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"runner result of {name!r} has no {LATENCY_FIELDS[latency]} mean latency "
                          f"({type(exc).__name__}: {exc})") from exc
    flops, power = flops_of(cost), _power_w(result)
    params = cost.get("params")
    return {"method": name, "params_m": None if params is None else float(params) / 1e6,
            "flops_m": None if flops is None else flops / 1e6, "latency_ms": lat, "power_w": power,
            "utilization_gflops": None if flops is None else flops / (lat * 1e6),
            "efficiency_gflop_per_j": None if flops is None or power is None else flops / (power * lat * 1e6),
            "top1": top1, "device": result.get("device")}


def _ratio(value: float | None, base: float | None) -> float | None:
    """value / base, None when either is unknown or base is zero."""
    return None if value is None or not base else value / base


def _compare(rows: list[dict[str, Any]], base: Mapping[str, Any]) -> None:
    """Add ratio / delta columns against the baseline row."""
    for row in rows:
        for key, ratio_key in RATIOS.items():
            row[ratio_key] = _ratio(row[key], base[key])
        row["top1_delta"] = None if row["top1"] is None or base["top1"] is None else row["top1"] - base["top1"]


def build_rows(results: Mapping[str, Mapping[str, Any]], costs: Mapping[str, Mapping[str, Any]],
               accuracy: Mapping[str, float] | None = None, baseline: str | None = None,
               latency: str = "gpu") -> list[dict[str, Any]]:
    """Table I rows (baseline first, then by name) with ratios against `baseline` when given."""
    if latency not in LATENCY_FIELDS:
        raise ReportError(f"latency must be one of {sorted(LATENCY_FIELDS)}, got {latency!r}")
    if baseline is not None and baseline not in results:
        raise ReportError(f"baseline {baseline!r} is not among the results: {', '.join(sorted(results))}")
    accuracy = accuracy or {}
    order = sorted(results, key=lambda n: (n != baseline, n))
    rows = [_row(n, results[n], costs.get(n, {}), accuracy.get(n), latency) for n in order]
    for row in rows:
        row.update(dict.fromkeys((*RATIOS.values(), "top1_delta")))
    if baseline is not None:
        _compare(rows, rows[0])
    return rows


def _num(value: float | None) -> str:
    """Two decimals without trailing zeros (paper style: 127.03, 1.9, 150); blank for None."""
    if value is None:
        return ""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _cell(row: Mapping[str, Any], key: str) -> str:
    """Markdown text of one cell, with "(1.9x)" ratios and "(+2.41)" Top-1 deltas."""
    if key == "method":
        return str(row["method"])
    text = _num(row[key])
    if key in RATIOS and text and row[RATIOS[key]] is not None:
        return f"{text} ({_num(row[RATIOS[key]])}x)"
    if key == "top1" and text and row["top1_delta"] is not None:
        return f"{text} ({row['top1_delta']:+.2f})"
    return text


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table with the paper's Table I columns."""
    lines = ["| " + " | ".join(title for _k, title in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(row, k) for k, _t in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """CSV with raw numbers, ratio and delta columns (blank where unknown)."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS})
    return path


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, stem: str = "table1") -> tuple[Path, Path]:
    """Write `stem`.md and `stem`.csv into out_dir; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text(to_markdown(rows))
    return md, write_csv(rows, out / f"{stem}.csv")


def _read_json(path: str | None, what: str) -> dict[str, Any]:
    """A JSON object from a file (empty for None); ReportError naming the file otherwise."""
    if path is None:
        return {}
    data = _load_json(Path(path), what)
    if not isinstance(data, dict):
        raise ReportError(f"{what} file {path} must hold a JSON object keyed by model name")
    return data


def _load_json(path: Path, what: str) -> Any:
    """Parsed JSON of a file; ReportError naming the file when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ReportError(f"{what} file {path} is not valid JSON: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build Table I from a results folder; prints the Markdown table."""
    p = argparse.ArgumentParser(prog="python -m fxscale.hw.table1", description=__doc__.splitlines()[0])
    p.add_argument("results", help="folder of runner.py JSON results")
    p.add_argument("--costs", required=True, help='JSON {model: {"params": int, "flops": int (2 x MACs)}}')
    p.add_argument("--accuracy", help="JSON {model: top-1 %%}")
    p.add_argument("--baseline", help="model name of the baseline row (ratios are against it)")
    p.add_argument("--latency", choices=sorted(LATENCY_FIELDS), default="gpu")
    p.add_argument("--out", default=".", help="folder for table1.md and table1.csv")
    args = p.parse_args(argv)
    try:
        rows = build_rows(load_results(args.results), _read_json(args.costs, "costs"),
                          _read_json(args.accuracy, "accuracy"), args.baseline, args.latency)
    except ReportError as exc:
        print(f"table1: error: {exc}", file=sys.stderr)
        return 2
    md, csv_path = write_table(rows, args.out)
    print(md.read_text(), end="")
    print(f"wrote {md} and {csv_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
