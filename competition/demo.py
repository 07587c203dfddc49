"""The built-in demo competition: synthetic superhero-merchandise photos in the CAX layout.

``python -m competition.demo OUT_DIR [--seed N]`` writes, deterministically (the same seed gives
byte-identical files), a contest laid out and spelt exactly like CrowdAnalytix's superhero
contest::

    OUT_DIR/CAX_Superhero_Train/<Class>/img_0001.jpg     12 class folders, imbalanced
    OUT_DIR/CAX_Superhero_Test/superhero_test_<N>.jpg    a few .png and one .jpeg among them
    OUT_DIR/Superhero_Submission_Format.csv              filename,Superhero (empty), shuffled
    OUT_DIR/test_labels.csv                              filename,label,split (public|private)
    OUT_DIR/planted.json                                 duplicates and mislabels, for tests
    OUT_DIR/.demo_complete.json                          written last: the demo is whole

Each image is a product photo drawn with PIL (t-shirt, mug, cap, bag, phone case, poster,
badge, or a bare logo) carrying one class's emblem built from simple shapes. Colours are drawn
per image with only a weak class tendency, and placement, scale, rotation, clutter, blur and
JPEG quality vary, so raw pixels say little about the class while an ImageNet CNN still sees
the shapes. Like the real data it holds exact duplicates (some filed under two classes), about
2 % mislabelled train images and a couple of test images that are copies of train images.

Every image stream is seeded from ``(seed, stream, index)``, so a file's bytes do not depend on
the order or number of files drawn before it.
"""
from __future__ import annotations

import argparse
import colorsys
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

from competition.spec import CAX_CLASSES, CAX_LABELS
from competition.io import atomic_write_csv, atomic_write_json, read_json

__all__ = [
    "CLASSES",
    "SUBMISSION_LABELS",
    "DemoError",
    "make_demo",
    "render_image",
    "main",
]

# The demo is written in the exact CAX layout and spelling.
CLASSES: tuple[str, ...] = CAX_CLASSES
SUBMISSION_LABELS: tuple[str, ...] = CAX_LABELS

TRAIN_DIR = "CAX_Superhero_Train"
TEST_DIR = "CAX_Superhero_Test"
SUBMISSION_FILE = "Superhero_Submission_Format.csv"
TEST_LABELS_FILE = "test_labels.csv"
PLANTED_FILE = "planted.json"
STARTED_FILE = ".demo_started.json"
COMPLETE_FILE = ".demo_complete.json"
_OWN_NAMES = {TRAIN_DIR, TEST_DIR, SUBMISSION_FILE, TEST_LABELS_FILE, PLANTED_FILE,
              STARTED_FILE, COMPLETE_FILE}
# Bump when the drawing changes, so an old demo on disk is regenerated rather than reused.
FORMAT_VERSION = 1

# Relative class sizes, shaped like the real contest (160 to 690 images per class).
CLASS_WEIGHTS = np.array([300, 220, 160, 690, 250, 400, 180, 200, 350, 480, 600, 520], float)
# A weak colour tendency per class (hues in [0, 1)), used for a minority of images only.
CLASS_HUES = (
    (0.0, 0.0), (0.08, 0.33), (0.62, 0.0), (0.14, 0.0), (0.78, 0.75), (0.62, 0.0),
    (0.8, 0.75), (0.07, 0.03), (0.33, 0.8), (0.0, 0.12), (0.0, 0.62), (0.62, 0.0),
)
_TENDENCY = 0.3  # share of images whose emblem takes the class hue

_STREAM_PLAN, _STREAM_TRAIN, _STREAM_TEST = 0, 1, 2
_MIN_SIDE, _MAX_SIDE = 160, 224


class DemoError(ValueError):
    """The demo cannot be written where or how it was asked."""


# --------------------------------------------------------------------------------------------
# Colours


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    # A quarter of colours are near-greys, as merchandise often is black, white or grey.
    if rng.random() < 0.25:
        v = rng.uniform(0.05, 0.97)
        return _hsv(rng.random(), rng.uniform(0, 0.12), v)
    return _hsv(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0))


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrasting(rng: np.random.Generator, against, pick: Callable, min_diff: float = 50):
    """Draw colours with ``pick`` until one differs in brightness from ``against``."""
    colour = pick(rng)
    for _ in range(12):
        if abs(_luma(colour) - _luma(against)) >= min_diff:
            break
        colour = pick(rng)
    return colour


def _emblem_colours(rng: np.random.Generator, cls: int, background) -> list[tuple[int, int, int]]:
    """Three colours for an emblem: the first stands out from ``background`` and takes the
    class's hue for a minority of images only, so colour is a weak clue at best."""
    hues = CLASS_HUES[cls]

    def class_hue(r: np.random.Generator) -> tuple[int, int, int]:
        return _hsv(hues[int(r.integers(2))] + r.normal(0, 0.03), r.uniform(0.5, 1), r.uniform(0.35, 1))

    first = _contrasting(rng, background, class_hue if rng.random() < _TENDENCY else _random_colour)
    second = _contrasting(rng, first, _random_colour)
    third = _contrasting(rng, second, _random_colour)
    return [first, second, third]


