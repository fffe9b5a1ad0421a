"""Dataset registry (digits, synthetic, tensors, glyphs, CIFAR, ImageFolder) and resolution-aware loaders.

Validation is never the test set: every factory returns a non-empty val split that is disjoint from test (a seeded,
stratified hold-out of train where the source has no validation set of its own), records in `DataBundle.splits`
where each split came from, and `get_dataset` checks the disjointness before returning.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset,
                              TensorDataset)
from torch.utils.data.distributed import DistributedSampler

from fxscale.errors import FxscaleError
from fxscale.glyphs import glyphs

Resolution = int | tuple[int, int]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitInfo:
    """Where one split came from: `indices` into `source` (None: the whole source) and a one-line description."""

    source: str
    indices: tuple[int, ...] | None
    how: str

    def overlaps(self, other: SplitInfo) -> bool:
        """True when the two splits can share a sample: the same source and intersecting (or whole) index sets."""
        if self.source != other.source:
            return False
        if self.indices is None or other.indices is None:
            return True
        return bool(set(self.indices) & set(other.indices))


@dataclass(frozen=True)
class DataBundle:
    """Train/val/test datasets yielding normalised (C,H,W) float tensors and int64 labels.

    `splits` records the provenance of each split (see SplitInfo; `describe_splits()` for the report); `info`
    holds dataset-specific facts (e.g. the font faces of each glyphs split).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: Mapping[str, SplitInfo] = field(default_factory=dict, compare=False, hash=False)
    info: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def describe_splits(self) -> dict[str, str]:
        """One line per split saying where it came from and how many samples it holds."""
        return {s: f"{self.splits[s].how} ({len(self.split(s))} samples)" if s in self.splits
                else f"{len(self.split(s))} samples, provenance not recorded" for s in SPLITS}

    def split(self, split: str) -> Dataset:
        """The dataset of one split ("train", "val" or "test")."""
        if split not in SPLITS:
            raise FxscaleError(f"dataset {self.name!r}: unknown split {split!r}; use one of {SPLITS}")
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {s: len(self.split(s)) for s in SPLITS}  # type: ignore[arg-type]


@dataclass(frozen=True)
class DataSpec:
    """A registry entry: a dataset name, its factory and a one-line description."""

    name: str
    factory: Callable[..., DataBundle]
    description: str


# ----------------------------------------------------------------------------------------- validation


def check_labels(name: str, labels: Sequence[int] | np.ndarray | torch.Tensor, num_classes: int,
                 split: str = "train") -> None:
    """Raise FxscaleError unless labels are a non-empty int sequence in 0..num_classes-1 with >= 2 classes."""
    arr = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels)
    if arr.size == 0:
        raise FxscaleError(f"dataset {name!r}: the {split} split is empty; provide samples or change the split "
                           "fractions")
    if not np.issubdtype(arr.dtype, np.integer):
        raise FxscaleError(f"dataset {name!r}: {split} labels have dtype {arr.dtype}; class labels must be integers")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        raise FxscaleError(f"dataset {name!r}: {split} labels span {lo}..{hi} but num_classes={num_classes}; "
                           f"labels must lie in 0..{num_classes - 1} (remap them or fix num_classes)")
    if split == "train" and np.unique(arr).size < 2:
        raise FxscaleError(f"dataset {name!r}: the train split holds a single class ({lo}); "
                           "a classifier needs at least two classes")


def check_val_not_test(bundle: DataBundle) -> DataBundle:
    """Return bundle, or raise FxscaleError when its val split could hold test samples (or is empty).

    Epochs, alpha and rules are chosen on val; a val that is (or overlaps) the reported test set would leak the test
    set into those choices.
    """
    if len(bundle.val) == 0:
        raise FxscaleError(f"dataset {bundle.name!r}: the val split is empty; a non-empty validation split, disjoint "
                           "from test, is needed to choose epochs and alpha")
    if bundle.val is bundle.test:
        raise FxscaleError(f"dataset {bundle.name!r}: the val split is the test split; validation must never be the "
                           "test set")
    val, test = bundle.splits.get("val"), bundle.splits.get("test")
    if val is not None and test is not None and val.overlaps(test):
        raise FxscaleError(f"dataset {bundle.name!r}: val ({val.how}) and test ({test.how}) share samples of "
                           f"{val.source!r}; validation must never see the test set")
    return bundle


