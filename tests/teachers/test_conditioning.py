"""A teacher's conditioning for a training step (bksdm.teachers.conditioning), equal to what
StableDiffusionPipeline and StableDiffusionXLPipeline compute for the same captions and sizes."""

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from bksdm.teachers.conditioning import added_conditioning, encode_captions, size_ids
from bksdm.teachers.loading import resolve_source


@pytest.fixture(scope="module")
def pipeline():
    return StableDiffusionXLPipeline.from_pretrained(resolve_source("builtin:sdxl-toy"))


def test_the_captions_are_encoded_as_the_pipeline_encodes_them(pipeline):
    captions = ["a small red square in the corner", ""]
    context, pooled = encode_captions(
        [pipeline.tokenizer, pipeline.tokenizer_2], [pipeline.text_encoder, pipeline.text_encoder_2], captions
    )
    expected, _, expected_pooled, _ = pipeline.encode_prompt(captions, do_classifier_free_guidance=False)
    assert context.shape == (2, 77, 48) and pooled.shape == (2, 16)
    assert torch.equal(context, expected) and torch.equal(pooled, expected_pooled)


def test_the_size_ids_are_the_pipelines(pipeline):
    ids = size_ids(
        torch.tensor([[512.0, 768.0], [1024.0, 1024.0]]),
        torch.tensor([[0.0, 64.0], [0.0, 0.0]]),
        (1024, 1024),
    )
    expected = pipeline._get_add_time_ids(
        (512, 768), (0, 64), (1024, 1024), dtype=torch.float32,
        text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim,
    )  # fmt: skip
    assert torch.equal(ids[:1], expected) and ids[1].tolist() == [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]
    added = added_conditioning(torch.zeros(2, 16), ids)
    out = pipeline.unet(torch.zeros(2, 4, 16, 16), 10, torch.zeros(2, 77, 48), added_cond_kwargs=added).sample
    assert out.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match=r"accepted are two \(B, 2\) tensors"):
        size_ids(torch.zeros(2, 2), torch.zeros(3, 2), (1024, 1024))


def test_one_tower_is_sd_v1s_last_hidden_state_and_three_are_refused(pipeline):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(resolve_source("builtin:toy"))
    context, pooled = encode_captions([sd.tokenizer], [sd.text_encoder], ["a red square", ""])
    expected, _ = sd.encode_prompt(["a red square", ""], "cpu", 1, do_classifier_free_guidance=False)
    assert pooled is None and torch.equal(context, expected)
    with pytest.raises(ValueError, match=r"one tokenizer and text encoder .* or two of each .* got 3 and 3"):
        encode_captions([pipeline.tokenizer] * 3, [pipeline.text_encoder] * 3, ["x"])


def test_load_components_loads_sdxls_second_tower_checked(pipeline):
    from bksdm.teachers.loading import ComponentError, load_components

    parts = load_components(
        "builtin:sdxl-toy", parts=["tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"]
    )
    context, pooled = encode_captions(
        [parts.tokenizer, parts.tokenizer_2], [parts.text_encoder, parts.text_encoder_2], ["a blue circle"]
    )
    expected, _, expected_pooled, _ = pipeline.encode_prompt(
        ["a blue circle"], do_classifier_free_guidance=False
    )
    assert torch.equal(context, expected) and torch.equal(pooled, expected_pooled)
    with pytest.raises(ComponentError, match=r"could not load the text_encoder_2 of 'builtin:toy'"):
        load_components("builtin:toy", parts=["text_encoder_2"])
