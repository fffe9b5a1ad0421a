#!/usr/bin/env python3
"""Time every ONNX model of a folder with trtexec on a Jetson (HACScale protocol) and sample its power.

Runs with the board's Python 3.6+ standard library only (JetPack 4.6 on TX2). It needs `trtparse.py` and
`tegrastats.py` in the same folder: `fxscale jetson-bundle DIR` (or `fxscale.hw.jetson.bundle(DIR)`) writes the three
files into one folder from an installed fxscale, e.g. on the host

    fxscale jetson-bundle jetson_bench
    scp -r jetson_bench models/ tx2:~/

and on the board

    sudo nvpmodel -m 0 && sudo jetson_clocks
    python3 jetson_bench/runner.py models --out results --precision fp16

Per model: (1) trtexec builds the engine and times it with the paper's protocol (batch 1, --warmUp ms, exactly
--iterations timed runs, --exportTimes / --exportProfile / --separateProfileRun); (2) unless --no-power, a second
trtexec run loads the saved engine and runs for --power-seconds while `tegrastats --interval 100` is sampled; only
samples between the end of the warm-up and the end of the timed loop count (the INA3221 averages are slow, so the
50-run latency window alone is too short for power). Writes RESULTS/<model>.json and the raw logs; the exit status
is 1 when a model failed (its JSON then has "status": "failed"), 2 on a setup error.
"""
import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

try:
    import trtparse  # the copy next to this file (fxscale.hw.jetson.bundle)
except ImportError:  # running from a source checkout with fxscale installed
    from fxscale.hw import trtparse

DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
SCHEMA = "fxscale.jetson.result/1"
START_MARK = "Starting inference"
END_MARKS = ("Warmup completed", "Timing trace has", "=== Trace details ===", "Trace averages of")


class RunnerError(Exception):
    """A model could not be timed (the message says why)."""


def parse_args(argv):
    """Command-line options."""
    p = argparse.ArgumentParser(description="Time ONNX models with trtexec and tegrastats on a Jetson.")
    p.add_argument("models", help="folder of .onnx files")
    p.add_argument("--out", help="results folder (default: MODELS/results)")
    p.add_argument("--trtexec", default=DEFAULT_TRTEXEC, help="trtexec binary (default %(default)s)")
    p.add_argument("--tegrastats", default="tegrastats", help="tegrastats binary (default %(default)s)")
    p.add_argument("--precision", default="fp32", choices=trtparse.PRECISIONS)
    p.add_argument("--warmup-ms", type=int, default=500, help="trtexec --warmUp in ms (default %(default)s)")
    p.add_argument("--iterations", type=int, default=50, help="timed runs (paper: 50)")
    p.add_argument("--avg-runs", type=int, help="trtexec --avgRuns (default: --iterations)")
    p.add_argument("--workspace-mib", type=int, help="builder workspace (--workspace / --memPoolSize)")
    p.add_argument("--hw", help="HxW for inputs with dynamic spatial dims, e.g. 224x224")
    p.add_argument("--trt-version", help="TensorRT version, e.g. 8.2.1 (default: read from trtexec --help)")
    p.add_argument("--no-power", action="store_true", help="skip the tegrastats power run")
    p.add_argument("--power-seconds", type=float, default=10.0, help="length of the power run (default %(default)s)")
    p.add_argument("--tegrastats-interval", type=int, default=100, help="sampling interval in ms")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per trtexec call")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- processes
def _lines(stream):
    """Decoded lines of a binary pipe (undecodable bytes replaced)."""
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace")