# --------------------------------------------------------------------------------------------
# Emblems: each draws one class's sign on a transparent C x C canvas, centred, with jitter.

C = 256
_CLEAR = (0, 0, 0, 0)


def _j(rng: np.random.Generator, spread: float = 0.12) -> float:
    return float(rng.uniform(1 - spread, 1 + spread))


def _ellipse(d, cx, cy, rx, ry, **kw):
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], **kw)


def _star(cx, cy, r_out, r_in, points=5, rot=-math.pi / 2):
    pts = []
    for k in range(2 * points):
        r = r_out if k % 2 == 0 else r_in
        a = rot + k * math.pi / points
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _ant(d, rng, c):
    w = int(7 * _j(rng))
    if rng.random() < 0.5:
        _ellipse(d, 128, 128, 122, 122, outline=c[1], width=int(10 * _j(rng)))
    # legs: three pairs from the thorax, each bent at a knee
    for k, dx in enumerate((-14, 0, 14)):
        for sy in (-1, 1):
            knee = (128 + dx * 2.2 + (k - 1) * 12, 128 + sy * 48 * _j(rng))
            foot = (128 + dx * 3.6 + (k - 1) * 30, 128 + sy * 82 * _j(rng))
            d.line([(128 + dx, 128), knee, foot], fill=c[0], width=w, joint="curve")
    _ellipse(d, 182, 128, 46 * _j(rng), 32 * _j(rng), fill=c[0])
    _ellipse(d, 128, 128, 20, 15, fill=c[0])
    _ellipse(d, 80, 128, 22 * _j(rng), 20, fill=c[0])
    for sy in (-1, 1):
        d.line([(70, 128 + sy * 10), (48, 128 + sy * 40), (28, 128 + sy * 44)], fill=c[0],
               width=max(3, w - 2), joint="curve")


def _trident(d, rng, c):
    w = int(14 * _j(rng))
    top = 40 * _j(rng)
    if rng.random() < 0.7:
        for k in range(int(rng.integers(2, 4))):
            y0 = 200 + k * 18
            pts = [(x, y0 + 10 * math.sin(x / 16 + k)) for x in range(20, 240, 8)]
            d.line(pts, fill=c[1], width=7, joint="curve")
    d.line([(128, 240), (128, top + 20)], fill=c[0], width=w)
    bar = 108 * _j(rng)
    d.line([(70, bar), (186, bar)], fill=c[0], width=w)
    for x, t in ((74, top + 22), (128, top), (182, top + 22)):
        if x != 128:
            d.line([(x, bar + w / 2), (x, t + 20)], fill=c[0], width=w)
        d.polygon([(x - 20, t + 28), (x, t - 6), (x + 20, t + 28)], fill=c[0])


def _avengers(d, rng, c):
    ring = c[int(rng.integers(2))]
    _ellipse(d, 128, 132, 92 * _j(rng, 0.06), 92 * _j(rng, 0.06), outline=ring,
             width=int(16 * _j(rng)))
    apex = (150, 22)
    d.line([(52, 238), apex], fill=c[0], width=int(28 * _j(rng)))
    d.line([apex, (152, 206)], fill=c[0], width=int(24 * _j(rng)))
    y = 150 * _j(rng, 0.05)
    d.line([(100, y), (222, y)], fill=c[0], width=int(14 * _j(rng)))
    d.polygon([(212, y - 20), (248, y), (212, y + 20)], fill=c[0])


_BAT_RIGHT = [
    (0.0, -0.16), (0.06, -0.16), (0.09, -0.40), (0.13, -0.13), (0.26, -0.20), (0.42, -0.36),
    (0.62, -0.40), (0.84, -0.30), (1.0, -0.06), (0.86, 0.12), (0.72, 0.05), (0.60, 0.24),
    (0.44, 0.16), (0.30, 0.34), (0.16, 0.24), (0.0, 0.46),
]


def _bat(d, rng, c):
    sx, sy = 118 * _j(rng), 118 * _j(rng, 0.2)
    if rng.random() < 0.5:
        _ellipse(d, 128, 128, 126, 78, fill=c[1])
        _ellipse(d, 128, 128, 126, 78, outline=c[0], width=6)
        sx, sy = sx * 0.88, sy * 0.8
    right = [(128 + x * sx, 128 + y * sy) for x, y in _BAT_RIGHT]
    left = [(256 - x, y) for x, y in reversed(right)]
    d.polygon(right + left, fill=c[0])


