"""The timm part of the zoo coverage sweep (``benchmarks/zoo_coverage.py --zoo timm``).

Model list: one representative per timm architecture family (a family is a ``timm.models`` module, as
``timm.list_modules()`` names them), the smallest variant of the family with at most TIMM_PARAM_CAP parameters,
random init (TIMM_FAMILIES; a few families keep two or three variants that exercise different constructs).
Families without such a model are listed in TIMM_EXCLUDED with the reason. Inputs are TIMM_SIZE px except the
documented TIMM_INPUT sizes.

Stages per model: build -> trace -> analyze -> widen (every scalable group grown x1..x2, or x2 where
LayerNorm/GroupNorm/attention spans channels; init="preserve"; where ``ChannelGraph.preserve_exact`` claims the
plan exact, the output must match in float64 to EXACT_REL_TOL, else the stage fails) -> narrow (x0.5..x1,
init="prune") -> resolution (the widened widths at x1.5) -> onnx (opset 17). Status ``ok`` passes every stage.
Where x1.5 has no consistent layout (fixed windows that the new map does not tile: GCViT, NesT) and fxscale's
PlanError names working sizes nearby, the resolution stage runs at the nearest named size above the traced one
(column ``resolution_note``). Status ``ok-refused`` passes every stage but resolution, where fxscale refused with a PlanError naming a node
whose *weights* span a spatial dimension (a token-mixing Linear over the token count, as in MLP-Mixer and
ResMLP): no resolution change exists for such a model without new weights, and refusing it is the correct
answer; the model is then exported to ONNX at its traced size. Any other resolution error is a failure.

Recorded beside the stages (columns):
- ``unsound``: scalable groups whose plan validated but whose transform or scaled forward failed, found by
  UNSOUND_PLANS random plans over random subsets of the scalable groups (and by the widen/narrow stages, which
  are such plans too); a failing plan is bisected to the single groups that fail alone. The sweep prints the total.
- ``cost_rel_diff``: |fxscale.cost(...).flops - FlopCounterMode flops| / FlopCounterMode flops, the larger of the
  traced model and the widened model at the new resolution (``fxscale.cost.reference_flops``: math SDPA backend);
  ``cost_ok`` is that value <= COST_REL_TOL.
- ``tp_status``: Torch-Pruning's generic recipe on the same model (DependencyGraph + MagnitudePruner, 50% of
  channels by L2 magnitude, the classifier ignored), ``ok`` when the pruned model still runs with the same output
  shape.
"""
from __future__ import annotations

import copy
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

TIMM_PARAM_CAP = 30_000_000
TIMM_SIZE = 64
TIMM_OPSET = 17
ONNX_REL_TOL = 1e-4  # max|onnx - torch| / max|torch|
EXACT_REL_TOL = 1e-5  # widen, in float64: max|grown - original| / max|original|
COST_REL_TOL = 1e-3
UNSOUND_PLANS = 3
# ops whose statistics or scores span a channel dim: preserve growth is exact under uniform x2 only (README)
SPANNING = {"layernorm", "groupnorm", "layer_norm_fn", "group_norm_fn", "mha", "sdpa", "matmul", "matmul_m",
            "einsum"}

