"""Training data: captioned images as {"pixel_values": (3, H, W) in [-1, 1], "caption": str}, with where
each crop came from (``original_size`` and ``crop_top_left``, (2,) each: SDXL's size conditioning)."""
