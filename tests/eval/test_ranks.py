"""An evaluation split over the ranks of a world (bksdm.eval.ranks): shares, rows gathered in order, and
the real statistics, real embeddings and per-image scores of two gloo ranks equal to one process's."""

import csv
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers.eval_data import write_real
from helpers.gloo import gloo_group

from bksdm.eval.extractors import StandInCLIP, StandInInception
from bksdm.eval.ranks import contiguous_share, gather_rows, rank_and_size, strided_share
from bksdm.eval.scoring import real_embeddings, real_statistics, score_images


def test_without_a_world_one_rank_holds_everything():
    assert rank_and_size() == (0, 1)
    assert contiguous_share(5) == strided_share(5) == range(5)
    rows = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(gather_rows(rows), rows)


def _two_ranks(rank: int, init_file: str, folder: str, results) -> None:
    torch.set_num_threads(1)
    with gloo_group(rank, init_file):
        real = f"{folder}/real"
        extractor, clip = StandInInception(), StandInCLIP()
        stats = real_statistics(real, extractor, 64, f"{folder}/cache", batch_size=2, split_over_ranks=True)
        embeddings = real_embeddings(real, clip, 64, None, batch_size=2, split_over_ranks=True)
        gathered = gather_rows(torch.full((rank + 1, 2), float(rank)))  # 1 row of rank 0, 2 of rank 1
        paths = sorted(Path(real).glob("*.jpg"))
        captions = [f"caption {i}" for i in range(len(paths))]
        mine = strided_share(len(paths))
        scores = score_images(
            paths, captions, extractor, clip, stats, 64, is_splits=2, batch_size=2,
            per_image=f"{folder}/clip_scores.csv", indices=mine,
        )  # fmt: skip
        results[rank] = (contiguous_share(12), mine, stats, embeddings, gathered, scores)


def test_two_ranks_split_the_real_images_and_score_as_one_process(tmp_path):
    write_real(tmp_path / "real")
    extractor, clip = StandInInception(), StandInCLIP()
    stats = real_statistics(tmp_path / "real", extractor, 64, batch_size=2)
    embeddings = real_embeddings(tmp_path / "real", clip, 64, batch_size=2)
    paths = sorted((tmp_path / "real").glob("*.jpg"))
    captions = [f"caption {i}" for i in range(len(paths))]
    one = tmp_path / "one.csv"
    scores = score_images(paths, captions, extractor, clip, stats, 64, 2, batch_size=2, per_image=one)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_two_ranks, args=(str(tmp_path / "init"), str(tmp_path), results), nprocs=2)
        results = dict(results)
    assert [results[r][:2] for r in (0, 1)] == [
        (range(0, 6), range(0, 12, 2)),
        (range(6, 12), range(1, 12, 2)),
    ]
    for rank in (0, 1):
        _, _, split_stats, split_embeddings, gathered, split_scores = results[rank]
        torch.testing.assert_close(split_stats.cov, stats.cov, rtol=1e-12, atol=1e-12)
        assert split_stats.count == 12
        torch.testing.assert_close(split_embeddings, embeddings, rtol=1e-12, atol=1e-12)  # in file order
        assert torch.equal(gathered, torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        assert split_scores == pytest.approx(scores, rel=1e-9)
    assert len(list((tmp_path / "cache").glob("real-*.npz"))) == 1  # written by rank 0
    with open(one) as a, open(tmp_path / "clip_scores.csv") as b:
        assert list(csv.reader(b)) == list(csv.reader(a))  # rank 0 wrote every rank's rows, in index order
