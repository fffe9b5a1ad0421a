"""AccelerateConfig: every setting of `fxscale accelerate`, validated before any data or model is touched."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from fxscale.errors import PlanError
from fxscale.hant.scores import SCORES

BASELINES = ("uniform", "taylor", "random", "greedy", "hacscale", "hant_scale")

# stage -> (config fields it reads, upstream stages); a changed field reruns its stage and every stage below it
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "teacher": (("model", "data", "data_kw", "resolution", "teacher_epochs", "teacher_lr", "seed"), ()),
    "latency": (("target", "threads", "runs", "warmup", "rounds", "candidates", "multi_site", "additivity",
                 "latency_profile"), ("teacher",)),
    "distill": (("candidates", "multi_site", "distill_epochs", "distill_lr", "distill_samples", "batch_size"),
                ("teacher",)),
    "scores": ((), ("distill",)),
    "results": (("latency_budget", "score", "finetune_epochs", "finetune_lr", "seeds", "baselines", "frontier"),
                ("latency", "scores")),
}


def parse_budget(value: Any, label: str = "latency_budget") -> tuple[str, float]:
    """("ratio", r) for '0.6x' / 0.6, ("ms", v) for '2.5ms'; PlanError otherwise."""
    text = str(value).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(x|ms)?", text)
    if not m:
        raise PlanError(f"{label} must be a ratio of the teacher's latency like 0.6x, or a latency like 2.5ms; "
                        f"got {value!r}")
    v = float(m.group(1))
    if v <= 0:
        raise PlanError(f"{label} must be > 0, got {value!r}")
    return ("ms" if m.group(2) == "ms" else "ratio"), v


@dataclass(frozen=True)
class AccelerateConfig:
    """Settings of one HANT run (see `fxscale accelerate --help` for each)."""

    model: str = "digits_resnet"
    data: str = "digits"
    data_kw: Mapping[str, Any] = field(default_factory=dict)
    resolution: Optional[int] = None  # square input size; None: the data's own
    target: str = "ort"
    threads: int = 1
    latency_profile: Optional[str] = None  # device profile: predict the latency table instead of timing every pair
    latency_budget: str = "0.6x"
    candidates: Optional[tuple[str, ...]] = None  # None: candidates.default_grid per site
    multi_site: tuple[str, ...] = ()  # specs of one block replacing two consecutive sites (depth reduction); (): none
    score: str = "dloss"
    teacher_epochs: int = 10  # train a zoo/spec teacher first (0: use its weights as built)
    teacher_lr: float = 2e-3
    distill_epochs: int = 3
    distill_lr: float = 2e-3
    distill_samples: int = 1024
    finetune_epochs: int = 2
    finetune_lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    seeds: tuple[int, ...] = (0,)
    baselines: tuple[str, ...] = BASELINES
    frontier: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    additivity: int = 3
    runs: int = 20
    warmup: int = 5
    rounds: int = 5
    executor: str = "local"
    workers: int = 1
    executor_kw: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True

    def validate(self, labels: Optional[Mapping[str, str]] = None) -> None:
        """PlanError naming the first bad setting (by its CLI option when `labels` maps field -> option)."""
        lab = dict(labels or {})

        def name(f: str) -> str:
            return lab.get(f, f)
        parse_budget(self.latency_budget, name("latency_budget"))
        checks = [("score", self.score in SCORES, f"must be one of {', '.join(SCORES)}"),
                  ("threads", self.threads >= 1, "must be >= 1"), ("workers", self.workers >= 1, "must be >= 1"),
                  ("batch_size", self.batch_size >= 1, "must be >= 1"),
                  ("distill_samples", self.distill_samples >= 1, "must be >= 1"),
                  ("runs", self.runs >= 1, "must be >= 1"), ("rounds", self.rounds >= 1, "must be >= 1"),
                  ("warmup", self.warmup >= 0, "must be >= 0"), ("additivity", self.additivity >= 0, "must be >= 0"),
                  ("seeds", len(self.seeds) >= 1, "must name at least one seed"),
                  ("resolution", self.resolution is None or self.resolution >= 1, "must be >= 1")]
        checks += [(f, getattr(self, f) >= 0, "must be >= 0")
                   for f in ("teacher_epochs", "distill_epochs", "finetune_epochs")]
        checks += [(f, getattr(self, f) > 0, "must be > 0") for f in ("teacher_lr", "distill_lr", "finetune_lr")]
        checks += [("frontier", all(0 < b for b in self.frontier), "budgets must be > 0")]
        if self.latency_profile is not None:
            from pathlib import Path
            checks.append(("latency_profile", Path(self.latency_profile).is_file(), "is not a file"))
        bad = [b for b in self.baselines if b not in BASELINES]
        checks.append(("baselines", not bad, f"has unknown {bad[:1]}; valid: {', '.join(BASELINES)}"))
        if self.candidates is not None:
            from fxscale.hant.candidates import candidate_prefixes, parse_spec
            unknown = [c for c in self.candidates if parse_spec(c)[0] not in candidate_prefixes()]
            checks.append(("candidates", not unknown and "teacher" in self.candidates,
                           f"has unknown {unknown[:1]}; valid prefixes: {', '.join(candidate_prefixes())}"
                           if unknown else "must include 'teacher'"))
        if self.multi_site:
            from fxscale.hant.candidates import candidate_prefixes, parse_spec
            bad_ms = [c for c in self.multi_site if parse_spec(c)[0] not in candidate_prefixes()
                      or parse_spec(c)[0] in ("teacher", "prune")]
            checks.append(("multi_site", not bad_ms, f"has {bad_ms[:1]}: a multi-site candidate is a new block "
                           f"(not teacher or prune_x*); valid prefixes: {', '.join(candidate_prefixes())}"))
        for f, ok, msg in checks:
            if not ok:
                raise PlanError(f"{name(f)} {msg}, got {getattr(self, f)!r}")

    def stage_keys(self) -> dict[str, str]:
        """A hash per stage of its own fields and its upstream keys."""
        values = asdict(self)
        keys: dict[str, str] = {}
        for stage, (fields_, upstream) in STAGES.items():
            blob = json.dumps({"stage": stage, "fields": {f: values[f] for f in fields_},
                               "upstream": {u: keys[u] for u in upstream}}, sort_keys=True, default=str)
            keys[stage] = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return keys


__all__ = ["AccelerateConfig", "BASELINES", "STAGES", "parse_budget"]
