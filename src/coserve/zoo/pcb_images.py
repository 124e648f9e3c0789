"""Procedural top-down images of circuit-board components, with injected defects.

The inspection zoo needs component images whose ground truth is known: each image shows
one component (or its empty pads) on a patch of solder-masked board, as an automated
optical inspection camera sees it, and is either clean or carries one defect kind.

Geometry lives in a 64-unit frame (the image spans [-32, 32] in both axes whatever its
pixel size); shapes are signed distance fields on numpy coordinate grids, so edges are
anti-aliased and a whole batch of one component type renders with a few hundred
vectorised array operations. Three frames are involved:
- the camera frame (x, y): pixel centres;
- the footprint frame (pu, pv): the board's pads, traces and silkscreen, after the
  camera's small pose jitter and the footprint's orientation;
- the body frame (u, v): the placed component, after the placement jitter and, for the
  `shifted` and `rotated` defects, the misplacement. `u` is the body's long axis.

Every random draw is made for every image whatever its defect, so rendering one rng
state clean and with a defect gives images that differ only by the defect.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

DEFECT_KINDS = ("missing", "shifted", "rotated", "bridged", "damaged")
# Of the `rotated` defects of polarised parts, the share turned right round (180 degrees, or
# 90/180/270 for four-sided ICs): only the polarity mark or the marking's reading direction
# tells these apart, so a small classifier misses many of them.
REVERSAL_SHARE = 0.2
FRAME_UNITS = 64.0  # the image spans this many geometry units, whatever its pixel size
_HALF_FRAME = FRAME_UNITS / 2


@dataclass(frozen=True)
class _Family:
    prefix: str
    packages: tuple[str, ...]
    share: float  # relative count of types on a typical board: many passives, few ICs
    dashed: bool  # "U-SOIC8-0003" rather than "R0402-0007"


FAMILIES: dict[str, _Family] = {
    "resistor": _Family("R", ("0201", "0402", "0603", "0805", "1206"), 30.0, False),
    "capacitor": _Family("C", ("0201", "0402", "0603", "0805", "1206", "1210"), 28.0, False),
    "inductor": _Family("L", ("0603", "0805", "1210", "4040"), 6.0, False),
    "diode": _Family("D", ("SOD123", "SOD323", "SMA"), 6.0, True),
    "transistor": _Family("Q", ("SOT23", "SOT323", "SOT223"), 7.0, True),
    "ic": _Family("U", ("SOIC8", "SOIC14", "TSSOP16", "TSSOP20", "QFP32", "QFP44"), 9.0, True),
    "connector": _Family("J", ("HDR4", "HDR6", "HDR8", "HDR2X5"), 4.0, True),
    "crystal": _Family("Y", ("HC49", "3225", "5032"), 2.0, True),
    "led": _Family("LED", ("0603", "0805"), 5.0, False),
    "fuse": _Family("F", ("0603", "1206"), 3.0, False),
}
_NAME_RE = re.compile(r"^(?:(LED|R|C|L|F)(\d{4})|([DQUJY])-([A-Z0-9]+))-(\d{4,})$")
_FAMILY_OF_PREFIX = {f.prefix: name for name, f in FAMILIES.items()}


def component_types(num: int, seed: int = 0) -> list[str]:
    """`num` distinct component type names (`R0402-0007`, `U-SOIC8-0003`, ...) spread over
    the families with a board's skew; every family appears once `num` allows it."""
    if not isinstance(num, int) or num < 0:
        raise ValueError(f"component_types needs a non-negative int count; got {num!r}")
    rng = np.random.default_rng([seed, 0xC0E])
    counts = _apportion(num, [f.share for f in FAMILIES.values()])
    serials = iter(rng.permutation(num) + 1)
    names = []
    for (_, family), count in zip(FAMILIES.items(), counts, strict=True):
        for _ in range(count):
            package = family.packages[rng.integers(len(family.packages))]
            sep = "-" if family.dashed else ""
            names.append(f"{family.prefix}{sep}{package}-{next(serials):04d}")
    return [names[i] for i in rng.permutation(num)]


def _apportion(total: int, shares: Sequence[float]) -> list[int]:
    """Largest-remainder split of `total` by `shares`, at least one each when it fits."""
    floor = 1 if total >= len(shares) else 0
    rest = total - floor * len(shares)
    exact = np.asarray(shares) / sum(shares) * rest
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: rest - counts.sum()]:
        counts[i] += 1
    return [int(c) + floor for c in counts]


def family_of(component_type: str) -> str:
    """The family (`resistor`, `ic`, ...) of a name made by `component_types`."""
    return _parse(component_type)[0]


def _parse(component_type: str) -> tuple[str, str]:
    match = _NAME_RE.match(component_type)
    if match is None:
        raise ValueError(
            f"not a component type name: {component_type!r}; expected names like "
            "'R0402-0007' or 'U-SOIC8-0003', as component_types() makes them"
        )
    prefix = match.group(1) or match.group(3)
    package = match.group(2) or match.group(4)
    family = _FAMILY_OF_PREFIX[prefix]
    if package not in FAMILIES[family].packages:
        known = ", ".join(FAMILIES[family].packages)
        raise ValueError(f"unknown {family} package {package!r} in {component_type!r}: use one of "
                         f"{known}, or names from component_types()")
    return family, package


