"""``--help`` of an entry point: what it does, its own config groups with their choices, the settings that
matter with their defaults as composed (``train experiment=demo --help`` shows the demo's), examples.

Hydra's own help page lists every group of the config folder (``generate --help`` would offer ``arch`` and
``trainer``) and introduces a ``python -m`` entry point as ``__main__``; this page is built from the composed
config instead, so it cannot drift from it. ``--hydra-help`` still shows Hydra's flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from omegaconf import OmegaConf

HELP_FLAGS = ("--help", "-h")


@dataclass(frozen=True)
class EntryHelp:
    """What ``--help`` says of one entry point."""

    command: str  # python -m bksdm.train
    summary: str  # one or two lines
    settings: Sequence[str] = ()  # dotted keys shown with their composed defaults
    examples: Sequence[str] = ()
    more: str = ""  # where the manual is
    hidden_groups: Sequence[str] = ("hydra", "paths")


# groups whose files are parts composed by a few of them (one file per callback): only those are offered
OFFERED_BY_DEFAULTS_LIST = ("callbacks",)


def group_choices(group: str) -> list[str]:
    """The options of config group ``group`` (``teacher`` -> ``miniworld, sd14, ...``), from ``bksdm.conf``."""
    folder = resources.files("bksdm.conf").joinpath(*group.split("/"))
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)
    if group in OFFERED_BY_DEFAULTS_LIST:
        files = [p for p in files if "defaults" in (OmegaConf.create(p.read_text()) or {})]
    return [p.name.removesuffix(".yaml") for p in files]


def _shown(cfg, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if node is None or leaf not in node.keys():  # noqa: SIM118 (`in` is False for a ??? value)
        return "(not in this config)"
    if OmegaConf.is_missing(node, leaf):
        return "??? (required)"
    value = OmegaConf.to_container(node, resolve=False)[leaf]
    shown = OmegaConf.to_yaml({"v": value}).strip().removeprefix("v:").strip()
    if isinstance(value, str) and "${" in value:  # an interpolation: its value too, where it resolves here
        try:
            return f"{OmegaConf.select(cfg, key)}  ({value})"
        except Exception:  # e.g. ${hydra:...} outside a run
            return shown
    return shown


def render_help(entry: EntryHelp, config_name: str, overrides: Sequence[str]) -> str:
    """The help page, with the config ``config_name`` composed from ``overrides``."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("bksdm.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    runtime = OmegaConf.to_container(cfg.hydra.runtime.choices)
    choices = {  # in the order of the defaults list (Hydra records the last first)
        group: choice
        for group, choice in reversed(runtime.items())
        if group.split("/")[0] not in entry.hidden_groups and "@" not in group
    }
    usage = f"{entry.command}{' [group=choice ...]' if choices else ''} [key=value ...]"
    lines = [usage, "", entry.summary.strip(), ""]
    if choices:
        lines.append("Config groups (the current choice first):")
        width = max(map(len, choices))
        for group, choice in choices.items():
            others = [c for c in group_choices(group) if c != choice]
            lines.append(
                f"  {group:<{width}}  {choice or 'none'}" + (f"  ({', '.join(others)})" if others else "")
            )
        lines.append("")
    if entry.settings:
        lines.append("Settings (as composed):")
        width = max(map(len, entry.settings))
        for key in entry.settings:
            lines.append(f"  {key:<{width}}  {_shown(cfg, key)}")
        lines.append("")
    if entry.examples:
        lines += ["Examples:", *(f"  {example}" for example in entry.examples), ""]
    lines.append("--cfg job prints the whole composed config; --hydra-help shows Hydra's own flags.")
    if entry.more:
        lines.append(entry.more)
    return "\n".join(lines)
