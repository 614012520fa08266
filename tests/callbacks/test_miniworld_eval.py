"""The mini world's periodic evaluation (callbacks=with_miniworld_eval) scores the student during training."""

import json

from helpers.train_config import config, read_metrics


def test_periodic_miniworld_eval_scores_the_student_during_training(tmp_path):
    from bksdm import train as train_app

    cfg = config(
        "experiment=demo", "callbacks=with_miniworld_eval", "trainer.max_steps=2", "data.batch_size=4",
        "trainer.log_every_n_steps=1", "callbacks.sample_grid=null", "callbacks.miniworld_eval.every_n_steps=1",
        "callbacks.miniworld_eval.num_images=18", "callbacks.miniworld_eval.num_real=50",
        "callbacks.miniworld_eval.num_latents=8", "callbacks.miniworld_eval.num_inference_steps=2",
        output_dir=tmp_path,
    )  # fmt: skip
    train_app.train(cfg)
    history = [json.loads(line) for line in (tmp_path / "eval" / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [
        0,
        1,
        2,
    ]  # the untrained student, each step, no repeat at the end
    errors = ("error_to_teacher", "error_to_teacher/unconditional", "error_to_teacher/guided")
    assert all(0 <= row["accuracy/all"] <= 1 and all(row[k] > 0 for k in errors) for row in history)
    logged = [row for row in read_metrics(tmp_path / "csv" / "metrics.csv") if row.get("eval/fid")]
    assert len(logged) == 3
