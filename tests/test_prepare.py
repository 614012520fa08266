"""python -m bksdm.prepare: image shards and pre-encoded latent shards, and training from them."""

import functools
import io
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers.data import write_folder
from helpers.paths import CONF
from helpers.train_config import FAST, config
from hydra import compose, initialize_config_dir

from bksdm import train as train_app
from bksdm.cli.errors import ConfigError
from bksdm.data.datamodule import LatentDataModule
from bksdm.data.folder import list_captioned_images
from bksdm.data.shards import decode_latent_sample, first_record, shard_samples
from bksdm.distill.losses import DistillLoss
from bksdm.distill.module import DistillModule
from bksdm.prepare import prepare, training_command


def prepare_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("prepare", overrides=["teacher=toy", *overrides])


def test_image_shards_keep_the_bytes_and_count_the_bad_samples(tmp_path):
    expected = write_folder(tmp_path / "data", good=5)
    report = prepare(
        prepare_config(
            f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'shards'}", "shard_size=2", "data.min_size=64"
        )
    )
    assert report.written == 5 and report.skipped == expected and len(report.shards) == 3
    assert report.images_per_second > 0 and "5 samples in 3 shards, 5 skipped" in report.describe()
    originals = {
        caption: path.read_bytes()
        for path, caption in list_captioned_images(tmp_path / "data")
        if path.is_file()
    }
    raw = list(shard_samples(report.shards, decode=lambda s: s, resampled=False, shuffle_buffer=0))
    assert len(raw) == 5
    for sample in raw:
        image = next(sample[k] for k in ("jpg", "png", "webp") if k in sample)
        assert image == originals[sample["txt"].decode()]


@pytest.mark.parametrize("embeddings", [False, True])
def test_training_from_latent_shards_needs_no_vae(tmp_path, embeddings):
    write_folder(tmp_path / "data", good=6, with_bad=False)
    out = tmp_path / "latents"
    report = prepare(prepare_config(
        f"data.root={tmp_path / 'data'}", f"out={out}", "mode=latents", f"text_embeddings={embeddings}", "batch_size=4",
    ))  # fmt: skip
    assert report.written == 6
    record = first_record(report.shards)
    assert record["teacher"] == "builtin:toy" and record["resolution"] == 128 and record["crop"] == "center"
    assert record["text_embeddings"] is embeddings and record["scaling_factor"] == 0.18215
    sample = next(
        iter(shard_samples(report.shards, decode=decode_latent_sample, resampled=False, shuffle_buffer=0))
    )
    assert sample["latent_mean"].shape == sample["latent_std"].shape == (4, 16, 16)
    assert ("text_embeds" in sample) is embeddings

    overrides = [o for o in FAST if o != "data=synthetic"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=demo", *overrides, "data=latents", f"data.urls={report.shards}", "trainer.max_steps=2",
            "distill.caption_dropout=0",  # stored text embeddings cannot drop captions (the demo drops 10%)
            f"paths.output_dir={tmp_path / 'run'}",
        ])  # fmt: skip
    module = train_app.train(cfg)
    assert module.trainer.global_step == 2
    assert module.frozen.vae is None
    assert (module.frozen.text_encoder is None) is embeddings
    assert list((tmp_path / "run" / "samples").glob("*.png"))  # the grid loads what it needs to draw


def test_latent_shards_of_another_teacher_are_refused(tmp_path):
    write_folder(tmp_path / "data", good=2, with_bad=False)
    report = prepare(
        prepare_config(f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'latents'}", "mode=latents")
    )
    with pytest.raises(
        ValueError,
        match=r"made with \{'teacher': 'builtin:toy', .*'resolution': 128\}, but this run trains with \{'teacher': 'CompVis/stable-diffusion-v1-4', .*'resolution': 512\}",
    ):
        LatentDataModule(report.shards, teacher="CompVis/stable-diffusion-v1-4", resolution=512)
    with pytest.raises(ValueError, match=r"'resolution': 256\}"):
        LatentDataModule(report.shards, teacher="builtin:toy", resolution=256)


