"""A saved student loads with plain diffusers (no bksdm import) and generates the same images."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from bksdm.arch import build_student
from bksdm.callbacks.export import ExportStudent
from bksdm.eval.generation import load_pipeline
from bksdm.teachers.export import save_student_pipeline

PROMPTS = ["a red square on a blue background", "a green circle"]


def generate(pipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(1234)
    return pipeline(
        PROMPTS, num_inference_steps=3, guidance_scale=7.5, generator=generator, output_type="np"
    ).images


@pytest.fixture(scope="module")
def exported(tmp_path_factory, toy_teacher, toy_path):
    student = build_student(toy_teacher.unet, "tiny")
    with torch.no_grad():  # make it differ from the teacher, as a trained student would
        for parameter in student.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    before = StableDiffusionPipeline.from_pretrained(
        str(toy_path),
        unet=student,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    images = generate(before)
    folder = tmp_path_factory.mktemp("run") / "student"
    save_student_pipeline(student, "builtin:toy", folder)
    return folder, student, images


LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    torch.set_num_threads(1)
    folder, out, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    generator = torch.Generator().manual_seed(1234)
    images = pipeline(prompts, num_inference_steps=3, guidance_scale=7.5, generator=generator, output_type="np").images
    np.save(out, images)
    assert not [m for m in sys.modules if m.split(".")[0] == "bksdm"], "bksdm was imported"
    print(json.dumps({"mid_block": unet.mid_block is None, "blocks": len(unet.down_blocks)}))
    """
)


def test_plain_diffusers_loads_the_student_and_generates_the_same_images(exported, tmp_path):
    folder, _, images = exported
    out = tmp_path / "images.npy"
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder), str(out), json.dumps(PROMPTS)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "sampling" not in done.stderr  # diffusers ignores the folder's sampling.json, and says nothing
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"mid_block": True, "blocks": 3}
    np.testing.assert_allclose(np.load(out), images, atol=1e-5)


def test_exported_unet_is_the_student_in_safetensors(exported):
    folder, student, _ = exported
    assert not list(folder.rglob("*.bin")) and list((folder / "unet").glob("*.safetensors"))
    loaded = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    assert loaded.config.mid_block_type is None
    state = student.state_dict()
    assert all(torch.equal(tensor, state[key]) for key, tensor in loaded.state_dict().items())
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert {"vocab.json", "merges.txt"} <= {f.name for f in (folder / "tokenizer").iterdir()}


def test_a_failed_export_leaves_the_previous_one_intact(exported, toy_teacher, monkeypatch):
    folder, _, _ = exported
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(StableDiffusionPipeline, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_student_pipeline(build_student(toy_teacher.unet, "small"), "builtin:toy", folder)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert [p.name for p in folder.parent.iterdir()] == ["student"]  # no staging folder left behind


def test_exporting_again_replaces_the_folder(exported, toy_teacher):
    folder, _, _ = exported
    save_student_pipeline(build_student(toy_teacher.unet, "base"), "builtin:toy", folder)
    assert UNet2DConditionModel.from_pretrained(folder, subfolder="unet").mid_block is not None
    assert [p.name for p in folder.parent.iterdir()] == ["student"]


def test_the_exported_folder_is_as_readable_as_a_plain_mkdir_makes_it(toy_teacher, tmp_path):
    previous = os.umask(0o022)
    try:
        folder = save_student_pipeline(build_student(toy_teacher.unet, "tiny"), "builtin:toy", tmp_path / "s")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in folder.iterdir() if p.is_dir())
    # every file, the weights too (safetensors writes its files 0600)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o644 for p in files}


def test_a_student_carries_its_teacher_sampling_defaults(exported, tmp_path):
    folder, _, _ = exported
    sd = {"guidance_scale": 7.5, "num_inference_steps": 25}
    assert json.loads((folder / "sampling.json").read_text()) == sd  # the toy teacher has none: SD's
    teacher = load_pipeline("builtin:miniworld", "float32", "cpu", None)
    mini = save_student_pipeline(build_student(teacher.unet, "tiny"), "builtin:miniworld", tmp_path / "mini")
    assert json.loads((mini / "sampling.json").read_text()) == {
        "guidance_scale": 3.0,
        "num_inference_steps": 25,
    }
    # the run's teacher preset, handed to the export callback, wins over the teacher folder's file
    callback = ExportStudent(
        tmp_path / "run" / "student", sampling={"guidance_scale": 2, "num_inference_steps": 30}
    )
    module = SimpleNamespace(
        exported_student=lambda: build_student(teacher.unet, "tiny"),
        hparams=SimpleNamespace(teacher_source="builtin:miniworld", revision=None, vae_source=None),
    )
    callback.on_train_end(SimpleNamespace(is_global_zero=True), module)
    written = json.loads((tmp_path / "run" / "student" / "sampling.json").read_text())
    assert written == {"guidance_scale": 2.0, "num_inference_steps": 30}
    with pytest.raises(
        ValueError, match=r"export_student.sampling: num_inference_steps=0: accepted is a positive"
    ):
        ExportStudent(tmp_path / "x", sampling={"num_inference_steps": 0})


def test_a_student_trained_with_another_vae_is_exported_with_it(toy_teacher, tmp_path):
    """teacher.vae_source (e.g. SDXL's fp16-fixed VAE): the folder holds the VAE training and its grids used."""
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    other = AutoencoderKL.from_config(toy_teacher.vae.config)  # new random weights, the teacher's shapes
    other.save_pretrained(tmp_path / "other-vae")  # a bare VAE: config.json at the top
    module = SimpleNamespace(  # what the export callback reads of a DistillModule trained so
        exported_student=lambda: build_student(toy_teacher.unet, "tiny"),
        hparams=SimpleNamespace(
            teacher_source="builtin:toy", revision=None, vae_source=str(tmp_path / "other-vae")
        ),
    )
    ExportStudent(tmp_path / "student").on_train_end(SimpleNamespace(is_global_zero=True), module)
    saved = AutoencoderKL.from_pretrained(tmp_path / "student", subfolder="vae").state_dict()
    assert all(torch.equal(saved[key], value) for key, value in other.state_dict().items())
    assert not torch.equal(
        saved["decoder.conv_out.weight"], toy_teacher.vae.state_dict()["decoder.conv_out.weight"]
    )
