"""Periodic validation during training: the policy against tuned Adam on validation instances.

    validate = PeriodicValidation(["quadratic"], instances=10, steps=300)
    train(config, run_dir, evaluate_fn=validate)     # validate(policy, step, writer) -> scalars

The baselines are tuned and run once, on the first call; each later call runs only the policy.
Validation instances are `seeds("validation", …)` after the tuning ones: disjoint from both the
tuning and the test instances.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_optimizer.evaluation import metrics
from rl_optimizer.evaluation.sweep import Benchmark, EvaluationResults

DEEP_BASELINE = "nesterov"
"""The deep evaluation's baseline: the quality bar's at gap 1e-6 (learning-rate-tuned Nesterov
momentum), which converges linearly where Adam's normalised steps hover."""


class PeriodicValidation:
    """`(policy, step, writer) -> dict` of pooled scalars; details go to TensorBoard.

    Args:
      families: family names (their default parameters).
      instances: validation instances per family.
      steps: T of each run (the baselines are tuned for the same T).
      eps: the normalized gap that counts as converged.
      baselines: what the policy is compared with.
      tuning_instances: validation instances the baselines' learning rates are tuned on.
      images: also write convergence-curve images.
      deep_eps: a deeper gap (None: none): the families without minibatches are also run for
        `deep_steps` against tuned `DEEP_BASELINE`, whose win rate in steps to `deep_eps` is
        `deep_win_rate_vs_nesterov`; their divergences count too.
      deep_steps: T of those runs (the baseline is tuned for it).
    """

    def __init__(self, families: Sequence[str], instances: int = 10, steps: int = 300,
                 eps: float = metrics.HEADLINE_EPS, baselines: Sequence[str] = ("adam",),
                 tuning_instances: int = 16, images: bool = True,
                 deep_eps: float | None = None, deep_steps: int = 2000):
        self.eps, self.images, self.deep_eps = eps, images, deep_eps
        self.benchmark = Benchmark(families, instances, steps, baselines=baselines,
                                   split="validation", tuning_instances=tuning_instances, eps=eps)
        self.deep_benchmark = None
        if deep_eps is not None:
            analytic = [f for f in self.benchmark.families if not self._is_network(f)]
            if not analytic:
                raise ValueError("PeriodicValidation: deep_eps needs a family without "
                                 f"minibatches among {list(self.benchmark.families)}")
            self.deep_benchmark = Benchmark(
                analytic, instances, deep_steps, baselines=[DEEP_BASELINE], split="validation",
                tuning_instances=tuning_instances, eps=deep_eps)
        self.last: EvaluationResults | None = None
        self.last_deep: EvaluationResults | None = None

    def __call__(self, policy, step: int, writer=None) -> dict[str, float]:
        results = self.last = self.benchmark.evaluate(policy)
        summary = self.pooled(results)
        if self.deep_benchmark is not None:
            deep = self.last_deep = self.deep_benchmark.evaluate(policy)
            summary[f"deep_win_rate_vs_{DEEP_BASELINE}"] = deep.comparison(
                DEEP_BASELINE, eps=self.deep_eps).win_rate
            summary["divergences"] += _divergences(deep)
        if writer is not None:
            self.write(results, summary, step, writer)
        return summary

    def pooled(self, results: EvaluationResults) -> dict[str, float]:
        """win_rate_vs_<b> and median_steps_ratio_vs_<b> (steps to eps), final_win_rate_vs_<b>
        (a strictly lower final gap: what counts where neither reaches eps, as on networks)
        per baseline, pooled over families, network_final_win_rate_vs_<b> over the network
        families alone (if any), the policy's success rate and divergences."""
        out = {}
        mine = [results.runs[f][results.policy] for f in results.families]
        for b in self.benchmark.baselines:
            c = results.comparison(b, eps=self.eps)
            out[f"win_rate_vs_{b}"] = c.win_rate
            out[f"median_steps_ratio_vs_{b}"] = c.median_steps_ratio
            theirs = [results.runs[f][b] for f in results.families]
            wins = [_final_log_gap(m) < _final_log_gap(t) for m, t in zip(mine, theirs)]
            out[f"final_win_rate_vs_{b}"] = float(np.mean(np.concatenate(wins)))
            networks = [w for f, w in zip(results.families, wins) if self._is_network(f)]
            if networks:
                out[f"network_final_win_rate_vs_{b}"] = float(np.mean(np.concatenate(networks)))
        out["success_rate"] = float(np.mean(np.concatenate(
            [np.isfinite(r.success_steps(self.eps)) for r in mine])))
        out["divergences"] = _divergences(results)
        return out

    def _is_network(self, family: str) -> bool:
        """Whether `family`'s instances train on minibatches (the network families)."""
        return self.benchmark.objectives(family)[0].batch_size is not None

    def write(self, results: EvaluationResults, summary: dict, step: int, writer) -> None:
        import tensorflow as tf

        from rl_optimizer.evaluation import report

        with writer.as_default(step=step):
            for name, value in summary.items():
                tf.summary.scalar(f"eval/{name}", value)
            for name, value in report.scalars(results, self.eps).items():
                if not name.startswith("all/"):
                    tf.summary.scalar(f"eval/{name}", value)
            if self.images:
                for family in results.families:
                    png = report.figure_png(report.convergence_figure(results, family))
                    tf.summary.image(f"eval/curves_{family}",
                                     tf.image.decode_png(png, channels=4)[None])
        writer.flush()


def _divergences(results: EvaluationResults) -> int:
    """The policy's diverged runs over every family of `results`."""
    return int(sum(results.runs[f][results.policy].diverged.sum() for f in results.families))


def _final_log_gap(runs) -> np.ndarray:
    """Final log10 gap per instance, +inf for a diverged run (it loses every comparison)."""
    return np.where(runs.diverged, np.inf, metrics.log_gap(runs.final_gap))