def run_logged(argv, log_path, timeout):
    """Run argv with output teed to log_path; returns (exit status, [(wall time, line)])."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise RunnerError("cannot run %s: %s (set the path with --trtexec)" % (argv[0], exc)) from exc
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines = []
    try:
        with open(log_path, "w") as log:
            for line in _lines(proc.stdout):
                lines.append((time.time(), line.rstrip("\n")))
                log.write(line)
        rc = proc.wait()
    finally:
        timer.cancel()
    return rc, lines


class Tegrastats(object):
    """`tegrastats --interval N` in the background; every output line is kept with its wall time."""

    def __init__(self, binary, interval_ms, log_path):
        self.argv = [binary, "--interval", str(int(interval_ms))]
        self.log_path = log_path
        self.lines = []
        self.proc = None
        self.thread = None

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as exc:
            raise RunnerError("cannot run %s: %s (set --tegrastats or use --no-power)" % (self.argv[0], exc)) from exc
        self.thread = threading.Thread(target=self._read)
        self.thread.daemon = True
        self.thread.start()
        return self

    def _read(self):
        for line in _lines(self.proc.stdout):
            self.lines.append((time.time(), line.rstrip("\n")))

    def __exit__(self, *exc_info):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(5)
        with open(self.log_path, "w") as log:
            log.write("".join("%.3f %s\n" % (t, ln) for t, ln in self.lines))
        return False


# ------------------------------------------------------------------------------------------ model setup
def detect_version(trtexec, override, timeout):
    """TensorRT version tuple: --trt-version, else the banner of `trtexec --help`."""
    if override:
        return trtparse.as_version(override)
    try:
        out = subprocess.run([trtexec, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=timeout).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError("cannot run trtexec (%s): pass --trtexec PATH (default %s)" % (exc, DEFAULT_TRTEXEC)) from exc
    version = trtparse.parse_trtexec_version(out)
    if version is None:
        raise RunnerError("no TensorRT version in `%s --help` output; pass --trt-version" % trtexec)
    return version


def _static_dim(name, index, dim, hw):
    """Concrete size of one input dim: batch 1, H/W from --hw, else the ONNX value."""
    if isinstance(dim, int) and dim > 0:
        return dim
    if index == 0:
        return 1
    if index in (2, 3) and hw:
        return int(hw.lower().split("x")[index - 2])
    raise RunnerError("input %r dim %d is dynamic (%r): pass --hw HxW or export a static model" % (name, index, dim))


def model_inputs(onnx_path, hw):
    """({input name: batch-1 dims}, opset) of an ONNX file."""
    try:
        info = trtparse.onnx_info(onnx_path)
    except (OSError, ValueError) as exc:
        raise RunnerError(str(exc)) from exc
    shapes = {}
    for name, dims in info["inputs"]:
        if not dims:
            raise RunnerError("input %r of %s has no shape" % (name, onnx_path))
        shapes[name] = [_static_dim(name, i, d, hw) for i, d in enumerate(dims)]
    return shapes, info["opset"]


# ----------------------------------------------------------------------------------------------- runs
def _tail(lines, n=15):
    """Last n output lines as one string."""
    return "\n".join(ln for _t, ln in lines[-n:])


def latency_run(onnx_path, shapes, args, version, paths):
    """Build + time with the paper protocol; returns (argv, parsed console, latency dict).

    The per-layer profile is exported only from TensorRT 8 on, where --separateProfileRun keeps the profiler
    out of the timed iterations (7.x would profile the timed run itself and inflate the latency).
    """
    argv = trtparse.trtexec_command(
        version, onnx=onnx_path, shapes=shapes, precision=args.precision, warmup_ms=args.warmup_ms,
        iterations=args.iterations, duration_s=0, avg_runs=args.avg_runs, export_times=paths["times"],
        export_profile=paths["profile"] if version >= (8,) else None,
        save_engine=None if args.no_power else paths["engine"],
        workspace_mib=args.workspace_mib,
        trtexec=args.trtexec)
    rc, lines = run_logged(argv, paths["log"], args.timeout)
    if rc != 0:
        raise RunnerError("trtexec exited with status %d; last lines:\n%s" % (rc, _tail(lines)))
    console = trtparse.parse_trtexec_log("\n".join(ln for _t, ln in lines))
    return argv, console, latency_stats(console, paths["times"], args.warmup_ms, version)


def latency_stats(console, times_path, warmup_ms, version):
    """Latency summaries from --exportTimes (preferred) or the console summary."""
    if os.path.isfile(times_path):
        times = trtparse.parse_export_times(trtparse.load_json_file(times_path, "--exportTimes"),
                                            warmup_ms=warmup_ms, includes_warmup=version < (8, 5))
        return {"source": "exportTimes", "dropped_warmup": times["dropped_warmup"],
                "gpu_compute": times["compute"], "host": times["latency"],
                "gpu_compute_samples": times["computeMs"], "host_samples": times["latencyMs"]}
    keys = ("mean", "median", "min", "max")
    pick = dict((name, dict((k, console[src].get(k)) for k in keys))
                for name, src in (("gpu_compute", "gpu_compute"), ("host", "host_latency")))
    for stats in pick.values():
        stats["count"] = console["timed_queries"]
    pick["source"] = "console"
    return pick


def timed_window(lines, warmup_ms):
    """(start, end) wall times of trtexec's timed loop from its streamed output, or None."""
    start = next((t for t, ln in lines if START_MARK in ln), None)
    end = next((t for t, ln in lines if any(m in ln for m in END_MARKS)), None)
    if start is None or end is None:
        return None
    after_warmup = start + warmup_ms / 1000.0
    return (after_warmup if after_warmup < end else start), end


