"""Procedural anime-style faces: the embedded default dataset.

Each face is drawn with PIL at 4x the target size and box-filtered down, so edges are
antialiased. Face i depends only on (seed, i): its attributes come from its own numpy
Generator, so a dataset of 100 faces is the first 100 of a dataset of 10,000.

Shapes are built in "canonical" coordinates: the unit square, y pointing down, the face
upright and centred, and each point is one complex number x + yj. A per-face similarity
transform (tilt, scale, shift) is then a single complex multiply-add, and mirroring a
shape about the face's axis is a conjugation.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from animegen.data.limits import MAX_DATASET_BYTES, MAX_IMAGES, MIN_SYNTH_RESOLUTION
from animegen.data.store import split_indices, write_dataset
from animegen.errors import UserError
from animegen.settings import MAX_RESOLUTION, MAX_SEED, check_int, check_new_folder

SUPERSAMPLE = 4
ZOOM = 1.12  # canonical face -> frame: chin near the bottom edge, hair cropped at the top, like real crops
PIVOT = 0.5 + 0.55j  # tilt and scale happen about this point (between the eyes and the mouth)
PI = np.pi

# Named palettes: a label names the base colour; the drawn colour is the base jittered
# slightly, and that rgb is recorded too. Hair colours are far apart so the name is visible.
HAIR_COLORS = {
    "black": (38, 36, 48), "brown": (112, 68, 42), "blonde": (238, 208, 120), "orange": (236, 128, 48),
    "red": (184, 36, 44), "pink": (244, 150, 186), "purple": (128, 80, 176), "blue": (52, 92, 196),
    "teal": (54, 170, 170), "green": (86, 156, 70), "silver": (196, 200, 214),
}
EYE_COLORS = {
    "blue": (48, 108, 220), "green": (40, 160, 80), "red": (200, 40, 50), "purple": (140, 70, 200),
    "brown": (130, 76, 40), "gold": (220, 160, 30), "teal": (30, 170, 180), "pink": (230, 90, 150),
}
SKIN_TONES = {"pale": (255, 238, 228), "fair": (252, 224, 206), "warm": (246, 210, 180), "tan": (222, 174, 136)}
HAIR_STYLES = ("short", "long", "twintails", "ponytail", "spiky")
BANGS = ("straight", "jagged", "swept", "parted")
EXPRESSIONS = ("smile", "grin", "neutral", "surprised", "happy", "cat")
ACCESSORIES = ("none", "bow", "clip")
LASH = (46, 30, 36)
WHITE = (255, 255, 255)


# ---------------------------------------------------------------- geometry (canonical, complex)
# Rendering time is mostly Python overhead on tiny arrays, so the sampling grids are cached.
@functools.lru_cache(maxsize=None)
def _unit(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)


@functools.lru_cache(maxsize=None)
def _bernstein(n: int) -> np.ndarray:
    t = _unit(n)[:, None]
    return np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3], 1)


def ellipse(center: complex, rx: float, ry: float, start=0.0, end=2 * PI, n=28) -> np.ndarray:
    """Points on an axis-aligned ellipse from angle `start` to `end` (y down: PI..2PI is the top half)."""
    t = start + (end - start) * _unit(n)
    return center + rx * np.cos(t) + 1j * ry * np.sin(t)


def bezier(p0: complex, p1: complex, p2: complex, p3: complex, n=16) -> np.ndarray:
    """Cubic Bezier curve from p0 to p3 with control points p1, p2."""
    return _bernstein(n) @ np.array([p0, p1, p2, p3])


def mirror(points: np.ndarray, cx: float) -> np.ndarray:
    """Reflect about the vertical line x = cx, reversing the order so outlines keep their direction."""
    return (2 * cx - np.conj(points))[::-1]


def shade(rgb, factor: float) -> tuple:
    """Darker (factor < 1) or lighter towards white (factor > 1)."""
    if factor <= 1:
        return tuple(int(v * factor) for v in rgb)
    return tuple(int(min(255, v + (255 - v) * (factor - 1))) for v in rgb)


def mix(a, b, t: float) -> tuple:
    return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))


class Painter:
    """Draws canonical shapes onto the supersampled canvas through the face's similarity transform."""

    def __init__(self, image: Image.Image, tilt_deg: float, scale: float, shift: complex):
        self.image, self.draw = image, ImageDraw.Draw(image)
        size = image.size[0]
        self.rotation = size * ZOOM * scale * np.exp(1j * np.deg2rad(tilt_deg))
        self.origin = size * (PIVOT + shift)
        self.px_per_unit = size * ZOOM * scale

    def pixels(self, points) -> list:
        """Canonical points -> flat [x0, y0, x1, y1, ...] pixel list (a complex128 array viewed as float pairs)."""
        z = np.ascontiguousarray((np.asarray(points, complex) - PIVOT) * self.rotation + self.origin)
        return z.view(np.float64).tolist()

    def width(self, w: float) -> int:
        return max(1, int(round(w * self.px_per_unit)))

    def poly(self, points, fill, outline=None, width=0.008):
        xy = self.pixels(points)
        self.draw.polygon(xy, fill=fill)
        if outline:  # a closed polyline: several times faster than polygon(width=...) in PIL
            self.draw.line(xy + xy[:2], fill=outline, width=self.width(width), joint="curve")

    def line(self, points, fill, width):
        self.draw.line(self.pixels(points), fill=fill, width=self.width(width), joint="curve")

    def mask(self, *polygons) -> Image.Image:
        """A 1-bit mask of the polygons' union (1-bit masks paste many times faster than 8-bit ones)."""
        m = Image.new("1", self.image.size, 0)
        d = ImageDraw.Draw(m)
        for points in polygons:
            d.polygon(self.pixels(points), fill=1)
        return m


