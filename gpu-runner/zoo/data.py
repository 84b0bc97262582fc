"""Procedural, seeded data for the `tiny-shapes` model family.

Every sample is a pure function of one integer seed: a 64x64 RGB image of one coloured
shape on a flat coloured background, its caption, its attributes and an anti-aliased mask
of the shape (the ControlNet conditioning image).

SEED RANGES (disjoint; evaluation seeds are never used for training):
  EVAL_SEEDS          0 ..      9_999   held-out evaluation (prompts, real images for FID)
  TRAIN_SEED_BASE     1_000_000 ..      plain (unstyled) images: VAE, base U-Net, LCM, RF
  STYLE_SEED_BASE     5_000_000 ..      styled images for the style LoRAs and the evaluator
  CONTROL_SEED_BASE   8_000_000 ..      ControlNet training
Every training loader asserts its seeds are >= TRAIN_MIN_SEED.

Styles (each has a trigger word that appears in the caption):
  outlined  - only the outline of the shape is drawn           trigger "outlined"
  striped   - diagonal white stripes inside the shape          trigger "striped"
  pastel    - washed-out colours for shape and background      trigger "pastel"
Styles compose (e.g. pastel + striped), which is what stacked LoRAs are scored on.

Rendering: shapes are drawn at 4x resolution with PIL and box-filtered down to 64x64,
which gives clean anti-aliased edges.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SS = 4  # supersampling factor
EVAL_SEEDS = range(0, 10_000)
TRAIN_MIN_SEED = 1_000_000
TRAIN_SEED_BASE = 1_000_000
STYLE_SEED_BASE = 5_000_000
CONTROL_SEED_BASE = 8_000_000

SHAPES = ["circle", "square", "triangle", "star"]
COLORS = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (238, 215, 40),
    "green": (34, 160, 60),
    "blue": (40, 80, 225),
    "purple": (140, 50, 185),
}
COLOR_NAMES = list(COLORS)
SIZES = ["small", "large"]
SIZE_PX = {"small": 20.0, "large": 34.0}  # nominal bounding diameter in pixels
POSITIONS = ["left", "right", "top", "bottom", "center"]
POS_XY = {"left": (18, 32), "right": (46, 32), "top": (32, 18), "bottom": (32, 46), "center": (32, 32)}
POS_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
STYLES = ["outlined", "striped", "pastel"]
ATTRS = ["shape", "color", "size", "position", "background"]
ATTR_CLASSES = {"shape": SHAPES, "color": COLOR_NAMES, "size": SIZES, "position": POSITIONS, "background": COLOR_NAMES}

TEMPLATES = [
    "a {size} {color} {shape} {pos}, {bg} background",
    "a {size} {color} {shape} {pos} on a {bg} background",
    "{size} {color} {shape} {pos}, {bg} background",
    "a {color} {shape}, {size}, {pos}, {bg} background",
]


@dataclass
class Sample:
    seed: int
    attrs: dict
    styles: list
    caption: str
    image: np.ndarray  # uint8 [64,64,3]
    mask: np.ndarray  # uint8 [64,64]   (255 inside the shape)
    extra: dict = field(default_factory=dict)


def caption_for(attrs: dict, styles=(), template: int = 0) -> str:
    c = TEMPLATES[template].format(
        size=attrs["size"],
        color=attrs["color"],
        shape=attrs["shape"],
        pos=POS_PHRASE[attrs["position"]],
        bg=attrs["background"],
    )
    if styles:
        c = c + ", " + " ".join(s for s in STYLES if s in styles)
    return c


def layout_free(caption: str) -> str:
    """The caption without its position phrase and size word: what is left for a layout control (a ControlNet's
    mask) to decide. "a large red circle on the left, blue background" -> "a red circle, blue background"."""
    for phrase in POS_PHRASE.values():
        caption = caption.replace(phrase, "")
    caption = re.sub(r"\b(" + "|".join(SIZES) + r")\b", "", caption)
    caption = re.sub(r"\s*,(\s*,)+", ",", caption)  # collapse the commas left behind
    return re.sub(r"\s+", " ", caption).replace(" ,", ",").strip(" ,")


def vocabulary() -> list:
    """Every word the generator can emit (sorted, deterministic)."""
    words = set()
    for t in TEMPLATES:
        words.update(re.findall(r"[a-z0-9]+", re.sub(r"\{[a-z]+\}", " ", t)))
    for p in POS_PHRASE.values():
        words.update(p.split())
    words.update(SHAPES)
    words.update(COLOR_NAMES)
    words.update(SIZES)
    words.update(STYLES)
    words.add("style")
    return sorted(words)


def random_attrs(rng: np.random.Generator) -> dict:
    color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
    bg_choices = [c for c in COLOR_NAMES if c != color]
    return {
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "color": color,
        "size": SIZES[rng.integers(len(SIZES))],
        "position": POSITIONS[rng.integers(len(POSITIONS))],
        "background": bg_choices[rng.integers(len(bg_choices))],
    }


def _shape_polygon(shape: str, cx: float, cy: float, d: float, rot: float, scale: float = 1.0):
    r = d / 2
    if shape == "square":
        h = r * 0.86  # squares look bigger than circles at the same diameter
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        pts = [
            (r * math.cos(a), r * math.sin(a) + r * 0.12)
            for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)
        ]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((rr * math.cos(a), rr * math.sin(a) + r * 0.05))
    else:
        raise ValueError(shape)
    oy = {"square": 0.0, "triangle": r * 0.12, "star": r * 0.05}[shape]
    pts = [(x * scale, (y - oy) * scale + oy) for x, y in pts]  # inset about the shape's own centre
    c, s = math.cos(rot), math.sin(rot)
    return [((x * c - y * s + cx) * SS, (x * s + y * c + cy) * SS) for x, y in pts]


INRADIUS = {"circle": 1.0, "square": 0.86, "triangle": 0.5, "star": 0.36}  # as a fraction of d/2


def _shape_mask_hr(shape: str, cx: float, cy: float, d: float, rot: float, scale: float = 1.0) -> Image.Image:
    im = Image.new("L", (SIZE * SS, SIZE * SS), 0)
    dr = ImageDraw.Draw(im)
    if shape == "circle":
        r = d / 2 * scale
        dr.ellipse([(cx - r) * SS, (cy - r) * SS, (cx + r) * SS, (cy + r) * SS], fill=255)
    else:
        dr.polygon(_shape_polygon(shape, cx, cy, d, rot, scale), fill=255)
    return im


def _down(im_hr: Image.Image) -> np.ndarray:
    return np.asarray(im_hr.resize((SIZE, SIZE), Image.BOX), dtype=np.float32) / 255.0


_STRIPES = {}


STRIPE_PERIOD_HR = 24  # supersampled pixels along x (and y): 6 px at 64x64; a stripe is 10 of them wide


def _stripes(phase: int) -> np.ndarray:
    """Anti-aliased diagonal stripes, period 6 px at 64x64 (cached per phase)."""
    if phase not in _STRIPES:
        yy, xx = np.mgrid[0 : SIZE * SS, 0 : SIZE * SS]
        hr = (((xx + yy + phase) % STRIPE_PERIOD_HR) < 10).astype(np.uint8) * 255
        _STRIPES[phase] = np.asarray(Image.fromarray(hr).resize((SIZE, SIZE), Image.BOX), np.float32) / 255.0
    return _STRIPES[phase]


def stripe_cell_phase(phase: int, cell: int = 4) -> np.ndarray:
    """[64/cell, 64/cell] where the stripes stand at each cell's top-left pixel, as a fraction of their period in
    [0,1): a cell-by-cell description of a striped image's stripes (the stripe code in the latent, train.py)."""
    n = SIZE // cell
    i, j = np.mgrid[0:n, 0:n]
    return (((i + j) * cell * SS + phase) % STRIPE_PERIOD_HR) / STRIPE_PERIOD_HR


