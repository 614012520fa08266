"""python -m bksdm.evaluate: finite metrics, resuming without regenerating, another model's images folder,
errors before generation, the paper's protocol by default. The prompt rule, the metrics, scoring and the
results table are tested in tests/eval/, the periodic evaluation in tests/callbacks/."""

import json
import math

import pytest
import torch
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
        "eval.cmmd=true",
    )  # fmt: skip
    result = evaluate(cfg)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert all(math.isfinite(metrics[k]) for k in ("fid", "is", "clip", "cmmd")) and metrics["fid"] > 0
    assert (
        metrics["cmmd"] > 0 and len(list((tmp_path / "cache").glob("embeddings-standin-clip-256-*.npy"))) == 1
    )
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


def test_evaluate_logs_its_result_to_a_wandb_run_with_a_table_of_images(tmp_path, monkeypatch):
    import csv

    from helpers.wandb_runs import read_records, written_runs

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv(
        "WANDB_DATA_DIR", str(tmp_path / "wandb_data")
    )  # where an offline run stages artifacts
    write_real(tmp_path / "real")
    cfg = config(
        "model=builtin:toy", f"prompts={coco_json(tmp_path / 'captions.json')}", f"real={tmp_path / 'real'}",
        "num_images=10", "num_inference_steps=2", "batch_size=4", f"out={tmp_path / 'eval'}",
        f"cache_dir={tmp_path / 'cache'}", "wandb.mode=offline", "wandb.table_images=3",
    )  # fmt: skip
    result = evaluate(cfg)
    with (tmp_path / "eval" / "clip_scores.csv").open() as handle:
        per_image = list(csv.DictReader(handle))
    assert [row["image"] for row in per_image] == [f"{i:06d}.png" for i in range(10)]
    assert sum(float(row["clip"]) for row in per_image) / 10 == pytest.approx(result["clip"], abs=1e-6)
    (run_file,) = written_runs(tmp_path / "eval" / "wandb", "offline-run-*/run-*.wandb")  # wandb.dir: out
    records = list(read_records(run_file))
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.job_type == "evaluate" and run.display_name == "evaluate-builtin:toy"
    summary = {
        i.key: json.loads(i.value_json) for r in records if r.HasField("summary") for i in r.summary.update
    }
    assert summary["fid"] == pytest.approx(result["fid"]) and summary["num_images"] == 10
    (table,) = [r.artifact for r in records if r.HasField("artifact") and r.artifact.type == "run_table"]
    contents = {entry.path: entry.local_path for entry in table.manifest.contents}
    (table_file,) = [path for path in contents if path.endswith(".table.json")]
    with open(contents[table_file]) as handle:
        rows = json.load(handle)["data"]
    assert [row[0] for row in rows] == [0, 1, 2] and all(row[2]["_type"] == "image-file" for row in rows)
    assert [row[3] for row in rows] == pytest.approx([float(r["clip"]) for r in per_image[:3]])


