"""Test helpers written once: traced pattern nets and zoo models, output comparison, random plans.

Plain functions live here (tests import them: ``from helpers import rel_err``); the session caches of traced
nets and zoo models are handed out by the fixtures in conftest.py (``traced_net``, ``traced_zoo``,
``zoo_model``), which return the ``cached_*`` functions below.

Cached objects are shared by every test of the session and must not be mutated: transform never mutates its
input, and conftest's ``_shared_objects_unchanged`` guard fails the test that changes a cached graph, weight,
input, group or the training flag. A test that edits weights takes a fresh copy from ``trace_net`` instead.
"""
from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from nets import NETS
from torch import fx, nn

import fxscale
from fxscale import zoo

ZOO_CACHE_SIZE = 8  # zoo entries held at once (LRU): vgg11_bn, vit_b_16 hold 0.35-0.5 GB of weights each


class Traced(NamedTuple):
    """A traced model, its channel analysis and the example input it was traced at."""

    gm: fx.GraphModule
    cg: fxscale.ChannelGraph
    x: torch.Tensor


# ---------------------------------------------------------------- building and tracing


def trace_net(name: str) -> Traced:
    """A fresh trace of the tests/nets.py pattern net ``name`` (seeded weights: equal to the cached one)."""
    model, x = NETS[name]()
    gm = fxscale.trace(model, x)
    return Traced(gm, fxscale.analyze(gm), x)


def build_zoo(name: str, calibrated: bool = False) -> nn.Module:
    """A fresh zoo model in eval mode, torchvision init drawn from seed 0 without touching the global RNG.

    ``calibrated``: re-initialised by ``zoo.randomize_(seed=0, example_input=<small example input>)`` so
    deep stacks give O(1) outputs (numerical tests); otherwise torchvision's own init (ViT's zero head kept).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = zoo.create_model(name)
    if calibrated:
        zoo.randomize_(model, seed=0, example_input=zoo.get_spec(name).example_input())
    return model.eval()


def trace_zoo(name: str, size: int | None = None, calibrated: bool = False) -> Traced:
    """A fresh trace of a zoo model at ``spec.example_input(size=size)`` (default: the small test size)."""
    x = zoo.get_spec(name).example_input(size=size)
    gm = fxscale.trace(build_zoo(name, calibrated), x)
    return Traced(gm, fxscale.analyze(gm), x)


class _Cache:
    """A memo of built objects, least recently used dropped beyond ``maxsize`` (None: unbounded).

    Each entry's ``fingerprint`` is taken when it is built; ``changed()`` re-takes it for the entries handed
    out since the last call (a test can only mutate what it was given) and names those that differ.
    """

    def __init__(self, label: str, maxsize: int | None = None) -> None:
        self.label, self.maxsize = label, maxsize
        self.entries: OrderedDict[tuple, Any] = OrderedDict()
        self.prints: dict[tuple, tuple] = {}
        self.touched: set[tuple] = set()

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        self.touched.add(key)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        value = self.entries[key] = build()
        self.prints[key] = fingerprint(value)
        if self.maxsize is not None and len(self.entries) > self.maxsize:
            old, _ = self.entries.popitem(last=False)
            del self.prints[old]
        return value

    def changed(self) -> list[str]:
        keys, self.touched = self.touched, set()
        return [f"{self.label}{k}" for k in sorted(keys, key=repr)
                if k in self.entries and fingerprint(self.entries[k]) != self.prints[k]]

    def clear(self) -> None:
        self.entries.clear()
        self.prints.clear()
        self.touched.clear()


_NETS = _Cache("traced_net")
_ZOO_MODELS = _Cache("zoo_model", ZOO_CACHE_SIZE)
_ZOO_TRACES = _Cache("traced_zoo", ZOO_CACHE_SIZE)
_DATASETS = _Cache("dataset")
CACHES = (_NETS, _ZOO_MODELS, _ZOO_TRACES, _DATASETS)


def cached_net(name: str) -> Traced:
    """The session's shared ``trace_net(name)`` (read-only)."""
    return _NETS.get((name,), lambda: trace_net(name))


