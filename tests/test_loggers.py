"""Loggers: an offline W&B run and a TensorBoard run hold the loss terms, the tap losses, the sample grid
and the resolved config (read back with W&B's record format and TensorBoard's event reader)."""

import struct

import pytest
from test_train import FAST, config

from bksdm import train as train_app

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")


def read_records(path):
    """W&B's run file: a 7-byte header, then leveldb-log style chunks (crc, length, type) of protobuf
    Records in 32 KiB blocks; types 1 (full) and 4 (last) end a record."""
    data, position, pending = path.read_bytes(), 7, b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        position += 7
        if length == 0 and kind == 0:
            break
        pending += data[position : position + length]
        position += length
        if kind in (1, 4):
            record = wandb_pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_offline_wandb_run_holds_metrics_grid_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = config(
        "experiment=demo", *FAST, "trainer.max_steps=2", "trainer.log_every_n_steps=1", "logger=wandb",
        "logger.mode=offline", "logger.tags=[test]", output_dir=tmp_path / "run",
    )  # fmt: skip
    train_app.train(cfg)
    run_file = next((tmp_path / "run").rglob("offline-run-*/run-*.wandb"))
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
    assert {"lr-AdamW", "samples/_type"} <= keys  # learning rate and the sample grid
    grids = list(run_file.parent.glob("files/media/images/samples_*.png"))
    assert grids
    config_keys = {item.key for r in records if r.HasField("config") for item in r.config.update}
    assert "config" in config_keys
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
        "lr-AdamW",
        "data/skipped",
    } <= scalars
    (grid,) = events.Images("samples")
    assert grid.step == 2 and grid.width == 2 * 128 and grid.encoded_image_string.startswith(b"\x89PNG")
    assert "config" in (tmp_path / "tensorboard" / "hparams.yaml").read_text()


def test_a_resumed_run_logs_into_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = [*FAST, "experiment=demo", "logger=wandb", "logger.mode=offline", "callbacks.sample_grid=null",
           "callbacks.export_student=null", "callbacks.checkpoint.every_n_train_steps=1"]  # fmt: skip
    train_app.train(config(*run, "trainer.max_steps=1", output_dir=tmp_path / "run"))
    train_app.train(config(*run, "trainer.max_steps=2", "resume=auto", output_dir=tmp_path / "run"))
    run_id = (tmp_path / "run" / "wandb_run_id").read_text().strip()
    runs = sorted((tmp_path / "run").rglob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # one W&B run, resumed