# ---------------------------------------------------------------- face attributes
def sample_face(rng: np.random.Generator) -> dict:
    """Every attribute of one face. All randomness is drawn in one call (Generator calls are slow)."""
    u = iter(rng.random(48).tolist())

    def pick(options):
        return options[int(next(u) * len(options))]

    def uniform(lo, hi, digits=3):
        return round(lo + (hi - lo) * next(u), digits)

    def color(lo=0, hi=255):
        return tuple(lo + int((hi + 1 - lo) * next(u)) for _ in range(3))

    def jitter(rgb, amount):
        return tuple(int(min(255, max(0, v + uniform(-amount, amount, 0)))) for v in rgb)

    hair, eye, skin = pick(list(HAIR_COLORS)), pick(list(EYE_COLORS)), pick(list(SKIN_TONES))
    pastel = next(u) < 0.7  # mostly light backgrounds, as in the real crops
    background = mix(color(), WHITE, 0.55) if pastel else color(40)
    return {
        "hair_color": hair, "hair_rgb": jitter(HAIR_COLORS[hair], 10),
        "hair_style": pick(HAIR_STYLES), "bangs": pick(BANGS), "ahoge": next(u) < 0.3,
        "eye_color": eye, "eye_rgb": jitter(EYE_COLORS[eye], 12), "eye_size": uniform(0.88, 1.12),
        "skin": skin, "skin_rgb": jitter(SKIN_TONES[skin], 4),
        "expression": pick(EXPRESSIONS), "blush": next(u) < 0.5,
        "accessory": pick(ACCESSORIES), "accessory_rgb": color(),
        "clothes_rgb": color(20), "background_rgb": background,
        "spikes": 4 + int(next(u) * 4), "sweep": pick((-1, 1)) * uniform(0.5, 1),
        "look": uniform(-1, 1), "turn": uniform(-1, 1),
        "tilt_deg": uniform(-10, 10, 2), "scale": uniform(0.92, 1.08), "shift": [uniform(-0.03, 0.03) for _ in "xy"],
    }


# ---------------------------------------------------------------- face parts
def face_outline(cx: float) -> np.ndarray:
    """Cranium arc plus cheeks narrowing to a pointed chin."""
    right = bezier(cx + 0.29 + 0.46j, cx + 0.29 + 0.66j, cx + 0.12 + 0.82j, cx + 0.875j)
    return np.concatenate([ellipse(cx + 0.46j, 0.29, 0.33, PI, 2 * PI, 24), right, mirror(right, cx)])


