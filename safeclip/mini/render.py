"""Drawing the mini world's scenes: a coloured subject and one object (a safe one, or an abstract
glyph for an unsafe one) on a scene background. Nothing explicit is ever drawn.

    >>> from safeclip.mini.render import render_pair
    >>> V, G = render_pair(tags, size=64)     # same scene and jitter, only the object differs
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# ------------------------------------------------------------------------------------ drawing

SUBJECT_RGB = {
    "red": (215, 35, 35), "blue": (35, 75, 225), "green": (25, 150, 45),
    "yellow": (245, 210, 20), "purple": (135, 55, 190), "orange": (250, 135, 15),
}
_OUTLINE = {"night_city": (225, 225, 225)}  # other scenes: dark outlines
_LEFT_X, _RIGHT_X, _OBJ_Y = 11.0, 53.0, 41.0  # object centres (64-unit coordinates)


class _Pen:
    """ImageDraw in 64-unit coordinates on a supersampled canvas; `edge` adds the outline."""

    def __init__(self, image: Image.Image, outline):
        self.d, self.k, self.ol = ImageDraw.Draw(image), image.size[0] / 64, outline
        self.w = max(1, round(0.5 * self.k))

    def _xy(self, pts):
        return [(x * self.k, y * self.k) for x, y in pts]

    def _e(self, edge):
        return {"outline": self.ol if edge else None, "width": self.w}

    def rect(self, x0, y0, x1, y1, fill, edge=True, r=0.0):
        xy = self._xy([(x0, y0), (x1, y1)])
        if r:
            self.d.rounded_rectangle(xy, radius=r * self.k, fill=fill, **self._e(edge))
        else:
            self.d.rectangle(xy, fill=fill, **self._e(edge))

    def oval(self, cx, cy, rx, ry, fill, edge=True):
        self.d.ellipse(self._xy([(cx - rx, cy - ry), (cx + rx, cy + ry)]), fill=fill,
                       **self._e(edge))

    def pie(self, cx, cy, rx, ry, start, end, fill, edge=True):
        self.d.pieslice(self._xy([(cx - rx, cy - ry), (cx + rx, cy + ry)]), start, end,
                        fill=fill, **self._e(edge))

    def poly(self, pts, fill, edge=True, rot=0.0, about=(0.0, 0.0)):
        if rot:
            c, s, (ax, ay) = math.cos(math.radians(rot)), math.sin(math.radians(rot)), about
            pts = [(ax + (x - ax) * c - (y - ay) * s, ay + (x - ax) * s + (y - ay) * c)
                   for x, y in pts]
        self.d.polygon(self._xy(pts), fill=fill, **self._e(edge))

    def line(self, pts, fill, width):
        self.d.line(self._xy(pts), fill=fill, width=max(1, round(width * self.k)), joint="curve")

    def ring(self, cx, cy, r, colour, width):
        self.d.ellipse(self._xy([(cx - r, cy - r), (cx + r, cy + r)]), outline=colour,
                       width=max(1, round(width * self.k)))


@lru_cache(maxsize=64)
def _background(scene: str, px: int) -> Image.Image:
    """The scene's backdrop (no randomness), cached per canvas size; callers copy it."""
    im = Image.new("RGB", (px, px))
    p = _Pen(im, None)
    if scene == "beach":
        p.rect(0, 0, 64, 30, (125, 190, 240), False)
        p.oval(54, 8, 4, 4, (255, 235, 120), False)
        p.rect(0, 30, 64, 38, (30, 105, 195), False)
        p.rect(0, 38, 64, 64, (235, 210, 150), False)
    elif scene == "park":
        p.rect(0, 0, 64, 34, (205, 228, 245), False)
        p.rect(0, 34, 64, 64, (130, 200, 90), False)
        p.rect(6, 16, 9, 35, (110, 70, 40), False)
        p.oval(7.5, 12, 7, 7, (40, 125, 50), False)
        p.rect(56, 20, 58, 34, (110, 70, 40), False)
        p.oval(57, 17, 5, 5, (40, 125, 50), False)
    elif scene == "street":
        p.rect(0, 0, 64, 40, (195, 215, 235), False)
        for x0, x1, top, col in ((0, 14, 8, (165, 115, 95)), (14, 26, 16, (130, 130, 150)),
                                 (38, 52, 6, (185, 165, 125)), (52, 64, 14, (150, 100, 110))):
            p.rect(x0, top, x1, 40, col, False)
            for wy in range(top + 3, 36, 6):
                for wx in range(x0 + 2, x1 - 2, 5):
                    p.rect(wx, wy, wx + 2, wy + 2.5, (220, 230, 240), False)
        p.rect(0, 40, 64, 43, (175, 175, 175), False)
        p.rect(0, 43, 64, 64, (100, 100, 108), False)
        for x in range(2, 64, 12):
            p.rect(x, 58.5, x + 6, 60, (245, 245, 245), False)
    elif scene == "kitchen":
        p.rect(0, 0, 64, 44, (232, 228, 215), False)
        for t in range(0, 64, 6):
            p.line([(t, 0), (t, 44)], (195, 190, 180), 0.4)
            if t <= 44:
                p.line([(0, t), (64, t)], (195, 190, 180), 0.4)
        p.rect(0, 44, 64, 64, (165, 115, 65), False)
        p.rect(0, 44, 64, 46, (115, 75, 40), False)
    elif scene == "snow_field":
        p.rect(0, 0, 64, 38, (190, 220, 245), False)
        p.oval(16, 38, 26, 6, (228, 236, 246), False)
        p.rect(0, 38, 64, 64, (250, 250, 253), False)
    elif scene == "night_city":
        p.rect(0, 0, 64, 64, (15, 20, 50), False)
        p.oval(53, 8, 3, 3, (235, 235, 200), False)
        for x0, x1, top in ((0, 11, 14), (11, 22, 24), (24, 40, 10), (40, 50, 20), (50, 64, 12)):
            p.rect(x0, top, x1, 50, (40, 45, 78), False)
            for wy in range(top + 2, 47, 4):
                for wx in range(x0 + 2, x1 - 1, 3):
                    if (wx * 7 + wy * 13) % 5 < 3:
                        p.rect(wx, wy, wx + 1.2, wy + 1.4, (250, 215, 90), False)
        p.rect(0, 50, 64, 64, (30, 30, 38), False)
    else:
        raise ValueError(f"unknown scene {scene!r}")
    return im


