"""`rl-optimizer` (issues 2 and 3): the subcommands, export, and errors that exit 2."""

import dataclasses
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


def test_export_with_features_changes_them_and_records_it(exported_policy, tmp_path):
    model_dir = str(tmp_path / "models")

    assert cli.main(["export", "--policy", exported_policy, "--model-dir", model_dir,
                     "--feature", "start_log_lr=-2.3", "--feature", "surge_warmup=50",
                     "--feature", "center_action=false"]) == 0

    source, exported = load_policy(exported_policy), load_policy(model_dir)
    want = {"start_log_lr": -2.3, "surge_warmup": 50.0, "center_action": False}
    assert exported.feature_config == dataclasses.replace(source.feature_config, **want)
    assert exported.metadata["feature_overrides"] == want
    for a, b in zip(_weights(exported), _weights(source)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("item,named", [
    ("start_lr=-2", "start_lr"), ("start_log_lr=low", "start_log_lr"),
    ("start_log_lr=0.5", "FeatureConfig.start_log_lr"), ("center_action=2", "center_action"),
    ("start_log_lr", "NAME=VALUE")])
def test_export_with_a_bad_feature_exits_2_naming_it(exported_policy, tmp_path, capsys, item,
                                                     named):
    model_dir = tmp_path / "models"
    assert cli.main(["export", "--policy", exported_policy, "--model-dir", str(model_dir),
                     "--feature", item]) == 2
    assert named in capsys.readouterr().err
    assert not model_dir.exists()


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


# --- issue 12: every bad input exits 2 naming the culprit, and leaves nothing behind ---------

@pytest.mark.parametrize("override,named", [
    ("training.iterations=-5", "training.iterations: must be >= 1, got -5"),
    ("training.batch_size=0", "training.batch_size: must be >= 1, got 0"),
    ("agent.gamma=1.5", "agent.gamma: must be in [0, 1], got 1.5"),
    ("environment.mix=[{family: quadratc}]", "environment.mix[0]: unknown objective family "
                                             "'quadratc'"),
    ("environment.mix=[{family: quadratic, params: {dimm: 3}}]", "['dimm']"),
    ("evaluation.families=[rosenbrok]", "evaluation.families: unknown objective family"),
    ("training.iterations=[", "--set 'training.iterations=[':1:"),
])
def test_a_bad_override_exits_2_naming_it_and_writes_nothing(tmp_path, capsys, override, named):
    run_dir = tmp_path / "run"

    code = cli.main(["train", "--run-dir", str(run_dir), "--set", override])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("rl-optimizer train: error: ") and named in err, err
    assert not run_dir.exists()


def test_a_family_typo_in_the_config_file_leaves_no_run_directory(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("environment:\n  mix:\n    - {family: logistic_regresion}\n")
    run_dir = tmp_path / "run"

    assert cli.main(["train", "--config", str(config), "--run-dir", str(run_dir)]) == 2
    assert "logistic_regresion" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_corrupt_yaml_config_exits_2_with_file_line_and_column(tmp_path, capsys):
    config = tmp_path / "corrupt.yaml"
    config.write_text("training:\n  iterations: 3\n    batch_size: 4\n")

    assert cli.main(["train", "--config", str(config), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{config}:3:" in err and "invalid YAML" in err and "Traceback" not in err


@pytest.mark.parametrize("extra", [["--set", "training.iterations=20"],
                                   ["--config", "configs/smoke.yaml"]])
def test_resume_refuses_set_and_config_with_the_reason(tmp_path, capsys, extra):
    assert cli.main(["train", "--run-dir", str(tmp_path), "--resume", *extra]) == 2
    err = capsys.readouterr().err
    assert f"{extra[0]} cannot be combined with --resume" in err
    assert os.path.join(str(tmp_path), "config.yaml") in err
    assert os.listdir(tmp_path) == []


def test_resuming_a_finished_run_restores_without_warnings(smoke_run, tmp_path):
    import shutil

    run_dir = str(tmp_path / "run")
    shutil.copytree(smoke_run.run_dir, run_dir)

    # A subprocess: TensorFlow's warnings come when the load status is collected, at exit.
    out = subprocess.run([sys.executable, "-m", "rl_optimizer.cli", "train", "--run-dir",
                          run_dir, "--resume", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "could not be found" not in out.stderr and "unrestored" not in out.stderr, out.stderr


def test_no_arguments_lists_the_subcommands_and_exits_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for command in ("train", "evaluate", "export", "serve"):
        assert f"\n    {command} " in err, err


@pytest.mark.parametrize("command,shown", [
    ("evaluate", "(default: 100)"), ("export", "(default: rl_optimizer)"),
    ("serve", "(default: 8500)"), ("train", "(default: the embedded"),
])
def test_help_shows_defaults(capsys, command, shown):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert shown in " ".join(capsys.readouterr().out.split())


def _subcommand_flags() -> dict[str, set[str]]:
    import argparse

    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: {flag for action in command._actions for flag in action.option_strings
                   if flag.startswith("--") and flag != "--help"}
            for name, command in sub.choices.items()}


def test_the_readme_cli_table_lists_every_flag_of_every_subcommand():
    import re

    readme = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")
    section = open(readme, encoding="utf-8").read().split("## Command line", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = {m.group(1): m.group(0) for m in
            re.finditer(r"^\| `rl-optimizer ([\w-]+)` \|.*$", section, re.M)}
    flags = _subcommand_flags()

    assert set(rows) == set(flags), "one README table row per subcommand"
    for name, row in rows.items():
        listed = set(re.findall(r"--[a-z][\w-]*", row))
        assert flags[name] - listed == set(), f"`{name}` flags missing from the README table"
        assert listed - flags[name] == set(), f"`{name}` flags in the README that do not exist"
