"""Overrides as the shell leaves them: brace patterns of shard names quoted for Hydra's grammar, and an
unquoted pattern the shell has already expanded, caught."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

# A brace range or list such as {00000..00212} or {train,val}: webdataset's and img2dataset's way to name
# shards, and never valid Hydra syntax (the override grammar reads an unquoted `{` as the start of a dict,
# whose entries would hold a colon).
BRACE_PATTERN = re.compile(r"(?<!\$)\{[^{}:]*(?:\.\.|,)[^{}:]*\}")
OVERRIDE = re.compile(r"^(?P<key>[~+]{0,2}[\w.\-/@]+)=(?P<value>.*)$", re.DOTALL)


def split_top_level(text: str) -> list[str]:
    """``text`` split at its commas, except those inside quotes, braces, brackets or parentheses: the
    elements of a Hydra list's inside, or the choices of a sweep (``a,b,c``)."""
    parts, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    return [*parts, current]


def _quoted(value: str) -> str:
    """``value`` with a brace pattern in double quotes, unless it is quoted already."""
    if BRACE_PATTERN.search(value) and not value.strip().startswith(("'", '"')) and '"' not in value:
        return f'"{value.strip()}"'
    return value


def quote_brace_patterns(arguments: Sequence[str]) -> list[str]:
    """``data.urls=/data/{00000..00212}.tar`` (what the shell leaves of ``data.urls='/data/{...}.tar'``)
    becomes ``data.urls="/data/{00000..00212}.tar"``, which Hydra reads as a string; in a list
    (``[a/{0..9}.tar,b/*.tar]``) each element with a pattern is quoted. Values already quoted, and
    values without a brace pattern, are left as they are."""
    quoted = []
    for argument in arguments:
        match = OVERRIDE.match(argument)
        if match and BRACE_PATTERN.search(match["value"]):
            value = match["value"]
            if value.startswith("[") and value.endswith("]"):
                value = "[" + ",".join(_quoted(element) for element in split_top_level(value[1:-1])) + "]"
            else:
                value = _quoted(value)
            argument = f"{match['key']}={value}"
        quoted.append(argument)
    return quoted


def shell_expanded_key(arguments: Sequence[str]) -> str | None:
    """The key of an override the shell has split into several (an unquoted ``data.urls=a/{0..3}.tar``
    becomes four ``data.urls=`` arguments in a row, with four unquoted values, of which Hydra would keep
    the last), or None. Repeats with a quoted value (Lightning's relaunch of a DDP rank appends
    ``hydra.run.dir="..."``) are not the shell's."""
    pairs = [(m["key"], m["value"]) if (m := OVERRIDE.match(a)) else (None, "") for a in arguments]
    for (key, value), (next_key, next_value) in itertools.pairwise(pairs):
        unquoted = not value.startswith(("'", '"')) and not next_value.startswith(("'", '"'))
        if key is not None and key == next_key and value != next_value and unquoted:
            return key
    return None