def _claw_marks(d, rng, c):
    tilt = rng.uniform(0.3, 0.7)
    for k in range(3):
        x0 = 60 + k * 50
        pts_l, pts_r = [], []
        for i in range(13):
            t = i / 12
            width = 16 * math.sin(math.pi * t) * _j(rng, 0.05) + 1
            x = x0 + 80 * tilt * t + 22 * math.sin(math.pi * t)
            y = 24 + 200 * t
            pts_l.append((x - width, y))
            pts_r.append((x + width, y))
        d.polygon(pts_l + pts_r[::-1], fill=c[0])
    if rng.random() < 0.5:
        d.polygon([(96, 236), (160, 236), (128, 200)], fill=c[1])


def _shield(d, rng, c):
    r = 118 * _j(rng, 0.05)
    for k, frac in enumerate((1.0, 0.78, 0.56)):
        _ellipse(d, 128, 128, r * frac, r * frac, fill=c[k % 2])
    _ellipse(d, 128, 128, r * 0.36, r * 0.36, fill=c[2])
    d.polygon(_star(128, 128, r * 0.34, r * 0.13, rot=-math.pi / 2 + rng.normal(0, 0.05)),
              fill=c[1] if rng.random() < 0.5 else c[0])


def _cat_mask(d, rng, c):
    ear = 26 * _j(rng, 0.3)
    outline = [
        (16, 132), (42, 84), (58, ear), (96, 78), (128, 90), (160, 78), (198, ear), (214, 84),
        (240, 132), (204, 178), (152, 170), (128, 194), (104, 170), (52, 178),
    ]
    d.polygon(outline, fill=c[0])
    for sx in (-1, 1):  # almond eye holes, their outer corners raised
        cx, cy, hw, hh = 128 + sx * 46, 130, 30 * _j(rng), 13 * _j(rng)
        arc = np.linspace(0, math.pi, 9)
        upper = [(cx - hw * math.cos(a), cy - hh * math.sin(a)) for a in arc]
        lower = [(cx + hw * math.cos(a), cy + 0.6 * hh * math.sin(a)) for a in arc]
        d.polygon([(x, y - 0.35 * (x - cx) * sx) for x, y in upper + lower], fill=_CLEAR)


def _flaming_skull(d, rng, c):
    for k in range(int(rng.integers(5, 8))):  # flames behind the skull
        x = 48 + k * 160 / 6 + rng.normal(0, 6)
        h = rng.uniform(90, 130)
        lean = rng.normal(0, 18)
        d.polygon([(x - 24, 120), (x - 6 + lean / 2, 120 - h * 0.6), (x + lean, 120 - h),
                   (x + 10 + lean / 3, 120 - h * 0.45), (x + 24, 120)], fill=c[1])
    _ellipse(d, 128, 128, 62, 58, fill=c[0])
    d.rounded_rectangle([90, 160, 166, 226], radius=14, fill=c[0])
    for sx in (-1, 1):
        _ellipse(d, 128 + sx * 26, 130, 17 * _j(rng), 20 * _j(rng), fill=_CLEAR)
    d.polygon([(120, 172), (136, 172), (128, 156)], fill=_CLEAR)
    for x in range(100, 160, 13):
        d.line([(x, 196), (x, 222)], fill=_CLEAR, width=4)


def _fist(d, rng, c):
    d.rounded_rectangle([82, 196, 174, 250], radius=8, fill=c[0])  # wrist
    d.rounded_rectangle([48, 86, 208, 206], radius=30, fill=c[0])
    for k in range(4):  # knuckles along the top
        _ellipse(d, 74 + k * 36, 90, 22 * _j(rng, 0.08), 22, fill=c[0])
    for k in range(1, 4):  # finger gaps
        x = 56 + k * 36
        d.line([(x, 76), (x, 146)], fill=c[1], width=5)
    d.rounded_rectangle([56, 140, 170, 178], radius=18, fill=c[0], outline=c[1], width=5)  # thumb


