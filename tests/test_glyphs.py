"""Tests of fxscale.glyphs: the procedurally generated, font-split character dataset and its cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fxscale.glyphs as G
from fxscale.data import get_dataset
from fxscale.errors import FxscaleError

TINY = {"classes": "01AB", "per_class": 3, "val_per_class": 1, "test_per_class": 2, "render_size": 64}


def _tiny(tmp_path, **kw):
    return G.glyphs(**{**TINY, "cache_dir": tmp_path, **kw})


def _raw(bundle, split):
    x, y = bundle.split(split).tensors
    return x * torch.tensor(bundle.std).view(1, 3, 1, 1) + torch.tensor(bundle.mean).view(1, 3, 1, 1), y


def test_fonts_are_matplotlibs_text_faces_split_by_seed() -> None:
    fonts = G.matplotlib_fonts()
    names = {p.stem for p in fonts}
    assert len(fonts) >= 20 and {"DejaVuSans", "STIXGeneral", "cmr10", "cmtt10"} <= names  # 22 with matplotlib 3.x
    assert not names & ({"cmex10", "cmsy10", "DejaVuSansDisplay", "LastResortHE-Regular"} | G.SYMBOL_FACES)
    train, test = G.split_fonts(fonts, 0.25, seed=0)
    n_test = round(0.25 * len(fonts))  # 6 of 22
    assert (len(train), len(test)) == (len(fonts) - n_test, n_test) and not set(train) & set(test) and set(train) | set(test) == set(fonts)
    assert G.split_fonts(fonts, 0.25, seed=0) == (train, test)
    assert G.split_fonts(fonts, 0.25, seed=1)[1] != test


def test_shapes_balance_font_disjointness_and_provenance(tmp_path) -> None:
    b = _tiny(tmp_path, size=32)
    assert b.name == "glyphs" and b.num_classes == 4 and b.input_shape == (3, 32, 32)
    assert b.sizes() == {"train": 12, "val": 4, "test": 8}
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        x, y = b.split(split).tensors
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert np.bincount(y.numpy(), minlength=4).tolist() == [n] * 4
    fonts = b.info["fonts"]
    assert not set(fonts["test"]) & set(fonts["train"]) and fonts["val"] == fonts["train"]
    assert len(fonts["train"]) + len(fonts["test"]) == len(G.matplotlib_fonts()) and len(fonts["test"]) >= 5
    data, meta = G.load_or_render(G.GlyphConfig(**{k: v for k, v in TINY.items()}), tmp_path)
    assert meta["rendered"] is False  # the bundle above cached it
    names = [p.stem for p in G.matplotlib_fonts()]
    faces = meta["fonts"]["train"] + meta["fonts"]["test"]
    for split, code in G.SPLIT_CODES.items():
        used = {faces[f] for f in data["font"][data["split"] == code]}
        assert used <= set(meta["fonts"][split]) and used <= set(names)
    assert not set(b.splits["val"].indices) & set(b.splits["test"].indices)
    assert "unseen" in b.describe_splits()["test"]
    raw, _ = _raw(b, "train")
    assert float(raw.min()) > -1e-4 and float(raw.max()) < 1 + 1e-4
    xt = b.train.tensors[0]
    assert torch.allclose(xt.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_sizes_resize_the_same_renderings(tmp_path, size: int) -> None:
    b = _tiny(tmp_path, size=size, normalize=False)
    x, _ = b.test.tensors
    assert x.shape == (8, 3, size, size) and b.input_shape == (3, size, size)
    big = _tiny(tmp_path, size=64, normalize=False).test.tensors[0]
    down = torch.nn.functional.interpolate(big, size=(size, size), mode="bilinear", antialias=True)
    assert float((down - x).abs().mean()) < 0.12  # the same images, up to noise drawn at each size


def test_deterministic_from_seed_and_seed_changes_images(tmp_path) -> None:
    a = _tiny(tmp_path / "a", size=16)
    b = _tiny(tmp_path / "b", size=16)  # an independent render into another cache
    for split in ("train", "val", "test"):
        for u, v in zip(a.split(split).tensors, b.split(split).tensors):
            assert torch.equal(u, v)
    c = _tiny(tmp_path / "a", size=16, seed=1)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert c.info["fonts"]["test"] != a.info["fonts"]["test"]


def test_cache_is_reused_without_rendering(tmp_path, monkeypatch) -> None:
    first = _tiny(tmp_path, size=16)
    assert first.info["rendered"] is True and len(list(tmp_path.glob("glyphs-*.npz"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("re-rendered despite a valid cache")

    monkeypatch.setattr(G, "_render_one", boom)
    again = _tiny(tmp_path, size=16)
    assert again.info["rendered"] is False and torch.equal(again.train.tensors[0], first.train.tensors[0])
    with pytest.raises(AssertionError, match="re-rendered"):
        _tiny(tmp_path, size=16, per_class=4)  # another setting is another cache entry
    assert not list(tmp_path.glob("*.tmp"))  # the failed build left no partial file


def test_corrupt_cache_is_rebuilt(tmp_path) -> None:
    first = _tiny(tmp_path, size=16)
    (path,) = tmp_path.glob("glyphs-*.npz")
    path.write_bytes(b"not a zip file")
    again = _tiny(tmp_path, size=16)
    assert again.info["rendered"] is True and torch.equal(again.test.tensors[0], first.test.tensors[0])
    np.savez(path, key=np.array("some other key"))  # readable but not this configuration
    assert _tiny(tmp_path, size=16).info["rendered"] is True


def test_registry_env_cache_dir_and_bad_arguments(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FXSCALE_CACHE", str(tmp_path))
    b = get_dataset("glyphs", size=16, **TINY)
    assert b.input_shape == (3, 16, 16) and list((tmp_path / "glyphs").glob("glyphs-*.npz"))
    with pytest.raises(FxscaleError, match="size=96.*render_size=64"):
        get_dataset("glyphs", size=96, **TINY)
    with pytest.raises(FxscaleError, match="distinct characters"):
        get_dataset("glyphs", **{**TINY, "classes": "00"})
    with pytest.raises(FxscaleError, match="per-class counts"):
        get_dataset("glyphs", **{**TINY, "per_class": 0})
