"""The mini world: deterministic captioned items, its data source, the shipped teacher and classifier,
the evaluation, and the build entry point."""

import json

import numpy as np
import pytest
import torch
from helpers.paths import CONF
from helpers.train_config import FAST, config
from hydra import compose, initialize_config_dir

from bksdm.cli.errors import ConfigError
from bksdm.eval.generation import ImagesFolderError
from bksdm.miniworld.world import ATTRIBUTES, MiniWorld, all_captions, parse_caption, render, scene


def test_items_are_deterministic_captioned_and_labelled():
    a, b = MiniWorld(8, seed=0), MiniWorld(8, seed=0)
    for i in range(8):
        assert torch.equal(a[i]["pixel_values"], b[i]["pixel_values"]) and a[i]["caption"] == b[i]["caption"]
        assert tuple(a[i]["labels"].tolist()) == parse_caption(a[i]["caption"])
    assert (
        a[0]["pixel_values"].shape == (3, 64, 64)
        and -1 <= a[0]["pixel_values"].min() < a[0]["pixel_values"].max() <= 1
    )
    assert [MiniWorld(4, seed=1)[i]["caption"] for i in range(4)] != [a[i]["caption"] for i in range(4)]
    held_out = MiniWorld(4, seed=0, offset=4)
    assert torch.equal(held_out[0]["pixel_values"], MiniWorld(8, seed=0)[4]["pixel_values"])
    assert a[(3, 77)]["sample_seed"] == 77  # a ResumableSampler key carries the sample's noise seed


def test_captions_cover_every_attribute_combination_and_are_parsed_back():
    captions = all_captions()
    assert len(captions) == len({text for text, _ in captions}) == 3 * 6 * 5 * 2
    assert captions[0][0] == "a small red circle on the left"
    assert all(parse_caption(text) == labels for text, labels in captions)
    with pytest.raises(ValueError, match=r"caption 'a red circle' is not one of the mini world's 180"):
        parse_caption("a red circle")
    seen = {tuple(scene(i).labels) for i in range(3000)}
    assert len(seen) == len(captions)  # the generator reaches every caption


def test_the_drawing_shows_the_caption():
    item = scene(5)
    image = np.asarray(render(item)).astype(int)
    cx, cy = (round(c * 64) for c in item.centre)
    assert np.abs(image[cy, cx] - np.array(item.rgb)).max() < 30  # the shape's colour at its centre
    corner = np.array(item.background[0])
    assert np.abs(image[1, 1] - corner).max() < 30
    assert list(ATTRIBUTES) == ["shape", "colour", "position", "size"]


def test_miniworld_data_source_trains_a_step(tmp_path):
    from bksdm import train as train_app

    cfg = config(
        "experiment=demo",
        *FAST,
        "teacher=toy",
        "data=miniworld",
        "data.resolution=64",
        output_dir=tmp_path,
    )
    module = train_app.train(cfg)
    assert module.trainer.global_step == 1


