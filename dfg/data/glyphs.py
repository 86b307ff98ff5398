"""Printed glyphs: digits rendered with Pillow from matplotlib's TTF fonts and Pillow's built-in font,
with random font/size/rotation/shear/translation/stroke. Seeded, 32×32, ~8-10k images/s; an offline
stand-in for EMNIST (a LeNet source) and a tiny always-available target."""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

SIZE = 32                    # output side (pixels)
_DRAW = 80                   # glyphs are drawn at 2× on an 80×80 canvas (room for a 48 px digit + stroke),
                             # resampled onto 64×64 and box-reduced to 32: smoother edges than drawing at 32
# Fonts from matplotlib's mpl-data/fonts/ttf whose code points 0-9 are real digits. Excluded on purpose:
# *Display (no digit glyphs), STIXNonUni*/STIXSiz* (no digits), LastResort (one placeholder box),
# cmex10/cmsy10 (symbols at the digit code points), cmmi10 (old-style figures with descenders).
_FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
_BUILTIN = "<pillow-default>"  # ImageFont.load_default(size): Pillow's embedded FreeType font


@functools.cache
def font_paths() -> tuple[str, ...]:
    """The usable font files on this machine plus Pillow's built-in font (always last)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(str(folder / f) for f in _FONT_FILES if (folder / f).is_file()) + (_BUILTIN,)


GLYPHS_VERSION = 1  # raise when the renderer changes what a (n, seed) draw looks like


@functools.cache
def glyphs_tag() -> str:
    """What a rendered set depends on besides (n, seed): the renderer's version, the fonts found and the Pillow
    that draws them. Part of the disk cache's name and of the source-model cache key of a glyph source, so a
    changed renderer, font set or Pillow never reuses old images or a source trained on them."""
    import hashlib

    import PIL

    fonts = ",".join(Path(f).name for f in font_paths())
    return f"v{GLYPHS_VERSION}-" + hashlib.sha1(f"{fonts}|{PIL.__version__}".encode()).hexdigest()[:8]


@functools.cache
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size) if path == _BUILTIN else ImageFont.truetype(path, size)


def _params(n: int, seed: int, num_fonts: int) -> dict[str, np.ndarray]:
    """All random choices for n glyphs, drawn up front from one seeded generator (order-independent)."""
    rng = np.random.default_rng([seed, 0x61F])
    return dict(
        font=rng.integers(0, num_fonts, n),
        height=rng.uniform(17.0, 24.0, n),          # digit height at 32 px (MNIST digits span ~20 px)
        rotation=np.deg2rad(rng.uniform(-15, 15, n)),
        shear=rng.uniform(-0.3, 0.3, n),            # x += shear·y
        aspect=rng.uniform(0.85, 1.15, n),          # x stretch
        shift=rng.uniform(-2.5, 2.5, (n, 2)),       # translation of the centre (pixels at 32 px)
        stroke=rng.choice([0, 0, 1, 2], n),         # extra stroke width at 2× (0-1 px at 32 px): bolder ink
        ink=rng.integers(190, 256, n),              # foreground intensity
    )


@functools.cache
def _centre(path: str, size: int, digit: str, stroke: int) -> tuple[float, float]:
    """Where to put the text anchor so the digit's ink box is centred on the drawing canvas."""
    x0, y0, x1, y1 = _font(path, size).getbbox(digit, stroke_width=stroke, anchor="mm")
    return _DRAW / 2 - (x0 + x1) / 2, _DRAW / 2 - (y0 + y1) / 2


def _render_one(path: str, size: int, digit: str, stroke: int, ink: int, matrix: tuple[float, ...]) -> np.ndarray:
    from PIL import Image, ImageDraw

    big = Image.new("L", (_DRAW, _DRAW))
    ImageDraw.Draw(big).text(_centre(path, size, digit, stroke), digit, font=_font(path, size), fill=ink,
                             anchor="mm", stroke_width=stroke, stroke_fill=ink)
    # One affine resample (rotation, shear, stretch, shift) onto a 64×64 canvas, then a 2×2 box reduce.
    out = big.transform((64, 64), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)
    return np.asarray(out.reduce(2))


def render_glyphs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n digit glyphs: uint8 images N×32×32 (white on black, like MNIST) and int64 labels N (i mod 10,
    so classes are balanced). Same (n, seed) → identical arrays on the same Pillow/FreeType build."""
    images, labels = _render_cached(int(n), int(seed))
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=8)
def _render_cached(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    paths = font_paths()
    p = {k: v.tolist() for k, v in _params(n, seed, len(paths)).items()}  # python floats: faster scalar math
    labels = np.arange(n, dtype=np.int64) % 10
    images = np.empty((n, SIZE, SIZE), dtype=np.uint8)
    for i in range(n):
        # Font size (at 2×) so the digit is p["height"] px tall at 32 px; digits are ~0.73 em tall.
        size = max(8, int(round(p["height"][i] * 2 / 0.73)))
        c, s = math.cos(p["rotation"][i]), math.sin(p["rotation"][i])
        k, a = p["shear"][i], p["aspect"][i]
        # Forward map on centred coordinates, drawing → 64-canvas: A = R · [[1, k], [0, 1]] · diag(a, 1).
        a11, a12, a21, a22 = a * c, c * k - s, a * s, s * k + c
        det = a11 * a22 - a12 * a21
        # PIL wants the inverse map (output pixel → drawing pixel) as (i11, i12, t1, i21, i22, t2).
        i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
        ox, oy = 32 + 2 * p["shift"][i][0], 32 + 2 * p["shift"][i][1]   # where the drawing's centre lands
        h = _DRAW / 2
        matrix = (i11, i12, h - i11 * ox - i12 * oy, i21, i22, h - i21 * ox - i22 * oy)
        images[i] = _render_one(paths[p["font"][i]], size, str(labels[i]), p["stroke"][i], p["ink"][i], matrix)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_glyphs(n: int, seed: int, cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """render_glyphs, memoised in memory and (when cache_dir is given) as glyphs_n{n}_s{seed}_<tag>.npz there
    (glyphs_tag: the renderer's version, fonts and Pillow)."""
    if cache_dir is None:
        return render_glyphs(n, seed)
    path = Path(cache_dir) / f"glyphs_n{n}_s{seed}_{glyphs_tag()}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["images"], z["labels"]
        except (OSError, ValueError, KeyError):
            pass  # a broken cache file is regenerated below
    images, labels = render_glyphs(n, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    except OSError:
        pass  # a read-only data root only loses the disk cache
    return images, labels
