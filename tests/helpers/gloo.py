"""The process group of the tests that spawn ranks: gloo over a file, torn down once every rank is done."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist


@contextmanager
def gloo_group(rank: int, init_file: str, world_size: int = 2) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        yield
        # a rank that tears gloo down while its peer still reads the last collective can abort the peer
        # (seen once under load: SIGABRT, "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
