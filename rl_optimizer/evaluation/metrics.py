"""What "better optimizer" means here: steps to a normalized gap, divergence, win rate.

All functions take normalized gaps g_t = (f(x_t) − f*) / (f(x_0) − f*) recorded after t steps
(so g_0 = 1), as arrays [steps + 1, n_instances]. Steps to ε are floats, with `NOT_CONVERGED`
(inf) for a run that never reached ε, so medians and comparisons need no special cases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

EPSILONS: tuple[float, ...] = (1e-2, 1e-3, 1e-6)
"""Normalized gaps every run is scored at."""

HEADLINE_EPS = 1e-3
"""The ε of the quality bar, of learning-rate tuning and of the headline tables."""

DIVERGENCE_FACTOR = 10.0
"""A run diverges when f − f* exceeds this many times its start (or becomes NaN/inf)."""

NOT_CONVERGED = np.inf
"""Steps to ε of a run that never reached ε."""


def steps_to_gap(gaps: np.ndarray, eps: float) -> np.ndarray:
    """First step t with g_t ≤ eps, per instance; `NOT_CONVERGED` where there is none.

    Args:
      gaps: normalized gaps [steps + 1, n] (or [steps + 1]).
      eps: the target normalized gap.

    Returns:
      float array [n] (or a scalar array) of steps.
    """
    gaps = np.asarray(gaps, np.float64)
    with np.errstate(invalid="ignore"):
        reached = gaps <= eps  # NaN compares False: a NaN step never counts as converged
    first = np.argmax(reached, axis=0).astype(np.float64)
    return np.where(reached.any(axis=0), first, NOT_CONVERGED)


def diverged(gaps: np.ndarray, factor: float = DIVERGENCE_FACTOR) -> np.ndarray:
    """Whether each run ever had a non-finite gap or f − f* > factor·(f(x_0) − f*)."""
    gaps = np.asarray(gaps, np.float64)
    with np.errstate(invalid="ignore"):
        return np.any(~np.isfinite(gaps) | (gaps > factor), axis=0)


def log_gap(gaps: np.ndarray, floor: float = 1e-300) -> np.ndarray:
    """log10 of the gap for plots and tie-breaks: floored at `floor`, NaN mapped to +inf."""
    gaps = np.asarray(gaps, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log10(np.maximum(gaps, floor))
    return np.where(np.isnan(out), np.inf, out)


def success_steps(gaps: np.ndarray, eps: float) -> np.ndarray:
    """Steps to ε, with a diverged run counted as not converged even if it touched ε."""
    return np.where(diverged(gaps), NOT_CONVERGED, steps_to_gap(gaps, eps))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A policy against one baseline on the same instances (see `compare`).

    Attributes:
      wins: instances where the policy succeeded in strictly fewer steps.
      ties: instances where both succeeded in the same number of steps, or neither succeeded.
      losses: instances where the baseline succeeded in strictly fewer steps.
      win_rate: wins / n (ties count against the policy: "fewer steps" is strict).
      median_steps_ratio: median of policy steps / baseline steps, failures counted as
        `steps + 1` steps (a censored lower bound); < 1 means the policy is faster.
      n: instances compared.
    """

    wins: int
    ties: int
    losses: int
    win_rate: float
    median_steps_ratio: float
    n: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare(policy_steps: Sequence[float], baseline_steps: Sequence[float],
            max_steps: int) -> Comparison:
    """Win/tie/loss of a policy against a baseline, instance by instance.

    A run *succeeds* when it reaches ε without diverging (`success_steps`); failures are
    `NOT_CONVERGED`. The policy wins an instance when it succeeds and the baseline either
    fails or needs strictly more steps. Both failing is a tie, not a win.

    Args:
      policy_steps: [n] the policy's success steps per instance.
      baseline_steps: [n] the baseline's, on the same instances in the same order.
      max_steps: the horizon T; failures count as T + 1 steps in the median ratio.
    """
    p = np.asarray(policy_steps, np.float64)
    b = np.asarray(baseline_steps, np.float64)
    if p.shape != b.shape or p.ndim != 1:
        raise ValueError(f"policy and baseline steps must be equal-length vectors, got "
                         f"{p.shape} and {b.shape}")
    wins, losses = int(np.sum(p < b)), int(np.sum(b < p))
    censored_p = np.minimum(p, max_steps + 1)
    censored_b = np.minimum(b, max_steps + 1)
    ratio = float(np.median(censored_p / censored_b)) if len(p) else float("nan")
    return Comparison(wins=wins, ties=len(p) - wins - losses, losses=losses,
                      win_rate=wins / len(p) if len(p) else float("nan"),
                      median_steps_ratio=ratio, n=len(p))
