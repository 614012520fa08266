"""What every ``python -m bksdm.<verb>`` entry point shares: the Hydra app, shard patterns as the shell
leaves them, and config mistakes reported as one message before any heavy work."""

from __future__ import annotations

import contextlib
import functools
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


# A brace range such as {00000..00212}: webdataset's and img2dataset's way to name shards, and never
# valid Hydra syntax (the override grammar reads an unquoted `{` as the start of a dict).
BRACE_RANGE = re.compile(r"(?<!\$)\{[^{}]*\.\.[^{}]*\}")
OVERRIDE = re.compile(r"^(?P<key>[~+]{0,2}[\w.\-/@]+)=(?P<value>.*)$", re.DOTALL)


def quote_brace_patterns(arguments: Sequence[str]) -> list[str]:
    """``data.urls=/data/{00000..00212}.tar`` (what the shell leaves of ``data.urls='/data/{...}.tar'``)
    becomes ``data.urls="/data/{00000..00212}.tar"``, which Hydra reads as a string. Values already
    quoted, and values without a brace range, are left as they are."""
    quoted = []
    for argument in arguments:
        match = OVERRIDE.match(argument)
        value = match["value"] if match else ""
        if match and BRACE_RANGE.search(value) and not value.startswith(("'", '"')) and '"' not in value:
            argument = f'{match["key"]}="{value}"'
        quoted.append(argument)
    return quoted


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
            sys.argv[1:] = quote_brace_patterns(sys.argv[1:])
            hydra_main()

        return main

    return decorate