@pytest.mark.slow
def test_build_trains_every_part_from_a_seed_and_writes_a_loadable_world(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from bksdm.miniworld.assets import load_classifier, teacher_path
    from bksdm.miniworld.build import build
    from bksdm.teachers.loading import load_components

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("miniworld", overrides=[
            f"out={tmp_path / 'world'}", f"work_dir={tmp_path / 'work'}", f"log_dir={tmp_path / 'logs'}",
            "pool.train=128", "pool.held_out=32",
            "vae.steps=3", "teacher.steps=3", "classifier.steps=3", "classifier.round_trips=32",
            "report.seeds=1", "report.num_inference_steps=2", "log_every_n_steps=1",
        ])  # fmt: skip
    out = build(cfg)
    bars = capsys.readouterr().out
    assert all(f"{stage}: 100%" in bars and "3/3" in bars for stage in ("vae", "teacher", "classifier"))
    report = json.loads((out / "report.json").read_text())
    assert set(report["teacher_accuracy"]) == {"shape", "colour", "position", "size", "all"}
    assert report["mid_block_zeroed_change"] >= 0 and report["world"] == "single"
    assert report["scaling_factor"] > 0 and set(report["seconds"]) == {
        "render",
        "vae",
        "teacher",
        "classifier",
    }
    assert all(
        (tmp_path / "logs" / stage / "metrics.csv").is_file() for stage in ("vae", "teacher", "classifier")
    )
    parts = load_components(str(teacher_path(out)))  # the checked loading path every teacher takes
    assert parts.vae.config.scaling_factor == pytest.approx(report["scaling_factor"])
    assert parts.unet.dtype == torch.float32  # stored in fp16, loaded as asked
    assert load_classifier(out)(torch.zeros(2, 3, 64, 64))["size"].shape == (2, 2)
    with pytest.raises(FileNotFoundError, match=r"no mini-world teacher in .*python -m bksdm\.miniworld"):
        teacher_path(tmp_path)


def test_the_ablation_summary_tabulates_and_plots_a_sweep(tmp_path):
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    for loss, arch, seed, accuracy, steps in [
        ("task", "small", 0, 0.5, (0, 100)),
        ("task", "small", 1, 0.6, (0, 100)),
        ("kd_full", "small", 0, 0.9, (0, 100)),
        ("kd_out", "small", 0, 0.7, (0, 50)),  # still running: left out
    ]:
        run = sweep / f"{loss}-{arch}-seed{seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / "eval").mkdir()
        (run / ".hydra" / "hydra.yaml").write_text(
            f"hydra:\n  runtime:\n    choices:\n      loss: {loss}\n      arch: {arch}\n"
        )
        (run / ".hydra" / "config.yaml").write_text(
            f"seed: {seed}\ntrainer:\n  max_steps: 100\n  accelerator: {'gpu' if seed else 'cpu'}\n"
        )
        rows = [{"step": s, "accuracy/all": accuracy * s / 100 + 0.01 * seed, "fid": 10.0 - s / 50,
                 "error_to_teacher": 0.1, "error_to_teacher/unconditional": 0.15,
                 "error_to_teacher/guided": 0.2} for s in steps]  # fmt: skip
        (run / "eval" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = tmp_path / "teacher.json"
    errors = ("error_to_teacher", "error_to_teacher/unconditional", "error_to_teacher/guided")
    scores = {"accuracy/all": 0.75, "fid": 5.0} | dict.fromkeys(errors, 0.0)
    teacher.write_text(json.dumps(scores))
    script = CONF.parent / "experiments" / "miniworld_ablation" / "summarize.py"
    command = [
        sys.executable,
        str(script),
        str(sweep),
        "--out",
        str(tmp_path / "out"),
        "--teacher",
        str(teacher),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "left out, still running: kd_out-small-seed0" in done.stdout
    table = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert table[2] == "| teacher | (itself) | - | - | 0.75 | 5 | 0 | 0 | 0 |"
    assert table[3].startswith("| small | untrained | 0 | 2 | 0.005 ± 0.0071 | 10 ± 0 |")
    assert table[4].startswith("| small | task | 100 | 2 | 0.555 ± 0.078 | 8 ± 0 |")
    assert table[5].startswith("| small | kd_full | 100 | 1 | 0.9 | 8 |")
    assert table[6:] == ["", "Trained on: 2 runs cpu, 1 runs gpu"]
    plots = ("accuracy.png", "fid.png", "error.png", "guided_error.png")
    assert all((tmp_path / "out" / name).stat().st_size > 1000 for name in plots)
    # a history without one of the scores (written before the guided error existed) is named
    history = sweep / "task-small-seed0" / "eval" / "history.jsonl"
    history.write_text(json.dumps({"step": 100, "accuracy/all": 0.5, "fid": 8.0, "error_to_teacher": 0.1}))
    done = subprocess.run(command, capture_output=True, text=True)
    assert (
        done.returncode != 0
        and "task-small-seed0" in done.stderr
        and "error_to_teacher/guided" in done.stderr
    )


def test_the_shipped_teacher_draws_its_captions_and_scores_zero_error_to_itself(tmp_path):
    from hydra import compose, initialize_config_dir

    from bksdm.evaluate import evaluate

    overrides = ["eval=miniworld", "model=builtin:miniworld", f"out={tmp_path}", "num_images=180",
                 "num_inference_steps=10", "eval.num_real=500", "eval.num_latents=32", "device=cpu"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for refused in ("seed=5", "prompts=captions.json", "dtype=float16", "devices=2"):
            with pytest.raises(ConfigError, match=f"eval=miniworld does not take {refused.split('=')[0]}="):
                evaluate(compose("evaluate", overrides=[*overrides, refused]))
        result = evaluate(compose("evaluate", overrides=overrides))
    # what it used, and nothing it did not: no coco prompts, seed or 30,000 images
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["protocol"] == "miniworld" and stored["num_images"] == 180
    assert {k: stored["settings"][k] for k in ("num_images", "prompts", "real", "seed")} == {
        "num_images": 180, "prompts": None, "real": None, "seed": None,
    }  # fmt: skip
    errors = ("error_to_teacher", "error_to_teacher/unconditional", "error_to_teacher/guided")
    assert [result[k] for k in errors] == [0.0] * 3  # the teacher against itself
    # every caption once, 10 sampling steps (chance for all four: 1/180); the full protocol is in report.json
    assert result["accuracy/all"] > 0.5 and result["accuracy/position"] > 0.8, result
    assert result["fid"] < 80, result
    assert "| builtin:miniworld |" in (tmp_path / "metrics.md").read_text()

    # its images are kept, and an interrupted run resumes: only the missing images are drawn again
    images = sorted((tmp_path / "images").glob("*.png"))
    assert (
        len(images) == 180 and json.loads((tmp_path / "images" / "manifest.json").read_text())["seed"] is None
    )
    stamps = [p.stat().st_mtime_ns for p in images]
    for lost in (images[7], images[100]):
        lost.unlink()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        again = evaluate(compose("evaluate", overrides=overrides))
        with pytest.raises(
            ImagesFolderError, match=r"num_inference_steps 10 -> 12"
        ):  # before any model loads
            evaluate(compose("evaluate", overrides=[*overrides, "num_inference_steps=12"]))
    kept = [i for i in range(180) if i not in (7, 100)]
    assert [images[i].stat().st_mtime_ns for i in kept] == [stamps[i] for i in kept]
    # the two new images came from a batch of 2 instead of 90: batched kernels may round a pixel level apart
    scores = [k for k in result if k.startswith(("accuracy/", "fid", "error_to_teacher"))]
    assert [again[k] for k in scores] == pytest.approx([result[k] for k in scores], rel=1e-4, abs=1 / 180)


@pytest.mark.slow
def test_a_kd_student_beats_a_task_only_student_on_error_to_the_teacher(tmp_path):
    from bksdm import train as train_app
    from bksdm.arch import build_student
    from bksdm.eval.generation import load_pipeline
    from bksdm.miniworld.assets import load_classifier
    from bksdm.miniworld.evaluation import MiniWorldReference, errors_to_teacher
    from bksdm.prepare import prepare

    teacher = load_pipeline("builtin:miniworld", "float32", "cpu", None)
    reference = MiniWorldReference.build(teacher, load_classifier(), num_real=100, num_latents=256)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # encoded once, not every step
        shards = prepare(compose("prepare", overrides=[
            "teacher=miniworld", "data=miniworld", "data.num_samples=320", "mode=latents", "mirrored=false",
            "batch_size=64", f"out={tmp_path / 'latents'}",
        ])).shards  # fmt: skip
    errors = {}
    for loss in ("task", "kd_full"):  # the same data, noise and steps: only the objective differs
        cfg = config(
            "experiment=demo", f"loss={loss}", "data=miniworld_latents", f"data.urls={shards}",
            "data.num_workers=0", "trainer.max_steps=40", "data.batch_size=32", "callbacks.sample_grid=null",
            "callbacks.export_student=null", output_dir=tmp_path / loss,
        )  # fmt: skip
        errors[loss] = errors_to_teacher(train_app.train(cfg).student, reference, 3.0)["error_to_teacher"]
    untrained = build_student(teacher.unet, "small")
    errors["untrained"] = errors_to_teacher(untrained, reference, 3.0)["error_to_teacher"]
    assert errors["kd_full"] < 0.8 * errors["task"] and errors["task"] < errors["untrained"], errors
