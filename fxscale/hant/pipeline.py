"""`fxscale accelerate`: teacher, sites and candidates, latency table, phase-1 distillation, scores, then
phase 2 and the comparison (fxscale/hant/methods.py).

Stages write OUT/stages/<stage>.json atomically (fxscale.scaling.stages.stage_cached), keyed by a hash of the
settings they read and their upstream keys (AccelerateConfig.stage_keys), so rerunning the same command resumes;
every distilled pair also keeps its own checkpoint under OUT/stages/pairs, so an interrupted phase 1 resumes pair by
pair. Final files are written by fxscale/hant/api.py through fxscale.artifacts.staged_output.
"""
from __future__ import annotations

import copy
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
from torch import nn

import fxscale
from fxscale.hant.assemble import assemble, extract_site
from fxscale.hant.candidates import CandidateError, create_candidate, default_grid
from fxscale.hant.config import AccelerateConfig
from fxscale.hant.distill import DistillConfig, PairJob, capture_sites, distill, safe_name, save_activations
from fxscale.hant.latency import LatencyTable, check_additivity, measure_table, protocol
from fxscale.hant.scores import evaluate_swap
from fxscale.hant.sites import Site, find_pairs, find_sites
from fxscale.scaling.stages import load_weights, save_weights, stage_cached


