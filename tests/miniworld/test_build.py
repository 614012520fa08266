"""The mini-world build as issue 22 needs it: the relational world (world=scenes) builds, a killed build
resumes to the same bits (as does one whose finished stages were carried to another machine), and its
work folder refuses settings its begun stages were not started with."""

import json
import shutil

import pytest
import torch
from helpers.miniworld import scenes_config
from safetensors.torch import load_file

PARTS = (
    "teacher/unet/diffusion_pytorch_model.safetensors",
    "teacher/vae/diffusion_pytorch_model.safetensors",
    "classifier.safetensors",
)


class Killed(Exception):
    pass


# 32-true: on a CPU without avx512_bf16 or AMX the default bf16 autocast is emulated, and made this test's
# 42 U-Net steps 4x slower (test_scenes_students.py builds in the default precision); 32 px VAE windows
SMALL = ("teacher.precision=32-true", "vae.crop=32")


def test_a_killed_scenes_build_resumes_to_the_bits_of_an_unstopped_one(tmp_path, monkeypatch):
    from bksdm.miniworld.assets import load_classifier
    from bksdm.miniworld.build import build
    from bksdm.miniworld.scenes import LABEL_SLOTS
    from bksdm.miniworld.training import ClassifierTraining, VAETraining
    from bksdm.teachers.loading import load_components

    # 12 VAE steps are 3 epochs of the 64-item pool: the resumed one replays the epochs' shuffles
    unstopped = build(scenes_config(tmp_path / "a", *SMALL, "vae.steps=12", "teacher.steps=14"))
    # a run killed in the VAE's step 7 (its checkpoint at step 5), then one stopped at U-Net step 9 (its
    # checkpoint at step 5), then the same command with more steps
    vae_step = VAETraining.training_step

    def killed_at_step_7(self, batch, batch_idx):
        if self.global_step == 7:
            raise Killed
        return vae_step(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(VAETraining, "training_step", killed_at_step_7)
        with pytest.raises(Killed):
            build(scenes_config(tmp_path / "b", *SMALL, "vae.steps=12", "teacher.steps=9"))
    assert torch.load(tmp_path / "b/work/vae/last.ckpt", weights_only=False)["global_step"] == 5
    build(scenes_config(tmp_path / "b", *SMALL, "vae.steps=12", "teacher.steps=9"))
    assert torch.load(tmp_path / "b/work/teacher/last.ckpt", weights_only=False)["global_step"] == 5
    resumed = build(scenes_config(tmp_path / "b", *SMALL, "vae.steps=12", "teacher.steps=14"))
    assert_same_bits(unstopped, resumed)
    for stage, steps in (("vae", 12), ("teacher", 14)):
        rows = [
            line.split(",")[1] for line in (tmp_path / f"b/work/{stage}/metrics.csv").read_text().split()[1:]
        ]
        assert rows == [str(step) for step in range(steps)], (
            stage
        )  # steps before the checkpoint kept, none twice

    report = json.loads((resumed / "report.json").read_text())
    assert report["world"] == "scenes" and report["mid_block_zeroed_change"] > 0
    assert report["innermost_stage_zeroed_change"] > 0
    assert {"teacher_accuracy", "teacher_accuracy_held_out_split", "classifier_held_out",
            "classifier_held_out_split"} <= set(report)  # fmt: skip
    assert set(report["teacher_accuracy"]) <= {*LABEL_SLOTS, "all"}
    parts = load_components(str(resumed / "teacher"))
    # conf/world/scenes.yaml's 4x-down VAE, and a U-Net without transformers in its outermost stage
    assert parts.unet.config.sample_size == 32 and parts.vae.config.sample_size == 128
    assert parts.unet.config.down_block_types[0] == "DownBlock2D"
    assert list(parts.unet.config.attention_head_dim) == [1, 1, 4, 8]  # conf/world/scenes.yaml's heads
    assert parts.noise_scheduler.config.prediction_type == "v_prediction"  # and its SD-v2 target
    assert set(load_classifier(resumed)(torch.zeros(1, 3, 128, 128))) == set(LABEL_SLOTS)

    # the finished VAE and classifier carried to a fresh machine as docs/miniworld.md says (the work folder
    # without vae/latents.pt, the checkpoints and the U-Net): only the U-Net trains, to the same bits
    shutil.copytree(
        tmp_path / "a/work",
        tmp_path / "c/work",
        ignore=shutil.ignore_patterns("latents.pt", "last.ckpt", "teacher"),
    )

    def trains(self, batch, batch_idx):
        raise AssertionError(f"{type(self).__name__} trained again")

    monkeypatch.setattr(VAETraining, "training_step", trains)
    monkeypatch.setattr(ClassifierTraining, "training_step", trains)
    assert_same_bits(
        unstopped, build(scenes_config(tmp_path / "c", *SMALL, "vae.steps=12", "teacher.steps=14"))
    )
    assert (tmp_path / "c/work/vae/latents.pt").is_file()  # encoded again, for the next rerun


def assert_same_bits(world, other):
    for part in PARTS:
        a, b = load_file(world / part), load_file(other / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_the_work_folder_refuses_other_settings_and_fewer_steps_naming_them(tmp_path):
    from bksdm.miniworld.build import WorkFolder

    work = WorkFolder(tmp_path, scenes_config(tmp_path))
    work.finish("teacher", {"teacher_parameters": 1}, steps=20)
    again = WorkFolder(tmp_path, scenes_config(tmp_path, "teacher.steps=30", "accelerator=cpu"))
    with pytest.raises(ValueError, match=r"teacher\.steps=10: .* has trained 20 steps already"):
        again.finished("teacher", steps=10)
    assert again.finished("teacher", steps=20) == {"teacher_parameters": 1}
    with pytest.raises(
        ValueError, match=r"other settings \(teacher\.lr: 0\.001 -> 0\.002; vae\.steps: 2 -> 3\)"
    ):
        WorkFolder(tmp_path, scenes_config(tmp_path, "teacher.lr=2e-3", "vae.steps=3"))
    assert json.loads((tmp_path / "settings.json").read_text())["teacher.lr"] == 0.001  # nothing overwritten
    # a folder begun before a setting existed: the message says how to resume it
    saved = json.loads((tmp_path / "settings.json").read_text())
    del saved["teacher.precision"]
    (tmp_path / "settings.json").write_text(json.dumps(saved))
    with pytest.raises(
        ValueError, match=r"newer than the folder \(teacher\.precision\): if it was built as their defaults"
    ):
        WorkFolder(tmp_path, scenes_config(tmp_path))


def test_the_work_folder_takes_changed_settings_only_where_no_stage_depending_on_them_has_begun(tmp_path):
    from bksdm.miniworld.build import WorkFolder

    work = WorkFolder(tmp_path, scenes_config(tmp_path))
    work.finish("vae", {"scaling_factor": 1.1})
    # the carried finished stages of docs/miniworld.md on an AVX2-only CPU: the U-Net has not begun
    changed = ("teacher.precision=32-true", "classifier.lr=1e-3")
    again = WorkFolder(tmp_path, scenes_config(tmp_path, *changed))
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert saved["teacher.precision"] == "32-true" and saved["classifier.lr"] == 0.001
    assert again.finished("vae") == {"scaling_factor": 1.1}
    with pytest.raises(ValueError, match=r"vae\.lr: 0\.001 -> 0\.01\), and stages .* hold work \(.*/vae\)"):
        WorkFolder(tmp_path, scenes_config(tmp_path, *changed, "vae.lr=1e-2"))
    # a later stage's work is kept too: its random state followed from the earlier ones
    (tmp_path / "teacher/last.ckpt").write_bytes(b"U-Net at step 250")
    with pytest.raises(ValueError, match=r"hold work \(.*/teacher\)"):
        WorkFolder(tmp_path, scenes_config(tmp_path, "teacher.precision=32-true"))
    assert json.loads((tmp_path / "settings.json").read_text()) == saved  # nothing overwritten


def test_a_step_s_batch_follows_from_the_step_alone():
    from bksdm.miniworld.training import StepBatches

    def first(n, start=0):
        batches = iter(StepBatches(10, 3, seed=0, start=start))
        return [next(batches) for _ in range(n)]

    steps = first(7)
    assert [step for step, _ in steps] == list(range(7))
    for (step, a), (again, b) in zip(steps[4:], first(3, start=4), strict=True):
        assert step == again and torch.equal(a, b)
    epoch = torch.cat([indices for _, indices in steps[:3]])
    assert len(set(epoch.tolist())) == 9  # an epoch draws without replacement (10 // 3 batches)
    with pytest.raises(ValueError, match="a pool of 2 items cannot fill a batch of 3"):
        StepBatches(2, 3, seed=0)


def test_accuracy_scores_each_slot_only_where_the_caption_has_it():
    from bksdm.miniworld.models import AttributeClassifier
    from bksdm.miniworld.scenes import LABEL_SLOTS, VALUES, caption_labels, pair_captions
    from bksdm.miniworld.scoring import attribute_accuracy
    from bksdm.miniworld.worlds import world_kind

    kind = world_kind("scenes")
    captions = [pair_captions()[0], "a small red circle on the left"]
    classifier = AttributeClassifier(heads=kind.slots, resolution=128)
    assert len(classifier.body) == 5 * 3 + 1  # five stride-2 convs down to 4 px, then the pooling
    labels = [caption_labels(text) for text in captions]

    def reads_labels(images):  # reads every slot right, the pair's single-object slot as value 0
        return {slot: torch.nn.functional.one_hot(torch.tensor([max(row[i], 0) for row in labels]),
                                                  len(VALUES[slot])).float() * 9
                for i, slot in enumerate(LABEL_SLOTS)}  # fmt: skip

    classifier.forward = reads_labels
    scores = attribute_accuracy(classifier, torch.zeros(2, 3, 128, 128), captions, labels_of=kind.labels_of)
    assert scores == {slot: 1.0 for slot in LABEL_SLOTS} | {"all": 1.0}
    with pytest.raises(ValueError, match="world='mars': accepted are"):
        world_kind("mars")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("teacher.prediction_type=sample", r"teacher\.prediction_type='sample': accepted are \['epsilon', 'v_prediction'\]"),
        ("teacher.precision=16-mixed", r"teacher\.precision='16-mixed': accepted are \['32-true', 'bf16-mixed'\]"),
    ],
)  # fmt: skip
def test_an_unknown_teacher_setting_is_refused_before_anything_is_written(tmp_path, override, message):
    from bksdm.miniworld.build import build

    with pytest.raises(ValueError, match=message):
        build(scenes_config(tmp_path, override))
    assert not (tmp_path / "work").exists()


