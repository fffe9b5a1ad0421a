"""Tests of fxscale.data: registry, digits splits, synthetic data, label checks, CIFAR/ImageFolder, loaders, and
that no registered dataset validates on its test set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fxscale.data import DataBundle, SplitInfo, check_val_not_test, get_dataset, list_datasets, loader, resize_batch
from fxscale.errors import FxscaleError


def _labels(ds) -> np.ndarray:
    return ds.tensors[1].numpy()


def test_registry_lists_builtins_and_rejects_unknown() -> None:
    assert {"digits", "synthetic", "glyphs", "cifar10", "cifar100", "imagefolder"} <= set(list_datasets())
    with pytest.raises(FxscaleError, match="unknown dataset 'mnist'.*digits"):
        get_dataset("mnist")
    with pytest.raises(FxscaleError, match="accepted: train_fraction"):
        get_dataset("digits", fraction=0.1)


def test_digits_split_sizes_shape_and_normalisation(digits: DataBundle) -> None:
    assert digits.sizes() == {"train": 1077, "val": 360, "test": 360}
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    x = digits.train.tensors[0]
    assert x.shape == (1077, 1, 8, 8) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert 0.2 < digits.mean[0] < 0.4 and 0.3 < digits.std[0] < 0.45  # pixel stats of [0,1]-scaled digits


def test_digits_is_stratified(digits: DataBundle) -> None:
    full = np.bincount(np.concatenate([_labels(digits.split(s)) for s in ("train", "val", "test")]))
    assert full.sum() == 1797
    for split, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        counts = np.bincount(_labels(digits.split(split)), minlength=10)
        assert np.all(np.abs(counts - share * full) <= 1.5), (split, counts)


def test_digits_deterministic_and_seeded(digits: DataBundle) -> None:
    again = get_dataset("digits")
    for split in ("train", "val", "test"):
        for a, b in zip(digits.split(split).tensors, again.split(split).tensors):
            assert torch.equal(a, b)
    other = get_dataset("digits", seed=1)
    assert not torch.equal(other.test.tensors[1], digits.test.tensors[1])


def test_digits_reduced_train_fraction_keeps_val_and_test(digits: DataBundle) -> None:
    small = get_dataset("digits", train_fraction=0.15)
    assert small.sizes() == {"train": 270, "val": 360, "test": 360}
    assert np.bincount(_labels(small.train), minlength=10).min() >= 25
    assert torch.equal(small.test.tensors[1], digits.test.tensors[1])
    # the reduced train set is a subset of the full one (same raw pixels up to normalisation)
    raw = lambda b, ds: ds.tensors[0] * b.std[0] + b.mean[0]  # noqa: E731
    full_rows = {tuple(r.round(decimals=4).tolist()) for r in raw(digits, digits.train).flatten(1)}
    assert all(tuple(r.round(decimals=4).tolist()) in full_rows for r in raw(small, small.train).flatten(1))
    with pytest.raises(FxscaleError, match="train_fraction=0.9"):
        get_dataset("digits", train_fraction=0.9)


def test_synthetic_shape_determinism_and_balance() -> None:
    a = get_dataset("synthetic", shape=(2, 12, 10), num_classes=5, size=300, seed=3)
    b = get_dataset("synthetic", shape=(2, 12, 10), num_classes=5, size=300, seed=3)
    assert a.input_shape == (2, 12, 10) and a.num_classes == 5 and sum(a.sizes().values()) == 300
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert np.bincount(_labels(a.train)).tolist() == [36] * 5
    c = get_dataset("synthetic", shape=(2, 12, 10), num_classes=5, size=300, seed=4)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


@pytest.mark.parametrize("labels, num_classes, message", [
    (torch.tensor([0, 1, 2, 5] * 10), 3, r"'mine'.*labels span 0\.\.5.*0\.\.2"),
    (torch.tensor([-1, 0, 1, 1] * 10), 2, r"'mine'.*labels span -1\.\.1"),
    (torch.zeros(40, dtype=torch.long), None, r"'mine'.*single class|'mine'.*>= 2 classes"),
    (torch.tensor([0.0, 1.0] * 20), 2, r"'mine'.*dtype.*integers"),
    (torch.tensor([0, 1] * 19 + [2, 0]), 3, r"'mine'.*>= 2 samples each"),
])
def test_bad_labels_raise_naming_the_dataset(labels: torch.Tensor, num_classes: int | None, message: str) -> None:
    x = torch.randn(len(labels), 1, 4, 4)
    with pytest.raises(FxscaleError, match=message):
        get_dataset("tensors", x=x, y=labels, num_classes=num_classes, name="mine")


def test_empty_and_mismatched_tensors_raise() -> None:
    with pytest.raises(FxscaleError, match="'tensors'.*empty"):
        get_dataset("tensors", x=torch.zeros(0, 1, 4, 4), y=torch.zeros(0, dtype=torch.long), num_classes=2)
    with pytest.raises(FxscaleError, match="10 images but labels of shape"):
        get_dataset("tensors", x=torch.zeros(10, 1, 4, 4), y=torch.zeros(9, dtype=torch.long))
    with pytest.raises(FxscaleError, match=r"\(N,C,H,W\)"):
        get_dataset("tensors", x=torch.zeros(10, 16), y=torch.arange(10) % 2)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_files_names_root_and_download_flag(tmp_path, name: str, folder: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(FxscaleError) as info:
        get_dataset(name, root=root)
    msg = str(info.value)
    assert str(root) in msg and folder in msg and "--download" in msg and "download=True" in msg


def _write_images(root, split: str, classes: list[str], per_class: int, size=(12, 10)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, cls in enumerate(classes):
        d = root / split / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((*size, 3)) * 60 + 90 * k).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")


def test_imagefolder_resizes_and_checks_layout(tmp_path) -> None:
    _write_images(tmp_path, "train", ["a", "b"], 4)
    with pytest.raises(FxscaleError, match="missing folder .*val"):
        get_dataset("imagefolder", root=tmp_path)
    _write_images(tmp_path, "val", ["a", "b"], 2)
    b = get_dataset("imagefolder", root=tmp_path, size=16)
    # no test/: the given val/ is the test split and val is a stratified hold-out of train/ (>= 1 per class)
    assert b.num_classes == 2 and b.input_shape == (3, 16, 16) and b.sizes() == {"train": 6, "val": 2, "test": 4}
    x, y = next(iter(loader(b, "test", 4, shuffle=False)))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    assert sorted(next(iter(loader(b, "val", 2)))[1].tolist()) == [0, 1]
    assert "val/" in b.describe_splits()["test"] and "hold-out" in b.describe_splits()["val"]
    x, _ = next(iter(loader(b, "train", 6, resolution=24)))
    assert x.shape == (6, 3, 24, 24)
    _write_images(tmp_path, "test", ["a", "b"], 3)
    full = get_dataset("imagefolder", root=tmp_path, size=16)  # train/, val/ and test/ used as given
    assert full.sizes() == {"train": 8, "val": 4, "test": 6}
    import shutil
    shutil.rmtree(tmp_path / "test")
    _write_images(tmp_path, "test", ["a", "c"], 2)
    with pytest.raises(FxscaleError, match="test classes"):
        get_dataset("imagefolder", root=tmp_path)


def test_loader_resizes_to_resolution(digits: DataBundle) -> None:
    x, y = next(iter(loader(digits, "train", 32, resolution=16)))
    assert x.shape == (32, 1, 16, 16) and y.shape == (32,)
    x8, _ = next(iter(loader(digits, "test", 32, shuffle=False)))
    x16, _ = next(iter(loader(digits, "test", 32, resolution=(16, 16), shuffle=False)))
    assert x8.shape == (32, 1, 8, 8)
    assert torch.allclose(x16.mean(dim=(1, 2, 3)), x8.mean(dim=(1, 2, 3)), atol=0.05)
    down = resize_batch(x16, 8)  # antialiased 2x downscale of a 2x bilinear upsample ~ the original
    assert down.shape == x8.shape and float((down - x8).abs().mean()) < 0.3
    assert resize_batch(x8, None) is x8 and resize_batch(x8, 8) is x8
    with pytest.raises(FxscaleError, match="resolution"):
        resize_batch(x8, 0)


def test_loader_order_is_seeded_and_shards_partition(digits: DataBundle) -> None:
    order = lambda **kw: torch.cat([y for _, y in loader(digits, "train", 100, **kw)])  # noqa: E731
    assert torch.equal(order(seed=1), order(seed=1))
    assert not torch.equal(order(seed=1), order(seed=2))
    assert sorted(order(seed=1).tolist()) == sorted(digits.train.tensors[1].tolist())
    assert torch.equal(torch.cat([y for _, y in loader(digits, "test", 100)]), digits.test.tensors[1])
    shards = [order(seed=3, shard=(r, 2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 539  # 1077 padded to 1078 over 2 ranks
    with pytest.raises(FxscaleError, match="unknown split 'dev'"):
        loader(digits, "dev", 8)


# ----------------------------------------------------------------------------------------- validation is never test


def _write_cifar(root, name: str, per_class: int) -> None:
    """A tiny CIFAR tree in torchvision's pickle layout (the md5 checks are patched out by the caller)."""
    import pickle

    n_cls = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if name == "cifar10" else "fine_labels"
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        labels = [k % n_cls for k in range(n)]
        return {"data": rng.integers(0, 255, size=(n, 3072), dtype=np.uint8), key: labels}

    files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    for f in files:
        (folder / f).write_bytes(pickle.dumps(batch(per_class * n_cls // len(files))))
    (folder / ("test_batch" if name == "cifar10" else "test")).write_bytes(pickle.dumps(batch(n_cls)))
    meta_key = "label_names" if name == "cifar10" else "fine_label_names"
    (folder / ("batches.meta" if name == "cifar10" else "meta")).write_bytes(
        pickle.dumps({meta_key: [f"c{k}" for k in range(n_cls)]}))


@pytest.fixture()
def fake_cifar(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    for name in ("cifar10", "cifar100"):
        _write_cifar(tmp_path / name, name, per_class=5)
    return tmp_path


def _registry_kwargs(name: str, tmp_path, fake_cifar) -> dict:
    """Arguments that build each registered dataset here, with tiny fake trees for those that need files."""
    if name == "imagefolder":
        _write_images(tmp_path / "imf", "train", ["a", "b", "c"], 5)
        _write_images(tmp_path / "imf", "val", ["a", "b", "c"], 2)
    return {
        "digits": {},
        "synthetic": {"size": 120},
        "tensors": {"x": torch.randn(60, 1, 4, 4), "y": torch.arange(60) % 3},
        "glyphs": {"classes": "01AB", "per_class": 2, "val_per_class": 1, "test_per_class": 1, "render_size": 32,
                   "size": 16, "cache_dir": tmp_path / "glyphs"},
        "cifar10": {"root": fake_cifar / "cifar10", "val_size": 10},
        "cifar100": {"root": fake_cifar / "cifar100", "val_size": 100},
        "imagefolder": {"root": tmp_path / "imf", "size": 8},
    }[name]


def _index_view(ds) -> tuple[int, tuple[int, ...]] | None:
    """(id of the underlying dataset, indices) for a Subset, else None."""
    return (id(ds.dataset), tuple(ds.indices)) if isinstance(ds, torch.utils.data.Subset) else None


@pytest.mark.parametrize("name", list_datasets())
def test_no_registered_dataset_validates_on_its_test_set(name: str, tmp_path, fake_cifar) -> None:
    b = get_dataset(name, **_registry_kwargs(name, tmp_path, fake_cifar))
    assert len(b.val) > 0 and len(b.test) > 0 and b.val is not b.test
    assert set(b.splits) == {"train", "val", "test"}, "every factory records where each split came from"
    val, test, train = b.splits["val"], b.splits["test"], b.splits["train"]
    assert not val.overlaps(test) and not train.overlaps(test) and not train.overlaps(val)
    for info, split in ((val, "val"), (test, "test")):
        if info.indices is not None:
            assert len(info.indices) == len(b.split(split))
    v, t = _index_view(b.val), _index_view(b.test)
    if v is not None and t is not None and v[0] == t[0]:
        assert not set(v[1]) & set(t[1])
    if v is not None and t is None:  # a hold-out of train against a separate test source
        assert b.val.dataset is not b.test
    assert all(isinstance(line, str) and line for line in b.describe_splits().values())


def test_zero_validation_is_refused_not_replaced_by_test(tmp_path, fake_cifar) -> None:
    with pytest.raises(FxscaleError, match="val_size=0.*never validates on the test set"):
        get_dataset("cifar10", root=fake_cifar / "cifar10", val_size=0)
    with pytest.raises(FxscaleError, match="val_fraction=0.*never validates on the test set"):
        get_dataset("digits", val_fraction=0)
    with pytest.raises(FxscaleError, match="val_size=99"):
        get_dataset("cifar10", root=fake_cifar / "cifar10", val_size=99)
    b = get_dataset("cifar10", root=fake_cifar / "cifar10", val_size=20, augment=False)
    assert b.sizes() == {"train": 30, "val": 20, "test": 10}
    assert np.bincount([b.val[i][1] for i in range(20)]).tolist() == [2] * 10
    assert "hold-out of 20" in b.describe_splits()["val"] and "official" in b.describe_splits()["test"]


def test_check_val_not_test_catches_leaks() -> None:
    ds = torch.utils.data.TensorDataset(torch.zeros(4, 1, 2, 2), torch.arange(4) % 2)
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))
    make = lambda val, test, splits=None: DataBundle("leaky", ds, val, test, 2, (1, 2, 2), (0.0,), (1.0,),  # noqa: E731
                                                     splits=splits or {})
    with pytest.raises(FxscaleError, match="'leaky'.*val split is the test split"):
        check_val_not_test(make(ds, ds))
    with pytest.raises(FxscaleError, match="'leaky'.*val split is empty"):
        check_val_not_test(make(empty, ds))
    other = torch.utils.data.TensorDataset(torch.zeros(4, 1, 2, 2), torch.arange(4) % 2)
    overlap = {"val": SplitInfo("pool", (0, 1, 2), "a"), "test": SplitInfo("pool", (2, 3), "b")}
    with pytest.raises(FxscaleError, match="share samples of 'pool'"):
        check_val_not_test(make(other, ds, overlap))
    whole = {"val": SplitInfo("pool", (0, 1), "a"), "test": SplitInfo("pool", None, "b")}
    with pytest.raises(FxscaleError, match="share samples"):
        check_val_not_test(make(other, ds, whole))
    fine = {"val": SplitInfo("pool", (0, 1), "a"), "test": SplitInfo("pool", (2, 3), "b")}
    assert check_val_not_test(make(other, ds, fine)).name == "leaky"
