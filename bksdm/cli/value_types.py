"""Settings checked against the signature of what they configure, before anything is built.

Hydra reads ``lr=5e-5x`` as the string ``"5e-5x"``, and without a check the run loads the teacher and
then fails deep inside torch. Every config node with a ``_target_`` is checked against that target's
annotated parameters; a value whose type the annotation cannot take is named with its key. A key the
target has no parameter for is named too, with the accepted ones: switching a group's choice keeps the
keys an experiment set for the old one (``experiment=... data=latents`` keeps ``data.num_samples``).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

NUMBERS = (bool, int, float, torch.Tensor, type(None))


def _members(annotation) -> tuple | None:
    """The plain types an annotation accepts when they are all booleans, numbers or None (else None:
    nothing is checked)."""
    origin = typing.get_origin(annotation)
    members = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    return members if all(m in NUMBERS for m in members) else None


def _accepts(members: tuple, value) -> bool:
    if value is None:
        return type(None) in members
    if isinstance(value, bool):
        return bool in members
    if isinstance(value, int):
        return bool(set(members) & {int, float, torch.Tensor})
    if isinstance(value, float):
        return bool(set(members) & {float, torch.Tensor}) or (int in members and value.is_integer())
    return False


def _describe(members: tuple) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", torch.Tensor: "a number"}
    words = list(dict.fromkeys(names[m] for m in members if m in names))
    return " or ".join(words) + (" or null" if type(None) in members else "")


@dataclass(frozen=True)
class Accepted:
    """What a parameter takes: one of ``members``, or (``sequence``) a list or tuple of them."""

    members: tuple
    sequence: bool = False

    def accepts(self, value) -> bool:
        if not self.sequence:
            return _accepts(self.members, value)
        return isinstance(value, list | tuple | ListConfig) and all(_accepts(self.members, v) for v in value)

    def describe(self) -> str:
        return f"a list of {_describe(self.members)}" if self.sequence else _describe(self.members)


def _accepted(annotation) -> Accepted | None:
    """What ``annotation`` accepts, when it is made of numbers, booleans and None (else None)."""
    if typing.get_origin(annotation) in (tuple, list):
        elements = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        members = [_members(a) for a in elements]
        if not elements or None in members:
            return None
        return Accepted(tuple(dict.fromkeys(m for group in members for m in group)), sequence=True)
    members = _members(annotation)
    return None if members is None else Accepted(members)


def parameter_types(target: Callable) -> dict[str, Accepted]:
    """Parameter name -> what it accepts, for the parameters of ``target`` annotated with numbers."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # annotations that do not evaluate here: nothing to check
        return {}
    return {name: accepted for name, hint in hints.items() if (accepted := _accepted(hint)) is not None}


def type_errors(values: Mapping, types_by_name: Mapping[str, Accepted], prefix: str) -> Iterator[str]:
    for name, accepted in types_by_name.items():
        if name in values and not accepted.accepts(values[name]):
            value = values[name]
            shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            yield f"{prefix}{name}={shown!r} is not {accepted.describe()}"


def _targets(node, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(dotted path, node) of every config node with a ``_target_``, below ``node`` (Hydra's own left out).
    Interpolated nodes (``distill.loss: ${loss}``) are not entered: they are checked where they are set."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        keys = [key for key in node if key != "hydra" and not OmegaConf.is_missing(node, key)]
    elif isinstance(node, ListConfig):
        keys = [index for index in range(len(node)) if not OmegaConf.is_missing(node, index)]
    else:
        return
    for key in keys:
        if OmegaConf.is_interpolation(node, key):
            continue
        yield from _targets(_value(node, key), f"{path}{key}.")  # UNKNOWN: neither node nor list


def unknown_keys(keys: list[str], target: Callable, path: str, target_name: str) -> Iterator[str]:
    """A message for each of ``keys`` that ``target`` has no parameter for (none when it takes ``**kwargs``)."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in parameters if p.kind in named and p.name != "self"]
    for key in keys:
        if key not in accepted:
            yield (
                f"{path}{key} is not a setting of {target_name} (accepted: {accepted}); a key set for another "
                f"choice of the group (by an experiment?) is dropped with '~{path}{key}'"
            )


UNKNOWN = object()  # a value that cannot be resolved here


def _value(node, key):
    """The resolved value, or UNKNOWN where it cannot be resolved here (``${hydra:...}`` outside a Hydra
    run): what is not known is not checked."""
    try:
        return node[key]
    except InterpolationResolutionError:
        return UNKNOWN


def check_value_types(cfg: DictConfig, extra: Mapping[str, Callable] = ()) -> None:
    """Raise ValueError naming every setting whose value its target's annotation does not accept, and
    every setting of a ``_target_`` node that its target has no parameter for.

    ``extra``: config paths (``"distill"``) checked against a callable that is not their ``_target_``.
    """
    problems = []
    nodes = [(path, node, node._target_) for path, node in _targets(cfg)]
    nodes += [(f"{path}.", OmegaConf.select(cfg, path), target) for path, target in dict(extra).items()]
    for path, node, target in nodes:
        if node is None:
            continue
        name = target if isinstance(target, str) else None  # only a node's own _target_ is held to its keys
        if isinstance(target, str):
            try:
                target = get_object(target)
            except Exception:  # a target that does not import: instantiating it says so
                continue
        keys = [key for key in node if not str(key).startswith("_")]
        if name is not None:
            problems += unknown_keys(keys, target, path, name)
        values = {
            key: value
            for key in keys
            if not OmegaConf.is_missing(node, key)
            if (value := _value(node, key)) is not UNKNOWN
        }
        problems += type_errors(values, parameter_types(target), path)
    if problems:
        raise ValueError("; ".join(problems))
