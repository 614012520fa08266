"""python -m bksdm.generate and the reproducible, resumable generation it shares with evaluation."""

import numpy as np
import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from PIL import Image

from bksdm.eval.generation import generate_images, load_pipeline
from bksdm.generate import generate

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a white circle on black", "a yellow square"]


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline("builtin:tiny")


def pixels(paths):
    return np.stack([np.asarray(Image.open(p)) for p in paths]).astype(int)


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


def cli(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def test_cli_prompts_file_and_grid(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue square\n")
    paths = generate(cli("model=builtin:tiny", "prompt=a green triangle", f"prompts_file={tmp_path / 'prompts.txt'}",
                         "num_inference_steps=2", f"out={tmp_path / 'out'}"))  # fmt: skip
    assert len(paths) == 3
    assert Image.open(tmp_path / "out" / "grid.png").size == (256, 256)  # 2 x 2 grid of 128 px images


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["model=builtin:tiny"], ValueError, "no prompt"),
        (
            ["model=builtin:tiny", "prompts_file=/nowhere.txt"],
            FileNotFoundError,
            r"prompts_file='/nowhere\.txt' does not exist",
        ),
        (["model=/nowhere", "prompt=x"], FileNotFoundError, r"model='/nowhere' could not be loaded"),
        (["model=builtin:tiny", "prompt=x", "dtype=fp8"], ValueError, r"dtype='fp8'"),
        (
            ["model=builtin:tiny", "prompt=x", "scheduler=lms"],
            ValueError,
            r"scheduler='lms': accepted are \['pndm'",
        ),
    ],
)
def test_cli_errors_name_the_setting(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        generate(cli(*overrides, f"out={tmp_path / 'out'}"))


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
    ddim = load_pipeline("builtin:tiny", scheduler="ddim").scheduler
    assert type(ddim).__name__ == "DDIMScheduler"
    assert ddim.config.beta_end == pipeline.scheduler.config.beta_end  # the pipeline's own noise schedule
