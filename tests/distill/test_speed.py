"""Speed settings of the step (bksdm.distill.speed) that must not change what it computes."""

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from helpers.module import make_module

from bksdm.distill.speed import SpeedSettings


def test_attention_kinds_give_the_same_step():
    losses = {}
    for kind, processor in (("sdpa", AttnProcessor2_0), ("eager", AttnProcessor)):
        module = make_module(speed=SpeedSettings(attention=kind))
        assert {type(p) for p in module.student.attn_processors.values()} == {processor}
        assert {type(p) for p in module.frozen.unet.attn_processors.values()} == {processor}
        torch.manual_seed(0)
        batch = {"pixel_values": torch.rand(2, 3, 128, 128) * 2 - 1, "caption": ["a red circle", "a cat"]}
        losses[kind] = module.step(batch, module.device)[0]
    torch.testing.assert_close(losses["sdpa"], losses["eager"], rtol=1e-5, atol=1e-6)