# family (timm module) -> models. Families added with the full-family sweep get their smallest variant
# <= TIMM_PARAM_CAP (timm's test_* configs aside); the families of the first 66-model list keep the variants chosen
# there for their constructs (Conv2dSame, SE, StdConv2d, MixedConv, radix split attention, ...), several per family.
TIMM_FAMILIES: dict[str, tuple[str, ...]] = {
    "efficientnet": ("efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_b0", "mixnet_s", "tinynet_a",
                     "fbnetc_100", "mnasnet_small", "mobilenetv2_050"),
    "hardcorenas": ("hardcorenas_a",),
    "mobilenetv3": ("mobilenetv3_small_050", "mobilenetv3_large_100", "lcnet_050"),
    "resnet": ("resnet10t", "resnet18d", "seresnext26d_32x4d", "ecaresnet26t"),
    "resnetv2": ("resnetv2_50x1_bit",),
    "nfnet": ("nf_resnet26",),
    "sknet": ("skresnet18",),
    "resnest": ("resnest14d",),
    "rexnet": ("rexnet_100",),
    "ghostnet": ("ghostnet_050", "ghostnetv2_100"),
    "regnet": ("regnetx_002", "regnety_002"),
    "dla": ("dla34",),
    "densenet": ("densenet121",),
    "dpn": ("dpn68",),
    "cspnet": ("cspresnet50",),
    "byobnet": ("gernet_s", "repvgg_a0", "mobileone_s0"),
    "vovnet": ("ese_vovnet19b_dw",),
    "hrnet": ("hrnet_w18_small",),
    "res2net": ("res2net50_14w_8s",),
    "selecsls": ("selecsls42b",),
    "inception_v3": ("inception_v3",),
    "vision_transformer": ("vit_tiny_patch16_224",),
    "deit": ("deit_tiny_patch16_224",),
    "cait": ("cait_xxs24_224",),
    "xcit": ("xcit_nano_12_p16_224",),
    "convnext": ("convnext_atto", "convnextv2_atto"),
    "efficientformer": ("efficientformer_l1",),
    "efficientformer_v2": ("efficientformerv2_s0",),
    "mobilevit": ("mobilevit_xxs", "mobilevitv2_050"),
    "levit": ("levit_128s",),
    "pit": ("pit_ti_224",),
    "crossvit": ("crossvit_tiny_240",),
    "coat": ("coat_lite_tiny",),
    "convit": ("convit_tiny",),
    "metaformer": ("poolformer_s12",),
    "mlp_mixer": ("mixer_s32_224", "resmlp_12_224"),
    "edgenext": ("edgenext_xx_small",),
    "fastvit": ("fastvit_t8",),
    "efficientvit_mit": ("efficientvit_b0",),
    "tiny_vit": ("tiny_vit_5m_224",),
    "pvt_v2": ("pvt_v2_b0",),
    "twins": ("twins_svt_small",),
    "swin_transformer": ("swin_tiny_patch4_window7_224",),
    "starnet": ("starnet_s1",),
    "hgnet": ("hgnetv2_b0",),
    "byoanet": ("halonet26t",),
    "maxxvit": ("coatnet_nano_rw_224",),
    "convmixer": ("convmixer_768_32",),
    "cpubone": ("cpubone_nano",),
    "csatv2": ("csatv2",),
    "cspnext": ("cspnext_tiny",),
    "davit": ("davit_tiny",),
    "efficientvim": ("efficientvim_m1",),
    "efficientvit_msra": ("efficientvit_m0",),
    "eva": ("vit_tiny_patch16_dinov3_qkvb",),
    "fasternet": ("fasternet_t0",),
    "focalnet": ("focalnet_tiny_srf",),
    "gcvit": ("gcvit_xxtiny",),
    "hiera": ("hiera_tiny_224",),
    "hieradet_sam2": ("sam2_hiera_tiny",),
    "iformer": ("iformer_t",),
    "inception_next": ("inception_next_atto",),
    "lcnetv2": ("lcnetv2_small",),
    "lowformer": ("lowformer_e1",),
    "mambaout": ("mambaout_femto",),
    "mvitv2": ("mvitv2_tiny",),
    "nest": ("nest_tiny",),
    "rdnet": ("rdnet_tiny",),
    "repghost": ("repghostnet_050",),
    "repvit": ("repvit_m1",),
    "senet": ("legacy_seresnet18",),
    "sequencer": ("sequencer2d_s",),
    "shvit": ("shvit_s1",),
    "swiftformer": ("swiftformer_xs",),
    "swin_transformer_v2": ("swinv2_tiny_window8_256",),
    "swin_transformer_v2_cr": ("swinv2_cr_tiny_224",),
    "tnt": ("tnt_s_legacy_patch16_224",),
    "tresnet": ("tresnet_m",),
    "visformer": ("visformer_tiny",),
    "vision_transformer_hybrid": ("vit_tiny_r_s16_p8_224",),
    "vision_transformer_relpos": ("vit_srelpos_small_patch16_224",),
    "vitamin": ("vitamin_small_224",),
    "volo": ("volo_d1_224",),
    "xception": ("legacy_xception",),
    "xception_aligned": ("xception41p",),
}
# Documented exceptions to TIMM_SIZE: the smallest input each of these builds and runs at (img_size for models
# built for one size). inception_v3: 3x3 valid convs need > 64 px; efficientformer_l1: its last-stage attention
# biases are for a 7x7 map (224 px); crossvit: two patch sizes (12, 16) and a resize between branches, only at its
# own 240 px; halonet26t: 8x8 blocks at stride 32 (256 px); swin: windows of 7 at every stage (4 * 7 * 4 = 112 px).
TIMM_INPUT = {"inception_v3": 96, "efficientformer_l1": 224, "crossvit_tiny_240": 240, "halonet26t": 256,
              "swin_tiny_patch4_window7_224": 112}
