"""The search's plots: optimization history, parameter importances, per-backbone scores."""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from competition.report import publish, report_dir  # noqa: E402
from folds.make import Study  # noqa: E402

__all__ = ["write_report"]


def _save(ax_or_fig, path: Path) -> Path:
    fig = ax_or_fig.figure if hasattr(ax_or_fig, "figure") and not isinstance(ax_or_fig, plt.Figure) else ax_or_fig
    fig.set_size_inches(8, 4.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(ostudy: optuna.Study, study: Study) -> Path | None:
    done = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    out = report_dir(study.dir)
    items = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        from optuna.visualization import matplotlib as ovm

        items.append(("optimization history", _save(ovm.plot_optimization_history(ostudy), out / "search_history.png")))
        if len(done) >= 3:
            try:
                items.append(("parameter importances (fANOVA)",
                              _save(ovm.plot_param_importances(ostudy), out / "search_importances.png")))
            except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # too few distinct values
                print(f"report: parameter importances skipped ({exc})")
    rows = pd.DataFrame([{"backbone": t.params.get("backbone"), "mode": t.params.get("mode"), "score": t.value}
                         for t in done])
    fig, ax = plt.subplots()
    groups = [(f"{b}\n{m}", g.score.to_numpy()) for (b, m), g in rows.groupby(["backbone", "mode"])]
    ax.boxplot([g for _, g in groups])
    ax.set_xticks(range(1, len(groups) + 1), [n for n, _ in groups])
    ax.set_ylabel(f"CV {study.spec.metric}")
    ax.set_title("scores per backbone and training mode")
    items.append(("scores per backbone and mode", _save(fig, out / "search_backbones.png")))
    from search.study import summary_table

    return publish(study.dir, "search", items, text=summary_table(ostudy, study))