def test_fd_dinov2_is_scored_with_a_dinov2_network_loaded_by_transformers(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    from bksdm.eval.dinov2 import DINOv2Features

    # a small DINOv2 with random weights, saved as the hub's are and loaded by the real path
    config_ = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    Dinov2Model(config_).save_pretrained(tmp_path / "dinov2-small-test")
    write_real(tmp_path / "real")
    cfg = config(
        "model=builtin:toy", f"prompts={coco_json(tmp_path / 'captions.json')}", f"real={tmp_path / 'real'}",
        "num_images=10", "num_inference_steps=2", "batch_size=5", f"out={tmp_path / 'eval'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"eval.fd_dinov2={{_target_:bksdm.eval.dinov2.DINOv2Features,model:'{tmp_path / 'dinov2-small-test'}',size:56}}",
    )  # fmt: skip
    result = evaluate(cfg)
    assert math.isfinite(result["fd_dinov2"]) and result["fd_dinov2"] > 0
    assert len(list((tmp_path / "cache").glob("real-dinov2-dinov2-small-test-56-*.npz"))) == 1
    features, _ = DINOv2Features(str(tmp_path / "dinov2-small-test"), size=56)(
        torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    )
    assert features.shape == (2, 32) and features.dtype == torch.float64
    with pytest.raises(FileNotFoundError, match="DINOv2 model 'no/such-model' could not be loaded"):
        DINOv2Features("no/such-model")


@pytest.mark.slow
def test_two_processes_score_as_one_and_resume(tmp_path):
    """devices=2 (two CPU processes over gloo, launched by Lightning Fabric): the same images, per-image
    CLIP scores and metrics as one process, the real statistics split over the two; a rerun under torchrun
    after images were lost makes only those."""
    import os
    import subprocess
    import sys

    write_real(tmp_path / "real")
    common = [
        "eval=standin", "model=builtin:toy", f"prompts={coco_json(tmp_path / 'captions.json')}",
        f"real={tmp_path / 'real'}", "num_images=10", "num_inference_steps=2", "eval.cmmd=true", "device=cpu",
        "cache_dir=null",  # each run computes the real statistics: the two-process run splits them
        "batch_size=1",  # the same batches as one process: batched kernels may round a pixel level apart
    ]  # fmt: skip
    one = evaluate(config(*common, f"out={tmp_path / 'one'}"))
    common.append("devices=2")

    def two_processes(launcher: list[str]):
        done = subprocess.run(
            [sys.executable, *launcher, "-m", "bksdm.evaluate", *common, f"out={tmp_path / 'two'}"],
            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((tmp_path / "two" / "metrics.json").read_text())

    two = two_processes([])
    assert two["settings"]["devices"] == two["processes"] == 2 and two["num_images"] == 10
    for name in ("fid", "is", "clip", "cmmd"):
        assert two[name] == pytest.approx(one[name], rel=1e-6, abs=1e-9), name
    assert (tmp_path / "two" / "clip_scores.csv").read_text() == (
        tmp_path / "one" / "clip_scores.csv"
    ).read_text()
    images = sorted((tmp_path / "two" / "images").glob("*.png"))
    assert [p.read_bytes() for p in images] == [
        (tmp_path / "one" / "images" / p.name).read_bytes() for p in images
    ] and len(images) == 10

    lost = {3, 8}  # one image of each rank's share (every second prompt)
    stamps = {p.name: p.stat().st_mtime_ns for i, p in enumerate(images) if i not in lost}
    for i in lost:
        images[i].unlink()
    common.remove("devices=2")  # torchrun's two processes this time
    again = two_processes(["-m", "torch.distributed.run", "--nproc_per_node=2"])
    assert {p.name: p.stat().st_mtime_ns for i, p in enumerate(images) if i not in lost} == stamps
    assert all(images[i].is_file() for i in lost) and again["processes"] == 2
    assert again["fid"] == pytest.approx(one["fid"], rel=1e-6)


@pytest.mark.parametrize(
    "overrides, environment, message",
    [
        (["devices=0"], {}, r"^devices=0: accepted are a number of devices"),
        (["devices=two"], {}, r"^devices='two': accepted"),
        (["devices=2", "device=cuda:1"], {}, r"^device='cuda:1' with devices=2: accepted are device=auto"),
        (["devices=3"], {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"},
         r"^devices=3 under torchrun --nproc_per_node=2: leave devices unset"),
    ],
)  # fmt: skip
def test_bad_devices_are_refused_before_any_process_starts(
    tmp_path, monkeypatch, overrides, environment, message
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    write_real(tmp_path / "real")
    cfg = config(
        "model=builtin:toy", f"prompts={coco_json(tmp_path / 'c.json')}", f"real={tmp_path / 'real'}",
        f"out={tmp_path / 'eval'}", "num_images=4", *overrides,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        evaluate(cfg)
    assert not (tmp_path / "eval").exists()


def test_a_flow_matching_transformer_evaluates_through_its_own_pipeline(tmp_path):
    """builtin:sd3-toy (a StableDiffusion3Pipeline folder, as an exported SD3 student is), with its own
    flow-matching sampler."""
    write_real(tmp_path / "real")
    cfg = config(
        "model=builtin:sd3-toy", f"prompts={coco_json(tmp_path / 'captions.json')}", f"real={tmp_path / 'real'}",
        "num_images=10", "num_inference_steps=2", "batch_size=5", "resolution=64", "scheduler=null",
        f"out={tmp_path / 'eval'}", f"cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    result = evaluate(cfg)
    assert all(math.isfinite(result[k]) for k in ("fid", "is", "clip"))
    sizes = [Image.open(p).size for p in sorted((tmp_path / "eval" / "images").glob("*.png"))]
    assert sizes == [(64, 64)] * 10