def test_the_vae_s_learning_rate_schedule_is_one_it_knows():
    from bksdm.miniworld.training import VAETraining

    with pytest.raises(ValueError, match=r"vae\.lr_schedule='linear': accepted are \['constant', 'cosine'\]"):
        VAETraining(None, None, lr=1e-3, kl_weight=0.0, lr_schedule="linear")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize(
    ("prediction_type", "low", "high"), [("epsilon", 0.5, 2.0), ("v_prediction", 20.0, 100.0)]
)
def test_the_teacher_learns_the_noise_or_sd_v2_s_velocity(prediction_type, low, high):
    from bksdm.miniworld.training import TeacherTraining

    class Silent(torch.nn.Module):  # predicts 0: the loss is the target's mean square
        def forward(self, noisy, timesteps, context):
            return type("Output", (), {"sample": torch.zeros_like(noisy)})

    # latents of 10 everywhere: the velocity carries them (at most 100 in mean square), the noise does not (1)
    stage = TeacherTraining(
        Silent(), torch.full((8, 4, 2, 2), 10.0), torch.zeros(8, 4, 2, 2), torch.zeros(8, dtype=torch.long),
        torch.zeros(2, 3, 4), scaling_factor=1.0, seed=0, lr=1e-3, weight_decay=0.0, warmup_steps=0,
        caption_dropout=0.0, prediction_type=prediction_type,
    )  # fmt: skip
    assert low < stage.training_step((0, torch.arange(8)), 0).item() < high