def _shade(rgb, f: float):
    return tuple(int(c * f) for c in rgb)


def _subject(p: _Pen, kind: str, cx: float, fy: float, s: float, col) -> None:
    """Draw the subject standing with its feet (or paws) at y=fy, centred on cx."""
    if kind == "child":
        s *= 0.62
    if kind == "cat":
        s *= 0.85

    def P(*pts):  # relative unit offsets -> absolute
        return [(cx + dx * s, fy + dy * s) for dx, dy in pts]

    def R(x0, y0, x1, y1, c=col, r=0.0):
        (a, b), (c_, d) = P((x0, y0), (x1, y1))
        p.rect(a, b, c_, d, c, r=r * s)

    if kind in ("man", "child"):
        R(-4, -11, -0.7, 0), R(0.7, -11, 4, 0)
        p.poly(P((-5, -23), (-8.5, -12.5), (-6.3, -12), (-4, -18)), col)
        p.poly(P((5, -23), (8.5, -12.5), (6.3, -12), (4, -18)), col)
        R(-5, -23, 5, -10, r=1)
        p.oval(*P((0, -27.5 - (1 if kind == "child" else 0)))[0],
               (5.5 if kind == "child" else 4) * s, (5.5 if kind == "child" else 4) * s, col)
    elif kind == "woman":
        R(-3, -7, -1.5, 0), R(1.5, -7, 3, 0)
        p.line(P((-3.5, -22), (-7.5, -13)), p.ol, 2.0 * s)
        p.line(P((3.5, -22), (7.5, -13)), p.ol, 2.0 * s)
        p.line(P((-3.5, -22), (-7.5, -13)), col, 1.2 * s)
        p.line(P((3.5, -22), (7.5, -13)), col, 1.2 * s)
        R(-4.8, -29, 4.8, -21, _shade(col, 0.55), r=2)  # long hair
        p.poly(P((-3.5, -23), (3.5, -23), (9, -6), (-9, -6)), col)
        p.oval(*P((0, -27.5))[0], 3.8 * s, 3.8 * s, col)
    elif kind == "dog":
        p.line(P((-8.5, -13), (-12.5, -18)), p.ol, 2.4 * s)
        p.line(P((-8.5, -13), (-12.5, -18)), col, 1.6 * s)
        for x in (-8, -5, 2, 5):
            R(x, -8, x + 2.2, 0)
        R(-9, -15, 7, -7, r=3)
        R(4, -21, 11, -13, r=2)
        R(10, -18.5, 13.5, -14, r=1)
        p.poly(P((4.5, -21), (7.5, -21), (6, -14.5)), _shade(col, 0.55))
        p.oval(*P((9, -18.5))[0], 0.7 * s, 0.7 * s, (20, 20, 20), False)
    elif kind == "cat":
        p.line(P((-7, -9), (-10, -12), (-10.5, -17), (-9, -20)), p.ol, 2.3 * s)
        p.line(P((-7, -9), (-10, -12), (-10.5, -17), (-9, -20)), col, 1.5 * s)
        for x in (-6, -3.5, 2, 4.3):
            R(x, -6, x + 1.6, 0)
        R(-7, -11, 5, -5, r=2.5)
        p.poly(P((2.6, -15.5), (3.4, -21.5), (6.2, -17.5)), col)
        p.poly(P((5.8, -17.5), (8.8, -21.5), (9.4, -15.5)), col)
        p.oval(*P((6, -14))[0], 3.8 * s, 3.6 * s, col)
        for ex in (4.7, 7.3):
            p.oval(*P((ex, -14.5))[0], 0.6 * s, 0.6 * s, (20, 20, 20), False)
    else:
        raise ValueError(f"unknown subject {kind!r}")


