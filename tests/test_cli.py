"""`rl-optimizer` (issues 2 and 3): the subcommands, export, and errors that exit 2."""

import os
import subprocess
import sys

import numpy as np
import pytest

from rl_optimizer import cli
from rl_optimizer.policy import load_policy


def _weights(policy) -> list[np.ndarray]:
    return [v.numpy() for v in policy.kernels + policy.biases]


def test_console_script_help_lists_the_subcommands():
    script = os.path.join(os.path.dirname(sys.executable), "rl-optimizer")
    assert os.path.isfile(script), "the console script is not installed: pip install -e ."

    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)

    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ")}
    assert {"train", "evaluate", "export", "serve"} <= listed, out.stdout
    assert "Traceback" not in out.stderr


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    assert "train" in capsys.readouterr().out


def test_export_writes_a_loadable_version(exported_policy, tmp_path, capsys):
    model_dir = tmp_path / "models"

    assert cli.main(["export", "--policy", exported_policy, "--model-dir", str(model_dir)]) == 0
    assert cli.main(["export", "--policy", exported_policy, "--model-dir", str(model_dir),
                     "--name", "other"]) == 0

    version = model_dir / "rl_optimizer" / "1"
    assert str(version) in capsys.readouterr().out
    for path in (version, model_dir / "other" / "1"):
        for a, b in zip(_weights(load_policy(str(path))), _weights(load_policy(exported_policy))):
            np.testing.assert_array_equal(a, b)


def test_export_of_a_run_directory(smoke_run, tmp_path):
    assert cli.main(["export", "--policy", smoke_run.run_dir,
                     "--model-dir", str(tmp_path)]) == 0
    assert load_policy(str(tmp_path)).metadata == load_policy(smoke_run.run_dir).metadata


def test_export_of_a_missing_policy_exits_2(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert cli.main(["export", "--policy", missing, "--model-dir", str(tmp_path / "m")]) == 2
    assert missing in capsys.readouterr().err


def test_unknown_config_key_exits_2_naming_it(tmp_path, capsys):
    run_dir = tmp_path / "run"

    code = cli.main(["train", "--run-dir", str(run_dir), "--set", "training.nope=1"])

    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "iterations" in err  # the key, and what is allowed
    assert not run_dir.exists()


def test_resume_of_an_empty_directory_exits_2(tmp_path, capsys):
    assert cli.main(["train", "--run-dir", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "rl-optimizer train: error:" in err
    assert str(tmp_path) in err and "nothing to resume" in err
    assert os.listdir(tmp_path) == []
