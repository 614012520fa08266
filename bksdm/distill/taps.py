"""Feature taps: what named submodules of the teacher and the student output, paired for feature KD.

A tap records the first element of a module's output (a block returns ``(hidden_states, skips)``), or the
element a ``[i]`` after its path names (a FLUX or SD3 block returns ``(text stream, image stream)``:
``transformer_blocks.3[1]`` is the image stream), while a ``recording()`` window is open, exactly once per
window. Hooks sit on the unwrapped model, so DDP,
FSDP and ``torch.compile`` wrappers neither rename nor bypass them, and a forward recomputed by
gradient checkpointing during backward, which runs outside the window, records nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from bksdm.arch.report import sdxl_added_conditioning
from bksdm.arch.spec import RemovalSpec, resolve_removal
from bksdm.arch.student import (
    empty_unet,
    plain_config,
    stack_depths,
    student_config,
    teacher_layers_per_block,
    unit_map,
)


@dataclass(frozen=True)
class TapPair:
    """One feature-KD pair: a teacher tap path and the student tap path that imitates it (a module path,
    ``[i]`` after it for the i-th element of a tuple output), and the pair's weight in the feature term."""

    teacher: str
    student: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        """The metric name of the pair (``train/kd_feat/<name>``): the student path."""
        return self.student


def parse_tap_pairs(pairs: Sequence) -> list[TapPair]:
    """``[[teacher_path, student_path(, weight)], ...]`` or ``[{teacher: ..., student: ...(, weight: w)},
    ...]`` -> TapPairs."""
    parsed = []
    for pair in pairs:
        if isinstance(pair, TapPair):
            parsed.append(pair)
        elif isinstance(pair, Mapping) and {"teacher", "student"} <= set(pair) <= {
            "teacher",
            "student",
            "weight",
        }:
            parsed.append(
                TapPair(str(pair["teacher"]), str(pair["student"]), _weight(pair.get("weight", 1.0)))
            )
        elif isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) in (2, 3):
            parsed.append(TapPair(str(pair[0]), str(pair[1]), _weight(pair[2] if len(pair) == 3 else 1.0)))
        else:
            raise ValueError(
                f"tap pair {pair!r} is not accepted: write [teacher_path, student_path] or "
                "{teacher: teacher_path, student: student_path}, with a weight third if not 1"
            )
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"tap pairs name a student module twice: {names}")
    return parsed


def paper_tap_pairs(teacher_config: Mapping, removal: str | Mapping | RemovalSpec) -> list[TapPair]:
    """The paper's taps: every kept stage's down and up block output, on both sides.

    Where stages were dropped, the innermost kept down block has lost its downsampler, so its output
    is at another resolution than the teacher's; that pair taps the last attention's output projection
    instead (tiny: teacher ``down_blocks.2.attentions.1.proj_out`` with student
    ``down_blocks.2.attentions.0.proj_out``). The mid block is not tapped.
    """
    spec = resolve_removal(removal)
    config = student_config(teacher_config, spec)
    teacher_layers = teacher_layers_per_block(plain_config(teacher_config))
    kept = len(config["block_out_channels"])
    pairs = []
    for i, block_type in enumerate(config["down_block_types"]):
        if i == kept - 1 and spec.drop_innermost_stages:
            if not block_type.startswith("CrossAttn"):
                continue  # no same-resolution module to pair with
            pairs.append(
                TapPair(
                    f"down_blocks.{i}.attentions.{teacher_layers - 1}.proj_out",
                    f"down_blocks.{i}.attentions.{spec.layers_per_block - 1}.proj_out",
                )
            )
        else:
            pairs.append(TapPair(f"down_blocks.{i}", f"down_blocks.{i}"))
    for i in range(kept):
        pairs.append(TapPair(f"up_blocks.{i + spec.drop_innermost_stages}", f"up_blocks.{i}"))
    return pairs