# Families not swept, with the reason (a family is a timm.models module).
# Parameter counts as built here (num_classes=10); timm 1.0.31.
TIMM_EXCLUDED: dict[str, str] = {
    "beit": "parameter cap: smallest is beit_base_patch16_224, 85.8M",
    "deepseek_vit": "parameter cap: smallest is deepseek_vit_412m, 412M",
    "gemma4_vit": "parameter cap: smallest is gemma4_vit_167m_enc, 167M",
    "inception_resnet_v2": "parameter cap: inception_resnet_v2 only, 54.3M",
    "inception_v4": "parameter cap: inception_v4 only, 41.2M",
    "mobilenetv5": "parameter cap: smallest is mobilenetv5_300m_enc, 294M",
    "naflexvit": "parameter cap: smallest is naflexvit_so150m2_patch16_reg1_gap, 135M",
    "nasnet": "parameter cap: nasnetalarge only, 84.8M",
    "nextvit": "parameter cap: smallest is nextvit_small, 30.7M",
    "pnasnet": "parameter cap: pnasnet5large only, 81.8M",
    "qwen3_vit": "parameter cap: smallest is qwen3_vit_88m, 87.4M",
    "vgg": "parameter cap: smallest is vgg11, 128.8M",
    "vision_transformer_sam": "parameter cap: smallest is samvit_base_patch16_224, 85.7M",
}
TIMM_MODELS = tuple(f"timm:{n}" for names in TIMM_FAMILIES.values() for n in names)


def timm_build(name: str, seed: int) -> tuple[Any, Any, int]:
    """A calibrated random-init timm model, its example input and its side."""
    import torch

    from fxscale import zoo

    spec = zoo.get_spec(name)
    size = TIMM_INPUT.get(name.split(":", 1)[1], TIMM_SIZE)
    kwargs = {"img_size": size} if spec.fixed_input and size != spec.full_input_size else {}
    model = zoo.create_model(name, **kwargs).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    zoo.randomize_(model, seed=seed, example_input=x)
    return model, x, size


def width_fraction(groups: Sequence[Any]) -> float:
    """Channels in scalable groups / channels in all groups."""
    total = sum(g.width for g in groups)
    return round(sum(g.width for g in groups if g.scalable) / total, 4) if total else 0.0


def random_widths(groups: Sequence[Any], lo: float, hi: float, seed: str) -> dict[str, int]:
    """Per scalable group a width of x lo..hi rounded to its divisor."""
    rng = random.Random(seed)
    out = {}
    for g in groups:
        if g.scalable:
            d = max(1, int(g.divisor))
            out[g.name] = max(d, round(g.width * rng.uniform(lo, hi) / d) * d)
    return out


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    import time
    t0 = time.perf_counter()
    out = fn()
    return out, round((time.perf_counter() - t0) * 1e3, 3)


# ---- soundness: every plan that validates transforms successfully -------------------------------------------

def plan_fails(gm: Any, cg: Any, x: Any, widths: dict[str, int], init: str) -> str:
    """'' when the plan validates, transforms (with verification) and runs with the traced output shape; else why.
    A plan that does not validate is not a soundness failure and returns ''."""
    import torch

    import fxscale
    from fxscale.errors import PlanError

    plan = fxscale.ScalingPlan(widths=widths)
    try:
        plan.validate(cg)
    except PlanError:
        return ""
    try:
        new = fxscale.transform(gm, plan, init, cg=cg)
        with torch.no_grad():
            out, ref = new(x), gm(x)
        if tuple(out.shape) != tuple(ref.shape) or not torch.isfinite(out).all():
            return f"output shape {tuple(out.shape)} (want {tuple(ref.shape)}) or not finite"
    except Exception as exc:  # noqa: BLE001 - any failure after validation is unsound
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:160]
    return ""


