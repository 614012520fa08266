"""The paper's image transform, in plain PIL and torch (no torchvision in the core)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bksdm.data.skips import skip


class ImageTransform:
    """Resize the shorter side to ``resolution`` (bicubic), crop a square, maybe flip, scale to [-1, 1].

    Any PIL mode (grayscale, palette, CMYK, with alpha) is converted to RGB first; alpha is composited
    on white. Calling it returns the float tensor (3, resolution, resolution); ``sample`` also says where
    the crop came from, which SDXL is conditioned on.
    """

    def __init__(self, resolution: int, center_crop: bool = True, random_flip: bool = True):
        if not isinstance(resolution, int) or resolution < 8 or resolution % 8:
            raise ValueError(f"resolution={resolution!r} must be a positive multiple of 8 (pixels)")
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return self.sample(image, rng)["pixel_values"]

    def sample(
        self, image: Image.Image, rng: random.Random | None = None, flip: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """``pixel_values`` (3, resolution, resolution) in [-1, 1], ``original_size`` (2,) the image's
        (height, width) before resizing, and ``crop_top_left`` (2,) the crop's (top, left) offset in pixels
        of the resized image, as the diffusers SDXL training script records them: flipping comes before
        cropping there, so a flipped image's offset is measured in the mirrored image. ``flip``: whether
        to mirror the crop; None: at random when ``random_flip``."""
        rng = rng or random
        image = to_rgb(image)
        original_size = torch.tensor([image.height, image.width])
        scale = self.resolution / min(image.size)
        size = (
            max(self.resolution, round(image.width * scale)),
            max(self.resolution, round(image.height * scale)),
        )
        image = image.resize(size, Image.Resampling.BICUBIC)
        spare_x, spare_y = image.width - self.resolution, image.height - self.resolution
        if self.center_crop:
            left, top = spare_x // 2, spare_y // 2
        else:
            left, top = rng.randint(0, spare_x), rng.randint(0, spare_y)
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if flip is None:
            flip = self.random_flip and rng.random() < 0.5
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            left = spare_x - left
        return {
            "pixel_values": image_to_unit(image),
            "original_size": original_size,
            "crop_top_left": torch.tensor([top, left]),
        }


def uint8_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixel values (any shape) -> float32 in [-1, 1], the VAE's input range."""
    return pixels.float() / 127.5 - 1.0


def image_to_unit(image: Image.Image) -> torch.Tensor:
    """An RGB image -> (3, H, W) float32 in [-1, 1]."""
    return uint8_to_unit(torch.from_numpy(np.array(image))).permute(2, 0, 1).contiguous()


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def open_image(source: str | Path | bytes) -> Image.Image | dict:
    """Open and fully decode an image from a path or encoded bytes, or return a skip marker
    (``truncated_image`` or ``unreadable_image``) instead of raising."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()  # decode now: a truncated file only fails here
        return image
    except UnidentifiedImageError:
        return skip("unreadable_image")
    except (OSError, SyntaxError, ValueError) as error:  # PIL's decoders raise all three on bad data
        return skip("truncated_image" if "truncated" in str(error) else "unreadable_image")
