"""The evaluation's prompt rule: COCO captions by image id, the lowest annotation, evenly spread."""

import csv

import pytest
from helpers.eval_data import coco_json

from bksdm.eval.prompts import load_prompts, prompt_rule, spread


def test_prompt_rule_sorted_by_image_id_lowest_annotation_evenly_spread(tmp_path):
    pairs = load_prompts(coco_json(tmp_path / "captions.json"), num_images=4)
    ids = [int(name[-16:-4]) for name, _ in pairs]
    assert ids == [989, 992, 995, 998]  # 12 images 989..1000 sorted; indices 0, 3, 6, 9
    assert pairs[0][1] == "first caption of 989"
    assert (
        spread(list(range(40504)), 30000)[-1] == 40502
        and len(set(spread(list(range(40504)), 30000))) == 30000
    )
    with (tmp_path / "prompts.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["file_name", "text"], ["a.jpg", "x"], ["a.jpg", "y"], ["b.jpg", "z"]])
    assert load_prompts(tmp_path / "prompts.csv") == [("a.jpg", "x"), ("b.jpg", "z")]
    with pytest.raises(FileNotFoundError, match=r"captions_val2014\.json"):
        load_prompts(tmp_path / "none.json")


def test_more_images_than_captions_is_an_error_naming_both(tmp_path):
    path = coco_json(tmp_path / "captions.json")
    count = len(load_prompts(path))
    with pytest.raises(
        ValueError, match=rf"num_images={count + 1} but .*captions.json holds {count} captions"
    ):
        load_prompts(path, num_images=count + 1)
    assert len(load_prompts(path, num_images=None)) == count


def test_the_authors_metadata_csv_is_taken_row_by_row_in_file_order(tmp_path):
    # their file lists val2014 images sorted by id, one caption each; here deliberately not sorted, to
    # show that the file's order is kept rather than re-sorted
    rows = [("COCO_val2014_000000000073.jpg", "a motorcycle parked"), ("COCO_val2014_000000000042.jpg", "a dog"),
            ("COCO_val2014_000000000074.jpg", "a picture of a dog")]  # fmt: skip
    path = tmp_path / "metadata.csv"
    path.write_text("file_name,text\n" + "".join(f"{name},{text}\n" for name, text in rows))
    assert load_prompts(path, 3) == rows == load_prompts(path, None)
    assert "the paper's prompts" in prompt_rule(path) and "approximation" in prompt_rule("captions.json")
