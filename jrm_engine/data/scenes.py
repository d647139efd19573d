"""Drawing of the synthetic scenes: flat, saturated shapes on a 3 x 3 grid of cells over a dark background.

At the default 84 px a cell is 28 px, exactly one visual token after the 2x2 patch merge, so one object is one
token and an edit changes whole tokens: the cleanest signal a tiny vision tower can get. Other sizes (multiples of
28) keep the 3 x 3 grid with larger cells.
"""
from __future__ import annotations

import numpy as np

GRID = 3
TOKEN_PIXELS = 28  # patch 14 x merge 2: one language-model token per 28 x 28 block

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 25),
    "orange": (255, 140, 0),
    "yellow": (245, 230, 20),
    "green": (20, 190, 40),
    "cyan": (0, 210, 225),
    "blue": (30, 70, 245),
    "purple": (165, 40, 230),
    "white": (245, 245, 245),
}
SHAPES = ("square", "circle", "triangle", "cross")
BACKGROUND = (24, 24, 24)

# Row-major cell index -> name used in instructions and explanations: always a row word then a column word, so
# every position is two tokens and each word names one image axis (the row the h axis of M-RoPE, the column w).
POSITIONS = tuple(f"{row} {col}" for row in ("top", "middle", "bottom") for col in ("left", "center", "right"))
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}

Obj = tuple[str, str]  # (colour, shape)
Scene = dict[int, Obj]  # cell index -> object; empty cells are absent

_NOISE_TILES = 16  # a fixed bank of noise blotches, so artefacts cost a lookup rather than an RNG call per pixel


def neighbour(cell: int, direction: str) -> int | None:
    """The cell one step away in `direction`, or None off the grid."""
    dr, dc = DIRECTIONS[direction]
    r, c = divmod(cell, GRID)
    r, c = r + dr, c + dc
    return r * GRID + c if 0 <= r < GRID and 0 <= c < GRID else None


def _shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """Boolean [h, w] mask of `shape` filling a cell with a small margin (pixel centres tested analytically)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    m = max(1, round(0.11 * min(h, w)))
    top, bottom, left, right = m, h - m, m, w - m
    cy, cx = h / 2, w / 2
    half = (min(h, w) - 2 * m) / 2
    inside = (y >= top) & (y <= bottom) & (x >= left) & (x <= right)
    if shape == "square":
        return inside
    if shape == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= half**2
    if shape == "triangle":  # apex up, base on the bottom margin
        return inside & (np.abs(x - cx) <= (y - top) / (bottom - top) * half)
    if shape == "cross":  # a plus sign, arms a third of the inner width
        arm = (2 * half) / 6
        return inside & ((np.abs(x - cx) <= arm) | (np.abs(y - cy) <= arm))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


class SceneRenderer:
    """Renders scenes at one image size; masks and noise tiles are built once per size."""

    def __init__(self, image_size: int = 84):
        if not isinstance(image_size, int) or image_size <= 0 or image_size % TOKEN_PIXELS:
            raise ValueError(f"image_size must be a positive multiple of {TOKEN_PIXELS}, got {image_size!r}")
        self.image_size = image_size
        edges = [k * image_size // GRID for k in range(GRID + 1)]
        self._boxes = [
            (edges[r], edges[r + 1], edges[c], edges[c + 1]) for r in range(GRID) for c in range(GRID)
        ]  # (y0, y1, x0, x1) per cell
        self._colours = {name: np.array(rgb, dtype=np.uint8) for name, rgb in COLOURS.items()}
        sizes = {(y1 - y0, x1 - x0) for y0, y1, x0, x1 in self._boxes}
        self._masks = {(s, hw): _shape_mask(s, *hw) for s in SHAPES for hw in sizes}
        rng = np.random.default_rng(20240607)
        self._noise = {
            hw: rng.integers(0, 256, size=(_NOISE_TILES, hw[0], hw[1], 3), dtype=np.uint8) for hw in sizes
        }
        self._noise_masks = {hw: _shape_mask("square", *hw) for hw in sizes}

    @property
    def num_noise_tiles(self) -> int:
        return _NOISE_TILES

    def render(self, scene: Scene, noise: dict[int, int] | None = None) -> np.ndarray:
        """Scene (+ noise blotches: cell -> tile index) -> uint8 RGB [S, S, 3]."""
        img = np.empty((self.image_size, self.image_size, 3), dtype=np.uint8)
        img[:] = BACKGROUND
        for cell, (colour, shape) in scene.items():
            y0, y1, x0, x1 = self._boxes[cell]
            img[y0:y1, x0:x1][self._masks[(shape, (y1 - y0, x1 - x0))]] = self._colours[colour]
        for cell, tile in (noise or {}).items():
            y0, y1, x0, x1 = self._boxes[cell]
            hw = (y1 - y0, x1 - x0)
            mask = self._noise_masks[hw]
            img[y0:y1, x0:x1][mask] = self._noise[hw][tile][mask]
        return img
