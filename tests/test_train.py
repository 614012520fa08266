"""The Hydra app: every experiment composes and trains, the default run's data check, a run's outputs, multirun."""

import re

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from helpers.data import write_folder, write_shards
from helpers.paths import CONF
from helpers.train_config import FAST, config, read_metrics, run_cli
from hydra.errors import MissingConfigException
from PIL import Image

from bksdm import train as train_app
from bksdm.cli import train_setup
from bksdm.cli.errors import ConfigError
from bksdm.eval.labelled_grid import GridLayout

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_experiments_exist():
    assert {"demo", "paper_base", "paper_small", "paper_tiny"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_trains_a_step(experiment, tmp_path):
    # the ablation's periodic evaluation, cut to a smoke test (it scores the toy teacher's images here)
    smaller = [f"callbacks.miniworld_eval.{k}={v}" for k, v in
               (("num_images", 4), ("num_real", 8), ("num_latents", 4), ("num_inference_steps", 2))]  # fmt: skip
    extra = smaller if experiment in ("miniworld_ablation", "miniworld_scenes_ablation") else []
    cfg = config(f"experiment={experiment}", *FAST, *extra, output_dir=tmp_path)
    module = train_app.train(cfg)
    assert module.trainer.global_step == 1
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "student", subfolder="unet").config
    assert {k: v for k, v in exported.items() if not k.startswith("_")} == {
        k: v for k, v in module.student.config.items() if not k.startswith("_")
    }
    assert list((tmp_path / "samples").glob("*.png"))
    assert (tmp_path / "config.yaml").read_text().count("teacher:") == 1


def test_paper_defaults(tmp_path):
    cfg = config(output_dir=tmp_path)
    assert (cfg.teacher.name, cfg.arch.name) == ("sd14", "small")
    assert (cfg.loss.w_task, cfg.loss.w_out, cfg.loss.w_feat) == (1.0, 1.0, 1.0)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, cfg.trainer.max_steps) == (64, 4, 50000)
    assert (cfg.trainer.precision, cfg.trainer.gradient_clip_val, cfg.seed) == ("bf16-mixed", 1.0, 1234)
    assert cfg.optim.optimizer.lr == 5e-5 and cfg.optim.optimizer.weight_decay == 0.01
    assert not cfg.distill.gradient_checkpointing and cfg.distill.ema_decay is not None
    for variant in ("base", "small", "tiny"):  # the paper's memory setting
        assert config(f"experiment=paper_{variant}", output_dir=tmp_path).distill.gradient_checkpointing


