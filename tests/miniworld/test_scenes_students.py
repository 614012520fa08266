"""Students of the relational world (issue 22): a built scenes teacher is distilled as the ablation does
(``experiment=miniworld_scenes_ablation``: teacher=miniworld_scenes, data=miniworld, with_miniworld_eval),
and ``eval=miniworld`` scores in the world the built folder belongs to, held-out colour-shape bindings apart."""

import collections
import json

import pytest
from helpers.miniworld import scenes_config, scenes_overrides
from helpers.paths import CONF, ROOT
from helpers.train_config import config

from bksdm.miniworld.build import PART_CHANGES

pytestmark = pytest.mark.xdist_group("scenes_world")  # the tests sharing the built world share a worker


def experiment_script(name: str):
    """``experiments/miniworld_scenes/<name>.py`` as a module: the folder is not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / f"experiments/miniworld_scenes/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILT = ("teacher.steps=2", "checkpoint_every_n_steps=2")  # its U-Net's last checkpoint is the finished one


@pytest.fixture(scope="module")
def scenes_world(tmp_path_factory):
    from bksdm.miniworld.build import build

    return build(scenes_config(tmp_path_factory.mktemp("scenes"), *BUILT))


def test_the_relational_world_s_evaluation_mixes_held_out_bindings_in_every_fifth_place():
    from bksdm.miniworld.scenes import HELD_OUT_BINDINGS, caption_labels
    from bksdm.miniworld.worlds import world_kind

    cycle = world_kind("scenes").evaluation_captions()
    assert len(cycle) == 1000 and cycle == world_kind("scenes").evaluation_captions()
    assert collections.Counter(split for _, split in cycle) == {"train": 800, "held_out": 200}
    assert all((split == "held_out") == (position % 5 == 4) for position, (_, split) in enumerate(cycle))
    bound = [" ".join(binding) for binding in HELD_OUT_BINDINGS]
    for text, split in cycle:
        labels = caption_labels(text)  # every one a caption of the world
        in_pair = labels[0] == 1 and any(binding in text for binding in bound)
        assert in_pair == (split == "held_out"), text
    singles = sum(caption_labels(text)[0] == 0 for text, _ in cycle)
    assert 200 < singles < 300  # a quarter of the train split's draws are of one object
    single = world_kind("single").evaluation_captions()
    assert len(single) == 180 and {split for _, split in single} == {"train"}


def test_a_built_folder_says_which_world_it_belongs_to(tmp_path):
    from bksdm.miniworld.assets import world_of

    assert world_of().name == "single"  # the shipped 64 px world
    with pytest.raises(FileNotFoundError, match=r"no mini-world report in .*python -m bksdm\.miniworld"):
        world_of(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"world": "cubes"}))
    with pytest.raises(ValueError, match=r"world='cubes': accepted are \['single', 'scenes'\]"):
        world_of(tmp_path)


def test_a_scenes_teacher_is_distilled_on_its_own_world_and_scored_in_it(tmp_path, scenes_world):
    from bksdm import train as train_app

    cfg = config(
        "experiment=miniworld_scenes_ablation", f"teacher.world_dir={scenes_world}", "loss=kd_full",
        "trainer.max_steps=1", "data.batch_size=2", "callbacks.sample_grid.num_inference_steps=1",
        "callbacks.miniworld_eval.num_images=10", "callbacks.miniworld_eval.num_real=20",
        "callbacks.miniworld_eval.num_latents=4", "callbacks.miniworld_eval.num_inference_steps=1",
        output_dir=tmp_path,
    )  # fmt: skip
    assert (cfg.data.world, cfg.data.resolution, cfg.data.num_samples, cfg.callbacks.miniworld_eval.world) == (
        "scenes", 128, 1000, str(scenes_world),
    )  # fmt: skip
    module = train_app.train(cfg)
    assert module.trainer.global_step == 1
    item = module.trainer.datamodule.build_dataset()[0]
    assert item["pixel_values"].shape == (3, 128, 128) and len(item["labels"]) == 9
    history = [json.loads(line) for line in (tmp_path / "eval" / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [0, 1]
    assert all(
        0 <= row["accuracy/axis"] <= 1 and 0 <= row["accuracy_held_out_split/all"] <= 1 for row in history
    )


def test_eval_miniworld_scores_a_built_scenes_teacher_in_its_world(tmp_path, scenes_world):
    from hydra import compose, initialize_config_dir

    from bksdm.evaluate import evaluate

    overrides = [
        "eval=miniworld", f"eval.world={scenes_world}", f"model={scenes_world / 'teacher'}", f"out={tmp_path}",
        "num_images=10", "num_inference_steps=1", "eval.num_real=20", "eval.num_latents=4", "device=cpu",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        result = evaluate(compose("evaluate", overrides=overrides))
    assert [result[k] for k in ("error_to_teacher", "error_to_teacher/guided")] == [0.0, 0.0]  # itself
    assert {"accuracy/objects", "accuracy/axis", "accuracy/shape_2", "accuracy/all"} <= set(result)
    assert {"accuracy_held_out_split/all", "accuracy_held_out_split/colour_2"} <= set(result)
    assert len(list((tmp_path / "images").glob("*.png"))) == 10
    manifest = json.loads((tmp_path / "images" / "manifest.json").read_text())
    assert "(i // 1000) * 100003 + i % 1000" in manifest["noise"]
    table = (tmp_path / "metrics.md").read_text()
    assert "| acc. axis |" in table and "| acc. held_out_split all |" in table


def test_teacher_progress_scores_a_running_build_s_checkpoint_as_the_report_scores_the_teacher(
    tmp_path, scenes_world
):
    teacher_progress = experiment_script("teacher_progress")
    log = tmp_path / "progress.jsonl"
    row = teacher_progress.main(scenes_overrides(scenes_world.parent, *BUILT), log)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [row] and row["step"] == 2
    assert row["prediction_type"] == "v_prediction" and row["block_out_channels"] == [16, 32, 32, 32]
    assert row["latent_side"] == 32 and row["top_stage_attention"] is False
    assert row["precision"] == "bf16-mixed"  # the build's default, which test_build.py's resumed builds leave
    report = json.loads((scenes_world / "report.json").read_text())
    figures = ("teacher_accuracy", "teacher_accuracy_held_out_split", *PART_CHANGES,
               *(f"{name}_by_timestep" for name in PART_CHANGES))  # fmt: skip
    for figure in figures:
        assert row[figure] == pytest.approx(report[figure]), figure


def test_the_design_probe_trains_a_u_net_beside_a_build_and_records_its_mid_block_s_part(
    tmp_path, scenes_world
):
    design_probe = experiment_script("design_probe")
    work = scenes_world.parent / "work"
    before = {path: path.stat().st_mtime_ns for path in work.rglob("*")}
    log = tmp_path / "probe.jsonl"
    overrides = [*scenes_overrides(scenes_world.parent, *BUILT), "teacher.skip_dropout=0.5"]
    rows = design_probe.main(["--steps", "2", "--at", "1", "2", "--threads", "1", *overrides], log)
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows
    assert [row["step"] for row in rows] == [1, 2] and rows[0]["teacher"]["skip_dropout"] == 0.5
    for row in rows:
        assert row["held_out_loss"] > 0 and row["mid_block_bypassed_change"] > 0
        assert row["mid_block_zeroed_change"] > 0 and len(row["mid_block_zeroed_change_by_timestep"]) == 4
    assert rows[0]["held_out_loss"] != rows[1]["held_out_loss"]  # it trained
    assert {
        path: path.stat().st_mtime_ns for path in work.rglob("*")
    } == before  # the build's folder is left as it was


def test_sizes_follow_the_scenes_vae_s_4x_not_sd_s_8x(monkeypatch, capsys, tmp_path, scenes_world):
    """128 px scenes are 32x32 latents: the arch report and the bench count there, and 96 px (24x24 latents)
    passes the training, sampling and bench checks, where SD's 8x would make 12x12 (three downsamplers
    refuse it)."""
    import sys

    from hydra import compose, initialize_config_dir

    from bksdm.arch.__main__ import main
    from bksdm.bench.flops import unet_flops
    from bksdm.bench.run import benchmark
    from bksdm.cli.train_setup import check_model_config, teacher_config
    from bksdm.eval.generation import check_resolution

    teacher = ["teacher=miniworld_scenes", f"teacher.world_dir={scenes_world}"]
    monkeypatch.setattr(sys, "argv", ["bksdm.arch", *teacher, "format=json"])
    main()
    assert json.loads(capsys.readouterr().out)["latent_size"] == 32

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=[*teacher, "bench.count_only=true", "bench.batch_size=2",
                                          "bench.resolution=96"])  # fmt: skip
    benchmark(cfg)
    counts = json.loads(capsys.readouterr().out.splitlines()[-1])["flops_per_step"]["fast"]
    assert counts["teacher_forward"] == unet_flops(teacher_config(cfg), 24, 2, backward=False)

    check_resolution(str(scenes_world / "teacher"), 96)
    with pytest.raises(ValueError, match=r"resolution=90: accepted are pixel sizes that are multiples of 4 "):
        check_resolution(str(scenes_world / "teacher"), 90)
    cfg = config("experiment=miniworld_scenes_ablation", *teacher[1:], output_dir=tmp_path)
    check_model_config(cfg, 96)
    with pytest.raises(
        ValueError, match=r"data\.resolution=80 cannot go through .* latent size 20 does not fit"
    ):
        check_model_config(cfg, 80)


def test_an_unbuilt_world_folder_is_said_in_one_line_with_how_to_build_it(tmp_path, monkeypatch):
    """The default teacher.world_dir is outputs/miniworld/scenes-seed0, which a fresh checkout lacks."""
    import sys

    from bksdm import train as train_app
    from bksdm.arch.__main__ import main
    from bksdm.cli import ConfigError

    unbuilt = tmp_path / "scenes-seed0"
    said = (
        rf"^teacher=miniworld_scenes is read from the mini world built in teacher\.world_dir='{unbuilt}', "
        r"which holds no teacher/model_index\.json: build it with `python -m bksdm\.miniworld world=scenes`"
    )
    monkeypatch.setattr(
        sys, "argv", ["bksdm.arch", "teacher=miniworld_scenes", f"teacher.world_dir={unbuilt}"]
    )
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the error itself, not Hydra's exit
    with pytest.raises(ConfigError, match=said):
        main()
    run = tmp_path / "run"
    cfg = config("experiment=miniworld_scenes_ablation", f"teacher.world_dir={unbuilt}", output_dir=run)
    with pytest.raises(ConfigError, match=said):
        train_app.train(cfg)
    assert not run.exists() and not unbuilt.exists()


def test_a_shipped_world_is_named_like_a_teacher_source(tmp_path, monkeypatch, scenes_world):
    """builtin:miniworld-scenes names the relational world once it ships (bksdm/miniworld/assets/scenes),
    as a teacher or model source and as the world an evaluation scores in."""
    from hydra import compose, initialize_config_dir

    from bksdm.evaluate import evaluate
    from bksdm.miniworld.assets import ASSETS, SHIPPED, world_folder
    from bksdm.teachers.loading import resolve_source

    assert world_folder() == world_folder("builtin:miniworld") == ASSETS
    assert world_folder(str(scenes_world)) == scenes_world
    with pytest.raises(
        ValueError, match=r"world='builtin:cubes': accepted are a built mini world's folder or "
    ):
        world_folder("builtin:cubes")
    monkeypatch.setitem(SHIPPED, "builtin:miniworld-scenes", tmp_path / "unshipped")
    with pytest.raises(FileNotFoundError, match=r"builtin:miniworld-scenes is not shipped with this version"):
        world_folder("builtin:miniworld-scenes")

    monkeypatch.setitem(SHIPPED, "builtin:miniworld-scenes", scenes_world)
    assert resolve_source("builtin:miniworld-scenes") == str(scenes_world / "teacher")
    overrides = [
        "eval=miniworld", "eval.world=builtin:miniworld-scenes", "model=builtin:miniworld-scenes",
        f"out={tmp_path / 'eval'}", "num_images=5", "num_inference_steps=1", "eval.num_real=20",
        "eval.num_latents=4", "device=cpu",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        result = evaluate(compose("evaluate", overrides=overrides))
    assert result["error_to_teacher"] == 0.0 and "accuracy_held_out_split/all" in result  # itself, scenes