# ---------------------------------------------------------------------------------------
# Per-type appearance: everything here is a deterministic function of the type name.


@dataclass(frozen=True)
class _LeadRow:
    """Pins sticking out along `axis` ("u": off both ends, "v": off both long sides):
    `num_pos`/`num_neg` pins on the + and - side, spaced `pitch` along the other axis,
    `half_w_*` wide, spanning `inner`..`outer` from the centre across."""

    axis: str
    num_pos: int
    num_neg: int
    pitch: float
    half_w_pos: float
    half_w_neg: float
    inner: float
    outer: float

    def grown(self, along: float, inner: float, outer: float) -> _LeadRow:
        return _LeadRow(self.axis, self.num_pos, self.num_neg, self.pitch,
                        self.half_w_pos + along, self.half_w_neg + along,
                        self.inner - inner, self.outer + outer)


@dataclass(frozen=True)
class _Part:
    family: str
    half_l: float  # body half-length along u
    half_w: float  # body half-width along v
    corner_r: float
    body_rgb: tuple[float, float, float]
    leads: tuple[_LeadRow, ...]
    lead_rgb: tuple[float, float, float]
    marking: str
    ink_rgb: tuple[float, float, float]
    glyph: float  # size of one font pixel, in frame units
    polarity: str  # "", "band", "dot", "lens", "notch", "lid"
    accent_rgb: tuple[float, float, float]
    orientation_deg: float  # footprint orientation on the board
    reversal_degs: tuple[float, ...]  # rotations that only a polarity mark reveals
    silkscreen: bool
    num_top_pins: int  # connector pins seen from the top, per row
    num_top_rows: int

    @property
    def pads(self) -> tuple[_LeadRow, ...]:
        # Pads are wider than the pins and reach past their tips, so solder shows.
        return tuple(r.grown(min(0.1 * min(r.half_w_pos, r.half_w_neg) + 0.6, 1.2), 1.0, 3.5)
                     for r in self.leads)


def _type_rng(component_type: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(component_type.encode()))


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> tuple[float, ...]:
    scale = 1 + amount * rng.uniform(-1, 1)
    return tuple(float(np.clip(c * scale + 0.3 * amount * rng.uniform(-1, 1), 0, 1)) for c in rgb)


# Chip packages: (half-length, width/length); the camera zooms per footprint, so sizes
# vary less than the real millimetres do.
_CHIP = {"0201": (12.0, 0.5), "0402": (13.0, 0.5), "0603": (14.5, 0.52), "0805": (16.0, 0.6),
         "1206": (18.0, 0.5), "1210": (18.0, 0.8), "4040": (17.0, 1.0)}
_SILVER = (0.9, 0.9, 0.92)  # tinned terminations and pins, brighter than the matte pads
_LED_COLOURS = ((0.95, 0.15, 0.1), (0.2, 0.9, 0.25), (0.15, 0.35, 0.95), (0.98, 0.8, 0.1),
                (0.95, 0.95, 0.9))


def _code(rng: np.random.Generator, alphabet: str, length: int) -> str:
    return "".join(alphabet[i] for i in rng.integers(len(alphabet), size=length))


def _chip_part(family: str, package: str, rng: np.random.Generator) -> dict:
    half_l, aspect = _CHIP[package]
    half_l *= rng.uniform(0.95, 1.05)
    half_w = half_l * aspect * rng.uniform(0.95, 1.05)
    cap = half_l * rng.uniform(0.35, 0.45)
    ends = _LeadRow("u", 1, 1, 1.0, half_w, half_w, half_l - cap, half_l)
    part = {"half_l": half_l, "half_w": half_w, "leads": (ends,), "lead_rgb": _SILVER}
    small = package in ("0201", "0402")
    if family == "resistor":
        digits = _code(rng, "123456789", 2) + _code(rng, "0123456R", 1)
        part.update(body_rgb=_jitter(rng, (0.09, 0.09, 0.1), 0.2), marking="" if small else digits)
    elif family == "capacitor":
        tone = rng.choice([(0.72, 0.58, 0.38), (0.6, 0.45, 0.28), (0.78, 0.7, 0.52), (0.5, 0.48, 0.45)])
        part.update(body_rgb=_jitter(rng, tone, 0.08), marking="")
    elif family == "inductor":
        part.update(body_rgb=_jitter(rng, (0.22, 0.22, 0.23), 0.2),
                    marking=_code(rng, "123468", 1) + _code(rng, "0R", 1) + _code(rng, "01234", 1),
                    corner_r=2.0 if package == "4040" else 0.0)
    elif family == "fuse":
        tone = (0.86, 0.84, 0.78) if rng.random() < 0.5 else (0.12, 0.12, 0.14)
        part.update(body_rgb=_jitter(rng, tone, 0.05), marking=_code(rng, "ABCDEHKNPST", 1))
    elif family == "led":
        part.update(body_rgb=_jitter(rng, (0.9, 0.88, 0.8), 0.05), marking="", polarity="lens",
                    accent_rgb=_LED_COLOURS[rng.integers(len(_LED_COLOURS))],
                    reversal_degs=(180.0,))
    return part