def _arc_reactor(d, rng, c):
    r = 118 * _j(rng, 0.05)
    _ellipse(d, 128, 128, r, r, outline=c[0], width=int(14 * _j(rng)))
    n = int(rng.integers(8, 13))
    for k in range(n):
        a = 2 * math.pi * k / n
        a0, a1 = a - math.pi / n * 0.6, a + math.pi / n * 0.6
        pts = [(128 + rr * math.cos(aa), 128 + rr * math.sin(aa))
               for rr, aa in ((r * 0.62, a0), (r * 0.86, a0), (r * 0.86, a1), (r * 0.62, a1))]
        d.polygon(pts, fill=c[1])
    _ellipse(d, 128, 128, r * 0.5, r * 0.5, outline=c[0], width=8)
    tri = [(128 + r * 0.42 * math.cos(a), 128 + r * 0.42 * math.sin(a))
           for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
    d.polygon(tri, fill=c[0])
    _ellipse(d, 128, 128, r * 0.12, r * 0.12, fill=c[2])


def _spider(d, rng, c):
    w = int(8 * _j(rng))
    for sx in (-1, 1):  # four legs a side: hip, knee, foot
        for k, (kx, ky, fx, fy) in enumerate(((50, -70, 70, -120), (70, -20, 120, -60),
                                               (70, 30, 118, 70), (48, 70, 64, 122))):
            hip = (128 + sx * 14, 104 + k * 10)
            knee = (128 + sx * kx * _j(rng), 104 + ky * _j(rng))
            foot = (128 + sx * fx * _j(rng, 0.08), 104 + fy)
            d.line([hip, knee, foot], fill=c[0], width=w, joint="curve")
    _ellipse(d, 128, 154, 30 * _j(rng), 46 * _j(rng), fill=c[0])
    _ellipse(d, 128, 100, 22, 26, fill=c[0])
    _ellipse(d, 128, 70, 13, 13, fill=c[0])


_S_PATH = [(176, 82), (150, 70), (104, 72), (82, 94), (98, 120), (150, 134), (176, 158),
           (162, 186), (114, 192), (78, 178)]


def _super_s(d, rng, c):
    top = 42 * _j(rng, 0.2)
    d.polygon([(44, top), (212, top), (250, top + 48), (128, 242), (6, top + 48)], fill=c[0])
    path = [(x + rng.normal(0, 3), y * (0.95 + top / 840) + rng.normal(0, 3)) for x, y in _S_PATH]
    d.line(path, fill=c[1], width=int(20 * _j(rng)), joint="curve")


EMBLEMS: dict[str, Callable] = dict(zip(CLASSES, (
    _ant, _trident, _avengers, _bat, _claw_marks, _shield, _cat_mask, _flaming_skull, _fist,
    _arc_reactor, _spider, _super_s,
)))


def _emblem(cls: int, rng: np.random.Generator, colours, side: int) -> Image.Image:
    """The class's emblem as an RGBA image about ``side`` pixels wide, rotated."""
    canvas = Image.new("RGBA", (C, C), _CLEAR)
    EMBLEMS[CLASSES[cls]](ImageDraw.Draw(canvas), rng, colours)
    if rng.random() < 0.15:  # line-art print: keep a band along every edge, inner ones too
        edges = [ch.filter(ImageFilter.FIND_EDGES) for ch in canvas.split()]
        band = edges[0]
        for e in edges[1:]:
            band = ImageChops.lighter(band, e)
        band = band.point(lambda v: 255 if v > 40 else 0).filter(ImageFilter.MaxFilter(7))
        canvas = Image.new("RGBA", (C, C), colours[0] + (0,))
        canvas.putalpha(band)
    aspect = rng.uniform(0.85, 1.15)  # a little squash, as on a curved or tilted product
    emblem = canvas.resize((max(8, int(side * aspect)), max(8, int(side / aspect))), Image.BICUBIC)
    return emblem.rotate(float(rng.uniform(-35, 35)), resample=Image.BICUBIC, expand=True)


# --------------------------------------------------------------------------------------------
# Scenes: background, clutter, a product, the emblem printed on it, camera effects.


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    a, b = np.array(_random_colour(rng), float), np.array(_random_colour(rng), float)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # linear gradient at a random angle
        t = np.cos(rng.uniform(0, 2 * np.pi)) * xx / w + np.sin(rng.uniform(0, 2 * np.pi)) * yy / h
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif kind == 1:  # wall and table: a soft horizon
        horizon = rng.uniform(0.4, 0.8) * h
        t = 1 / (1 + np.exp(-(yy - horizon) / 3))
    else:  # radial light
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.clip(np.hypot(xx - cx, yy - cy) / max(w, h), 0, 1)
    img = a * (1 - t[..., None]) + b * t[..., None]
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


def _clutter(rng: np.random.Generator, img: Image.Image) -> None:
    w, h = img.size
    layer = Image.new("RGBA", (w, h), _CLEAR)
    d = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(3, 12))):
        colour = _random_colour(rng) + (int(rng.integers(90, 256)),)
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h
        kind = rng.integers(4)
        if kind == 0:
            d.ellipse([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            d.rectangle([x0, y0, x1, y1], fill=colour)
        elif kind == 2:
            d.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(2, 10)))
        else:
            pts = [(rng.uniform(x0, x1), rng.uniform(y0, y1)) for _ in range(int(rng.integers(3, 7)))]
            d.polygon(pts, fill=colour)
    img.paste(layer, (0, 0), layer)


