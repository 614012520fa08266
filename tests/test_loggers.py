"""Loggers: an offline W&B run and a TensorBoard run hold the loss terms, the tap losses, the sample grid
and the resolved config (read back with W&B's record format and TensorBoard's event reader)."""

import pytest
from helpers.train_config import FAST, config
from helpers.wandb_runs import read_records, written_runs

from bksdm import train as train_app
from bksdm.eval.labelled_grid import GridLayout

pytest.importorskip("wandb")


def test_offline_wandb_run_holds_metrics_grid_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = config(
        "experiment=demo", *FAST, "trainer.max_steps=2", "trainer.log_every_n_steps=1", "logger=wandb",
        "logger.mode=offline", "logger.tags=[test]", output_dir=tmp_path / "run",
    )  # fmt: skip
    train_app.train(cfg)
    (run_file,) = written_runs(tmp_path / "wandb", "offline-run-*/run-*.wandb")  # WANDB_DIR, as W&B does
    records = list(read_records(run_file))
    keys = {
        item.key or "/".join(item.nested_key)
        for r in records
        if r.HasField("history")
        for item in r.history.item
    }
    assert {
        "train/loss",
        "train/loss_task",
        "train/loss_kd_out",
        "train/loss_kd_feat",
        "data/skipped",
    } <= keys
    assert {f"train/kd_feat/{side}_blocks.{i}" for side in ("down", "up") for i in range(4)} <= keys
    assert {"train/lr", "samples/_type"} <= keys  # learning rate and the sample grid
    grids = list(run_file.parent.glob("files/media/images/samples_*.png"))
    assert grids
    config_keys = {item.key for r in records if r.HasField("config") for item in r.config.update}
    assert {
        "loss",
        "arch",
        "seed",
        "teacher",
    } <= config_keys and "config" not in config_keys  # once, top level
    assert any(r.HasField("exit") for r in records)  # the run was finished, ready for `wandb sync`


def test_tensorboard_run_holds_metrics_grid_and_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(
        "experiment=demo", *FAST, "trainer.max_steps=2", "trainer.log_every_n_steps=1", "logger=tensorboard",
        output_dir=tmp_path,
    )  # fmt: skip
    train_app.train(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/loss_kd_out",
        "train/kd_feat/up_blocks.0",
        "train/lr",
        "data/skipped",
    } <= scalars
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]  # optimizer steps 1 and 2
    (grid,) = events.Images("samples")
    layout = GridLayout(rows=1, columns=2, cell=2 * 128)  # the toy teacher's 128 px, enlarged 2x
    assert grid.step == 2 and grid.width == layout.width and grid.encoded_image_string.startswith(b"\x89PNG")
    assert "w_feat" in (tmp_path / "tensorboard" / "hparams.yaml").read_text()


def test_a_resumed_run_logs_into_the_same_wandb_run(tmp_path, monkeypatch, caplog, recwarn):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = [*FAST, "experiment=demo", "logger=wandb", "logger.mode=offline", "callbacks.sample_grid=null",
           "callbacks.export_student=null", "callbacks.checkpoint.every_n_train_steps=1"]  # fmt: skip
    train_app.train(config(*run, "trainer.max_steps=1", output_dir=tmp_path / "run"))
    train_app.train(config(*run, "trainer.max_steps=2", "resume=auto", output_dir=tmp_path / "run"))
    run_id = (tmp_path / "run" / "wandb_run_id").read_text().strip()
    runs = written_runs(tmp_path / "wandb")
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # one W&B run, resumed
    # W&B cannot resume offline: both folders are named for `wandb sync`, oldest first
    (hint,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B offline run")]
    assert hint.endswith("wandb sync " + " ".join(str(run) for run in runs))
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]  # its own checkpoints


def run_settings(run_file) -> dict:
    """The run record's project, group and id."""
    run = next(r.run for r in read_records(run_file) if r.HasField("run"))
    return {"project": run.project, "group": run.run_group, "id": run.run_id}


def test_wandb_takes_its_settings_from_its_environment_variables(tmp_path, monkeypatch):
    # what a W&B user sets in a job script; no logger.* override on the command line
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "elsewhere"),
                        "WANDB_PROJECT": "bk-small", "WANDB_RUN_GROUP": "sweep-3", "WANDB_RUN_ID": "run0042",
                        "WANDB_SILENT": "true"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    run = [
        *FAST,
        "experiment=demo",
        "logger=wandb",
        "callbacks.sample_grid=null",
        "callbacks.export_student=null",
    ]
    train_app.train(config(*run, output_dir=tmp_path / "run"))
    (run_file,) = written_runs(tmp_path / "elsewhere" / "wandb", "offline-run-*-run0042/run-run0042.wandb")
    assert run_settings(run_file) == {"project": "bk-small", "group": "sweep-3", "id": "run0042"}
    assert not (tmp_path / "run" / "wandb").exists()
    # the command line still wins over the environment
    train_app.train(config(*run, "logger.project=other", "logger.id=run0043", output_dir=tmp_path / "run2"))
    (run_file,) = written_runs(tmp_path / "elsewhere" / "wandb", "offline-run-*-run0043/run-run0043.wandb")
    assert run_settings(run_file)["project"] == "other"