def koala_tap_pairs(teacher_config: Mapping, removal: str | Mapping | RemovalSpec) -> list[TapPair]:
    """KOALA's taps (``taps: koala``): self-attention features at every stage. KOALA found the
    self-attention outputs the features that matter most for distilling SDXL, and did not publish which
    layers it tapped; here, in every block with attention (down, mid and up), the self-attention (``attn1``,
    (B, h*w, C)) of the last transformer layer of the block's last stack, paired with the last layer of
    the teacher stack that stack was copied from: the two stacks' ends, as block outputs pair block ends.
    """
    spec = resolve_removal(removal)
    units = unit_map(teacher_config, spec)
    teacher_depths = stack_depths(plain_config(teacher_config))
    last_stacks: dict[str, tuple[str, int]] = {}  # block -> its last stack and that stack's depth
    for stack, depth in stack_depths(student_config(teacher_config, spec)).items():
        last_stacks[stack.rsplit(".attentions.", 1)[0]] = (stack, depth)
    pairs = []
    for stack, depth in last_stacks.values():
        teacher_stack = stack if stack.startswith("mid_block.") else units[stack]
        pairs.append(
            TapPair(
                f"{teacher_stack}.transformer_blocks.{teacher_depths[teacher_stack] - 1}.attn1",
                f"{stack}.transformer_blocks.{depth - 1}.attn1",
            )
        )
    return pairs


def _weight(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"tap weight {value!r}: accepted are numbers >= 0")
    return float(value)


def depth_tap_pairs(teacher_config: Mapping, stacks: Mapping) -> list[TapPair]:
    """The taps of a depth-pruned transformer student (``taps: auto`` for FLUX, SD3 and PixArt teachers):
    every student block's output with the output of the teacher block it was copied from. FLUX's double
    and SD3's joint blocks output a text and an image stream, both tapped (``[0]`` and ``[1]``; SD3's last
    block has no text output); FLUX's single blocks the image tokens (``[1]``), PixArt's blocks their one
    output. Flux-Mini's feature loss is this, with its weights (``arch=flux_mini``)."""
    from bksdm.arch.depth import family, kept_blocks

    name = family(teacher_config)
    pairs = []
    for stack, kept in kept_blocks(teacher_config, stacks).items():
        for index, teacher_index in enumerate(kept):
            student, teacher = f"{stack}.{index}", f"{stack}.{teacher_index}"
            if name == "PixArtTransformer2DModel":
                pairs.append(TapPair(teacher, student))
                continue
            text_stream = stack == "transformer_blocks" and teacher_index < teacher_config["num_layers"] - (
                name == "SD3Transformer2DModel"
            )
            if text_stream:
                pairs.append(TapPair(f"{teacher}[0]", f"{student}[0]"))
            pairs.append(TapPair(f"{teacher}[1]", f"{student}[1]"))
    return pairs


TAP_RULES = {"auto": paper_tap_pairs, "koala": koala_tap_pairs}  # ``taps:`` names a rule or lists pairs


def resolve_tap_pairs(
    taps: str | Sequence | Mapping, teacher_config: Mapping, removal: str | Mapping | RemovalSpec
) -> list[TapPair]:
    """The pairs ``taps`` asks for: a rule's name (``auto``: the paper's block outputs, or every block of a
    depth-pruned transformer; ``koala``: self-attention features) applied to the removal spec, the pairs
    themselves, or ``{rule: <name>, weights: {<student path prefix>: weight}}`` (the longest matching prefix
    gives a pair its weight; 1 where none matches)."""
    from bksdm.arch.depth import is_transformer

    weights: Mapping = {}
    if isinstance(taps, Mapping):
        if set(taps) - {"rule", "weights"} or not isinstance(taps.get("weights", {}), Mapping):
            raise ValueError(
                f"taps={dict(taps)!r}: accepted keys are rule (a rule's name) and weights (a mapping)"
            )
        taps, weights = taps.get("rule", "auto"), taps.get("weights", {})
    if isinstance(taps, str):
        rules = ("auto",) if is_transformer(teacher_config) else tuple(TAP_RULES)
        if taps not in rules:
            raise ValueError(
                f"taps={taps!r}: accepted are a rule, one of {list(rules)}, or a list of "
                "[teacher module, student module] pairs"
            )
        if is_transformer(teacher_config):
            pairs = depth_tap_pairs(teacher_config, removal)
        else:
            pairs = TAP_RULES[taps](teacher_config, removal)
    else:
        pairs = parse_tap_pairs(taps)
    return [_weighted(pair, weights) for pair in pairs]


def _weighted(pair: TapPair, weights: Mapping) -> TapPair:
    matches = [p for p in weights if pair.student == p or pair.student.startswith((f"{p}.", f"{p}["))]
    if not matches:
        return pair
    return TapPair(pair.teacher, pair.student, _weight(weights[max(matches, key=len)]))


