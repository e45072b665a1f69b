"""Evaluation results as a researcher reads them: Markdown, CSV, PNG plots and TensorBoard.

    paths = write_report(results, "eval/", command="rl-optimizer evaluate ...")
    print(headline_table(results))             # the README's Results table

Everything renders from `EvaluationResults`; nothing here runs an optimizer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections.abc import Sequence

import numpy as np

from rl_optimizer.evaluation import metrics
from rl_optimizer.evaluation.sweep import EvaluationResults

TENSORBOARD_DIR = "tensorboard"
"""Subdirectory of the output directory with the TensorBoard events."""


def _steps(value: float, steps: int) -> str:
    """A (median) step count; "> T" where it never got there."""
    return f"> {steps}" if not np.isfinite(value) else f"{value:g}"


def _pct(value: float) -> str:
    return "—" if value is None or np.isnan(value) else f"{100 * value:.0f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_table(results: EvaluationResults, eps: float = metrics.HEADLINE_EPS) -> str:
    """Per family: the policy's median steps to ε, its win rate against each baseline (pooled
    row "all" last) and its divergences; the table the README's Results section shows."""
    baselines = results.baselines(results.families[0])
    header = ["family", f"{results.policy} median steps", *(f"vs {b}" for b in baselines),
              "divergences"]
    rows = []
    for family in results.families:
        mine = results.runs[family][results.policy]
        wins = results.comparisons(family, eps)
        rows.append([family, _steps(np.median(mine.success_steps(eps)), results.steps),
                     *(_pct(wins[b].win_rate) for b in baselines), int(mine.diverged.sum())])
    if len(results.families) > 1:
        total = sum(int(results.runs[f][results.policy].diverged.sum()) for f in results.families)
        rows.append(["**all**", "", *(f"**{_pct(results.comparison(b, eps=eps).win_rate)}**"
                                      for b in baselines), total])
    return _table(header, rows)


def median_steps_table(results: EvaluationResults, eps: float = metrics.HEADLINE_EPS) -> str:
    """Median steps to ε per family (rows) and optimizer (columns); "> T": most never got there."""
    names = list(results.runs[results.families[0]])
    rows = [[family, *(_steps(np.median(results.runs[family][n].success_steps(eps)),
                              results.steps) for n in names)] for family in results.families]
    return _table(["family", *names], rows)


def _family_section(results: EvaluationResults, family: str) -> str:
    summary = results.summary(family)
    multimodal = summary[0]["global_basin"] is not None
    eps_cols = [f"{e:g}" for e in metrics.EPSILONS]
    header = ["optimizer", "lr", *(f"median steps to {e}" for e in eps_cols),
              *(f"success {e}" for e in eps_cols), "median evals to "
              f"{metrics.HEADLINE_EPS:g}", "median final gap", "divergences"]
    header += ["global basin"] if multimodal else []
    rows = []
    for s in summary:
        row = [s["optimizer"], "" if s["learning_rate"] is None else f"{s['learning_rate']:g}",
               *(_steps(s[f"median_steps_{e}"], results.steps) for e in eps_cols),
               *(_pct(s[f"success_{e}"]) for e in eps_cols),
               _steps(s["median_evaluations"], results.steps),
               f"{s['median_final_gap']:.2e}", s["divergences"]]
        rows.append(row + ([_pct(s["global_basin"])] if multimodal else []))
    wins = results.comparisons(family)
    win_rows = [[b, c.wins, c.ties, c.losses, _pct(c.win_rate), f"{c.median_steps_ratio:.2f}"]
                for b, c in wins.items()]
    tuning = results.tuning.get(family, {})
    edge = [name for name, t in tuning.items() if t.at_grid_edge]
    parts = [f"## {family}", "", _table(header, rows), "",
             f"{results.policy} against each baseline (steps to {metrics.HEADLINE_EPS:g}):", "",
             _table(["baseline", "wins", "ties", "losses", "win rate", "median steps ratio"],
                    win_rows), "",
             f"![convergence](curves_{family}.png)", f"![steps to ε](steps_{family}.png)", ""]
    if edge:
        parts += [f"Tuned learning rate at the edge of the (widened) grid: {', '.join(edge)}.", ""]
    return "\n".join(parts)