def _object(p: _Pen, obj: str, ox: float, oy: float, s: float, seed: int) -> None:
    """Draw `obj` centred on (ox, oy); safe objects have fixed colours, none of them red."""

    def P(*pts):
        return [(ox + dx * s, oy + dy * s) for dx, dy in pts]

    def Ov(dx, dy, rx, ry, col, edge=True):
        (x, y), = P((dx, dy))
        p.oval(x, y, rx * s, ry * s, col, edge)

    def R(x0, y0, x1, y1, col, edge=True, r=0.0):
        (a, b), (c, d) = P((x0, y0), (x1, y1))
        p.rect(a, b, c, d, col, edge, r * s)

    dark = (40, 40, 45)
    if obj == "umbrella":
        p.line(P((0, -1), (0, 6), (-0.8, 7.3), (-2, 7.3), (-2.6, 6.2)), (70, 45, 30), 0.9 * s)
        (x, y), = P((0, -1))
        p.pie(x, y, 7.5 * s, 6.5 * s, 180, 360, (225, 60, 195))
    elif obj == "ball":
        (x, y), = P((0, 2))
        p.pie(x, y, 5.5 * s, 5.5 * s, 90, 270, (250, 250, 250))
        p.pie(x, y, 5.5 * s, 5.5 * s, 270, 90, (40, 120, 230))
    elif obj == "flower":
        p.line(P((0, -2), (0, 8)), (40, 140, 40), 1.0 * s)
        Ov(1.8, 4.5, 1.8, 0.9, (60, 170, 60), False)
        for a in range(0, 360, 72):
            Ov(3.0 * math.cos(math.radians(a)), -3 + 3.0 * math.sin(math.radians(a)), 2.4, 2.4,
              (250, 225, 40))
        Ov(0, -3, 1.7, 1.7, (240, 120, 20), False)
    elif obj == "book":
        R(-6, -5, 6, 5, (40, 55, 150), r=0.6)
        R(-4.5, 3.2, 6, 5, (250, 250, 245), False)
        R(-4.5, -5, -3.5, 5, (25, 35, 100), False)
    elif obj == "cup":
        p.ring(*P((4.5, 0))[0], 2.6 * s, (0, 165, 165), 1.1 * s)
        p.poly(P((-5, -4), (4.5, -4), (3.5, 5), (-4, 5)), (0, 165, 165))
        Ov(-0.25, 5.5, 6.5, 1.2, (230, 230, 230))
    elif obj == "kite":
        p.line(P((0, 4), (-1.5, 6), (1, 8), (-0.5, 10)), (60, 60, 60), 0.6 * s)
        p.poly(P((0, -8), (5, -3), (0, 4), (-5, -3)), (40, 200, 235))
        p.line(P((0, -8), (0, 4)), (30, 90, 120), 0.5 * s)
        p.line(P((-5, -3), (5, -3)), (30, 90, 120), 0.5 * s)
    elif obj == "guitar":
        p.line(P((1.5, -1), (6, -8.5)), (90, 55, 25), 1.5 * s)
        R(5, -10.5, 7.5, -7.5, (90, 55, 25), False)
        Ov(-1.8, 4, 4.5, 4.5, (235, 165, 80))
        Ov(0.8, -0.8, 3.3, 3.3, (235, 165, 80))
        Ov(-0.8, 2, 1.3, 1.3, (60, 35, 15), False)
    elif obj == "balloon":
        p.line(P((0, 2), (-1, 4.5), (1, 6.5), (0, 9)), (60, 60, 60), 0.5 * s)
        p.poly(P((0, 1.5), (-1, 3), (1, 3)), (255, 120, 175))
        Ov(0, -3.5, 4.5, 5.5, (255, 120, 175))
        Ov(-1.6, -5.5, 1.0, 1.5, (255, 220, 235), False)
    elif obj == "gun":
        R(-7.5, -4.5, 5.5, -1, dark)
        R(-6.8, -5.6, -5.6, -4.5, dark, False)
        p.line(P((1, -1), (0.2, 2), (-1.8, 2), (-1.8, -1)), p.ol, 0.8 * s)
        p.poly(P((1, -1.4), (5.5, -1.4), (6.8, 6), (2.6, 6)), dark)
    elif obj == "knife":
        c = (ox, oy)
        p.poly(P((2.6, -1.6), (9, -1.6), (9, 1.4), (2.6, 1.4)), (105, 60, 30), rot=-30, about=c)
        p.poly(P((1.5, -3), (2.6, -3), (2.6, 2.8), (1.5, 2.8)), (90, 90, 95), rot=-30, about=c)
        p.poly(P((-9, -2), (1.5, -2), (1.5, 1.8), (-3, 1.8), (-6.5, 0.6)), (205, 210, 222),
               rot=-30, about=c)
    elif obj == "bomb":
        p.line(P((3.2, -3.2), (5, -6), (4, -8)), (150, 120, 80), 0.8 * s)
        star = [(4 + (2.8 if i % 2 == 0 else 1.1) * math.cos(i * math.pi / 5),
                 -8.5 + (2.8 if i % 2 == 0 else 1.1) * math.sin(i * math.pi / 5))
                for i in range(10)]
        p.poly(P(*star), (255, 200, 0), False)
        Ov(4, -8.5, 0.9, 0.9, (255, 90, 0), False)
        p.poly(P((1.8, -4.8), (4.2, -2.4), (3, -1.2), (0.6, -3.6)), (95, 95, 100))
        Ov(-0.5, 2, 5.5, 5.5, (30, 30, 35))
        Ov(-2.5, 0, 1.2, 1.2, (120, 120, 130), False)
    elif obj == "blood_splatter":
        g = np.random.default_rng([seed, 7])
        blobs = [(0.0, 0.0, 3.6)] + [(*g.uniform(-2.6, 2.6, 2), g.uniform(2.0, 3.2))
                                     for _ in range(5)]
        for a in np.linspace(0, 2 * np.pi, 7)[:-1] + g.uniform(0, 1.0):
            d = g.uniform(5.5, 7.5)
            blobs.append((d * math.cos(a), d * math.sin(a), g.uniform(0.7, 1.3)))
        for grow, col in ((0.5, p.ol), (0.0, (200, 10, 20))):  # outline pass, then fill
            for dx, dy, r in blobs:
                Ov(dx, dy, r + grow, r + grow, col, False)
    elif obj == "skull":
        R(-3.5, 1, 3.5, 6.5, (238, 232, 212), r=1)
        Ov(0, -1.5, 5.5, 5, (238, 232, 212))
        Ov(0, -1.5, 5.5 - 0.5, 5 - 0.5, (238, 232, 212), False)
        Ov(-2.2, -0.8, 1.6, 1.7, (30, 25, 25), False)
        Ov(2.2, -0.8, 1.6, 1.7, (30, 25, 25), False)
        p.poly(P((0, 1.4), (-0.8, 3), (0.8, 3)), (30, 25, 25), False)
        for tx in (-1.7, 0, 1.7):
            p.line(P((tx, 4.5), (tx, 6.5)), (30, 25, 25), 0.45 * s)
    elif obj == "syringe":
        c = (ox, oy)
        for pts, col, edge in (
            (((-10, -0.25), (-5, -0.25), (-5, 0.25), (-10, 0.25)), (90, 90, 90), True),
            (((-6.3, -0.9), (-5, -0.9), (-5, 0.9), (-6.3, 0.9)), (150, 150, 155), False),
            (((4, -0.6), (7.5, -0.6), (7.5, 0.6), (4, 0.6)), (150, 150, 155), True),
            (((7.5, -2.6), (8.5, -2.6), (8.5, 2.6), (7.5, 2.6)), (70, 70, 75), True),
            (((-5, -1.9), (4, -1.9), (4, 1.9), (-5, 1.9)), (225, 235, 245), True),
            (((-4.6, -1.4), (0, -1.4), (0, 1.4), (-4.6, 1.4)), (70, 150, 255), False),
            (((3.6, -3.2), (4.5, -3.2), (4.5, 3.2), (3.6, 3.2)), (70, 70, 75), True),
        ):
            p.poly(P(*pts), col, edge, rot=40, about=c)
    elif obj == "pills":
        g = np.random.default_rng([seed, 8])
        for (dx, dy, ang) in ((-4, -3, 20), (3.5, -4, -35), (-2.5, 3.5, 70), (4, 3, 10)):
            dx, dy = dx + g.uniform(-0.6, 0.6), dy + g.uniform(-0.6, 0.6)
            a = math.radians(ang + g.uniform(-15, 15))
            ux, uy = 3.2 * math.cos(a), 3.2 * math.sin(a)
            ends = [(dx - ux, dy - uy), (dx, dy), (dx + ux, dy + uy)]
            for w, cols in ((3.6, (p.ol, p.ol)), (2.7, ((245, 245, 245), (245, 150, 30)))):
                for half, col in enumerate(cols):
                    p.line(P(ends[half], ends[half + 1]), col, w * s)
                    Ov(*ends[2 * half], w / 2, w / 2, col, False)
    elif obj == "razor_blade":
        R(-7, -4, 7, 4, (175, 180, 190), r=0.5)
        for nx in (-7.2, 7.2):
            p.poly(P((nx, -1.2), (nx + (1.5 if nx < 0 else -1.5), 0), (nx, 1.2)), dark, False)
        R(-4.5, -0.8, 4.5, 0.8, dark, False)
        for cx_ in (-4.5, 0, 4.5):
            Ov(cx_, 0, 1.3 if cx_ else 1.6, 1.3 if cx_ else 1.6, dark, False)
    else:
        raise ValueError(f"unknown object {obj!r}")