def hair_back(f: dict, cx: float) -> list[np.ndarray]:
    """Hair behind the face; its outline is the hair style."""
    style, crown = f["hair_style"], ellipse(cx + 0.44j, 0.36, 0.36, PI, 2 * PI, 20)
    if style == "spiky":
        t = PI * 0.85 + PI * 1.3 * _unit(2 * f["spikes"] + 5)
        r = np.where(np.arange(len(t)) % 2 == 0, 0.35, 0.44)
        return [cx + 0.46j + r * np.exp(1j * t)]
    if style == "long":
        side = bezier(cx + 0.36 + 0.44j, cx + 0.40 + 0.7j, cx + 0.42 + 0.9j, cx + 0.40 + 1.1j)
        return [np.concatenate([crown, side, [cx + 0.2 + 1.1j, cx - 0.2 + 1.1j], mirror(side, cx)])]
    side = bezier(cx + 0.36 + 0.44j, cx + 0.38 + 0.62j, cx + 0.36 + 0.8j, cx + 0.3 + 0.86j)
    back = np.concatenate([crown, side, mirror(side, cx)])
    if style == "short":
        return [back]
    if style == "twintails":
        tail = np.concatenate([bezier(cx + 0.3 + 0.2j, cx + 0.52 + 0.16j, cx + 0.56 + 0.5j, cx + 0.6 + 1.05j),
                               bezier(cx + 0.44 + 1.05j, cx + 0.46 + 0.6j, cx + 0.4 + 0.36j, cx + 0.26 + 0.3j)])
        return [back, tail, mirror(tail, cx)]
    s = 1 if f["sweep"] > 0 else -1  # ponytail: tied on the side the fringe sweeps to
    tail = np.concatenate([bezier(cx + 0.1j, cx + s * 0.4 - 0.02j, cx + s * 0.62 + 0.3j, cx + s * 0.56 + 0.9j),
                           bezier(cx + s * 0.44 + 0.8j, cx + s * 0.48 + 0.4j, cx + s * 0.3 + 0.2j, cx + 0.2j)])
    return [back, tail]


def bang_edge(f: dict, cx: float) -> np.ndarray:
    """Lower edge of the fringe, right temple to left temple: locks alternating tip and notch."""
    style = f["bangs"]
    n = 2 * f["spikes"] if style == "straight" else f["spikes"]
    u = 1 - 2 * _unit(2 * n + 1)  # +1 at the right temple, -1 at the left
    tips = np.arange(2 * n + 1) % 2 == 1
    depth = 0.015 if style == "straight" else 0.065
    x, y = cx + 0.33 * u, 0.42 + 0.14 * u ** 2 + depth * tips
    if style == "swept":
        y = y + 0.07 * f["sweep"] * u
        x = x + 0.025 * f["sweep"] * tips
    elif style == "parted":
        y = y - 0.16 * np.exp(-(u / 0.18) ** 2)
    return x + 1j * y


