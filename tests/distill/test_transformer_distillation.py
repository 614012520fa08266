"""Distillation from transformer teachers (builtin:flux-toy, sd3-toy, pixart-toy: the real depths at narrow
widths): captions are read and denoisers called as the families' pipelines do, the flow-matching objective is
the scheduler's, and a depth-pruned student of each family trains through the app, exports and samples in plain
diffusers."""

import functools
import json

import diffusers
import numpy as np
import pytest
import torch
import yaml
from helpers.paths import CONF
from helpers.train_config import FAST, config, run_cli
from helpers.trainer import cpu_trainer
from hydra import compose, initialize_config_dir
from PIL import Image

from bksdm import train as train_app
from bksdm.arch.depth import depth_student_config
from bksdm.cli.train_setup import check_config
from bksdm.data.datamodule import SyntheticDataModule
from bksdm.distill.flow_matching import flow_matching_noise
from bksdm.distill.losses import DistillLoss
from bksdm.distill.module import DistillModule
from bksdm.distill.randomness import SampleRandomness
from bksdm.distill.taps import FeatureTaps, resolve_tap_pairs
from bksdm.teachers.conditioning import Conditioning
from bksdm.teachers.denoiser_call import denoise
from bksdm.teachers.loading import resolve_source
from bksdm.teachers.pipeline import call_settings

# teacher preset, its arch, its source, its pipeline class
FAMILIES = {
    "flux": ("flux_toy", "flux_mini", "builtin:flux-toy", diffusers.FluxPipeline),
    "sd3": ("sd3_toy", "sd35_hprune", "builtin:sd3-toy", diffusers.StableDiffusion3Pipeline),
    "pixart": ("pixart_toy", "pixart_half", "builtin:pixart-toy", diffusers.PixArtSigmaPipeline),
}
CAPTIONS = ["a red cube on top of a blue sphere", ""]


def arch(name: str) -> dict:
    return yaml.safe_load((CONF / "arch" / f"{name}.yaml").read_text())


def module_for(family: str, **kwargs) -> DistillModule:
    _, arch_name, source, _ = FAMILIES[family]
    spec = arch(arch_name)
    torch.manual_seed(0)
    return DistillModule(
        teacher_source=source, removal=spec["removal"], taps=spec["taps"], loss=DistillLoss(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), student_name=arch_name,
        **{"frozen_dtype": "float32", "ema_decay": None, **kwargs},
    )  # fmt: skip


@functools.cache
def pipeline(family: str):
    _, _, source, cls = FAMILIES[family]
    return cls.from_pretrained(resolve_source(source))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_captions_are_read_as_the_familys_pipeline_reads_them(family):
    torch.set_num_threads(1)
    module = module_for(family)
    with module.frozen.compute():
        ours = module.frozen.encode_text(CAPTIONS)
    pipe = pipeline(family)
    # equal up to the last bits (T5's kernels round differently with and without autograd)
    close = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        if family == "flux":
            context, pooled, _ = pipe.encode_prompt(CAPTIONS, None, max_sequence_length=32)
            close(ours.context, context), close(ours.pooled, pooled)
        elif family == "sd3":
            context, _, pooled, _ = pipe.encode_prompt(
                CAPTIONS, None, None, do_classifier_free_guidance=False, max_sequence_length=32
            )
            close(ours.context, context), close(ours.pooled, pooled)
            assert ours.context.shape[1] == 77 + 32  # CLIP's tokens, then T5's
        else:
            context, mask, _, _ = pipe.encode_prompt(
                CAPTIONS, do_classifier_free_guidance=False, clean_caption=False, max_sequence_length=32
            )
            close(ours.context, context)
            assert torch.equal(ours.mask, mask)