def _diode_part(package: str, rng: np.random.Generator) -> dict:
    half_l, half_w, lead_w = {"SOD123": (15.0, 8.0, 3.5), "SOD323": (12.5, 7.5, 3.0),
                              "SMA": (15.5, 11.0, 6.5)}[package]
    ends = _LeadRow("u", 1, 1, 1.0, lead_w, lead_w, half_l - 2.0, half_l + 4.0)
    return {"half_l": half_l, "half_w": half_w, "leads": (ends,), "polarity": "band",
            "body_rgb": _jitter(rng, (0.1, 0.1, 0.11), 0.2), "accent_rgb": _jitter(rng, (0.75, 0.75, 0.72), 0.08),
            "marking": "" if package == "SOD323" else _code(rng, "ABDFGJKMS", 1) + _code(rng, "0123456789", 1),
            "reversal_degs": (180.0,), "lead_rgb": _SILVER}


def _sot_part(package: str, rng: np.random.Generator) -> dict:
    if package == "SOT223":
        row = _LeadRow("v", 1, 3, 12.0, 7.5, 2.0, 9.5, 15.5)
        half_l, half_w = 17.0, 9.5
    else:
        scale = 1.0 if package == "SOT23" else 0.88
        row = _LeadRow("v", 1, 2, 17.0 * scale, 2.0 * scale, 2.0 * scale, 7.5 * scale, 13.0 * scale)
        half_l, half_w = 13.0 * scale, 7.5 * scale
    return {"half_l": half_l, "half_w": half_w, "leads": (row,), "body_rgb": _jitter(rng, (0.1, 0.1, 0.11), 0.2),
            "marking": _code(rng, "ABCDEFGHKLMNPRSTUVXZ0123456789", 2 + int(rng.integers(2))),
            "reversal_degs": (180.0,), "lead_rgb": _SILVER}


# IC packages: (pins per side, body half-length, half-width, pitch, pin half-width, pin length)
_IC = {"SOIC8": (4, 19.0, 15.0, 9.8, 1.6, 6.0), "SOIC14": (7, 22.0, 10.0, 6.3, 1.1, 5.0),
       "TSSOP16": (8, 19.5, 15.5, 4.9, 1.0, 6.0), "TSSOP20": (10, 21.5, 14.0, 4.2, 0.9, 5.0),
       "QFP32": (8, 17.0, 17.0, 3.9, 0.9, 5.0), "QFP44": (11, 18.0, 18.0, 2.95, 0.7, 5.0)}


def _ic_part(package: str, rng: np.random.Generator) -> dict:
    n, half_l, half_w, pitch, pin_w, pin_l = _IC[package]
    rows = [_LeadRow("v", n, n, pitch, pin_w, pin_w, half_w, half_w + pin_l)]
    quad = package.startswith("QFP")
    if quad:
        rows.append(_LeadRow("u", n, n, pitch, pin_w, pin_w, half_l, half_l + pin_l))
    marking = _code(rng, "ABCDFHKLMNPSTUVXZ", 2) + _code(rng, "0123456789", 3)
    return {"half_l": half_l, "half_w": half_w, "leads": tuple(rows), "polarity": "dot",
            "body_rgb": _jitter(rng, (0.1, 0.1, 0.11), 0.25), "accent_rgb": (0.3, 0.3, 0.31),
            "marking": marking, "ink_rgb": _jitter(rng, (0.62, 0.62, 0.6), 0.1),
            "glyph": min(1.3, 2 * half_l * 0.8 / (4 * len(marking))),
            "reversal_degs": (90.0, 180.0, 270.0) if quad else (180.0,), "lead_rgb": _SILVER}


def _connector_part(package: str, rng: np.random.Generator) -> dict:
    rows, n = (2, 5) if package == "HDR2X5" else (1, int(package[3:]))
    pitch = min(10.0, 44.0 / n)
    half_l = n * pitch / 2 + 2.0
    half_w = 7.5 if rows == 1 else 12.5
    tails = _LeadRow("v", n, n, pitch, 0.2 * pitch, 0.2 * pitch, half_w - 1.0, half_w + 5.0)
    tone = (0.88, 0.85, 0.75) if rng.random() < 0.6 else (0.12, 0.12, 0.13)
    return {"half_l": half_l, "half_w": half_w, "leads": (tails,), "polarity": "notch",
            "body_rgb": _jitter(rng, tone, 0.05), "accent_rgb": _jitter(rng, (0.85, 0.68, 0.28), 0.05),
            "marking": "", "num_top_pins": n, "num_top_rows": rows, "reversal_degs": (180.0,),
            "lead_rgb": (0.85, 0.72, 0.35)}


