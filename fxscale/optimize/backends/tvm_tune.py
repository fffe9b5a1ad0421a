"""MetaSchedule tuning for the tvm backend: task extraction, a trial budget, a time budget, an on-disk database.

One JSON database per target under `cache_dir` (MetaSchedule keys workloads by structural hash, so partitions
of any model share it). `tuned.json` beside it records how many trials each task (by structural hash) has had;
a task that already had at least the requested number is not tuned again, and the database's best record is
applied. Tuning runs in rounds of `trials_per_iter * 4` until the trial budget or `time_budget_s` is spent;
evolutionary search seeds each round's population from the database's best records, so rounds continue the
search rather than restart it.

Two things make MetaSchedule run with the apache-tvm 0.27.0 wheel (found on the 2026-12-02 dev VM):
- apache-tvm-ffi < 0.1.15: with 0.1.15.x the wheel segfaults as soon as a TuneContext is built (an ABI mismatch;
  0.1.14.post0/post1 work). `check_ffi_version` names the fix instead of a bare segfault.
- the builder's worker processes import tvm.s_tir.tensor_intrin inside every build, which takes ~70 s of TVMScript
  parsing, past LocalBuilder's 30 s timeout, so every candidate failed to build. `_builder` runs the fast
  `import_tensor_intrinsics` as the workers' initializer (which has no timeout) instead.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import linecache
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fxscale.optimize.backends.base import BackendError


def default_cache_dir() -> Path:
    """$FXSCALE_CACHE/tvm, or ~/.cache/fxscale/tvm."""
    root = os.environ.get("FXSCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fxscale")
    return Path(root) / "tvm"


def host_target(kind: str, threads: int) -> Any:
    """`kind` ("llvm" or a full TVM target string/JSON) with this CPU's -mcpu and num-cores = threads."""
    import tvm
    from tvm.target import codegen
    if kind != "llvm":
        return tvm.target.Target(kind)
    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": int(threads)})


def _target_key(target: Any) -> str:
    return hashlib.sha1(str(target).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _num_threads(n: int) -> Iterator[None]:
    """TVM_NUM_THREADS for the tuning runner's worker processes, restored afterwards."""
    old = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = old


def _read_counts(path: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def _write_counts(path: Path, counts: dict[str, int]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuned.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """inspect.stack() with each frame's current line read from linecache (what context=1 gives), without
    inspect.getmodule's scans of sys.modules per frame."""
    frame = sys._getframe(1)
    out = []
    while frame is not None:
        fn, ln = frame.f_code.co_filename, frame.f_lineno
        line = linecache.getline(fn, ln)
        out.append(inspect.FrameInfo(frame, fn, ln, frame.f_code.co_name, [line] if line else None,
                                     0 if line else None, positions=None))
        frame = frame.f_back
    return out


def import_tensor_intrinsics() -> None:
    """Import tvm.s_tir.tensor_intrin (MetaSchedule's TuneContext imports it) with a fast inspect.stack.

    TVM 0.27 parses a few hundred TVMScript intrinsics at that import, each calling inspect.stack(), which costs
    about 70 CPU seconds here; with stack frames read straight from linecache it costs about 9. inspect.stack is
    restored right after the import.
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    original = inspect.stack
    inspect.stack = _fast_stack  # type: ignore[assignment]
    try:
        importlib.import_module("tvm.s_tir.tensor_intrin")
    finally:
        inspect.stack = original  # type: ignore[assignment]


def _task_key(func: Any) -> str:
    """Structural hash of a task's TIR (tvm_ffi.structural_hash in TVM 0.27, tvm.ir.structural_hash before)."""
    import tvm
    try:
        from tvm_ffi import structural_hash
    except ImportError:
        structural_hash = tvm.ir.structural_hash
    return str(structural_hash(func))


def _strategy(ms: Any, population: int) -> Any:
    """Evolutionary search (MetaSchedule's default strategy) with a population sized for small trial budgets."""
    population = max(int(population), 8)
    return ms.search_strategy.EvolutionarySearch(population_size=population,
                                                 init_min_unmeasured=min(50, population // 2))


def _builder(ms: Any) -> Any:
    """The local builder, its workers importing the tensor intrinsics up front (see the module docstring)."""
    return ms.builder.LocalBuilder(timeout_sec=120.0, initializer=import_tensor_intrinsics)


def _version(v: str) -> tuple[int, ...]:
    """The first three numeric parts of a version string: "0.1.15.post2" -> (0, 1, 15)."""
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in v.split(".")[:3])


def ffi_version_problem() -> str | None:
    """Why MetaSchedule would crash with the installed apache-tvm-ffi, or None (apache-tvm 0.27 needs < 0.1.15)."""
    try:
        import tvm
        import tvm_ffi
    except ImportError:
        return None
    if _version(tvm.__version__)[:2] == (0, 27) and _version(tvm_ffi.__version__) >= (0, 1, 15):
        return (f"apache-tvm {tvm.__version__} segfaults in MetaSchedule with apache-tvm-ffi {tvm_ffi.__version__}: "
                "pip install 'apache-tvm-ffi<0.1.15'")
    return None


def _runner(ms: Any) -> Any:
    """The local runner: 3 runs of at least 20 ms per candidate (MetaSchedule's default asks 100 ms)."""
    return ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20))


def lower_for_tuning(mod: Any, target: Any) -> Any:
    """Relax -> fused TensorIR (DecomposeOpsForInference, CanonicalizeBindings, the zero pipeline)."""
    import tvm
    from tvm import relax
    with target:
        return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                         relax.transform.CanonicalizeBindings(),
                                         relax.pipeline.zero_pipeline()])(mod)