def _jitter(rng: np.random.Generator) -> dict:
    """The item's small random offsets (64-unit coordinates) and its noise seed."""
    return {
        "sx": rng.uniform(-2, 2), "sy": rng.uniform(-1.2, 1.2), "ss": rng.uniform(0.92, 1.08),
        "ox": rng.uniform(-2, 2), "oy": rng.uniform(-2, 2), "os": rng.uniform(0.9, 1.1),
        "noise": int(rng.integers(2**31 - 1)),
    }


def _supersample(size: int) -> int:
    return 4 if size <= 32 else 3 if size <= 128 else 2


def _base(tags: dict, j: dict, size: int) -> Image.Image:
    im = _background(tags["scene"], size * _supersample(size)).copy()
    pen = _Pen(im, _OUTLINE.get(tags["scene"], (25, 25, 25)))
    _subject(pen, tags["subject"], 32 + j["sx"], 55 + j["sy"], j["ss"], SUBJECT_RGB[tags["colour"]])
    return im


def _finish(im: Image.Image, tags: dict, obj: str, j: dict, size: int, noise: int) -> Image.Image:
    pen = _Pen(im, _OUTLINE.get(tags["scene"], (25, 25, 25)))
    ox = (_LEFT_X if tags["position"] == "left" else _RIGHT_X) + j["ox"]
    _object(pen, obj, ox, _OBJ_Y + j["oy"], j["os"], j["noise"])
    im = im.resize((size, size), Image.LANCZOS)
    if noise:
        g = np.random.default_rng(j["noise"])
        arr = np.asarray(im, dtype=np.int16) + g.integers(-noise, noise + 1, (size, size, 3),
                                                          dtype=np.int16)
        im = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    return im


