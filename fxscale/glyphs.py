"""glyphs: a procedurally generated character-classification dataset, made the way Chars74K's font subset was.

Characters (by default the 10 digits and 26 upper-case letters: 36 classes) are rendered from the font faces that
ship with matplotlib (mpl-data/fonts/ttf: DejaVu Sans/Mono/Serif, STIXGeneral and the Computer Modern faces; symbol
faces and subsets without these characters are left out: 22 faces with the default classes) with Pillow, at
`render_size` (128 px), each with a random pose (rotation, shear, aspect, translation), scale, stroke width
(thickened outline or eroded), clutter (thin lines, blobs and fragments of other glyphs), colours (a foreground, a
background gradient and a clutter colour) and pixel noise. The high-resolution masks are cached on disk; each
requested `size` is produced from them by an antialiased resize, so a larger input really sees more detail (thin
strokes and clutter lines blur away at 16 px). Noise is added at the requested size.

Splits are by font face: a seeded partition holds `test_fonts` of the faces (6 of 22 by default) out for the test
split only; train and val are disjoint renderings of the remaining faces. Each split holds exactly its per-class
count of every class. Everything is deterministic from `seed`; the cache (`cache_dir`, else $FXSCALE_CACHE/glyphs,
else ~/.cache/fxscale/glyphs) is keyed by every generation setting, the font files and FORMAT_VERSION, written
atomically, and rebuilt when unreadable.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import string
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from fxscale.errors import FxscaleError

if TYPE_CHECKING:
    from fxscale.data import DataBundle

FORMAT_VERSION = 1
DEFAULT_CLASSES = string.digits + string.ascii_uppercase
SYMBOL_FACES = frozenset({"cmex10", "cmsy10"})  # their ASCII slots hold math symbols, not letters and digits
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_CHUNK = 256  # samples composed at once


@dataclass(frozen=True)
class GlyphConfig:
    """Every setting that changes the rendered masks (and so the cache key); `size` is applied later."""

    classes: str = DEFAULT_CLASSES
    per_class: int = 100
    val_per_class: int = 25
    test_per_class: int = 50
    test_fonts: float = 0.25
    render_size: int = 128
    max_rotation: float = 15.0
    max_shear: float = 0.3
    scale: tuple[float, float] = (0.5, 0.85)
    max_clutter: int = 4
    max_noise: float = 0.08
    seed: int = 0

    def counts(self) -> dict[str, int]:
        """Images per class in each split."""
        return {"train": self.per_class, "val": self.val_per_class, "test": self.test_per_class}

    def validate(self) -> None:
        """Raise FxscaleError on unusable settings."""
        problems = [
            (len(set(self.classes)) == len(self.classes) >= 2,
             f"classes must be >= 2 distinct characters; got {self.classes!r}"),
            (min(self.counts().values()) >= 1, f"per-class counts must be >= 1; got {self.counts()}"),
            (0 < self.test_fonts < 1, f"test_fonts must be a fraction in (0, 1); got {self.test_fonts}"),
            (self.render_size >= 32, f"render_size must be >= 32; got {self.render_size}"),
            (0 < self.scale[0] <= self.scale[1] <= 1, f"scale must be 0 < lo <= hi <= 1; got {self.scale}"),
            (self.max_clutter >= 0 and self.max_noise >= 0 and self.max_rotation >= 0 and self.max_shear >= 0,
             "max_clutter, max_noise, max_rotation and max_shear must be >= 0"),
        ]
        for ok, msg in problems:
            if not ok:
                raise FxscaleError(f"dataset 'glyphs': {msg}")


# ----------------------------------------------------------------------------------------- fonts


def matplotlib_fonts(classes: str = DEFAULT_CLASSES) -> list[Path]:
    """matplotlib's bundled TTF faces that render every character of classes distinctly, sorted by name."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    usable = []
    for path in sorted(folder.glob("*.ttf")):
        if path.stem in SYMBOL_FACES:
            continue
        face = FT2Font(str(path))
        glyph_ids = [face.get_char_index(ord(c)) for c in classes]
        if all(glyph_ids) and len(set(glyph_ids)) == len(classes):
            usable.append(path)
    return usable


