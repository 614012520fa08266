"""python -m bksdm.generate: prompt files and the grid, setting errors, the images folder's manifest, the
model's sampling defaults. The generation it shares with evaluation is tested in tests/eval/test_generation.py."""

import json

import numpy as np
import pytest
from helpers.images import pixels
from helpers.paths import CONF
from hydra import compose, initialize_config_dir
from PIL import Image

from bksdm.cli.errors import ConfigError
from bksdm.eval.generation import ImagesFolderError
from bksdm.generate import generate


def cli(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def test_cli_prompts_file_and_grid(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue square\n")
    paths = generate(cli("model=builtin:toy", "prompt=a green triangle", f"prompts_file={tmp_path / 'prompts.txt'}",
                         "num_inference_steps=2", f"out={tmp_path / 'out'}"))  # fmt: skip
    assert len(paths) == 3
    assert Image.open(tmp_path / "out" / "grid.png").size == (256, 256)  # 2 x 2 grid of 128 px images


def test_an_sdxl_pipeline_folder_generates_through_its_own_pipeline_class(tmp_path):
    """builtin:sdxl-toy, a StableDiffusionXLPipeline folder (as an exported SDXL student is): drawn with
    the same seeded latents, the image does not depend on the batch."""
    prompts = ["a red circle", "a blue square"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    common = ["model=builtin:sdxl-toy", f"prompts_file={tmp_path / 'prompts.txt'}", "num_inference_steps=2"]
    one = generate(cli(*common, "batch_size=1", f"out={tmp_path / 'one'}"))
    two = generate(cli(*common, "batch_size=2", f"out={tmp_path / 'two'}"))
    assert [Image.open(p).size for p in one] == [(128, 128)] * 2
    assert np.abs(pixels(one) - pixels(two)).max() <= 1  # batched kernels may round a level apart


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["model=builtin:toy"], ValueError, "no prompt"),
        (
            ["model=builtin:toy", "prompts_file=/nowhere.txt"],
            ConfigError,
            r"prompts_file='/nowhere\.txt' does not exist",
        ),
        (["model=/nowhere", "prompt=x"], ConfigError, r"^model='/nowhere' is not a folder"),
        (
            ["model=outputs/runs/x/student", "prompt=x"],
            ConfigError,
            r"^model='outputs/runs/x/student' is not",
        ),
        (["model=builtin:toy", "prompt=x", "dtype=fp8"], ValueError, r"dtype='fp8'"),
        (
            ["model=builtin:toy", "prompt=x", "num_inference_steps=0"],
            ValueError,
            r"^num_inference_steps=0: accepted is a positive integer$",
        ),
        (
            ["model=builtin:toy", "prompt=x", "resolution=100"],
            ValueError,
            r"^resolution=100: accepted are pixel sizes",
        ),
        (
            ["model=builtin:toy", "prompt=x", "resolution=96"],
            ValueError,
            r"^resolution=96 does not fit builtin:toy's U-Net: .*a multiple of 64",
        ),
        (
            ["model=builtin:toy", "prompt=x", "scheduler=lms"],
            ValueError,
            r"scheduler='lms': accepted are \['pndm'",
        ),
    ],
)
def test_cli_errors_name_the_setting(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        generate(cli(*overrides, f"out={tmp_path / 'out'}"))


def run_generate(tmp_path, *overrides):
    return generate(cli("num_inference_steps=2", f"out={tmp_path / 'out'}", *overrides))


def manifest(tmp_path):
    return json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_images_of_a_bksdm_before_generator_device_are_kept_when_drawn_on_the_cpu(tmp_path):
    first = run_generate(tmp_path, "model=builtin:toy", "prompt=a red circle")
    older = {k: v for k, v in manifest(tmp_path).items() if k != "generator_device"}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(older))
    stamp = first[0].stat().st_mtime_ns
    run_generate(tmp_path, "model=builtin:toy", "prompt=a red circle", "generator_device=cpu")
    assert first[0].stat().st_mtime_ns == stamp and manifest(tmp_path)["generator_device"] == "cpu"
    with pytest.raises(ConfigError, match="generator_device='gpu': accepted are auto"):
        run_generate(tmp_path, "model=builtin:toy", "prompt=a red circle", "generator_device=gpu")


def test_a_run_with_other_settings_stops_before_loading_naming_what_differs(tmp_path, monkeypatch):
    first = run_generate(tmp_path, "model=builtin:toy", "prompt=a red circle")
    assert manifest(tmp_path) == {
        "model": "builtin:toy", "seed": 1234, "num_inference_steps": 2, "guidance_scale": 7.5,
        "scheduler": "pndm", "resolution": None, "dtype": "float32", "generator_device": "cpu",
        "prompts": ["a red circle"],
    }  # fmt: skip
    stamp = first[0].stat().st_mtime_ns

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("bksdm.eval.generation.load_pipeline", loaded)
    tiny = ["model=builtin:toy", "prompt=a red circle"]
    for overrides, difference in [
        (["model=builtin:toy", "prompt=a blue square"],
         r"prompts \(image 000000 was made for 'a red circle', this run's prompt 0 is 'a blue square'\)"),
        ([*tiny, "guidance_scale=3"], r"guidance_scale 7\.5 -> 3\.0"),
        ([*tiny, "seed=1", "scheduler=ddim"], r"seed 1234 -> 1; scheduler 'pndm' -> 'ddim'"),
        ([*tiny, "resolution=64"], r"resolution None -> 64"),
        (["model=builtin:miniworld", "prompt=a red circle"], r"model 'builtin:toy' -> 'builtin:miniworld'"),
    ]:  # fmt: skip
        with pytest.raises(ImagesFolderError, match=difference) as error:
            run_generate(tmp_path, *overrides)
        assert "Pick another out= for these settings, or pass overwrite=true" in str(error.value)
    assert first[0].stat().st_mtime_ns == stamp and manifest(tmp_path)["prompts"] == ["a red circle"]

    monkeypatch.undo()
    again = run_generate(tmp_path, "model=builtin:toy", "prompt=a blue square", "overwrite=true")
    assert manifest(tmp_path)["prompts"] == ["a blue square"]
    fresh = run_generate(tmp_path / "fresh", "model=builtin:toy", "prompt=a blue square")
    np.testing.assert_array_equal(pixels(again), pixels(fresh))  # the old image was not kept


