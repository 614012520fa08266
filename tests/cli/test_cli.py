"""What every entry point shares (bksdm.cli): shard patterns as the shell leaves them, config errors."""

import pytest

from bksdm.cli.app import _is_hydra_leftover
from bksdm.cli.errors import ConfigError, config_checks
from bksdm.cli.overrides import quote_brace_patterns, shell_expanded_key


def test_a_brace_range_reaches_hydra_as_one_string():
    # what the shell leaves of data.urls='/data/laion/{00000..00212}.tar'
    assert quote_brace_patterns(["data=webdataset", "data.urls=/data/laion/{00000..00212}.tar"]) == [
        "data=webdataset",
        'data.urls="/data/laion/{00000..00212}.tar"',
    ]
    assert quote_brace_patterns(["+data.urls=pipe:aws s3 cp s3://b/{0..9}.tar -"]) == [
        '+data.urls="pipe:aws s3 cp s3://b/{0..9}.tar -"'
    ]
    # a brace list, and patterns inside a Hydra list
    assert quote_brace_patterns(["data.urls=shards/0000{0,1}.tar"]) == ['data.urls="shards/0000{0,1}.tar"']
    assert quote_brace_patterns(["data.urls=[a/{00000..00001}.tar,b/*.tar,c/{0,1}.tar]"]) == [
        'data.urls=["a/{00000..00001}.tar",b/*.tar,"c/{0,1}.tar"]'
    ]
    untouched = [
        'data.urls="/x/{0..1}.tar"',  # already quoted
        "data.urls='/x/{0..1}.tar'",
        "+callbacks.extra={a: 1}",  # a Hydra dict
        "paths.log_dir=${oc.env:HOME}/runs",  # an interpolation
        "-m",
        "arch=base,small",
    ]
    assert quote_brace_patterns(untouched) == untouched


def test_config_checks_turn_a_mistake_into_one_config_error():
    from hydra.errors import InstantiationException

    with pytest.raises(ConfigError, match=r"^data\.root='/x' is not a folder$"), config_checks():
        raise FileNotFoundError("data.root='/x' is not a folder")
    # Hydra's wrapper is taken off
    with pytest.raises(ConfigError, match=r"^bad value$"), config_checks():
        try:
            raise ValueError("bad value")
        except ValueError as error:
            raise InstantiationException("Error in call to target 'x':\nValueError('bad value')") from error
    with pytest.raises(RuntimeError), config_checks():  # not a config mistake: left as it is
        raise RuntimeError("CUDA out of memory")


def test_only_a_run_folder_holding_nothing_but_hydras_files_counts_as_a_leftover(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "a"
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").write_text("")
    monkeypatch.chdir(tmp_path)
    assert _is_hydra_leftover(run, "train")
    (run / "checkpoints").mkdir()
    assert not _is_hydra_leftover(run, "train")  # a run that trained before stays
    monkeypatch.chdir(tmp_path / "runs" / "a" / ".hydra")
    assert not _is_hydra_leftover(tmp_path / "runs" / "a" / ".hydra", "train")  # never the working folder


def test_an_unquoted_pattern_the_shell_expanded_is_caught(tmp_path):
    import os
    import subprocess
    import sys

    # bash turns data.urls=s/{00000..00002}.tar into three data.urls= arguments; Hydra would keep the last
    assert (
        shell_expanded_key(["data=webdataset", "data.urls=s/00000.tar", "data.urls=s/00001.tar"])
        == "data.urls"
    )
    assert (
        shell_expanded_key(["data.urls=a", "trainer.max_steps=2", "data.urls=b"]) is None
    )  # a later override
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m bksdm.train data=webdataset data.urls=s/{{00000..00002}}.tar"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("Error: data.urls is given several times in a row: the shell expanded")