def test_wandb_mode_disabled_trains_and_logs_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    cfg = config(*FAST, "experiment=demo", "logger=wandb", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
                 output_dir=tmp_path / "run")  # fmt: skip
    module = train_app.train(cfg)
    assert module.trainer.global_step == 2 and (tmp_path / "run" / "student").is_dir()
    assert not list(tmp_path.rglob("*.wandb"))


def test_the_jobs_of_a_sweep_are_named_by_what_it_varies_in_one_group(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "WANDB_DIR": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
    for variable in ("WANDB_RUN_GROUP", "WANDB_SILENT"):
        env.pop(variable, None)
    done = subprocess.run(
        [sys.executable, "-m", "bksdm.train", "-m", "experiment=demo", "debug=step", "logger=wandb",
         "logger.mode=offline", "loss.w_feat=0.5,1", "callbacks.sample_grid=null", "callbacks.export_student=null",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wandb: WARNING" not in done.stderr, done.stderr  # e.g. Lightning's anonymous=None
    runs = {}
    for run_file in written_runs(tmp_path / "wandb", "offline-run-*/run-*.wandb"):
        records = list(read_records(run_file))
        run = next(r.run for r in records if r.HasField("run"))
        config = {
            i.key: json.loads(i.value_json) for r in records if r.HasField("config") for i in r.config.update
        }
        runs[run.display_name] = (run.run_group, run.job_type, list(run.tags), config)
    assert sorted(runs) == ["w_feat=0.5", "w_feat=1"]
    (group,) = {group for group, *_ in runs.values()}
    assert group == "sweep"  # the sweep's folder
    for name, (_, job_type, tags, config) in runs.items():
        assert job_type == "train" and {"experiment:demo", "arch:small", "loss:kd_full"} <= set(tags)
        assert config["loss"]["w_feat"] == float(name.split("=")[1]) and config["seed"] == 1234


def test_periodic_eval_logs_a_table_of_teacher_and_student_samples_to_wandb(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from helpers.eval_data import coco_json, write_real

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv(
        "WANDB_DATA_DIR", str(tmp_path / "wandb_data")
    )  # where an offline run stages artifacts
    write_real(tmp_path / "real")
    cfg = config(
        "experiment=demo", *FAST, "trainer.max_steps=2", "logger=wandb", "logger.mode=offline",
        "callbacks=with_eval", "eval=standin", f"callbacks.periodic_eval.prompts={coco_json(tmp_path / 'c.json')}",
        f"callbacks.periodic_eval.real={tmp_path / 'real'}", "callbacks.periodic_eval.num_images=4",
        "callbacks.periodic_eval.every_n_steps=1", "callbacks.periodic_eval.num_inference_steps=2",
        "callbacks.periodic_eval.batch_size=4", "callbacks.periodic_eval.table_prompts=3",
        f"callbacks.periodic_eval.cache_dir={tmp_path / 'cache'}", "callbacks.sample_grid=null",
        output_dir=tmp_path / "run",
    )  # fmt: skip
    train_app.train(cfg)
    (run_file,) = written_runs(tmp_path / "wandb", "offline-run-*/run-*.wandb")
    records = list(read_records(run_file))
    steps = [
        json.loads(step.value_json)
        for r in records
        if r.HasField("history")
        and any(i.nested_key[:2] == ["eval/samples", "_type"] for i in r.history.item)
        for step in r.history.item
        if step.key == "trainer/global_step" or step.nested_key == ["trainer/global_step"]
    ]
    assert steps == [1, 2]
    # the table with its images travels as a run_table artifact (the run's media file holds no images)
    (last,) = [r.artifact for r in records if r.HasField("artifact") and r.artifact.type == "run_table"][-1:]
    contents = {entry.path: entry.local_path for entry in last.manifest.contents}
    (table_file,) = [path for path in contents if path.endswith(".table.json")]
    table = json.loads(Path(contents[table_file]).read_text())
    assert table["columns"] == ["step", "caption", "teacher", "student", "clip"] and len(table["data"]) == 3
    assert len({row[1] for row in table["data"]}) == 3 and all(
        row[0] == 2 and -1 <= row[4] <= 1 for row in table["data"]
    )
    images = [cell for row in table["data"] for cell in row[2:4]]
    assert all(cell["_type"] == "image-file" and cell["path"] in contents for cell in images)
    assert len({cell["path"] for cell in images}) == 6  # teacher and student differ, prompt by prompt
    assert len(list((tmp_path / "run" / "eval" / "teacher").glob("*.png"))) == 3  # drawn once