def _tshirt(d, cx, cy, s):
    pts = [(-0.12, -0.42), (-0.3, -0.38), (-0.5, -0.16), (-0.4, -0.02), (-0.29, -0.12),
           (-0.29, 0.46), (0.29, 0.46), (0.29, -0.12), (0.4, -0.02), (0.5, -0.16), (0.3, -0.38),
           (0.12, -0.42), (0.0, -0.33)]
    d.polygon([(cx + x * s, cy + y * s) for x, y in pts], fill=255)
    return (cx - 0.24 * s, cy - 0.3 * s, cx + 0.24 * s, cy + 0.2 * s)


def _mug(d, cx, cy, s):
    d.ellipse([cx + 0.12 * s, cy - 0.2 * s, cx + 0.46 * s, cy + 0.2 * s], outline=255,
              width=max(3, int(0.07 * s)))
    d.rounded_rectangle([cx - 0.36 * s, cy - 0.38 * s, cx + 0.26 * s, cy + 0.4 * s],
                        radius=int(0.06 * s), fill=255)
    return (cx - 0.33 * s, cy - 0.3 * s, cx + 0.23 * s, cy + 0.34 * s)


def _cap(d, cx, cy, s):
    d.pieslice([cx - 0.42 * s, cy - 0.4 * s, cx + 0.42 * s, cy + 0.44 * s], 180, 360, fill=255)
    d.ellipse([cx - 0.5 * s, cy - 0.06 * s, cx + 0.56 * s, cy + 0.2 * s], fill=255)
    return (cx - 0.26 * s, cy - 0.36 * s, cx + 0.26 * s, cy + 0.06 * s)


def _bag(d, cx, cy, s):
    d.arc([cx - 0.22 * s, cy - 0.56 * s, cx + 0.22 * s, cy - 0.1 * s], 180, 360, fill=255,
          width=max(3, int(0.05 * s)))
    d.rectangle([cx - 0.4 * s, cy - 0.32 * s, cx + 0.4 * s, cy + 0.46 * s], fill=255)
    return (cx - 0.34 * s, cy - 0.26 * s, cx + 0.34 * s, cy + 0.4 * s)


def _phone(d, cx, cy, s):
    d.rounded_rectangle([cx - 0.27 * s, cy - 0.48 * s, cx + 0.27 * s, cy + 0.48 * s],
                        radius=int(0.08 * s), fill=255)
    return (cx - 0.25 * s, cy - 0.18 * s, cx + 0.25 * s, cy + 0.4 * s)


def _poster(d, cx, cy, s):
    d.rectangle([cx - 0.4 * s, cy - 0.48 * s, cx + 0.4 * s, cy + 0.48 * s], fill=255)
    return (cx - 0.36 * s, cy - 0.36 * s, cx + 0.36 * s, cy + 0.36 * s)


def _badge(d, cx, cy, s):
    d.ellipse([cx - 0.45 * s, cy - 0.45 * s, cx + 0.45 * s, cy + 0.45 * s], fill=255)
    return (cx - 0.34 * s, cy - 0.34 * s, cx + 0.34 * s, cy + 0.34 * s)


PRODUCTS: dict[str, Callable] = {
    "t-shirt": _tshirt, "mug": _mug, "cap": _cap, "bag": _bag, "phone case": _phone,
    "poster": _poster, "badge": _badge,
}


def _product(rng: np.random.Generator, img: Image.Image):
    """Draw a random product; return its colour and the box its print goes in."""
    w, h = img.size
    kind = list(PRODUCTS)[int(rng.integers(len(PRODUCTS)))] if rng.random() < 0.88 else None
    if kind is None:  # a bare logo on the background
        side = rng.uniform(0.5, 0.8) * min(w, h)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        colour = tuple(int(v) for v in np.asarray(img.resize((1, 1))).reshape(3))
        return colour, (x0, y0, x0 + side, y0 + side)
    s = rng.uniform(0.75, 1.0) * min(w, h)
    cx, cy = w / 2 + rng.normal(0, 0.08) * w, h / 2 + rng.normal(0, 0.08) * h
    mask = Image.new("L", (w, h), 0)
    box = PRODUCTS[kind](ImageDraw.Draw(mask), cx, cy, s)
    colour = _random_colour(rng)
    # shade the product with a soft light from one side, and give it a darker rim
    shade = np.linspace(rng.uniform(0.75, 0.95), rng.uniform(1.0, 1.15), w, dtype=np.float32)
    body = np.clip(np.array(colour, np.float32)[None, None, :] * shade[None, :, None], 0, 255)
    body = np.broadcast_to(body, (h, w, 3)).astype(np.uint8)
    img.paste(Image.fromarray(body, "RGB"), (0, 0), mask)
    rim = ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(3)))
    img.paste(tuple(int(v * 0.6) for v in colour), (0, 0), rim)
    return colour, box