def losses_on_both_paths(teacher, removal, taps, image_batch, latent_batch) -> list[tuple]:
    """(loss, terms) of one step on each batch, with the same latent sample, noise and timesteps."""
    module = DistillModule(
        teacher_source=teacher, removal=removal, taps=taps, loss=DistillLoss(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )  # fmt: skip
    losses = []
    for batch in (image_batch, latent_batch):
        torch.manual_seed(123)
        with torch.no_grad():
            losses.append(module.step(batch, module.device))
    return losses


def test_pre_encoded_latents_give_the_same_loss_as_encoding_on_the_fly(tmp_path):
    write_folder(tmp_path / "data", good=4, with_bad=False)
    report = prepare(prepare_config(
        f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'latents'}", "mode=latents", "latent_dtype=float32", "batch_size=4",
    ))  # fmt: skip
    latent_samples = list(
        shard_samples(
            report.shards,
            decode=functools.partial(decode_latent_sample, random_flip=False),
            resampled=False,
            shuffle_buffer=0,
        )
    )

    from bksdm.data.folder import CaptionedImageFolder

    images = CaptionedImageFolder(tmp_path / "data", resolution=128, random_flip=False)
    by_caption = {images[i]["caption"]: images[i]["pixel_values"] for i in range(len(images))}
    captions = [s["caption"] for s in latent_samples]
    image_batch = {"pixel_values": torch.stack([by_caption[c] for c in captions]), "caption": captions}
    latent_batch = {
        "latent_mean": torch.stack([s["latent_mean"] for s in latent_samples]),
        "latent_std": torch.stack([s["latent_std"] for s in latent_samples]),
        "caption": captions,
    }
    losses = losses_on_both_paths("builtin:toy", "small", [["up_blocks.3"] * 2], image_batch, latent_batch)
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-5, atol=1e-6)
    for name, value in losses[0][1].items():
        torch.testing.assert_close(losses[1][1][name], value, rtol=1e-5, atol=1e-6)


def test_flux_latents_pre_encoded_give_the_same_loss_as_encoding_on_the_fly(tmp_path):
    """A transformer teacher's 16-channel latents, shifted and scaled at training time as on the fly; its
    captions are encoded each step (text_embeddings=false)."""
    write_folder(tmp_path / "data", good=2, with_bad=False)
    report = prepare(prepare_config(
        f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'latents'}", "teacher=flux_toy", "mode=latents",
        "latent_dtype=float32",
    ))  # fmt: skip
    decode = functools.partial(decode_latent_sample, random_flip=False)
    samples = list(shard_samples(report.shards, decode=decode, resampled=False, shuffle_buffer=0))
    assert samples[0]["latent_mean"].shape == (16, 8, 8) and "text_embeds" not in samples[0]

    from bksdm.data.folder import CaptionedImageFolder

    images = CaptionedImageFolder(tmp_path / "data", resolution=64, random_flip=False)
    by_caption = {images[i]["caption"]: images[i]["pixel_values"] for i in range(len(images))}
    captions = [s["caption"] for s in samples]
    image_batch = {"pixel_values": torch.stack([by_caption[c] for c in captions]), "caption": captions}
    latent_batch = {key: torch.stack([s[key] for s in samples]) for key in ("latent_mean", "latent_std")}
    flux_mini = {"transformer_blocks": [0, 1, 2, 10, 18], "single_transformer_blocks": {"keep": 10}}
    losses = losses_on_both_paths(
        "builtin:flux-toy",
        flux_mini,
        [["transformer_blocks.4[1]"] * 2],
        image_batch,
        {**latent_batch, "caption": captions},
    )
    for name, value in losses[0][1].items():
        torch.testing.assert_close(losses[1][1][name], value, rtol=1e-5, atol=1e-6)
    # and through the app: no VAE in memory, the student exported
    overrides = [o for o in FAST if o != "data=synthetic"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "teacher=flux_toy", "arch=flux_mini", *overrides, "data=latents", f"data.urls={report.shards}",
            "callbacks.sample_grid=null", f"paths.output_dir={tmp_path / 'run'}",
        ])  # fmt: skip
    module = train_app.train(cfg)
    assert module.frozen.vae is None and (tmp_path / "run" / "student" / "transformer").is_dir()


# teacher preset, its arch, the stored context's tokens (the toys' T5 reads 32), PixArt's masked ones dropped
TRANSFORMER_TEXT = {
    "flux_toy": ("flux_mini", 32),
    "sd3_toy": ("sd35_hprune", 77 + 32),
    "pixart_toy": ("pixart_half", None),
}


