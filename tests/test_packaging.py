"""What an installed fxscale needs: one version, `python -m fxscale`, the Jetson bundle from the package, extras
whose absence is one clear error, and no run-time file outside the package. (The wheel itself is built, installed in a
fresh venv and run from outside the checkout by .ci/wheel, not here.)"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import fxscale
from fxscale import cli
from fxscale.errors import FxscaleError
from fxscale.hw import jetson

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(fxscale.__file__).resolve().parent


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT.parent)


# ------------------------------------------------------------------------------------------------ version
def test_one_version_source():
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fxscale._version.__version__"}
    from fxscale import _version
    assert fxscale.__version__ == _version.__version__ == importlib.metadata.version("fxscale")


def test_version_flag_of_the_script_and_python_m_agree():
    script = Path(sysconfig.get_path("scripts")) / "fxscale"
    assert script.is_file(), f"the fxscale console script is not installed next to {sys.executable}"
    want = f"fxscale {importlib.metadata.version('fxscale')}\n"
    for argv in ([str(script), "--version"], [sys.executable, "-m", "fxscale", "--version"]):
        done = _run(*argv)
        assert (done.returncode, done.stdout) == (0, want), (argv, done.stderr)


def test_python_m_fxscale_is_the_cli(capsys):
    spec = importlib.util.find_spec("fxscale.__main__")
    assert spec is not None and Path(spec.origin).parent == PACKAGE
    assert "from fxscale.cli import main" in Path(spec.origin).read_text()
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"fxscale {fxscale.__version__}\n"


# ------------------------------------------------------------------------------------------ jetson-bundle
def test_jetson_bundle_command_writes_the_package_files(tmp_path, capsys):
    out = tmp_path / "board" / "bundle"
    assert cli.main(["jetson-bundle", str(out)]) == 0
    names = ["trtparse.py", "tegrastats.py", "runner.py"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert (out / name).read_bytes() == (PACKAGE / "hw" / name).read_bytes(), name
    assert f"python3 {out / 'runner.py'} ONNX_DIR --out RESULTS" in capsys.readouterr().out
    assert cli.main(["jetson-bundle", str(out)]) == 0  # writing it again overwrites in place


def test_jetson_bundle_onto_a_file_is_one_line_exit_2(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert cli.main(["jetson-bundle", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("fxscale: error: ")
    assert str(target) in captured.err and "not a folder" in captured.err
    assert target.read_text() == "not a folder"


def test_bundle_files_live_in_the_package():
    assert [p.name for p in jetson.FILES] == ["trtparse.py", "tegrastats.py", "runner.py"]
    for path in jetson.FILES:
        assert path.is_file() and path.parent == PACKAGE / "hw", path


# ---------------------------------------------------------------------------------- run-time package data
def test_package_data_patterns_match_files():
    """Every package-data pattern names real files (a dead pattern hides a file the wheel would lack)."""
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]
    assert set(patterns) == {"fxscale"}
    for pattern in patterns["fxscale"]:
        assert list(PACKAGE.glob(pattern)), f"package-data pattern {pattern!r} matches nothing under {PACKAGE}"
    assert (PACKAGE / "py.typed").is_file()


def test_no_run_time_path_outside_the_package():
    """No module reaches into the source checkout (benchmarks/, tests/) or reads a data file next to its code
    except the Jetson bundle's own modules; a new one must become package data and be listed here."""
    readers = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(PACKAGE).as_posix()
        for outside in ("benchmarks/", "tests/", '"benchmarks"', '"tests"', "parents[1]", "parents[2]"):
            assert outside not in text, f"fxscale/{rel} refers to {outside} outside the package"
        if "__file__" in text or "importlib.resources" in text:
            readers.add(rel)
    # hw/jetson.py copies the board-side modules; executor.py ships the installed package folder itself to Ray
    # workers (runtime_env py_modules), not a data file
    assert readers == {"hw/jetson.py", "executor.py"}


# ------------------------------------------------------------------------------------------------- extras
def _ray_message(capsys) -> str:
    from fxscale.executor import get_executor
    with pytest.raises(FxscaleError) as exc:
        get_executor("ray")
    return str(exc.value)


def _timm_message(capsys) -> str:
    from fxscale import zoo
    with pytest.raises(FxscaleError) as exc:  # the CLI prints it as one line, exit 2
        zoo.create_model("timm:resnet18")
    return str(exc.value)


def _bench_message(capsys) -> str:
    path = ROOT / "benchmarks" / "speed_vs_torch_pruning.py"
    spec = importlib.util.spec_from_file_location("speed_vs_torch_pruning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(["--model", "digits_resnet", "--rounds", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, (code, err)
    return err


def _backend_message(name: str) -> object:
    def message(capsys) -> str:
        import torch
        from torch import nn

        from fxscale.optimize.backends import create_backend
        gm = torch.fx.symbolic_trace(nn.Linear(4, 2))
        be = create_backend(name)
        assert not be.available() and not be.supports(gm, (torch.randn(1, 4),))
        with pytest.raises(FxscaleError) as exc:
            be.compile(gm, (torch.randn(1, 4),))
        return str(exc.value)
    return message


def _onnxslim_message(capsys) -> str:
    from fxscale.optimize.onnxsimplify import simplify_onnx
    with pytest.raises(FxscaleError) as exc:
        simplify_onnx("in.onnx", "out.onnx")
    return str(exc.value)


# extra -> (the module it brings, what fails without it and returns the message, what the message must say)
EXTRA_GUARDS = {
    "openvino": ("openvino", _backend_message("openvino"),
                 r"needs the optional dependency openvino: pip install 'fxscale\[openvino\]'"),
    "tvm": ("tvm", _backend_message("tvm"), r"needs the optional dependency tvm: pip install 'fxscale\[tvm\]'"),
    "tensorrt": ("tensorrt", _backend_message("tensorrt"),
                 r"optional dependency tensorrt: pip install 'fxscale\[tensorrt\]'"),
    "onnxslim": ("onnxslim", _onnxslim_message,
                 r"needs (the optional dependency )?onnxslim: pip install ('fxscale\[onnxslim\]'|onnxslim)"),
    "ray": ("ray", _ray_message, r"needs the optional dependency ray: pip install 'fxscale\[ray\]'"),
    "timm": ("timm", _timm_message, r"needs? the optional dependency timm: pip install 'fxscale\[timm\]'"),
    "bench": ("torch_pruning", _bench_message, r"torch_pruning is not installed \(pip install -e '\.\[bench\]'\)"),
}


def test_every_extra_has_a_tested_guard():
    extras = set(_pyproject()["project"]["optional-dependencies"]) - {"test", "dev"}
    assert extras == set(EXTRA_GUARDS), "add an import guard and an EXTRA_GUARDS entry for each new extra"


@pytest.mark.parametrize("extra", sorted(EXTRA_GUARDS))
def test_missing_extra_gives_a_clear_message(extra, monkeypatch, capsys):
    module, message_of, want = EXTRA_GUARDS[extra]
    for name in [n for n in sys.modules if n == module or n.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    message = message_of(capsys)
    assert re.search(want, message), message