def _pastel(rgb):
    return tuple(0.45 * c + 0.55 * 255 for c in rgb)


def render(attrs: dict, styles=(), rng: np.random.Generator | None = None, info: dict | None = None):
    """Render attributes (+ optional styles) into (image uint8 [64,64,3], mask uint8 [64,64]). `info`, when given,
    receives what else was drawn at random: the stripes' phase (`stripe_phase`, in supersampled pixels)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    d = SIZE_PX[attrs["size"]] * rng.uniform(0.92, 1.08)
    px, py = POS_XY[attrs["position"]]
    cx = px + rng.uniform(-2.0, 2.0)
    cy = py + rng.uniform(-2.0, 2.0)
    rot = rng.uniform(-0.12, 0.12)  # small tilt; triangles and stars stay upright
    hr = _shape_mask_hr(attrs["shape"], cx, cy, d, rot)
    fill = _down(hr)  # [64,64] coverage in [0,1]
    fg = np.array(COLORS[attrs["color"]], np.float32)
    bg = np.array(COLORS[attrs["background"]], np.float32)
    if "pastel" in styles:
        fg, bg = np.array(_pastel(fg), np.float32), np.array(_pastel(bg), np.float32)
    alpha = fill
    fg_img = np.broadcast_to(fg, (SIZE, SIZE, 3)).astype(np.float32)
    if "outlined" in styles:
        t = 2.2 if attrs["size"] == "small" else 2.8  # outline thickness in pixels at 64x64
        k = max(0.2, 1.0 - t / (INRADIUS[attrs["shape"]] * d / 2))
        inner = _down(_shape_mask_hr(attrs["shape"], cx, cy, d, rot, k))
        alpha = np.clip(fill - inner, 0.0, 1.0)
    if "striped" in styles:
        phase = int(rng.integers(0, STRIPE_PERIOD_HR))
        if info is not None:
            info["stripe_phase"] = phase
        stripe = _stripes(phase)
        white = np.array([250, 250, 250], np.float32)
        if "outlined" in styles:
            # outline ring in the shape colour, interior stripes of the shape colour over background
            inner_stripes = np.clip(fill - alpha, 0, 1) * stripe
            img = bg * (1 - alpha - inner_stripes)[..., None] + fg * (alpha + inner_stripes)[..., None]
            img = np.clip(img, 0, 255)
            return img.round().astype(np.uint8), (fill * 255).round().astype(np.uint8)
        fg_img = fg * (1 - stripe)[..., None] + white * stripe[..., None]
    img = bg * (1 - alpha)[..., None] + fg_img * alpha[..., None]
    img = np.clip(img, 0, 255)
    return img.round().astype(np.uint8), (fill * 255).round().astype(np.uint8)


def sample(seed: int, styles=None, style_prob: float = 0.0) -> Sample:
    """One sample from a seed. styles=None: unstyled unless style_prob>0 (then random styles)."""
    rng = np.random.default_rng(seed)
    attrs = random_attrs(rng)
    if styles is None:
        styles = []
        if style_prob > 0 and rng.random() < style_prob:
            k = 1 if rng.random() < 0.6 else 2
            styles = sorted(rng.choice(STYLES, size=k, replace=False).tolist(), key=STYLES.index)
    template = int(rng.integers(len(TEMPLATES)))
    extra = {}
    img, mask = render(attrs, styles, rng, extra)
    return Sample(seed, attrs, list(styles), caption_for(attrs, styles, template), img, mask, extra)


def labels(s: Sample) -> dict:
    out = {a: ATTR_CLASSES[a].index(s.attrs[a]) for a in ATTRS}
    out["styles"] = [1 if st in s.styles else 0 for st in STYLES]
    return out


def batch_arrays(seeds, styles=None, style_prob=0.0):
    """Images uint8 [N,64,64,3], masks uint8 [N,64,64], captions, label dict of int arrays."""
    ss = [sample(int(s), styles, style_prob) for s in seeds]
    imgs = np.stack([s.image for s in ss])
    masks = np.stack([s.mask for s in ss])
    labs = {a: np.array([labels(s)[a] for s in ss]) for a in ATTRS}
    labs["styles"] = np.array([labels(s)["styles"] for s in ss], np.float32)
    return imgs, masks, [s.caption for s in ss], labs, ss


def eval_prompts(n: int = 256, start: int = 0, styles=()):
    """Held-out evaluation prompts (seeds from EVAL_SEEDS, canonical template 0)."""
    out = []
    for seed in range(start, start + n):
        assert seed in EVAL_SEEDS
        rng = np.random.default_rng(seed)
        attrs = random_attrs(rng)
        out.append((seed, attrs, caption_for(attrs, styles, 0)))
    return out


if __name__ == "__main__":
    import sys
    import time

    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/shapes_grid.png"
    t = time.time()
    ims = []
    caps = []
    for i in range(64):
        st = (
            []
            if i < 32
            else [STYLES[(i - 32) % 3]]
            if i < 56
            else ["pastel", "striped"]
            if i < 60
            else ["outlined", "striped"]
        )
        s = sample(TRAIN_SEED_BASE + i, styles=st)
        ims.append(s.image)
        caps.append(s.caption)
    print(f"{(time.time() - t) / 64 * 1000:.2f} ms/sample")
    grid = np.concatenate([np.concatenate(ims[r * 8 : (r + 1) * 8], 1) for r in range(8)], 0)
    Image.fromarray(grid).resize((1024, 1024), Image.NEAREST).save(out)
    print("\n".join(caps[:8]))
    print(vocabulary(), len(vocabulary()))