def unsound_groups(gm: Any, cg: Any, x: Any, seed: str, failed: Sequence[dict[str, int]] = ()) -> list[str]:
    """Scalable groups for which a validated plan fails: UNSOUND_PLANS random plans over random subsets of the
    scalable groups plus the ``failed`` plans, each failing plan bisected to the groups that fail alone."""
    rng = random.Random(seed)
    scalable = [g for g in cg.groups if g.scalable]
    plans = [(dict(p), "preserve") for p in failed]
    for k in range(UNSOUND_PLANS if scalable else 0):
        subset = [g for g in scalable if rng.random() < 0.5] or [rng.choice(scalable)]
        plans.append((random_widths(subset, 0.5, 2.0, f"{seed}:{k}"), ("preserve", "prune")[k % 2]))
    bad: set[str] = set()
    for widths, init in plans:
        if not widths or not plan_fails(gm, cg, x, widths, init):
            continue
        alone = [g for g in widths if plan_fails(gm, cg, x, {g: widths[g]}, init)]
        bad.update(alone or ["+".join(sorted(widths))[:80]])  # only the combination fails: count it once
    return sorted(bad)


# ---- cost model vs FlopCounterMode -------------------------------------------------------------------------

def cost_rel_diff(model: Any, cg: Any, x: Any, new: Any, plan: Any, x_new: Any) -> float:
    """The larger relative FLOP difference of the analytic cost model against FlopCounterMode: the traced model
    at its size, and the rescaled model (``new``) under ``plan``."""
    from fxscale.cost import cost, reference_flops

    worst = 0.0
    for m, p, inp in ((model, None, x), (new, plan, x_new)):
        ref = reference_flops(copy.deepcopy(m), inp)  # a copy: it runs with autograd on (attention caches)
        got = cost(cg, p).flops
        worst = max(worst, abs(got - ref) / ref if ref else float(got != 0))
    return round(worst, 6)


# ---- the fxscale stages ----------------------------------------------------------------------------------------

def _refusal(exc: BaseException) -> bool:
    """A resolution PlanError that names weights spanning a spatial dimension (no change without new weights)."""
    from fxscale.errors import PlanError
    return isinstance(exc, PlanError) and "span a spatial dimension" in str(exc)


def _nearby(exc: BaseException, size: int) -> Optional[int]:
    """The nearest square size above the traced one that a resolution PlanError names as working, else None."""
    import re
    from fxscale.errors import PlanError
    m = re.search(r"sizes that work nearby: (.*)$", str(exc)) if isinstance(exc, PlanError) else None
    sides = [int(h) for h, w in re.findall(r"(\d+)x(\d+)", m.group(1)) if h == w and int(h) > size] if m else []
    return min(sides) if sides else None


def _float32_error(model: Any, x: Any) -> float:
    """max|float32 output - float64 output| / max|float64 output| of ``model`` on ``x``."""
    with torch_no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        out = model(x)
    scale = float(ref.abs().max())
    return float((out.double() - ref).abs().max()) / scale if scale else 0.0


def _export(new: Any, x_new: Any, row: dict[str, Any], seed: int) -> None:
    """ONNX export (opset 17) checked with ONNX Runtime relative to the output scale. A random-init model
    calibrated at the traced size can be ill-conditioned at another (StarNet's products of branches: at 96 px its
    own float32 and float64 outputs differ by 60%), where no exporter can match torch; such a model (float32 error
    > ONNX_REL_TOL) is re-calibrated at its new input first (``onnx_recalibrated``): the stage checks the export,
    and the weights are random either way."""
    import fxscale
    from fxscale import zoo

    if _float32_error(new, x_new) > ONNX_REL_TOL:
        new = zoo.randomize_(copy.deepcopy(new), seed=seed, example_input=x_new)
        row["onnx_recalibrated"] = True
    with torch_no_grad():
        out = new(x_new)
    scale = float(out.abs().max())
    with tempfile.TemporaryDirectory() as tmp:
        report, row["onnx_ms"] = _timed(lambda: fxscale.export_onnx(new, Path(tmp) / "m.onnx", x_new,
                                                                    opset=TIMM_OPSET, rtol=0.0,
                                                                    atol=ONNX_REL_TOL * scale))
    row["onnx_max_abs_diff"] = getattr(report, "max_abs_diff", None)
    if row["onnx_max_abs_diff"] is not None and scale > 0:
        row["onnx_rel_diff"] = row["onnx_max_abs_diff"] / scale


def torch_no_grad() -> Any:
    import torch
    return torch.no_grad()