def test_flux_is_called_on_packed_latents_as_its_pipeline_calls_it():
    pipe = pipeline("flux")
    torch.manual_seed(0)
    latents, context, pooled = torch.randn(2, 16, 8, 8), torch.randn(2, 32, 32), torch.randn(2, 16)
    timesteps, guidance = torch.tensor([900.0, 100.0]), torch.full((2,), 3.5)
    ours = denoise(
        pipe.transformer,
        "FluxPipeline",
        latents,
        timesteps,
        Conditioning(context, pooled=pooled, guidance=guidance),
    )
    with torch.no_grad():
        packed = pipe._pack_latents(latents, 2, 16, 8, 8)
        out = pipe.transformer(
            hidden_states=packed, timestep=timesteps / 1000, guidance=guidance, pooled_projections=pooled,
            encoder_hidden_states=context, txt_ids=torch.zeros(32, 3),
            img_ids=pipe._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32),
        ).sample  # fmt: skip
        theirs = pipe._unpack_latents(out, 64, 64, pipe.vae_scale_factor)
    assert torch.equal(ours, theirs)


def test_flow_matching_noises_on_the_straight_path_with_the_schedulers_shifted_sigmas():
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's
    latents = torch.randn(4, 16, 8, 8)
    noisy, timesteps, target = flow_matching_noise(scheduler, latents, SampleRandomness([1, 2, 3, 4], "cpu"))
    sigmas = timesteps / 1000
    assert torch.all((sigmas > 0) & (sigmas <= 1))
    assert all(torch.isclose(scheduler.sigmas, s).any() for s in sigmas)  # values of its (shifted) table
    noise = target + latents
    sigma = sigmas.view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - sigma) * latents + sigma * noise, atol=1e-6, rtol=1e-6)
    # each sample's draws are its own: a split batch meets the same noise and timesteps
    half, half_t, _ = flow_matching_noise(scheduler, latents[2:], SampleRandomness([3, 4], "cpu"))
    assert torch.equal(half, noisy[2:]) and torch.equal(half_t, timesteps[2:])
    # the shift pushes SD3's timesteps toward noise: the median sigma of many draws is above 0.5
    many = flow_matching_noise(scheduler, torch.zeros(512, 1, 1, 1), SampleRandomness(None, "cpu"))[1]
    assert (many / 1000).median() > 0.6


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_depth_pruned_student_of_each_family_trains(family, tmp_path):
    torch.set_num_threads(1)
    module = module_for(family, gradient_checkpointing=True)  # the taps record the forward, not its recompute
    before = {k: v.clone() for k, v in module.student.state_dict().items()}
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=SyntheticDataModule(num_samples=4, resolution=64, batch_size=2))
    assert trainer.global_step == 2
    terms = module.step_terms
    assert all(torch.isfinite(v) for v in terms.values()) and terms["loss_kd_feat"] > 0
    changed = [k for k, v in module.student.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("transformer_blocks.") for k in changed)


def test_transformer_teachers_are_frozen_in_bf16_on_a_gpu_too():
    from bksdm.teachers.frozen import resolve_frozen_dtype

    assert resolve_frozen_dtype("auto", "cuda", transformer=True) == "bfloat16"
    assert resolve_frozen_dtype("auto", "cuda") == "float16"  # U-Nets: the paper's fp16
    assert resolve_frozen_dtype("float16", "cuda", transformer=True) == "float16"  # as asked


def test_pixart_students_learn_the_noise_half_from_the_task_and_all_of_it_from_the_teacher():
    module = module_for("pixart")
    loss = DistillLoss(w_task=1, w_out=0, w_feat=0)
    prediction, target = torch.zeros(1, 8, 2, 2), torch.ones(1, 4, 2, 2)
    assert loss(prediction, target)[1]["loss_task"] == 1.0  # the variance half does not meet the target
    assert module.frozen.denoiser.config.out_channels == 8 and module.student.config.out_channels == 8


