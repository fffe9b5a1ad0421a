"""One error hierarchy: every fxscale error lives in fxscale.errors, and the CLIs turn them into exit 2 + one line."""
from __future__ import annotations

import argparse
import inspect
import json
import re
from pathlib import Path

import pytest

import fxscale
from fxscale import cli, errors
from fxscale.hw import table1
from fxscale.hw.base import LatencyStats, MeasureProtocol

PACKAGE = Path(fxscale.__file__).parent
ERROR_CLASSES = [obj for _n, obj in inspect.getmembers(errors, inspect.isclass)
                 if issubclass(obj, BaseException) and obj.__module__ == errors.__name__]


def test_every_error_class_derives_from_fxscale_error():
    names = {c.__name__ for c in ERROR_CLASSES}
    assert {"FxscaleError", "TargetError", "ProfileError", "ExportError", "ReportError", "PlanError"} <= names
    for cls in ERROR_CLASSES:
        assert issubclass(cls, errors.FxscaleError) and issubclass(cls, ValueError), cls
    assert set(errors.__all__) == names


def test_no_error_class_is_defined_outside_errors_py():
    from fxscale.hw.jetson import FILES as BOARD_FILES  # stdlib-only scripts copied to a board: no fxscale there
    pattern = re.compile(r"^class (\w*Error)\b", re.MULTILINE)
    elsewhere = {f"{p.relative_to(PACKAGE)}:{m}" for p in PACKAGE.rglob("*.py")
                 if p.name != "errors.py" and p.resolve() not in {f.resolve() for f in BOARD_FILES}
                 for m in pattern.findall(p.read_text())}
    assert not elsewhere


def test_old_import_locations_still_work():
    from fxscale.export import ExportError
    from fxscale.hw.devprofile import ProfileError
    from fxscale.hw.profile import ProfileError as ProfileError2
    assert ExportError is errors.ExportError and ProfileError is ProfileError2 is errors.ProfileError
    assert issubclass(errors.ProfileError, errors.TargetError)


def test_hw_base_and_table1_raise_no_bare_value_error():
    for path in (PACKAGE / "hw" / "base.py", PACKAGE / "hw" / "table1.py"):
        assert "raise ValueError" not in path.read_text(), path


@pytest.mark.parametrize(("kw", "needle"), [({"runs": 0}, "runs must be >= 1, got 0"),
                                            ({"warmup": -1}, "warmup must be >= 0, got -1"),
                                            ({"batch": 0}, "batch must be >= 1, got 0"),
                                            ({"statistic": "max"}, "statistic must be 'mean' or 'median'")])
def test_bad_timing_protocol_is_a_target_error_naming_the_field(kw, needle):
    with pytest.raises(errors.TargetError, match=re.escape(needle)):
        MeasureProtocol(**kw)


def test_no_timing_samples_is_a_target_error():
    with pytest.raises(errors.TargetError, match="no timing samples from cpu-x"):
        LatencyStats.from_samples([], warmup=0, device="cpu-x")


def _results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    entry = {"schema": table1.RESULT_SCHEMA, "status": "ok", "model": "base", "device": "Xavier",
             "latency_ms": {"gpu_compute": {"mean": 2.0}, "host": {"mean": 2.5}}}
    (folder / "base.json").write_text(json.dumps(entry))
    return folder


def test_table1_errors_are_report_errors_naming_the_culprit(tmp_path):
    results = table1.load_results(_results(tmp_path))
    with pytest.raises(errors.ReportError, match="baseline 'nope' is not among the results: base"):
        table1.build_rows(results, {}, baseline="nope")
    with pytest.raises(errors.ReportError, match="runner result of 'base' has no host mean latency"):
        table1.build_rows({"base": {"latency_ms": {}}}, {}, latency="host")
    listing = tmp_path / "costs.json"
    listing.write_text("[1, 2]")
    with pytest.raises(errors.ReportError, match=f"costs file {re.escape(str(listing))} must hold a JSON object"):
        table1._read_json(str(listing), "costs")
    (tmp_path / "results" / "torn.json").write_text("{not json")
    with pytest.raises(errors.ReportError, match="torn.json is not valid JSON"):
        table1.load_results(tmp_path / "results")


def test_scale_cli_bad_timing_setting_exits_2_with_one_line(tmp_path, capsys):
    """Formerly a bare ValueError from hw/base.py, which `fxscale` did not catch (a traceback)."""
    out = tmp_path / "o"
    assert cli.main(["scale", "--runs", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fxscale: error: ") and "runs must be >= 1, got 0" in err
    assert not out.exists()


def test_table1_cli_bad_baseline_exits_2_with_one_line(tmp_path, capsys):
    costs = tmp_path / "costs.json"
    costs.write_text("{}")
    assert table1.main([str(_results(tmp_path)), "--costs", str(costs), "--baseline", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "baseline 'nope'" in err
    assert table1.main([str(tmp_path / "results"), "--costs", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json" in err


def test_cli_prints_a_multi_line_error_on_one_line(monkeypatch, capsys):
    def boom(_args: argparse.Namespace) -> int:
        raise errors.ExportError("export failed\n  op Foo unsupported\n")

    monkeypatch.setattr(cli, "cmd_analyze", boom)  # build_parser binds the command function when it runs
    assert cli.main(["analyze", "digits_resnet"]) == 2
    assert capsys.readouterr().err == "fxscale: error: export failed; op Foo unsupported\n"
