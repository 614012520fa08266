"""BK-SDM students as data: removal specs, student configs, the teacher -> student weight map, costs.

The names below are imported on first use (PEP 562): ``python -m bksdm.arch --help`` or ``--cfg job``
imports this package first, and must not pay for torch and diffusers to print a page or a config.
"""

import importlib

_HOMES = {
    "bksdm.arch.report": ("UnitCost", "render_report", "report_dict", "unet_cost", "unit_names"),
    "bksdm.arch.spec": ("PAPER_REMOVALS", "RemovalSpec", "removal_name", "resolve_removal"),
    "bksdm.arch.student": (
        "build_student", "check_teacher_topology", "student_config", "student_weight_map", "unit_map",
        "weight_map",
    ),
}  # fmt: skip
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str):
    if name not in _HOME_OF:
        raise AttributeError(f"module 'bksdm.arch' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME_OF[name]), name)