def cached_zoo_model(name: str, calibrated: bool = False) -> nn.Module:
    """The session's shared ``build_zoo(name, calibrated)`` (read-only)."""
    return _ZOO_MODELS.get((name, calibrated), lambda: build_zoo(name, calibrated))


def cached_zoo(name: str, size: int | None = None, calibrated: bool = False) -> Traced:
    """The session's shared ``trace_zoo(name, size, calibrated)``, traced from the shared ``cached_zoo_model``."""
    size = size or zoo.get_spec(name).small_input_size

    def build() -> Traced:
        x = zoo.get_spec(name).example_input(size=size)
        gm = fxscale.trace(cached_zoo_model(name, calibrated), x)
        return Traced(gm, fxscale.analyze(gm), x)

    return _ZOO_TRACES.get((name, size, calibrated), build)


def cached_dataset(name: str) -> Any:
    """The session's shared ``fxscale.data.get_dataset(name)`` with default arguments (read-only)."""
    from fxscale.data import get_dataset
    return _DATASETS.get((name,), lambda: get_dataset(name))


def clear_caches() -> None:
    """Drop every cached net, zoo model and dataset (end of session)."""
    for cache in CACHES:
        cache.clear()


def mutated_cache_entries() -> list[str]:
    """Cache entries handed out since the last call whose fingerprint changed (see ``fingerprint``)."""
    return [label for cache in CACHES for label in cache.changed()]


def fingerprint(obj: Any) -> tuple:
    """A cheap identity of a model's state: graph code, training flags, each tensor's storage and version.

    In-place edits (``zero_()``, ``copy_()``, ``load_state_dict``, BN running stats in train mode) bump a
    tensor's version; swapped modules or tensors change the storage; graph edits change the code. (Edits
    through ``.data`` bypass the version counter and are not seen.)
    """
    if isinstance(obj, Traced):
        groups = tuple((g.name, g.width, g.divisor, g.scalable, g.reason, len(g.producers), len(g.consumers))
                       for g in obj.cg.groups)
        return fingerprint(obj.gm), groups, _tensor_print(obj.x)
    if isinstance(obj, nn.Module):
        code = obj.code if isinstance(obj, fx.GraphModule) else None
        flags = tuple(m.training for m in obj.modules())
        return code, flags, tuple((k, _tensor_print(t)) for k, t in obj.state_dict(keep_vars=True).items())
    splits = ("train", "val", "test")  # a DataBundle
    return tuple(tuple(_tensor_print(t) for t in getattr(getattr(obj, s), "tensors", ())) for s in splits)


def _tensor_print(t: torch.Tensor) -> tuple:
    return t.data_ptr(), t._version, tuple(t.shape)


# ---------------------------------------------------------------- comparing outputs


def outs(y: Any) -> tuple:
    """A model output as a tuple (a single tensor becomes a 1-tuple)."""
    return y if isinstance(y, tuple) else (y,)


def rel_err(a: Any, b: Any) -> float:
    """Largest max-abs difference relative to the max-abs of ``a``, over paired outputs."""
    return max(((u - v).abs().max() / u.abs().max().clamp_min(1e-12)).item() for u, v in zip(outs(a), outs(b)))


# ---------------------------------------------------------------- random plans


def random_widths(cg: fxscale.ChannelGraph, lo: float, hi: float, seed: int | random.Random = 0) -> dict[str, int]:
    """Every scalable group at width x U(lo, hi), rounded to its divisor (at least one divisor)."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    return {g.name: max(g.divisor, round(g.width * rng.uniform(lo, hi) / g.divisor) * g.divisor)
            for g in cg.scalable}


def random_plan(cg: fxscale.ChannelGraph, rng: random.Random, side: int | None) -> fxscale.ScalingPlan:
    """Widths x U(0.4, 2.2) and, when ``side`` is given, a square resolution of side x U(0.6, 1.8) (multiple of 4)."""
    widths = random_widths(cg, 0.4, 2.2, rng)
    res = None if side is None else (4 * round(side * rng.uniform(0.6, 1.8) / 4),) * 2  # stride-friendly
    return fxscale.ScalingPlan(widths=widths, resolution=res)