def hair_front(f: dict, cx: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """The fringe and the side locks that hang in front of the cheeks (all styles but spiky)."""
    fringe = np.concatenate([ellipse(cx + 0.45j, 0.345, 0.35, PI * 0.97, PI * 2.03, 24), bang_edge(f, cx)])
    if f["hair_style"] == "spiky":
        return fringe, []
    end = cx + 0.27 + (0.74j if f["hair_style"] == "short" else 0.86j)
    lock = np.concatenate([bezier(cx + 0.345 + 0.42j, cx + 0.35 + 0.6j, end + 0.04 - 0.1j, end),
                           bezier(end, end - 0.12j, cx + 0.26 + 0.56j, cx + 0.24 + 0.46j)])
    return fringe, [lock, mirror(lock, cx)]


def draw_eye(p: Painter, f: dict, center: complex, side: int, size: float):
    """One big anime eye; side = +1 for the eye on the image's right (its outer corner points right)."""
    rx, ry = 0.078 * size, 0.092 * size
    if f["expression"] == "happy":  # closed, smiling: an upturned arc
        p.line(ellipse(center + 0.3j * ry, rx, 0.7 * ry, PI * 1.1, PI * 1.9, 14), LASH, 0.016)
        return
    upper = ellipse(center, rx, ry, PI, 2 * PI, 16)  # inner-left to outer-right for side = +1
    p.poly(np.concatenate([upper, ellipse(center, rx, 0.9 * ry, 0, PI, 16)]), WHITE)
    eye, iris = f["eye_rgb"], center + 0.1 * rx * f["look"] + 0.02j * ry
    p.poly(ellipse(iris, 0.7 * rx, 0.8 * ry, n=24), shade(eye, 0.55))  # dark rim and upper shadow
    p.poly(ellipse(iris + 0.22j * ry, 0.56 * rx, 0.52 * ry, n=20), eye)
    p.poly(ellipse(iris + 0.42j * ry, 0.4 * rx, 0.28 * ry, n=16), shade(eye, 1.45))  # glow at the bottom
    p.poly(ellipse(iris + 0.05j * ry, 0.28 * rx, 0.38 * ry, n=16), shade(eye, 0.25))  # pupil
    p.poly(ellipse(iris - 0.3 * side * rx - 0.32j * ry, 0.2 * rx, 0.2 * ry, n=12), WHITE)  # highlights
    p.poly(ellipse(iris + 0.28 * side * rx + 0.36j * ry, 0.09 * rx, 0.09 * ry, n=8), WHITE)
    # Upper lash line: thickening towards the outer corner, ending in a flick.
    if side < 0:
        upper = upper[::-1]
    lash_top = upper - 1j * (0.010 + 0.016 * _unit(len(upper)))
    flick = center + side * 1.25 * rx - 0.1j * ry
    p.poly(np.concatenate([upper, [flick], lash_top[::-1]]), LASH)
    start = 0.06 if side > 0 else 0.5
    p.line(ellipse(center, 0.95 * rx, 0.9 * ry, PI * start, PI * (start + 0.44), 8), mix(LASH, WHITE, 0.35), 0.007)


def draw_mouth(p: Painter, f: dict, mouth: complex):
    expression, dark, inside = f["expression"], (120, 40, 48), (150, 44, 56)
    if expression in ("grin", "happy"):  # open: flat top, round bottom, tongue
        p.poly(ellipse(mouth, 0.045, 0.045, 0, PI, 14), inside, outline=dark, width=0.006)
        p.poly(ellipse(mouth + 0.03j, 0.024, 0.013, n=12), (240, 120, 130))
    elif expression == "surprised":
        p.poly(ellipse(mouth + 0.01j, 0.016, 0.022, n=14), inside, outline=dark, width=0.005)
    elif expression == "cat":  # the ω mouth
        lobes = [ellipse(mouth + dx, 0.017, 0.013, 0, PI, 8) for dx in (-0.017, 0.017)]
        p.line(np.concatenate(lobes), dark, 0.007)
    elif expression == "smile":
        p.line(ellipse(mouth - 0.02j, 0.04, 0.026, PI * 0.2, PI * 0.8, 10), dark, 0.008)
    else:
        p.line([mouth - 0.022, mouth + 0.022 + 0.002j], dark, 0.007)


def draw_accessory(p: Painter, f: dict, cx: float):
    color = f["accessory_rgb"]
    edge, at = shade(color, 0.5), cx - 0.27 * f["sweep"] + 0.22j  # on the side the fringe sweeps from
    if f["accessory"] == "clip":
        p.poly([at - 0.06 + 0.03j, at + 0.03 - 0.05j, at + 0.05 - 0.03j, at - 0.04 + 0.05j], color, edge, 0.005)
    elif f["accessory"] == "bow":
        wing = np.array([at, at - 0.09 - 0.06j, at - 0.09 + 0.06j])
        for w in (wing, mirror(wing, at.real)):
            p.poly(w, color, edge, 0.006)
        p.poly(ellipse(at, 0.022, 0.022, n=10), shade(color, 0.8))


def draw_face(f: dict, size: int) -> Image.Image:
    """Render one face onto a `size` x `size` canvas, back to front."""
    top, bottom = np.array(f["background_rgb"], float), np.array(shade(f["background_rgb"], 0.8), float)
    ramp = _unit(size)[:, None, None]
    column = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    image = Image.fromarray(column).resize((size, size), Image.NEAREST)  # a vertical gradient
    p = Painter(image, f["tilt_deg"], f["scale"], complex(*f["shift"]))
    cx = 0.5 + 0.025 * f["turn"]  # a slight head turn moves the face's axis
    hair, skin = f["hair_rgb"], f["skin_rgb"]
    hair_dark, skin_shadow = shade(hair, 0.6), mix(skin, (200, 120, 130), 0.28)

    for part in hair_back(f, cx):
        p.poly(part, shade(hair, 0.82), hair_dark)
    p.poly([cx - 0.075 + 0.75j, cx + 0.075 + 0.75j, cx + 0.08 + 1.0j, cx - 0.08 + 1.0j], skin_shadow)  # neck
    clothes = np.array([0.08 + 1.1j, 0.18 + 0.95j, 0.38 + 0.9j, 0.5 + 0.98j, 0.62 + 0.9j, 0.82 + 0.95j, 0.92 + 1.1j])
    p.poly(clothes, f["clothes_rgb"], shade(f["clothes_rgb"], 0.55))
    outline = face_outline(cx)
    p.poly(outline, skin, shade(skin, 0.62), 0.007)

    # The fringe casts a shadow on the face (and only on the face).
    fringe, locks = hair_front(f, cx)
    shadow = p.mask(fringe + 0.03j, *[lock + 0.02j for lock in locks])
    image.paste(skin_shadow, mask=ImageChops.logical_and(shadow, p.mask(outline)))

    eye_y, spread = 0.6j, 0.125
    for s in (-1, 1):
        if f["blush"]:
            p.poly(ellipse(cx + s * spread * 1.15 + eye_y + 0.11j, 0.055, 0.022, n=16), mix(skin, (250, 110, 130), 0.45))
        draw_eye(p, f, cx + s * spread + eye_y, s, f["eye_size"] * (1 + 0.12 * s * f["turn"]))
        brow_center = cx + s * spread + eye_y - (0.085j if f["expression"] == "surprised" else 0.06j)
        p.line(ellipse(brow_center, 0.06, 0.06, PI * 1.3, PI * 1.7, 8), hair_dark, 0.008)
    p.line([cx + 0.004 + 0.69j, cx - 0.006 + 0.705j], shade(skin, 0.6), 0.008)  # nose
    draw_mouth(p, f, cx + 0.005 * f["turn"] + 0.775j)

    for part in [fringe, *locks]:
        p.poly(part, hair, hair_dark)
    for notch in bang_edge(f, cx)[2:-2:2]:  # strands running from the notches up to the crown
        x = notch.real - cx
        p.line(bezier(notch - 0.02j, notch - 0.1j, cx + 0.5 * x + 0.22j, cx + 0.3 * x + 0.16j, 8), hair_dark, 0.005)
    p.line(ellipse(cx + 0.48j, 0.26, 0.24, PI * 1.22, PI * 1.78, 12), shade(hair, 1.45), 0.022)  # sheen
    if f["ahoge"]:
        p.line(bezier(cx + 0.11j, cx + 0.02, cx + 0.12 + 0.02j, cx + 0.1 + 0.07j, 10), hair, 0.018)
    draw_accessory(p, f, cx)
    return image


# ---------------------------------------------------------------- public API
def render_faces(count: int, resolution: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """`count` faces as uint8 (count, resolution, resolution, 3) plus one label dict each.

    Face i is drawn from numpy's Generator seeded with (seed, i), so it does not depend on `count`.
    """
    _check_request(count, resolution, seed)
    images = np.empty((count, resolution, resolution, 3), np.uint8)
    labels = []
    for i in range(count):
        face = sample_face(np.random.default_rng([seed, i]))
        images[i] = np.asarray(draw_face(face, resolution * SUPERSAMPLE).reduce(SUPERSAMPLE))
        labels.append({"index": i, **face})
    return images, labels


def synthesize_dataset(out: str | os.PathLike, count: int, resolution: int, seed: int = 0,
                       test_fraction: float = 0.2) -> dict:
    """Render `count` faces and write them as a prepared dataset at `out`; returns the manifest.

    The manifest's `labels` holds each split's face attributes, aligned with its array;
    `index` in a label is the face's number, so `render_faces` can redraw it.
    """
    _check_request(count, resolution, seed)  # all checked before hours of rendering
    check_new_folder("--out", out)
    train_idx, test_idx = split_indices(count, test_fraction, seed)
    images, labels = render_faces(count, resolution, seed)
    manifest = {
        "source": "synth", "resolution": resolution, "seed": seed, "test_fraction": test_fraction,
        "counts": {"found": count, "kept": count, "train": len(train_idx), "test": len(test_idx),
                   "duplicates": 0, "skipped": 0},
        "labels": {"train": [labels[i] for i in train_idx], "test": [labels[i] for i in test_idx]},
    }
    write_dataset(out, images[train_idx], images[test_idx], manifest)
    return manifest


def _check_request(count: int, resolution: int, seed: int) -> None:
    check_int("--count", count, 1, MAX_IMAGES)
    check_int("--resolution", resolution, MIN_SYNTH_RESOLUTION, MAX_RESOLUTION)
    check_int("--seed", seed, 0, MAX_SEED)
    size = count * resolution**2 * 3
    if size > MAX_DATASET_BYTES:
        raise UserError(f"{count} faces at {resolution}x{resolution} take {size / 2**30:.0f} GiB, over the limit of "
                        f"{MAX_DATASET_BYTES / 2**30:.0f} GiB in memory; lower --count or --resolution.")
