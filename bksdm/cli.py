"""What every ``python -m bksdm.<verb>`` entry point shares: the Hydra app, shard patterns as the shell
leaves them, and config mistakes reported as one message before any heavy work."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import hydra


class ConfigError(ValueError):
    """A mistake in the user's config or command line, found before anything heavy was loaded: printed
    as its message alone (``HYDRA_FULL_ERROR=1`` shows the traceback too)."""


# Exceptions that, raised while the config is checked and the data source is opened, mean the config
# names something that is not there or not accepted (a missing folder, a bad value).
CONFIG_MISTAKES = (ValueError, FileNotFoundError, KeyError, TypeError)


@contextlib.contextmanager
def config_checks() -> Iterator[None]:
    """Turns the errors of the block (config checks, opening the data source, building the trainer) into
    ``ConfigError``s; Hydra's InstantiationException is unwrapped to the error it carries."""
    from hydra.errors import InstantiationException

    try:
        yield
    except ConfigError:
        raise
    except InstantiationException as error:
        cause = error.__cause__
        raise ConfigError(str(cause) if isinstance(cause, CONFIG_MISTAKES) else str(error)) from error
    except CONFIG_MISTAKES as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise ConfigError(message) from error
    except Exception as error:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        if isinstance(error, MisconfigurationException):
            raise ConfigError(str(error)) from error
        raise


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


def _is_hydra_leftover(folder: Path, job_name: str) -> bool:
    """A run folder holding nothing but what Hydra writes before the job starts."""
    if not folder.is_dir():
        return False
    here = Path.cwd().resolve()
    if folder.resolve() in (here, *here.parents):  # generate, evaluate and prepare run in "."
        return False
    return all(entry.name in (".hydra", f"{job_name}.log") for entry in folder.iterdir())


def _remove_run_folder() -> None:
    """Removes the run folder Hydra made for a job that stopped on a config error, when nothing but
    Hydra's own files is in it (a folder with checkpoints or results stays)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    runtime = HydraConfig.get()
    folder = Path(runtime.runtime.output_dir)
    if _is_hydra_leftover(folder, runtime.job.name):
        shutil.rmtree(folder, ignore_errors=True)
        for parent in folder.parents:  # the outputs/runs/ that Hydra made for it, when left empty
            if parent == Path.cwd() or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def app(config_name: str) -> Callable[[Callable], Callable[[], None]]:
    """``hydra.main`` for a bksdm entry point: the config ``config_name`` of ``bksdm/conf``, brace
    patterns of the command line quoted for Hydra, and a ``ConfigError`` printed as one line (exit
    status 2, no run folder left behind) instead of a traceback."""

    def decorate(task: Callable) -> Callable[[], None]:
        @functools.wraps(task)
        def reported(cfg):
            try:
                return task(cfg)
            except ConfigError as error:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                _remove_run_folder()
                print(f"Error: {error}", file=sys.stderr)
                sys.exit(2)

        hydra_main = hydra.main(version_base="1.3", config_path="pkg://bksdm.conf", config_name=config_name)(
            reported
        )

        @functools.wraps(task)
        def main() -> None:
            repeated = shell_expanded_key(sys.argv[1:])
            if repeated is not None:
                print(
                    f"Error: {repeated} is given several times in a row: the shell expanded an unquoted brace "
                    f"pattern. Quote it: {repeated}='/path/{{00000..00099}}.tar'",
                    file=sys.stderr,
                )
                sys.exit(2)
            sys.argv[1:] = quote_brace_patterns(sys.argv[1:])
            hydra_main()

        return main

    return decorate
