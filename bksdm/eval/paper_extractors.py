"""The paper's feature extractors (``eval=coco30k``), each through its own library's loading code.

The reference evaluation (BK-SDM's ``scripts/eval_scores.sh``) used three tools, and mixing them up moves
the numbers, so each metric keeps its tool:

- FID: pytorch-fid's Inception-v3 (the TF FID graph, ``pt_inception-2015-12-05-6726825d.pth``), 2048-d
  pool features of images scaled to [0, 1] and resized to 299 px by pytorch-fid;
- IS: torch-fidelity's Inception-v3 (``inception-v3-compat``, the same TF graph), ``logits_unbiased``;
- CLIP score: open_clip ``ViT-g-14`` / ``laion2b_s34b_b88k``, each image through open_clip's own PIL
  preprocessing, each caption through its tokenizer.

The packages need torchvision and come with the ``eval`` extra. Weights are fetched by the libraries
into torch's hub cache (``$TORCH_HOME/hub/checkpoints``) or open_clip's cache; copy the files there (or
give open_clip a local file as ``pretrained``) on a machine without internet.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

EXTRA_HINT = 'pip install torch==2.14.1 torchvision==0.29.1 -e ".[eval]"'


def _require(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:  # torchvision missing or not matching torch surfaces here too
        raise ImportError(
            f"{purpose} needs the {module.split('.')[0]!r} package of the eval extra ({error}); install it "
            f"with: {EXTRA_HINT}, or pick eval=standin for the offline stand-ins"
        ) from error


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"extractors take uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )


@contextlib.contextmanager
def _weights_in_torch_hub(url: str, library: str):
    """A failed download of ``url`` (no network) becomes an error that says which file to put where."""
    try:
        yield
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if target.is_file():
            raise
        raise FileNotFoundError(
            f"{library} could not download its Inception weights ({error}). On a machine without internet, "
            f"download {url} elsewhere and put it at {target} (torch's hub cache: $TORCH_HOME/hub/checkpoints)"
        ) from error


class PaperInception(nn.Module):
    """FID pool features from pytorch-fid and IS logits from torch-fidelity, as the paper computed them.

    ``forward(uint8 (N, 3, H, W)) -> (features (N, 2048) float32, logits (N, 1008) float32)``, on the CPU.
    """

    name = "pytorch-fid-inception-v3+torch-fidelity-isc"

    def __init__(self, device: str = "auto"):
        super().__init__()
        fid_inception = _require("pytorch_fid.inception", "FID as in the paper")
        fidelity = _require("torch_fidelity.feature_extractor_inceptionv3", "IS as in the paper")
        self.device = resolve_device(device)
        block = fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]
        with _weights_in_torch_hub(fid_inception.FID_WEIGHTS_URL, "pytorch-fid"):
            self.fid_net = fid_inception.InceptionV3([block]).to(self.device).eval()
        with _weights_in_torch_hub(fidelity.URL_INCEPTION_V3, "torch-fidelity"):
            self.is_net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"])
        self.is_net.to(self.device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_images(images)
        images = images.to(self.device)
        # pytorch-fid reads images with ToTensor (x / 255) and rescales to [-1, 1] itself
        features = self.fid_net(images.float() / 255)[0].flatten(1)
        (logits,) = self.is_net(images)
        return features.float().cpu(), logits.float().cpu()


class OpenCLIPScorer(nn.Module):
    """An open_clip model for the CLIP score (default: the paper's ViT-g-14 ``laion2b_s34b_b88k``).

    ``pretrained`` is an open_clip tag or a local weights file; any open_clip model name works (another
    CLIP model for the score). ``embed_images(uint8 (N, 3, H, W)) -> (N, E)``; ``embed_texts(list) -> (N, E)``;
    unnormalised float32 on the CPU (the score normalises).
    """

    def __init__(
        self,
        model_name: str = "ViT-g-14",
        pretrained: str = "laion2b_s34b_b88k",
        device: str = "auto",
        precision: str = "fp32",
    ):
        super().__init__()
        open_clip = _require("open_clip", "the CLIP score")
        if model_name not in open_clip.list_models() and not model_name.startswith("hf-hub:"):
            raise ValueError(
                f"eval.clip.model_name={model_name!r} is not an open_clip model; known: "
                f"{', '.join(open_clip.list_models())} (or an hf-hub: id)"
            )
        self.device = resolve_device(device)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=self.device, precision=precision
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        tag = Path(pretrained).name if Path(pretrained).is_file() else pretrained
        self.name = f"open_clip-{model_name}-{tag}"

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        # open_clip's preprocessing works on PIL images (bicubic resize, centre crop, normalise)
        pixels = torch.stack(
            [
                self.preprocess(Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())))
                for image in images
            ]
        )
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(pixels.to(self.device, dtype)).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float().cpu()
