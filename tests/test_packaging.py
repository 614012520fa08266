"""The wheel ships the Hydra config, the README's commands are the ones CI runs, ruff is configured."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers.paths import ROOT


def quickstart() -> list[str]:
    block = re.search(r"## Quickstart\n.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_quickstart_is_two_commands_and_ci_runs_the_second():
    commands = quickstart()
    assert len(commands) == 2
    assert "python -m bksdm" in commands[0]
    assert commands[1].endswith("pytest -n 2 --dist loadgroup")  # two workers: one per core
    ci = (ROOT / ".ci" / "run").read_text()
    assert "## Quickstart" in ci  # .ci/run reads the test command from the README instead of copying it
    assert "torchvision" not in commands[0]  # the demo runs on the core install
    # the tests run the eval extra's real extractors too: torchvision only imports beside its own torch
    assert 'torch==2.14.1 torchvision==0.29.1 -e ".[dev,eval]"' in commands[1]


def test_installed_wheel_finds_its_config(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("bksdm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "bksdm/conf/arch_report.yaml" in names
    assert {f"bksdm/conf/teacher/{t}.yaml" for t in ("sd14", "sd15", "sd21base", "sd21", "toy")} <= set(names)
    assert {f"bksdm/conf/arch/{a}.yaml" for a in ("base", "small", "tiny")} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # run from the unpacked wheel, away from the checkout: the config must come from the package
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import bksdm, runpy, sys; print(bksdm.__file__, file=sys.stderr); runpy.run_module('bksdm.arch', run_name='__main__')"
    done = subprocess.run(
        [sys.executable, "-c", code, "teacher=sd21base", "arch=tiny", "format=json"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert str(site) in done.stderr
    assert '"params": 326825604' in done.stdout


def test_package_list_names_every_package_of_the_tree():
    """setuptools drops a package mapped through package-dir when packages are found, so pyproject.toml
    lists them; a new package folder missing from that list would be missing from the wheel."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "bksdm").rglob("__init__.py")
    } | {"bksdm.conf"}
    assert (ROOT / "conf" / "__init__.py").is_file()
    assert set(setuptools["packages"]) == on_disk
    assert setuptools["package-dir"] == {"bksdm.conf": "conf"}


def test_editable_install_composes_from_outside_the_checkout(tmp_path):
    """The config comes from the installed package bksdm.conf (the top-level conf/ of the checkout),
    whatever the working directory."""
    done = subprocess.run(
        [sys.executable, "-m", "bksdm.train", "experiment=demo", "--cfg", "job", "--resolve"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "_target_: bksdm.distill.losses.DistillLoss" in done.stdout
    import bksdm.conf

    assert Path(bksdm.conf.__file__).parent == ROOT / "conf"


def test_every_verb_has_a_console_script():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    verbs = {"train", "evaluate", "generate", "prepare", "arch", "bench", "miniworld"}
    assert set(scripts) == {f"bksdm-{verb}" for verb in verbs}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function))


def test_core_never_imports_torchvision_at_module_level(monkeypatch):
    """PyPI's torchvision only imports beside a matching torch: the core must not need it to import, and
    the eval extra's packages are imported only when the paper's extractors are built."""
    import ast

    extra = {"torchvision", "torch_fidelity", "pytorch_fid", "open_clip"}
    for path in (ROOT / "bksdm").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not {n.split(".")[0] for n in names} & extra, f"{path} imports {names} at module level"

    from bksdm.eval.paper_extractors import PaperInception

    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", None)  # as if the extra were not installed
    with pytest.raises(
        ImportError, match=r"FID as in the paper needs the 'pytorch_fid' package of the eval extra"
    ):
        PaperInception(device="cpu")
