"""`rl-optimizer evaluate` (issue 12): progress in whole instances, the verdict on stdout, and
the Keras tasks chosen by flag."""

import re

import pytest

from rl_optimizer import cli
from rl_optimizer.evaluation import Benchmark, keras_tasks
from rl_optimizer.policy import LearnedPolicy

TINY = ["--instances", "2", "--steps", "20", "--tuning-instances", "2",
        "--baselines", "adam,lbfgs"]


def _counts(err: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"\| (\d+)/(\d+) \[", err)]


def test_the_bar_counts_whole_instances_to_its_total(capsys):
    benchmark = Benchmark(["quadratic", "rosenbrock"], instances=3, steps=30,
                          baselines=("adam", "sgd", "cg"), tuning_instances=2, progress=True)
    benchmark.evaluate(LearnedPolicy.random(seed=0))
    first = _counts(capsys.readouterr().err)
    # per family: 3 sampled, 2 tuning sampled, 2 × 2 optimizers × grid tuned, 3 × 3 baselines,
    # 3 policy runs
    total = 2 * (3 + 2 + 2 * 2 * len(benchmark.grid) + 3 * 3 + 3)
    assert first[-1] == (total, total) and {t for _, t in first} == {total}
    assert [n for n, _ in first] == sorted(n for n, _ in first)

    benchmark.evaluate(LearnedPolicy.random(seed=1))  # baselines cached: policy runs only
    second = _counts(capsys.readouterr().err)
    assert second[-1] == (6, 6)


def test_families_run_no_keras_tasks_and_the_verdict_is_printed(tmp_path, capsys, monkeypatch,
                                                                exported_policy):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the Keras tasks ran although --families was given")

    monkeypatch.setattr(keras_tasks, "run_keras_tasks", must_not_run)
    code = cli.main(["evaluate", "--policy", exported_policy, "--families", "quadratic", *TINY,
                     "--out", str(tmp_path / "out")])

    assert code == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("quality bar: NOT JUDGED: its families ")
    assert "--keras-tasks none" in (tmp_path / "out" / "report.md").read_text()


def test_keras_tasks_by_flag_with_a_bar(tmp_path, capsys, monkeypatch, exported_policy):
    from test_evaluation import _fake_keras_tasks  # one wine_mlp result in the suite's format

    seen = {}

    def fake(policy, tasks, epochs, progress):
        seen.update(tasks=list(tasks), epochs=epochs)
        return _fake_keras_tasks(policy, tasks, epochs, progress)

    monkeypatch.setattr(keras_tasks, "run_keras_tasks", fake)
    code = cli.main(["evaluate", "--policy", exported_policy, "--families", "quadratic", *TINY,
                     "--keras-tasks", "wine_mlp", "--keras-epochs", "1",
                     "--out", str(tmp_path / "out")])

    assert code == 0
    assert seen == {"tasks": ["wine_mlp"], "epochs": 1}
    assert "1/1 [" in capsys.readouterr().err


@pytest.mark.parametrize("flags,families,expected", [
    (["--keras-tasks", "all"], "quadratic", tuple(keras_tasks.TASKS)),
    ([], None, tuple(keras_tasks.TASKS)),
    ([], "quadratic", ()),
    (["--keras-tasks", "all", "--keras-epochs", "0"], None, ()),
    (["--keras-tasks", "none"], None, ()),
])
def test_which_keras_tasks_run(flags, families, expected):
    from rl_optimizer.evaluation import command

    argv = ["evaluate", "--out", "x", *flags] + (["--families", families] if families else [])
    assert command.keras_task_names(cli.build_parser().parse_args(argv)) == expected


@pytest.mark.parametrize("value", ["wine_mlpp", "wine_mlp,transformer", ","])
def test_an_unknown_keras_task_exits_2_before_any_work(tmp_path, capsys, value):
    out = tmp_path / "out"
    code = cli.main(["evaluate", "--families", "quadratic", "--keras-tasks", value,
                     "--out", str(out)])
    assert code == 2
    assert f"--keras-tasks {value!r}" in capsys.readouterr().err
    assert not out.exists()


def test_verdict_lines():
    from rl_optimizer.evaluation.command import verdict

    bar = {"missing": [], "passed": True, "win_rate": 0.75, "baseline": "adam", "target": 0.6,
           "divergences": 0}
    assert verdict(bar).startswith("quality bar: PASSED: win rate 75% against tuned adam")
    assert verdict({**bar, "passed": False, "divergences": 2}).startswith("quality bar: FAILED")
