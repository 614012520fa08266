"""The results table (python -m bksdm.eval.table): each result beside the paper's numbers."""

import json

import pytest


def test_results_table_puts_the_paper_numbers_beside_each_result(tmp_path, capsys):
    from bksdm.eval.table import main

    for name, model, fid in (("a", "nota-ai/BK-SDM-Small", 17.3), ("b", "outputs/runs/x/student", 25.0)):
        (tmp_path / name).mkdir()
        metrics = {"model": model, "fid": fid, "is": 30.0, "clip": 0.26, "num_images": 30000}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    main([str(tmp_path / "a"), str(tmp_path / "b" / "metrics.json"), "--out", str(tmp_path / "table.md")])
    rows = capsys.readouterr().out.splitlines()
    assert (
        rows[2]
        == "| nota-ai/BK-SDM-Small (BK-SDM-Small) | 17.30 | 30.00 | 0.2600 | 30000 | 16.98 | 31.68 | 0.2677 |"
    )
    assert rows[3].endswith("| 30000 | - | - | - |")
    assert (tmp_path / "table.md").read_text().splitlines() == rows
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match=r"c\.json' is not a bksdm evaluation result"):
        main([str(tmp_path / "c.json")])
    with pytest.raises(FileNotFoundError, match=r"give metrics\.json files or evaluation folders"):
        main([str(tmp_path / "none")])


def test_mini_world_results_get_a_table_of_their_own(tmp_path, capsys):
    from bksdm.eval.table import main

    scores = {f"accuracy/{n}": 0.5 for n in ("shape", "colour", "position", "size", "all")}
    errors = {
        k: 0.01 for k in ("error_to_teacher", "error_to_teacher/unconditional", "error_to_teacher/guided")
    }
    world = {"protocol": "miniworld", "model": "student", "fid": 12.0, "num_images": 180, **scores, **errors}
    coco = {"protocol": "coco30k", "model": "m", "fid": 20.0, "is": 30.0, "clip": 0.26, "num_images": 10}
    older = {k: v for k, v in world.items() if k != "protocol"}  # before metrics.json named its protocol
    for name, result in (("world", world), ("coco", coco), ("older", older)):
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    main([str(tmp_path / f"{name}.json") for name in ("world", "coco", "older")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model | FID | IS | CLIP |") and lines[2].startswith("| m | 20.00 |")
    assert lines[4].startswith("| model | acc. shape |") and len(lines) == 8
    assert (
        lines[6]
        == lines[7]
        == ("| student | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 12.00 | 0.01000 | 0.01000 | 0.01000 | 180 |")
    )
