"""The paper's extractors (eval=coco30k) through their own libraries' loaders, on locally saved weights.

Needs the eval extra (torch==2.14.1 torchvision==0.29.1 -e ".[dev,eval]"); skipped, saying why, without it.
Real weights cannot be downloaded here, so the tests save random weights under the file names each library
looks for in its cache (pytorch-fid and torch-fidelity: torch's hub cache) or hand open_clip a local file,
and compare bksdm's numbers with each library's own computation on the same image files.
"""

import json

import numpy as np
import pytest
import torch
from helpers.eval_data import coco_json, write_real
from helpers.paths import CONF
from PIL import Image

pytest.importorskip("torchvision", reason="the eval extra (torchvision) is not installed")
pytest.importorskip("pytorch_fid", reason="the eval extra (pytorch-fid) is not installed")
pytest.importorskip("torch_fidelity", reason="the eval extra (torch-fidelity) is not installed")
open_clip = pytest.importorskip("open_clip", reason="the eval extra (open_clip) is not installed")

from bksdm.eval.metrics import FeatureStats, frechet_distance, inception_score  # noqa: E402
from bksdm.eval.paper_extractors import OpenCLIPScorer, PaperInception  # noqa: E402
from bksdm.eval.scoring import load_scored  # noqa: E402

HUB_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A torch hub cache holding random Inception-v3 weights under pytorch-fid's and torch-fidelity's
    file names; batch-norm statistics are set from smooth random images like the test's, so that
    activations and logits stay moderate."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=False, num_classes=1008, init_weights=True
        )
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # running statistics = those of the calibration batch
        net.train()
        with torch.no_grad():
            smooth = torch.nn.functional.interpolate(torch.rand(8, 3, 6, 6) * 2 - 1, size=299, mode="bicubic")
            features = torch.nn.Sequential(*list(net.children())[:-2])(smooth.clamp(-1, 1))
        net.fc.weight.data *= 3 / (features.flatten(1) @ net.fc.weight.T).std()  # logits of a few units
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in HUB_FILES:
        torch.save(net.state_dict(), checkpoints / name)
    return home


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six 256 px PNGs (scoring size already, so every tool reads the same pixels) and their captions."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        coarse = rng.integers(0, 255, (4 + i, 6, 3), dtype=np.uint8)
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(coarse).resize((256, 256), Image.Resampling.BICUBIC).save(paths[-1])
    return paths, [f"a picture number {i} of a {'red' if i % 2 else 'blue'} thing" for i in range(6)]


