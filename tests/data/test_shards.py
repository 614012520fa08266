"""Webdataset shards: img2dataset's format, local/pipe:/http URLs, rank splitting, resampling, bad members."""

import functools
import gc
import http.server
import threading
import warnings
from collections import Counter

import pytest
import torch
from helpers.data import write_shards
from helpers.trainer import cpu_trainer

from bksdm.data.datamodule import ShardDataModule
from bksdm.data.shards import ShardStream, decode_sample, expand_shards, shard_samples
from bksdm.data.skips import SKIP_KINDS, UnreadableSource, is_skip
from bksdm.data.transforms import ImageTransform
from bksdm.distill.losses import DistillLoss
from bksdm.distill.module import DistillModule


def decoder(min_size=32):
    return functools.partial(
        decode_sample, transform=ImageTransform(64, random_flip=False), min_size=min_size
    )


def one_pass(urls, **kwargs):
    return list(shard_samples(urls, decoder(), resampled=False, shuffle_buffer=0, **kwargs))


def test_one_pass_decodes_every_format_and_counts_bad_members_exactly(tmp_path):
    expected, keys = write_shards(tmp_path)
    samples = one_pass(str(tmp_path / "{00000..00003}.tar"))
    skipped = Counter(s["skipped"] for s in samples if is_skip(s))
    good = [s for s in samples if not is_skip(s)]
    assert skipped == expected
    assert sorted(s["key"] for s in good) == sorted(keys)
    assert all(s["pixel_values"].shape == (3, 64, 64) and s["caption"] == f"sample {s['key']}" for s in good)
    assert good[0]["url"] == f"http://x/{good[0]['key']}"


def test_a_truncated_shard_keeps_what_precedes_the_cut(tmp_path):
    _, keys = write_shards(tmp_path, shards=1, bad=False, truncate_last=True)
    samples = one_pass(str(tmp_path / "00000.tar"))
    good = [s["key"] for s in samples if not is_skip(s)]
    assert 0 < len(good) < len(keys) and good == keys[: len(good)]
    assert Counter(s["skipped"] for s in samples if is_skip(s))["broken_member"] >= 1


def test_every_shard_file_is_closed_when_its_samples_end_or_the_reader_stops(tmp_path):
    """webdataset leaves each shard's file (and a pipe's command) for the garbage collector to find: a
    ResourceWarning per shard."""
    write_shards(tmp_path, shards=2, bad=False)
    files = [str(tmp_path / "{00000..00001}.tar"), f"pipe:cat {tmp_path}/00000.tar"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for urls in files:
            assert one_pass(urls)  # every shard read to its end
            stopped = iter(shard_samples(urls, decoder(), resampled=False, shuffle_buffer=0))
            next(stopped)  # an epoch that ends inside a shard
            del stopped
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_two_ranks_split_the_shards_into_disjoint_samples(tmp_path):
    _, keys = write_shards(tmp_path, shards=4, bad=False)
    ranks = [
        {s["key"] for s in one_pass(sorted(map(str, tmp_path.glob("*.tar"))), rank=r, world_size=2)}
        for r in (0, 1)
    ]
    assert not ranks[0] & ranks[1]
    assert ranks[0] | ranks[1] == set(keys)


def test_resampled_streams_differ_per_rank_and_epochs_have_a_defined_length(tmp_path):
    write_shards(tmp_path, shards=4, bad=False)
    urls = str(tmp_path / "{00000..00003}.tar")
    streams = [
        ShardStream(epoch_samples=40, urls=urls, decode=decoder(), rank=r, world_size=2, seed=7)
        for r in (0, 1)
    ]
    firsts = [[s["key"] for s in stream] for stream in streams]
    assert [len(f) for f in firsts] == [20, 20]
    assert firsts[0] != firsts[1]
    again = [
        s["key"]
        for s in ShardStream(epoch_samples=40, urls=urls, decode=decoder(), rank=0, world_size=2, seed=7)
    ]
    assert again == firsts[0]  # a stream is a function of its seed
    second_epoch = [s["key"] for s in streams[0]]
    assert len(second_epoch) == 20 and second_epoch != firsts[0]  # each epoch draws a new order
    resumed = ShardStream(epoch_samples=40, urls=urls, decode=decoder(), rank=0, world_size=2, seed=7)
    resumed.resume_at(global_step=12)
    assert [s["key"] for s in resumed] != firsts[0]  # a resumed run does not replay its first order


def test_pipe_and_http_urls(tmp_path):
    _, keys = write_shards(tmp_path, shards=2, bad=False)
    piped = one_pass([f"pipe:cat {tmp_path / '00000.tar'}", f"pipe:cat {tmp_path / '00001.tar'}"])
    assert sorted(s["key"] for s in piped) == sorted(keys)

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        served = one_pass(f"http://127.0.0.1:{port}/{{00000..00001}}.tar")
    finally:
        server.shutdown()
    assert sorted(s["key"] for s in served) == sorted(keys)


def test_empty_urls_are_an_error():
    with pytest.raises(ValueError, match=r"data\.urls is empty"):
        ShardDataModule(urls=[])


def test_shard_lists_as_users_write_them(tmp_path):
    write_shards(tmp_path / "a", shards=3, bad=False)
    write_shards(tmp_path / "b", shards=2, bad=False)
    a = [str(tmp_path / "a" / f"{i:05d}.tar") for i in range(3)]
    b = [str(tmp_path / "b" / f"{i:05d}.tar") for i in range(2)]
    assert expand_shards(str(tmp_path / "a" / "{00000..00002}.tar")) == a  # brace pattern
    assert expand_shards(str(tmp_path / "a")) == a  # a folder of shards
    assert expand_shards(str(tmp_path / "a" / "*.tar")) == a  # a glob
    assert expand_shards([str(tmp_path / "a"), str(tmp_path / "b" / "0000[01].tar")]) == a + b  # a list
    assert expand_shards(f"{tmp_path / 'a' / '00000.tar'}::{tmp_path / 'b'}") == a[:1] + b  # webdataset's ::
    assert expand_shards(["pipe:cat x.tar", "https://host/{0..1}.tar"]) == [
        "pipe:cat x.tar", "https://host/0.tar", "https://host/1.tar",
    ]  # fmt: skip


def test_missing_shards_are_all_named_before_anything_is_loaded(tmp_path):
    write_shards(tmp_path, shards=3, bad=False)
    pattern = str(tmp_path / "{00000..00019}.tar")  # 20 named, 3 written
    with pytest.raises(FileNotFoundError, match=r"data\.urls=.*: 17 of 20 shards do not exist: ") as error:
        ShardDataModule(urls=pattern)
    assert all(f"{i:05d}.tar" in str(error.value) for i in range(3, 20))
    assert "00002.tar," not in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"the folder .*empty' holds no \.tar shard"):
        ShardDataModule(urls=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"the pattern .*\*\.tgz' matches no file"):
        ShardDataModule(urls=str(tmp_path / "*.tgz"))


