"""Training data: captioned images as {"pixel_values": (3, H, W) in [-1, 1], "caption": str}."""
