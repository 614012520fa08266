"""The labelled grid: images where the layout says, enlarged by nearest neighbour, text above them."""

import numpy as np
import pytest

from bksdm.eval.labelled_grid import GridLayout, enlargement, labelled_grid


def test_the_grid_places_each_image_enlarged_under_its_caption_and_column_name():
    rng = np.random.default_rng(0)
    columns = [rng.random((2, 64, 64, 3)), rng.random((2, 64, 64, 3))]
    grid = labelled_grid(columns, ["teacher", "student"], ["a red circle", "a blue square"], "step 30", 256)
    layout = GridLayout(rows=2, columns=2, cell=256)
    assert enlargement(64, 256) == 4 and enlargement(512, 256) == 1
    assert grid.size == (layout.width, layout.height)
    pixels = np.asarray(grid)
    for row in range(2):
        for column in range(2):
            x, y = layout.cell_origin(row, column)
            expected = (columns[column][row] * 255).round().astype(np.uint8).repeat(4, 0).repeat(4, 1)
            assert np.array_equal(pixels[y : y + 256, x : x + 256], expected)
            caption_band = pixels[y - 20 : y - 2, 8 : layout.width - 8]
            assert (caption_band < 128).any()  # ink: the caption is written above the row
    assert (pixels[: layout.header] < 128).any()  # the title and the column names


def test_a_grid_whose_columns_do_not_match_its_captions_is_refused():
    with pytest.raises(ValueError, match="a grid of 2 columns needs 2 names and 3 images per column"):
        labelled_grid([np.zeros((3, 8, 8, 3)), np.zeros((2, 8, 8, 3))], ["a", "b"], ["x", "y", "z"], "t")
