"""Run independent tasks (e.g. candidate trainings) inline, in local processes, or on a Ray cluster."""
from __future__ import annotations

import copy
import multiprocessing as mp
import os
import pickle
import socket
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
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


def _ray_call(fn: Callable[[T], R], item: T, threads: int) -> tuple[str, R]:
    """Ray task body: pin torch threads, run fn(item); returns (id of the node it ran on, result)."""
    import ray

    _init_worker(threads)
    return ray.get_runtime_context().get_node_id(), fn(item)


RAY_CLIENT_PORT = 10001  # Ray's default port of a ray:// address without one


def ray_address(address: str | None = None) -> str | None:
    """The cluster to use: `address`, else the RAY_ADDRESS environment variable, else None (a local Ray runtime)."""
    chosen = (address if address is not None else os.environ.get("RAY_ADDRESS", "")).strip()
    return chosen or None


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """FxscaleError naming `address` when it is malformed or nothing listens there (a TCP connect, `timeout` s).

    "auto" and "local" (Ray's own keywords) and None are left to ray.init.
    """
    if address is None or address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon and scheme:
        host, port = rest.rstrip("/"), str(RAY_CLIENT_PORT)
    if scheme not in ("", "ray") or not host or not port.isdigit():
        raise FxscaleError(f"Ray address {address!r} is not 'auto', HOST:PORT (the head's GCS, as printed by "
                           "`ray start --head`) or ray://HOST[:PORT] (a Ray client server)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout).close()
    except OSError as exc:
        raise FxscaleError(f"cannot reach the Ray cluster at {address!r} ({exc}); start one with `ray start --head "
                           "--port=PORT` and pass HOST:PORT (executor address or RAY_ADDRESS), or use the local "
                           "executor") from exc


def source_runtime_env() -> dict[str, Any]:
    """A Ray runtime_env that ships this fxscale package (py_modules), so workers import the driver's exact code
    even from a source checkout that the cluster's Python does not have installed."""
    return {"py_modules": [str(Path(__file__).resolve().parent)], "excludes": ["__pycache__", "*.pyc", ".ruff_cache"]}


class RayExecutor:
    """Ray tasks (pip install 'fxscale[ray]') on an existing cluster or a local Ray runtime.

    address: "auto" (the cluster started on this machine with `ray start --head`), HOST:PORT of a head node,
    ray://HOST[:PORT] (Ray client), or None: the RAY_ADDRESS environment variable, else a new local runtime.
    Each task reserves num_cpus (default: threads) CPUs and num_gpus GPUs and runs with `threads` torch threads.
    The job's runtime_env (given to ray.init when this executor connects; a connection the caller made keeps its
    own) is the caller's runtime_env over OMP_NUM_THREADS=threads and, with ship_source, source_runtime_env().
    A Ray connection made here outlives the `with` block (the pipeline maps several batches); close() ends it.
    After map(), `nodes` holds the Ray node id that ran each item.
    """

    def __init__(self, address: str | None = None, num_cpus: float | None = None, num_gpus: float = 0,
                 threads: int = 1, runtime_env: Mapping[str, Any] | None = None, ship_source: bool = True) -> None:
        _import_ray()
        if threads < 1 or (num_cpus is not None and num_cpus < 0) or num_gpus < 0:
            raise FxscaleError(f"RayExecutor needs threads >= 1 and num_cpus, num_gpus >= 0; got threads={threads}, "
                               f"num_cpus={num_cpus}, num_gpus={num_gpus}")
        self.address = ray_address(address)
        self.num_cpus = float(threads if num_cpus is None else num_cpus)
        self.num_gpus, self.threads = num_gpus, threads
        env: dict[str, Any] = source_runtime_env() if ship_source else {}
        env["env_vars"] = {"OMP_NUM_THREADS": str(threads), **dict((runtime_env or {}).get("env_vars", {}))}
        self.runtime_env = {**env, **{k: v for k, v in (runtime_env or {}).items() if k != "env_vars"}}
        self.nodes: list[str] = []
        self._connected = False

    def connect(self) -> None:
        """Join the cluster (or start a local runtime) unless this process is already connected to Ray."""
        ray = _import_ray()
        check_ray_address(self.address)
        if ray.is_initialized():
            self._check_same_cluster(ray)
            return
        try:
            ray.init(address=self.address, runtime_env=self.runtime_env, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"at {self.address!r}" if self.address else "(a new local runtime)"
            raise FxscaleError(f"cannot connect to the Ray cluster {where}: {exc}") from exc
        self._connected = True

    def _check_same_cluster(self, ray: Any) -> None:
        """FxscaleError when Ray is connected to a different HOST:PORT cluster than this executor's address."""
        if self.address is None or "://" in self.address or self.address in ("auto", "local"):
            return
        current = ray.get_runtime_context().gcs_address
        if current and current.rsplit(":", 1)[-1] != self.address.rsplit(":", 1)[-1]:
            raise FxscaleError(f"this process is already connected to the Ray cluster at {current!r}, not "
                               f"{self.address!r}; call ray.shutdown() (or RayExecutor.close()) first")

    def close(self) -> None:
        """Disconnect from Ray if this executor connected (a cluster keeps running; a local runtime stops)."""
        if self._connected:
            _import_ray().shutdown()
            self._connected = False

    def __enter__(self) -> "RayExecutor":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        """Keep the connection for later batches (see the class doc)."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn(item) for every item as Ray tasks, gathered in item order; a task's exception is re-raised here."""
        ray = _import_ray()
        self.connect()
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(_ray_call)
        done = ray.get([task.remote(fn, item, self.threads) for item in items])
        self.nodes = [node for node, _ in done]
        return [out for _, out in done]


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
