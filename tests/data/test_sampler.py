"""ResumableSampler: resuming mid-epoch, a new order each epoch, ranks without overlap."""

from bksdm.data.sampler import ResumableSampler


def test_sampler_resumes_mid_epoch_and_splits_ranks_without_overlap():
    whole = list(ResumableSampler(10, seed=3))
    assert sorted(i for i, _ in whole) == list(range(10)) and len({d for _, d in whole}) == 10
    resumed = ResumableSampler(10, seed=3)
    resumed.resume_from(epoch=0, consumed=4)
    assert list(resumed) == whole[4:] and len(resumed) == 10  # the length stays the epoch's
    resumed.set_epoch(1)
    assert len(list(resumed)) == 10  # only the resumed epoch is shortened
    next_epoch = ResumableSampler(10, seed=3)
    next_epoch.set_epoch(1)
    assert [i for i, _ in next_epoch] != [i for i, _ in whole]  # a new order every epoch
    ranks = [list(ResumableSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(share) == 4 for share in ranks)  # 10 over 3 ranks: padded to 12
    assert {i for share in ranks for i, _ in share} == set(range(10))
