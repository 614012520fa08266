"""The reproducible, resumable generation that python -m bksdm.generate and evaluation share
(bksdm.eval.generation): batching, resuming, rank shares, samplers, manifests."""

import numpy as np
import pytest
from helpers.images import pixels

from bksdm.eval.generation import (
    SCHEDULERS,
    generate_images,
    images_manifest,
    load_pipeline,
    resolve_generator_device,
    switch_scheduler,
)

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a white circle on black", "a yellow square"]


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline("builtin:toy")


def test_batching_does_not_change_the_images(pipeline, tmp_path):
    one = pixels(
        generate_images(
            pipeline, PROMPTS, tmp_path / "b1", num_inference_steps=3, batch_size=1, progress=False
        )
    )
    three = pixels(
        generate_images(
            pipeline, PROMPTS, tmp_path / "b3", num_inference_steps=3, batch_size=3, progress=False
        )
    )
    assert one.shape == (5, 128, 128, 3)
    assert np.abs(one - three).max() <= 1  # the same latents; batched kernels may round one level apart
    assert np.abs(one[0] - one[3]).mean() > 1  # different prompts and latents give different images


def test_an_interrupted_run_resumes_without_regenerating(pipeline, tmp_path, monkeypatch):
    reference = pixels(
        generate_images(
            pipeline, PROMPTS, tmp_path / "full", num_inference_steps=3, batch_size=2, progress=False
        )
    )
    calls, crashed = [], []
    original = type(pipeline).__call__

    def crash_on_second_batch(self, prompts, **kwargs):
        calls.append(list(prompts))
        if len(calls) == 2 and not crashed:
            crashed.append(True)
            raise RuntimeError("killed")
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(type(pipeline), "__call__", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        generate_images(
            pipeline, PROMPTS, tmp_path / "resumed", num_inference_steps=3, batch_size=2, progress=False
        )
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["000000.png", "000001.png"]
    stamp = (tmp_path / "resumed" / "000000.png").stat().st_mtime_ns
    calls.clear()
    paths = generate_images(
        pipeline, PROMPTS, tmp_path / "resumed", num_inference_steps=3, batch_size=2, progress=False
    )
    assert calls == [PROMPTS[2:4], PROMPTS[4:]]  # only the missing images were generated
    assert (tmp_path / "resumed" / "000000.png").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(pixels(paths), reference)


def test_two_ranks_make_disjoint_shares_that_equal_one_full_run(pipeline, tmp_path):
    full = pixels(
        generate_images(pipeline, PROMPTS, tmp_path / "full", num_inference_steps=2, progress=False)
    )
    shares = [
        generate_images(
            pipeline,
            PROMPTS,
            tmp_path / "split",
            num_inference_steps=2,
            progress=False,
            indices=range(rank, 5, 2),
        )
        for rank in (0, 1)
    ]
    assert [p.name for p in shares[0]] == ["000000.png", "000002.png", "000004.png"]
    assert [p.name for p in shares[1]] == ["000001.png", "000003.png"]
    np.testing.assert_array_equal(pixels(sorted((tmp_path / "split").glob("*.png"))), full)


def test_the_paper_sampler_by_default_others_on_request(pipeline):
    assert type(pipeline.scheduler).__name__ == "PNDMScheduler" and pipeline.scheduler.config.skip_prk_steps
    ddim = load_pipeline("builtin:toy", scheduler="ddim").scheduler
    assert type(ddim).__name__ == "DDIMScheduler"
    assert ddim.config.beta_end == pipeline.scheduler.config.beta_end  # the pipeline's own noise schedule


@pytest.mark.parametrize("source", ["builtin:toy", "builtin:miniworld"])
def test_every_sampler_gets_sd_settings_the_stored_config_leaves_out(source):
    import inspect

    for choice, (name, _) in SCHEDULERS.items():
        scheduler = load_pipeline(source, scheduler=choice).scheduler
        takes = inspect.signature(type(scheduler).__init__).parameters
        assert type(scheduler).__name__ == name
        for key, value in {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}.items():
            if key in takes:
                assert scheduler.config[key] == value, (choice, key)


def test_a_pndm_config_without_clip_sample_does_not_make_ddim_clip():
    from diffusers import PNDMScheduler

    from bksdm.teachers.builtin import SD_SCHEDULER_CONFIG

    stored = PNDMScheduler(**{k: v for k, v in SD_SCHEDULER_CONFIG.items() if k != "clip_sample"})
    assert switch_scheduler(stored, "ddim").config.clip_sample is False
    assert switch_scheduler(stored, "pndm") is stored  # the stored sampler keeps its settings


def test_ddim_draws_the_mini_world_teacher_as_pndm_does():
    import torch

    images = {}
    for choice in ("pndm", "ddim", "euler"):
        pipeline = load_pipeline("builtin:miniworld", scheduler=choice)
        pipeline.set_progress_bar_config(disable=True)
        images[choice] = pipeline(
            ["a large red circle on the left"], num_inference_steps=10, guidance_scale=3.0, output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip
    # with DDIM's default clip_sample=True its image was 10x further from PNDM's than Euler's is
    assert np.abs(images["ddim"] - images["pndm"]).mean() < 0.03
    assert np.abs(images["euler"] - images["pndm"]).mean() < 0.03


def test_a_model_folder_is_one_model_however_its_path_is_written(tmp_path, monkeypatch):
    (tmp_path / "run" / "student").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "run")
    settings = {
        "seed": 1,
        "num_inference_steps": 2,
        "guidance_scale": 3,
        "scheduler": None,
        "resolution": None,
        "generator_device": "cpu",
    }
    manifests = [images_manifest(m, ["x"], dtype="float32", **settings) for m in ("student", "./student/")]
    assert manifests[0] == manifests[1] and manifests[0]["model"] == str(tmp_path / "run" / "student")
    assert images_manifest("org/model", ["x"], dtype="float32", **settings)["model"] == "org/model"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_images_are_those_of_the_papers_script(tmp_path, dtype):
    """BK-SDM's generation script hands one seeded generator to the pipeline, one prompt per call: the
    same images whatever the pipeline's dtype (the latents are drawn in it, as the pipeline draws them: on
    a CPU bf16 and fp32 draws agree, on CUDA they need not; batching is tested above)."""
    import torch

    pipeline = load_pipeline("builtin:toy", dtype)
    generator = torch.Generator("cpu").manual_seed(1234)
    paper = [
        pipeline(p, num_inference_steps=2, generator=generator, output_type="np").images[0]
        for p in PROMPTS[:3]
    ]
    ours = pixels(
        generate_images(
            pipeline, PROMPTS[:3], tmp_path, seed=1234, num_inference_steps=2, batch_size=1, progress=False
        )
    )
    assert np.array_equal(ours, (np.clip(np.stack(paper), 0, 1) * 255).round())


def test_the_generator_device_follows_the_model_unless_set():
    assert resolve_generator_device("auto", "cpu") == "cpu"
    assert resolve_generator_device("auto", "cuda:1") == "cuda"
    assert resolve_generator_device("cpu", "cuda") == "cpu"
    with pytest.raises(ValueError, match=r"generator_device='gpu': accepted are auto .* cpu .* cuda"):
        resolve_generator_device("gpu", "cpu")
    with pytest.raises(ValueError, match=r"generator_device=cuda .* runs on 'cpu'"):
        resolve_generator_device("cuda", "cpu")
