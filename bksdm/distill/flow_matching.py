"""The flow-matching objective of FLUX and SD3 teachers, in plain torch: noisy latents on the straight path
from data to noise, the velocity along it as the target, timesteps drawn as the teacher's scheduler would.

    sigma ~ the scheduler's sigmas at indices u * T, u ~ logit-normal(0, 1)
    noisy = (1 - sigma) * latents + sigma * noise,    target = noise - latents

The logit-normal density is SD3's (Esser et al. 2024) and diffusers' training scripts' default
(``compute_density_for_timestep_sampling(weighting_scheme="logit_normal")``, drawn here from each sample's
own generator); indexing the scheduler's sigma table makes its static ``shift`` (SD3's 3.0) apply as it does
when the teacher samples, and a scheduler with dynamic shifting (FLUX) trains unshifted, as diffusers' FLUX
scripts do. The timesteps handed to the denoisers are the table's (sigma * 1000).
"""

from __future__ import annotations

import torch

from bksdm.distill.randomness import SampleRandomness


def is_flow_matching(scheduler) -> bool:
    """Whether a teacher's training scheduler is a flow-matching one (FLUX, SD3)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def flow_matching_noise(
    scheduler,
    latents: torch.Tensor,
    randomness: SampleRandomness,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy latents (B, C, h, w), timesteps (B,) in (0, 1000] and the velocity target (B, C, h, w).

    ``scheduler``: a ``FlowMatchEulerDiscreteScheduler`` as constructed (its table before any
    ``set_timesteps``, which inference calls on its own copy)."""
    count = latents.shape[0]
    noise = randomness.randn(latents.shape, latents.dtype)
    u = torch.sigmoid(logit_mean + logit_std * randomness.randn((count,)))
    steps = scheduler.config.num_train_timesteps
    indices = (u * steps).long().clamp(max=steps - 1).cpu()
    sigmas = (
        scheduler.sigmas[indices].to(latents.device, latents.dtype).view(count, *[1] * (latents.ndim - 1))
    )
    timesteps = scheduler.timesteps[indices].to(latents.device)
    noisy = (1 - sigmas) * latents + sigmas * noise
    return noisy, timesteps, noise - latents
