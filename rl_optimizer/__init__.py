"""rl_optimizer: a reinforcement-learning agent (TF-Agents DDPG) that learns an optimizer.

Public API; everything not listed in `__all__` may change.
"""

import os as _os

# TensorFlow's C++ start-up lines (oneDNN banner, CUDA plugin registration on CPU machines) are
# noise; Python warnings and TensorFlow's errors (raised as exceptions) still come through. Set
# TF_CPP_MIN_LOG_LEVEL yourself to see them.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_gym_quietly() -> None:
    # tf_agents imports gym 0.23, which prints an "unmaintained" notice on import; we use no gym
    # environment, so the notice says nothing about this library.
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        try:
            import gym  # noqa: F401
        except ImportError:
            pass


_import_gym_quietly()

from rl_optimizer import features, objectives  # noqa: E402
from rl_optimizer.export import export_policy  # noqa: E402
from rl_optimizer.keras_optimizer import LearnedOptimizer  # noqa: E402  (registers with Keras)
from rl_optimizer.monitor import OptimizerMonitor  # noqa: E402
from rl_optimizer.policy import LearnedPolicy, load_policy  # noqa: E402

__all__ = [
    "LearnedOptimizer",
    "LearnedPolicy",
    "OptimizerMonitor",
    "export_policy",
    "features",
    "load_policy",
    "objectives",
]