def window_samples(ts_lines, window):
    """Parsed tegrastats samples inside the window (lines that do not parse are skipped)."""
    samples = []
    for t, line in ts_lines:
        if window[0] <= t <= window[1] and line.strip():
            try:
                samples.append(trtparse.parse_tegrastats_line(line))
            except ValueError:
                continue
    return samples


def power_run(shapes, args, version, paths, latency_ms):
    """Re-run the saved engine for --power-seconds while sampling tegrastats; power summary or {'error'}."""
    argv = trtparse.trtexec_command(
        version, load_engine=paths["engine"], shapes=shapes, warmup_ms=args.warmup_ms,
        iterations=args.iterations, duration_s=args.power_seconds, trtexec=args.trtexec)
    with Tegrastats(args.tegrastats, args.tegrastats_interval, paths["tegrastats"]) as ts:
        rc, lines = run_logged(argv, paths["power_log"], args.timeout)
    info = {"argv": argv, "log": os.path.basename(paths["power_log"]),
            "tegrastats_log": os.path.basename(paths["tegrastats"]), "tegrastats_lines": len(ts.lines)}
    window = timed_window(lines, args.warmup_ms)
    if rc != 0 or window is None:
        info["error"] = "power run failed (status %d); last lines:\n%s" % (rc, _tail(lines))
        return info
    samples = window_samples(ts.lines, window)
    if not samples:
        info["error"] = "no tegrastats sample inside the %.2f s timed window" % (window[1] - window[0])
        return info
    info.update(trtparse.summarize_power(samples, latency_ms=latency_ms))
    info["window_s"] = window[1] - window[0]
    return info


# ------------------------------------------------------------------------------------------ one model
def model_paths(out_dir, stem, engine_dir):
    """Files written for one model."""
    base = os.path.join(out_dir, stem)
    return {"json": base + ".json", "log": base + ".trtexec.log", "times": base + ".times.json",
            "profile": base + ".profile.json", "power_log": base + ".power.log",
            "tegrastats": base + ".tegrastats.log", "engine": os.path.join(engine_dir, stem + ".engine")}


def board_name():
    """/proc/device-tree/model of a Jetson (e.g. 'NVIDIA Jetson TX2'), or the platform string."""
    try:
        with open("/proc/device-tree/model", "rb") as fh:
            return fh.read().decode("utf-8", "replace").strip("\x00\n ")
    except OSError:
        return platform.platform()