def test_default_run_without_data_stops_at_once_saying_what_to_set(tmp_path, monkeypatch):
    def no_heavy_work(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the config was checked")

    monkeypatch.setattr("bksdm.distill.module.load_components", no_heavy_work)
    with pytest.raises(ValueError, match=r"data\.root is not set: .*data\.root=/path/to/folder"):
        train_app.train(config(output_dir=tmp_path))
    # the datamodule's FileNotFoundError, unwrapped from hydra.utils.instantiate's exception
    with pytest.raises(ConfigError, match=r"^data\.root='.*nowhere' is not a folder"):
        train_app.train(config(f"data.root={tmp_path / 'nowhere'}", output_dir=tmp_path))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.resolution=100"],
            r"data\.resolution=100 cannot go through teacher=toy's U-Net: .*accepted are multiples of 64 pixels",
        ),
        (
            ["arch.removal.layers_per_block=3"],
            r"arch=small does not fit teacher=toy: layers_per_block=3 does not fit a teacher with 2 layers",
        ),
        (["resume=yes"], r"resume='yes': accepted are auto"),
        (
            ["global_batch_size=6", "trainer.accumulate_grad_batches=4"],
            r"global_batch_size=6 does not split over 1 device\(s\) x 4 accumulation step\(s\): accepted are positive multiples of 4",
        ),
        (
            ["trainer.precision=16-mixed", "trainer.gradient_clip_val=1.0", "trainer.accelerator=gpu"],
            r"trainer\.precision=16-mixed with trainer\.gradient_clip_val=1\.0 cannot use a fused optimizer .*Accepted: trainer\.precision=bf16-mixed",
        ),
        (["speed.attention=flash"], r"speed\.attention='flash': accepted are \['sdpa', 'eager'\]"),
        # numbers that Hydra read as strings, named by their key (not a TypeError deep in torch)
        (["optim.optimizer.lr=5e-5x"], r"^optim\.optimizer\.lr='5e-5x' is not a number$"),
        (
            ["trainer.max_steps=1.5", "distill.caption_dropout=some"],
            r"trainer\.max_steps=1\.5 is not an integer.*distill\.caption_dropout='some' is not a number"
            r"|distill\.caption_dropout='some' is not a number; trainer\.max_steps=1\.5 is not an integer",
        ),
        (
            ["optim.optimizer.betas=[0.9,x]"],
            r"^optim\.optimizer\.betas=\[0\.9, 'x'\] is not a list of a number$",
        ),
        (["loss.w_task=0", "loss.w_out=0", "loss.w_feat=0"], r"loss weights .* are all 0"),
        # a custom removal spec keeps the preset's explicit taps, which name a stage it removed
        (
            ["arch.removal.drop_innermost_stages=1"],
            r"arch=small's feature taps do not fit its student: student has no module 'down_blocks\.3'"
            r".*arch\.taps=auto derives the pairs",
        ),
        (
            ["trainer.precision=16-mixed", "trainer.accelerator=cpu"],
            r"trainer\.precision=16-mixed needs a GPU .*accepted there are bf16-mixed, 32",
        ),
        (
            ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1"],
            r"trainer=fsdp with trainer\.precision=bf16-mixed on the CPU: .*accepted on the CPU: trainer\.precision=32",
        ),
    ],
)
def test_config_errors_stop_the_run_before_anything_is_loaded_or_written(
    tmp_path, monkeypatch, overrides, message
):
    monkeypatch.setattr(
        "bksdm.distill.module.load_components", lambda *a, **k: pytest.fail("the teacher was loaded")
    )
    with pytest.raises(ConfigError, match=message):
        train_app.train(config("experiment=demo", *FAST, *overrides, output_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_key_set_for_another_choice_of_the_group_is_named_with_how_to_drop_it(tmp_path, monkeypatch):
    """The experiment sets data.num_samples for data=miniworld; the latent source has no such parameter."""
    from bksdm.cli.value_types import check_value_types

    monkeypatch.setattr(
        "bksdm.distill.module.load_components", lambda *a, **k: pytest.fail("the teacher was loaded")
    )
    run = tmp_path / "run"
    switched = ("experiment=miniworld_scenes_ablation", "data=miniworld_latents")
    with pytest.raises(
        ConfigError,
        match=r"^data\.num_samples is not a setting of bksdm\.data\.\w+\.LatentDataModule \(accepted: \[.*'urls'.*\]\); "
        r"a key set for another choice of the group \(by an experiment\?\) is dropped with '~data\.num_samples'$",
    ):
        train_app.train(config(*switched, output_dir=run))
    assert not run.exists()
    check_value_types(config(*switched, "~data.num_samples", output_dir=run))


def test_a_config_error_is_one_line_without_a_traceback_and_leaves_no_run_folder(tmp_path):
    done = run_cli("experiment=demo", "optim.optimizer.lr=5e-5x", f"paths.log_dir={tmp_path / 'out'}",
                   cwd=tmp_path, HYDRA_FULL_ERROR="0")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "Error: optim.optimizer.lr='5e-5x' is not a number"
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    # Hydra's own switch still shows where it came from
    full = run_cli("experiment=demo", "optim.optimizer.lr=5e-5x", f"paths.log_dir={tmp_path / 'out'}",
                   cwd=tmp_path)  # fmt: skip
    assert full.returncode == 1 and "Traceback" in full.stderr and "check_value_types" in full.stderr


def test_a_hub_teacher_missing_from_the_offline_cache_is_said_before_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))  # nothing cached
    monkeypatch.setattr(
        "bksdm.distill.module.load_components", lambda *a, **k: pytest.fail("the teacher was loaded")
    )
    with pytest.raises(ConfigError, match=r"^teacher\.source='CompVis/stable-diffusion-v1-4' is not in the local "
                       r"Hugging Face cache, and HF_HUB_OFFLINE=1 forbids .*teacher=miniworld"):  # fmt: skip
        train_app.train(config("data=synthetic", output_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_default_trainer_trains_on_a_cpu(tmp_path):
    # no trainer= override: bf16-mixed, frozen_dtype auto (bf16 on a CPU), fused AdamW, accumulation
    cfg = config("teacher=toy", "data=synthetic", "trainer.max_steps=1", "trainer.accumulate_grad_batches=2",
                 "callbacks.sample_grid.num_inference_steps=2", "callbacks.sample_grid.prompts=[a red circle]",
                 output_dir=tmp_path)  # fmt: skip
    assert (cfg.trainer.precision, cfg.distill.frozen_dtype, cfg.optim.optimizer.fused) == (
        "bf16-mixed",
        "auto",
        True,
    )
    module = train_app.train(cfg)
    assert module.trainer.global_step == 1 and module.frozen.dtype == torch.bfloat16
    assert module.trainer.precision == "bf16-mixed" and (tmp_path / "student" / "unet").is_dir()


def test_an_unknown_choice_lists_the_accepted_ones(tmp_path):
    with pytest.raises(
        MissingConfigException, match=r"Could not find 'arch/huge'[\s\S]*Available options in 'arch'"
    ):
        config("arch=huge", output_dir=tmp_path)


def test_a_custom_arch_with_auto_taps_trains(tmp_path):
    cfg = config("experiment=demo", "arch=base_no_inner", *FAST, output_dir=tmp_path)
    module = train_app.train(cfg)
    assert module.student.mid_block is not None and len(module.student.down_blocks) == 3
    pairs = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]["taps"]
    assert pairs[2] == ["down_blocks.2.attentions.1.proj_out", "down_blocks.2.attentions.0.proj_out"]
    assert len(pairs) == 6


def test_two_job_multirun_gives_two_loadable_students(tmp_path):
    done = run_cli(
        "-m", "experiment=demo", "arch=small,tiny", "trainer.max_steps=2", "data.batch_size=4",
        "callbacks.sample_grid.num_inference_steps=2",
        f"paths.log_dir={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(tmp_path.glob("multiruns/*/*/student"))
    assert [p.parent.name for p in jobs] == ["0", "1"]
    blocks = [len(UNet2DConditionModel.from_pretrained(p, subfolder="unet").down_blocks) for p in jobs]
    assert blocks == [4, 3]  # small, then tiny
    # Lightning's records pass through Hydra's logging once: on the console once per job, and in train.log
    console = done.stdout + done.stderr
    assert console.count("`Trainer.fit` stopped: `max_steps=2` reached") == 2
    # nothing but the run's own lines: no warning, deprecation, hint or advertisement (third-party ones are
    # filtered by bksdm.cli.logs)
    noise = [line for line in console.splitlines() if re.search(r"warn|deprecat|tip:|srun|hint", line, re.I)]
    assert not noise, noise
    for job in jobs:
        log = (job.parent / "train.log").read_text()
        assert "`Trainer.fit` stopped" in log and "teacher  miniworld" in log


@pytest.mark.slow
def test_demo_distils_the_shipped_teacher_and_writes_every_output(tmp_path):
    # the demo as a user runs it, shortened (its learning is tested in test_miniworld.py)
    done = run_cli("experiment=demo", "trainer.max_steps=20", "callbacks.sample_grid.num_inference_steps=10",
                   f"paths.log_dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = next(tmp_path.glob("runs/*"))
    assert "teacher  miniworld" in done.stdout + done.stderr
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    rows = read_metrics(run / "csv" / "metrics.csv")
    columns = set(rows[0])
    assert {"train/loss", "train/loss_task", "train/loss_kd_out", "train/loss_kd_feat"} <= columns
    assert {f"train/kd_feat/{b}_blocks.{i}" for b in ("down", "up") for i in range(4)} <= columns
    pipeline = StableDiffusionPipeline.from_pretrained(run / "student")
    image = pipeline(
        "a large red circle on the left", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)
    (grid,) = (run / "samples").glob("step_*.png")
    layout = GridLayout(rows=6, columns=2, cell=4 * 64)  # teacher | student, one row per prompt, enlarged 4x
    assert grid.name == "step_0000020.png" and Image.open(grid).size == (layout.width, layout.height)


@pytest.mark.parametrize("source", ["laion_folder", "webdataset"])
def test_training_from_each_data_source_through_the_app(tmp_path, source):
    if source == "laion_folder":
        write_folder(tmp_path / "data", good=4)
        location = f"data.root={tmp_path / 'data'}"
    else:
        write_shards(tmp_path / "data", shards=2)
        location = f"data.urls='{tmp_path / 'data'}/{{00000..00002}}.tar'"  # quoted: braces are Hydra syntax
    cfg = config(
        "experiment=demo",
        *FAST,
        f"data={source}",
        location,
        "trainer.max_steps=2",
        output_dir=tmp_path / "run",
    )
    module = train_app.train(cfg)
    assert module.trainer.global_step == 2


def test_missing_shard_urls_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"data\.urls is not set: .*webdataset shards"):
        train_app.train(config("data=webdataset", output_dir=tmp_path))


def test_periodic_eval_is_one_config_switch_away(tmp_path):
    from hydra.utils import instantiate

    from bksdm.callbacks.periodic_eval import PeriodicEval

    cfg = config(
        "callbacks=with_eval",
        "eval=standin",
        "callbacks.periodic_eval.prompts=p.json",
        "callbacks.periodic_eval.real=r/",
        output_dir=tmp_path,
    )
    callback = instantiate(cfg.callbacks.periodic_eval)
    assert isinstance(callback, PeriodicEval) and callback.every_n_steps == 5000
    assert callback.features.name == "standin-inception" and callback.dirpath == tmp_path / "eval"


def test_runs_log_grad_norm_throughput_and_peak_memory(tmp_path):
    cfg = config(
        "experiment=demo", *FAST, "trainer.max_steps=3", "trainer.log_every_n_steps=1", output_dir=tmp_path
    )
    train_app.train(cfg)
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    values = {
        key: [float(r[key]) for r in rows if r.get(key)]
        for key in ("train/grad_norm", "perf/images_per_s", "perf/peak_memory_gb")
    }
    assert len(values["train/grad_norm"]) == 3 and all(v > 0 for v in values["train/grad_norm"])
    # one row per optimizer step, numbered as the grid and the checkpoints are (1, 2, 3), the learning
    # rate in the same row as the loss
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(r["train/loss"] and r["train/lr"] for r in rows)
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000003.png"]
    assert len(values["perf/images_per_s"]) == 2 and all(v > 0 for v in values["perf/images_per_s"])
    assert all(0.1 < v < 64 for v in values["perf/peak_memory_gb"])


@pytest.mark.slow
def test_ddp_and_fsdp_on_two_cpu_processes_equal_one_process_and_fsdp_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    common = ["experiment=demo", "data.num_samples=8", "trainer.max_steps=3", "trainer.log_every_n_steps=1",
              "trainer.deterministic=true", "distill.ema_decay=0.9", "callbacks.sample_grid.num_inference_steps=2",
              "callbacks.sample_grid.prompts=[a red circle]"]  # fmt: skip
    two = ["data.batch_size=2", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32"]
    fsdp_checkpoint = tmp_path / "fsdp" / "checkpoints" / "epoch=0-step=2.ckpt"
    runs = {
        "one": ["data.batch_size=4"],
        "ddp": [*two, "trainer=ddp"],
        "fsdp": [*two, "trainer=fsdp", "callbacks.checkpoint.every_n_train_steps=2"],
        # the sharded step-2 checkpoint folder, in a fresh run folder: student, EMA, optimizer, RNG
        "resumed": [*two, "trainer=fsdp", f"ckpt_path='{fsdp_checkpoint}'", "callbacks.sample_grid=null"],
    }
    results = {}
    for name, overrides in runs.items():
        # one thread per process: two processes share this machine's two cores
        done = run_cli(
            *common, *overrides, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path, OMP_NUM_THREADS="1"
        )
        assert done.returncode == 0, done.stderr[-3000:]
        rows = read_metrics(tmp_path / name / "csv" / "metrics.csv")
        losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
        weights = load_file(tmp_path / name / "student" / "unet" / "diffusion_pytorch_model.safetensors")
        results[name] = (losses, weights)
    one_losses, one_weights = results["one"]
    assert len(one_losses) == 3
    for name in ("ddp", "fsdp"):
        losses, weights = results[name]
        assert losses == pytest.approx(one_losses, rel=1e-5), name
        # the same updates up to the all-reduce's summation order (Adam magnifies it in near-zero
        # gradients, so whole tensors are compared, not single elements)
        gaps = {k: float((weights[k] - v).norm() / v.norm().clamp_min(1e-12)) for k, v in one_weights.items()}
        assert max(gaps.values()) < 1e-3, (name, max(gaps.items(), key=lambda item: item[1]))
        assert len(list((tmp_path / name / "samples").glob("*.png"))) == 1
    assert not (tmp_path / "ddp" / "multirun").exists() and len(list(tmp_path.glob("ddp/student"))) == 1
    assert (fsdp_checkpoint / "meta.pt").is_file() and len(list(fsdp_checkpoint.glob("*.distcp"))) == 2
    (fsdp_losses, fsdp_weights), (resumed_losses, resumed_weights) = results["fsdp"], results["resumed"]
    assert resumed_losses == fsdp_losses[2:]
    assert all(torch.equal(resumed_weights[k], v) for k, v in fsdp_weights.items())


def test_a_global_batch_sets_the_per_device_batch(tmp_path):
    cfg = config(
        "experiment=demo",
        *FAST,
        "global_batch_size=8",
        "trainer.accumulate_grad_batches=2",
        output_dir=tmp_path,
    )
    module = train_app.train(cfg)
    assert module.trainer.datamodule.batch_size == 4
    assert train_setup.per_device_batch(256, 64, world_size=4, accumulation=4) == 16
