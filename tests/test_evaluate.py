"""Evaluation: the prompt rule, the metrics against direct computations, and python -m bksdm.evaluate."""

import csv
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import CONF, cpu_trainer
from hydra import compose, initialize_config_dir
from PIL import Image

from bksdm.cli.errors import ConfigError
from bksdm.eval.extractors import StandInCLIP, StandInInception
from bksdm.eval.generation import ImagesFolderError
from bksdm.eval.metrics import FeatureStats, clip_score, frechet_distance, inception_score
from bksdm.eval.prompts import load_prompts, spread
from bksdm.eval.sampling import resolve_sampling
from bksdm.eval.scoring import load_scored, real_statistics
from bksdm.evaluate import evaluate


def test_fid_equals_the_direct_frechet_distance_and_is_zero_against_itself():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 16, generator=g, dtype=torch.float64)
    b = (
        torch.randn(150, 16, generator=g, dtype=torch.float64)
        @ torch.randn(16, 16, generator=g, dtype=torch.float64)
        * 0.5
        + 0.3
    )
    sa, sb = FeatureStats.of(a), FeatureStats.of(b)
    mu1, mu2, s1, s2 = sa.mean.numpy(), sb.mean.numpy(), sa.cov.numpy(), sb.cov.numpy()
    root = scipy.linalg.sqrtm(s1 @ s2).real
    direct = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))
    assert frechet_distance(sa, sb) == pytest.approx(direct, rel=1e-9)
    assert frechet_distance(sa, sa) == pytest.approx(0.0, abs=1e-9)


def test_inception_score_and_clip_score_by_hand():
    uniform = torch.zeros(20, 5)  # every image unsure: p(y|x) = p(y), IS = 1
    assert inception_score(uniform, splits=10) == pytest.approx((1.0, 0.0))
    confident = torch.full((20, 4), -1e4)
    confident[torch.arange(20), torch.arange(20) % 4] = 0.0  # each image sure, classes balanced: IS = C
    assert inception_score(confident, splits=1)[0] == pytest.approx(4.0)
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert clip_score(e, torch.tensor([[2.0, 0.0], [1.0, 1.0]])) == pytest.approx((1.0 + math.sqrt(0.5)) / 2)
    with pytest.raises(ValueError, match="needs >= 10 images"):
        inception_score(torch.zeros(5, 3))


def coco_json(path, count=12):
    images = [{"id": 1000 - i, "file_name": f"COCO_val2014_{1000 - i:012d}.jpg"} for i in range(count)]
    notes = []
    for image in images:
        notes += [
            {
                "id": 5000 + image["id"],
                "image_id": image["id"],
                "caption": f"second caption of {image['id']}",
            },
            {"id": image["id"], "image_id": image["id"], "caption": f" first caption of {image['id']} "},
        ]
    path.write_text(json.dumps({"images": images, "annotations": notes}))
    return path


