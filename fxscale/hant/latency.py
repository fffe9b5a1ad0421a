"""The latency table: every (site, candidate) timed on the target at the site's input shape, plus L_fixed (or, with
a device profile, predicted by the latency predictor: `predict_table`).

Everything goes through the one timing engine (`fxscale.hw.timing.measure_interleaved`, interleaved rounds, the
empty call subtracted). The whole teacher is timed in the same session as its sites, so
``L_fixed = L(teacher) - sum(L(teacher site))`` is the part of the network no site covers (stem glue, pooling, the
head, call overhead); an assembly is predicted as ``L_fixed + sum(L(chosen candidate))``. `check_additivity`
times random assemblies and reports how far that prediction is from their measured latency.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch.fx as fx
from torch import nn

from fxscale.hant.sites import PAIR_SEP, Site, pair_parts


def protocol(target: Any, runs: int = 20, warmup: int = 5, rounds: int = 5) -> Any:
    """The timing protocol of the table: batch 1, median, alternating rounds, empty call subtracted."""
    from fxscale.hw.base import TimingProtocol
    from fxscale.hw.timing import resolve_clock
    return TimingProtocol(warmup=warmup, runs=runs, batch=1, statistic="median", rounds=rounds,
                          order="alternating", subtract_overhead=True, clock=resolve_clock(target, "auto"))


@dataclass
class LatencyTable:
    """ms per (site, spec), the teacher's whole latency and L_fixed (all measured in one session)."""

    table: dict[str, dict[str, float]]
    teacher_ms: float
    fixed_ms: float
    additivity: dict[str, Any] = field(default_factory=dict)
    source: str = "measured"  # or "predicted" (predict_table)

    def predict(self, choice: Mapping[str, str]) -> float:
        """L_fixed + the chosen candidates' latencies (sites not in `choice` keep the teacher; a multi-site key
        ``"a+b"`` in `choice` replaces its sites)."""
        covered = {part for key in choice if PAIR_SEP in key for part in pair_parts(key)}
        return self.fixed_ms + sum(self.table[s][spec] for s, spec in choice.items() if PAIR_SEP in s) + sum(
            self.table[s].get(choice.get(s, "teacher"), 0.0) for s in self.table
            if PAIR_SEP not in s and s not in covered)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "teacher_ms": self.teacher_ms, "fixed_ms": self.fixed_ms,
                "additivity": self.additivity, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyTable":
        return cls({k: dict(v) for k, v in d["table"].items()}, float(d["teacher_ms"]), float(d["fixed_ms"]),
                   dict(d.get("additivity") or {}), str(d.get("source", "measured")))


def measure_table(target: Any, teacher: nn.Module, input_shape: Sequence[int], sites: Sequence[Site],
                  modules: Mapping[str, Mapping[str, nn.Module]], proto: Any,
                  progress: Optional[Callable[[int, int], None]] = None) -> LatencyTable:
    """Time the teacher and every (site, spec) module in one interleaved session; L_fixed from the teacher's sites."""
    from fxscale.hw.timing import measure_interleaved
    items: list[tuple[Any, Sequence[int]]] = [(teacher, tuple(input_shape))]
    keys: list[tuple[str, str]] = []
    for site in sites:
        for spec, module in modules[site.name].items():
            items.append((module, (1, *site.in_shape[1:])))
            keys.append((site.name, spec))
    timings = measure_interleaved(target, items, proto, progress=progress)
    table: dict[str, dict[str, float]] = {s.name: {} for s in sites}
    for (site, spec), t in zip(keys, timings[1:]):
        table[site][spec] = float(t.value)
    teacher_ms = float(timings[0].value)
    return LatencyTable(table, teacher_ms, teacher_ms - _teacher_sites(table))


