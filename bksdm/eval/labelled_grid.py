"""A grid of images that says what it shows: a title, a name above each column, the caption above each row.

Small images (the mini world's 64 px) are enlarged by an integer factor, nearest neighbour, so that every
pixel stays a visible square and nothing is invented between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PAD = 8  # pixels between cells and around the grid
LINE = 22  # pixels of one line of text


@dataclass(frozen=True)
class GridLayout:
    """Where everything of a ``rows`` x ``columns`` grid of ``cell`` px images goes (pixels)."""

    rows: int
    columns: int
    cell: int  # side of an enlarged image

    @property
    def width(self) -> int:
        return self.columns * self.cell + (self.columns + 1) * PAD

    @property
    def header(self) -> int:
        return 2 * LINE + PAD  # the title, then the column names

    @property
    def row_height(self) -> int:
        return LINE + self.cell + PAD  # the caption, then the images

    @property
    def height(self) -> int:
        return self.header + self.rows * self.row_height

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of the image in ``row``, ``column``."""
        return PAD + column * (self.cell + PAD), self.header + row * self.row_height + LINE


def enlargement(side: int, min_side: int) -> int:
    """The integer factor that brings ``side`` px to at least ``min_side`` px (1 for large images)."""
    return max(1, -(-min_side // side))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except TypeError:
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def labelled_grid(
    columns: Sequence[np.ndarray],
    column_names: Sequence[str],
    captions: Sequence[str],
    title: str,
    min_cell: int = 256,
) -> Image.Image:
    """The grid of ``columns`` (each (rows, H, W, 3) floats in [0, 1], one row per caption) with ``title``
    on top, ``column_names`` above the columns and each caption above its row."""
    rows, side = len(captions), columns[0].shape[1]
    if any(c.shape[0] != rows for c in columns) or len(column_names) != len(columns):
        raise ValueError(
            f"a grid of {len(columns)} columns needs {len(columns)} names and {rows} images per column"
        )
    factor = enlargement(side, min_cell)
    layout = GridLayout(rows, len(columns), side * factor)
    grid = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw, font = ImageDraw.Draw(grid), _font(LINE - 6)
    draw.text((PAD, PAD // 2), _fit(draw, title, font, layout.width - 2 * PAD), fill=INK, font=font)
    for column, name in enumerate(column_names):
        x, _ = layout.cell_origin(0, column)
        draw.text((x, LINE + PAD // 2), _fit(draw, name, font, layout.cell), fill=INK, font=font)
    for row, caption in enumerate(captions):
        _, y = layout.cell_origin(row, 0)
        draw.text((PAD, y - LINE + 3), _fit(draw, caption, font, layout.width - 2 * PAD), fill=INK, font=font)
        for column, images in enumerate(columns):
            pixels = (np.clip(images[row], 0, 1) * 255).round().astype(np.uint8)
            pixels = pixels.repeat(factor, axis=0).repeat(factor, axis=1)  # nearest neighbour
            grid.paste(Image.fromarray(pixels), layout.cell_origin(row, column))
    return grid
