"""Apache TVM (Relax + MetaSchedule): WPK's "automated search of operator code configurations".

The partition goes through torch.export into Relax (`tvm.relax.frontend.torch.from_exported_program`), is
legalised to TensorIR and fused (Relax's zero pipeline), and built for `llvm` on this CPU. With `trials=0` the
build uses TVM's default (untuned) schedules. With `trials > 0` each fused TIR task is first tuned by MetaSchedule's
evolutionary search (XGBoost cost model, post-order-apply design space, local builder and runner) up to `trials`
measured candidates, within `time_budget_s` (apache-tvm 0.27 needs apache-tvm-ffi < 0.1.15 for this: tvm_tune.py);
the tuning database (JSON, structural workload keys) lives under `cache_dir` and is shared and reused: a task tuned
with at least `trials` trials at the same target is not tuned again (see tvm_tune.py). With `isolate` (the
default) the search runs in a child process, so that a crash in TVM's native code is a BackendError.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
import time
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxscale.optimize.backends.base import (
    BackendBase,
    BackendError,
    Capability,
    import_optional,
    module_available,
    output_spec,
)
from fxscale.optimize.backends.registry import register_backend
from fxscale.optimize.backends.tvm_tune import default_cache_dir, host_target, tune_and_apply, tune_in_subprocess


def _import_relax(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Any:
    from tvm.relax.frontend.torch import from_exported_program
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(gm, tuple(inputs), strict=False)
        return from_exported_program(program)
    except Exception as exc:  # noqa: BLE001 - an import failure makes the partition unsupported
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BackendError(f"TVM cannot import the partition: {type(exc).__name__}: {msg}") from exc


@register_backend
class TvmBackend(BackendBase):
    """TVM Relax VM on llvm; `trials` > 0 tunes with MetaSchedule first (see the module docstring)."""

    name = "tvm"
    layout = "contiguous"
    DIST = "apache-tvm"
    PROBE_BY_COMPILING = True
    SETTINGS = {"trials": 0, "cache_dir": None, "time_budget_s": None, "threads": 1, "target": "llvm",
                "trials_per_iter": 16, "seed": 0, "population": 256, "isolate": True}

    def available(self) -> Capability:
        cap = module_available("tvm", "tvm", self.name)
        if cap and int(self.settings["trials"]) > 0:  # MetaSchedule needs psutil and xgboost too
            for mod in ("psutil", "xgboost"):
                sub = module_available(mod, "tvm", "tvm (tuning)")
                if not sub:
                    return sub
        return cap

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.available():
            out["target"] = str(host_target(self.settings["target"], int(self.settings["threads"])))
        if int(self.settings["trials"]) > 0:
            out["cache_dir"] = str(self.cache_dir())
        return out

    def _time_budget(self) -> float | None:
        """Seconds this compile may search: the time_budget_s setting, cut to what tuning_deadline leaves."""
        budget = self.settings["time_budget_s"]
        if self.tuning_deadline is not None:
            left = max(0.0, self.tuning_deadline - time.monotonic())
            budget = left if budget is None else min(float(budget), left)
        return budget

    def cache_dir(self) -> Path:
        return Path(self.settings["cache_dir"]) if self.settings["cache_dir"] else default_cache_dir()

    def _compile(self, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        tvm = import_optional("tvm", "tvm", self.name)
        from tvm import relax
        gm = gm.eval()
        _, spec, leaves = output_spec(gm, inputs)
        if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
            raise BackendError("TVM partitions must return one or more tensors")
        threads = int(self.settings["threads"])
        target = host_target(self.settings["target"], threads)
        mod = _import_relax(gm, inputs)
        trials, budget = int(self.settings["trials"]), self._time_budget()
        tuned: dict[str, Any] = {}
        if trials > 0 and self.settings["isolate"] and (budget is None or budget > 0):
            tuned = tune_in_subprocess(gm, inputs, target, trials=trials, cache_dir=self.cache_dir(),
                                       time_budget_s=budget,
                                       trials_per_iter=int(self.settings["trials_per_iter"]),
                                       seed=int(self.settings["seed"]), threads=threads,
                                       population=int(self.settings["population"]))
        try:
            mod, self.last_tuning = tune_and_apply(mod, target, trials=int(self.settings["trials"]),
                                                   cache_dir=self.cache_dir(),
                                                   time_budget_s=budget,
                                                   trials_per_iter=int(self.settings["trials_per_iter"]),
                                                   seed=int(self.settings["seed"]), threads=threads,
                                                   population=int(self.settings["population"]),
                                                   search=not self.settings["isolate"])
            if tuned:  # the child tuned; this process only applied its database
                self.last_tuning = {**tuned, "reused": [n for n in self.last_tuning["reused"]
                                                        if n not in tuned.get("tuned", [])]}
            vm = relax.VirtualMachine(relax.build(mod, target=target), tvm.cpu())
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BackendError(f"TVM cannot build the partition: {type(exc).__name__}: {msg}") from exc
        tvm.get_global_func("runtime.config_threadpool")(0, threads)
        main = vm["main"]
        from_dlpack = tvm.runtime.from_dlpack

        def aligned(a: torch.Tensor) -> torch.Tensor:
            """TVM's DLPack import needs 64-byte aligned data: a view into another tensor (a slice, a chunk of a
            split, an output of the previous partition) is copied into a fresh allocation when it is not."""
            a = a.detach().contiguous()
            return a if a.data_ptr() % 64 == 0 else a.clone()

        def run(*args: torch.Tensor) -> Any:
            out = main(*(from_dlpack(aligned(a)) for a in args))
            flat = list(out) if not hasattr(out, "numpy") else [out]
            return pytree.tree_unflatten([torch.from_dlpack(t) for t in flat], spec)

        try:
            run(*inputs)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"TVM cannot run the partition: {type(exc).__name__}: {exc}") from exc
        return run
