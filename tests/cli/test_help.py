"""Each entry point's --help: its own page, its own groups, defaults as composed, examples that compose."""

import shlex
import subprocess
import sys

import pytest

VERBS = {  # entry module: the groups its page must list (and no others of the training config)
    "bksdm.train": {
        "teacher",
        "arch",
        "loss",
        "data",
        "speed",
        "trainer",
        "callbacks",
        "experiment",
        "debug",
    },
    "bksdm.evaluate": {"eval"},
    "bksdm.generate": set(),
    "bksdm.prepare": {"teacher", "data"},
    "bksdm.arch": {"teacher", "arch"},
    "bksdm.bench": {"teacher", "arch", "speed", "preset"},
    "bksdm.miniworld": set(),
}
TRAINING_GROUPS = {
    "teacher",
    "arch",
    "loss",
    "data",
    "optim",
    "distill",
    "speed",
    "trainer",
    "logger",
    "callbacks",
}


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)


def page_groups(page: str) -> set[str]:
    if "Config groups" not in page:
        return set()
    block = page.split("Config groups", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in block.splitlines()[1:] if line.strip()}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_is_the_commands_own_page_and_its_examples_compose(verb, tmp_path):
    done = run(verb, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = done.stdout
    assert page.startswith(f"python -m {verb} ") and "__main__" not in page and "powered by Hydra" not in page
    groups = page_groups(page)
    assert VERBS[verb] <= groups
    if verb not in ("bksdm.train", "bksdm.bench"):  # the others compose no training config
        assert not (groups - VERBS[verb]) & TRAINING_GROUPS, groups
    block = page.split("Examples:", 1)[1].split("\n\n", 1)[0]
    examples = [line.strip() for line in block.splitlines() if line.strip()]
    assert len(examples) >= 2
    for example in examples:
        words = shlex.split(
            example.split("   #", 1)[0].replace("<run>", "2026-01-01_00-00-00")
        )  # as README tests do
        assert words[:3] == ["python", "-m", verb]
        composed = run(*words[2:], "--cfg", "job", cwd=tmp_path)
        assert composed.returncode == 0, (example, composed.stderr[-2000:])
    assert not list(tmp_path.iterdir())  # composing and help write nothing


def test_help_shows_the_defaults_of_the_composed_config(tmp_path):
    page = run("bksdm.train", "experiment=demo", "--help", cwd=tmp_path).stdout
    assert (
        "trainer.max_steps     300" in page and "teacher     miniworld" in page
    )  # the demo's, not the paper's
    assert "data.root             ??? (required)" in run("bksdm.train", "--help", cwd=tmp_path).stdout
    wrong = run("bksdm.train", "arch=huge", "--help", cwd=tmp_path)
    assert wrong.returncode == 2 and "Could not find 'arch/huge'" in wrong.stderr
