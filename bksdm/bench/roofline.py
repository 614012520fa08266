"""A step's roofline limit: the time its FLOPs take at the machine's matmul rate plus the time the bytes it
must move take at the machine's memory bandwidth (the faster of its probed passes, ``bksdm.bench.machine``).

The two are added, not overlapped: the optimizer and EMA passes are pure memory traffic with no matmul to
hide behind, and at small batches the U-Net passes are themselves bound by reading weights. The bytes
counted are the ones no implementation can avoid (activations are not counted, so the limit is a floor):

    per micro-batch  the frozen U-Net's weights read once as they are stored (and the VAE encoder's and text
                     encoder's when the step encodes its inputs; an FP8-stored teacher's at 1 B, though
                     diffusers' layerwise casting writes and reads a bf16 copy of each layer besides); the student's fp32 weights read by its
                     forward and again by its backward; its gradients written (read and written when they
                     accumulate over micro-batches)
    per step         the gradients read once for their norm (with clipping); AdamW reads weights,
                     gradients and both moments and writes weights and moments (28 B per parameter in
                     fp32); the EMA reads the average and the weights and writes the average (12 B),
                     once every ``distill.ema_every`` steps
"""

from __future__ import annotations

from dataclasses import dataclass

MASTER_BYTES = 4  # the student's weights, gradients, optimizer moments and EMA are fp32
ADAMW_BYTES = 7 * MASTER_BYTES  # read weight, gradient, two moments; write weight, two moments
EMA_BYTES = 3 * MASTER_BYTES  # read average and weight; write average


@dataclass(frozen=True)
class StepShape:
    """What one optimizer step touches: parameter counts and how the step runs."""

    student_params: int
    frozen_weight_bytes: int  # of the frozen parts that run each micro-batch (teacher, encoders if run)
    micro_batches: int = 1
    clip: bool = True
    ema: bool = True
    ema_every: int = 1  # optimizer steps per EMA averaging


def step_bytes(shape: StepShape) -> dict[str, int]:
    """Bytes moved per optimizer step by part, and their ``total``."""
    k, params = shape.micro_batches, shape.student_params
    gradient_writes = 1 + 2 * (k - 1)  # the first micro-batch writes them, each later one reads and writes
    parts = {
        "frozen_weights": k * shape.frozen_weight_bytes,
        "student_weights": 2 * k * params * MASTER_BYTES,  # forward and backward
        "gradients": (gradient_writes + shape.clip) * params * MASTER_BYTES,
        "optimizer": params * ADAMW_BYTES,
        "ema": params * EMA_BYTES * shape.ema // shape.ema_every,
    }
    parts["total"] = sum(parts.values())
    return parts


def roofline(
    flops_by_part: dict[str, int], flop_rates: dict[str, float], bytes_moved: int, bytes_per_s: float
) -> dict[str, float]:
    """Seconds the step cannot go below: ``flops_by_part`` (without ``total``) each at the matmul rate of
    the dtype it computes in (``flop_rates``: part -> FLOP/s), plus ``bytes_moved`` at ``bytes_per_s``."""
    compute = sum(flops / flop_rates[part] for part, flops in flops_by_part.items() if part != "total")
    memory = bytes_moved / bytes_per_s
    return {"compute_s": compute, "memory_s": memory, "limit_s": compute + memory}