def run_fxscale_timm(name: str, seed: int, row: dict[str, Any]) -> None:
    """build -> trace -> analyze -> widen (exact) -> narrow -> resolution x1.5 -> onnx for one timm model, plus
    the unsound-group search and the cost-model check."""
    import torch

    import fxscale
    from fxscale.ops.table import node_row

    row["stage"] = "build"
    model, x, size = timm_build(name, seed)
    new_size = round(size * 1.5)
    row.update(size=size, new_size=new_size)
    with torch.no_grad():
        ref = model(x)
    row["stage"] = "trace"
    gm, row["trace_ms"] = _timed(lambda: fxscale.trace(model, x))
    row["stage"] = "analyze"
    cg, row["analyze_ms"] = _timed(lambda: fxscale.analyze(gm))
    row["groups"], row["scalable"] = len(cg.groups), sum(bool(g.scalable) for g in cg.groups)
    row["width_frac"] = width_fraction(cg.groups)
    failed: list[dict[str, int]] = []
    try:
        _stages(gm, cg, model, x, ref, new_size, seed, name, row, failed, node_row)
    finally:
        bad = unsound_groups(gm, cg, x, f"{seed}:{name}:sound", failed)
        row["unsound"], row["unsound_groups"] = len(bad), " ".join(bad)[:200]


def _stages(gm: Any, cg: Any, model: Any, x: Any, ref: Any, new_size: int, seed: int, name: str,
            row: dict[str, Any], failed: list, node_row: Callable) -> None:
    import torch

    import fxscale

    row["stage"] = "widen"  # LayerNorm/GroupNorm statistics and attention stay exact only under uniform x2
    uniform = any(n.op != "placeholder" and getattr(node_row(n, cg.ctx.modules), "name", "") in SPANNING
                  for n in gm.graph.nodes)
    grow = {g.name: 2 * g.width for g in cg.scalable} if uniform else random_widths(cg.groups, 1.0, 2.0,
                                                                                     f"{seed}:{name}")
    failed.append(grow)
    wide, row["transform_ms"] = _timed(lambda: fxscale.transform(gm, fxscale.ScalingPlan(widths=grow),
                                                                  "preserve", cg=cg))
    failed.pop()
    with torch.no_grad():  # in float64: float32 rounding alone reaches 1e-4 in deep attention stacks (tiny_vit)
        ref64, got = copy.deepcopy(gm).double()(x.double()), copy.deepcopy(wide).double()(x.double())
    scale = float(ref64.abs().max())
    row["widen_rel_diff"] = float((got - ref64).abs().max()) / scale if scale else 0.0
    row["exact_claimed"], why = cg.preserve_exact(fxscale.ScalingPlan(widths=grow))
    row["exact_reason"] = (why[0] if why else "")[:120]
    if row["exact_claimed"] and not row["widen_rel_diff"] <= EXACT_REL_TOL:
        raise RuntimeError(f"preserve growth claimed exact but is not: max rel diff {row['widen_rel_diff']:.3g}")
    row["stage"] = "narrow"
    shrink = random_widths(cg.groups, 0.5, 1.0, f"{seed}:{name}:narrow")
    failed.append(shrink)
    narrow = fxscale.transform(gm, fxscale.ScalingPlan(widths=shrink), "prune", cg=cg)
    with torch.no_grad():
        out = narrow(x)
    if out.shape != ref.shape or not torch.isfinite(out).all():
        raise RuntimeError(f"narrowed output has shape {tuple(out.shape)} (want {tuple(ref.shape)}) or is not finite")
    failed.pop()
    row["stage"] = "resolution"
    plan = fxscale.ScalingPlan(widths=grow, resolution=(new_size, new_size))
    x_new = torch.randn(1, 3, new_size, new_size, generator=torch.Generator().manual_seed(1))
    try:
        new = fxscale.transform(gm, plan, "preserve", cg=cg)
    except Exception as exc:  # noqa: BLE001
        near = _nearby(exc, int(x.shape[-1]))
        if near is not None:  # x1.5 has no consistent window layout: the size fxscale names instead
            row["resolution_note"] = f"{new_size}x{new_size} refused, ran at the named nearby size {near}x{near}"
            new_size = near
            plan = fxscale.ScalingPlan(widths=grow, resolution=(near, near))
            x_new = torch.randn(1, 3, near, near, generator=torch.Generator().manual_seed(1))
            new = fxscale.transform(gm, plan, "preserve", cg=cg)
            row["new_size"] = near
        elif not _refusal(exc):
            raise
        else:
            row["refused"] = " ".join(str(exc).split())[:160]
            new, plan, x_new = wide, fxscale.ScalingPlan(widths=grow), x
    with torch.no_grad():
        out, row["forward_ms"] = _timed(lambda: new(x_new))
    if out.shape != ref.shape or not torch.isfinite(out).all():
        raise RuntimeError(f"scaled output has shape {tuple(out.shape)} (want {tuple(ref.shape)}) or is not finite")
    row["stage"] = "cost"
    try:
        row["cost_rel_diff"] = cost_rel_diff(model, cg, x, new, plan, x_new)
        row["cost_ok"] = row["cost_rel_diff"] <= COST_REL_TOL
    except Exception as exc:  # noqa: BLE001 - recorded, not a stage failure
        row["cost_rel_diff"], row["cost_ok"] = f"{type(exc).__name__}: {exc}"[:80], False
    row["stage"] = "onnx"
    _export(new, x_new, row, seed)
    row.update(status="ok-refused" if row.get("refused") else "ok", stage="")
    if row.get("refused"):
        row["reason"] = row["refused"]


