"""Generated images read back as pixel arrays, to compare runs."""

import numpy as np
from PIL import Image


def pixels(paths):
    return np.stack([np.asarray(Image.open(p)) for p in paths]).astype(int)