def module_without_features():
    return DistillModule(
        teacher_source="builtin:toy", removal="tiny", taps=[], loss=DistillLoss(1.0, 1.0, 0.0),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )  # fmt: skip


def test_a_source_that_never_opens_stops_the_run_instead_of_spinning(tmp_path):
    # resampled: the stream never ends, so only the streak of unusable samples can stop it
    datamodule = ShardDataModule(urls=["pipe:false"], resolution=128, batch_size=4, num_workers=0,
                                 epoch_samples=10_000, max_consecutive_bad=16)  # fmt: skip
    trainer = cpu_trainer(tmp_path, max_steps=1000)
    with pytest.raises(UnreadableSource, match=r"16 samples in a row from data\.urls=\['pipe:false'\] \(1 shard\) "
                       r"could not be used \(16 skipped: 16 unreadable_shard; data\.max_consecutive_bad=16\)"):  # fmt: skip
        trainer.fit(module_without_features(), datamodule=datamodule)


def test_a_source_that_turns_bad_mid_run_stops_after_the_limit(tmp_path):
    write_shards(tmp_path, shards=1, per_shard=8, bad=False)
    for i in range(1, 30):  # then shards of garbage only
        (tmp_path / f"{i:05d}.tar").write_bytes(b"garbage" * 100)
    datamodule = ShardDataModule(urls=str(tmp_path / "{00000..00029}.tar"), resolution=128, batch_size=4,
                                 num_workers=0, resampled=False, shuffle_buffer=0, max_consecutive_bad=8)  # fmt: skip
    module = module_without_features()
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    with pytest.raises(UnreadableSource, match=r"8 samples in a row .* after 8 good ones"):
        trainer.fit(module, datamodule=datamodule)
    assert module.skips.good == 8  # the good shard was trained on first


def test_training_from_shards_with_workers_counts_skips(tmp_path):
    expected, _ = write_shards(tmp_path / "shards", shards=2)
    datamodule = ShardDataModule(
        urls=str(tmp_path / "shards" / "{00000..00002}.tar"), resolution=128, batch_size=4, num_workers=2,
        epoch_samples=None, resampled=False, shuffle_buffer=0, min_size=32,
    )  # fmt: skip
    module = module_without_features()
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, datamodule=datamodule)
    counts = dict(zip(SKIP_KINDS, module.skips.counts.tolist(), strict=True))
    assert counts == {k: expected.get(k, 0) for k in SKIP_KINDS}  # one exact pass over all shards
    assert module.skips.good == 12 and trainer.global_step >= 3