def split_tap_path(path: str) -> tuple[str, int | None]:
    """``"blocks.3[1]"`` -> ``("blocks.3", 1)``; a plain module path -> ``(path, None)``."""
    if path.endswith("]") and "[" in path:
        module, _, index = path[:-1].rpartition("[")
        if index.isdigit():
            return module, int(index)
    return path, None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / FSDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel", "DataParallel"):
            model = model.module
        else:
            return model


class FeatureTaps:
    """Forward hooks on named submodules of one model.

    Use ``with taps.recording(): model(...)`` and read ``taps.features`` (path -> tensor) afterwards.
    Each path must fire exactly once inside the window; ``remove()`` (or garbage collection of the
    owner) takes the hooks off.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], side: str = "model"):
        self.model = unwrap(model)
        self.side = side
        self.paths = list(paths)
        modules = dict(self.model.named_modules())
        self._handles = []
        for path in self.paths:
            module, element = split_tap_path(path)
            if module not in modules:
                near = difflib.get_close_matches(module, list(modules), n=3)
                raise KeyError(
                    f"{side} has no module {module!r} to tap" + (f"; close names: {near}" if near else "")
                )
            self._handles.append(modules[module].register_forward_hook(self._hook(path, element)))
        self._recording = False
        self.features: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    def _hook(self, path: str, element: int | None):
        def record(_module, _inputs, output):
            if not self._recording:
                return
            self.calls[path] = self.calls.get(path, 0) + 1
            if element is not None:
                if not isinstance(output, (tuple, list)) or not -len(output) <= element < len(output):
                    raise IndexError(
                        f"{self.side} tap {path!r}: the module's output has no element {element}"
                    )
                self.features[path] = output[element]
            else:
                self.features[path] = output[0] if isinstance(output, (tuple, list)) else output

        return record

    @contextmanager
    def recording(self) -> Iterator[dict[str, torch.Tensor]]:
        """Record each tapped output once during the block; raises if a tap fired 0 or 2+ times."""
        self.features, self.calls = {}, {}
        self._recording = True
        try:
            yield self.features
        finally:
            self._recording = False
        wrong = {p: self.calls.get(p, 0) for p in self.paths if self.calls.get(p, 0) != 1}
        if wrong:
            raise RuntimeError(f"{self.side} taps must fire exactly once per forward; fired {wrong}")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __del__(self):
        self.remove()


def check_tap_pairs(
    teacher_config: Mapping, student_cfg: Mapping, pairs: Sequence[TapPair], latent_size: int
) -> dict[str, tuple[int, ...]]:
    """Check on meta models (U-Nets, or transformers of the teacher's class) that every pair exists and has
    equal shapes; returns name -> shape.

    Raises:
        KeyError: a path that does not exist (naming the side and the path).
        ValueError: a pair whose feature shapes differ (naming both paths and shapes).
    """
    from bksdm.arch.depth import empty_transformer, family, is_transformer

    shapes = {}
    if is_transformer(teacher_config):
        from bksdm.teachers.denoiser_call import meta_transformer_call

        name = family(teacher_config)
        teacher, call = meta_transformer_call({**teacher_config, "_class_name": name}, latent_size)
        student = empty_transformer({**student_cfg, "_class_name": name})
    else:
        teacher, student = empty_unet(plain_config(teacher_config)), empty_unet(student_cfg)
        context_width = teacher.config.cross_attention_dim
        with torch.device("meta"):
            sample = torch.empty(1, teacher.config.in_channels, latent_size, latent_size)
            context = torch.empty(
                1, 77, context_width if isinstance(context_width, int) else context_width[0]
            )
            added = sdxl_added_conditioning(teacher.config, 1)

        def call(model):
            model(sample, 0, context, added_cond_kwargs=added)

    teacher_taps = FeatureTaps(teacher, [p.teacher for p in pairs], "teacher")
    student_taps = FeatureTaps(student, [p.student for p in pairs], "student")
    with torch.no_grad():
        with teacher_taps.recording() as teacher_features:
            call(teacher)
        with student_taps.recording() as student_features:
            call(student)
    for pair in pairs:
        t, s = tuple(teacher_features[pair.teacher].shape), tuple(student_features[pair.student].shape)
        if t != s:
            raise ValueError(
                f"tap pair teacher {pair.teacher!r} {t} and student {pair.student!r} {s} differ in shape: "
                "feature KD needs equal shapes"
            )
        shapes[pair.name] = t[1:]
    teacher_taps.remove()
    student_taps.remove()
    return shapes