def _progress_bar(enabled: bool, label: str) -> Callable[[int, int], None]:
    """A one-line stderr counter (only on a terminal)."""
    if not enabled or not sys.stderr.isatty():
        return lambda _d, _t: None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\r{label}: {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


class Accelerator:
    """One HANT run over a teacher, a dataset and a target, with its stage folder under `out`."""

    def __init__(self, cfg: AccelerateConfig, out: str | os.PathLike, model: Optional[nn.Module] = None,
                 log: Callable[[str], None] = print) -> None:
        cfg.validate()
        from fxscale.data import get_dataset
        from fxscale.hw.targets import get_target
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.bundle = get_dataset(cfg.data, **dict(cfg.data_kw))
        opts = {"threads": cfg.threads} if cfg.target in ("ort", "torch") else {}
        self.target = get_target(cfg.target, **opts)
        c, h, w = self.bundle.input_shape
        self.resolution: tuple[int, int] = (cfg.resolution, cfg.resolution) if cfg.resolution else (h, w)
        self.x = torch.zeros(1, c, *self.resolution)
        self.stages = self.out / "stages"
        self.keys = cfg.stage_keys()
        self.user_model = model is not None
        self.gm = self._trace(model)
        self.teacher_info = self._teacher()
        self.sites: list[Site] = find_sites(self.gm)
        if not self.sites:
            raise CandidateError(f"model {cfg.model!r} has no site HANT can replace (no conv-norm-act layer, residual "
                                 "block or transformer block was found)")
        # multi-site candidates: (index of the first site, merged region) for consecutive sites that chain
        self.pairs: list[tuple[int, Site]] = find_pairs(self.gm, self.sites) if cfg.multi_site else []
        self.all_sites: list[Site] = self.sites + [p for _, p in self.pairs]
        self.site_map = {s.name: s for s in self.all_sites}
        self.modules = self._candidates()

    # ---- teacher -------------------------------------------------------------------------------------
    def _trace(self, model: Optional[nn.Module]) -> fx.GraphModule:
        from fxscale.cli_checks import torch_noise_captured
        from fxscale.modelspec import adapt_stem, build_model
        net = model if model is not None else build_model(self.cfg.model, num_classes=self.bundle.num_classes)
        if model is None:
            net = adapt_stem(net, int(self.bundle.input_shape[0]), name=self.cfg.model, data=self.cfg.data,
                             adaptable=True, log=self.log)
        torch.manual_seed(self.cfg.seed)
        with torch_noise_captured():
            return fxscale.trace(copy.deepcopy(net).eval(), self.x)

    def _teacher(self) -> dict[str, Any]:
        """Train the teacher (a zoo / spec model, teacher_epochs > 0) or take it as given; its accuracies."""
        from fxscale.train import TrainConfig, evaluate, train
        cfg, path = self.cfg, self.stages / "teacher.pt"

        def run() -> dict[str, Any]:
            epochs = 0 if self.user_model else cfg.teacher_epochs
            if epochs:
                self.log(f"[teacher] training {cfg.model} for {epochs} epochs at {self.resolution}")
                train(self.gm, self.bundle, TrainConfig(epochs=epochs, lr=cfg.teacher_lr, optimizer="adam",
                                                        schedule="cosine", weight_decay=0.0, seed=cfg.seed,
                                                        device="cpu", threads=cfg.threads, label_smoothing=0.0),
                      self.resolution)
            self.stages.mkdir(parents=True, exist_ok=True)
            save_weights(self.gm.state_dict(), path)
            self.gm.eval()
            return {"epochs": epochs, "val_acc": evaluate(self.gm, self.bundle, "val", self.resolution),
                    "test_acc": evaluate(self.gm, self.bundle, "test", self.resolution)}

        info = stage_cached(self.stages, "teacher", self.keys["teacher"], run, self.log,
                            lambda _v: None if path.is_file() else f"teacher weights {path} are missing")
        self.gm.load_state_dict(load_weights(path))
        self.gm.eval()
        self.log(f"[teacher] val top-1 {info['val_acc']:.4f}, test top-1 {info['test_acc']:.4f}")
        return info

    # ---- candidates ----------------------------------------------------------------------------------
    def _candidates(self) -> dict[str, dict[str, nn.Module]]:
        """site -> spec -> module (legal specs only), built deterministically from the seed."""
        out: dict[str, dict[str, nn.Module]] = {}
        for i, site in enumerate(self.all_sites):
            sub = extract_site(self.gm, site)
            if site.kind == "pair":  # one new block for two sites (validate refuses teacher/prune specs here)
                specs = list(self.cfg.multi_site)
            else:
                specs = list(self.cfg.candidates) if self.cfg.candidates is not None else default_grid(site)
            out[site.name] = {}
            for j, spec in enumerate(specs):
                torch.manual_seed(self.cfg.seed * 100003 + i * 1009 + j)
                try:
                    out[site.name][spec] = create_candidate(spec, site, sub)
                except CandidateError:
                    continue
        n = sum(len(v) for v in out.values())
        multi = (f"; {len(self.pairs)} two-site regions with {sum(len(out[p.name]) for _, p in self.pairs)} "
                 "multi-site candidates") if self.pairs else ""
        self.log(f"[sites] {len(self.sites)} sites, {n} (site, candidate) pairs{multi}")
        return out

    def assemble(self, choice: dict[str, str]) -> fx.GraphModule:
        """The teacher with each site's chosen module swapped in (modules shared, not copied)."""
        return assemble(self.gm, self.site_map, {s: self.modules[s][spec] for s, spec in choice.items()
                                                 if spec != "teacher"})

    # ---- latency table -------------------------------------------------------------------------------
    def latency(self) -> LatencyTable:
        cfg = self.cfg
        proto = protocol(self.target, runs=cfg.runs, warmup=cfg.warmup, rounds=cfg.rounds)

        def run() -> dict[str, Any]:
            if cfg.latency_profile:
                return self._predicted_table()
            self.log(f"[latency] timing {sum(len(v) for v in self.modules.values())} candidates and the teacher on "
                     f"{cfg.target}")
            table = measure_table(self.target, self.gm, tuple(self.x.shape), self.all_sites, self.modules, proto,
                                  progress=_progress_bar(cfg.progress, "latency"))
            if cfg.additivity:
                table.additivity = check_additivity(self.target, self.assemble, table, tuple(self.x.shape), proto,
                                                    n=cfg.additivity, seed=cfg.seed)
            return table.to_dict()
        table = LatencyTable.from_dict(stage_cached(self.stages, "latency", self.keys["latency"], run, self.log))
        add = table.additivity
        self.log(f"[latency] teacher {table.teacher_ms:.4f} ms, L_fixed {table.fixed_ms:.4f} ms" +
                 (f"; additivity error mean {add['mean_abs_rel_error']:.1%}, max {add['max_abs_rel_error']:.1%}"
                  if add else ""))
        return table

    def _predicted_table(self) -> dict[str, Any]:
        from fxscale.hant.latency import predict_table, predicted_additivity
        from fxscale.hw.predictor import LatencyPredictor
        cfg = self.cfg
        self.log(f"[latency] predicting {sum(len(v) for v in self.modules.values())} candidates and the teacher from "
                 f"the device profile {cfg.latency_profile}")
        pred = LatencyPredictor(cfg.latency_profile)
        table = predict_table(pred, self.gm, tuple(self.x.shape), self.all_sites, self.modules,
                              progress=_progress_bar(cfg.progress, "latency"))
        if cfg.additivity:
            table.additivity = predicted_additivity(pred, self.assemble, table, tuple(self.x.shape),
                                                    n=cfg.additivity, seed=cfg.seed)
        return table.to_dict()

    # ---- phase 1 -------------------------------------------------------------------------------------
    def _batches(self, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from fxscale.data import loader
        return list(loader(self.bundle, split, 256, self.resolution, shuffle=False))

    def _pair_path(self, site: str, spec: str) -> Path:
        return self.stages / "pairs" / safe_name(site) / f"{safe_name(spec)}.pt"

    def distill(self, executor: Any = None) -> dict[str, Any]:
        """Train every pair (resuming finished ones) and load the trained weights into self.modules."""
        cfg = self.cfg
        dcfg = DistillConfig(epochs=cfg.distill_epochs, lr=cfg.distill_lr, batch_size=cfg.batch_size, seed=cfg.seed,
                             max_samples=cfg.distill_samples, threads=cfg.threads)

        def run() -> dict[str, Any]:
            train = capture_sites(self.gm, self.all_sites, self._batches("train"), cfg.distill_samples)
            val = capture_sites(self.gm, self.all_sites, self._batches("val"), cfg.distill_samples)
            acts = save_activations(self.stages / "acts", train, val)
            del train, val
            jobs = [PairJob(s, spec, m, acts[s], str(self._pair_path(s, spec)),
                            dcfg if spec != "teacher" else DistillConfig(**{**dcfg.__dict__, "epochs": 0}),
                            key=self.keys["distill"]) for s, specs in self.modules.items() for spec, m in specs.items()]
            self.log(f"[distill] {len(jobs)} pairs x {cfg.distill_epochs} epochs on the {cfg.executor} executor")
            ex = executor if executor is not None else self._executor()
            with (ex if hasattr(ex, "__enter__") else nullcontext(ex)):
                results = distill(jobs, ex, _progress_bar(cfg.progress, "distill"))
            for f in (self.stages / "acts").glob("*.pt"):
                f.unlink()
            out: dict[str, Any] = {}
            for r in results:
                out.setdefault(r.site, {})[r.spec] = {"losses": r.losses, "val_nmse": r.val_nmse,
                                                      "seconds": r.seconds, "resumed": r.resumed}
            return out

        def valid(value: dict[str, Any]) -> Optional[str]:
            missing = [self._pair_path(s, p) for s, d in value.items() for p in d if not self._pair_path(s, p).is_file()]
            return f"pair checkpoint {missing[0]} is missing" if missing else None

        summary = stage_cached(self.stages, "distill", self.keys["distill"], run, self.log, valid)
        for site, specs in summary.items():
            for spec in specs:
                saved = torch.load(self._pair_path(site, spec), map_location="cpu", weights_only=True)
                self.modules[site][spec].load_state_dict(saved["state_dict"])
                self.modules[site][spec].eval()
        secs = [v["seconds"] for d in summary.values() for v in d.values() if not v["resumed"]]
        if secs:
            self.log(f"[distill] {len(secs)} pairs trained, {sum(secs) / len(secs):.2f} s per pair on average")
        return summary

    def _executor(self) -> Any:
        from fxscale.executor import get_executor
        kw = dict(self.cfg.executor_kw)
        if self.cfg.executor == "local":
            kw.setdefault("workers", self.cfg.workers)
        return get_executor(self.cfg.executor, **kw)

    # ---- scores --------------------------------------------------------------------------------------
    def scores(self) -> dict[str, Any]:
        """Teacher val loss/acc, and per pair the val loss/acc with only that site swapped."""
        def run() -> dict[str, Any]:
            val = self._batches("val")
            base = evaluate_swap(self.gm, val)
            pairs: dict[str, Any] = {}
            for site in self.all_sites:
                for spec, module in self.modules[site.name].items():
                    e = base if spec == "teacher" else evaluate_swap(self.gm, val, site, module)
                    pairs.setdefault(site.name, {})[spec] = {"loss": e.loss, "acc": e.acc}
            return {"teacher": {"loss": base.loss, "acc": base.acc}, "pairs": pairs}
        self.log("[scores] evaluating every single-site swap on the validation split")
        return stage_cached(self.stages, "scores", self.keys["scores"], run, self.log)


__all__ = ["Accelerator"]