def test_removing_a_part_moves_the_prediction_in_every_noise_band_and_a_removal_it_cannot_make_is_refused():
    from bksdm.miniworld import models
    from bksdm.miniworld.build import part_changes

    unet = models.unet(0, 8)
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 64)
    parts = {
        "outer": ("up_blocks.3", "zeroed"),
        "mid": ("mid_block", "zeroed"),
        "bypass": ("mid_block", "bypassed"),
    }
    changes = part_changes(unet, latents, context, 0, parts)
    assert all(changes[name] > 0 for name in parts)
    assert changes["bypass"] < changes["mid"]  # the up path keeps the mid block's input
    by_timestep = changes["outer_by_timestep"]  # every latent noised in each quarter of the timesteps
    assert list(by_timestep) == ["0-249", "250-499", "500-749", "750-999"]
    assert all(v > 0 for v in by_timestep.values()) and len(set(by_timestep.values())) == 4
    with pytest.raises(
        ValueError, match=r"part='down_blocks.3' zeroed: accepted are \['mid_block', 'up_blocks.0'"
    ):
        part_changes(unet, latents, context, 0, {"down": ("down_blocks.3", "zeroed")})
    with pytest.raises(ValueError, match=r"part='up_blocks.0' bypassed: accepted are \['mid_block'\]"):
        part_changes(unet, latents, context, 0, {"up": ("up_blocks.0", "bypassed")})
    with pytest.raises(ValueError, match=r"removal='halved': accepted are \['zeroed', 'bypassed'\]"):
        part_changes(unet, latents, context, 0, {"mid": ("mid_block", "halved")})