def _camera(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.2))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.3))
    if rng.random() < 0.45:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 2.0)))
    sigma = rng.uniform(0, 9)
    if sigma > 1:
        arr = np.asarray(img, np.float32) + rng.normal(0, sigma, (img.height, img.width, 1))
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    return img


def render_image(cls: int, rng: np.random.Generator, image_size: int | None = None) -> tuple[Image.Image, int]:
    """One demo photo of class index ``cls``: the RGB image and the JPEG quality to save it at.

    ``image_size`` fixes a square side; ``None`` draws width and height in 160..224.
    """
    if image_size is None:
        w, h = (int(v) for v in rng.integers(_MIN_SIDE, _MAX_SIDE + 1, size=2))
    else:
        w = h = int(image_size)
    img = _background(rng, w, h)
    _clutter(rng, img)
    if rng.random() < 0.4:  # another hero's small logo in the background, as on real photos
        other = int(rng.integers(len(CLASSES)))
        small = _emblem(other, rng, _emblem_colours(rng, other, (128, 128, 128)),
                        int(rng.uniform(0.15, 0.3) * min(w, h)))
        img.paste(small, (int(rng.uniform(-0.1, 0.9) * w), int(rng.uniform(-0.1, 0.9) * h)), small)
    colour, (x0, y0, x1, y1) = _product(rng, img)
    side = float(np.clip(min(x1 - x0, y1 - y0) * rng.uniform(0.8, 1.15), 0.26 * min(w, h), 0.72 * min(w, h)))
    emblem = _emblem(cls, rng, _emblem_colours(rng, cls, colour), int(side))
    cx, cy = (x0 + x1) / 2 + rng.normal(0, 0.03 * w), (y0 + y1) / 2 + rng.normal(0, 0.03 * h)
    img.paste(emblem, (int(cx - emblem.width / 2), int(cy - emblem.height / 2)), emblem)
    if rng.random() < 0.35:  # something in front: a hand, a price tag, a fold
        _occlude(rng, img, (cx, cy), side)
    return _camera(rng, img), int(rng.integers(55, 96))


def _occlude(rng: np.random.Generator, img: Image.Image, centre, side: float) -> None:
    """Cover up to about a third of the emblem with one opaque shape from one side."""
    angle = rng.uniform(0, 2 * np.pi)
    r = side * rng.uniform(0.35, 0.55)
    ox, oy = centre[0] + math.cos(angle) * side * 0.75, centre[1] + math.sin(angle) * side * 0.75
    box = [ox - r, oy - r * rng.uniform(0.6, 1.4), ox + r, oy + r * rng.uniform(0.6, 1.4)]
    d = ImageDraw.Draw(img)
    colour = _random_colour(rng)
    if rng.random() < 0.5:
        d.ellipse(box, fill=colour)
    else:
        d.rounded_rectangle(box, radius=int(r / 4), fill=colour)


# --------------------------------------------------------------------------------------------
# The plan: which file is drawn from which class, which are copies, what goes where.


@dataclass(frozen=True)
class _File:
    rel: str                   # path under OUT_DIR, "/"-separated
    true_class: int            # what the image shows
    filed_class: int | None    # the folder it sits in (train) or None (test)
    key: tuple[int, ...]       # the seed of its drawing
    copy_of: str | None = None  # byte copy of this file instead of a drawing
    mode: str = "RGB"          # mode to save in (one test PNG is RGBA)


def _class_counts(n_train: int) -> list[int]:
    """Split ``n_train`` over the classes by ``CLASS_WEIGHTS`` (largest remainder, at least 3)."""
    base = np.full(len(CLASSES), 3)
    share = CLASS_WEIGHTS / CLASS_WEIGHTS.sum() * (n_train - base.sum())
    counts = base + np.floor(share).astype(int)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    counts[order[: n_train - counts.sum()]] += 1
    return counts.tolist()