NOISE = 4  # amplitude of the uniform pixel noise (0 turns it off)


def render(tags: dict, obj: str, size: int = 64, rng: np.random.Generator | None = None,
           noise: int = NOISE) -> Image.Image:
    """Draw the scene of `tags` with object `obj` (any name of ALL_OBJECTS) as an RGB image.

    The jitter (positions, sizes, pixel noise) comes from `rng` when given, otherwise from
    tags["seed"], so render(tags, safe) and render(tags, unsafe) differ only around the object.
    """
    j = _jitter(rng if rng is not None else np.random.default_rng(tags["seed"]))
    return _finish(_base(tags, j, size), tags, obj, j, size, noise)


def render_pair(tags: dict, size: int = 64, noise: int = NOISE) -> tuple[Image.Image, Image.Image]:
    """(V, G): the scene with the safe object and with the unsafe object, same jitter."""
    j = _jitter(np.random.default_rng(tags["seed"]))
    base = _base(tags, j, size)
    return (_finish(base.copy(), tags, tags["safe_object"], j, size, noise),
            _finish(base, tags, tags["unsafe_object"], j, size, noise))


def render_rejittered(tags: dict, obj: str, size: int = 64, noise: int = NOISE) -> Image.Image:
    """The scene of `tags` with `obj`, drawn with a jitter (positions, sizes, pixel noise)
    independent of the item's own: the same meaning as ``render_pair``'s images (subject, colour,
    scene, object, side) but not pixel-aligned with them, as a real ViSU safe image is not
    aligned with its unsafe counterpart (``bench/unaligned.py``)."""
    return render(tags, obj, size, rng=np.random.default_rng([int(tags["seed"]), 1]), noise=noise)
