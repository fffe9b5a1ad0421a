"""Stage caches are validated on load: a truncated stage file or missing/truncated trained weights are named,
discarded and recomputed (a rerun no longer fails forever because train.json says training is done)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from fxscale.scaling.pipeline import Pipeline, ScaleConfig
from fxscale.scaling.stages import load_weights, save_weights, stage_cached
from test_pipeline import METHODS, TINY  # run_dir (conftest): the session-wide pipeline run, copied here

torch.set_num_threads(1)


class Evil:
    """An arbitrary class: unpickling it would run arbitrary code paths; weights_only refuses it."""


def _cfg() -> ScaleConfig:
    return ScaleConfig(methods=METHODS, **TINY)


def test_corrupt_stage_file_is_named_and_recomputed(tmp_path):
    logs: list[str] = []
    (tmp_path / "alpha.json").write_text('{"key": "k", "val')  # truncated
    calls = []
    value = stage_cached(tmp_path, "alpha", "k", lambda: calls.append(1) or {"x": 1}, logs.append)
    assert value == {"x": 1} and calls == [1]
    assert any("discarding the corrupt stage file" in line and "alpha.json" in line for line in logs)
    assert json.loads((tmp_path / "alpha.json").read_text()) == {"key": "k", "value": {"x": 1}}
    logs.clear()
    assert stage_cached(tmp_path, "alpha", "k", lambda: pytest.fail("recomputed"), logs.append) == {"x": 1}
    assert any("resumed" in line for line in logs)


def test_damaged_weights_retrain_on_rerun(run_dir, tmp_path):
    """One rerun over two damaged weight files: one missing, one truncated; each is named, discarded and retrained."""
    src, _summary, _ = run_dir
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    missing, truncated = (out / "stages" / "weights" / f"{m}_s0.pt" for m in ("hacscale", "uniform"))
    missing.unlink()
    truncated.write_bytes(truncated.read_bytes()[:100])
    logs: list[str] = []
    Pipeline(_cfg(), out, log=logs.append).run()
    for victim in (missing, truncated):
        assert any(line.startswith("[train] discarding") and victim.name in line for line in logs), logs
        assert set(load_weights(victim)) == set(load_weights(src / "stages" / "weights" / victim.name))


def test_weights_are_saved_atomically_and_loaded_weights_only(tmp_path):
    path = tmp_path / "w.pt"
    save_weights({"a": torch.ones(2)}, path)
    assert not path.with_suffix(".pt.tmp").exists()
    assert torch.equal(load_weights(path)["a"], torch.ones(2))
    torch.save({"a": torch.ones(2), "obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_weights(tmp_path / "evil.pt")
