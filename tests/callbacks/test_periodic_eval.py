"""PeriodicEval: evaluation during training, on schedule, logged, keeping the best checkpoint."""

import csv
import math

import pytest
import torch
from helpers.eval_data import coco_json, write_real
from helpers.trainer import cpu_trainer

from bksdm.eval.extractors import StandInCLIP, StandInInception


def test_periodic_eval_fires_on_schedule_logs_and_keeps_the_best_checkpoint(tmp_path):
    import functools

    from lightning.pytorch.loggers import CSVLogger

    from bksdm.callbacks.periodic_eval import PeriodicEval
    from bksdm.data.datamodule import SyntheticDataModule
    from bksdm.distill.losses import DistillLoss
    from bksdm.distill.module import DistillModule

    write_real(tmp_path / "real")
    callback = PeriodicEval(
        prompts=str(coco_json(tmp_path / "captions.json")), real=str(tmp_path / "real"), features=StandInInception(),
        clip=StandInCLIP(), dirpath=tmp_path / "eval", num_images=4, every_n_steps=2, num_inference_steps=2,
        batch_size=4, cache_dir=tmp_path / "cache", cmmd=True, fd_dinov2=StandInInception(seed=1),
    )  # fmt: skip
    module = DistillModule(
        teacher_source="builtin:toy", removal="small", taps=[], loss=DistillLoss(1.0, 1.0, 0.0),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        frozen_dtype="bfloat16",  # the CPU default (auto): an fp32 student drawn between bf16 parts
    )  # fmt: skip
    trainer = cpu_trainer(
        tmp_path, max_steps=5, logger=CSVLogger(tmp_path, name="csv", version=""), callbacks=[callback]
    )
    trainer.fit(module, datamodule=SyntheticDataModule(num_samples=16, batch_size=2))
    assert [r["step"] for r in callback.history] == [2, 4, 5]  # every 2 steps, and at the end
    assert all(math.isfinite(r["fid"]) and -1 <= r["clip"] <= 1 and r["cmmd"] >= 0 for r in callback.history)
    assert (tmp_path / "eval" / "best.ckpt").is_file()
    assert callback.best_fid == min(r["fid"] for r in callback.history)
    assert len(list((tmp_path / "eval" / "step_0000004").glob("*.png"))) == 4
    with (tmp_path / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows if r.get("eval/fid")] == [2, 4, 5]
    assert [int(r["step"]) for r in rows if r.get("eval/cmmd")] == [2, 4, 5]
    assert [int(r["step"]) for r in rows if r.get("eval/fd_dinov2")] == [2, 4, 5]


def test_only_rank_zero_computes_the_real_statistics_and_hands_them_on(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from bksdm.callbacks import periodic_eval
    from bksdm.eval.metrics import FeatureStats

    computed, sent = (
        [],
        FeatureStats(torch.zeros(64, dtype=torch.float64), torch.eye(64, dtype=torch.float64), 12),
    )
    monkeypatch.setattr(periodic_eval, "real_statistics", lambda *args: computed.append(args) or sent)
    callback = periodic_eval.PeriodicEval(
        prompts=str(coco_json(tmp_path / "captions.json")), real=str(tmp_path / "real"), features=StandInInception(),
        clip=StandInCLIP(), dirpath=tmp_path / "eval", num_images=4,
    )  # fmt: skip
    received = []
    strategy = SimpleNamespace(
        broadcast=lambda value, src: received.append(value) or {"fid": sent}, root_device=torch.device("cpu")
    )
    for rank in (1, 0):
        callback.on_fit_start(
            SimpleNamespace(world_size=2, is_global_zero=rank == 0, strategy=strategy), None
        )
        assert callback.real_stats is sent
    assert received == [None, {"fid": sent}]  # what ranks 1 and 0 handed to the broadcast from rank 0
    assert len(computed) == 1  # rank 0's


@pytest.mark.slow
def test_two_ddp_processes_log_the_fid_and_clip_of_one(tmp_path):
    """Each rank scores its half of the prompts; the metric states are summed across ranks."""
    from helpers.train_config import read_metrics, run_cli

    write_real(tmp_path / "real")
    coco_json(tmp_path / "captions.json")
    common = ["experiment=demo", "data.num_samples=8", "trainer.max_steps=1", "optim.optimizer.lr=0",
              "callbacks=with_eval", "eval=standin", f"callbacks.periodic_eval.prompts={tmp_path}/captions.json",
              f"callbacks.periodic_eval.real={tmp_path}/real", "callbacks.periodic_eval.num_images=4",
              "callbacks.periodic_eval.num_inference_steps=2", "callbacks.periodic_eval.batch_size=2",
              f"callbacks.periodic_eval.cache_dir={tmp_path}/cache", "callbacks.sample_grid=null"]  # fmt: skip
    runs = {"one": ["data.batch_size=4"],
            "ddp": ["data.batch_size=2", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]}  # fmt: skip
    scores = {}
    for name, overrides in runs.items():
        done = run_cli(
            *common, *overrides, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path, OMP_NUM_THREADS="1"
        )
        assert done.returncode == 0, done.stderr[-3000:]
        rows = [r for r in read_metrics(tmp_path / name / "csv" / "metrics.csv") if r.get("eval/fid")]
        scores[name] = [(float(r["eval/fid"]), float(r["eval/clip"])) for r in rows]
        assert len(list((tmp_path / name / "eval" / "step_0000001").glob("*.png"))) == 4
    assert len(scores["one"]) == len(scores["ddp"]) == 1
    assert scores["ddp"][0] == pytest.approx(scores["one"][0], rel=1e-6)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # written once, read by the second run