@pytest.mark.parametrize("teacher", list(TRANSFORMER_TEXT))
def test_transformer_text_pre_encoded_gives_the_same_loss_as_encoding_on_the_fly(tmp_path, teacher):
    """T5 states (and CLIP's pooled text) stored with the latents train as the captions read each step;
    PixArt's masked padding is not stored, and comes back as zeros under its mask."""
    torch.set_num_threads(1)
    arch_name, tokens = TRANSFORMER_TEXT[teacher]
    write_folder(tmp_path / "data", good=2, with_bad=False)
    metadata = tmp_path / "data" / "metadata.csv"  # captions of two lengths: each row its own mask
    metadata.write_text(metadata.read_text().replace("picture number 1", "picture number 1 of a red cube"))
    report = prepare(prepare_config(
        f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'latents'}", f"teacher={teacher}", "mode=latents",
        "text_embeddings=true", "latent_dtype=float32",
    ))  # fmt: skip
    record = first_record(report.shards)
    stored = next(iter(shard_samples(report.shards, decode=lambda s: s, resampled=False, shuffle_buffer=0)))
    stored_tokens = np.load(io.BytesIO(stored["emb.npy"])).shape[0]
    if tokens is None:  # "picture number 0": 15 of T5's 32 tokens
        assert record["text_masked"] and record["text_tokens"] == 32 and stored_tokens < 20
    else:
        assert not record["text_masked"] and record["text_tokens"] == stored_tokens == tokens
    data = LatentDataModule(report.shards, teacher=record["teacher"], resolution=64, random_flip=False)
    samples = list(shard_samples(report.shards, decode=data.decoder(), resampled=False, shuffle_buffer=0))
    assert all(s["text_embeds"].shape[0] == record["text_tokens"] for s in samples)
    if tokens is None:  # masks of 15 and 25 of the 32 tokens
        assert sorted(int(s["text_mask"].sum()) for s in samples) == [15, 25]

    from bksdm.data.folder import CaptionedImageFolder

    images = CaptionedImageFolder(tmp_path / "data", resolution=64, random_flip=False)
    by_caption = {images[i]["caption"]: images[i]["pixel_values"] for i in range(len(images))}
    captions = [s["caption"] for s in samples]
    image_batch = {"pixel_values": torch.stack([by_caption[c] for c in captions]), "caption": captions}
    latent_batch = {
        k: torch.stack([s[k] for s in samples]) for k, v in samples[0].items() if torch.is_tensor(v)
    }
    arch = yaml.safe_load((CONF / "arch" / f"{arch_name}.yaml").read_text())
    losses = losses_on_both_paths(
        record["teacher"], arch["removal"], arch["taps"], image_batch, {**latent_batch, "caption": captions}
    )
    assert losses[0][1].keys() == losses[1][1].keys()
    for name, value in losses[0][1].items():
        torch.testing.assert_close(losses[1][1][name], value, rtol=1e-5, atol=1e-6)
    if teacher != "pixart_toy":
        return
    # the command prepare prints, through the app (PixArt's mask rebuilt by data=latents): no VAE and no T5 in
    # memory, the student exported
    settings = prepare_config(f"teacher={teacher}", "mode=latents", f"out={tmp_path / 'latents'}")
    command = training_command(settings, report.shards)
    assert f" arch={arch_name} " in command
    printed = shlex.split(command)[3:]  # python -m bksdm.train ...
    overrides = [o for o in FAST if o != "data=synthetic"]
    cfg = config(
        *printed,
        *overrides,
        "data.random_flip=false",
        "callbacks.sample_grid=null",
        output_dir=tmp_path / "run",
    )
    module = train_app.train(cfg)
    assert module.trainer.global_step == 1
    assert module.frozen.vae is None and module.frozen.text_encoder is None
    assert (tmp_path / "run" / "student" / "transformer").is_dir()


def test_flipped_samples_are_encodings_of_the_mirror_image(tmp_path):
    write_folder(tmp_path / "data", good=1, with_bad=False)
    report = prepare(
        prepare_config(
            f"data.root={tmp_path / 'data'}",
            f"out={tmp_path / 'latents'}",
            "mode=latents",
            "latent_dtype=float32",
        )
    )
    raw = next(iter(shard_samples(report.shards, decode=lambda s: s, resampled=False, shuffle_buffer=0)))

    class Always:
        def __init__(self, value):
            self.value = value

        def random(self):
            return self.value

    plain = decode_latent_sample(dict(raw), random_flip=True, rng=Always(0.9))
    flipped = decode_latent_sample(dict(raw), random_flip=True, rng=Always(0.1))
    from bksdm.data.folder import CaptionedImageFolder
    from bksdm.teachers.loading import load_components

    vae = load_components("builtin:toy", ["vae"]).vae
    pixels = CaptionedImageFolder(tmp_path / "data", resolution=128, random_flip=False)[0]["pixel_values"][
        None
    ]
    with torch.no_grad():
        torch.testing.assert_close(
            flipped["latent_mean"], vae.encode(pixels.flip(-1)).latent_dist.mean[0], rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            plain["latent_mean"], vae.encode(pixels).latent_dist.mean[0], rtol=1e-4, atol=1e-5
        )


