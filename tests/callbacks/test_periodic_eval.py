"""PeriodicEval: evaluation during training, on schedule, logged, keeping the best checkpoint."""

import csv
import math

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
        batch_size=4, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    module = DistillModule(
        teacher_source="builtin:toy", removal="small", taps=[], loss=DistillLoss(1.0, 1.0, 0.0),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    )  # fmt: skip
    trainer = cpu_trainer(
        tmp_path, max_steps=5, logger=CSVLogger(tmp_path, name="csv", version=""), callbacks=[callback]
    )
    trainer.fit(module, datamodule=SyntheticDataModule(num_samples=16, batch_size=2))
    assert [r["step"] for r in callback.history] == [2, 4, 5]  # every 2 steps, and at the end
    assert all(math.isfinite(r["fid"]) and -1 <= r["clip"] <= 1 for r in callback.history)
    assert (tmp_path / "eval" / "best.ckpt").is_file()
    assert callback.best_fid == min(r["fid"] for r in callback.history)
    assert len(list((tmp_path / "eval" / "step_0000004").glob("*.png"))) == 4
    with (tmp_path / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows if r.get("eval/fid")] == [2, 4, 5]