def test_skip_dropout_zeroes_the_skip_connections_of_the_dropped_samples_only_while_asked():
    from bksdm.miniworld import models
    from bksdm.miniworld.training import skip_connections_kept

    unet = models.unet(0, 8).eval()
    noisy, timesteps, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 64)
    seen = []
    with torch.no_grad():
        whole = unet(noisy, timesteps, context).sample
        with skip_connections_kept(unet, torch.tensor([True, False])):
            # registered after the mask's hooks: they see what the up stages are given
            handles = [
                block.register_forward_pre_hook(
                    lambda module, args, kwargs: seen.append(kwargs["res_hidden_states_tuple"]),
                    with_kwargs=True,
                )
                for block in unet.up_blocks
            ]
            dropped = unet(noisy, timesteps, context).sample
        for handle in handles:
            handle.remove()
        skips = [skip for stage in seen for skip in stage]
        assert len(skips) == 12 and all(s[1].abs().max() == 0 and s[0].abs().max() > 0 for s in skips)
        torch.testing.assert_close(dropped[0], whole[0])  # a kept sample is untouched
        assert not torch.allclose(dropped[1], whole[1])
        torch.testing.assert_close(unet(noisy, timesteps, context).sample, whole)  # the hooks are gone


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_a_teacher_step_with_skip_dropout_draws_its_dropped_samples_from_the_step():
    from bksdm.miniworld import models
    from bksdm.miniworld.training import TeacherTraining

    latents, text_embeds = torch.randn(8, 4, 8, 8), torch.randn(2, 5, 64)

    def stage(skip_dropout):
        return TeacherTraining(
            models.unet(0, 8), latents, torch.zeros(8, 4, 8, 8), torch.zeros(8, dtype=torch.long), text_embeds,
            scaling_factor=1.0, seed=0, lr=1e-3, weight_decay=0.0, warmup_steps=0,
            caption_dropout=0.0, skip_dropout=skip_dropout,
        )  # fmt: skip

    batch = (3, torch.arange(8))
    with torch.no_grad():
        plain, half = stage(0.0).training_step(batch, 0), stage(0.5).training_step(batch, 0)
        assert half != plain
        assert stage(0.5).training_step(batch, 0) == half  # the same step drops the same samples
    for wrong in (1.0, -0.1):
        with pytest.raises(
            ValueError, match=rf"teacher\.skip_dropout={wrong}: accepted are fractions in \[0, 1\)"
        ):
            stage(wrong)