def test_bad_prepare_settings_are_named(tmp_path):
    write_folder(tmp_path / "data", good=1, with_bad=False)
    with pytest.raises(ValueError, match=r"mode='jpeg' is not accepted: use one of \['images', 'latents'\]"):
        prepare(prepare_config(f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'x'}", "mode=jpeg"))
    with pytest.raises(ConfigError, match="is not a folder"):
        prepare(prepare_config(f"data.root={tmp_path / 'nowhere'}", f"out={tmp_path / 'x'}"))
    with pytest.raises(
        ValueError, match=r"dtype=float16 with text_embeddings=true and teacher=flux_toy: T5's"
    ):
        prepare(prepare_config(f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'x'}", "teacher=flux_toy",
                               "mode=latents", "text_embeddings=true", "dtype=float16"))  # fmt: skip
    assert not (tmp_path / "x").exists()  # nothing written for a bad source or setting


def test_prepare_prints_the_training_command_with_a_pattern_shell_and_hydra_both_read(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bksdm.prepare", "teacher=miniworld", "data=miniworld", "data.num_samples=6",
         "shard_size=2", "mode=latents", "mirrored=false", "out=latents"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    command = done.stdout.strip().splitlines()[-1].removeprefix("train from them: ")
    assert command == (
        "python -m bksdm.train teacher=miniworld data=latents data.urls='latents/{00000..00002}.tar' "
        "data.random_flip=false"
    )
    # through a real shell, the printed command composes (Hydra reads the pattern as one string)
    composed = subprocess.run(
        ["bash", "-c", f"{command} --cfg job --resolve"], cwd=tmp_path, capture_output=True, text=True
    )
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert "urls: latents/{00000..00002}.tar" in composed.stdout


def test_the_mini_world_is_written_unmirrored_and_read_back_as_its_own_encodings(tmp_path):
    from bksdm.miniworld.world import MiniWorld
    from bksdm.teachers.loading import load_components

    overrides = [
        "data=miniworld",
        "data.num_samples=3",
        "data.offset=5",
        "resolution=64",
        "data.resolution=64",
    ]
    images = prepare(prepare_config(*overrides, f"out={tmp_path / 'images'}", "shard_size=2"))
    assert images.written == 3 and len(images.shards) == 2
    world = MiniWorld(3, resolution=64, offset=5)
    raw = list(shard_samples(images.shards, decode=lambda s: s, resampled=False, shuffle_buffer=0))
    assert [s["__key__"] for s in raw] == ["000000005", "000000006", "000000007"]
    from bksdm.data.transforms import image_to_unit, open_image

    for i, sample in enumerate(raw):  # PNG: the very pixels the world draws
        assert sample["txt"].decode() == world[i]["caption"]
        assert torch.equal(image_to_unit(open_image(sample["png"])), world[i]["pixel_values"])

    latents = prepare(prepare_config(
        *overrides, f"out={tmp_path / 'latents'}", "mode=latents", "mirrored=false", "latent_dtype=float32",
    ))  # fmt: skip
    assert first_record(latents.shards)["mirrored"] is False
    raw = list(shard_samples(latents.shards, decode=lambda s: s, resampled=False, shuffle_buffer=0))
    assert "mean_flip.npy" not in raw[0]
    vae = load_components("builtin:toy", ["vae"]).vae
    with torch.no_grad():
        expected = vae.encode(torch.stack([world[i]["pixel_values"] for i in range(3)])).latent_dist.mean
    for i, sample in enumerate(raw):
        decoded = decode_latent_sample(dict(sample), random_flip=False)
        torch.testing.assert_close(decoded["latent_mean"], expected[i], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"data.random_flip=true, but .* no mirror-image encodings"):
        LatentDataModule(latents.shards, teacher="builtin:toy", resolution=64, random_flip=True)
    LatentDataModule(latents.shards, teacher="builtin:toy", resolution=64, random_flip=False)


def test_a_source_prepare_cannot_read_and_missing_shards_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"data._target_='bksdm.data.datamodule.SyntheticDataModule' cannot"):
        prepare(prepare_config("data=synthetic", f"out={tmp_path / 'x'}", "mode=latents"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(
        FileNotFoundError, match=r"data\.urls=.*: 2 of 2 shards do not exist: .*nowhere/00000\.tar"
    ):
        LatentDataModule(str(tmp_path / "nowhere" / "{00000..00001}.tar"), teacher="builtin:toy")


@pytest.mark.parametrize("mode", ["images", "latents"])
def test_a_folder_without_captions_is_refused_before_anything_is_written(tmp_path, mode):
    write_folder(tmp_path / "data", good=3, with_bad=False)
    for caption in (tmp_path / "data").glob("*.txt"):
        caption.unlink()
    (tmp_path / "data" / "metadata.csv").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"holds 3 images but not one caption: expected metadata\.csv"):
        prepare(
            prepare_config(f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'shards'}", f"mode={mode}")
        )
    assert not (tmp_path / "shards").exists()


def test_sdxl_latent_shards_hold_the_sizes_and_both_towers_and_train_as_on_the_fly(tmp_path):
    write_folder(tmp_path / "data", good=3, with_bad=False)
    report = prepare(prepare_config(
        "teacher=sdxl_toy", f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'latents'}", "mode=latents",
        "text_embeddings=true", "latent_dtype=float32",
    ))  # fmt: skip
    samples = list(
        shard_samples(
            report.shards, decode=functools.partial(decode_latent_sample, random_flip=False),
            resampled=False, shuffle_buffer=0,
        )
    )  # fmt: skip
    assert samples[0]["text_embeds"].shape == (77, 48) and samples[0]["pooled_text_embeds"].shape == (16,)

    from bksdm.data.folder import CaptionedImageFolder

    images = CaptionedImageFolder(tmp_path / "data", resolution=128, random_flip=False)
    by_caption = {item["caption"]: item for item in (images[i] for i in range(len(images)))}
    captions = [s["caption"] for s in samples]
    assert all(
        torch.equal(s[key], by_caption[s["caption"]][key])
        for s in samples
        for key in ("original_size", "crop_top_left")
    )
    keys = ("pixel_values", "original_size", "crop_top_left")
    image_batch = {key: torch.stack([by_caption[c][key] for c in captions]) for key in keys}
    stored = (
        "latent_mean",
        "latent_std",
        "text_embeds",
        "pooled_text_embeds",
        "original_size",
        "crop_top_left",
    )
    latent_batch = {key: torch.stack([s[key] for s in samples]) for key in stored}
    image_batch["caption"] = latent_batch["caption"] = captions
    losses = losses_on_both_paths(
        "builtin:sdxl-toy", {"layers_per_block": 1}, [["up_blocks.2"] * 2], image_batch, latent_batch
    )
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-5, atol=1e-6)

    overrides = [o for o in FAST if o != "data=synthetic"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            *overrides, "teacher=sdxl_toy", "arch=vega", "data=latents", f"data.urls={report.shards}",
            f"paths.output_dir={tmp_path / 'run'}",
        ])  # fmt: skip
    module = train_app.train(cfg)
    assert module.trainer.global_step == 1
    assert (
        module.frozen.vae is None
        and module.frozen.text_encoder is None
        and module.frozen.text_encoder_2 is None
    )
    assert list((tmp_path / "run" / "samples").glob("*.png"))  # the grid loads both towers to draw


def test_latents_of_another_vae_record_it_and_training_checks_it(tmp_path):
    from bksdm.teachers.loading import resolve_source

    write_folder(tmp_path / "data", good=1, with_bad=False)
    vae_source = resolve_source("builtin:toy")  # a pipeline folder: its vae/ is taken
    report = prepare(prepare_config(
        f"data.root={tmp_path / 'data'}", f"out={tmp_path / 'latents'}", "mode=latents", f"+teacher.vae_source={vae_source}",
    ))  # fmt: skip
    assert first_record(report.shards)["vae"] == vae_source
    LatentDataModule(report.shards, teacher="builtin:toy", resolution=128, vae_source=vae_source)
    with pytest.raises(
        ValueError, match=r"made with \{.*'vae': '.*'\}, but this run trains with \{.*'vae': None\}"
    ):
        LatentDataModule(report.shards, teacher="builtin:toy", resolution=128)
