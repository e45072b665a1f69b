"""Objective families with known global minima: the problems optimizers are trained and judged on.

    family = get_family("quadratic", dim=20, condition=1e3)
    objective = family.sample(seeds("test", 1)[0])
    f, g = objective.value_and_grad(objective.initial_point())
"""

# Imported for their side effect: each module registers its families.
from rl_optimizer.objectives import classic, learning, networks, quadratic  # noqa: F401
from rl_optimizer.objectives.base import (
    SPLITS,
    Objective,
    ObjectiveBatch,
    ObjectiveFamily,
    batch_value_and_grad,
    get_family,
    list_families,
    reference_minimum,
    rescaled,
    seeds,
)

__all__ = [
    "SPLITS",
    "Objective",
    "ObjectiveBatch",
    "ObjectiveFamily",
    "batch_value_and_grad",
    "get_family",
    "list_families",
    "reference_minimum",
    "rescaled",
    "seeds",
]
