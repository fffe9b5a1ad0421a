"""Parsers for trtexec / tegrastats output and the trtexec command line (stdlib only, Python >= 3.6).

Single source of truth for the on-device benchmark: `fxscale.hw.jetson.bundle(dir)` copies this file next to
`fxscale/hw/runner.py`, which then runs with a Jetson's Python 3.6 standard library (JetPack 4.6 on TX2).
Keep it free of third-party imports, dataclasses, walrus, `from __future__ import annotations`, and f-string `=`.

Formats (see shared/notes/hardware.md sections 2.3-2.5):
* trtexec console, dialect "7.1" (multi-line `Host Latency` / `GPU Compute` blocks), "8.2" (`=== Performance
  summary ===` with an `End-to-End Host Latency` line) and "8.5+" (no End-to-End line, percentile lists, CoV warning);
  the dialect names the output format, the TensorRT version is reported separately.
* `--exportTimes` JSON: per-iteration trace; 7.1 (`inMs`/`outMs`) and 8.2 (`h2dMs`/`d2hMs`/`endToEndMs`) include
  the warm-up iterations, 8.5+ (no `endToEndMs`) does not.
* `--exportProfile` JSON: `[{"count": N}, {"name", "timeMs", "averageMs", "percentage"[, "medianMs"]}, ...]`.
* tegrastats lines: rails `NAME cur/avg` (mW, TX2 / AGX Xavier JP4), `NAME curmW/avgmW` (Orin, Xavier JP5),
  `NAME curmW/avgmW/thirdmW` (JetPack 7; the third value is ignored), `GR3D_FREQ X%@F` or `X%@[F1,F2]`.
"""
import json
import re

PRECISIONS = ("fp32", "fp16", "int8")
_NUM = r"(?:[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|[-+]?nan)"
_PREFIX_RE = re.compile(r"^\[\d{2}/\d{2}/\d{4}-\d{2}:\d{2}:\d{2}\] \[([A-Z])\] ?")
_BANNER_RE = re.compile(r"&&&& (RUNNING|PASSED|FAILED) TensorRT\.trtexec(?: \[TensorRT v(\d+)\])?")
_VERSION_LINE_RE = re.compile(r"^TensorRT version: (\d+(?:\.\d+)*)")
_STAT_LINE_RE = re.compile(
    r"^(GPU Compute Time|Latency|End-to-End Host Latency|Enqueue Time|H2D Latency|D2H Latency): (min = .*)$")
_STAT_ITEM_RE = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\)) = (" + _NUM + r") ms")
_STAT_KEYS = {"GPU Compute Time": "gpu_compute", "Latency": "host_latency",
              "End-to-End Host Latency": "end_to_end", "Enqueue Time": "enqueue",
              "H2D Latency": "h2d", "D2H Latency": "d2h"}
_V7_SECTIONS = {"Host Latency": "host_latency", "Enqueue Time": "enqueue", "GPU Compute": "gpu_compute"}
_V7_ITEM_RE = re.compile(r"^(min|max|mean|median): (" + _NUM + r") ms(?: \(end to end (" + _NUM + r") ms\))?$")
_V7_PCT_RE = re.compile(r"^percentile: (" + _NUM + r") ms at (\d+(?:\.\d+)?)%"
                        r"(?: \(end to end (" + _NUM + r") ms at \d+(?:\.\d+)?%\))?$")
_SCALARS = (
    (re.compile(r"^Throughput: (" + _NUM + r") qps$", re.I), "throughput_qps"),
    (re.compile(r"^(?:Total Host Walltime|walltime): (" + _NUM + r") s$"), "walltime_s"),
    (re.compile(r"^(?:Total GPU Compute Time|total compute time): (" + _NUM + r") s$"), "total_gpu_compute_s"),
    (re.compile(r"coefficient of variance = (" + _NUM + r")%"), "cov_percent"),
)
_PROLOG_RE = (
    (re.compile(r"^Warmup completed (\d+) queries over (" + _NUM + r") ms"), ("warmup_queries", "warmup_ms")),
    (re.compile(r"^Timing trace has (\d+) queries over (" + _NUM + r") s"), ("timed_queries", "timed_s")),
)
_AVG_RE = re.compile(r"^Average on (\d+) runs - GPU latency: (" + _NUM + r") ms"
                     r"(?: - Host latency: (" + _NUM + r") ms \((?:end to end (" + _NUM + r") ms, )?"
                     r"enqueue (" + _NUM + r") ms\))?")
