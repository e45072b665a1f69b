"""Speed benchmarks, run as `python -m rl_optimizer.benchmarks.<name>`; not part of the tests."""