DEFINITIONS = f"""\
Definitions. Normalized gap g = (f − f*) / (f(x0) − f*). *Steps to ε*: the first step with
g ≤ ε (SciPy: iterations). A run *diverges* when g is NaN/inf or above
{metrics.DIVERGENCE_FACTOR:g} at any step; a diverged run counts as not converged. *Success*:
reached ε without diverging. The policy *wins* an instance against a baseline when it succeeds
and the baseline fails or needs strictly more steps; both failing is a tie. *Median steps
ratio*: median over instances of policy steps / baseline steps, failures counted as T + 1
(< 1: the policy is faster). *Evals*: value-and-gradient evaluations (first-order: steps + 1;
SciPy: function evaluations including line searches). Learning rates of the Keras baselines
are tuned per family on validation instances (median steps to {metrics.HEADLINE_EPS:g}, ties by
median final log gap); test instances are never used for tuning. SciPy runs stop at g ≤ 1e-8.
"""


def render_report(results: EvaluationResults, command: str | None = None) -> str:
    """The whole Markdown report."""
    import tensorflow as tf

    first = results.runs[results.families[0]][results.policy]
    bar = results.quality_bar()
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in results.timings.items())
    parts = ["# Learned optimizer vs traditional optimizers", ""]
    if command:
        parts += ["```", command, "```", ""]
    parts += [f"{first.n} test instances per family, T = {results.steps} steps; "
              f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores "
              f"({platform.processor() or platform.machine()}). Wall time: {timings}.", "",
              DEFINITIONS, "",
              f"## Win rate of `{results.policy}` (steps to {metrics.HEADLINE_EPS:g})", "",
              headline_table(results), "",
              f"## Median steps to {metrics.HEADLINE_EPS:g}", "", median_steps_table(results),
              "", quality_bar_markdown(bar), ""]
    parts += [_family_section(results, family) for family in results.families]
    keras = results.extras.get("keras")
    if keras is not None:
        from rl_optimizer.evaluation.keras_tasks import keras_markdown

        parts.append(keras_markdown(keras))
    return "\n".join(parts)


def quality_bar_markdown(bar: dict) -> str:
    """One paragraph on issue 3's quality bar."""
    verdict = "**passed**" if bar["passed"] else "**not passed**"
    missing = f" (not evaluated: {', '.join(bar['missing'])})" if bar["missing"] else ""
    text = (f"Quality bar (win rate ≥ {bar['target']:.0%} against tuned {bar['baseline']} on "
            f"{', '.join(bar['families']) or 'no family'}{missing}, zero divergences): "
            f"{verdict} — win rate {_pct(bar['win_rate'])}, median steps ratio "
            f"{bar['median_steps_ratio']:.2f}, {bar['divergences']} divergences.")
    if bar["global_basin"]:
        text += " Global-basin success rate: " + "; ".join(
            f"{family} " + ", ".join(f"{name} {_pct(rate)}" for name, rate in rates.items())
            for family, rates in bar["global_basin"].items()) + "."
    return text


def readme_section(results: EvaluationResults, command: str) -> str:
    """The README's Results section: the command, the headline tables and the quality bar."""
    first = results.runs[results.families[0]][results.policy]
    return "\n".join([
        "## Results", "", "Generated by", "", "```", command, "```", "",
        f"{first.n} held-out test instances per family, T = {results.steps} steps, wall time "
        f"{results.timings.get('total', float('nan')):.0f} s. Win rate of the learned "
        f"optimizer against each learning-rate-tuned baseline (steps to normalized gap "
        f"{metrics.HEADLINE_EPS:g}; see the report for definitions):", "",
        headline_table(results), "", f"Median steps to {metrics.HEADLINE_EPS:g}:", "",
        median_steps_table(results), "", quality_bar_markdown(results.quality_bar()), ""])


