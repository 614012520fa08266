"""BK-SDM students as data: removal specs, student configs, the teacher -> student weight map, costs."""

from bksdm.arch.report import UnitCost, render_report, report_dict, unet_cost, unit_names
from bksdm.arch.spec import PAPER_REMOVALS, RemovalSpec, removal_name, resolve_removal
from bksdm.arch.student import (
    build_student,
    check_teacher_topology,
    student_config,
    student_weight_map,
    unit_map,
    weight_map,
)

__all__ = [
    "PAPER_REMOVALS",
    "RemovalSpec",
    "UnitCost",
    "build_student",
    "check_teacher_topology",
    "removal_name",
    "render_report",
    "report_dict",
    "resolve_removal",
    "student_config",
    "student_weight_map",
    "unet_cost",
    "unit_map",
    "unit_names",
    "weight_map",
]