def test_flux_minis_tap_weights_come_from_the_arch_config():
    from bksdm.teachers.loading import teacher_denoiser_config

    teacher = teacher_denoiser_config("builtin:flux-toy")
    pairs = {
        p.student: p
        for p in resolve_tap_pairs(arch("flux_mini")["taps"], teacher, arch("flux_mini")["removal"])
    }
    assert len(pairs) == 2 * 5 + 10  # both streams of 5 double blocks, the image tokens of 10 single blocks
    assert pairs["transformer_blocks.4[1]"].teacher == "transformer_blocks.18[1]"
    assert pairs["transformer_blocks.4[0]"].weight == pairs["transformer_blocks.4[1]"].weight == 0.1
    assert pairs["transformer_blocks.3[1]"].weight == 1.0
    assert {pairs[f"single_transformer_blocks.{i}[1]"].weight for i in range(10)} == {0.05}
    with pytest.raises(ValueError, match=r"accepted keys are rule \(a rule's name\) and weights"):
        resolve_tap_pairs({"rule": "auto", "weight": {}}, teacher, {})
    with pytest.raises(ValueError, match=r"tap weight -1: accepted are numbers >= 0"):
        resolve_tap_pairs({"weights": {"transformer_blocks": -1}}, teacher, {})
    with pytest.raises(ValueError, match=r"taps='koala': accepted are a rule, one of \['auto'\]"):
        resolve_tap_pairs("koala", teacher, {})


