"""bksdm: compress and distil Stable Diffusion U-Nets the BK-SDM way."""

__version__ = "0.1.0"