def measure_model(onnx_path, args, version, paths):
    """Result dict of one model (raises RunnerError / ValueError on failure)."""
    shapes, opset = model_inputs(onnx_path, args.hw)
    argv, console, latency = latency_run(onnx_path, shapes, args, version, paths)
    result = {"schema": SCHEMA, "status": "ok", "model": os.path.splitext(os.path.basename(onnx_path))[0],
              "onnx": os.path.abspath(onnx_path), "opset": opset, "input_shapes": shapes,
              "device": console["device"] or board_name(), "board": board_name(),
              "trtexec": {"path": args.trtexec, "version": trtparse.format_version(version),
                          "dialect": console["dialect"], "argv": argv, "log": os.path.basename(paths["log"])},
              "engine": {"precision": args.precision, "warmup_ms": args.warmup_ms, "iterations": args.iterations,
                         "avg_runs": args.avg_runs or args.iterations, "workspace_mib": args.workspace_mib,
                         "batch": 1},
              "latency_ms": latency, "console": console, "profile": None, "power": None,
              "energy_per_inference_j": None}
    if os.path.isfile(paths["profile"]):
        result["profile"] = trtparse.parse_export_profile(trtparse.load_json_file(paths["profile"]))
    if not args.no_power:
        try:
            result["power"] = power_run(shapes, args, version, paths, latency["gpu_compute"]["mean"])
        except RunnerError as exc:
            result["power"] = {"error": str(exc)}
        result["energy_per_inference_j"] = result["power"].get("energy_per_inference_j")
        result["energy_basis"] = "power.board_power_w x latency_ms.gpu_compute.mean"
    return result


def failure(onnx_path, paths, exc):
    """Result dict of a model that could not be timed."""
    tail = ""
    if os.path.isfile(paths["log"]):
        with open(paths["log"]) as fh:
            tail = "\n".join(fh.read().splitlines()[-15:])
    return {"schema": SCHEMA, "status": "failed", "model": os.path.splitext(os.path.basename(onnx_path))[0],
            "onnx": os.path.abspath(onnx_path), "error": str(exc), "log_tail": tail,
            "log": os.path.basename(paths["log"])}


def write_json(path, obj):
    """Write obj as indented JSON."""
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")


def run_all(args, version):
    """Time every model; returns the number of failures."""
    out_dir = args.out or os.path.join(args.models, "results")
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    models = sorted(f for f in os.listdir(args.models) if f.lower().endswith(".onnx"))
    if not models:
        raise RunnerError("no .onnx files in %s" % args.models)
    failed = 0
    engine_dir = tempfile.mkdtemp(prefix="fxscale-engines-")
    try:
        for name in models:
            failed += run_one(os.path.join(args.models, name), args, version, out_dir, engine_dir)
    finally:
        shutil.rmtree(engine_dir, ignore_errors=True)
    return failed


def run_one(onnx_path, args, version, out_dir, engine_dir):
    """Time one model and write its JSON; returns 1 on failure, else 0."""
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    paths = model_paths(out_dir, stem, engine_dir)
    try:
        result = measure_model(onnx_path, args, version, paths)
    except (RunnerError, ValueError) as exc:
        write_json(paths["json"], failure(onnx_path, paths, exc))
        print("%s: FAILED: %s" % (stem, str(exc).splitlines()[0]))
        return 1
    write_json(paths["json"], result)
    power = result["power"] or {}
    print("%s: %.3f ms GPU mean, power %s W" % (stem, result["latency_ms"]["gpu_compute"]["mean"],
                                                  "%.2f" % power["board_power_w"] if "board_power_w" in power else "-"))
    return 0


def main(argv=None):
    """Entry point; exit status 0 ok, 1 a model failed, 2 setup error."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        version = detect_version(args.trtexec, args.trt_version, args.timeout)
        return 1 if run_all(args, version) else 0
    except RunnerError as exc:
        sys.stderr.write("runner: %s\n" % exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
