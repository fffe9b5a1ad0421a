"""Parser for tegrastats lines and board power (stdlib only, Python >= 3.6; copied to the board with trtparse.py).

Rails `NAME cur/avg` (mW, TX2 / AGX Xavier JP4), `NAME curmW/avgmW` (Orin, Xavier JP5), `NAME curmW/avgmW/thirdmW`
(JetPack 7; the third value is ignored), `GR3D_FREQ X%@F` or `X%@[F1,F2]` (see shared/notes/hardware.md).
Keep it free of third-party imports, dataclasses, walrus and `from __future__ import annotations`.
"""
import re

_RAIL_RE = re.compile(r"(?<![\w@/])([A-Za-z][A-Za-z0-9_]*) (\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?"
                      r"(?:/\d+(?:\.\d+)?(?:mW)?)?(?=\s|$)")
_GR3D_RE = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%(?:@\[([\d,]+)\]|@(\d+))?")
_TS_TIME_RE = re.compile(r"^(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2}) ")
BOARD_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def _mw(text):
    """int for '1038', float for '12.5'."""
    return float(text) if "." in text else int(text)


def parse_tegrastats_line(line):
    """{'time', 'rails': {name: (cur_mW, avg_mW)}, 'gpu_load_pct', 'gpu_freq_mhz': [..]} of one tegrastats line."""
    rails = dict((n, (_mw(c), _mw(a))) for n, c, a in _RAIL_RE.findall(line))
    gpu = _GR3D_RE.search(line)
    if not rails and gpu is None and "RAM " not in line:
        raise ValueError("not a tegrastats line (no 'RAM', 'GR3D_FREQ' or power rails 'NAME cur/avg'): %r"
                         % line[:120])
    freq = None
    if gpu is not None and (gpu.group(2) or gpu.group(3)):
        freq = [int(x) for x in (gpu.group(2) or gpu.group(3)).split(",") if x]
    ts = _TS_TIME_RE.match(line)
    return {"time": ts.group(1) if ts else None, "rails": rails,
            "gpu_load_pct": int(gpu.group(1)) if gpu else None, "gpu_freq_mhz": freq}


def parse_tegrastats(text):
    """Samples of every non-empty tegrastats line in `text`."""
    samples = [parse_tegrastats_line(ln) for ln in text.splitlines() if ln.strip()]
    if not samples:
        raise ValueError("tegrastats output is empty")
    return samples


def board_power_rule(sample):
    """Name of the rail board_power_mw uses, or 'sum' (all rails but NC: AGX Xavier / AGX Orin)."""
    for name in BOARD_INPUT_RAILS:
        if name in sample["rails"]:
            return name
    return "sum"


def board_power_mw(sample):
    """Board input power (mW, current value) of one sample.

    Rule (as jtop's total_power): the board-input rail VDD_IN (TX2, Orin NX/Nano, Xavier NX) or POM_5V_IN (Nano)
    when present; otherwise (AGX Xavier: GPU/CPU/SOC/CV/VDDRQ/SYS5V, AGX Orin: VDD_GPU_SOC/VDD_CPU_CV/VIN_SYS_5V0/..)
    the sum of all rails except unconnected 'NC' ones — module power without regulator losses.
    """
    rails = sample["rails"]
    if not rails:
        raise ValueError("tegrastats sample has no power rails (NAME cur/avg); is this a board with INA monitors?")
    rule = board_power_rule(sample)
    if rule != "sum":
        return float(rails[rule][0])
    return float(sum(cur for name, (cur, _avg) in rails.items() if name != "NC"))


def _mean(values):
    """Arithmetic mean (None for an empty list)."""
    return sum(values) / float(len(values)) if values else None


def summarize_power(samples, latency_ms=None):
    """Mean board power (W), GPU load, per-rail means and energy per inference (J) = W x latency."""
    if not samples:
        raise ValueError("no tegrastats samples in the timed window")
    board = [board_power_mw(s) for s in samples]
    loads = [s["gpu_load_pct"] for s in samples if s["gpu_load_pct"] is not None]
    names = sorted(set(n for s in samples for n in s["rails"]))
    rails = dict((n, _mean([s["rails"][n][0] for s in samples if n in s["rails"]])) for n in names)
    watts = _mean(board) / 1000.0
    return {"samples": len(samples), "board_power_w": watts, "board_power_w_max": max(board) / 1000.0,
            "power_rule": board_power_rule(samples[0]), "gpu_load_pct": _mean(loads), "rails_mw": rails,
            "energy_per_inference_j": None if latency_ms is None else watts * float(latency_ms) / 1000.0}
