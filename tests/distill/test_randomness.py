"""Per-sample randomness: a sample's draws follow its seed alone, and reach the device in a constant
number of operations however large the batch."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bksdm.distill.randomness import SampleRandomness


def draws(seeds, device="cpu"):
    randomness = SampleRandomness(seeds, device)
    return (
        randomness.randn((len(seeds), 4, 8, 8)),
        randomness.randint(1000, len(seeds)),
        randomness.rand(len(seeds)),
    )


def test_a_samples_draws_follow_its_seed_however_the_batch_is_split():
    whole = draws([11, 22, 33, 44])
    halves = [draws([11, 22]), draws([33, 44])]
    for i, part in enumerate(whole):
        torch.testing.assert_close(part, torch.cat([half[i] for half in halves]), rtol=0, atol=0)
    assert not torch.equal(whole[0][0], whole[0][1])  # samples differ from each other


class DeviceOperations(TorchDispatchMode):
    """Counts the operations whose results lie on ``device``."""

    def __init__(self, device: str):
        super().__init__()
        self.device, self.count = device, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += any(
            isinstance(t, torch.Tensor) and t.device.type == self.device for t in tree_leaves(out)
        )
        return out


@pytest.mark.parametrize("batch", [2, 16])
def test_each_draw_of_a_micro_batch_is_one_device_operation_at_any_batch_size(batch):
    # "meta" stands in for a GPU: what runs there is counted, what the host does is not
    with DeviceOperations("meta") as ops:
        noise, timesteps, dropout = draws(list(range(batch)), device="meta")
    assert ops.count == 2  # a copy each for the normals and the timesteps; the dropout draw stays on the host
    assert noise.device.type == timesteps.device.type == "meta" and dropout.device.type == "cpu"
