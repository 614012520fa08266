"""How the models of a training step run: attention kernel, memory format, compilation, TF32, the
frozen parts' inference mode and the EMA's update.

The settings are one object, ``SpeedSettings``, chosen by the ``speed`` config group: ``speed=fast``
(the default) or ``speed=reference`` (how the reference implementation runs its step);
``python -m bksdm.bench bench.mode=both`` measures the one against the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from bksdm.training.memory import keep_freed_host_memory

ATTENTION = {"sdpa": AttnProcessor2_0, "eager": AttnProcessor}


def check_choice(name: str, value, accepted) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r}: accepted are {list(accepted)}")


@dataclass(frozen=True)
class SpeedSettings:
    """The speed switches of a training step (``conf/speed/``).

    Args:
        attention: ``sdpa`` (PyTorch's fused attention) or ``eager`` (the reference's explicit softmax).
        channels_last: NHWC weights and activations for the U-Nets and VAE; ``frozen``: for the frozen
            teacher U-Net and VAE only; ``auto``: all of them on a GPU, the frozen ones on a CPU (oneDNN's
            bf16 convolutions run faster in NHWC, but the student's autocast casts of NHWC weights and
            its backward lose more than that gains there).
        compile: ``torch.compile`` the teacher and student U-Nets in place; ``auto``: on a GPU only.
        frozen_inference_mode: run the frozen parts under ``torch.inference_mode`` (False: called
            plainly, as the reference implementation does; their weights need no gradient, so autograd
            records nothing either way, but inference mode skips its bookkeeping).
        ema_foreach: update the EMA with one multi-tensor lerp (False: tensor by tensor, as diffusers'
            EMAModel in the reference implementation).
        tf32: TF32 tensor cores for fp32 matmuls and convolutions (Ampere and newer GPUs; no effect on CPU).
        keep_host_memory: the C library keeps the host memory a step frees for the next step instead of
            returning it to the OS (``bksdm.training.memory.keep_freed_host_memory``); ``auto``: when the
            step runs on a CPU, where it saves the page faults of every step's activations and gradients.
        gemm_convolutions: the student's bf16/fp16 convolutions with few output pixels and many input
            channels (the inner stages at small latents) computed as ``im2col`` and one matmul
            (``bksdm.distill.gemm_conv``), several times faster there than oneDNN's kernels, backward
            most; ``auto``: on a CPU. The frozen teacher keeps oneDNN's (its NHWC forward was as fast).
    """

    attention: str = "sdpa"
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"
    frozen_inference_mode: bool = True
    ema_foreach: bool = True
    tf32: bool = True
    keep_host_memory: bool | str = "auto"
    gemm_convolutions: bool | str = "auto"

    def __post_init__(self):
        check_choice("speed.attention", self.attention, ATTENTION)
        check_choice("speed.channels_last", self.channels_last, (True, False, "auto", "frozen"))
        for name in ("compile", "keep_host_memory", "gemm_convolutions"):
            check_choice(f"speed.{name}", getattr(self, name), (True, False, "auto"))
        for name in ("frozen_inference_mode", "ema_foreach", "tf32"):
            check_choice(f"speed.{name}", getattr(self, name), (True, False))

    def resolved(self, device: torch.device) -> dict:
        """The settings with ``auto`` decided for ``device``, as the step runs them."""
        return {
            "attention": self.attention,
            "channels_last": self.channels_last_models(device),
            "compile": resolve_auto(self.compile, device),
            "frozen_inference_mode": self.frozen_inference_mode,
            "ema_foreach": self.ema_foreach,
            "tf32": self.tf32 and torch.device(device).type == "cuda",
            "keep_host_memory": resolve_auto(self.keep_host_memory, device, on="cpu"),
            "gemm_convolutions": resolve_auto(self.gemm_convolutions, device, on="cpu"),
        }

    def channels_last_models(self, device: torch.device) -> str | None:
        """Which models run NHWC on ``device``: ``all``, ``frozen`` or None."""
        if self.channels_last == "auto":
            return "all" if torch.device(device).type == "cuda" else "frozen"
        return {True: "all", False: None}.get(self.channels_last, self.channels_last)

    def apply_to_process(self, device: torch.device) -> None:
        """The process-wide switches, for a step on ``device``: TF32 and the host memory's reuse."""
        set_tf32(self.tf32)
        if self.resolved(device)["keep_host_memory"]:
            keep_freed_host_memory()


def set_attention(model: torch.nn.Module, kind: str) -> None:
    """``sdpa``: PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels);
    ``eager``: the explicit softmax(QK^T)V of the reference implementation, which materialises the
    (heads, tokens, tokens) attention matrix."""
    check_choice("attention", kind, ATTENTION)
    if hasattr(model, "set_attn_processor"):
        model.set_attn_processor(ATTENTION[kind]())


def resolve_auto(value: bool | str, device: torch.device, on: str = "cuda") -> bool:
    """``auto`` switches pay off on one kind of device: on for that kind (``on``: CUDA unless said)."""
    return torch.device(device).type == on if value == "auto" else bool(value)


def to_channels_last(model: torch.nn.Module) -> None:
    """4-D weights in NHWC order, which cuDNN's tensor-core convolutions read without transposes."""
    model.to(memory_format=torch.channels_last)


def compile_in_place(model: torch.nn.Module) -> None:
    """``torch.compile`` of the model's forward, in place: parameter names, state dicts and the forward
    hooks of the feature taps stay as they are (no ``_orig_mod.`` wrapper)."""
    model.compile()


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions on Ampere and newer GPUs (no effect on CPU)."""
    precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