def _plan(seed: int, n_train: int, n_test: int) -> tuple[list[_File], list[_File], dict]:
    rng = np.random.default_rng([seed, _STREAM_PLAN])
    counts = _class_counts(n_train)
    filed = np.repeat(np.arange(len(CLASSES)), counts)
    true = filed.copy()
    width = max(4, len(str(n_train)))
    numbers = rng.permutation(n_train) + 1  # file names carry no hint of class or order
    rel = [f"{TRAIN_DIR}/{CLASSES[c]}/img_{numbers[i]:0{width}d}.jpg" for i, c in enumerate(filed)]
    copy_of: list[int | None] = [None] * n_train
    free = set(range(n_train))

    def take(cls: int | None = None, not_cls: int | None = None) -> int:
        pool = sorted(i for i in free if (cls is None or filed[i] == cls) and filed[i] != not_cls)
        i = int(pool[rng.integers(len(pool))])
        free.discard(i)
        return i

    planted = {"seed": seed, "exact_duplicates": [], "cross_class_duplicates": [],
               "mislabelled": [], "test_copies_of_train": [], "test_odd_formats": []}
    for _ in range(max(1, round(n_train / 250))):  # duplicates within one class
        cls = int(rng.choice(len(CLASSES), p=np.array(counts) / n_train))
        a, b = take(cls), take(cls)
        copy_of[b] = a
        planted["exact_duplicates"].append({"a": rel[a], "b": rel[b], "class": CLASSES[cls]})
    for _ in range(2 if n_train < 500 else 3):  # the same file under two classes
        a = take()
        b = take(not_cls=int(filed[a]))
        copy_of[b], true[b] = a, filed[a]
        entry = {"a": rel[a], "b": rel[b], "classes": [CLASSES[filed[a]], CLASSES[filed[b]]]}
        planted["exact_duplicates"].append({**entry, "class": None})
        planted["cross_class_duplicates"].append(entry)
    for _ in range(max(1, round(0.02 * n_train))):  # drawn as one class, filed as another
        i = take()
        true[i] = (filed[i] + rng.integers(1, len(CLASSES))) % len(CLASSES)
        planted["mislabelled"].append({"path": rel[i], "true_class": CLASSES[true[i]],
                                       "filed_class": CLASSES[filed[i]]})
    train = [_File(rel[i], int(true[i]), int(filed[i]), (seed, _STREAM_TRAIN, i),
                   None if copy_of[i] is None else rel[copy_of[i]]) for i in range(n_train)]

    test_true = rng.choice(len(CLASSES), size=n_test, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum())
    ext = ["jpg"] * n_test
    order = rng.permutation(n_test)
    copies = order[:2].tolist()  # test images that are copies of train images, as in the real data
    sources = [take() for _ in copies]
    for j, ext_ in zip(order[2:5], ("png", "png", "jpeg")):
        ext[j] = ext_
    modes = ["RGB"] * n_test
    modes[order[2]] = "RGBA"
    test = []
    for j in range(n_test):
        name = f"{TEST_DIR}/superhero_test_{j + 1}.{ext[j]}"
        src = sources[copies.index(j)] if j in copies else None
        cls = int(filed[src]) if src is not None else int(test_true[j])
        test.append(_File(name, cls, None, (seed, _STREAM_TEST, j),
                          None if src is None else rel[src], modes[j]))
        if src is not None:
            planted["test_copies_of_train"].append({"test": name, "train": rel[src]})
        if ext[j] != "jpg":
            planted["test_odd_formats"].append({"path": name, "mode": modes[j]})
    return train, test, planted


# --------------------------------------------------------------------------------------------
# Writing


