"""Stage bookkeeping of `fxscale scale`: which settings key each stage, and the on-disk cache of stage results.

A stage result lives in out/stages/<stage>.json as {"key", "value"}, written atomically. On load a file that is
truncated, not JSON or not of that shape is named in the log, discarded and recomputed; a stage may also check
that what it left beside its JSON (trained weights) is still there and loadable.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

# stage -> (ScaleConfig fields it reads itself, stages whose results it consumes); upstream stages come first.
# "timing", "training" and "budget" are shared settings / derived values with keys but no stage file.
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "input": (("model", "data", "data_kw", "leaf"), ()),  # the traced model and dataset every stage works on
    "timing": (("target", "threads", "runs", "warmup", "rounds", "trtexec", "inference_plan"),
               ()),  # Pipeline.measure (target "hybrid" times each model under the inference plan)
    "training": (("batch_size", "lr", "seeds", "split_per_seed", "device", "start", "weights", "warm_fraction",
                  "noise", "distill"),
                 ()),  # Pipeline.train_cfg (seeds[0] for searches); start=trained: every training starts warm
    "backoff": (("ci_halfwidth", "max_rounds"), ()),  # measured acceptance (scaling.backoff) of every method
    "latency_model": (("profile",), ("input", "timing")),
    "budget": (("latency_budget", "memory_budget"), ("input", "latency_model")),
    "alpha": (("alphas", "alpha", "flops_scale", "align", "search_epochs", "search_s", "flops_tol"),
              ("input", "training", "budget")),  # s is searched against the budget
    "importance_sample": (("sample_epochs",), ("input", "training")),  # one sampled width configuration
    "importance": (("samples", "sample_mode", "sample_seeds", "importance_holdout", "importance_norm",
                    "sample_max_epochs"),
                   ("importance_sample", "alpha")),  # sampled at the alpha's resolution (scaling.samples)
    "search": (("rule", "stride", "align", "variants"), ("latency_model", "budget", "alpha", "importance", "timing",
                                                          "backoff")),
    "methods": (("methods", "baseline_align", "flops_scale"), ("latency_model", "budget", "importance", "backoff")),
    "train": (("epochs",), ("training", "search", "methods")),
    "measure": ((), ("timing", "search", "methods", "backoff")),
}
# how the work runs, not what it computes (static_batch only changes how the final ONNX / model.pt2 are exported)
UNKEYED = ("workers", "executor", "ray_address", "progress", "max_memory", "static_batch")


def _file_digest(path: Path) -> Optional[str]:
    """sha256 of a file's bytes; None when missing or unreadable (its stage then raises an error naming it)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def stage_keys(cfg: Any) -> dict[str, str]:
    """The key of every STAGES entry: a hash of its own fields' values and its upstream stages' keys."""
    values = asdict(cfg)
    for name in ("profile", "weights"):  # a rewritten file changes the latency model / the warm start
        if values.get(name):             # under the same path: key its content, not only its name
            values[name] = {"path": str(values[name]), "sha256": _file_digest(Path(values[name]))}
    keys: dict[str, str] = {}
    for name, (fields_, upstream) in STAGES.items():
        blob = json.dumps({"stage": name, "fields": {f: values[f] for f in fields_},
                           "upstream": {u: keys[u] for u in upstream}}, sort_keys=True, default=str)
        keys[name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return keys


def downstream(stage: str) -> set[str]:
    """Every stage that consumes `stage`'s result, directly or through other stages."""
    out: set[str] = set()
    for name, (_fields, upstream) in STAGES.items():  # upstream stages come first, so one pass suffices
        if stage in upstream or out & set(upstream):
            out.add(name)
    return out


def atomic_write(path: Path, text: str) -> None:
    """Write a text file through a temporary name in the same folder, so a reader never sees half of it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # an error or Ctrl-C while writing: no stray temporary file
        tmp.unlink(missing_ok=True)
        raise


def stage_cached(root: Path, name: str, key: str, fn: Callable[[], dict[str, Any]], log: Callable[[str], None],
                 valid: Optional[Callable[[dict[str, Any]], Optional[str]]] = None) -> dict[str, Any]:
    """The stage's saved value when its key matches and it is intact, else fn() (saved atomically)."""
    path = root / f"{name}.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict) or "key" not in saved or "value" not in saved:
                raise ValueError("not a stage record")
        except (ValueError, OSError, UnicodeDecodeError) as e:
            log(f"[{name}] discarding the corrupt stage file {path} ({type(e).__name__}: {e}); recomputing")
            saved = None
        if saved is not None and saved.get("key") == key:
            problem = valid(saved["value"]) if valid is not None else None
            if problem is None:
                log(f"[{name}] resumed from {path}")
                return saved["value"]
            log(f"[{name}] discarding {path}: {problem}; recomputing")
    value = fn()
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"key": key, "value": value}, indent=1, default=float))
    return value


def save_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """torch.save through a temporary name (an interrupted save leaves no truncated file under `path`)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save(dict(state_dict), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved by save_weights (tensors only: weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def weights_problem(folder: Path, results: Mapping[str, Any], seeds: Sequence[int]) -> Optional[str]:
    """Why the trained weights of a finished train stage are unusable (each missing or unreadable file named), or
    None."""
    problems = []
    for name in results:
        for seed in seeds:
            path = folder / f"{name}_s{seed}.pt"
            if not path.is_file():
                problems.append(f"trained weights {path} are missing")
                continue
            try:
                load_weights(path)
            except Exception as e:  # noqa: BLE001 - any unreadable file: retrain
                problems.append(f"trained weights {path} are unreadable ({type(e).__name__})")
    return "; ".join(problems) or None
