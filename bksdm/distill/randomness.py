"""Per-sample randomness of a training step: each sample's latent sample, noise, timestep and caption
dropout come from its own generator, seeded by the sample seed its sampler gave it.

A sample then meets the same noise however the global batch is split over devices and micro-batches and
whenever a run is resumed, so two DDP ranks with batch 2 make the same update as one process with batch
4. Batches without sample seeds (streams) fall back to the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class SampleRandomness:
    """Random draws for ``len(sample_seeds)`` samples, one generator each, or the global generator of
    ``device`` when ``sample_seeds`` is None.

    The per-sample generators live on the host and each draw reaches ``device`` in one copy: a constant
    number of device operations per micro-batch, where generators on a GPU would launch a kernel per
    sample and draw (3 x batch tiny kernels a step). The host draws a few MB per micro-batch (512 px,
    batch 64: two latent-sized normals) while the device works on the queue. A sample's numbers are
    those of its own CPU generator on every device, so the same seed gives the same noise on a CPU and a
    GPU.
    """

    def __init__(self, sample_seeds: Sequence[int] | None, device: torch.device):
        self.device = torch.device(device)
        self.generators = (
            None if sample_seeds is None else [torch.Generator().manual_seed(int(s)) for s in sample_seeds]
        )

    def _to_device(self, rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(rows).to(self.device, non_blocking=True)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, ...) standard normal; row i from sample i's generator."""
        if self.generators is None:
            return torch.randn(tuple(shape), device=self.device, dtype=dtype)
        return self._to_device(
            [torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in self.generators]
        )

    def randint(self, high: int, count: int) -> torch.Tensor:
        """(B,) integers in [0, high)."""
        if self.generators is None:
            return torch.randint(0, high, (count,), device=self.device)
        return self._to_device([torch.randint(0, high, (1,), generator=g) for g in self.generators])

    def rand(self, count: int) -> torch.Tensor:
        """(B,) uniform in [0, 1), on the host (host-side decisions: no copy from the device)."""
        if self.generators is None:
            return torch.rand(count)
        return torch.cat([torch.rand((1,), generator=g) for g in self.generators])