README_MARKERS = ("<!-- results: generated by `rl-optimizer evaluate --readme`; do not edit -->",
                  "<!-- end of generated results -->")
"""The README lines the Results section is written between."""


def update_readme(path: str, section: str) -> None:
    """Puts `section` between `README_MARKERS` in the file at `path` (appended, with the
    markers, where they are missing), so regenerating the results replaces the old ones."""
    begin, end = README_MARKERS
    text = open(path).read() if os.path.exists(path) else ""
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def write_csv(results: EvaluationResults, path: str) -> None:
    rows = results.rows()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def convergence_figure(results: EvaluationResults, family: str):
    """Median and interquartile log10 gap against step, one line per optimizer.

    The y-axis spans the data (and the headline ε), not a fixed range; above gap
    `DIVERGENCE_FACTOR` a run counts as diverged, so the axis stops there.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    steps = np.arange(results.steps + 1)
    drawn = [np.log10(metrics.HEADLINE_EPS), 0.0]
    for name, runs in results.runs[family].items():
        lo, mid, hi = np.percentile(metrics.log_gap(runs.gaps, 1e-16), [25, 50, 75], axis=1)
        line, = ax.plot(steps, mid, label=name, lw=2.0 if name == results.policy else 1.2,
                        ls="--" if runs.evaluations is not None else "-")  # SciPy dashed
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
        drawn += [v for v in (np.min(lo), np.max(hi)) if np.isfinite(v)]
    ceiling = np.log10(metrics.DIVERGENCE_FACTOR)
    bottom, top = min(drawn) - 0.5, min(max(drawn), ceiling) + 0.5
    for eps in metrics.EPSILONS:
        if np.log10(eps) >= bottom:
            ax.axhline(np.log10(eps), color="grey", lw=0.5, ls=":")
    ax.set(title=f"{family}: median and IQR over {runs.n} instances",
           xlabel="step (SciPy, dashed: iteration; stops at gap 1e-8)",
           ylabel="log10 normalized gap", ylim=(bottom, top))
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def steps_figure(results: EvaluationResults, family: str):
    """Box plots of steps to each ε per optimizer, over the runs that succeeded.

    An optimizer none of whose runs reached ε gets a shaded slot marked "0% converged", so a
    failure reads as one, not as a missing optimizer.
    """
    from matplotlib.figure import Figure

    names = list(results.runs[family])
    fig = Figure(figsize=(5 * len(metrics.EPSILONS), 4.5))
    axes = fig.subplots(1, len(metrics.EPSILONS))
    for ax, eps in zip(axes, metrics.EPSILONS):
        data = [results.runs[family][n].success_steps(eps) for n in names]
        finite = [d[np.isfinite(d)] for d in data]
        ax.boxplot(finite, showfliers=True)
        ax.set_xticks(range(1, len(names) + 1),
                      [f"{n}\n{np.isfinite(d).mean():.0%}" for n, d in zip(names, data)],
                      rotation=60, fontsize=7)
        ax.set(title=f"steps to {eps:g} (label: success rate)",
               yscale="log" if any(len(d) for d in finite) else "linear")
        for i, d in enumerate(finite, start=1):
            if not len(d):
                ax.axvspan(i - 0.4, i + 0.4, color="tab:red", alpha=0.12, lw=0)
                # x in data units, y in axes units: the mark spans the slot whatever the scale.
                ax.text(i, 0.5, "0% converged", transform=ax.get_xaxis_transform(),
                        rotation=90, ha="center", va="center", fontsize=7, color="tab:red")
    fig.suptitle(family)
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    """A figure as PNG bytes. Figures here never touch pyplot: no backend, no global state."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def save_plots(results: EvaluationResults, out_dir: str) -> list[str]:
    """curves_<family>.png, steps_<family>.png (and keras_suite.png) in `out_dir`."""
    from rl_optimizer.evaluation.keras_tasks import keras_figure

    figures = {}
    for family in results.families:
        figures[f"curves_{family}.png"] = convergence_figure(results, family)
        figures[f"steps_{family}.png"] = steps_figure(results, family)
    keras = results.extras.get("keras")
    if keras and "skipped" not in keras:
        figures["keras_suite.png"] = keras_figure(keras)
    paths = []
    for name, fig in figures.items():
        paths.append(os.path.join(out_dir, name))
        with open(paths[-1], "wb") as f:
            f.write(figure_png(fig))
    return paths