def split_fonts(fonts: list[Path], test_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded partition of the faces into (train, test); test holds round(test_fraction * n) >= 1 faces."""
    n_test = min(len(fonts) - 1, max(1, int(round(test_fraction * len(fonts)))))
    if len(fonts) < 2:
        raise FxscaleError(f"dataset 'glyphs': need >= 2 usable font faces to split by font; found {len(fonts)}")
    order = np.random.default_rng([seed, 7919]).permutation(len(fonts))
    test = sorted(fonts[i] for i in order[:n_test])
    return sorted(f for f in fonts if f not in test), test


# ----------------------------------------------------------------------------------------- rendering


def _affine(cfg: GlyphConfig, rng: np.random.Generator, centre: tuple[float, float],
            ink: tuple[float, float]) -> tuple[float, ...]:
    """PIL AFFINE coefficients (output -> input) for a random pose placing the ink centre near the canvas centre."""
    r = cfg.render_size
    target = rng.uniform(*cfg.scale) * r
    s = min(target / max(ink[1], 1.0), 0.92 * r / max(ink[0], 1.0))
    sx, sy = s * rng.uniform(0.85, 1.15), s
    th = math.radians(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    k = rng.uniform(-cfg.max_shear, cfg.max_shear)
    lin = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) @ np.array([[1, k], [0, 1]]) \
        @ np.diag([sx, sy])
    shift = rng.uniform(-0.08, 0.08, size=2) * r
    out_c = np.array([r / 2, r / 2]) + shift
    inv = np.linalg.inv(lin)
    off = np.asarray(centre) - inv @ out_c
    return (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])


def _glyph_layer(font: Any, char: str, cfg: GlyphConfig, rng: np.random.Generator) -> Any:
    """The posed, stroked glyph as an 'L' image of render_size."""
    from PIL import Image, ImageDraw, ImageFilter

    r = cfg.render_size
    stroke = int(rng.integers(-1, 4)) * r // 128  # -1: eroded, 0: as designed, 1..3: thickened
    canvas = Image.new("L", (2 * r, 2 * r))
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = draw.textbbox((r, r), char, font=font, anchor="mm", stroke_width=max(stroke, 0))
    draw.text((r, r), char, fill=255, font=font, anchor="mm", stroke_width=max(stroke, 0), stroke_fill=255)
    if stroke < 0:
        canvas = canvas.filter(ImageFilter.MinFilter(3))
    coeffs = _affine(cfg, rng, ((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0))
    return canvas.transform((r, r), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)


def _clutter_layer(font: Any, cfg: GlyphConfig, rng: np.random.Generator) -> Any:
    """Random thin lines, blobs and fragments of other glyphs pushed towards the border, as an 'L' image."""
    from PIL import Image, ImageDraw

    r = cfg.render_size
    img = Image.new("L", (r, r))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, cfg.max_clutter + 1))):
        kind = int(rng.integers(0, 3))
        if kind == 0:  # a thin line across the canvas: 1-3 px at 128 px, gone at 16 px
            pts = [tuple(p) for p in rng.uniform(0, r, size=(2, 2)).tolist()]
            draw.line(pts, fill=255, width=max(1, int(rng.integers(1, 4)) * r // 128))
        elif kind == 1:  # a blob or a ring
            cx, cy = rng.uniform(0, r, size=2)
            rad = rng.uniform(0.03, 0.15) * r
            box = (cx - rad, cy - rad * rng.uniform(0.5, 1.5), cx + rad, cy + rad * rng.uniform(0.5, 1.5))
            if rng.random() < 0.5:
                draw.ellipse(box, fill=255)
            else:
                draw.ellipse(box, outline=255, width=max(1, r // 64))
        else:  # a fragment of another glyph, centred off the canvas edge
            ch = cfg.classes[int(rng.integers(0, len(cfg.classes)))]
            ang = rng.uniform(0, 2 * math.pi)
            dist = rng.uniform(0.45, 0.7) * r
            draw.text((r / 2 + dist * math.cos(ang), r / 2 + dist * math.sin(ang)), ch, fill=255, font=font,
                      anchor="mm")
    return img


def _render_one(font: Any, char: str, cfg: GlyphConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(glyph mask, clutter mask, colours (4,3): foreground, background start/end, clutter) of one sample."""
    glyph = np.asarray(_glyph_layer(font, char, cfg, rng), dtype=np.uint8)
    clutter = np.asarray(_clutter_layer(font, cfg, rng), dtype=np.uint8)
    lum = np.array([0.299, 0.587, 0.114])
    bg = rng.uniform(0, 1, size=3)
    fg = rng.uniform(0, 1, size=3)
    while abs(float((fg - bg) @ lum)) < 0.3:  # keep the glyph visible: a luminance contrast >= 0.3
        fg = rng.uniform(0, 1, size=3)
    bg_end = np.clip(bg + rng.uniform(-0.15, 0.15, size=3), 0, 1)
    clutter_rgb = fg if rng.random() < 0.3 else rng.uniform(0, 1, size=3)
    return glyph, clutter, np.stack([fg, bg, bg_end, clutter_rgb]).astype(np.float32)


def _plan(cfg: GlyphConfig, train_fonts: list[Path], test_fonts: list[Path]) -> list[tuple[int, int, int, int]]:
    """(split code, class, index within class, font index into train_fonts + test_fonts) for every sample."""
    rows = []
    for split, n in cfg.counts().items():
        code = SPLIT_CODES[split]
        base, n_f = (len(train_fonts), len(test_fonts)) if split == "test" else (0, len(train_fonts))
        for c in range(len(cfg.classes)):
            offset = int(np.random.default_rng([cfg.seed, code, c, 104729]).integers(0, n_f))
            rows += [(code, c, i, base + (offset + i) % n_f) for i in range(n)]
    return rows


def render_masks(cfg: GlyphConfig, train_fonts: list[Path], test_fonts: list[Path]) -> dict[str, np.ndarray]:
    """Render every sample at render_size: uint8 glyph/clutter masks, float colours, labels, fonts, splits, noise."""
    from PIL import ImageFont

    fonts = train_fonts + test_fonts
    faces = [ImageFont.truetype(str(p), int(0.75 * cfg.render_size)) for p in fonts]
    rows = _plan(cfg, train_fonts, test_fonts)
    n, r = len(rows), cfg.render_size
    out = {"glyph": np.empty((n, r, r), np.uint8), "clutter": np.empty((n, r, r), np.uint8),
           "colours": np.empty((n, 4, 3), np.float32), "noise": np.empty(n, np.float32),
           "angle": np.empty(n, np.float32), "label": np.empty(n, np.int64), "font": np.empty(n, np.int64),
           "split": np.empty(n, np.int64)}
    for k, (code, c, i, f) in enumerate(rows):
        rng = np.random.default_rng([cfg.seed, code, c, i])
        out["glyph"][k], out["clutter"][k], out["colours"][k] = _render_one(faces[f], cfg.classes[c], cfg, rng)
        out["noise"][k] = rng.uniform(0, cfg.max_noise)
        out["angle"][k] = rng.uniform(0, 2 * math.pi)
        out["label"][k], out["font"][k], out["split"][k] = c, f, code
    return out


# ----------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """$FXSCALE_CACHE/glyphs, else ~/.cache/fxscale/glyphs."""
    root = os.environ.get("FXSCALE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "fxscale") / "glyphs"


def cache_key(cfg: GlyphConfig, fonts: list[Path]) -> str:
    """sha256 over the settings, the font files (name and size), the Pillow version and FORMAT_VERSION."""
    import PIL

    blob = json.dumps({"cfg": asdict(cfg), "fonts": [(p.name, p.stat().st_size) for p in fonts],
                       "pillow": PIL.__version__, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_cache(path: Path, key: str, n: int, r: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or not what key/n/r promise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    ok = (str(data.get("key", np.array(""))) == key and data.get("glyph", np.empty(0)).shape == (n, r, r)
          and data.get("clutter", np.empty(0)).shape == (n, r, r) and data.get("label", np.empty(0)).shape == (n,))
    return data if ok else None


def _write_cache(path: Path, data: dict[str, np.ndarray], key: str) -> None:
    """Atomically write data (+ key) to path: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, key=np.array(key), **data)
        os.chmod(tmp, 0o644)  # a shared cache: readable like any other file (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_render(cfg: GlyphConfig, cache_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta): the rendered masks from the cache, rendering and caching them first when needed."""
    cfg.validate()
    fonts = matplotlib_fonts(cfg.classes)
    train_fonts, test_fonts = split_fonts(fonts, cfg.test_fonts, cfg.seed)
    key = cache_key(cfg, fonts)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"glyphs-{key}.npz"
    n = len(cfg.classes) * sum(cfg.counts().values())
    data = _read_cache(path, key, n, cfg.render_size)
    rendered = data is None
    if data is None:
        data = render_masks(cfg, train_fonts, test_fonts)
        _write_cache(path, data, key)
    meta = {"key": key, "cache": str(path), "rendered": rendered,
            "fonts": {"train": [p.stem for p in train_fonts], "val": [p.stem for p in train_fonts],
                      "test": [p.stem for p in test_fonts]}}
    return data, meta


# ----------------------------------------------------------------------------------------- composition


def compose(data: dict[str, np.ndarray], index: np.ndarray, size: int, seed: int) -> torch.Tensor:
    """(len(index),3,size,size) images in [0,1]: masks resized (antialiased) to size, coloured, noised at size."""
    out = torch.empty(len(index), 3, size, size)
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, size), torch.linspace(-0.5, 0.5, size), indexing="ij")
    for start in range(0, len(index), _CHUNK):
        ix = index[start:start + _CHUNK]
        masks = torch.from_numpy(np.stack([data["glyph"][ix], data["clutter"][ix]], axis=1)).float() / 255.0
        if masks.shape[-1] != size:
            masks = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=size < masks.shape[-1]).clamp(0, 1)
        glyph, clutter = masks[:, :1], masks[:, 1:]
        col = torch.from_numpy(data["colours"][ix])[..., None, None]  # (n,4,3,1,1)
        ang = torch.from_numpy(data["angle"][ix]).view(-1, 1, 1, 1)
        t = (torch.cos(ang) * xx + torch.sin(ang) * yy + 0.5).clamp(0, 1)  # background gradient position
        img = col[:, 1] * (1 - t) + col[:, 2] * t
        img = img * (1 - clutter) + col[:, 3] * clutter
        img = img * (1 - glyph) + col[:, 0] * glyph
        first = int(ix[0])  # pool indices are unique across splits: each chunk draws its own noise
        g = torch.Generator().manual_seed(int(np.random.default_rng([seed, size, first]).integers(2 ** 62)))
        sigma = torch.from_numpy(data["noise"][ix]).view(-1, 1, 1, 1)
        out[start:start + len(ix)] = (img + sigma * torch.randn(img.shape, generator=g)).clamp(0, 1)
    return out


def glyphs(size: int = 32, per_class: int = 100, val_per_class: int | None = None,
           test_per_class: int | None = None, classes: str = DEFAULT_CLASSES, test_fonts: float = 0.25,
           render_size: int = 128, seed: int = 0, cache_dir: str | Path | None = None,
           normalize: bool = True) -> DataBundle:
    """Font-rendered characters (36 classes by default) at size x size, split by font face; see the module doc.

    per_class train images per class (default 100: 3,600 train images), val_per_class (default per_class // 4)
    held-out renderings of the train faces, test_per_class (default per_class // 2) renderings of unseen faces.
    Normalised per channel with the train mean/std. The bundle's `info["fonts"]` lists the faces of each split.
    """
    from fxscale.data import SPLITS, DataBundle, SplitInfo

    cfg = GlyphConfig(classes=classes, per_class=per_class,
                      val_per_class=max(1, per_class // 4) if val_per_class is None else val_per_class,
                      test_per_class=max(1, per_class // 2) if test_per_class is None else test_per_class,
                      test_fonts=test_fonts, render_size=render_size, seed=seed)
    if not 1 <= size <= render_size:
        raise FxscaleError(f"dataset 'glyphs': size={size} must lie in 1..render_size={render_size} (images are "
                           "rendered at render_size and resized down; raise render_size for larger inputs)")
    data, meta = load_or_render(cfg, cache_dir)
    split_idx = {s: np.flatnonzero(data["split"] == SPLIT_CODES[s]) for s in SPLITS}
    x = {s: compose(data, ix, size, seed) for s, ix in split_idx.items()}
    mean = x["train"].mean(dim=(0, 2, 3)) if normalize else torch.zeros(3)
    std = x["train"].std(dim=(0, 2, 3)).clamp_min(1e-6) if normalize else torch.ones(3)
    parts = [TensorDataset((x[s] - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1),
                           torch.from_numpy(data["label"][split_idx[s]].astype(np.int64))) for s in SPLITS]
    fonts = meta["fonts"]
    source = f"glyphs[{meta['key']}]"
    how = {"train": f"{cfg.per_class}/class renderings of {len(fonts['train'])} train faces",
           "val": f"{cfg.val_per_class}/class other renderings of the same {len(fonts['train'])} train faces",
           "test": f"{cfg.test_per_class}/class renderings of {len(fonts['test'])} faces unseen in train/val"}
    splits = {s: SplitInfo(source, tuple(int(i) for i in split_idx[s]), f"glyphs: {how[s]} (seed {seed})")
              for s in SPLITS}
    info = {"fonts": fonts, "classes": cfg.classes, "render_size": render_size, "cache": meta["cache"],
            "rendered": meta["rendered"], "config": asdict(cfg)}
    return DataBundle("glyphs", *parts, num_classes=len(cfg.classes), input_shape=(3, size, size),
                      mean=tuple(mean.tolist()), std=tuple(std.tolist()), splits=splits, info=info)