def predict_table(predictor: Any, teacher: fx.GraphModule, input_shape: Sequence[int], sites: Sequence[Site],
                  modules: Mapping[str, Mapping[str, nn.Module]],
                  progress: Optional[Callable[[int, int], None]] = None) -> LatencyTable:
    """The table from a latency predictor (fxscale.hw.predictor.LatencyPredictor on a device profile) instead of
    timing: the teacher and every (site, spec) module traced at its input shape and predicted; L_fixed as in
    measure_table. Used where timing every pair is too slow or the target is another device."""
    import torch

    import fxscale
    teacher_ms = float(predictor.predict(fxscale.trace(teacher, torch.zeros(*input_shape))))
    # a separately predicted module carries the profile's per-model constant (call overhead); it is counted once,
    # in the teacher, so each module's prediction sheds it (an identity `skip` then costs nothing)
    const = float(predictor.predict(fxscale.trace(nn.Identity(), torch.zeros(*input_shape))))
    table: dict[str, dict[str, float]] = {s.name: {} for s in sites}
    total, done = sum(len(modules[s.name]) for s in sites), 0
    for site in sites:
        x = torch.zeros(1, *site.in_shape[1:])
        for spec, module in modules[site.name].items():
            table[site.name][spec] = max(0.0, float(predictor.predict(fxscale.trace(module.eval(), x))) - const)
            done += 1
            if progress:
                progress(done, total)
    return LatencyTable(table, teacher_ms, teacher_ms - _teacher_sites(table), source="predicted")


def _teacher_sites(table: Mapping[str, Mapping[str, float]]) -> float:
    """The summed latency of the teacher's own sites (multi-site entries have no teacher: their sites do)."""
    return sum(specs["teacher"] for s, specs in table.items() if PAIR_SEP not in s)


def predicted_additivity(predictor: Any, assemble_fn: Callable[[Mapping[str, str]], fx.GraphModule],
                         table: LatencyTable, input_shape: Sequence[int], n: int = 3, seed: int = 0) -> dict[str, Any]:
    """check_additivity against the predictor's whole-model prediction of each random assembly (nothing timed)."""
    import torch

    import fxscale
    choices = _random_choices(table, n, seed)
    wholes = [float(predictor.predict(fxscale.trace(assemble_fn(c), torch.zeros(*input_shape)))) for c in choices]
    return {**_additivity(table, choices, wholes), "predicted": True}


def _random_choices(table: LatencyTable, n: int, seed: int) -> list[dict[str, str]]:
    """`n` random assemblies: a random spec per site, and where a multi-site entry starts at a site, that entry
    instead with probability 1/2 (so every site is covered exactly once)."""
    rng = random.Random(seed)
    singles = [s for s in table.table if PAIR_SEP not in s]
    starts: dict[str, list[str]] = {}
    for key in table.table:
        if PAIR_SEP in key:
            starts.setdefault(pair_parts(key)[0], []).append(key)
    out = []
    for _ in range(n):
        choice: dict[str, str] = {}
        i = 0
        while i < len(singles):
            s = singles[i]
            pairs = [k for k in starts.get(s, []) if table.table[k]]
            if pairs and rng.random() < 0.5:
                key = rng.choice(pairs)
                choice[key] = rng.choice(sorted(table.table[key]))
                i += len(pair_parts(key))
                continue
            choice[s] = rng.choice(sorted(table.table[s]))
            i += 1
        out.append(choice)
    return out


def _additivity(table: LatencyTable, choices: Sequence[Mapping[str, str]], wholes: Sequence[float]) -> dict[str, Any]:
    """The table's prediction of each assembly against its whole-model latency: mean and max relative error."""
    rows = []
    for c, whole in zip(choices, wholes):
        pred = table.predict(c)
        rows.append({"predicted_ms": pred, "measured_ms": whole,
                     "rel_error": (pred - whole) / whole if whole > 0 else float("nan")})
    errs = [abs(r["rel_error"]) for r in rows]
    return {"n": len(rows), "mean_abs_rel_error": statistics.fmean(errs) if errs else float("nan"),
            "max_abs_rel_error": max(errs) if errs else float("nan"), "assemblies": rows}


def check_additivity(target: Any, assemble_fn: Callable[[Mapping[str, str]], fx.GraphModule],
                     table: LatencyTable, input_shape: Sequence[int], proto: Any, n: int = 3,
                     seed: int = 0) -> dict[str, Any]:
    """Time `n` random assemblies and compare with the table's prediction: mean and max relative error."""
    from fxscale.hw.timing import measure_interleaved
    choices = _random_choices(table, n, seed)
    timings = measure_interleaved(target, [(assemble_fn(c), tuple(input_shape)) for c in choices], proto)
    return _additivity(table, choices, [float(t.value) for t in timings])


__all__ = ["LatencyTable", "check_additivity", "measure_table", "predict_table", "predicted_additivity", "protocol"]