# ---- summary ----------------------------------------------------------------------------------------------

def summary_markdown(rows: Sequence[dict[str, Any]], summary: str, command: str) -> str:
    """The committed summary: the sweep's summary line, every model not passing with its stage and reason, the
    refusals, the unsound groups and the cost-model mismatches, and the excluded families."""
    fams = {f"timm:{n}": fam for fam, names in TIMM_FAMILIES.items() for n in names}
    lines = ["# timm zoo coverage", "", f"Produced by `{command}` (see the docstring of benchmarks/zoo_timm.py).",
             "", summary, "", f"{len(rows)} of {len(TIMM_MODELS)} listed models ran ({len(TIMM_FAMILIES)} families "
             f"swept, {len(TIMM_EXCLUDED)} excluded).", "", "## Not passing", "",
             "| model | family | stage | reason |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {fams.get(r['model'], '')} | {r.get('stage', '')} | "
              f"{str(r.get('reason', '')).replace('|', '/')[:160]} |" for r in rows if r.get("status") not in ("ok", "ok-refused")]
    lines += ["", "## Refused at resolution (weights over a spatial dimension)", ""]
    lines += [f"- {r['model']}: {r.get('reason', '')}" for r in rows if r.get("status") == "ok-refused"] or ["- none"]
    lines += ["", "## Unsound groups", ""]
    lines += [f"- {r['model']}: {r.get('unsound')} ({r.get('unsound_groups')})" for r in rows if r.get("unsound")] \
        or ["- none"]
    lines += ["", "## Cost model != FlopCounterMode", ""]
    lines += [f"- {r['model']}: {r.get('cost_rel_diff')}" for r in rows if "cost_ok" in r and r["cost_ok"] is not True] \
        or ["- none"]
    lines += ["", "## Torch-Pruning failures", ""]
    lines += [f"- {r['model']}: {r.get('tp_status')}" for r in rows if r.get("tp_status") not in (None, "ok")] \
        or ["- none"]
    lines += ["", "## Excluded families", ""] + [f"- {k}: {v}" for k, v in TIMM_EXCLUDED.items()]
    return "\n".join(lines) + "\n"


# ---- Torch-Pruning side by side -------------------------------------------------------------------------------

def run_torch_pruning_timm(name: str, seed: int, row: dict[str, Any]) -> None:
    """Torch-Pruning's generic recipe on the same timm model: DependencyGraph + MagnitudePruner at 50%, the
    classifier ignored; ok when the pruned model runs with the original output shape."""
    import torch
    import torch_pruning as tp

    model, x, _ = timm_build(name, seed)
    with torch.no_grad():
        ref = model(x)
    _, row["tp_dg_ms"] = _timed(lambda: tp.DependencyGraph().build_dependency(copy.deepcopy(model),
                                                                             example_inputs=x))
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = [m for m in ([head] if isinstance(head, torch.nn.Module) else []) if list(m.parameters())]
    heads += [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == ref.shape[-1]
              and m not in heads]
    pruner, init_ms = _timed(lambda: tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                                              pruning_ratio=0.5, ignored_layers=heads))
    _, step_ms = _timed(pruner.step)
    row["tp_prune_ms"] = init_ms + step_ms
    with torch.no_grad():
        out = model(x)
    if tuple(out.shape) != tuple(ref.shape):
        raise RuntimeError(f"pruned output shape {tuple(out.shape)} != {tuple(ref.shape)}")
    row["tp_status"] = "ok"


__all__ = ["summary_markdown", "TIMM_FAMILIES", "TIMM_EXCLUDED", "TIMM_MODELS", "TIMM_INPUT", "TIMM_PARAM_CAP", "run_fxscale_timm",
           "run_torch_pruning_timm", "unsound_groups", "width_fraction"]
