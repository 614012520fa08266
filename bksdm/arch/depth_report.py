"""Parameters and MACs per block of a transformer teacher (FLUX, SD3, PixArt) and what a depth-pruned student
keeps of them: ``python -m bksdm.arch teacher=flux_dev arch=flux_mini``.

Counted on the meta device, as the U-Net report is (``bksdm.arch.report``): MACs are multiply-accumulates
of the linear layers and convolutions of one call at batch 1, the two attention matrix products apart, with
the text length the family's pipeline uses by default (FLUX 512 T5 tokens; SD3 77 CLIP + 256 T5; PixArt
300).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

import torch

from bksdm.arch.depth import depth_student_config, family, kept_blocks
from bksdm.arch.report import UnitCost, _g, unit_costs

TEXT_TOKENS = {
    "FluxTransformer2DModel": 512,
    "SD3Transformer2DModel": 77 + 256,
    "PixArtTransformer2DModel": 300,
}


def transformer_cost(config: Mapping, latent_size: int) -> list[UnitCost]:
    """Parameters and MACs of every unit (each block of each stack, and the embedders and output layers
    around them) of the transformer built from ``config``, at a square latent, in forward order."""
    return _transformer_cost(json.dumps(dict(config), sort_keys=True, default=list), latent_size)


@functools.lru_cache(maxsize=16)
def _transformer_cost(config_json: str, latent_size: int) -> list[UnitCost]:
    from bksdm.teachers.denoiser_call import meta_transformer_call

    config = json.loads(config_json)
    model, call = meta_transformer_call(config, latent_size, text_tokens=TEXT_TOKENS[family(config)])
    units = []
    for child, module in model.named_children():
        if isinstance(module, torch.nn.ModuleList):
            units += [f"{child}.{i}" for i in range(len(module))]
        else:
            units.append(child)
    costs = unit_costs(model, units, call)
    # a model's own parameters (PixArt's output scale_shift_table) belong to no child: a unit of their own
    for name, parameter in model.named_parameters(recurse=False):
        costs.append(UnitCost(name, parameter.numel(), 0, 0))
    return costs


def depth_report_dict(teacher_config: Mapping, stacks: Mapping, latent_size: int, name: str) -> dict:
    """Every teacher unit with its cost and the student unit that keeps it (None: removed), and both
    models' totals (``format=json``)."""
    kept = kept_blocks(teacher_config, stacks)
    student_of = {
        f"{stack}.{t}": f"{stack}.{s}" for stack, blocks in kept.items() for s, t in enumerate(blocks)
    }
    units = []
    for unit in transformer_cost(teacher_config, latent_size):
        stack = unit.name.rsplit(".", 1)[0]
        student = student_of.get(unit.name) if stack in kept else unit.name
        units.append({**unit.__dict__, "student": student})
    totals = []
    for model, config in (("teacher", teacher_config), (name, depth_student_config(teacher_config, stacks))):
        cost = transformer_cost(config, latent_size)
        totals.append({
            "model": model, "params": sum(u.params for u in cost), "macs": sum(u.macs for u in cost),
            "attention_macs": sum(u.attention_macs for u in cost),
        })  # fmt: skip
    return {"removal": name, "spec": dict(stacks), "kept": kept, "latent_size": latent_size, "units": units,
            "summary": totals}  # fmt: skip


def render_depth_report(
    teacher_config: Mapping, stacks: Mapping, latent_size: int, title: str, name: str
) -> str:
    """A text table: unit by unit, what the teacher has and what the student keeps (``-> stack.j``: the
    student's renumbered block), then both models' totals."""
    report = depth_report_dict(teacher_config, stacks, latent_size, name)
    kind = family(teacher_config)
    header = f"{'teacher unit':<30} {'params':>14} {'GMACs':>9} {'attn GMACs':>10}  student"
    lines = [
        f"{name} student of {title}: {kind} units at a {latent_size}x{latent_size} latent "
        f"(batch 1, {TEXT_TOKENS[kind]} text tokens)",
        "GMACs: linear layers and convolutions; attn GMACs: Q K^T and A V products.",
        "",
        header,
        "-" * len(header),
    ]
    for unit in report["units"]:
        fate = (
            "REMOVED"
            if unit["student"] is None
            else "kept"
            if unit["student"] == unit["name"]
            else f"-> {unit['student']}"
        )
        lines.append(
            f"{unit['name']:<30} {unit['params']:>14,} {_g(unit['macs']):>9} {_g(unit['attention_macs']):>10}  {fate}"
        )
    lines += ["-" * len(header)]
    teacher = report["summary"][0]
    for row in report["summary"]:
        share = f"{row['params'] / teacher['params']:.1%} / {row['macs'] / teacher['macs']:.1%}"
        lines.append(
            f"{row['model']:<30} {row['params']:>14,} {_g(row['macs']):>9} {_g(row['attention_macs']):>10}  {share}"
        )
    kept = ", ".join(f"{stack} {blocks}" for stack, blocks in report["kept"].items())
    lines += ["", f"kept blocks: {kept}", "share of teacher: params / MACs"]
    return "\n".join(lines)
