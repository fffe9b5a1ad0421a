"""WPK's per-conv comparison: every distinct conv of a model, timed under every available implementation.

`conv_table(gm, example_input)` extracts each distinct nn.Conv2d of the model as a one-op module at its exact
input shape (distinct = same input shape and conv hyper-parameters), compiles it with every implementation
(torch eager = the library default, channels_last, ort, openvino, inductor, TVM default schedules and, with
`tune`, TVM tuned by MetaSchedule), times them interleaved in one engine run per shape
(fxscale.optimize.measure.time_calls: one thread, interleaved rounds, median), and returns one row per shape:
each implementation's median ms with the interval of its ratio to the library default, the fastest, and its
speed-up. Rows are cached on disk by (shape, implementations with settings and versions, protocol, CPU).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from fxscale.hw.base import TimingProtocol
from fxscale.optimize.backends.base import BackendError
from fxscale.optimize.backends.registry import create_backend
from fxscale.optimize.backends.tvm_tune import default_cache_dir

DEFAULT = "torch_default"
# label -> (backend, settings); "tvm_tuned" gets its settings from conv_table(tune=...)
IMPLEMENTATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    DEFAULT: ("eager", {}), "channels_last": ("channels_last", {}), "ort": ("ort", {}),
    "openvino": ("openvino", {}), "inductor": ("inductor", {}), "tvm_default": ("tvm", {"trials": 0}),
    "tvm_tuned": ("tvm", {"trials": 64}),
}
Progress = Callable[[str], None]


FUNCTIONAL_CONVS = (F.conv2d, torch.conv2d)
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _functional_conv(gm: fx.GraphModule, n: fx.Node) -> nn.Conv2d | None:
    """An nn.Conv2d equal to an F.conv2d / torch.conv2d call (its weight copied when the graph holds it as a
    parameter or buffer; timing does not depend on values); None when a hyper-parameter is not a literal."""
    a = {**_CONV_DEFAULTS, **dict(zip(_CONV_ARGS, n.args)), **n.kwargs}
    w = a["weight"]
    wmeta = w.meta.get("tensor_meta") if isinstance(w, fx.Node) else None
    if wmeta is None or len(wmeta.shape) != 4 or any(isinstance(a[k], fx.Node)
                                                      for k in ("stride", "padding", "dilation", "groups")):
        return None
    groups, (cout, cin, kh, kw) = int(a["groups"]), (int(d) for d in wmeta.shape)
    pad = a["padding"] if isinstance(a["padding"], str) else _pair(a["padding"])
    conv = nn.Conv2d(cin * groups, cout, (kh, kw), _pair(a["stride"]), pad, _pair(a["dilation"]), groups,
                     bias=a["bias"] is not None)
    if w.op == "get_attr":
        with torch.no_grad():
            value: Any = gm
            for part in str(w.target).split("."):
                value = getattr(value, part)
            conv.weight.copy_(value)
    return conv


def conv_specs(gm: fx.GraphModule, example_input: torch.Tensor) -> list[dict[str, Any]]:
    """One entry per distinct 2-D conv (input shape + hyper-parameters): nn.Conv2d modules and F.conv2d /
    torch.conv2d calls (timm's weight-standardised and 'same'-padded convs); key, layers, one-op module, shape."""
    gm = copy.deepcopy(gm).eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    mods = dict(gm.named_modules())
    out: dict[str, dict[str, Any]] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            mod = mods.get(n.target)
        elif n.op == "call_function" and n.target in FUNCTIONAL_CONVS:
            mod = _functional_conv(gm, n)
        else:
            continue
        if not isinstance(mod, nn.Conv2d) or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        meta = n.args[0].meta.get("tensor_meta")
        if meta is None:
            continue
        shape = tuple(int(d) for d in meta.shape)
        key = (f"{'x'.join(map(str, shape))} -> {mod.out_channels} k{'x'.join(map(str, mod.kernel_size))} "
               f"s{mod.stride[0]} p{mod.padding if isinstance(mod.padding, str) else mod.padding[0]} g{mod.groups}"
               f"{' d' + str(mod.dilation[0]) if mod.dilation[0] != 1 else ''}")
        layer = str(n.target) if n.op == "call_module" else n.name
        if key in out:
            out[key]["layers"].append(layer)
            continue
        out[key] = {"shape": key, "input_shape": shape, "out_channels": mod.out_channels,
                    "kernel": tuple(mod.kernel_size), "stride": tuple(mod.stride), "groups": mod.groups,
                    "layers": [layer], "module": copy.deepcopy(mod)}
    return list(out.values())


def _cache_key(spec: dict[str, Any], impls: Mapping[str, Any], protocol: TimingProtocol) -> str:
    from fxscale.optimize.measure import machine
    proto = {k: v for k, v in vars(protocol).items() if k != "clock"}
    text = json.dumps([spec["shape"], impls, proto, machine()["cpu"]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _row(spec: dict[str, Any], labels: list[str], timings: list[Any], skipped: dict[str, str]) -> dict[str, Any]:
    from fxscale.optimize.measure import hi_of
    base = timings[labels.index(DEFAULT)]
    impl: dict[str, Any] = {}
    for label, t in zip(labels, timings):
        ri = t.ratio_to(base)
        impl[label] = {"ms": t.value, "ms_hi": hi_of(t), "ratio": ri.ratio, "ratio_lo": ri.low, "ratio_hi": ri.high}
    fastest = min(impl, key=lambda k: impl[k]["ms"] if not math.isnan(impl[k]["ms"]) else math.inf)
    row = {k: spec[k] for k in ("shape", "input_shape", "out_channels", "kernel", "stride", "groups", "layers")}
    row.update(impl=impl, skipped=dict(skipped), fastest=fastest,
               speedup=impl[DEFAULT]["ms"] / impl[fastest]["ms"] if impl[fastest]["ms"] > 0 else math.nan)
    if "tvm_tuned" in impl and "tvm_default" in impl:
        row["tuned_vs_tvm_default"] = impl["tvm_default"]["ms"] / max(impl["tvm_tuned"]["ms"], 1e-12)
        row["tuned_beats_default"] = impl["tvm_tuned"]["ratio_hi"] < 1.0  # tuned faster than the library default
    return row


def conv_table(gm: fx.GraphModule, example_input: torch.Tensor, backends: Sequence[str] | None = None,
               protocol: TimingProtocol | None = None, tune: Mapping[str, Any] | None = None,
               cache_dir: str | Path | None = None, use_cache: bool = True, threads: int = 1,
               progress: Progress | None = None, limit: int | None = None,
               tuning_deadline: float | None = None) -> list[dict[str, Any]]:
    """The per-conv-shape table (see the module docstring).

    backends: implementation labels (keys of IMPLEMENTATIONS; default: all but tvm_tuned, plus tvm_tuned when
    `tune` is given). tune: settings of the tuned TVM build (trials, time_budget_s, cache_dir...). Unavailable or
    failing implementations are listed in each row's `skipped` with the reason. limit: the first `limit` shapes.
    tuning_deadline: time.monotonic() after which tvm_tuned searches no more (it applies its database).
    """
    from fxscale.optimize.measure import Call, default_protocol, time_calls
    labels = list(backends) if backends else [k for k in IMPLEMENTATIONS if k != "tvm_tuned" or tune is not None]
    unknown = [b for b in labels if b not in IMPLEMENTATIONS]
    if unknown:
        raise BackendError(f"unknown conv-table implementation {', '.join(map(repr, unknown))}; "
                           f"valid: {', '.join(IMPLEMENTATIONS)}")
    if DEFAULT not in labels:
        labels.insert(0, DEFAULT)
    protocol = protocol or default_protocol()
    impls = {}
    for label in labels:
        name, settings = IMPLEMENTATIONS[label]
        settings = {**settings, **(tune or {})} if label == "tvm_tuned" else dict(settings)
        impls[label] = create_backend(name, **settings)
        impls[label].tuning_deadline = tuning_deadline
    described = {k: be.describe() for k, be in impls.items()}
    cache_path = Path(cache_dir or default_cache_dir().parent) / "convtable.json" if use_cache else None
    cache = _load(cache_path)
    rows = []
    for spec in conv_specs(gm, example_input)[:limit]:
        key = _cache_key(spec, described, protocol)
        if key in cache:
            rows.append({**cache[key], "cached": True})
            continue
        if progress:
            progress(f"conv {spec['shape']}")
        x = torch.randn(spec["input_shape"])
        one = fx.symbolic_trace(nn.Sequential(spec["module"])).eval()
        calls, got, skipped = [], [], {}
        for label, be in impls.items():
            cap = be.supports(one, (x,))
            if not cap:
                skipped[label] = cap.reason
                continue
            try:
                fn = be.compile(one, (x,))
            except BackendError as exc:
                skipped[label] = str(exc)
                continue
            calls.append(Call(fn, (x,)))
            got.append(label)
        timings = time_calls(calls, protocol, threads=threads)
        row = _row(spec, got, timings, skipped)
        cache[key] = row
        rows.append({**row, "cached": False})
    if cache_path is not None:
        from fxscale.artifacts import write_text_atomic
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_path, json.dumps(cache, indent=1, sort_keys=True, default=str))
    return rows


def table_markdown(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """The rows as a markdown table: ms per implementation (ratio to the library default), fastest, speed-up."""
    labels = [k for k in IMPLEMENTATIONS if any(k in r["impl"] for r in rows)]
    head = ["conv (N x C x H x W -> C_out kernel stride pad groups)", "layers", *labels, "fastest", "speed-up"]
    lines = [f"### {title}\n" if title else "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['shape']}`", str(len(r["layers"]))]
        for k in labels:
            v = r["impl"].get(k)
            cells.append("—" if v is None else f"{v['ms']:.3f} ({v['ratio']:.2f}x [{v['ratio_lo']:.2f}, "
                                               f"{v['ratio_hi']:.2f}])")
        cells += [r["fastest"], f"{r['speedup']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    reasons = {(k, v) for r in rows for k, v in r.get("skipped", {}).items()}
    lines += [f"\nSkipped: {k}: {v}" for k, v in sorted(reasons)]
    return "\n".join(line for line in lines if line) + "\n"


__all__ = ["DEFAULT", "IMPLEMENTATIONS", "conv_specs", "conv_table", "table_markdown"]