def scalars(results: EvaluationResults, eps: float = metrics.HEADLINE_EPS) -> dict[str, float]:
    """Flat name → value: per family the win rates, median steps ratios, success rates, median
    steps and divergences; "all/…" pooled. What TensorBoard and a training loop log."""
    out = {}
    for family in results.families:
        for b, c in results.comparisons(family, eps).items():
            out[f"{family}/win_rate_vs_{b}"] = c.win_rate
            out[f"{family}/median_steps_ratio_vs_{b}"] = c.median_steps_ratio
        for s in results.summary(family):
            name = s["optimizer"]
            out[f"{family}/success_{eps:g}/{name}"] = s[f"success_{eps:g}"]
            out[f"{family}/median_steps_{eps:g}/{name}"] = min(s[f"median_steps_{eps:g}"],
                                                               results.steps + 1)
            out[f"{family}/divergences/{name}"] = s["divergences"]
            if s["global_basin"] is not None:
                out[f"{family}/global_basin/{name}"] = s["global_basin"]
    for b in results.baselines(results.families[0]):
        c = results.comparison(b, eps=eps)
        out[f"all/win_rate_vs_{b}"] = c.win_rate
        out[f"all/median_steps_ratio_vs_{b}"] = c.median_steps_ratio
    return out


def write_tensorboard(results: EvaluationResults, logdir: str, step: int = 0,
                      images: Sequence[str] = ()) -> None:
    """`scalars(results)` and PNG `images` as TensorBoard summaries at `step`."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=step):
        for name, value in scalars(results).items():
            tf.summary.scalar(name, value)
        for path in images:
            with open(path, "rb") as f:
                image = tf.image.decode_png(f.read(), channels=4)
            tf.summary.image(os.path.splitext(os.path.basename(path))[0], image[None])
        tf.summary.text("report", headline_table(results))
    writer.close()


def write_report(results: EvaluationResults, out_dir: str, command: str | None = None,
                 tensorboard: bool = True) -> dict[str, str | list[str]]:
    """report.md, results.csv, the PNG plots and TensorBoard events (under `out_dir`/tensorboard).

    Also summary.json: the quality bar and the headline scalars, for tools (the pretrained
    policy's manifest quotes it).

    Returns:
      {"report": path, "csv": path, "summary": path, "plots": [paths], "tensorboard": dir}.
    """
    os.makedirs(out_dir, exist_ok=True)
    plots = save_plots(results, out_dir)
    report = os.path.join(out_dir, "report.md")
    with open(report, "w") as f:
        f.write(render_report(results, command))
    path = os.path.join(out_dir, "results.csv")
    write_csv(results, path)
    summary = os.path.join(out_dir, "summary.json")
    with open(summary, "w") as f:
        json.dump({"quality_bar": results.quality_bar(), "scalars": scalars(results),
                   "command": command}, f, indent=2, sort_keys=True, default=float)
    paths = {"report": report, "csv": path, "summary": summary, "plots": plots}
    if tensorboard:
        paths["tensorboard"] = os.path.join(out_dir, TENSORBOARD_DIR)
        write_tensorboard(results, paths["tensorboard"], images=plots)
    return paths