def _crystal_part(package: str, rng: np.random.Generator) -> dict:
    if package == "HC49":
        half_l, half_w = 20.0, 9.0
        leads = (_LeadRow("u", 1, 1, 1.0, 4.5, 4.5, half_l - 3.0, half_l + 3.0),)
        body, polarity, corner = (0.78, 0.78, 0.76), "", half_w * 0.9
    else:
        half_l, half_w = (15.0, 12.0) if package == "3225" else (17.0, 11.0)
        leads = (_LeadRow("v", 2, 2, half_l * 1.1, 3.0, 3.0, half_w - 4.0, half_w + 1.0),)
        body, polarity, corner = (0.2, 0.2, 0.22), "lid", 1.0
    mhz = ("8.00", "12M", "16.0", "20M", "25.0", "32K")[rng.integers(6)]
    return {"half_l": half_l, "half_w": half_w, "leads": leads, "polarity": polarity,
            "body_rgb": _jitter(rng, body, 0.05), "accent_rgb": (0.8, 0.8, 0.78), "corner_r": corner,
            "marking": mhz, "ink_rgb": (0.15, 0.15, 0.18) if package == "HC49" else (0.15, 0.15, 0.15),
            "reversal_degs": (), "lead_rgb": _SILVER}


@lru_cache(maxsize=4096)
def _part(component_type: str) -> _Part:
    family, package = _parse(component_type)
    rng = _type_rng(component_type)
    if family in ("resistor", "capacitor", "inductor", "fuse", "led"):
        fields = _chip_part(family, package, rng)
    else:
        fields = {"diode": _diode_part, "transistor": _sot_part, "ic": _ic_part,
                  "connector": _connector_part, "crystal": _crystal_part}[family](package, rng)
    defaults = {"corner_r": 0.0, "marking": "", "ink_rgb": (0.85, 0.85, 0.82), "polarity": "",
                "accent_rgb": (0.0, 0.0, 0.0), "reversal_degs": (), "num_top_pins": 0,
                "num_top_rows": 0, "glyph": 1.6}
    fields = {**defaults, **fields}
    glyph = min(fields["glyph"], 2 * fields["half_w"] * 0.55 / 5)
    return _Part(family=family, glyph=glyph, orientation_deg=float(rng.integers(4) * 90),
                 silkscreen=bool(rng.random() < 0.6),
                 **{k: v for k, v in fields.items() if k != "glyph"})


# 3x5 bitmap font for markings, rows top to bottom.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111",
    "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "P": "110101110100100",
    "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "X": "101101010101101",
    "Z": "111001010100111", ".": "000000000000010",
}


@lru_cache(maxsize=512)
def _text_bitmap(text: str) -> np.ndarray:
    """[5, 4*len] glyph pixels with one blank column between characters, plus a blank
    border row and column so out-of-range lookups clamp onto ink-free pixels."""
    cols = []
    for ch in text:
        cols.append(np.array([int(b) for b in _FONT[ch]], dtype=np.float32).reshape(5, 3))
        cols.append(np.zeros((5, 1), np.float32))
    bitmap = np.concatenate(cols, axis=1)[:, :-1]
    return np.pad(bitmap, 1)


# ---------------------------------------------------------------------------------------
# Signed distance fields: negative inside, in frame units. Arrays are [N, S, S].


