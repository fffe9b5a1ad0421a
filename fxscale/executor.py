"""Run independent tasks (e.g. candidate trainings) inline, in local processes, or on a Ray cluster."""
from __future__ import annotations

import copy
import multiprocessing as mp
import pickle
from concurrent.futures import ProcessPoolExecutor
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Protocol, TypeVar, runtime_checkable

from fxscale.errors import FxscaleError

T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class Executor(Protocol):
    """Maps a picklable top-level function over copies of items, returning results in item order."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn(item) for every item, in order."""
        ...


def _init_worker(threads: int) -> None:
    """Worker-process initialiser: pin torch intra-op threads."""
    import torch

    torch.set_num_threads(threads)


def _payloads(fn: Callable[..., Any], items: list[Any]) -> list[bytes]:
    """Plain-pickle (fn, item) pairs for worker processes; FxscaleError when something cannot be pickled."""
    try:
        return [pickle.dumps((fn, item)) for item in items]
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise FxscaleError(f"executor: cannot pickle the function or an item for a worker process ({exc}); use a "
                           "top-level function and picklable arguments, or LocalExecutor(workers=1)") from exc


class LocalExecutor:
    """Spawned worker processes (each with `threads` torch threads); workers=1 runs inline for debugging.

    Use it as a context manager to keep one process pool alive across several map() calls.
    """

    def __init__(self, workers: int = 1, threads: int = 1) -> None:
        if workers < 1 or threads < 1:
            raise FxscaleError(f"LocalExecutor needs workers >= 1 and threads >= 1; got {workers}, {threads}")
        self.workers, self.threads = workers, threads
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        """A spawn-context process pool whose workers pin torch threads."""
        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(self.threads,))

    def __enter__(self) -> "LocalExecutor":
        if self.workers > 1 and self._pool is None:
            self._pool = self._new_pool()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn(copy of item) for every item, in item order; a worker's exception is re-raised here.

        Items are copied (deepcopy inline, plain pickle for workers), so fn never mutates the caller's objects;
        plain pickle also keeps torch from moving tensors into shared memory that workers would write through.
        """
        todo = list(items)
        if self.workers == 1 or (len(todo) <= 1 and self._pool is None):
            return [fn(copy.deepcopy(item)) for item in todo]
        payloads = _payloads(fn, todo)
        if self._pool is not None:
            return [pickle.loads(out) for out in self._pool.map(_call_pickled, payloads)]
        with self._new_pool() as pool:
            return [pickle.loads(out) for out in pool.map(_call_pickled, payloads)]


def _call_pickled(payload: bytes) -> bytes:
    """Worker body: unpickle (fn, item), run it and pickle the result (plain pickle: no shared memory)."""
    fn, item = pickle.loads(payload)
    return pickle.dumps(fn(item))


def _ray_call(fn: Callable[[T], R], item: T, threads: int) -> R:
    """Ray task body: pin torch threads, then run fn(item)."""
    _init_worker(threads)
    return fn(item)


class RayExecutor:
    """Ray tasks (pip install 'fxscale[ray]'); connects to `address` or starts a local Ray runtime."""

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0, threads: int = 1) -> None:
        _import_ray()
        self.address, self.num_cpus, self.num_gpus, self.threads = address, num_cpus, num_gpus, threads

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn(item) for every item as Ray tasks, gathered in item order."""
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address)
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_ray_call)
        return ray.get([task.remote(fn, item, self.threads) for item in items])


def _import_ray() -> Any:
    """Import ray lazily with an install hint."""
    try:
        import ray
    except ImportError as exc:
        raise FxscaleError("RayExecutor needs the optional dependency ray: pip install 'fxscale[ray]' "
                           "(or use get_executor('local', workers=N))") from exc
    return ray


EXECUTORS: Mapping[str, Callable[..., Executor]] = MappingProxyType({"local": LocalExecutor, "ray": RayExecutor})


def get_executor(name: str = "local", **kw: Any) -> Executor:
    """Build an executor by name: "local" (LocalExecutor) or "ray" (RayExecutor)."""
    factory = EXECUTORS.get(name)
    if factory is None:
        raise FxscaleError(f"unknown executor {name!r}; valid executors: {', '.join(sorted(EXECUTORS))}")
    try:
        return factory(**kw)
    except TypeError as exc:
        raise FxscaleError(f"executor {name!r}: bad arguments {sorted(kw)} ({exc})") from exc