_DEVICE_RE = re.compile(r"^Selected Device: (.+)$")


def _num(text):
    """Float of a C++ ostream number ('1e-05', 'inf', 'nan' included)."""
    return float(text)


def split_log_line(line):
    """(severity letter or None, message) of one trtexec console line, logger prefix removed."""
    m = _PREFIX_RE.match(line)
    if m is None:
        return None, line.strip()
    return m.group(1), line[m.end():].rstrip()


# ----------------------------------------------------------------------------------------------- versions
def as_version(value):
    """Version tuple from (8, 2, 1), '8.2.1', '8201', 'v100300', 8502 or '7'; None stays None."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, list):
        return tuple(int(x) for x in value)
    text = str(value).strip().lstrip("v")
    if "." in text:
        return tuple(int(x) for x in text.split("."))
    if not text.isdigit():
        raise ValueError("cannot read a TensorRT version from %r (expected e.g. '8.2.1' or '8201')" % (value,))
    return _banner_version(text)


def _banner_version(digits):
    """(major, minor, patch) of a trtexec banner number: 8201 -> 8.2.1, 100300 -> 10.3.0."""
    if len(digits) <= 2:
        return (int(digits),)
    if len(digits) < 6:
        return (int(digits[0]), int(digits[1]), int(digits[2:]))
    return (int(digits[:-4]), int(digits[-4:-2]), int(digits[-2:]))


def format_version(version):
    """'8.2.1' for (8, 2, 1); '7.x' for the unversioned 7.x banner (7,); None for None."""
    if version is None:
        return None
    if len(version) == 1:
        return "%d.x" % version[0]
    return ".".join(str(x) for x in version)


def parse_trtexec_version(text):
    """TensorRT version tuple from trtexec output (version line, else banner); (7,) for an unversioned banner."""
    banner = None
    for raw in text.splitlines():
        msg = split_log_line(raw)[1]
        m = _VERSION_LINE_RE.match(msg)
        if m:
            return as_version(m.group(1))
        b = _BANNER_RE.search(raw)
        if b and banner is None:
            banner = _banner_version(b.group(2)) if b.group(2) else (7,)
    return banner


# ----------------------------------------------------------------------------------------- console log
def _stat_items(text):
    """{'min': .., 'max': .., 'mean': .., 'median': .., 'percentiles': {'99': ..}} of one summary line."""
    out = {"percentiles": {}}
    for key, pct, value in _STAT_ITEM_RE.findall(text):
        if pct:
            out["percentiles"][pct] = _num(value)
        else:
            out[key] = _num(value)
    return out


def _new_log_result():
    """Empty result of parse_trtexec_log."""
    keys = ("dialect", "trt_version", "device", "passed", "throughput_qps", "walltime_s",
            "total_gpu_compute_s", "cov_percent", "warmup_queries", "warmup_ms", "timed_queries", "timed_s",
            "gpu_compute", "host_latency", "end_to_end", "enqueue", "h2d", "d2h")
    out = dict((k, None) for k in keys)
    out.update(averages=[], warnings=[], errors=[])
    return out


def _scan_common(msg, out):
    """Lines every dialect shares: scalars, prolog, averages, device, version."""
    for regex, key in _SCALARS:
        m = regex.search(msg)
        if m:
            out[key] = _num(m.group(1))
    for regex, (count_key, time_key) in _PROLOG_RE:
        m = regex.match(msg)
        if m:
            out[count_key], out[time_key] = int(m.group(1)), _num(m.group(2))
    m = _AVG_RE.match(msg)
    if m:
        out["averages"].append(_average(m))
    m = _DEVICE_RE.match(msg)
    if m:
        out["device"] = m.group(1).strip()
    m = _VERSION_LINE_RE.match(msg)
    if m:
        out["trt_version"] = m.group(1)


def _average(m):
    """One 'Average on N runs' trace line as a dict."""
    opt = [None if g is None else _num(g) for g in m.group(3, 4, 5)]
    return {"runs": int(m.group(1)), "gpu_ms": _num(m.group(2)), "host_ms": opt[0],
            "end_to_end_ms": opt[1], "enqueue_ms": opt[2]}


def _scan_v8(msg, out):
    """`Key: min = .. ms, ...` summary lines of TensorRT >= 8."""
    m = _STAT_LINE_RE.match(msg)
    if m:
        out[_STAT_KEYS[m.group(1)]] = _stat_items(m.group(2))
        return True
    return False


def _scan_v7(msg, out, section):
    """Multi-line blocks of TensorRT 7.x; returns the section the next line belongs to."""
    if msg in _V7_SECTIONS:
        key = _V7_SECTIONS[msg]
        out[key] = {"percentiles": {}}
        if key == "host_latency":
            out["end_to_end"] = {"percentiles": {}}
        return key
    if section is None or not msg:
        return None
    m = _V7_ITEM_RE.match(msg)
    if m:
        _v7_store(out, section, m.group(1), m.group(2), m.group(3))
        return section
    m = _V7_PCT_RE.match(msg)
    if m:
        _v7_store(out, section, ("pct", m.group(2)), m.group(1), m.group(3))
    return section


def _v7_store(out, section, key, value, e2e_value):
    """Store one 7.x block value (and its '(end to end ..)' twin)."""
    targets = [(section, value)]
    if e2e_value is not None and section == "host_latency":
        targets.append(("end_to_end", e2e_value))
    for name, val in targets:
        if isinstance(key, tuple):
            out[name]["percentiles"][key[1]] = _num(val)
        else:
            out[name][key] = _num(val)


def _scan_line(raw, out, section):
    """Feed one console line into the result; returns the 7.x block section state."""
    severity, msg = split_log_line(raw)
    b = _BANNER_RE.search(raw)
    if b and b.group(1) != "RUNNING":
        out["passed"] = b.group(1) == "PASSED"
    if severity == "W":
        out["warnings"].append(msg)
    elif severity == "E":
        out["errors"].append(msg)
    if severity not in (None, "I", "W"):
        return section
    _scan_common(msg, out)
    if _scan_v8(msg, out):
        out["dialect"] = "8"
        return None
    return _scan_v7(msg, out, section)


def parse_trtexec_log(text):
    """Parse a trtexec console log (TensorRT 7.1, 8.2 or 8.5+/10.x dialect) into a plain dict."""
    out = _new_log_result()
    section = None
    for raw in text.splitlines():
        section = _scan_line(raw, out, section)
    gpu = out["gpu_compute"]
    if gpu is None or ("mean" not in gpu and "median" not in gpu):
        raise ValueError("trtexec output has no GPU compute summary: looked for 'GPU Compute Time: min = .. ms' "
                         "(TensorRT >= 8, after '=== Performance summary ===') and the 'GPU Compute' block "
                         "(TensorRT 7.x); is the log complete (did trtexec fail before timing)?")
    if out["dialect"] == "8":
        out["dialect"] = "8.2" if out["end_to_end"] is not None else "8.5+"
    else:
        out["dialect"] = "7.1"
    if out["trt_version"] is None:
        out["trt_version"] = format_version(parse_trtexec_version(text))
    return out


# --------------------------------------------------------------------------------------- JSON exports
def _as_json(data, what):
    """Decoded JSON from text / bytes / already-decoded data; tolerates C++ 'inf' / 'nan' tokens."""
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if not isinstance(data, str):
        return data
    try:
        return json.loads(data)
    except ValueError:
        fixed = re.sub(r"(?<![\w\"])-?nan\b", "NaN", data)
        fixed = re.sub(r"(?<![\w\"])(-?)inf\b", r"\1Infinity", fixed)
        try:
            return json.loads(fixed)
        except ValueError as exc:
            raise ValueError("%s file is not valid JSON: %s" % (what, exc)) from exc


def load_json_file(path, what="JSON"):
    """Read and decode a trtexec JSON export (see _as_json)."""
    with open(path, "r") as fh:
        return _as_json(fh.read(), what)


def export_times_format(entry):
    """'7.1', '8.2' or '8.5+' from the keys of one --exportTimes entry."""
    if "startInMs" in entry or "inMs" in entry:
        return "7.1"
    if "endToEndMs" in entry:
        return "8.2"
    return "8.5+"


def summary_stats(values):
    """count / mean / median / min / max of a list of floats."""
    if not values:
        raise ValueError("no values to summarise")
    s = sorted(values)
    n = len(s)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0
    return {"count": n, "mean": sum(s) / float(n), "median": median, "min": s[0], "max": s[-1]}


def _drop_warmup(entries, warmup_ms, warmup_runs):
    """Entries after the warm-up (by count, else by trtexec's rule startComputeMs >= warm-up ms)."""
    if warmup_runs is not None:
        return entries[int(warmup_runs):]
    if warmup_ms is None:
        raise ValueError("this --exportTimes trace includes warm-up iterations (TensorRT <= 8.4 format): "
                         "pass warmup_ms (the --warmUp value) or warmup_runs")
    for i, entry in enumerate(entries):
        if float(entry["startComputeMs"]) >= float(warmup_ms):
            return entries[i:]
    return []


def _column(entries, key):
    """Floats of one key over all entries, or None when the key is absent."""
    if key not in entries[0]:
        return None
    return [float(e[key]) for e in entries]


def parse_export_times(data, warmup_ms=None, warmup_runs=None, includes_warmup=None):
    """Per-iteration GPU compute / host latency lists (warm-up dropped) and their summaries."""
    entries = _as_json(data, "--exportTimes")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise ValueError("--exportTimes JSON must be a non-empty list of per-iteration objects")
    for key in ("computeMs", "latencyMs", "startComputeMs"):
        if key not in entries[0]:
            raise ValueError("--exportTimes entry has no %r key (keys: %s)" % (key, sorted(entries[0])))
    fmt = export_times_format(entries[0])
    if includes_warmup is None:
        includes_warmup = fmt != "8.5+"
    kept = _drop_warmup(entries, warmup_ms, warmup_runs) if includes_warmup else entries
    if not kept:
        raise ValueError("--exportTimes trace has no iterations left after dropping the warm-up "
                         "(warmup_ms=%r, warmup_runs=%r, %d entries)" % (warmup_ms, warmup_runs, len(entries)))
    h2d, d2h = ("inMs", "outMs") if fmt == "7.1" else ("h2dMs", "d2hMs")
    out = {"format": fmt, "dropped_warmup": len(entries) - len(kept),
           "computeMs": _column(kept, "computeMs"), "latencyMs": _column(kept, "latencyMs"),
           "h2dMs": _column(kept, h2d), "d2hMs": _column(kept, d2h), "endToEndMs": _column(kept, "endToEndMs")}
    out["compute"] = summary_stats(out["computeMs"])
    out["latency"] = summary_stats(out["latencyMs"])
    return out


def parse_export_profile(data):
    """{'count': iterations, 'layers': [{name, timeMs, averageMs, percentage, medianMs}]} of --exportProfile."""
    items = _as_json(data, "--exportProfile")
    if not isinstance(items, list) or not items or not isinstance(items[0], dict) or "count" not in items[0]:
        raise ValueError("--exportProfile JSON must be a list starting with {\"count\": N}")
    layers = []
    for item in items[1:]:
        missing = [k for k in ("name", "timeMs", "averageMs", "percentage") if k not in item]
        if missing:
            raise ValueError("--exportProfile layer entry %r lacks %s" % (item, ", ".join(missing)))
        layers.append({"name": item["name"], "timeMs": float(item["timeMs"]),
                       "averageMs": float(item["averageMs"]), "percentage": float(item["percentage"]),
                       "medianMs": float(item["medianMs"]) if "medianMs" in item else None})
    return {"count": int(items[0]["count"]), "layers": layers}


# ------------------------------------------------------------------------------------------ tegrastats
# In tegrastats.py (also copied to the board); re-exported here so callers keep one import.
try:  # inside the fxscale package
    from fxscale.hw.tegrastats import (  # noqa: F401
        BOARD_INPUT_RAILS, board_power_mw, board_power_rule, parse_tegrastats, parse_tegrastats_line,
        summarize_power)
except ImportError:  # the flat copy next to runner.py on a board
    from tegrastats import (  # noqa: F401
        BOARD_INPUT_RAILS, board_power_mw, board_power_rule, parse_tegrastats, parse_tegrastats_line,
        summarize_power)


# ---------------------------------------------------------------------------------------- command line
def _fmt_dims(dims):
    """'1x3x224x224' of a dims sequence."""
    return "x".join(str(int(d)) for d in dims)


def _model_flags(version, onnx, load_engine, save_engine):
    """--onnx / --loadEngine / --saveEngine (and --explicitBatch for ONNX on 7.x)."""
    if (onnx is None) == (load_engine is None):
        raise ValueError("give exactly one of onnx= or load_engine=")
    if load_engine is not None:
        return ["--loadEngine=%s" % load_engine]
    flags = ["--onnx=%s" % onnx]
    if version[0] < 8:
        flags.append("--explicitBatch")
    if save_engine is not None:
        flags.append("--saveEngine=%s" % save_engine)
    return flags


def _build_flags(version, precision, workspace_mib):
    """--fp16/--int8 and --workspace (< 8.4) or --memPoolSize=workspace: (>= 8.4)."""
    if precision not in PRECISIONS:
        raise ValueError("precision must be one of %s, got %r" % (", ".join(PRECISIONS), precision))
    if precision != "fp32" and version >= (11,):
        raise ValueError("TensorRT >= 11 builds strongly typed networks and has no --%s: export the ONNX model "
                         "in the wanted precision instead" % precision)
    flags = [] if precision == "fp32" else ["--" + precision]
    if workspace_mib is not None:
        if version < (8, 4):
            flags.append("--workspace=%d" % int(workspace_mib))
        else:
            flags.append("--memPoolSize=workspace:%d" % int(workspace_mib))
    return flags


def trtexec_command(version, onnx=None, load_engine=None, shapes=None, precision="fp32", warmup_ms=500,
                    iterations=50, duration_s=0, avg_runs=None, export_times=None, export_profile=None,
                    save_engine=None, workspace_mib=None, trtexec="trtexec"):
    """argv of trtexec for the paper protocol (hardware.md 2.3): batch-1 shapes, warm-up ms, N timed runs.

    --explicitBatch only for ONNX on 7.x; --workspace before 8.4, --memPoolSize=workspace: after; precision and
    workspace flags only when building from ONNX; --separateProfileRun with --exportProfile from 8.0 on (on 7.x
    the profiler would run inside the timed loop, so callers should not export a profile there).
    """
    version = as_version(version)
    if version is None:
        raise ValueError("the TensorRT version is needed to choose trtexec flags (e.g. '8.2.1')")
    argv = [trtexec] + _model_flags(version, onnx, load_engine, save_engine)
    if onnx is not None:
        argv += _build_flags(version, precision, workspace_mib)
    if shapes:
        argv.append("--shapes=" + ",".join("%s:%s" % (k, _fmt_dims(v)) for k, v in sorted(shapes.items())))
    argv += ["--warmUp=%d" % int(warmup_ms), "--iterations=%d" % int(iterations),
             "--duration=%d" % int(duration_s), "--avgRuns=%d" % int(avg_runs or iterations)]
    if export_times is not None:
        argv.append("--exportTimes=%s" % export_times)
    if export_profile is not None:
        argv.append("--exportProfile=%s" % export_profile)
        if version >= (8,):
            argv.append("--separateProfileRun")
    return argv


# ------------------------------------------------------------------------------------- ONNX model inputs
def _varint(buf, pos):
    """(value, next position) of a protobuf varint."""
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf):
    """(field number, value) pairs of a protobuf message; length-delimited values as memoryview slices."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError("unsupported protobuf wire type %d (not an ONNX file?)" % wire)
        yield field, value


def _dims(value_info):
    """Dims of a ValueInfoProto: ints, dim_param strings, or None for unknown."""
    dims = []
    for f, type_proto in _fields(value_info):
        if f != 2:
            continue
        for tf, tensor in _fields(type_proto):
            for sf, shape in (_fields(tensor) if tf == 1 else ()):
                for _df, dim in (_fields(shape) if sf == 2 else ()):
                    dims.append(_dim(dim))
    return dims


def _dim(dim):
    """dim_value (int), dim_param (str) or None of a TensorShapeProto.Dimension."""
    for f, value in _fields(dim):
        if f == 1:
            return value
        if f == 2:
            return bytes(value).decode("utf-8")
    return None


def _name(message, field_no):
    """First string field `field_no` of a message."""
    for f, value in _fields(message):
        if f == field_no:
            return bytes(value).decode("utf-8")
    return None


def onnx_info(path):
    """{'inputs': [(name, dims)], 'opset': int} of an ONNX file, read with the stdlib (no onnx package)."""
    with open(path, "rb") as fh:
        model = memoryview(fh.read())
    opset, graph = None, None
    try:
        for f, value in _fields(model):
            if f == 8 and (_name(value, 1) or "") in ("", "ai.onnx"):
                opset = dict(_fields(value)).get(2)
            elif f == 7:
                graph = value
    except (IndexError, ValueError) as exc:
        raise ValueError("%s is not a readable ONNX model: %s" % (path, exc)) from exc
    if graph is None:
        raise ValueError("%s is not an ONNX model (no graph)" % path)
    inits = set(_name(v, 8) for f, v in _fields(graph) if f == 5)
    inputs = [(_name(v, 1), _dims(v)) for f, v in _fields(graph) if f == 11]
    return {"inputs": [(n, d) for n, d in inputs if n not in inits], "opset": opset}