def _write_image(out: Path, f: _File, image_size: int | None) -> None:
    path = out / f.rel
    tmp = path.with_name(f".{path.name}.tmp")
    if f.copy_of is not None:
        shutil.copyfile(out / f.copy_of, tmp)
    else:
        img, quality = render_image(f.true_class, np.random.default_rng(list(f.key)), image_size)
        if path.suffix == ".png":
            img = img.convert(f.mode)
            if f.mode == "RGBA":  # a little transparency in one corner, as cut-out PNGs have
                alpha = Image.new("L", img.size, 255)
                ImageDraw.Draw(alpha).rectangle([0, 0, img.width // 6, img.height // 6], fill=0)
                img.putalpha(alpha)
            img.save(tmp, format="PNG")
        else:
            img.save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, path)


def _params(seed: int, n_train: int, n_test: int, image_size: int | None) -> dict:
    return {"format_version": FORMAT_VERSION, "seed": seed, "n_train": n_train,
            "n_test": n_test, "image_size": image_size}


def _is_own(name: str) -> bool:
    return name in _OWN_NAMES or (name.startswith(".") and name.endswith(".tmp"))


def _existing_demo(out: Path, params: dict) -> dict | None:
    """The completion marker of a demo with these parameters at ``out``, if there is one.

    Raises DemoError if ``out`` holds anything that is not a demo; clears an incomplete or
    different demo so it can be written afresh.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise DemoError(f"demo output {out} exists and is not a folder")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return None
    foreign = [n for n in names if not _is_own(n)]
    if foreign or not ({STARTED_FILE, COMPLETE_FILE} & set(names)):
        raise DemoError(
            f"refusing to write the demo into {out}: the folder is not empty and does not look "
            f"like a previous demo (found {(foreign or names)[:3]}); choose an empty or new folder"
        )
    if COMPLETE_FILE in names:
        summary = read_json(out / COMPLETE_FILE)
        n_files = sum(1 for p in (out / TRAIN_DIR).rglob("*") if p.is_file()) + \
            sum(1 for p in (out / TEST_DIR).glob("*") if p.is_file())
        if summary.get("params") == params and n_files == params["n_train"] + params["n_test"]:
            return summary
    for name in names:  # ours to remove: an interrupted run or a demo with other parameters
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


def make_demo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 1000,
    n_test: int = 300,
    image_size: int | None = None,
    *,
    progress: bool = False,
) -> dict:
    """Write the demo competition into ``out_dir`` and return its summary.

    The summary holds the paths (``train_dir``, ``test_dir``, ``sample_submission``,
    ``test_labels``, ``planted``), ``class_counts`` (train files per class folder), the
    parameters, and ``generated`` (False when a complete demo with the same parameters was
    already there and nothing was written).
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DemoError(f"seed must be a non-negative integer, got {seed!r}")
    if n_train < 5 * len(CLASSES):
        raise DemoError(f"n_train must be at least {5 * len(CLASSES)} (5 per class), got {n_train}")
    if n_test < 10:
        raise DemoError(f"n_test must be at least 10, got {n_test}")
    if image_size is not None and not 32 <= image_size <= 1024:
        raise DemoError(f"image_size must be None or between 32 and 1024, got {image_size}")
    out = Path(out_dir)
    params = _params(int(seed), int(n_train), int(n_test), image_size)
    done = _existing_demo(out, params)
    if done is not None:
        return {**_summary(out, done), "generated": False}

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / STARTED_FILE, params)
    train, test, planted = _plan(int(seed), int(n_train), int(n_test))
    for cls in CLASSES:
        (out / TRAIN_DIR / cls).mkdir(parents=True, exist_ok=True)
    (out / TEST_DIR).mkdir(exist_ok=True)
    # drawings first, then the byte copies of them
    files = sorted(train + test, key=lambda f: f.copy_of is not None)
    bar = _progress(len(files), progress)
    for f in files:
        _write_image(out, f, image_size)
        bar.update(1)
    bar.close()

    ids = [Path(f.rel).stem for f in test]
    rng = np.random.default_rng([int(seed), _STREAM_PLAN, 1])
    shown = rng.permutation(len(test))
    atomic_write_csv(out / SUBMISSION_FILE,
                     pd.DataFrame({"filename": [ids[j] for j in shown], "Superhero": ""}))
    public = set(rng.permutation(len(test))[: round(0.4 * len(test))].tolist())
    atomic_write_csv(out / TEST_LABELS_FILE, pd.DataFrame({
        "filename": ids,
        "label": [SUBMISSION_LABELS[f.true_class] for f in test],
        "split": ["public" if j in public else "private" for j in range(len(test))],
    }))
    atomic_write_json(out / PLANTED_FILE, planted)
    counts = {cls: sum(f.filed_class == k for f in train) for k, cls in enumerate(CLASSES)}
    # relative paths only, so the marker (and the demo's bytes) do not depend on where it lives
    marker = {"params": params, "class_counts": counts, "n_train_files": len(train),
              "n_test_files": len(test)}
    atomic_write_json(out / COMPLETE_FILE, marker)  # last: the demo is whole
    (out / STARTED_FILE).unlink()
    return {**_summary(out, marker), "generated": True,
            "seconds": round(time.perf_counter() - start, 2)}


def _summary(out: Path, marker: dict) -> dict:
    return {
        **marker,
        "out_dir": str(out),
        "train_dir": str(out / TRAIN_DIR),
        "test_dir": str(out / TEST_DIR),
        "sample_submission": str(out / SUBMISSION_FILE),
        "test_labels": str(out / TEST_LABELS_FILE),
        "planted": str(out / PLANTED_FILE),
    }


def _progress(total: int, enabled: bool):
    """tqdm, silenced when ``enabled`` is False or HEROSTACK_NO_PROGRESS is set."""
    from tqdm.auto import tqdm

    disable = not enabled or bool(os.environ.get("HEROSTACK_NO_PROGRESS"))
    return tqdm(total=total, desc="demo images", unit="img", disable=disable)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m competition.demo",
        description="Write the built-in demo competition (synthetic superhero merchandise) "
                    "in the CrowdAnalytix layout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", help="folder to write into (new, empty, or a previous demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--n-train", type=int, default=1000, help="train images")
    parser.add_argument("--n-test", type=int, default=300, help="test images")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square side in pixels (default: varied, 160 to 224)")
    args = parser.parse_args(argv)
    try:
        summary = make_demo(args.out_dir, args.seed, args.n_train, args.n_test, args.image_size,
                            progress=True)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not summary["generated"]:
        print(f"{args.out_dir} already holds the complete demo with seed {args.seed}; nothing to do")
        return 0
    print(f"wrote the demo to {args.out_dir} in {summary['seconds']:.1f} s")
    print(f"{'class':<18}{'train':>6}")
    for cls, n in summary["class_counts"].items():
        print(f"{cls:<18}{n:>6}")
    print(f"{'test':<18}{summary['n_test_files']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
