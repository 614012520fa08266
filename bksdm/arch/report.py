"""Parameters and MACs per unit of a U-Net, and the teacher-vs-student table built from them.

Everything runs on the meta device: full-size SD U-Nets are counted without allocating a weight.
MACs follow the paper's convention: multiply-accumulates of convolutions and linear layers for one
U-Net call at batch 1 with a 77-token text context (SD-v1.4: 338.6 G at a 64x64 latent). The two
attention matrix products (Q K^T and A V), which that convention leaves out, are reported apart.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from bksdm.arch.spec import PAPER_REMOVALS, RemovalSpec, removal_name, resolve_removal, spec_as_config
from bksdm.arch.student import empty_unet, plain_config, stack_depths, student_config, unit_map

TEXT_TOKENS = 77
VAE_SCALE = 8  # pixels per latent cell of Stable Diffusion's VAE
_LINEAR_AND_CONV_OPS = {"convolution", "mm", "addmm"}


@dataclass(frozen=True)
class UnitCost:
    """One unit of a U-Net: parameters, and GMAC-convention costs of one call (batch 1)."""

    name: str
    params: int
    macs: int
    attention_macs: int


@dataclass(frozen=True)
class UNetCost:
    units: list[UnitCost]

    @property
    def params(self) -> int:
        return sum(u.params for u in self.units)

    @property
    def macs(self) -> int:
        return sum(u.macs for u in self.units)

    @property
    def attention_macs(self) -> int:
        return sum(u.attention_macs for u in self.units)


def unit_names(unet: torch.nn.Module) -> list[str]:
    """Names of the removable units of a U-Net, in forward order (``down_blocks.0.resnets.0``, ...)."""
    names = []
    for name, child in unet.named_children():
        blocks = list(enumerate(child)) if isinstance(child, torch.nn.ModuleList) else None
        if name == "mid_block":
            blocks = [(None, child)]
        if blocks is None:
            names.append(name)
            continue
        for index, block in blocks:
            prefix = name if index is None else f"{name}.{index}"
            for part, sub in block.named_children():
                if isinstance(sub, torch.nn.ModuleList):
                    names.extend(f"{prefix}.{part}.{j}" for j in range(len(sub)))
                else:
                    names.append(f"{prefix}.{part}")
    return names


def check_latent_size(config: Mapping, latent_size: int) -> None:
    """Raise ValueError unless a square latent of this side fits every downsampler of the U-Net."""
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if latent_size < 1 or latent_size % factor:
        raise ValueError(
            f"latent size {latent_size} does not fit this U-Net: it has {len(config['block_out_channels']) - 1} "
            f"downsamplers, so the latent side must be a positive multiple of {factor} "
            f"(pixel resolution a multiple of {8 * factor} with SD's 8x VAE)"
        )


def unet_cost(config: Mapping, latent_size: int) -> UNetCost:
    """Parameters and MACs per unit of the U-Net built from ``config``, at a square latent."""
    return _unet_cost(json.dumps(plain_config(config), sort_keys=True), latent_size)


@functools.lru_cache(maxsize=16)  # a report counts the teacher and its student more than once
def _unet_cost(config_json: str, latent_size: int) -> UNetCost:
    config = json.loads(config_json)
    if config.get("addition_embed_type") not in (None, "text_time") or config.get("class_embed_type"):
        raise ValueError(
            "MAC counting supports text-conditioned U-Nets (SD-v1/v2) and SDXL's added text and time "
            f"conditioning, not addition_embed_type={config.get('addition_embed_type')!r} / "
            f"class_embed_type={config.get('class_embed_type')!r}"
        )
    check_latent_size(config, latent_size)
    unet = empty_unet(config)
    context_width = config.get("cross_attention_dim", 1280)
    if isinstance(context_width, list):
        context_width = context_width[0]
    with torch.device("meta"):
        sample = torch.empty(1, config.get("in_channels", 4), latent_size, latent_size)
        context = torch.empty(1, TEXT_TOKENS, context_width)
        timestep = torch.zeros(1, dtype=torch.long)
        added = sdxl_added_conditioning(config, 1)
    units = unit_costs(
        unet, unit_names(unet), lambda model: model(sample, timestep, context, added_cond_kwargs=added)
    )
    return UNetCost(units)


def unit_costs(model: torch.nn.Module, names: list[str], call) -> list[UnitCost]:
    """The cost of each unit ``names`` of ``model`` (on the meta device) in one ``call(model)``, in the order
    the forward reaches them (never-reached units last), units without parameters or FLOPs left out."""
    call_order: list[str] = []
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(lambda *_, name=name: call_order.append(name))
        for name in names
    ]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            call(model)
    finally:
        for hook in hooks:
            hook.remove()
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    units = []
    # forward order reads like the data flow: mid block between down and up blocks, resnet before attention
    for name in list(dict.fromkeys(call_order)) + [n for n in names if n not in call_order]:
        counts = per_module.get(f"{root}.{name}", {})
        linear = sum(v for op, v in counts.items() if _op_name(op) in _LINEAR_AND_CONV_OPS)
        other = sum(counts.values()) - linear
        params = sum(p.numel() for p in model.get_submodule(name).parameters())
        if params or linear or other:
            # the counter reports FLOPs; one multiply-accumulate is two of them
            units.append(UnitCost(name, params, linear // 2, other // 2))
    return units


def sdxl_added_conditioning(config: Mapping, batch: int) -> dict | None:
    """Empty tensors of SDXL's added conditioning for a U-Net ``config`` (None without it): the pooled
    text embedding (batch, projection width - 6 x time width) and the six time ids (original size, crop
    top-left, target size)."""
    if config.get("addition_embed_type") != "text_time":
        return None
    time_ids = 6
    pooled = config["projection_class_embeddings_input_dim"] - time_ids * config["addition_time_embed_dim"]
    return {"text_embeds": torch.empty(batch, pooled), "time_ids": torch.empty(batch, time_ids)}


def _op_name(op) -> str:
    return str(op).split(".")[1] if "." in str(op) else str(op)


@dataclass(frozen=True)
class ReportRow:
    """One teacher unit and what became of it in the student (``student`` None: removed; ``kept_layers``:
    for a transformer stack the student keeps shallower, the teacher layers it keeps of how many)."""

    teacher: str
    student: str | None
    params: int
    macs: int
    attention_macs: int
    kept_layers: tuple[list[int], int] | None = None


def _student_name(teacher_unit: str, inverse: Mapping[str, str]) -> str | None:
    for teacher_prefix, student_prefix in inverse.items():
        if teacher_unit == teacher_prefix or teacher_unit.startswith(teacher_prefix + "."):
            return student_prefix + teacher_unit[len(teacher_prefix) :]
    return None


def unit_fates(teacher_config: Mapping, removal: str | Mapping | RemovalSpec) -> dict[str, str | None]:
    """Every teacher unit, in module order, -> the student unit that keeps it, or None if removed."""
    inverse = {teacher: student for student, teacher in unit_map(teacher_config, removal).items()}
    fates = {}
    for name in unit_names(empty_unet(plain_config(teacher_config))):
        in_blocks = name.split(".")[0] in ("down_blocks", "mid_block", "up_blocks")
        fates[name] = _student_name(name, inverse) if in_blocks else name
    return fates


def kept_transformer_layers(
    teacher_config: Mapping, removal: str | Mapping | RemovalSpec
) -> dict[str, tuple[list[int], int]]:
    """Teacher stack (``down_blocks.2.attentions.0``) -> (the layers its student stack keeps, the
    teacher's depth), for every stack the student keeps shallower."""
    depths = stack_depths(plain_config(teacher_config))
    kept: dict[str, list[int]] = {}
    for student_key, teacher_key in unit_map(teacher_config, removal).items():
        if ".transformer_blocks." in student_key:
            stack, layer = teacher_key.rsplit(".transformer_blocks.", 1)
            kept.setdefault(stack, []).append(int(layer))
    return {stack: (layers, depths[stack]) for stack, layers in kept.items()}


def report_rows(
    teacher_config: Mapping, removal: str | Mapping | RemovalSpec, latent_size: int
) -> list[ReportRow]:
    """Every teacher unit (in forward order) with its cost and the student unit that keeps it (or None)."""
    fates = unit_fates(teacher_config, removal)
    partial = kept_transformer_layers(teacher_config, removal)
    return [
        ReportRow(
            unit.name, fates[unit.name], unit.params, unit.macs, unit.attention_macs, partial.get(unit.name)
        )
        for unit in unet_cost(teacher_config, latent_size).units
    ]


def paper_summary(
    teacher_config: Mapping, latent_size: int, extra: RemovalSpec | None = None, extra_name: str | None = None
) -> list[dict]:
    """Totals for the teacher, the three paper students (SD-v1/v2 teachers: BK-SDM's names mean nothing for
    SDXL's three stages) and ``extra`` (if it is not one of them), named ``extra_name``."""
    sdxl = plain_config(teacher_config).get("addition_embed_type") == "text_time"
    specs = {} if sdxl else dict(PAPER_REMOVALS)
    if extra is not None and extra not in specs.values():
        specs[extra_name or removal_name(extra)] = extra
    teacher = unet_cost(teacher_config, latent_size)
    rows = [
        {
            "model": "teacher",
            "params": teacher.params,
            "macs": teacher.macs,
            "attention_macs": teacher.attention_macs,
        }
    ]
    for name, spec in specs.items():
        cost = unet_cost(student_config(teacher_config, spec), latent_size)
        rows.append(
            {"model": name, "params": cost.params, "macs": cost.macs, "attention_macs": cost.attention_macs}
        )
    return rows


def _g(macs: int) -> str:
    return f"{macs / 1e9:.2f}"


def render_report(
    teacher_config: Mapping,
    removal: str | Mapping | RemovalSpec,
    latent_size: int,
    title: str = "teacher",
    name: str | None = None,
) -> str:
    """A text table: block by block, what the teacher has, what the student keeps, what was removed.
    ``name``: the student's (default: the paper's, or ``custom(...)``)."""
    spec = resolve_removal(removal)
    name = name or removal_name(spec)
    rows = report_rows(teacher_config, spec, latent_size)
    header = f"{'teacher unit':<30} {'params':>13} {'GMACs':>9} {'attn GMACs':>10}  student"
    lines = [
        f"{name} student of {title}: U-Net units at a {latent_size}x{latent_size} latent "
        f"(batch 1, {TEXT_TOKENS} text tokens)",
        "GMACs: convolutions and linear layers (the paper's convention); attn GMACs: Q K^T and A V products.",
        "",
        header,
        "-" * len(header),
    ]
    for row in rows:
        fate = (
            "REMOVED"
            if row.student is None
            else ("kept" if row.student == row.teacher else f"-> {row.student}")
        )
        if row.kept_layers is not None and row.student is not None:
            layers, depth = row.kept_layers
            fate += f", layers {', '.join(map(str, layers))} of {depth}"
        lines.append(
            f"{row.teacher:<30} {row.params:>13,} {_g(row.macs):>9} {_g(row.attention_macs):>10}  {fate}"
        )
    student = unet_cost(student_config(teacher_config, spec), latent_size)
    teacher = (sum(r.params for r in rows), sum(r.macs for r in rows), sum(r.attention_macs for r in rows))
    kept = (student.params, student.macs, student.attention_macs)
    removed = [r for r in rows if r.student is None]
    lines += ["-" * len(header)]
    for label, (params, macs, attention), units in (
        ("teacher", teacher, f"{len(rows)} units"),
        ("student keeps", kept, f"{len(rows) - len(removed)} units"),
        ("removed", tuple(t - k for t, k in zip(teacher, kept, strict=True)), f"{len(removed)} whole units"),
    ):
        lines.append(f"{label:<30} {params:>13,} {_g(macs):>9} {_g(attention):>10}  {units}")
    lines += [
        "",
        f"{'model':<30} {'U-Net params':>13} {'GMACs':>9} {'attn GMACs':>10}  share of teacher (params / MACs)",
    ]
    summary = paper_summary(teacher_config, latent_size, spec, name)
    for row in summary:
        share = f"{row['params'] / summary[0]['params']:.1%} / {row['macs'] / summary[0]['macs']:.1%}"
        lines.append(
            f"{row['model']:<30} {row['params']:>13,} {_g(row['macs']):>9} {_g(row['attention_macs']):>10}  {share}"
        )
    return "\n".join(lines)


def report_dict(
    teacher_config: Mapping, removal: str | Mapping | RemovalSpec, latent_size: int, name: str | None = None
) -> dict:
    """The same report as plain data (for ``format=json``)."""
    spec = resolve_removal(removal)
    name = name or removal_name(spec)
    return {
        "removal": name,
        "spec": spec_as_config(spec),
        "latent_size": latent_size,
        "units": [asdict(r) for r in report_rows(teacher_config, spec, latent_size)],
        "summary": paper_summary(teacher_config, latent_size, spec, name),
    }