def tune_and_apply(mod: Any, target: Any, *, trials: int, cache_dir: Path, time_budget_s: float | None = None,
                   trials_per_iter: int = 16, seed: int = 0, threads: int = 1,
                   population: int = 256, search: bool = True) -> tuple[Any, dict[str, Any]]:
    """(the lowered module with tuned schedules applied when trials > 0, a record of what was tuned/reused).

    With `search=False` nothing is tuned here: the database's best records are applied (what a parent does after
    `tune_in_subprocess`)."""
    from tvm import relax
    mod = lower_for_tuning(mod, target)
    if trials <= 0:
        return mod, {"trials": 0, "tuned": [], "reused": []}
    import tvm.s_tir.meta_schedule as ms
    import_tensor_intrinsics()
    work = Path(cache_dir) / f"ms-{_target_key(target)}"
    work.mkdir(parents=True, exist_ok=True)
    counts_path = work / "tuned.json"
    counts = _read_counts(counts_path)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    keys = {t.task_name: _task_key(t.dispatched[0]) for t in tasks}
    todo = [t.task_name for t in tasks if search and counts.get(keys[t.task_name], 0) < trials]
    record: dict[str, Any] = {"trials": trials, "tuned": todo, "reused": [n for n in keys if n not in todo],
                              "database": str(work), "seconds": 0.0}
    if todo:
        problem = ffi_version_problem()
        if problem:
            raise BackendError(problem)
        start, spent = time.perf_counter(), 0
        per_round = max(trials_per_iter * 4, 1)
        while spent < trials:
            if time_budget_s is not None and time.perf_counter() - start >= float(time_budget_s):
                break
            n = min(per_round, trials - spent)
            try:
                with _num_threads(threads):
                    ms.relax_integration.tune_relax(
                        mod, {}, target, str(work), max_trials_global=n * len(todo), max_trials_per_task=n,
                        num_trials_per_iter=min(trials_per_iter, n), strategy=_strategy(ms, population),
                        builder=_builder(ms), runner=_runner(ms), seed=seed + spent)
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"MetaSchedule tuning failed: {type(exc).__name__}: {exc}") from exc
            spent += n
        if spent == 0:  # the time budget was spent before the first round: nothing was tuned
            record["tuned"], record["not_tuned_no_time_left"] = [], todo
        for name in todo:
            counts[keys[name]] = max(counts.get(keys[name], 0), spent)
        _write_counts(counts_path, counts)
        record["seconds"] = time.perf_counter() - start
        record["trials_spent"] = spent
    with target:
        mod = relax.transform.MetaScheduleApplyDatabase(str(work))(mod)
    return mod, record




# ------------------------------------------------------------------------------------------------ isolation
def tune_in_subprocess(gm: Any, inputs: tuple[Any, ...], target: Any, *, trials: int, cache_dir: Path,
                       time_budget_s: float | None, trials_per_iter: int, seed: int, threads: int,
                       population: int, timeout_s: float | None = None) -> dict[str, Any]:
    """Run the MetaSchedule search in a child process (python -m fxscale.optimize.backends.tvm_tune).

    MetaSchedule runs native code that can crash the interpreter (the TVM 0.27 wheel segfaults inside
    TuneContext on some machines); in a child a crash is a BackendError naming the signal, the database on disk
    keeps what was tuned, and the caller applies it in its own process.
    """
    import subprocess

    import torch
    with tempfile.TemporaryDirectory(prefix="fxscale-tvm-tune-") as tmp:
        job = Path(tmp) / "job.pt"
        out = Path(tmp) / "record.json"
        torch.save({"gm": gm, "inputs": tuple(inputs), "target": str(target), "trials": trials,
                    "cache_dir": str(cache_dir), "time_budget_s": time_budget_s, "trials_per_iter": trials_per_iter,
                    "seed": seed, "threads": threads, "population": population}, job)
        try:
            proc = subprocess.run([sys.executable, "-m", "fxscale.optimize.backends.tvm_tune", str(job), str(out)],
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"MetaSchedule tuning ran past {timeout_s:.0f} s") from exc
        if proc.returncode != 0 or not out.is_file():
            why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
            if "Segfault" in (proc.stderr or ""):
                why, lines = "a segmentation fault in TVM's native code", [p for p in [ffi_version_problem()] if p]
            tail = f": {lines[-1]}" if lines else ""
            raise BackendError(f"MetaSchedule tuning failed in its child process ({why}){tail}")
        return json.loads(out.read_text())


def _child(job_path: str, out_path: str) -> int:
    import torch
    import tvm
    job = torch.load(job_path, weights_only=False)
    from fxscale.optimize.backends.tvm import _import_relax
    target = tvm.target.Target(json.loads(job["target"]))
    mod = _import_relax(job["gm"], job["inputs"])
    _, record = tune_and_apply(mod, target, trials=job["trials"], cache_dir=Path(job["cache_dir"]),
                               time_budget_s=job["time_budget_s"], trials_per_iter=job["trials_per_iter"],
                               seed=job["seed"], threads=job["threads"], population=job["population"])
    Path(out_path).write_text(json.dumps(record))
    return 0


__all__ = ["default_cache_dir", "ffi_version_problem", "host_target", "import_tensor_intrinsics", "lower_for_tuning", "tune_and_apply",
           "tune_in_subprocess"]


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
