"""Fault injection: every bad input and fault gives one clear line on stderr, exit 2 (130 after Ctrl-C), no
traceback, and leaves the output folder as it was.

CASES is the table: one line per case, `Case(id, command line, regex the one stderr line must match)`. Placeholders:
{w} the case's own work folder (it holds `taken`, a file; `existing/keep.txt`, an output folder with a file in it;
`bad.json`, `badkey.json`, `nonint.json`, `conv1.json`, plans), {f} tests/faults, {ro} and {rofile} an unwritable
folder / file path. Each case runs the CLI in its own process: `python -m fxscale` itself for the cases marked
`real`, the others in a child forked from one driver that imported fxscale once (`runpy.run_module("fxscale")`, as
`python -m fxscale` does; fork saves the 5 s import per case). The work folder is listed before and after: a case
may not add, remove or change anything in it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

FAULTS = Path(__file__).resolve().parent / "faults"
ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_CUDA = torch.cuda.is_available()
HAS_RAY = importlib.util.find_spec("ray") is not None


@dataclass(frozen=True)
class Case:
    """One fault: the command line, the regex of its one stderr line, the exit status."""

    id: str
    argv: str
    expect: str
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    real: bool = False  # run `python -m fxscale` itself instead of a forked child
    traceback: bool = False  # --traceback / FXSCALE_TRACEBACK=1: a traceback, then the one line
    skip: Optional[str] = None


C = Case
MB = r"[0-9.e+]+ (KB|MB|GB|TB)"
CASES = [
    # ---- the command itself
    C("no-command", "", r"^fxscale: error: the following arguments are required: command"),
    C("unknown-command", "frobnicate", r"argument command: invalid choice: 'frobnicate'"),
    # ---- analyze (MODEL, --input-size, --leaf: shared by every command that builds a model)
    C("analyze-unknown-model", "analyze nosuchnet", r"MODEL nosuchnet: unknown model 'nosuchnet'"),
    C("analyze-input-size-negative", "analyze digits_vgg --input-size -5", r"argument --input-size: must be >= 1, got -5"),
    C("analyze-input-size-zero", "analyze digits_vgg --input-size 0", r"argument --input-size: must be >= 1, got 0"),
    C("analyze-input-size-text", "analyze digits_vgg --input-size big", r"argument --input-size: not an integer: 'big'"),
    C("analyze-input-size-huge", "analyze digits_vgg --input-size 2000000",
      rf"--input-size 2000000: plan needs about {MB} \(parameters .* activations .*, fp32, batch 1\) but MemAvailable "
      rf"is {MB}"),
    C("analyze-leaf-no-module", "analyze digits_vgg --leaf no_such_pkg.Block",
      r"--leaf no_such_pkg.Block: cannot import module 'no_such_pkg'"),
    C("analyze-leaf-no-file", "analyze digits_vgg --leaf {w}/nothere.py:Block",
      r"--leaf \S*nothere.py:Block: model file \S*nothere.py not found"),
    C("analyze-leaf-not-a-class", "analyze digits_vgg --leaf torch.nn.functional.relu",
      r"--leaf torch.nn.functional.relu is not an nn.Module subclass"),
    C("analyze-callable-no-module", "analyze no_such_pkg:make", r"cannot import module 'no_such_pkg'"),
    C("analyze-callable-no-file", "analyze {w}/nothere.py:make", r"model file \S*nothere.py not found"),
    C("analyze-callable-broken-file", "analyze {f}/broken.py:make", r"cannot import \S*broken.py .*RuntimeError: boom"),
    C("analyze-callable-not-a-model", "analyze {f}/faultnets.py:not_a_model", r"returned int, not an nn.Module"),
    C("analyze-untraceable-without-leaf", "analyze faultnets:with_untraceable",
      r"could not trace WithUntraceable: .*leaf"),
    # ---- transform
    C("transform-out-is-a-file", "transform digits_vgg --out {w}/taken", r"--out \S*taken is a file, not a folder"),
    C("transform-out-below-a-file", "transform digits_vgg --out {w}/taken/sub",
      r"--out \S*taken/sub: \S*taken is a file, so the folder cannot be created there"),
    C("transform-out-unwritable", "transform digits_vgg --out {ro}",
      r"--out \S+: cannot write in \S+ \((Permission denied|Operation not permitted|Read-only file system)\)"),
    C("transform-missing-out", "transform digits_vgg", r"the following arguments are required: --out"),
    C("transform-widen-negative", "transform digits_vgg --widen -1 --out {w}/o", r"argument --widen: must be > 0, got -1",
      real=True),
    C("transform-widen-zero", "transform digits_vgg --widen 0 --out {w}/o", r"argument --widen: must be > 0, got 0"),
    C("transform-widen-minus-3", "transform digits_vgg --widen -3 --out {w}/o", r"argument --widen: must be > 0, got -3"),
    C("transform-widen-nan", "transform digits_vgg --widen nan --out {w}/o", r"argument --widen: must be a finite number"),
    C("transform-plan-and-widen", "transform digits_vgg --plan {w}/badkey.json --widen 3 --out {w}/o",
      r"argument --widen: not allowed with argument --plan"),
    C("transform-plan-missing", "transform digits_vgg --plan {w}/nothere.json --out {w}/o",
      r"--plan \S*nothere.json: no such file"),
    C("transform-plan-not-json", "transform digits_vgg --plan {w}/bad.json --out {w}/o",
      r"plan file \S*bad.json: plan is not valid JSON"),
    C("transform-plan-width-not-int", "transform digits_vgg --plan {w}/nonint.json --out {w}/o",
      r"plan file \S*nonint.json: plan width for group 'features.0' must be an int, got 'wide'"),
    C("transform-plan-unknown-key", "transform digits_vgg --plan {w}/badkey.json --out {w}/o",
      r"plan key 'no.such.layer' names no channel group"),
    C("transform-opset-99", "transform digits_vgg --opset 99 --out {w}/o",
      r"--opset 99 is outside the supported ONNX opsets \d+\.\.\d+"),
    C("transform-opset-text", "transform digits_vgg --opset x --out {w}/o", r"argument --opset: invalid int value: 'x'"),
    C("transform-resolution-zero", "transform digits_vgg --resolution 0 --out {w}/o",
      r"argument --resolution: must be >= 1, got 0"),
    C("transform-resolution-three-values", "transform digits_vgg --resolution 8 8 8 --out {w}/o",
      r"--resolution takes H or H W \(pixels\), got 3 values"),
    C("transform-init-unknown", "transform digits_vgg --init magic --out {w}/o", r"argument --init: invalid choice: 'magic'"),
    C("transform-resolution-mode-unknown", "transform digits_vgg --resolution-mode sideways --out {w}/o",
      r"argument --resolution-mode: invalid choice: 'sideways'"),
    C("transform-max-memory-text", "transform digits_vgg --max-memory lots --out {w}/o",
      r"--max-memory 'lots' is not a memory size; give bytes or a size such as 64GB"),
    C("transform-max-memory-tiny", "transform digits_vgg --widen 2 --max-memory 1KB --out {w}/o",
      rf"plan needs about {MB} \(parameters {MB} \+ activations {MB}, fp32, batch 1\) but the memory limit is 1.0 KB"),
    C("transform-widen-1e9", "transform digits_vgg --widen 1e9 --out {w}/o",
      rf"plan needs about {MB} \(parameters .* fp32, batch 1\) but MemAvailable is {MB}; .*--max-memory"),
    C("transform-resnet18-conv1-2e8", "transform resnet18 --plan {w}/conv1.json --out {w}/o",
      rf"plan needs about {MB} .* but MemAvailable is {MB}"),
    C("transform-no-scalable-group", "transform {f}/faultnets.py:fixed --widen 2 --out {w}/o",
      r"--widen 2: model \S*fixed has no scalable channel group, so no width can change"),
    C("transform-onnx-fails-new-out", "transform {f}/faultnets.py:no_onnx --input-size 8 --out {w}/o",
      r"ONNX export of GraphModule to \S*/o/model.onnx failed: .*fft_rfft2"),
    C("transform-onnx-fails-existing-out", "transform {f}/faultnets.py:no_onnx --input-size 8 --out {w}/existing",
      r"ONNX export of GraphModule to \S*/existing/model.onnx failed: .*fft_rfft2"),
    # ---- cost
    C("cost-widen-zero", "cost digits_vgg --widen 0", r"argument --widen: must be > 0, got 0"),
    C("cost-plan-and-widen", "cost digits_vgg --plan {w}/badkey.json --widen 2", r"not allowed with argument --plan"),
    C("cost-plan-missing", "cost digits_vgg --plan {w}/nothere.json", r"--plan \S*nothere.json: no such file"),
    C("cost-absurd-size-warns", "cost digits_vgg --widen 1e6",
      rf"^fxscale: warning: this plan's model needs about {MB} .* but MemAvailable is {MB}: transform and measure "
      r"would refuse it", code=0),
    # ---- measure
    C("measure-out-is-a-folder", "measure digits_vgg --out {w}/existing", r"--out \S*existing is a folder; give a file"),
    C("measure-out-unwritable", "measure digits_vgg --out {rofile}", r"--out \S+: cannot write in \S+"),
    C("measure-runs-zero", "measure digits_vgg --runs 0", r"argument --runs: must be >= 1, got 0"),
    C("measure-warmup-negative", "measure digits_vgg --warmup -1", r"argument --warmup: must be >= 0, got -1"),
    C("measure-batch-zero", "measure digits_vgg --batch 0", r"argument --batch: must be >= 1, got 0"),
    C("measure-threads-zero", "measure digits_vgg --threads 0", r"argument --threads: must be >= 1, got 0"),
    C("measure-statistic-unknown", "measure digits_vgg --statistic max", r"argument --statistic: invalid choice"),
    C("measure-target-unknown", "measure digits_vgg --target nope --out {w}/m.json",
      r"--target: unknown target 'nope'; valid targets: hybrid, ort, torch, trtexec"),
    C("measure-device-cuda-without-gpu", "measure digits_vgg --target torch --device cuda",
      r"--device cuda: torch sees no CUDA device on this machine; use --device cpu", skip="CUDA" if HAS_CUDA else None),
    C("measure-device-garbage", "measure digits_vgg --target torch --device gpu0", r"--device 'gpu0' is not a device"),
    C("measure-device-with-ort", "measure digits_vgg --device cuda:0", r"--device applies to the torch target only"),
    C("measure-trtexec-missing", "measure digits_vgg --target trtexec --trtexec /nonexistent/trtexec",
      r"--trtexec '/nonexistent/trtexec': trtexec binary not found on this machine; give its full path"),
    C("measure-widen-1e9", "measure digits_vgg --widen 1e9 --out {w}/m.json", rf"plan needs about {MB}"),
    # ---- profile and jetson-bundle
    C("profile-out-is-a-folder", "profile --models digits_vgg --out {w}/existing", r"--out \S*existing is a folder"),
    C("profile-target-unknown", "profile --target nope --models digits_vgg --out {w}/p.json", r"unknown target 'nope'"),
    C("profile-no-models", "profile --models , --out {w}/p.json", r"--models needs at least one model name"),
    C("profile-threads-zero", "profile --models digits_vgg --threads 0 --out {w}/p.json",
      r"argument --threads: must be >= 1, got 0"),
    C("profile-missing-out", "profile --models digits_vgg", r"the following arguments are required: --out"),
    C("jetson-out-is-a-file", "jetson-bundle {w}/taken", r"OUT \S*taken is a file, not a folder"),
    C("jetson-out-unwritable", "jetson-bundle {ro}", r"OUT \S+: cannot write in \S+"),
    # ---- scale: every option is checked before data, model or timing
    C("scale-data-kw-not-json", "scale --data-kw '{bad' --out {w}/o",
      r"argument --data-kw: not valid JSON \(Expecting property name .*\): '\{bad'", real=True),
    C("scale-data-kw-not-object", "scale --data-kw '[1, 2]' --out {w}/o", r"argument --data-kw: must be a JSON object"),
    C("scale-data-kw-unknown-key", "scale --data-kw '{\"nope\": 1}' --out {w}/o", r"dataset 'digits': bad arguments \['nope'\]"),
    C("scale-data-unknown", "scale --data nope --out {w}/o", r"--data: unknown dataset 'nope'; valid datasets: "),
    C("scale-out-is-a-file", "scale --out {w}/taken", r"--out \S*taken is a file, not a folder"),
    C("scale-out-unwritable", "scale --out {ro}", r"--out \S+: cannot write in \S+"),
    C("scale-latency-budget-below-1x", "scale --latency-budget 0.5x --out {w}/o",
      r"--latency-budget 0.5x is below the baseline's own latency \(1x\).* ratio >= 1x"),
    C("scale-latency-budget-word", "scale --latency-budget fast --out {w}/o",
      r"--latency-budget 'fast' is not a budget; give a ratio of the baseline such as 1.05x, an absolute latency in ms"),
    C("scale-latency-budget-negative", "scale --latency-budget -1 --out {w}/o", r"--latency-budget -1 must be > 0 .*in ms"),
    C("scale-latency-budget-negative-ratio", "scale --latency-budget=-2x --out {w}/o", r"--latency-budget -2x must be > 0"),
    C("scale-memory-budget-below-1x", "scale --memory-budget 0.5x --out {w}/o",
      r"--memory-budget 0.5x is below the baseline's own memory \(1x\)"),
    C("scale-memory-budget-word", "scale --memory-budget lots --out {w}/o", r"--memory-budget 'lots' is not a budget; .*params"),
    C("scale-device-cuda-without-gpu", "scale --device cuda --out {w}/o", r"--device cuda: torch sees no CUDA device",
      skip="CUDA" if HAS_CUDA else None),
    C("scale-device-unknown", "scale --device gpu --out {w}/o",
      r"--device 'gpu' is not a training device; use one of cpu, cuda, auto"),
    C("scale-executor-ray-not-installed", "scale --executor ray --out {w}/o",
      r"--executor ray needs the optional package ray, which is not installed: pip install 'fxscale\[ray\]'",
      skip="ray is installed" if HAS_RAY else None),
    C("scale-ray-address-unreachable", "scale --executor ray --ray-address 127.0.0.1:9 --out {w}/o",
      r"127.0.0.1:9", skip=None if HAS_RAY else "ray is not installed"),
    C("scale-variants-unknown", "scale --variants bogus --out {w}/o",
      r"--variants: unknown variants \['bogus'\]; choose from align8, cost"),
    C("scale-flops-tol-zero", "scale --flops-tol 0 --out {w}/o", r"--flops-tol must lie in \(0, 1\), got 0.0"),
    C("scale-ci-halfwidth-zero", "scale --ci-halfwidth 0 --out {w}/o", r"--ci-halfwidth must lie in \(0, 1\), got 0.0"),
    C("scale-max-rounds-low", "scale --max-rounds 0 --out {w}/o", r"--max-rounds must be >= 6, got 0"),
    C("scale-baseline-align-zero", "scale --baseline-align 0 --out {w}/o", r"--baseline-align must be >= 1, got 0"),
    C("scale-sample-mode-unknown", "scale --sample-mode wide --out {w}/o",
      r"argument --sample-mode: invalid choice: 'wide'"),
    C("scale-sample-seeds-zero", "scale --sample-seeds 0 --out {w}/o", r"--sample-seeds must be >= 1, got 0"),
    C("scale-importance-holdout-negative", "scale --importance-holdout -1 --out {w}/o",
      r"--importance-holdout must be >= 0, got -1"),
    C("scale-hybrid-without-plan", "scale --target hybrid --out {w}/o",
      r"--inference-plan and --target hybrid go together"),
    C("scale-inference-plan-missing", "scale --target hybrid --inference-plan {w}/nothere.json --out {w}/o",
      r"cannot read inference plan \S*nothere.json: No such file or directory"),
    C("scale-executor-unknown", "scale --executor dask --out {w}/o", r"--executor 'dask' is not an executor"),
    C("scale-workers-zero", "scale --workers 0 --out {w}/o", r"--workers must be >= 1 \(parallel training processes\), got 0"),
    C("scale-workers-text", "scale --workers many --out {w}/o", r"argument --workers: not an integer: 'many'"),
    C("scale-threads-zero", "scale --threads 0 --out {w}/o", r"--threads must be >= 1, got 0"),
    C("scale-runs-zero", "scale --runs 0 --out {w}/o", r"--runs must be >= 1, got 0 \(timed runs\)"),
    C("scale-warmup-negative", "scale --warmup -1 --out {w}/o", r"--warmup must be >= 0, got -1"),
    C("scale-seeds-zero", "scale --seeds 0 --out {w}/o", r"--seeds must be >= 1"),
    C("scale-samples-one", "scale --samples 1 --out {w}/o", r"--samples must be >= 2, got 1 \(to fit a power law\)"),
    C("scale-epochs-zero", "scale --epochs 0 --out {w}/o", r"--epochs must be >= 1, got 0"),
    C("scale-batch-size-zero", "scale --batch-size 0 --out {w}/o", r"--batch-size must be >= 1, got 0 \(images\)"),
    C("scale-stride-zero", "scale --stride 0 --out {w}/o", r"--stride must be >= 1, got 0"),
    C("scale-align-zero", "scale --align 0 --out {w}/o", r"--align must be >= 1, got 0 \(channels\)"),
    C("scale-alpha-above-1", "scale --alpha 1.5 --out {w}/o", r"--alpha: alpha must lie in \(0, 1\), got 1.5"),
    C("scale-alphas-text", "scale --alphas 0.5,x --out {w}/o", r"argument --alphas: not a number: 'x'"),
    C("scale-alphas-zero", "scale --alphas 0,0.5 --out {w}/o", r"--alphas: alpha must lie in \(0, 1\), got 0.0"),
    C("scale-flops-scale-zero", "scale --flops-scale 0 --out {w}/o", r"--flops-scale must be > 0, got 0.0"),
    C("scale-lr-zero", "scale --lr 0 --out {w}/o", r"--lr must be > 0, got 0.0"),
    C("scale-methods-unknown", "scale --methods magic --out {w}/o", r"--methods: unknown methods \['magic'\]"),
    C("scale-rule-unknown", "scale --rule x --out {w}/o", r"argument --rule: invalid choice: 'x'"),
    C("scale-target-unknown", "scale --target nope --out {w}/o", r"--target: unknown target 'nope'"),
    C("scale-trtexec-missing", "scale --target trtexec --out {w}/o",
      r"--trtexec 'trtexec': trtexec binary not found on this machine; give its full path, e\.g\. --trtexec "),
    C("scale-profile-missing", "scale --profile {w}/nothere.json --out {w}/o", r"--profile \S*nothere.json: no such file"),
    C("scale-max-memory-text", "scale --max-memory lots --out {w}/o", r"--max-memory 'lots' is not a memory size"),
    C("scale-leaf-no-module", "scale --leaf no_such_pkg.Block --out {w}/o", r"--leaf no_such_pkg.Block: cannot import"),
    C("scale-model-unknown", "scale nosuchnet --out {w}/o", r"MODEL nosuchnet: unknown model 'nosuchnet'"),
    C("scale-model-file-missing", "scale {w}/nothere.py:make --out {w}/o", r"model file \S*nothere.py not found"),
    # ---- scale: faults found while building the model (before any timing; no stages/ is left)
    C("scale-channels-mismatch", "scale {f}/faultnets.py:one_channel --data synthetic --out {w}/o",
      r"model \S*one_channel takes 1 channel, data synthetic has 3 channels"),
    C("scale-classes-mismatch", "scale {f}/faultnets.py:seven_classes --out {w}/o",
      r"model \S*seven_classes outputs 7 classes, data digits has 10"),
    C("scale-no-scalable-group", "scale {f}/faultnets.py:fixed --out {w}/o", r"has no scalable channel group; nothing to scale"),
    C("scale-max-memory-tiny", "scale --max-memory 1KB --out {w}/o", r"plan needs about .* but the memory limit is 1.0 KB"),
    # ---- the debug switches: the traceback, then the same one line
    C("traceback-flag", "transform digits_vgg --widen 1e9 --out {w}/o --traceback", r"plan needs about", traceback=True),
    C("traceback-env", "analyze nosuchnet", r"MODEL nosuchnet: unknown model", env={"FXSCALE_TRACEBACK": "1"},
      traceback=True, real=True),
]
SETUP = {"taken": "not a folder", "existing/keep.txt": "keep me", "bad.json": "{not json",
         "badkey.json": '{"widths": {"no.such.layer": 8}}', "nonint.json": '{"widths": {"features.0": "wide"}}',
         "conv1.json": '{"widths": {"conv1": 200000000}}'}


def test_every_case_id_is_unique():
    assert len({c.id for c in CASES}) == len(CASES)


# ---- running the table -------------------------------------------------------------------------------------
DRIVER = r'''
import json, os, runpy, sys, time, traceback
sys.path.insert(0, sys.argv[1])
import fxscale.cli, fxscale.cli_measure, fxscale.scaling.cli, fxscale.scaling.pipeline, fxscale.data  # noqa
import fxscale.hw.targets, fxscale.export, fxscale.artifacts, fxscale.modelspec, fxscale.guard  # noqa
import rich.console, rich.table, onnx, onnxruntime, sklearn.datasets, sklearn.model_selection  # noqa
cases, results, running = json.load(sys.stdin), {}, {}
def child(c):
    code = 1
    try:
        os.chdir(c["cwd"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(os.path.join(c["logs"], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.environ.update(c["env"])
        sys.argv = ["fxscale", *c["argv"]]
        try:
            runpy.run_module("fxscale", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except Exception:
                pass
        os._exit(code)
def reap():
    for pid, (c, t0) in list(running.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            running.pop(pid)
            results[c["id"]] = {"code": os.waitstatus_to_exitcode(status), "seconds": round(time.time() - t0, 2)}
        elif time.time() - t0 > c["timeout"]:
            os.kill(pid, 9)
for c in cases:
    while len(running) >= int(os.environ.get("FAULT_JOBS", "2")):
        reap()
        time.sleep(0.02)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(c)
    running[pid] = (c, time.time())
while running:
    reap()
    time.sleep(0.02)
print(json.dumps(results))
'''


def _ro_paths(work: Path) -> dict[str, str]:
    if IS_ROOT:  # root writes through any mode bits; /sys refuses new entries even to root
        return {"ro": "/sys/fxscale-fault-test/out", "rofile": "/sys/fxscale-fault-test.json"}
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return {"ro": str(ro / "out"), "rofile": str(ro / "m.json")}


def _argv(case: Case, values: dict[str, str]) -> list[str]:
    return shlex.split(re.sub(r"\{(w|f|ro|rofile)\}", lambda m: values[m.group(1)], case.argv))


def snapshot(folder: Path) -> dict[str, Any]:
    """Every entry under `folder`: files with size and mtime, folders by name (their mtime moves with any probe)."""
    out: dict[str, Any] = {}
    for p in sorted(folder.rglob("*")):
        if p.name == "logs" and p.parent == folder:
            continue
        rel = p.relative_to(folder).as_posix()
        if rel.startswith("logs/"):
            continue
        st = p.lstat()
        out[rel] = "dir" if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FXSCALE_TRACEBACK"}
    env["PYTHONPATH"] = os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Run every case once: {id: {code, out, err, before, after, argv}}."""
    base = tmp_path_factory.mktemp("faults")
    prepared: dict[str, dict[str, Any]] = {}
    for case in CASES:
        if case.skip:
            continue
        work = base / case.id
        for rel, text in SETUP.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        (work / "logs").mkdir()
        values = {"w": str(work), "f": str(FAULTS), **_ro_paths(work)}
        prepared[case.id] = {"case": case, "work": work, "argv": _argv(case, values), "before": snapshot(work)}
    forked = [{"id": i, "argv": p["argv"], "cwd": str(p["work"]), "logs": str(p["work"] / "logs"),
               "env": p["case"].env, "timeout": 180} for i, p in prepared.items() if not p["case"].real]

    def run_driver() -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-c", DRIVER, str(FAULTS)], input=json.dumps(forked), text=True,
                              capture_output=True, env=_env({}), timeout=900, cwd=str(base))
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def run_real(i: str) -> dict[str, Any]:
        p = prepared[i]
        done = subprocess.run([sys.executable, "-m", "fxscale", *p["argv"]], text=True, capture_output=True,
                              env=_env(p["case"].env), timeout=300, cwd=str(p["work"]))
        (p["work"] / "logs" / "stdout").write_text(done.stdout)
        (p["work"] / "logs" / "stderr").write_text(done.stderr)
        return {"code": done.returncode}

    with ThreadPoolExecutor(3) as pool:
        driver = pool.submit(run_driver)
        reals = {i: pool.submit(run_real, i) for i, p in prepared.items() if p["case"].real}
        codes = {**driver.result(), **{i: f.result() for i, f in reals.items()}}
    for i, p in prepared.items():
        logs = p["work"] / "logs"
        p.update(code=codes[i]["code"], out=(logs / "stdout").read_text(), err=(logs / "stderr").read_text(),
                 after=snapshot(p["work"]))
        if not IS_ROOT and (p["work"] / "ro").exists():
            (p["work"] / "ro").chmod(0o755)
    return prepared


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=pytest.mark.skipif(
    bool(c.skip), reason=f"needs a machine without {c.skip}")) for c in CASES])
def test_fault(case: Case, table_runs):
    r = table_runs[case.id]
    where = f"{shlex.join(['fxscale', *r['argv']])}\nstdout: {r['out'][-500:]}\nstderr: {r['err'][-3000:]}"
    assert r["code"] == case.code, where
    lines = [line for line in r["err"].splitlines() if line.strip()]
    if case.traceback:
        assert "Traceback (most recent call last)" in r["err"], where
        assert re.search(case.expect, lines[-1]) and lines[-1].startswith("fxscale"), where
    else:
        assert "Traceback" not in r["err"], where
        assert len(lines) == 1, where
        assert lines[0].startswith("fxscale") and re.search(case.expect, lines[0]), where
    if case.code != 0:
        assert r["out"] == "", where
    assert r["after"] == r["before"], f"the work folder changed\n{where}"