def test_images_without_a_manifest_are_refused(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    Image.new("RGB", (128, 128)).save(tmp_path / "out" / "000000.png")  # as an older bksdm left them
    monkeypatch.setattr(
        "bksdm.eval.generation.load_pipeline", lambda *a, **k: pytest.fail("the model was loaded")
    )
    with pytest.raises(
        ImagesFolderError, match=r"holds 1 image\(s\) but no readable manifest\.json .*overwrite=true"
    ):
        run_generate(tmp_path, "model=builtin:toy", "prompt=a red circle")
    (tmp_path / "out" / "manifest.json").write_text("{not json")
    with pytest.raises(ImagesFolderError, match=r"no readable manifest\.json"):
        run_generate(tmp_path, "model=builtin:toy", "prompt=a red circle")


def test_a_longer_list_of_the_same_prompts_keeps_the_shared_images(tmp_path, monkeypatch):
    (tmp_path / "two.txt").write_text("a blue square\na green triangle\n")
    first = run_generate(tmp_path, "model=builtin:toy", "prompt=a red circle")
    stamp = first[0].stat().st_mtime_ns
    from diffusers import StableDiffusionPipeline

    calls, manifests = [], []
    original = StableDiffusionPipeline.__call__

    def record(self, prompts, **kwargs):  # the manifest must be in place before the first image
        calls.append(list(prompts))
        manifests.append(manifest(tmp_path)["prompts"])
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", record)
    longer = run_generate(
        tmp_path, "model=builtin:toy", "prompt=a red circle", f"prompts_file={tmp_path / 'two.txt'}"
    )
    assert calls == [["a blue square"], ["a green triangle"]] and first[0].stat().st_mtime_ns == stamp
    assert manifests[0] == ["a red circle", "a blue square", "a green triangle"]
    assert (tmp_path / "out" / "grid.png").is_file()
    shorter = run_generate(tmp_path, "model=builtin:toy", "prompt=a red circle")
    assert shorter == longer[:1] and len(calls) == 2  # nothing generated
    # the folder still holds the other two images: the manifest keeps saying what made them
    assert manifest(tmp_path)["prompts"] == ["a red circle", "a blue square", "a green triangle"]
    assert not (tmp_path / "out" / "grid.png").exists()  # it showed images this run did not ask for
    (tmp_path / "other.txt").write_text("a white circle\n")
    with pytest.raises(
        ImagesFolderError, match=r"prompts \(3 -> 2 prompts; image 000001 was made for 'a blue"
    ):
        run_generate(
            tmp_path, "model=builtin:toy", "prompt=a red circle", f"prompts_file={tmp_path / 'other.txt'}"
        )


def test_the_model_folder_sampling_defaults_are_used_and_printed(tmp_path, monkeypatch, capsys):
    assert (cli("model=m").guidance_scale, cli("model=m").num_inference_steps) == (None, None)
    from diffusers import StableDiffusionPipeline

    used = []
    original = StableDiffusionPipeline.__call__
    monkeypatch.setattr(
        StableDiffusionPipeline,
        "__call__",
        lambda self, prompts, **kw: (
            used.append((kw["guidance_scale"], kw["num_inference_steps"]))
            or original(self, prompts, **{**kw, "num_inference_steps": 2})
        ),
    )
    generate(cli("model=builtin:miniworld", "prompt=a small blue square", f"out={tmp_path / 'mini'}"))
    generate(cli("model=builtin:toy", "prompt=a small blue square", f"out={tmp_path / 'tiny'}"))
    generate(cli("model=builtin:miniworld", "prompt=x", "guidance_scale=5", f"out={tmp_path / 'set'}"))
    assert used == [(3.0, 25), (7.5, 25), (5.0, 25)]  # the mini world's sampling.json; SD's; as set
    printed = capsys.readouterr().out
    assert "guidance_scale=3.0 (builtin:miniworld's sampling.json)" in printed
    assert (
        "guidance_scale=7.5 (Stable Diffusion's default: no sampling.json found for builtin:toy)" in printed
    )
    assert (
        "guidance_scale=5.0 (as set), num_inference_steps=25 (builtin:miniworld's sampling.json)" in printed
    )
    assert json.loads((tmp_path / "mini" / "manifest.json").read_text())["guidance_scale"] == 3.0
