"""Names a tracker's run by, read from the Hydra job: what a sweep varies, which sweep, which recipe.

The jobs of ``-m arch=small,tiny loss.w_feat=0.5,1`` become runs named ``small-w_feat=0.5`` ... in one group
(the sweep's folder), so a dashboard of many runs can be read without opening each one.
"""

from __future__ import annotations

from pathlib import Path

from hydra.types import RunMode
from omegaconf import OmegaConf


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _parsed(overrides) -> list:
    """Command-line overrides as Hydra's parser reads them (key, value, whether it sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def swept_keys(sweep_dir: Path) -> list[str]:
    """The keys a multirun sweeps over (``arch``, ``loss.w_feat``), from the ``multirun.yaml`` Hydra writes
    in the sweep folder before it launches the jobs; empty when there is none."""
    record = sweep_dir / "multirun.yaml"
    if not record.is_file():
        return []
    return [
        o.key_or_group for o in _parsed(OmegaConf.load(record).hydra.overrides.task) if o.is_sweep_override()
    ]


def _short(key: str, value: str) -> str:
    """A group's choice as it is (``small``), a setting as ``leaf=value`` (``w_feat=0.5``)."""
    return value if "." not in key and "/" not in key else f"{key.rsplit('.', 1)[-1]}={value}"


def run_identity() -> dict:
    """``name``, ``group``, ``tags`` and ``job_type`` for the tracker, where the job tells them:

    - name: in a sweep, the swept values of this job (``small-w_feat=0.5``); else the experiment and the
      run folder (``demo-2026-12-02_10-00-00``);
    - group: the sweep's folder name, so the jobs of one sweep group together (None outside a sweep);
    - tags: the recipe's choices (``experiment:demo``, ``teacher:sd14``, ``arch:small``, ``loss:kd_full``).
    """
    runtime = _hydra()
    choices = OmegaConf.to_container(runtime.runtime.choices) if runtime is not None else {}
    tags = [
        f"{group}:{choices[group]}"
        for group in ("experiment", "teacher", "arch", "loss")
        if choices.get(group)
    ]
    identity = {"name": None, "group": None, "tags": tags or None, "job_type": "train"}
    if runtime is None:
        return identity
    if runtime.mode == RunMode.MULTIRUN:
        keys = swept_keys(Path(runtime.sweep.dir))
        values = {o.key_or_group: o.get_value_element_as_str() for o in _parsed(runtime.overrides.task)}
        identity["name"] = (
            "-".join(_short(k, values[k]) for k in keys if k in values) or f"job{runtime.job.num}"
        )
        identity["group"] = Path(runtime.sweep.dir).name
    else:
        folder = Path(runtime.runtime.output_dir).name
        identity["name"] = f"{choices['experiment']}-{folder}" if choices.get("experiment") else folder
    return identity