def test_prompt_rule_sorted_by_image_id_lowest_annotation_evenly_spread(tmp_path):
    pairs = load_prompts(coco_json(tmp_path / "captions.json"), num_images=4)
    ids = [int(name[-16:-4]) for name, _ in pairs]
    assert ids == [989, 992, 995, 998]  # 12 images 989..1000 sorted; indices 0, 3, 6, 9
    assert pairs[0][1] == "first caption of 989"
    assert (
        spread(list(range(40504)), 30000)[-1] == 40502
        and len(set(spread(list(range(40504)), 30000))) == 30000
    )
    with (tmp_path / "prompts.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["file_name", "text"], ["a.jpg", "x"], ["a.jpg", "y"], ["b.jpg", "z"]])
    assert load_prompts(tmp_path / "prompts.csv") == [("a.jpg", "x"), ("b.jpg", "z")]
    with pytest.raises(FileNotFoundError, match=r"captions_val2014\.json"):
        load_prompts(tmp_path / "none.json")


def write_real(folder, count=12):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        small = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg")


def test_scoring_resizes_to_256_and_real_statistics_are_cached(tmp_path):
    write_real(tmp_path / "real")
    assert load_scored([tmp_path / "real" / "0.jpg"]).shape == (1, 3, 256, 256)
    extractor = StandInInception()
    stats = real_statistics(tmp_path / "real", extractor, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("real-standin-inception-256-*.npz"))
    assert len(cached) == 1 and stats.count == 12
    again = real_statistics(tmp_path / "real", extractor, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(again.cov, stats.cov)
    assert StandInCLIP().embed_texts(["a", "a longer caption"]).shape == (2, 32)


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
    assert metrics["settings"]["seed"] == 1234
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
    )
    with pytest.raises(ConfigError, match=r"^real-image folder .*none' does not exist"):
        evaluate(cfg)
    assert not (tmp_path / "eval").exists()


def test_periodic_eval_fires_on_schedule_logs_and_keeps_the_best_checkpoint(tmp_path):
    import functools

    from lightning.pytorch.loggers import CSVLogger

    from bksdm.callbacks.periodic_eval import PeriodicEval
    from bksdm.data.datamodule import SyntheticDataModule
    from bksdm.distill.losses import DistillLoss
    from bksdm.distill.module import DistillModule

    write_real(tmp_path / "real")
    callback = PeriodicEval(
        prompts=str(coco_json(tmp_path / "captions.json")), real=str(tmp_path / "real"), features=StandInInception(),
        clip=StandInCLIP(), dirpath=tmp_path / "eval", num_images=4, every_n_steps=2, num_inference_steps=2,
        batch_size=4, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    module = DistillModule(
        teacher_source="builtin:toy", removal="small", taps=[], loss=DistillLoss(1.0, 1.0, 0.0),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    )  # fmt: skip
    trainer = cpu_trainer(
        tmp_path, max_steps=5, logger=CSVLogger(tmp_path, name="csv", version=""), callbacks=[callback]
    )
    trainer.fit(module, datamodule=SyntheticDataModule(num_samples=16, batch_size=2))
    assert [r["step"] for r in callback.history] == [2, 4, 5]  # every 2 steps, and at the end
    assert all(math.isfinite(r["fid"]) and -1 <= r["clip"] <= 1 for r in callback.history)
    assert (tmp_path / "eval" / "best.ckpt").is_file()
    assert callback.best_fid == min(r["fid"] for r in callback.history)
    assert len(list((tmp_path / "eval" / "step_0000004").glob("*.png"))) == 4
    with (tmp_path / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows if r.get("eval/fid")] == [2, 4, 5]


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


def test_results_table_puts_the_paper_numbers_beside_each_result(tmp_path, capsys):
    from bksdm.eval.table import main

    for name, model, fid in (("a", "nota-ai/BK-SDM-Small", 17.3), ("b", "outputs/runs/x/student", 25.0)):
        (tmp_path / name).mkdir()
        metrics = {"model": model, "fid": fid, "is": 30.0, "clip": 0.26, "num_images": 30000}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    main([str(tmp_path / "a"), str(tmp_path / "b" / "metrics.json"), "--out", str(tmp_path / "table.md")])
    rows = capsys.readouterr().out.splitlines()
    assert (
        rows[2]
        == "| nota-ai/BK-SDM-Small (BK-SDM-Small) | 17.30 | 30.00 | 0.2600 | 30000 | 16.98 | 31.68 | 0.2677 |"
    )
    assert rows[3].endswith("| 30000 | - | - | - |")
    assert (tmp_path / "table.md").read_text().splitlines() == rows
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match=r"c\.json' is not a bksdm evaluation result"):
        main([str(tmp_path / "c.json")])
    with pytest.raises(FileNotFoundError, match=r"give metrics\.json files or evaluation folders"):
        main([str(tmp_path / "none")])