def _coverage(dist: np.ndarray, inv_px: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance."""
    cov = 0.5 - dist * inv_px
    # ufuncs with out=, not np.clip: its wrapper costs more than the arithmetic at 64x64.
    return np.minimum(np.maximum(cov, 0.0, out=cov), 1.0, out=cov)


def _box(u: np.ndarray, v: np.ndarray, half_l, half_w, radius: float = 0.0) -> np.ndarray:
    if radius <= 0:
        return np.maximum(np.abs(u) - half_l, np.abs(v) - half_w)
    qu = np.abs(u) - (half_l - radius)
    qv = np.abs(v) - (half_w - radius)
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0) - radius


def _pin_offset(along: np.ndarray, num, pitch: float) -> np.ndarray:
    """|distance| along a row to the nearest of `num` pins spaced `pitch`, centred on 0."""
    t = along * (1.0 / pitch) + (num - 1) * 0.5
    k = np.clip(np.rint(t), 0, num - 1)
    return np.abs(t - k) * pitch


def _row_sdf(row: _LeadRow, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    across, along = (u, v) if row.axis == "u" else (v, u)
    if row.num_pos == row.num_neg:
        num, half_w = row.num_pos, row.half_w_pos
    else:
        positive = across >= 0
        num = np.where(positive, row.num_pos, row.num_neg).astype(np.float32)
        half_w = np.where(positive, row.half_w_pos, row.half_w_neg).astype(np.float32)
    d_along = (np.abs(along) if row.num_pos == row.num_neg == 1
               else _pin_offset(along, num, row.pitch)) - half_w
    mid, half = (row.inner + row.outer) / 2, (row.outer - row.inner) / 2
    d_across = np.abs(np.abs(across) - mid) - half
    return np.maximum(d_along, d_across)


def _rows_sdf(rows: Sequence[_LeadRow], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    dist = _row_sdf(rows[0], u, v)
    for row in rows[1:]:
        dist = np.minimum(dist, _row_sdf(row, u, v))
    return dist


def _disc(u: np.ndarray, v: np.ndarray, cu, cv, radius) -> np.ndarray:
    return np.hypot(u - cu, v - cv) - radius


def _paint(img: np.ndarray, alpha: np.ndarray, rgb) -> None:
    """Composite `rgb` ([3], [N, 3] or an image) over `img` [N, 3, S, S] with `alpha` [N, S, S]."""
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim == 1:
        rgb = rgb[None, :, None, None]
    elif rgb.ndim == 2:
        rgb = rgb[:, :, None, None]
    img += alpha[:, None] * (rgb - img)


def _col(values) -> np.ndarray:
    """Per-image parameters [N] -> [N, 1, 1] float32, to broadcast over pixels."""
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _rotate(x: np.ndarray, y: np.ndarray, theta_rad) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(theta_rad), np.sin(theta_rad)
    return c * x + s * y, c * y - s * x


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in frame units: x [1, 1, S], y [1, S, 1]."""
    centres = ((np.arange(size, dtype=np.float32) + 0.5) * (FRAME_UNITS / size) - _HALF_FRAME)
    return centres[None, None, :], centres[None, :, None]


@lru_cache(maxsize=16)
def _upsampler(size: int, coarse: int) -> np.ndarray:
    """[S, coarse] bilinear interpolation matrix, for smooth low-frequency fields."""
    pos = (np.arange(size) + 0.5) / size * (coarse - 1)
    lo = np.minimum(np.floor(pos).astype(int), coarse - 2)
    frac = pos - lo
    mat = np.zeros((size, coarse), np.float32)
    mat[np.arange(size), lo] = 1 - frac
    mat[np.arange(size), lo + 1] = frac
    return mat


# ---------------------------------------------------------------------------------------
# Rendering.

# Per-image random numbers: one uniform block [N, total] drawn in one call, named columns.
_COLUMNS = {"cam": 3, "place": 3, "shift": 2, "rotation": 3, "bridge": 5, "damage": 8,
            "board": 3, "coarse": 36, "via": 3, "light": 7}
_OFFSETS = dict(zip(_COLUMNS, np.cumsum([0, *_COLUMNS.values()])[:-1].tolist(), strict=True))
_NUM_UNIFORMS = sum(_COLUMNS.values())
# Images rendered together: big enough to amortise numpy's per-call overhead, small enough
# that the [N, 3, S, S] temporaries stay in cache (64 at once is 2x slower per image).
_CHUNK = 16


@dataclass(frozen=True)
class _Draws:
    uniform: np.ndarray  # [N, _NUM_UNIFORMS] in [0, 1)
    noise: np.ndarray  # [N, 3, S, S] uint8, sensor noise

    @staticmethod
    def draw(rng: np.random.Generator, num: int, size: int) -> _Draws:
        uniform = rng.random((num, _NUM_UNIFORMS))
        noise = np.frombuffer(rng.bytes(num * 3 * size * size), np.uint8)
        return _Draws(uniform, noise.reshape(num, 3, size, size))

    def __getitem__(self, name: str) -> np.ndarray:
        start = _OFFSETS[name]
        return self.uniform[:, start : start + _COLUMNS[name]]

    def chunk(self, rows: slice) -> _Draws:
        return _Draws(self.uniform[rows], self.noise[rows])


@dataclass(frozen=True)
class _Kinds:
    flags: np.ndarray  # [N, len(DEFECT_KINDS)] float32, 1 where the image has that defect

    @staticmethod
    def of(defects: Sequence[str | None]) -> _Kinds:
        for d in defects:
            if d is not None and d not in DEFECT_KINDS:
                raise ValueError(f"unknown defect {d!r}; use None or one of {DEFECT_KINDS}")
        return _Kinds(np.array([[d == k for k in DEFECT_KINDS] for d in defects], np.float32)
                      .reshape(len(defects), len(DEFECT_KINDS)))

    def __getattr__(self, kind: str) -> np.ndarray:
        if kind not in DEFECT_KINDS:
            raise AttributeError(kind)
        return self.flags[:, DEFECT_KINDS.index(kind)]

    def chunk(self, rows: slice) -> _Kinds:
        return _Kinds(self.flags[rows])


def _body_pose(part: _Part, kinds: _Kinds, draws: _Draws) -> tuple[np.ndarray, ...]:
    """Body centre and angle in the footprint frame, with misplacement defects applied."""
    place, shift, rotation = draws["place"], draws["shift"], draws["rotation"]
    angle_s, mag = shift[:, 0] * 2 * np.pi, 0.35 + 0.3 * shift[:, 1]
    # Shift by a fraction of the body along each axis, but never by less than a clear
    # margin, so small parts are visibly off their pads too.
    du, dv = np.cos(angle_s) * mag * part.half_l, np.sin(angle_s) * mag * part.half_w
    boost = np.maximum(1.0, 4.5 / np.maximum(np.hypot(du, dv), 1e-6))
    rot = (20 + 50 * rotation[:, 0]) * np.where(rotation[:, 1] < 0.5, -1.0, 1.0)
    if part.reversal_degs:
        # A polarised part turned round is a defect that only its polarity mark shows.
        num = len(part.reversal_degs)
        pick = np.minimum((rotation[:, 2] / REVERSAL_SHARE * num).astype(int), num - 1)
        rot = np.where(rotation[:, 2] < REVERSAL_SHARE, np.asarray(part.reversal_degs)[pick], rot)
    cu = 1.6 * (place[:, 0] - 0.5) + kinds.shifted * du * boost
    cv = 1.6 * (place[:, 1] - 0.5) + kinds.shifted * dv * boost
    theta = np.deg2rad(5.0 * (place[:, 2] - 0.5) + kinds.rotated * rot)
    return cu, cv, theta


def _frames(part: _Part, kinds: _Kinds, draws: _Draws, size: int) -> tuple[np.ndarray, ...]:
    x, y = _grid(size)
    cam = draws["cam"]
    theta = np.deg2rad(8.0 * (cam[:, 2] - 0.5) + part.orientation_deg)
    pu, pv = _rotate(x - _col(4 * cam[:, 0] - 2), y - _col(4 * cam[:, 1] - 2), _col(theta))
    cu, cv, body_theta = _body_pose(part, kinds, draws)
    u, v = _rotate(pu - _col(cu), pv - _col(cv), _col(body_theta))
    return pu, pv, u, v


def _board(part: _Part, draws: _Draws, pu: np.ndarray, pv: np.ndarray, inv_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The solder-masked board [N, 3, S, S] and its smooth unevenness field [N, S, S]."""
    num, size = pu.shape[0], pu.shape[1]
    coarse = draws["coarse"].reshape(num, 6, 6).astype(np.float32) * 2 - 1
    up = _upsampler(size, 6)
    field = up @ coarse @ up.T  # [N, S, S], smooth in [-1, 1]
    tint = 1 + 0.3 * (draws["board"] - 0.5)  # [N, 3]
    green = (np.array([0.07, 0.36, 0.2]) * tint).astype(np.float32)
    img = green[:, :, None, None] * (1 + 0.12 * field[:, None])  # [N, 3, S, S]
    # Copper traces under the solder mask leave the pads outwards.
    traces = [_LeadRow(r.axis, r.num_pos, r.num_neg, r.pitch, 0.5 * r.half_w_pos,
                       0.5 * r.half_w_neg, r.outer - 1.0, 60.0) for r in part.pads]
    _paint(img, _coverage(_rows_sdf(traces, pu, pv), inv_px), green * 1.35)
    if part.silkscreen:
        outline = _box(pu, pv, part.half_l + 3.0, part.half_w + 3.0)
        _paint(img, 0.85 * _coverage(np.abs(outline) - 0.55, inv_px), (0.88, 0.88, 0.84))
    _vias(img, draws, pu, pv, inv_px)
    return img, field


def _vias(img: np.ndarray, draws: _Draws, pu: np.ndarray, pv: np.ndarray, inv_px: float) -> None:
    via = draws["via"]
    present = via[:, 2] < 0.5
    if not present.any():
        return
    angle = via[:, 0] * 2 * np.pi
    radius = 25.0 + 4.0 * via[:, 1]
    dist = _disc(pu, pv, _col(radius * np.cos(angle)), _col(radius * np.sin(angle)), 2.2)
    ring = _coverage(dist, inv_px) * _col(present)
    _paint(img, ring, (0.7, 0.62, 0.4))
    _paint(img, ring * _coverage(dist + 1.2, inv_px), (0.05, 0.07, 0.05))


def _pads(img: np.ndarray, part: _Part, field: np.ndarray, pu, pv, inv_px: float) -> None:
    # Tinned pads are matte and lumpy; the component's terminals are brighter.
    tin = np.array([0.7, 0.69, 0.64], np.float32)[None, :, None, None] * (1 + 0.1 * field[:, None])
    _paint(img, _coverage(_rows_sdf(part.pads, pu, pv), inv_px), tin)


def _body(img: np.ndarray, part: _Part, present: np.ndarray, u, v, inv_px: float) -> np.ndarray:
    """Draws the body, its terminals and markings; returns the body's coverage."""
    body = present * _coverage(_box(u, v, part.half_l, part.half_w, part.corner_r), inv_px)
    leads = present * _coverage(_rows_sdf(part.leads, u, v), inv_px)
    if part.leads[0].inner < part.half_l and part.leads[0].axis == "u":
        _paint(img, body, part.body_rgb)  # chip terminations sit on top of the body
        _paint(img, leads, part.lead_rgb)
    else:
        _paint(img, leads, part.lead_rgb)  # gull-wing pins come out from under it
        _paint(img, body, part.body_rgb)
    _polarity(img, part, body, u, v, inv_px)
    if part.marking:
        _paint(img, body * _text(part, u, v), part.ink_rgb)
    return body


def _text(part: _Part, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    bitmap = _text_bitmap(part.marking)  # [7, W]
    rows, cols = bitmap.shape
    g = part.glyph
    col = np.floor(u * (1 / g) + cols / 2).astype(np.int32)
    row = np.floor(v * (1 / g) + rows / 2).astype(np.int32)
    np.minimum(np.maximum(col, 0, out=col), cols - 1, out=col)
    np.minimum(np.maximum(row, 0, out=row), rows - 1, out=row)
    return 0.9 * bitmap[row, col]


def _polarity(img: np.ndarray, part: _Part, body: np.ndarray, u, v, inv_px: float) -> None:
    hl, hw = part.half_l, part.half_w
    if part.polarity == "band":
        _paint(img, body * _coverage(np.abs(u - 0.55 * hl) - 0.14 * hl, inv_px), part.accent_rgb)
    elif part.polarity == "lens":
        _paint(img, body * _coverage(_box(u + 0.1 * hl, v, 0.45 * hl, 0.55 * hw, 0.4 * hw), inv_px),
               part.accent_rgb)
        _paint(img, body * _coverage(np.abs(u - 0.75 * hl) - 0.07 * hl, inv_px), (0.15, 0.6, 0.3))
    elif part.polarity == "dot":
        r = max(1.4, 0.1 * min(hl, hw))
        _paint(img, body * _coverage(_disc(u, v, -hl + 2.4 * r, hw - 2.4 * r, r), inv_px), part.accent_rgb)
    elif part.polarity == "notch":
        _top_pins(img, part, body, u, v, inv_px)
        notch = _box(u + 0.6 * hl, v - hw, 2.5, 1.8)
        _paint(img, body * _coverage(notch, inv_px), np.asarray(part.body_rgb) * 0.45)
    elif part.polarity == "lid":
        _paint(img, body * _coverage(_box(u, v, hl - 2.0, hw - 2.0, 1.5), inv_px), part.accent_rgb)


def _top_pins(img: np.ndarray, part: _Part, body: np.ndarray, u, v, inv_px: float) -> None:
    pitch = part.leads[0].pitch
    d_u = _pin_offset(u, part.num_top_pins, pitch) - 0.22 * pitch
    d_v = _pin_offset(v, part.num_top_rows, pitch) - 0.22 * pitch
    _paint(img, body * _coverage(np.maximum(d_u, d_v), inv_px), part.accent_rgb)


def _bridge_ellipse(part: _Part, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Where the solder bridge sits: (centre along, centre across, half sizes, across axis)."""
    row = next((r for r in part.pads if max(r.num_pos, r.num_neg) >= 2), None)
    side = np.where(b[:, 0] < 0.5, -1.0, 1.0)
    if row is None:
        # A two-terminal part: a solder run along one long side, from pad to pad.
        pad = part.pads[0]
        return (np.zeros_like(side), side * (part.half_w + 0.5 + 2.0 * b[:, 1]),
                (pad.inner + pad.outer) / 2 * (0.9 + 0.25 * b[:, 2]), 1.6 + 1.6 * b[:, 3], "v")
    if min(row.num_pos, row.num_neg) < 2:  # pins on one side only can bridge (SOT-23)
        side = np.full_like(side, 1.0 if row.num_pos >= 2 else -1.0)
    num = np.where(side > 0, row.num_pos, row.num_neg)
    k = np.minimum((b[:, 1] * (num - 1)).astype(int), num - 2)  # bridge pins k and k+1
    return ((k + 1 - num / 2) * row.pitch, side * (row.inner + 0.55 * (row.outer - row.inner)),
            row.pitch * (0.75 + 0.6 * b[:, 2]) + 0.8, (row.outer - row.inner) * (0.25 + 0.2 * b[:, 3]),
            row.axis)


def _bridge(img: np.ndarray, part: _Part, kinds: _Kinds, draws: _Draws, pu, pv, inv_px: float) -> None:
    """A solder blob joining two neighbouring pads (or both pads of a two-terminal part)."""
    b = draws["bridge"]
    centre_along, centre_across, half_along, half_across, axis = _bridge_ellipse(part, b)
    along, across = (pv, pu) if axis == "u" else (pu, pv)
    a, c = _col(half_along), _col(half_across)
    ripple = 1 + 0.2 * np.sin(along * 0.8 + _col(b[:, 4] * 6.28))
    du = (along - _col(centre_along)) / a
    dv = (across - _col(centre_across)) / (c * ripple)
    dist = (np.sqrt(du * du + dv * dv) - 1) * np.minimum(a, c)
    _paint(img, _col(kinds.bridged) * _coverage(dist, inv_px), (0.88, 0.88, 0.86))


def _damage(img: np.ndarray, part: _Part, kinds: _Kinds, draws: _Draws, body, u, v, inv_px: float) -> None:
    """A crack, a chipped corner or a burn mark on the body: one ellipse, shaped per kind."""
    d = draws["damage"]
    hl, hw = part.half_l, part.half_w
    small = min(hl, hw)
    kind = np.minimum((d[:, 0] * 3).astype(int), 2)  # 0 crack, 1 chip, 2 burn
    crack, chip, burn = kind == 0, kind == 1, kind == 2
    cu = np.where(chip, np.where(d[:, 1] < 0.5, -hl, hl), (d[:, 1] - 0.5) * hl)
    cv = np.where(chip, np.where(d[:, 2] < 0.5, -hw, hw), (d[:, 2] - 0.5) * hw)
    a = np.where(crack, 1.5 * max(hl, hw), (0.4 + 0.3 * d[:, 4]) * small + 2.0)
    c = np.where(crack, 0.8 + 0.6 * d[:, 5], np.where(chip, a, (0.4 + 0.3 * d[:, 5]) * small + 2.0))
    eu, ev = _rotate(u - _col(cu), v - _col(cv), _col(d[:, 3] * np.pi))
    ev = ev + _col(np.where(crack, 0.7, 0.0)) * np.sin(eu * 0.9 + _col(d[:, 6] * 6.28))  # jagged
    dist = (np.sqrt((eu / _col(a)) ** 2 + (ev / _col(c)) ** 2) - 1) * _col(np.minimum(a, c))
    soft = _col(np.where(burn, 0.35, 1.0))  # burns fade out at the edge
    alpha = _col(kinds.damaged) * body * _coverage(dist * soft - 0.3, inv_px)
    # Cracks and chips bare the ceramic: light on dark bodies, dark on light ones.
    bare = (0.78, 0.76, 0.7) if float(np.mean(part.body_rgb)) < 0.45 else (0.25, 0.22, 0.2)
    scorch = np.array([0.33, 0.17, 0.07]) * (0.7 + 0.6 * d[:, 7:8])  # [N, 3]
    _paint(img, alpha, np.where(burn[:, None], scorch, np.asarray(bare)[None, :]))


def _light(img: np.ndarray, draws: _Draws, size: int) -> np.ndarray:
    x, y = _grid(size)
    lt = draws["light"]
    gain = ((0.8 + 0.4 * lt[:, 0:1]) * (0.94 + 0.12 * lt[:, 1:4])).astype(np.float32)  # [N, 3]
    gradient = 1 + _col((lt[:, 4] - 0.5) * 0.012) * x + _col((lt[:, 5] - 0.5) * 0.012) * y  # [N, S, S]
    img *= gain[:, :, None, None]
    img *= gradient[:, None]
    sigma = ((0.008 + 0.022 * lt[:, 6]) / 73.6).astype(np.float32)  # uniform bytes: std 73.6
    img += (draws.noise.astype(np.float32) - 127.5) * sigma[:, None, None, None]
    return np.minimum(np.maximum(img, 0.0, out=img), 1.0, out=img)


def _render_chunk(part: _Part, kinds: _Kinds, draws: _Draws, size: int) -> np.ndarray:
    inv_px = size / FRAME_UNITS
    pu, pv, u, v = _frames(part, kinds, draws, size)
    img, field = _board(part, draws, pu, pv, inv_px)  # [N, 3, S, S], [N, S, S]
    _pads(img, part, field, pu, pv, inv_px)
    body = _body(img, part, _col(1.0 - kinds.missing), u, v, inv_px)
    # Defect layers are skipped, not just masked, when no image needs them: most are clean.
    if kinds.bridged.any():
        _bridge(img, part, kinds, draws, pu, pv, inv_px)
    if kinds.damaged.any():
        _damage(img, part, kinds, draws, body, u, v, inv_px)
    return _light(img, draws, size)


def render_batch(
    component_type: str, defects: Sequence[str | None], rng: np.random.Generator, size: int = 64
) -> torch.Tensor:
    """Images [N, 3, size, size] float32 in [0, 1] of one component type, one per entry of
    `defects` (None for a clean part, else one of DEFECT_KINDS). Draws the same random
    numbers whatever the defects, so only the defect differs between two renders of one
    rng state."""
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"image size must be an int >= 8 pixels; got {size!r}")
    part = _part(component_type)
    kinds = _Kinds.of(defects)
    num = len(defects)
    draws = _Draws.draw(rng, num, size)
    out = np.empty((num, 3, size, size), np.float32)
    for start in range(0, num, _CHUNK):
        rows = slice(start, start + _CHUNK)
        out[rows] = _render_chunk(part, kinds.chunk(rows), draws.chunk(rows), size)
    return torch.from_numpy(out)


def render(
    component_type: str, defect: str | None, rng: np.random.Generator, size: int = 64
) -> torch.Tensor:
    """One image [3, size, size] float32 in [0, 1]; see `render_batch`."""
    return render_batch(component_type, [defect], rng, size)[0]


def draw_defects(num: int, rng: np.random.Generator, defect_rate: float = 0.1) -> list[str | None]:
    """`num` ground truths: a defect with probability `defect_rate`, its kind uniform."""
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate is a probability in [0, 1]; got {defect_rate!r}")
    pick = rng.random((num, 2))
    kind = np.minimum((pick[:, 1] * len(DEFECT_KINDS)).astype(int), len(DEFECT_KINDS) - 1)
    return [DEFECT_KINDS[k] if hit else None
            for hit, k in zip(pick[:, 0] < defect_rate, kind, strict=True)]


def sample_component(
    component_type: str, rng: np.random.Generator, defect_rate: float = 0.1, size: int = 64
) -> tuple[torch.Tensor, str | None]:
    """One image [3, size, size] and its ground truth (None or the defect kind)."""
    (defect,) = draw_defects(1, rng, defect_rate)
    return render(component_type, defect, rng, size), defect


def sample_batch(
    component_type: str, num: int, rng: np.random.Generator, defect_rate: float = 0.1, size: int = 64
) -> tuple[torch.Tensor, list[str | None]]:
    """`num` images [num, 3, size, size] of one type and their ground truths; faster per
    image than `sample_component` (one set of array operations per chunk of images)."""
    defects = draw_defects(num, rng, defect_rate)
    return render_batch(component_type, defects, rng, size), defects


def balanced_defects(num: int, rng: np.random.Generator) -> list[str | None]:
    """`num` ground truths, half clean and half defective with kinds cycling evenly, in a
    random order: for training and evaluating at a defect rate of 0.5."""
    defects: list[str | None] = [None] * (num - num // 2)
    defects += [DEFECT_KINDS[i % len(DEFECT_KINDS)] for i in range(num // 2)]
    return [defects[i] for i in rng.permutation(num)]
