"""python -m bksdm.evaluate: finite metrics, resuming without regenerating, another model's images folder,
errors before generation, the paper's protocol by default. The prompt rule, the metrics, scoring and the
results table are tested in tests/eval/, the periodic evaluation in tests/callbacks/."""

import json
import math

import pytest
from helpers.eval_data import coco_json, write_real
from helpers.paths import CONF
from hydra import compose, initialize_config_dir
from PIL import Image

from bksdm.cli.errors import ConfigError
from bksdm.eval.generation import ImagesFolderError
from bksdm.eval.prompts import load_prompts
from bksdm.eval.sampling import resolve_sampling
from bksdm.evaluate import evaluate


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("evaluate", overrides=["eval=standin", *overrides])


def test_evaluate_writes_finite_metrics_and_resumes_without_regenerating(tmp_path, monkeypatch):
    write_real(tmp_path / "real")
    cfg = config(
        "model=builtin:toy", f"prompts={coco_json(tmp_path / 'captions.json')}", f"real={tmp_path / 'real'}",
        "num_images=10", "num_inference_steps=2", "batch_size=4", f"out={tmp_path / 'eval'}", f"cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    result = evaluate(cfg)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert all(math.isfinite(metrics[k]) for k in ("fid", "is", "clip")) and metrics["fid"] > 0
    assert metrics["num_images"] == 10 and metrics["extractors"] == {
        "features": "standin-inception",
        "clip": "standin-clip",
    }
    assert metrics["settings"]["seed"] == 1234 and metrics["generator_device"] == "cpu"
    assert metrics["prompt_rule"].startswith("COCO captions json: bksdm's approximation")
    assert metrics["sampling"] == {"guidance_scale": 7.5, "num_inference_steps": 2}
    assert "| builtin:toy |" in (tmp_path / "eval" / "metrics.md").read_text()

    images = sorted((tmp_path / "eval" / "images").glob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in images]
    images[-1].unlink()  # as if the run had been killed before the last image
    from diffusers import StableDiffusionPipeline

    calls = []
    original = StableDiffusionPipeline.__call__
    monkeypatch.setattr(
        StableDiffusionPipeline,
        "__call__",
        lambda self, prompts, **kw: calls.append(prompts) or original(self, prompts, **kw),
    )
    again = evaluate(cfg)
    assert calls == [[load_prompts(tmp_path / "captions.json", 10)[-1][1]]]  # only the missing image
    assert [p.stat().st_mtime_ns for p in images[:-1]] == stamps[:-1]
    # the re-made image came from a batch of 1 instead of 2: batched kernels may round a pixel level apart
    assert again["fid"] == pytest.approx(result["fid"], rel=1e-3)


def test_evaluating_another_model_into_its_images_folder_stops_before_loading(tmp_path, monkeypatch):
    write_real(tmp_path / "real")
    settings = [
        f"prompts={coco_json(tmp_path / 'captions.json')}", f"real={tmp_path / 'real'}", "num_images=10",
        "num_inference_steps=2", "batch_size=10", f"out={tmp_path / 'eval'}", f"cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    evaluate(config("model=builtin:toy", *settings))
    manifest = json.loads((tmp_path / "eval" / "images" / "manifest.json").read_text())
    assert manifest["model"] == "builtin:toy" and len(manifest["prompts"]) == 10
    assert manifest["guidance_scale"] == 7.5  # SD's: the toy teacher's folder has no sampling.json

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded")

    with monkeypatch.context() as patched:
        patched.setattr("bksdm.eval.generation.load_pipeline", loaded)
        patched.setattr("bksdm.eval.protocols.instantiate", loaded)  # the feature extractors
        with pytest.raises(
            ImagesFolderError,
            match=r"model 'builtin:toy' -> 'builtin:miniworld'; guidance_scale 7\.5 -> 3\.0",
        ):
            evaluate(config("model=builtin:miniworld", *settings))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"] == "builtin:toy"

    result = evaluate(config("model=builtin:miniworld", "overwrite=true", *settings))
    assert result["model"] == "builtin:miniworld" and result["sampling"]["guidance_scale"] == 3.0
    images = sorted((tmp_path / "eval" / "images").glob("*.png"))
    assert len(images) == 10 and Image.open(images[0]).size == (64, 64)  # the mini world's, not the tiny's


def test_evaluate_errors_come_before_generation(tmp_path):
    cfg = config(
        "model=builtin:toy",
        f"prompts={coco_json(tmp_path / 'c.json')}",
        f"real={tmp_path / 'none'}",
        f"out={tmp_path / 'eval'}",
        "num_images=null",  # every caption: the paper's 30000 would be more than the 12 captions hold
    )
    with pytest.raises(ConfigError, match=r"^real-image folder .*none' does not exist"):
        evaluate(cfg)
    assert not (tmp_path / "eval").exists()


def test_evaluate_defaults_to_the_paper_protocol():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=["model=m", "prompts=p.json", "real=r/"])
    assert cfg.eval.name == "coco30k" and cfg.eval.features._target_.endswith("PaperInception")
    assert (cfg.eval.clip.model_name, cfg.eval.clip.pretrained) == ("ViT-g-14", "laion2b_s34b_b88k")
    assert (cfg.num_images, cfg.seed, cfg.overwrite) == (30000, 1234, False)
    # null: the model folder's own sampling defaults; an SD checkpoint has none, so SD's 25 steps, guidance 7.5
    assert (cfg.num_inference_steps, cfg.guidance_scale) == (None, None)
    sampling, _ = resolve_sampling("CompVis/stable-diffusion-v1-4", None, None)
    assert sampling == {"guidance_scale": 7.5, "num_inference_steps": 25}
    assert (cfg.eval.score_size, cfg.eval.is_splits) == (256, 10)