def test_a_tap_of_a_stream_the_module_does_not_output_is_named():
    model = pipeline("pixart").transformer
    taps = FeatureTaps(model, ["transformer_blocks.0[1]"], "teacher")
    sample = torch.randn(1, 4, 8, 8)
    with (
        pytest.raises(
            IndexError, match=r"teacher tap 'transformer_blocks.0\[1\]': the module's output has no"
        ),
        taps.recording(),
    ):
        denoise(model, "PixArtSigmaPipeline", sample, torch.tensor([10]), Conditioning(
            torch.randn(1, 4, 32), mask=torch.ones(1, 4, dtype=torch.long)))  # fmt: skip
    taps.remove()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["teacher=pixart_toy", "arch=flux_mini"], r"arch=flux_mini does not fit teacher=pixart_toy: .*has no stack"),
        (["teacher=sd3_toy", "arch=sd35_hprune", "data.resolution=72"], r"data.resolution=72 cannot go through teacher=sd3_toy's transformer: accepted are multiples of 16 pixels up to 256"),
        (["teacher=sd3_toy", "arch=sd35_hprune", "arch.removal.transformer_blocks={remove: [[20, 23]]}"], r"keeps the teacher's last block \(23\) last"),
    ],
)  # fmt: skip
def test_a_transformer_config_that_cannot_work_stops_before_loading(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        check_config(config(*FAST, *overrides, output_dir=tmp_path))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_transformer_student_trains_through_the_app_and_samples_in_plain_diffusers(family, tmp_path):
    teacher, arch_name, _, cls = FAMILIES[family]
    cfg = config(f"teacher={teacher}", f"arch={arch_name}", *FAST, "data.resolution=64", output_dir=tmp_path)
    module = train_app.train(cfg)
    assert module.student_name == arch_name and module.is_transformer
    loaded = cls.from_pretrained(tmp_path / "student")
    assert loaded.transformer.config.num_layers == module.student.config.num_layers
    image = loaded(
        "a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0), **call_settings(loaded),
    ).images[0]  # fmt: skip
    assert image.shape == (64, 64, 3)
    assert any((tmp_path / "samples").glob("*.png"))
    # python -m bksdm.generate draws it as the pipeline does when handed the seeded generator at batch 1
    from bksdm.generate import generate

    overrides = [
        f"model={tmp_path / 'student'}",
        "prompt='a red circle'",
        "num_inference_steps=2",
        "resolution=64",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        if family != "pixart":  # flow-matching: the paper's PNDM does not apply
            with pytest.raises(ValueError, match=rf"is a flow-matching {cls.__name__}: set scheduler=null"):
                generate(compose("generate", overrides=[*overrides, f"out={tmp_path / 'refused'}"]))
        settings = compose("generate", overrides=[*overrides, "scheduler=null", f"out={tmp_path / 'images'}"])
    (path,) = generate(settings)
    ours = np.asarray(Image.open(path), dtype=np.float32)
    theirs = loaded(
        "a red circle", num_inference_steps=2, height=64, width=64, output_type="np", guidance_scale=loaded_guidance(tmp_path),
        generator=torch.Generator().manual_seed(settings.seed), **call_settings(loaded),
    ).images[0]  # fmt: skip
    assert np.abs(ours - np.round(np.clip(theirs, 0, 1) * 255)).max() <= 1


def loaded_guidance(run) -> float:
    return json.loads((run / "student" / "sampling.json").read_text())["guidance_scale"]


def test_fsdp_units_are_a_transformer_students_blocks_and_a_unets_stay_its_blocks():
    from bksdm.arch.depth import empty_transformer
    from bksdm.arch.student import empty_unet
    from bksdm.teachers.builtin import TOY_UNET_CONFIG
    from bksdm.teachers.loading import teacher_denoiser_config
    from bksdm.training.fsdp import is_fsdp_unit

    for family, blocks in (("flux", 5 + 10), ("sd3", 18), ("pixart", 14)):
        _, arch_name, source, _ = FAMILIES[family]
        config = depth_student_config(teacher_denoiser_config(source), arch(arch_name)["removal"])
        units = [name for name, m in empty_transformer(config).named_modules() if is_fsdp_unit(m)]
        assert (
            units[0] == "" and len(units) == 1 + blocks and all("transformer_blocks." in u for u in units[1:])
        )
    unet_units = [name for name, m in empty_unet(TOY_UNET_CONFIG).named_modules() if is_fsdp_unit(m)]
    assert unet_units == [
        "",
        *(f"down_blocks.{i}" for i in range(4)),
        *(f"up_blocks.{i}" for i in range(4)),
        "mid_block",
    ]


def test_a_flux_student_trains_under_fsdp_and_exports_whole(tmp_path):
    # in its own process: Lightning's FSDP leaves a process group behind
    done = run_cli("teacher=flux_toy", "arch=flux_mini", *FAST, "data.resolution=64", "trainer=fsdp",
                   "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32", "callbacks.sample_grid=null",
                   f"paths.output_dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = diffusers.FluxTransformer2DModel.from_pretrained(tmp_path / "student", subfolder="transformer")
    assert (loaded.config.num_layers, loaded.config.num_single_layers) == (5, 10)
    assert all(torch.isfinite(p).all() for p in loaded.parameters())  # gathered whole from the shards


def teacher_prediction(module: DistillModule) -> torch.Tensor:
    """The teacher's prediction (fp32) for a fixed batch of FLUX-shaped latents, noise and timesteps."""
    torch.manual_seed(0)
    batch = {
        "latent_mean": torch.randn(2, 16, 8, 8),
        "latent_std": torch.zeros(2, 16, 8, 8),
        "caption": CAPTIONS,
    }
    with torch.no_grad():
        latents, conditioning = module.step.encode(batch, module.device)
        noisy, timesteps, _ = module.step.add_noise(latents)
        return module.step.teacher_forward(noisy, timesteps, conditioning)[0].float()


def test_a_teacher_stored_in_fp8_predicts_as_in_bf16_to_fp8s_precision():
    torch.set_num_threads(1)
    bf16 = teacher_prediction(module_for("flux", frozen_dtype="bfloat16"))
    module = module_for("flux", frozen_dtype="bfloat16", frozen_storage_dtype="float8_e4m3fn")
    weights = {p.dtype for p in module.frozen.denoiser.parameters()}
    assert weights == {torch.float8_e4m3fn, torch.bfloat16}  # norms and modulations stay bf16
    fp8 = teacher_prediction(module)
    relative = ((fp8 - bf16) ** 2).mean() / (bf16**2).mean()
    assert 0 < relative < 1e-2
    with pytest.raises(
        ValueError, match=r"frozen_storage_dtype='int4': accepted are \[None, 'float8_e4m3fn', "
    ):
        module_for("flux", frozen_storage_dtype="int4")


def test_a_student_learns_from_an_fp8_teacher_through_the_app(tmp_path):
    cfg = config("teacher=flux_toy", "arch=flux_mini", *FAST, "data.resolution=64",
                 "distill.frozen_storage_dtype=float8_e4m3fn", output_dir=tmp_path)  # fmt: skip
    module = train_app.train(cfg)
    assert torch.float8_e4m3fn in {p.dtype for p in module.frozen.denoiser.parameters()}
    assert {p.dtype for p in module.student.parameters()} == {torch.float32}
    assert all(torch.isfinite(v) for v in module.step_terms.values())
    assert any((tmp_path / "samples").glob("*.png"))  # the teacher's column drawn from its FP8 weights
