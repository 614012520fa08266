"""ranks_agree: host-side flags agreed over a CPU process group, as DDP's ranks use it every step."""

import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.gloo import gloo_group

from bksdm.training.host_sync import ranks_agree


def _agree(rank: int, init_file: str, results) -> None:
    with gloo_group(rank, init_file):
        mine = rank == 0  # true on rank 0 only
        results[rank] = (ranks_agree(mine, every=True), ranks_agree(mine, every=False), ranks_agree(True))


def test_ranks_agree_on_every_or_any(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_agree, args=(str(tmp_path / "init"), results), nprocs=2)
        assert dict(results) == {0: (False, True, True), 1: (False, True, True)}


def test_without_a_distributed_world_the_flag_is_its_own_answer():
    assert not dist.is_initialized()
    assert ranks_agree(True) is True and ranks_agree(False, every=False) is False