def _stratified_splits(labels: np.ndarray, val_fraction: float, test_fraction: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified train/val/test index split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(labels.size)
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _reduce_train(name: str, train: np.ndarray, labels: np.ndarray, train_fraction: float | None,
                  n_total: int, seed: int) -> np.ndarray:
    """Stratified subset of the train indices holding train_fraction of the whole dataset."""
    if train_fraction is None:
        return train
    k = int(round(train_fraction * n_total))
    n_classes = np.unique(labels).size
    if not n_classes <= k <= train.size:
        raise FxscaleError(f"dataset {name!r}: train_fraction={train_fraction} gives {k} samples; it must give "
                           f"between {n_classes} (one per class) and {train.size} (the full train split)")
    if k == train.size:
        return train
    from sklearn.model_selection import train_test_split

    sub, _ = train_test_split(train, train_size=k, stratify=labels[train], random_state=seed)
    return np.sort(sub)


def _check_fractions(name: str, val_fraction: float, test_fraction: float) -> None:
    """Validate the held-out split fractions; val_fraction=0 is refused (there is no fallback to the test set)."""
    if val_fraction == 0:
        raise FxscaleError(f"dataset {name!r}: val_fraction=0 leaves no validation split; epochs and alpha are chosen "
                           "on val and fxscale never validates on the test set, so give val_fraction > 0")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise FxscaleError(f"dataset {name!r}: need 0 < val_fraction, 0 < test_fraction and val+test < 1; "
                           f"got val_fraction={val_fraction}, test_fraction={test_fraction}")


# ----------------------------------------------------------------------------------------- tensor datasets


def bundle_from_tensors(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
                        val_fraction: float = 0.2, test_fraction: float = 0.2, train_fraction: float | None = None,
                        seed: int = 0, normalize: bool = True) -> DataBundle:
    """Split (N,C,H,W) images and labels into a stratified, per-channel normalised DataBundle."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.ndim != 4:
        raise FxscaleError(f"dataset {name!r}: images must have shape (N,C,H,W); got {tuple(x.shape)}")
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise FxscaleError(f"dataset {name!r}: {x.shape[0]} images but labels of shape {tuple(y.shape)}; "
                           "give one integer label per image")
    n_cls = int(num_classes if num_classes is not None else (int(y.max()) + 1 if y.numel() else 0))
    check_labels(name, y, max(n_cls, 1), split="all")
    _check_fractions(name, val_fraction, test_fraction)
    labels = y.numpy()
    present, counts = np.unique(labels, return_counts=True)
    if present.size < 2 or counts.min() < 2:
        raise FxscaleError(f"dataset {name!r}: need >= 2 classes with >= 2 samples each to stratify; "
                           f"class counts are {dict(zip(present.tolist(), counts.tolist()))}")
    try:
        tr, va, te = _stratified_splits(labels, val_fraction, test_fraction, seed)
    except ValueError as exc:
        raise FxscaleError(f"dataset {name!r}: cannot split {labels.size} samples stratified: {exc}") from exc
    tr = _reduce_train(name, tr, labels, train_fraction, labels.size, seed)
    x = x.float()
    c = x.shape[1]
    mean = x[tr].mean(dim=(0, 2, 3)) if normalize else torch.zeros(c)
    std = x[tr].std(dim=(0, 2, 3)).clamp_min(1e-6) if normalize else torch.ones(c)
    x = (x - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)
    y = y.long()
    check_labels(name, y[tr], n_cls, "train")
    parts = [TensorDataset(x[i], y[i]) for i in (tr, va, te)]
    source = f"{name}[{labels.size}]"
    how = {"train": f"stratified {100 * (1 - val_fraction - test_fraction):.0f}% of {labels.size}"
                    + (f", reduced to train_fraction={train_fraction}" if train_fraction is not None else ""),
           "val": f"stratified {100 * val_fraction:.0f}% of {labels.size}",
           "test": f"stratified {100 * test_fraction:.0f}% of {labels.size}"}
    splits = {s: SplitInfo(source, tuple(int(i) for i in ix), f"{name}: {how[s]} (seed {seed})")
              for s, ix in zip(SPLITS, (tr, va, te))}
    return DataBundle(name, *parts, num_classes=n_cls, input_shape=tuple(x.shape[1:]),  # type: ignore[arg-type]
                      mean=tuple(mean.tolist()), std=tuple(std.tolist()), splits=splits)


def digits(train_fraction: float | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
           seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 digits (1797 images, 10 classes) scaled to [0,1], normalised, split 60/20/20."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return bundle_from_tensors("digits", x, y, 10, val_fraction, test_fraction, train_fraction, seed)


def synthetic(shape: tuple[int, int, int] = (3, 16, 16), num_classes: int = 4, size: int = 600,
              blobs: int = 3, noise: float = 0.5, seed: int = 0, val_fraction: float = 0.2,
              test_fraction: float = 0.2) -> DataBundle:
    """Class-conditional Gaussian-blob images: each class is a fixed sum of blobs plus pixel noise."""
    c, h, w = shape
    if size < 2 * num_classes or num_classes < 2 or min(shape) < 1:
        raise FxscaleError(f"dataset 'synthetic': need num_classes >= 2, size >= 2*num_classes and a positive "
                           f"shape; got size={size}, num_classes={num_classes}, shape={shape}")
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    protos = torch.zeros(num_classes, c, h, w)
    for k in range(num_classes):
        for ch in range(c):
            centre, amp = torch.rand(blobs, 2, generator=g), torch.randn(blobs, generator=g)
            for (cy, cx), a in zip(centre.tolist(), amp.tolist()):
                protos[k, ch] += 2.0 * a * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
    y = torch.arange(size) % num_classes
    y = y[torch.randperm(size, generator=g)]
    scale = 0.8 + 0.4 * torch.rand(size, 1, 1, 1, generator=g)
    x = protos[y] * scale + noise * torch.randn(size, c, h, w, generator=g)
    return bundle_from_tensors("synthetic", x, y, num_classes, val_fraction, test_fraction, None, seed)


def tensors(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None, name: str = "tensors",
            val_fraction: float = 0.2, test_fraction: float = 0.2, train_fraction: float | None = None,
            seed: int = 0) -> DataBundle:
    """User-supplied (N,C,H,W) images and labels, split and normalised like digits."""
    return bundle_from_tensors(name, x, y, num_classes, val_fraction, test_fraction, train_fraction, seed)


# ----------------------------------------------------------------------------------------- torchvision datasets

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _holdout(name: str, targets: Sequence[int], val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Stratified (train, val) index lists holding val_size samples out of a torchvision train set.

    val_size=0 is refused: the validation split chooses epochs and alpha and must never be the test set.
    """
    if val_size == 0:
        raise FxscaleError(f"dataset {name!r}: val_size=0 leaves no validation split; fxscale never validates on the "
                           f"test set, so give val_size > 0 (a stratified hold-out of the train set)")
    n_cls = len(set(targets))
    if not n_cls <= val_size <= len(targets) - n_cls:
        raise FxscaleError(f"dataset {name!r}: val_size={val_size} must lie in {n_cls}..{len(targets) - n_cls} "
                           f"(at least one sample per class in val and in train)")
    from sklearn.model_selection import train_test_split

    idx = list(range(len(targets)))
    try:
        tr, va = train_test_split(idx, test_size=val_size, stratify=list(targets), random_state=seed)
    except ValueError as exc:
        raise FxscaleError(f"dataset {name!r}: cannot hold out a stratified val_size={val_size}: {exc}") from exc
    return sorted(tr), sorted(va)


def _cifar(name: str, root: str | Path, download: bool, val_size: int, augment: bool, seed: int) -> DataBundle:
    """CIFAR-10/100 from root (torchvision layout); val is a stratified hold-out of the train set."""
    from torchvision import datasets, transforms as T

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    norm = [T.ToTensor(), T.Normalize(CIFAR_MEAN[name], CIFAR_STD[name])]
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    try:
        train_aug = cls(str(root), train=True, transform=T.Compose(aug + norm), download=download)
        train_plain = cls(str(root), train=True, transform=T.Compose(norm), download=False)
        test = cls(str(root), train=False, transform=T.Compose(norm), download=False)
    except RuntimeError as exc:
        raise FxscaleError(f"dataset {name!r}: files not found under root={str(root)!r} (expected "
                           f"{Path(root) / folder}); put the torchvision {name} files there or pass "
                           f"download=True (CLI: --download) on a machine with internet") from exc
    n_cls = 10 if name == "cifar10" else 100
    check_labels(name, train_plain.targets, n_cls, "train")
    check_labels(name, test.targets, n_cls, "test")
    tr, va = _holdout(name, train_plain.targets, val_size, seed)
    src = f"{name}/train"
    splits = {"train": SplitInfo(src, tuple(tr), f"{name} train set minus the val hold-out"),
              "val": SplitInfo(src, tuple(va), f"{name}: stratified hold-out of {val_size} from the train set "
                                               f"(seed {seed})"),
              "test": SplitInfo(f"{name}/test", None, f"the official {name} test set")}
    return DataBundle(name, Subset(train_aug, tr), Subset(train_plain, va), test, n_cls, (3, 32, 32),
                      CIFAR_MEAN[name], CIFAR_STD[name], splits=splits)


def cifar10(root: str | Path = "data", download: bool = False, val_size: int = 5000, augment: bool = True,
            seed: int = 0) -> DataBundle:
    """torchvision CIFAR-10 (crop-4 + flip for train); val is a seeded stratified hold-out of val_size train images."""
    return _cifar("cifar10", root, download, val_size, augment, seed)


def cifar100(root: str | Path = "data", download: bool = False, val_size: int = 5000, augment: bool = True,
             seed: int = 0) -> DataBundle:
    """torchvision CIFAR-100 (crop-4 + flip for train); val is a seeded stratified hold-out of the train set."""
    return _cifar("cifar100", root, download, val_size, augment, seed)


def _image_folder(root: Path, sub: str, transform: Any) -> Any:
    """A torchvision ImageFolder for root/sub with clear errors."""
    from torchvision import datasets

    path = root / sub
    if not path.is_dir():
        raise FxscaleError(f"dataset 'imagefolder': missing folder {path}; expected {root}/train/<class>/*.png "
                           f"and {root}/val/<class>/*.png")
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FxscaleError(f"dataset 'imagefolder': {path} holds no usable images ({exc}); "
                           "add one sub-folder of images per class") from exc


def imagefolder(root: str | Path, size: int = 32, augment: bool = True,
                mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                val_fraction: float = 0.1, seed: int = 0) -> DataBundle:
    """torchvision ImageFolder from root/train and root/val (root/test if present), resized to size x size.

    With root/test: train/, val/ and test/ are used as they are. Without it (the usual ImageNet layout) the given
    val/ becomes the test split and the val split is a seeded, stratified hold-out of val_fraction of train/
    (at least one image per class), so validation is never the reported test set.
    """
    from torchvision import transforms as T

    root = Path(root)
    base = [T.Resize((size, size), antialias=True), T.ToTensor(), T.Normalize(mean, std)]
    aug = [T.RandomHorizontalFlip()] if augment else []
    train = _image_folder(root, "train", T.Compose(aug + base))
    given_val = _image_folder(root, "val", T.Compose(base))
    has_test = (root / "test").is_dir()
    test = _image_folder(root, "test", T.Compose(base)) if has_test else given_val
    for split, ds in (("val", given_val), ("test", test)):
        if ds.classes != train.classes:
            raise FxscaleError(f"dataset 'imagefolder': {split} classes {ds.classes} differ from train classes "
                               f"{train.classes}; use the same class sub-folders in every split")
    n_cls = len(train.classes)
    check_labels("imagefolder", train.targets, n_cls, "train")
    src = f"imagefolder:{root}"
    if has_test:
        splits = {s: SplitInfo(f"{src}/{s}", None, f"imagefolder: {root / s}") for s in SPLITS}
        return DataBundle("imagefolder", train, given_val, test, n_cls, (len(mean), size, size), tuple(mean),
                          tuple(std), splits=splits)
    if not 0 < val_fraction < 1:
        raise FxscaleError(f"dataset 'imagefolder': val_fraction={val_fraction} must lie in (0, 1); without "
                           f"{root / 'test'} the val split is carved out of train/ and val/ becomes the test split")
    val_size = max(n_cls, int(round(val_fraction * len(train.targets))))
    tr, va = _holdout("imagefolder", train.targets, val_size, seed)
    plain = _image_folder(root, "train", T.Compose(base))
    splits = {"train": SplitInfo(f"{src}/train", tuple(tr), f"imagefolder: {root / 'train'} minus the val hold-out"),
              "val": SplitInfo(f"{src}/train", tuple(va), f"imagefolder: stratified hold-out of {val_size} images "
                                                          f"from {root / 'train'} (seed {seed})"),
              "test": SplitInfo(f"{src}/val", None, f"imagefolder: {root / 'val'} (no test/ folder, so val/ is "
                                                    "the test split)")}
    return DataBundle("imagefolder", Subset(train, tr), Subset(plain, va), test, n_cls, (len(mean), size, size),
                      tuple(mean), tuple(std), splits=splits)


# ----------------------------------------------------------------------------------------- registry

REGISTRY: Mapping[str, DataSpec] = MappingProxyType({s.name: s for s in (
    DataSpec("digits", digits, "scikit-learn 8x8 digits, 10 classes, embedded (default)"),
    DataSpec("synthetic", synthetic, "class-conditional Gaussian blobs of any shape (tests)"),
    DataSpec("tensors", tensors, "user-supplied image/label tensors"),
    DataSpec("glyphs", glyphs, "font-rendered characters, 36 classes, split by font face, generated and cached"),
    DataSpec("cifar10", cifar10, "torchvision CIFAR-10 from a local root"),
    DataSpec("cifar100", cifar100, "torchvision CIFAR-100 from a local root"),
    DataSpec("imagefolder", imagefolder, "torchvision ImageFolder with train/ and val/ sub-folders"),
)})


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return sorted(REGISTRY)


def get_dataset(name: str = "digits", /, **kw: Any) -> DataBundle:
    """Build the named dataset; keyword arguments go to its factory."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise FxscaleError(f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")
    sig = inspect.signature(spec.factory)
    try:
        sig.bind(**kw)
    except TypeError as exc:
        raise FxscaleError(f"dataset {name!r}: bad arguments {sorted(kw)} ({exc}); "
                           f"accepted: {', '.join(sig.parameters)}") from exc
    return check_val_not_test(spec.factory(**kw))


# ----------------------------------------------------------------------------------------- loaders


def _as_hw(resolution: Resolution) -> tuple[int, int]:
    """(H, W) from an int or a pair, validated."""
    hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if len(hw) != 2 or min(hw) < 1:
        raise FxscaleError(f"resolution must be a positive int or (H, W); got {resolution!r}")
    return int(hw[0]), int(hw[1])


def resize_batch(x: torch.Tensor, resolution: Resolution | None) -> torch.Tensor:
    """Bilinearly resize an (N,C,H,W) batch; antialiased when downscaling; no-op when None or equal."""
    if resolution is None:
        return x
    hw = _as_hw(resolution)
    if tuple(x.shape[-2:]) == hw:
        return x
    down = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=down)


class ResizeCollate:
    """Picklable collate function: default collation followed by resize_batch."""

    def __init__(self, resolution: Resolution | None, batched: bool) -> None:
        self.resolution = None if resolution is None else _as_hw(resolution)
        self.batched = batched

    def __call__(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch if self.batched else torch.utils.data.default_collate(batch)
        return resize_batch(x, self.resolution), y


def loader(bundle: DataBundle, split: str, batch_size: int, resolution: Resolution | None = None,
           seed: int = 0, shuffle: bool | None = None, drop_last: bool = False, num_workers: int = 0,
           shard: tuple[int, int] | None = None) -> DataLoader:
    """A DataLoader over one split, shuffled (train by default) with a seeded order, resized to resolution.

    shard=(rank, world_size) splits the data across distributed ranks (a DistributedSampler seeded by seed).
    """
    ds = bundle.split(split)
    if len(ds) == 0:
        raise FxscaleError(f"dataset {bundle.name!r}: the {split} split is empty; nothing to load")
    if batch_size < 1:
        raise FxscaleError(f"batch_size must be >= 1; got {batch_size}")
    shuffle = split == "train" if shuffle is None else shuffle
    if shard is not None:
        sampler: Any = DistributedSampler(ds, num_replicas=shard[1], rank=shard[0], shuffle=shuffle, seed=seed)
    else:  # the order is randperm(n) from a fresh generator seeded `seed`, exactly as DistributedSampler's
        order = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(ds, generator=order) if shuffle else SequentialSampler(ds)
    g = torch.Generator().manual_seed(seed)  # worker/augmentation seeds, kept apart from the sample order
    batched = isinstance(ds, TensorDataset)  # index whole batches at once: far faster than per-sample collation
    common = dict(collate_fn=ResizeCollate(resolution, batched), num_workers=num_workers, generator=g)
    if batched:
        return DataLoader(ds, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None, **common)
    return DataLoader(ds, sampler=sampler, batch_size=batch_size, drop_last=drop_last, **common)

