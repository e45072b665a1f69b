"""examples/: they run, and leave nothing behind."""

import importlib.util
import os
import tempfile

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_keras_digits_leaves_no_temporary_directory(tmp_path, monkeypatch, capsys,
                                                    exported_policy):
    scratch = tmp_path / "tmp"
    scratch.mkdir()  # where tempfile puts its directories during the test
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    logs = tmp_path / "logs"

    _load("keras_digits").main(["--policy", exported_policy, "--epochs", "1",
                                "--log-dir", str(logs)])

    out = capsys.readouterr().out
    assert "reloaded" in out and "adam: train_loss" in out
    # TensorFlow's autograph leaves its own generated files there; the example leaves nothing.
    assert [n for n in os.listdir(scratch) if n.startswith("keras_digits-")] == []
    assert any(name == "train" for name in os.listdir(logs))
