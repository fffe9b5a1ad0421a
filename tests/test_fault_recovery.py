"""Faults that need more than one command line (tests/test_faults.py holds the table): Ctrl-C and resume, outputs
that land whole or not at all, torn stage files and weights, the memory guard of the Python API, models that carry
and check their input contract, the stem adaptation, and the CLI's conventions (help, stderr, --quiet, umask)."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import onnx
import pytest
import torch

import fxscale
from fxscale import artifacts, cli
from fxscale.errors import FxscaleError, PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling.stages import stage_cached, weights_problem

FAULTS = Path(__file__).resolve().parent / "faults"
INTERRUPTED = "fxscale: interrupted; rerun the same command to resume"


# ---- Ctrl-C ---------------------------------------------------------------------------------------------
def _interrupt_when(argv: list[str], pattern: str, cwd: Path) -> tuple[int, list[str], str]:
    """Run `python -m fxscale ARGV`, send SIGINT once a stderr line matches `pattern`; (status, stderr lines, stdout)."""
    env = {k: v for k, v in os.environ.items() if k != "FXSCALE_TRACEBACK"}
    # a shell that starts jobs in the background ignores SIGINT, and Python keeps an inherited SIG_IGN: the child
    # gets the default disposition back, as it has in a terminal
    proc = subprocess.Popen([sys.executable, "-m", "fxscale", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(cwd), env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    killer = threading.Timer(240, proc.kill)
    killer.start()
    lines: list[str] = []
    try:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if re.search(pattern, line):
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stderr.read().splitlines()
        out = proc.stdout.read()
        proc.wait(timeout=120)
    finally:
        killer.cancel()
    return proc.returncode, lines, out


def _stray(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "o"
    (out / "stages").mkdir(parents=True)
    torn = out / "stages" / "latency_model.json"
    torn.write_text('{"key": "0123", "val')  # a stage file cut off mid-write (already handled: named, recomputed)
    argv = ["scale", "--runs", "4", "--warmup", "1", "--samples", "3", "--sample-epochs", "1", "--search-epochs", "1",
            "--epochs", "1", "--data-kw", '{"train_fraction": 0.3}', "--out", str(out)]
    code, err, stdout = _interrupt_when(argv, r"^\[latency_model\] analytic", tmp_path)
    assert code == 130 and err[-1] == INTERRUPTED, err
    assert not any("Traceback" in line for line in err) and stdout == ""
    assert any(f"discarding the corrupt stage file {torn}" in line for line in err), err
    assert json.loads(torn.read_text())["value"]["points"] and not _stray(out)
    code, err, _ = _interrupt_when(argv, r"^\[latency_model\] resumed from", tmp_path)  # the same command resumes
    assert code == 130 and err[-1] == INTERRUPTED and not _stray(out), err


# ---- outputs whole or absent ------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", [FxscaleError("boom"), KeyboardInterrupt()])
def test_staged_output_into_a_new_folder_leaves_nothing_on_a_fault(tmp_path, fault):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(type(fault)):
        with artifacts.staged_output(out) as tmp:
            (tmp / "plan.json").write_text("{}")
            raise fault
    assert list(tmp_path.iterdir()) == []


def test_staged_output_replaces_files_together_and_keeps_the_rest(tmp_path):
    out = tmp_path / "out"
    (out / "stages").mkdir(parents=True)
    (out / "plan.json").write_text("old")
    with pytest.raises(FxscaleError):
        with artifacts.staged_output(out) as tmp:
            (tmp / "plan.json").write_text("new")
            raise FxscaleError("late failure")
    assert (out / "plan.json").read_text() == "old" and sorted(p.name for p in out.iterdir()) == ["plan.json", "stages"]
    with artifacts.staged_output(out) as tmp:
        (tmp / "plan.json").write_text("new")
        (tmp / "model.onnx").write_text("onnx")
    assert (out / "plan.json").read_text() == "new" and sorted(p.name for p in out.iterdir()) == \
        ["model.onnx", "plan.json", "stages"]


def test_staged_output_rolls_back_when_a_move_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old a")
    (out / "b.txt").write_text("old b")
    real, failed = os.replace, []

    def flaky(src, dst):  # the disk fills up as the second new file moves in
        if Path(dst) == out / "b.txt" and Path(src).parent.name.startswith(".partial") and not failed:
            failed.append(src)
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", flaky)
    with pytest.raises(OSError):
        with artifacts.staged_output(out) as tmp:
            (tmp / "a.txt").write_text("new a")
            (tmp / "b.txt").write_text("new b")
    assert failed and {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "old a", "b.txt": "old b"}


def test_a_failed_report_stage_leaves_no_partial_folder(tmp_path):
    from fxscale.scaling.pipeline import ScaleConfig
    from fxscale.scaling.report import write_outputs

    class Pipe:  # the report stage's view of a pipeline whose model build fails
        cfg, out, stages = ScaleConfig(), tmp_path / "o", tmp_path / "o" / "stages"

        def build(self, plan: ScalingPlan) -> torch.nn.Module:
            raise FxscaleError("cannot build the plan's model")

    Pipe.stages.mkdir(parents=True)
    (Pipe.out / "results.json").write_text("previous run")
    with pytest.raises(FxscaleError, match="cannot build"):
        write_outputs(Pipe(), {}, ScalingPlan())
    assert sorted(p.name for p in Pipe.out.iterdir()) == ["results.json", "stages"]
    assert (Pipe.out / "results.json").read_text() == "previous run"


# ---- torn stage files and weights (fixed in fxscale/scaling/stages.py; kept in the suite) ---------------------
def test_a_truncated_stage_file_is_named_and_recomputed(tmp_path):
    (tmp_path / "alpha.json").write_text('{"key": "k", "value": {"alp')
    logs: list[str] = []
    assert stage_cached(tmp_path, "alpha", "k", lambda: {"alpha": 0.5}, logs.append) == {"alpha": 0.5}
    assert "discarding the corrupt stage file" in logs[0] and str(tmp_path / "alpha.json") in logs[0]
    assert json.loads((tmp_path / "alpha.json").read_text())["value"] == {"alpha": 0.5}


def test_truncated_weights_are_named_and_retrained(tmp_path):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    torch.save({"w": torch.ones(3)}, wdir / "m_s0.pt")
    (wdir / "m_s0.pt").write_bytes((wdir / "m_s0.pt").read_bytes()[:40])
    (tmp_path / "train.json").write_text(json.dumps({"key": "k", "value": {"m": {}}}))
    logs: list[str] = []
    value = stage_cached(tmp_path, "train", "k", lambda: {"m": {"retrained": True}}, logs.append,
                         valid=lambda res: weights_problem(wdir, res, (0,)))
    assert value == {"m": {"retrained": True}} and "m_s0.pt are unreadable" in logs[0]


# ---- the memory guard of the Python API ---------------------------------------------------------------------
def test_api_transform_refuses_a_plan_above_memory(traced_zoo):
    gm, cg, _x = traced_zoo("digits_vgg", 8)
    huge = ScalingPlan(widths={g.name: g.width * 10**9 for g in cg.scalable})
    with pytest.raises(PlanError, match=r"plan needs about .* TB .* but MemAvailable is .*; .*max_memory="):
        fxscale.transform(gm, huge)
    small = ScalingPlan(widths={g.name: 2 * g.width for g in cg.scalable})
    with pytest.raises(PlanError, match=r"but the memory limit is 1.0 KB"):
        fxscale.transform(gm, small, max_memory="1KB")
    assert fxscale.transform(gm, small, max_memory=math.inf) is not None


# ---- artefacts carry and check their input contract ---------------------------------------------------------
def test_transform_outputs_record_and_check_the_input(tmp_path, capsys):
    import onnxruntime as ort
    out = tmp_path / "o"
    assert cli.main(["transform", "digits_vgg", "--resolution", "9", "--resolution-mode", "input", "--out",
                     str(out)]) == 0
    contract = json.loads((out / "plan.json").read_text())["meta"]["input"]
    assert contract["shape"] == [1, 9, 9] and contract["dtype"] == "float32" and contract["num_classes"] == 10
    assert contract["batch"] == "any" and json.loads((out / "report.json").read_text())["dynamic_batch"]
    pickled = torch.load(out / "model.pt", weights_only=False)  # the user's choice: it runs code from the file
    assert pickled(torch.randn(2, 1, 9, 9)).shape == (2, 10)
    with pytest.raises(FxscaleError, match=r"takes N x 1 x 9 x 9 float32 \(size 8x8 instead of 9x9\)"):
        pickled(torch.randn(2, 1, 8, 8))  # the natural 8x8 digits no longer run silently
    model = fxscale.load(out)
    assert model(torch.randn(5, 1, 9, 9)).shape == (5, 10) and model.contract == contract
    with pytest.raises(FxscaleError, match=r"3 channels instead of 1"):
        model(torch.randn(1, 3, 9, 9))
    with pytest.raises(FxscaleError, match="pickled model"):
        fxscale.load(out / "model.pt")
    proto = onnx.load(str(out / "model.onnx"))
    assert json.loads({p.key: p.value for p in proto.metadata_props}["fxscale.input"]) == contract
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": torch.randn(4, 1, 9, 9).numpy()})[0].shape == (4, 10)  # dynamic batch
    mask = artifacts.umask()
    assert (out.stat().st_mode & 0o777) == 0o777 & ~mask
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~mask for p in out.iterdir())
    static = tmp_path / "s"
    assert cli.main(["transform", "digits_vgg", "--static-batch", "--out", str(static)]) == 0
    dim = onnx.load(str(static / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1 and fxscale.load(static).contract["batch"] == 1


def test_every_torch_load_states_weights_only():
    root = Path(fxscale.__file__).parent
    for path in root.rglob("*.py"):
        for call in re.findall(r"torch\.load\((.*)", path.read_text()):
            assert "weights_only=" in call, f"{path}: torch.load({call}"


# ---- fitting a zoo model to the data ---------------------------------------------------------------------------
def test_a_torchvision_model_gets_a_stem_for_the_data_channels(tmp_path):
    from fxscale.scaling.pipeline import Pipeline, ScaleConfig
    logs: list[str] = []
    pipe = Pipeline(ScaleConfig(model="resnet18", data="digits", data_kw={"train_fraction": 0.3}), tmp_path / "o",
                    log=logs.append)
    assert any("[input] resnet18 takes 3 channels, data digits has 1 channel: replaced the stem conv conv1" in m
               for m in logs), logs
    assert pipe.gm.meta["fxscale"]["input_shapes"][0][1] == 1 and pipe.gm(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert not (tmp_path / "o").exists()


# ---- CLI conventions ---------------------------------------------------------------------------------------------
def test_every_option_has_help_and_states_its_default():
    from fxscale.cli_checks import HelpFormatter
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subs.items():
        for action in sub._actions:
            if not action.option_strings or action.dest in ("help", "traceback", "quiet"):
                continue
            assert action.help, f"fxscale {name} {action.option_strings[0]} has no help"
            text = HelpFormatter("fxscale")._get_help_string(action)
            assert action.required or "default" in text, f"fxscale {name} {action.option_strings[0]}: no default"


def test_warnings_go_to_stderr_results_to_stdout_and_quiet_drops_them(tmp_path, capsys):
    assert cli.main(["transform", "digits_vgg", "--widen", "1.001", "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "params 35,674 -> 35,674, 0 groups changed" in captured.out
    assert "fxscale: warning: --widen 1.001 changes no group width" in captured.err
    assert cli.main(["transform", "digits_vgg", "--widen", "1.001", "--quiet", "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "0 groups changed" in captured.out


def test_leaf_option_makes_an_untraceable_block_opaque(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(FAULTS))
    assert cli.main(["analyze", "faultnets:with_untraceable", "--leaf", "faultnets.Untraceable", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    net = f"{FAULTS / 'faultnets.py'}"  # a file MODEL and a class of the same file
    assert cli.main(["analyze", f"{net}:with_untraceable", "--leaf", f"{net}:Untraceable", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("error,code,line", [
    (RuntimeError("kaboom"), 1, r"^fxscale: error: unexpected RuntimeError: kaboom \(a bug\? rerun with --traceback"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"), 2,
     r"^fxscale: error: out of memory \(RuntimeError: .*\); use a smaller plan"),
    (PermissionError(13, "Permission denied", "/x/plan.json"), 2, r"^fxscale: error: /x/plan.json: Permission denied$"),
])
def test_other_faults_are_one_line(monkeypatch, capsys, error, code, line):
    def boom(_args):
        raise error

    monkeypatch.setattr(cli, "cmd_analyze", boom)
    assert cli.main(["analyze", "digits_vgg"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(line, err), err


def test_profile_file_gets_the_users_umask(tmp_path):
    import os
    import stat

    from fxscale.hw.devprofile import DeviceProfile
    old = os.umask(0o022)
    try:
        prof = DeviceProfile(target={"target": "synthetic"}, kinds={})
        path = prof.save(tmp_path / "p.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
