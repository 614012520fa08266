"""Feature taps: the paper's pairs, shapes, exactly-once recording, wrappers, removal."""

import pytest
import torch
from helpers.paths import CONF
from omegaconf import OmegaConf

from bksdm.arch import build_student, student_config
from bksdm.distill.taps import FeatureTaps, TapPair, check_tap_pairs, paper_tap_pairs, parse_tap_pairs

STAGE_SHAPES = {  # bk-sdm-facts.md section 4, at a 64x64 latent
    "down_blocks.0": (320, 32, 32),
    "down_blocks.1": (640, 16, 16),
    "down_blocks.2": (1280, 8, 8),
    "down_blocks.3": (1280, 8, 8),
    "up_blocks.0": (1280, 16, 16),
    "up_blocks.1": (1280, 32, 32),
    "up_blocks.2": (640, 64, 64),
    "up_blocks.3": (320, 64, 64),
}


@pytest.mark.parametrize("variant", ["base", "small", "tiny"])
def test_shipped_taps_are_the_paper_rule(sd14_config, variant):
    declared = parse_tap_pairs(OmegaConf.to_container(OmegaConf.load(CONF / "arch" / f"{variant}.yaml").taps))
    assert declared == paper_tap_pairs(sd14_config, variant)


@pytest.mark.parametrize("variant", ["base", "small"])
def test_base_and_small_tap_every_stage_at_the_papers_shapes(sd14_config, variant):
    pairs = paper_tap_pairs(sd14_config, variant)
    shapes = check_tap_pairs(sd14_config, student_config(sd14_config, variant), pairs, 64)
    assert shapes == STAGE_SHAPES


def test_tiny_taps_six_pairs_with_the_inner_one_on_proj_out(sd14_config):
    pairs = paper_tap_pairs(sd14_config, "tiny")
    assert pairs[2] == TapPair("down_blocks.2.attentions.1.proj_out", "down_blocks.2.attentions.0.proj_out")
    assert [(p.teacher, p.student) for p in pairs[3:]] == [
        ("up_blocks.1", "up_blocks.0"),
        ("up_blocks.2", "up_blocks.1"),
        ("up_blocks.3", "up_blocks.2"),
    ]
    shapes = check_tap_pairs(sd14_config, student_config(sd14_config, "tiny"), pairs, 64)
    assert shapes == {
        "down_blocks.0": (320, 32, 32),
        "down_blocks.1": (640, 16, 16),
        "down_blocks.2.attentions.0.proj_out": (1280, 16, 16),
        "up_blocks.0": (1280, 32, 32),
        "up_blocks.1": (640, 64, 64),
        "up_blocks.2": (320, 64, 64),
    }


def test_bad_tap_paths_and_shapes_name_both_sides(sd14_config):
    student = student_config(sd14_config, "tiny")
    with pytest.raises(KeyError, match=r"student has no module 'down_blocks\.3'"):
        check_tap_pairs(sd14_config, student, [TapPair("down_blocks.3", "down_blocks.3")], 64)
    with pytest.raises(
        KeyError, match=r"teacher has no module 'down_block\.0'.*close names: \['down_blocks\.0'"
    ):
        check_tap_pairs(sd14_config, student, [TapPair("down_block.0", "down_blocks.0")], 64)
    with pytest.raises(
        ValueError,
        match=r"teacher 'down_blocks\.2' \(1, 1280, 8, 8\) and student 'down_blocks\.2' \(1, 1280, 16, 16\)",
    ):
        check_tap_pairs(sd14_config, student, [TapPair("down_blocks.2", "down_blocks.2")], 64)
    with pytest.raises(ValueError, match=r"tap pair 'down_blocks\.0' is not accepted"):
        parse_tap_pairs(["down_blocks.0"])


def _inputs(batch=2):
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, 4, 16, 16, generator=generator),
        torch.tensor([3, 700][:batch]),
        torch.randn(batch, 77, 32, generator=generator),
    )


def _feature_grads(student, taps, path):
    sample, t, context = _inputs()
    student.zero_grad()
    with taps.recording() as features:
        student(sample, t, context)
    features[path].pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


def test_taps_record_once_even_when_checkpointing_recomputes_the_forward(toy_teacher):
    path = "down_blocks.1.resnets.0"  # diffusers checkpoints each resnet and transformer block
    student = build_student(toy_teacher.unet, "tiny")
    taps = FeatureTaps(student, [path, "up_blocks.0"], "student")
    plain_grads = _feature_grads(student, taps, path)

    student.enable_gradient_checkpointing()
    fired = []
    student.get_submodule(path).register_forward_hook(lambda *_: fired.append(1))
    # without early stop the recomputation runs the whole module again, output hooks included
    with torch.utils.checkpoint.set_checkpoint_early_stop(False):
        checkpointed_grads = _feature_grads(student, taps, path)
    assert len(fired) == 2  # the forward and its recomputation during backward...
    assert taps.calls == {path: 1, "up_blocks.0": 1}  # ...but the tap recorded once
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_taps_see_through_compile_and_ddp_wrappers(toy_teacher, tmp_path):
    student = build_student(toy_teacher.unet, "small")
    compiled = torch.compile(student, backend="eager")
    taps = FeatureTaps(compiled, ["down_blocks.1", "up_blocks.3"], "student")
    assert taps.model is student
    with taps.recording() as features:
        compiled(*_inputs())
    assert features["up_blocks.3"].shape == (2, 32, 16, 16)
    taps.remove()

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(student)
        taps = FeatureTaps(wrapped, ["down_blocks.1"], "student")  # not 'module.down_blocks.1'
        with taps.recording() as features:
            wrapped(*_inputs())
        assert taps.calls == {"down_blocks.1": 1}
    finally:
        dist.destroy_process_group()


def test_a_tap_that_does_not_fire_is_an_error_and_removed_taps_stay_silent(toy_teacher):
    student = build_student(toy_teacher.unet, "small")
    taps = FeatureTaps(student, ["down_blocks.0"], "student")
    with (
        pytest.raises(
            RuntimeError,
            match=r"student taps must fire exactly once per forward; fired \{'down_blocks\.0': 0\}",
        ),
        taps.recording(),
    ):
        pass
    taps.remove()
    with pytest.raises(RuntimeError, match="fired"), taps.recording() as features:
        student(*_inputs())
    assert features == {}
