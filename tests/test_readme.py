"""Every ``python -m bksdm.…`` command of the README (and of docs/) is a test, exactly as written.

A command whose comment says ``needs: ...`` (weights, a GPU, a cluster, data no test can make) is
composed: Hydra's ``--cfg job --resolve`` through a real shell, so a grammar error, an unknown key or a
bad interpolation fails. Every other command runs to the end through a real shell, with a small step
count appended: commands that read what an earlier one wrote run after it in document order in one
folder (the demo's run folder is what later commands' ``outputs/runs/<run>`` means), the others alone.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.paths import ROOT

from bksdm.cli.overrides import split_top_level

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY = re.compile(r"python -m (bksdm(?:\.\w+)*)")

# appended to a command that runs here, per entry point: few steps, few images
SMALLER = {
    "bksdm.train": [
        "trainer.max_steps=2",
        "data.batch_size=2",
        "callbacks.sample_grid.num_inference_steps=2",
    ],
    "bksdm.prepare": ["data.num_samples=40", "shard_size=2"],
    "bksdm.generate": ["num_inference_steps=2"],
    "bksdm.evaluate": [
        "num_images=4",
        "eval.num_real=16",
        "eval.num_latents=4",
        "num_inference_steps=2",
        "batch_size=4",
    ],
    "bksdm.arch": [],
    "bksdm.bench": [],
}
# the README's stand-ins for what only exists once an earlier command has run: the demo's run folder
# (composed commands get a name of the same form)
PLACEHOLDERS = {"<run>": lambda folder: next(iter(sorted((folder / "outputs" / "runs").glob("*"))), None)}
STAND_IN = {"<run>": "2026-01-01_00-00-00"}


@dataclass(frozen=True)
class Command:
    text: str  # as written, continuation lines joined
    needs: str | None  # what it needs that no test has: then it is only composed
    where: str  # file:line

    @property
    def entry(self) -> str:
        return ENTRY.search(self.text).group(1)


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of a shell line: a ``#`` outside quotes, at the start or after a space."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1 :]
    return line, ""


def documented_commands(path: Path) -> list[Command]:
    commands, block, start = [], None, 0
    lines = path.read_text(encoding="utf-8").splitlines()
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block != "bash":
            continue
        if logical and logical[-1][1].endswith("\\"):
            logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + line.strip())
        else:
            logical.append((number, line))
    for start, line in logical:
        code, comment = split_comment(line)
        if not ENTRY.search(code):
            continue
        code = code.split("&&")[-1]  # `pip install ... && python -m bksdm.train ...`
        needs = re.search(r"needs: (.+)", comment)
        commands.append(
            Command(" ".join(code.split()), needs.group(1).strip() if needs else None, f"{path.name}:{start}")
        )
    return commands


COMMANDS = [command for document in DOCUMENTS for command in documented_commands(document)]
COMPOSED = [c for c in COMMANDS if c.needs]
RUN = list({c.text: c for c in COMMANDS if not c.needs}.values())  # a command repeated runs once


def with_placeholders(text: str, folder: Path) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        if placeholder in text:
            found = value(folder)
            text = text.replace(placeholder, found.name if found is not None else STAND_IN[placeholder])
    return text


def sweep_jobs(command: str) -> list[str]:
    """A Hydra multirun (``-m``) as single-run commands that take every choice of every swept key at
    least once (Hydra composes one job at a time: ``--cfg`` refuses ``-m``); another command as it is."""
    program, arguments = shlex.split(command)[:3], shlex.split(command)[3:]  # python -m bksdm.<verb>
    if "-m" not in arguments and "--multirun" not in arguments:
        return [command]
    arguments = [a for a in arguments if a not in ("-m", "--multirun")]
    choices = [
        split_top_level(a.split("=", 1)[1]) if "=" in a and not a.startswith("hydra/") else [a]
        for a in arguments
    ]
    jobs = []
    for index in range(max(len(c) for c in choices)):
        job = [
            a.split("=", 1)[0] + "=" + c[index % len(c)] if len(c) > 1 else a
            for a, c in zip(arguments, choices, strict=True)
        ]
        jobs.append(shlex.join(program + job))
    return jobs


def shell(command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_readme_has_commands_of_both_kinds():
    assert len(COMMANDS) >= 30 and len(COMPOSED) >= 10 and len(RUN) >= 8
    assert any(c.text == "python -m bksdm.train experiment=demo" for c in RUN)
    for command in COMMANDS:  # every runnable command is one this test knows how to make small
        assert command.needs or command.entry in SMALLER, f"{command.where}: {command.text}"


@pytest.mark.parametrize("command", COMPOSED, ids=[c.where for c in COMPOSED])
def test_a_command_that_needs_what_the_tests_lack_composes(command, tmp_path):
    text = with_placeholders(command.text, tmp_path)
    if command.entry == "bksdm.eval.table":  # argparse, not Hydra: its usage is what it can be checked for
        jobs = [f"{text} --help"]
    else:
        jobs = [f"{job} --cfg job --resolve" for job in sweep_jobs(text)]
    for job in jobs:
        done = shell(job, tmp_path)
        assert done.returncode == 0, f"{command.where}: {job}\n{done.stderr[-3000:]}"
    assert not (tmp_path / "outputs").exists()  # composing writes nothing


def chain(command: Command) -> str:
    """Commands that read what an earlier one wrote run after it, in one folder: the demo's run folder
    (``<run>``), the mini world's latent shards; every other command runs alone (in parallel with the rest)."""
    if "<run>" in command.text or command.text == "python -m bksdm.train experiment=demo":
        return "demo-run"
    if "miniworld_latents" in command.text:
        return "miniworld-latents"
    return command.where


CHAINS: dict[str, list[Command]] = {}
for _command in RUN:
    CHAINS.setdefault(chain(_command), []).append(_command)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHAINS))
def test_every_other_command_runs_to_the_end_as_written(name, tmp_path):
    for command in CHAINS[name]:
        text = with_placeholders(command.text, tmp_path)
        smaller = " ".join(SMALLER[command.entry])
        done = shell(f"{text} {smaller}", tmp_path)
        assert done.returncode == 0, f"{command.where}: {text} {smaller}\n{done.stderr[-3000:]}"
