"""The Hydra app every ``python -m bksdm.<verb>`` entry point shares: the packaged config, brace patterns
quoted, and a config mistake printed as one line with no run folder left behind."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import hydra

from bksdm.cli.errors import ConfigError
from bksdm.cli.help import HELP_FLAGS, EntryHelp, render_help
from bksdm.cli.logs import quiet_third_party
from bksdm.cli.overrides import quote_brace_patterns, shell_expanded_key


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


def app(config_name: str, help: EntryHelp | None = None) -> Callable[[Callable], Callable[[], None]]:
    """``hydra.main`` for a bksdm entry point: the config ``config_name`` of ``conf/`` (installed as
    ``bksdm.conf``), brace patterns of the command line quoted for Hydra, ``--help`` from ``help``
    (``bksdm.cli.help``), and a ``ConfigError`` printed as one line (exit status 2, no run folder left
    behind) instead of a traceback."""

    def decorate(task: Callable) -> Callable[[], None]:
        @functools.wraps(task)
        def reported(cfg):
            quiet_third_party()
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
            if help is not None and any(flag in sys.argv[1:] for flag in HELP_FLAGS):
                overrides = [a for a in sys.argv[1:] if a not in HELP_FLAGS and not a.startswith("-")]
                try:
                    print(render_help(help, config_name, overrides))
                except Exception as error:  # an override that does not compose
                    print(f"Error: {error}", file=sys.stderr)
                    sys.exit(2)
                return
            hydra_main()

        return main

    return decorate
