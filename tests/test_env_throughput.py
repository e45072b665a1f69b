"""`python -m rl_optimizer.benchmarks.env_throughput`: start-up and throughput lines."""

import re
import time

from rl_optimizer.benchmarks import env_throughput


def test_quick_prints_startup_and_throughput(capsys):
    rate = env_throughput.main(["--quick"])

    out = capsys.readouterr().out
    startup = float(re.search(r"^startup_seconds: ([\d.]+)$", out, re.M).group(1))
    # Printed to 0.1 s, so it may round up past the time measured here.
    assert 0 < startup <= time.time() - env_throughput.process_start_time() + 0.05
    assert re.search(r"^pool_seconds: [\d.]+$", out, re.M)
    assert out.strip().splitlines()[-1] == f"coordinate_steps_per_second: {rate:.0f}"


def test_process_start_is_in_the_past():
    assert 0 < time.time() - env_throughput.process_start_time() < 24 * 3600