@pytest.fixture(scope="module")
def scored(torch_home, images):
    """bksdm's (features, logits) of the images with the paper's Inception networks, loaded from the cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        features, logits = PaperInception(device="cpu")(load_scored(images[0], 256))
        return features.double(), logits.double()


def test_fid_features_match_pytorch_fid(torch_home, images, scored, monkeypatch):
    from pytorch_fid.fid_score import calculate_activation_statistics, calculate_frechet_distance
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    paths, _ = images
    features, logits = scored
    assert features.shape == (6, 2048) and logits.shape == (6, 1008) and torch.isfinite(features).all()

    # pytorch-fid's own statistics of the same files
    mu, sigma = calculate_activation_statistics(
        [str(p) for p in paths], InceptionV3([3]).eval(), batch_size=5, dims=2048, device="cpu", num_workers=0
    )
    ours = FeatureStats.of(features)
    np.testing.assert_allclose(ours.mean.numpy(), mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.cov.numpy(), sigma, rtol=1e-3, atol=1e-5)
    # the distance on 64 of the 2048 dimensions: scipy's sqrtm, which pytorch-fid uses, takes ~20 s on all
    first, other = FeatureStats.of(features[:, :64]), FeatureStats.of(features.flip(0)[:4, :64] * 1.1)
    direct = calculate_frechet_distance(mu[:64], sigma[:64, :64], other.mean.numpy(), other.cov.numpy())
    assert frechet_distance(first, other) == pytest.approx(direct, rel=1e-6)


def test_inception_score_matches_torch_fidelity(torch_home, images, scored, monkeypatch):
    import torch_fidelity
    from torch_fidelity.metric_isc import isc_features_to_metric

    _, logits = scored
    # the same logits: shuffle (seed 2020) and split boundaries as torch-fidelity's
    expected = isc_features_to_metric(logits.float() * 4, splits=4)
    assert inception_score(logits * 4, splits=4) == pytest.approx(
        (expected["inception_score_mean"], expected["inception_score_std"]), rel=1e-9
    )
    # torch-fidelity's own path from the image folder, its network loaded from the same cache
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    metrics = torch_fidelity.calculate_metrics(
        input1=str(images[0][0].parent), isc=True, isc_splits=2, cuda=False, cache=False, verbose=False
    )
    assert inception_score(logits, splits=2) == pytest.approx(
        (metrics["inception_score_mean"], metrics["inception_score_std"]), rel=1e-4
    )


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    """A small open_clip architecture registered like a built-in one, with random weights saved to a
    local safetensors file (the real ViT-g-14 is 1.4B parameters and cannot be downloaded here)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (folder / "bksdm-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "bksdm-test-clip.json")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("bksdm-test-clip")
    weights = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return weights


def test_clip_score_matches_the_reference_script(small_clip, images):
    paths, captions = images
    scorer = OpenCLIPScorer("bksdm-test-clip", pretrained=str(small_clip), device="cpu")
    assert scorer.name == "open_clip-bksdm-test-clip-weights.safetensors"
    ours = torch.nn.functional.cosine_similarity(
        scorer.embed_images(load_scored(paths, 256)).double(), scorer.embed_texts(captions).double()
    )
    # what BK-SDM's src/eval_clip_score.py does, one image at a time
    model, _, preprocess = open_clip.create_model_and_transforms(
        "bksdm-test-clip", pretrained=str(small_clip)
    )
    tokenizer = open_clip.get_tokenizer("bksdm-test-clip")
    model.eval()
    reference = []
    with torch.no_grad():
        for path, caption in zip(paths, captions, strict=True):
            image = model.encode_image(preprocess(Image.open(path)).unsqueeze(0))
            text = model.encode_text(tokenizer([caption]))
            image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
            reference.append(float((text @ image.T)[0, 0]))
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-5)


def test_unknown_clip_model_is_named(small_clip):
    with pytest.raises(
        ValueError, match=r"eval\.clip\.model_name='ViT-q-99' is not an open_clip model; known: .*ViT-g-14"
    ):
        OpenCLIPScorer("ViT-q-99", pretrained=str(small_clip), device="cpu")


@pytest.mark.slow
def test_evaluate_with_the_paper_extractors(torch_home, small_clip, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from bksdm.evaluate import evaluate

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    write_real(tmp_path / "real")
    overrides = [
        "eval.features.device=cpu", "eval.clip.device=cpu", "eval.clip.model_name=bksdm-test-clip",
        f"eval.clip.pretrained={small_clip}", "eval.is_splits=2", "model=builtin:toy",
        f"prompts={coco_json(tmp_path / 'captions.json')}", f"real={tmp_path / 'real'}", "num_images=4",
        "num_inference_steps=2", "batch_size=4", f"out={tmp_path / 'eval'}", f"cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)  # eval=coco30k is the default
    metrics = evaluate(cfg)
    assert metrics["extractors"] == {
        "features": "pytorch-fid-inception-v3+torch-fidelity-isc",
        "clip": "open_clip-bksdm-test-clip-weights.safetensors",
    }
    assert all(np.isfinite(metrics[k]) for k in ("fid", "is", "clip")) and metrics["fid"] > 0


def test_without_network_the_missing_weights_file_and_where_it_goes_are_named(tmp_path, monkeypatch):
    import urllib.error

    import pytorch_fid.inception

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", offline)
    target = tmp_path / "hub" / "checkpoints" / HUB_FILES[0]
    with pytest.raises(
        FileNotFoundError, match=rf"download https://\S+/{HUB_FILES[0]} elsewhere and put it at {target}"
    ):
        PaperInception(device="cpu")
