"""Regenerate (or check) tests/golden/analysis.json: the channel analysis of the zoo slice and the pattern nets.

For every model of ``fxscale.zoo.REPRESENTATIVE_SLICE`` (traced at ``spec.example_input()``, the small test
size) and every net in tests/nets.py ``NETS`` (traced at its own example input) the file records each channel
group (width, divisor, scalable, freeze reason, producer and consumer counts) and the model's MACs and
parameters from ``fxscale.cost``. tests/test_golden_analysis.py compares the live analysis with it, so any
change to the analysis shows up as a reviewed diff of this file.

    python benchmarks/regen_golden.py          # rewrite the file, print what changed
    python benchmarks/regen_golden.py --check  # exit 1 with a diff summary when the file is out of date
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "analysis.json"
REGEN = "python benchmarks/regen_golden.py"
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")  # an object id in a reason would change on every run


def _nets() -> Any:
    """tests/nets.py ``NETS`` (tests/ goes on sys.path once)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from nets import NETS
    return NETS


def model_names() -> dict[str, list[str]]:
    """The models the golden file covers, by section."""
    from fxscale import zoo
    return {"nets": sorted(_nets()), "zoo": sorted(zoo.REPRESENTATIVE_SLICE)}


def trace(section: str, name: str) -> tuple[Any, Any, Any]:
    """(gm, cg, x) exactly as the tests trace it: a pattern net at its example input, a zoo model at the small one."""
    import torch

    import fxscale
    from fxscale import zoo
    if section == "nets":
        model, x = _nets()[name]()
    else:
        with torch.random.fork_rng(devices=[]):  # weights do not enter the record; keep the global RNG anyway
            torch.manual_seed(0)
            model = zoo.create_model(name).eval()
        x = zoo.get_spec(name).example_input()
    gm = fxscale.trace(model, x)
    return gm, fxscale.analyze(gm), x


def record(cg: Any, x: Any) -> dict[str, Any]:
    """The golden entry of one analysed model: its input shape, groups by name, MACs and params."""
    import fxscale
    groups: dict[str, dict[str, Any]] = {}
    for g in cg.groups:
        if g.name in groups:
            raise ValueError(f"two channel groups are named {g.name!r}")
        if _ADDRESS.search(g.reason):
            raise ValueError(f"group {g.name!r}: freeze reason holds an object address: {g.reason!r}")
        groups[g.name] = {"width": g.width, "divisor": g.divisor, "scalable": g.scalable, "reason": g.reason,
                          "producers": len(g.producers), "consumers": len(g.consumers)}
    rep = fxscale.cost(cg)
    return {"input": list(x.shape), "groups": groups, "totals": {"macs": rep.macs, "params": rep.params}}


def build() -> dict[str, dict[str, Any]]:
    """The whole golden document."""
    import torch
    torch.set_num_threads(1)
    out: dict[str, dict[str, Any]] = {}
    for section, names in model_names().items():
        out[section] = {}
        for name in names:
            _gm, cg, x = trace(section, name)
            out[section][name] = record(cg, x)
    return out


def dumps(doc: dict[str, Any]) -> str:
    """The file's text: sorted keys, indent 1, final newline."""
    return json.dumps(doc, sort_keys=True, indent=1) + "\n"


def load(path: Path = GOLDEN) -> dict[str, Any]:
    """The golden document on disk (empty sections when the file does not exist yet)."""
    return json.loads(path.read_text()) if path.exists() else {"nets": {}, "zoo": {}}


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else json.dumps(v)


def diff_model(old: dict[str, Any] | None, new: dict[str, Any] | None, limit: int = 12) -> list[str]:
    """Readable lines for what changed in one model's entry (empty when equal); at most ``limit`` group lines."""
    if old == new:
        return []
    if old is None:
        return [f"new model ({len(new['groups'])} groups)"]
    if new is None:
        return ["model removed"]
    lines = []
    if old.get("input") != new.get("input"):
        lines.append(f"input {old.get('input')} -> {new.get('input')}")
    for key in ("macs", "params"):
        a, b = old.get("totals", {}).get(key), new.get("totals", {}).get(key)
        if a != b:
            lines.append(f"{key} {a} -> {b}" + (f" ({(b - a) / a * 100:+.3g}%)" if isinstance(a, int) and a else ""))
    og, ng = old.get("groups", {}), new.get("groups", {})
    group_lines = []
    for name in sorted(set(og) | set(ng)):
        a, b = og.get(name), ng.get(name)
        if a == b:
            continue
        if a is None:
            group_lines.append(f"  + {name}: {_describe(b)}")
        elif b is None:
            group_lines.append(f"  - {name}: {_describe(a)}")
        else:
            changes = ", ".join(f"{k} {_fmt(a.get(k))} -> {_fmt(b.get(k))}" for k in sorted(set(a) | set(b))
                                if a.get(k) != b.get(k))
            group_lines.append(f"  ~ {name}: {changes}")
    if group_lines:
        lines.append(f"groups: {len(og)} -> {len(ng)}, {len(group_lines)} differ")
        lines += group_lines[:limit]
        if len(group_lines) > limit:
            lines.append(f"  ... and {len(group_lines) - limit} more")
    return lines


def _describe(g: dict[str, Any]) -> str:
    state = "scalable" if g.get("scalable") else f"fixed ({g.get('reason')})"
    return f"width {g.get('width')} div {g.get('divisor')} {state}"


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Readable lines for every model that differs between two golden documents."""
    lines = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for name in sorted(set(a) | set(b)):
            changed = diff_model(a.get(name), b.get(name))
            if changed:
                lines.append(f"{section}/{name}: {changed[0]}")
                lines += [f"    {line}" for line in changed[1:]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it; "
                                                               "exit 1 with a diff summary when they differ")
    parser.add_argument("--out", type=Path, default=GOLDEN, help=f"golden file (default {GOLDEN.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    new = build()
    old = load(args.out)
    lines = diff(old, new)
    if args.check:
        if lines or dumps(old) != dumps(new):
            print(f"{args.out} is out of date ({len(lines)} lines of changes); review and regenerate with: {REGEN}")
            print("\n".join(lines))
            return 1
        print(f"{args.out} is up to date ({sum(len(v) for v in new.values())} models)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(new))
    n = sum(len(v) for v in new.values())
    print(f"wrote {args.out} ({n} models, {args.out.stat().st_size} bytes)")
    if lines:
        print("changes:\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
