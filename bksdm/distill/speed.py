"""How the models of a training step run: attention kernel, memory format, compilation, TF32.

Each setting is a switch of the training config (``distill.*``, ``tf32``) whose effect
``python -m bksdm.bench`` measures; the fast choice is the default.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

ATTENTION = {"sdpa": AttnProcessor2_0, "eager": AttnProcessor}


def check_choice(name: str, value, accepted) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r}: accepted are {list(accepted)}")


def check_speed_settings(settings) -> None:
    """The switches of ``distill.*`` that this module owns, checked before anything is loaded."""
    if "attention" in settings:
        check_choice("distill.attention", settings["attention"], ATTENTION)
    for name in ("channels_last", "compile"):
        if name in settings:
            check_choice(f"distill.{name}", settings[name], (True, False, "auto"))


def set_attention(model: torch.nn.Module, kind: str) -> None:
    """``sdpa``: PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels);
    ``eager``: the explicit softmax(QK^T)V of the reference implementation, which materialises the
    (heads, tokens, tokens) attention matrix."""
    check_choice("attention", kind, ATTENTION)
    if hasattr(model, "set_attn_processor"):
        model.set_attn_processor(ATTENTION[kind]())


def resolve_auto(value: bool | str, device: torch.device) -> bool:
    """``auto`` switches that pay off on a GPU and not on a CPU: on for CUDA, off otherwise."""
    return device.type == "cuda" if value == "auto" else bool(value)


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
