"""The submissions section of the study report: the ledger as a table, and CV against the board.

The plot puts each scored submission at its CV (with the bootstrap 95 % interval as a horizontal
bar) and its public and private scores above it, joined by a line: a shake-up such as
public 0.81 → private 0.76 at CV 0.74 shows as a long line that ends near the diagonal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from competition.report import publish, report_dir
from submissions.ledger import ledger_path, read_ledger
from submissions.study import Study

__all__ = ["format_ledger", "sort_ledger", "plot_cv_vs_board", "publish_ledger"]


def sort_ledger(ledger: pd.DataFrame, greater_is_better: bool) -> pd.DataFrame:
    """Best CV first; rows without a CV last."""
    key = ledger["cv_mean"] if greater_is_better else -ledger["cv_mean"]
    return ledger.assign(_key=key).sort_values("_key", ascending=False, na_position="last",
                                                 kind="stable").drop(columns="_key")


def format_ledger(ledger: pd.DataFrame, greater_is_better: bool = True) -> str:
    if ledger.empty:
        return "(the ledger is empty: make a submission first)"
    rows = sort_ledger(ledger, greater_is_better)

    def num(v, fmt="{:.4f}"):
        return fmt.format(v) if pd.notna(v) else "—"

    table = pd.DataFrame({
        "file": rows["file"].map(lambda f: Path(f).name),
        "source": rows["source"],
        "CV ± std": [f"{num(m)} ± {num(s)}" for m, s in zip(rows["cv_mean"], rows["cv_std"])],
        "OOF 95% CI": [f"[{num(lo)}, {num(hi)}]" if pd.notna(lo) else "—"
                       for lo, hi in zip(rows["cv_ci_low"], rows["cv_ci_high"])],
        "public": rows["public_score"].map(num),
        "private": rows["private_score"].map(num),
        "created": rows["created_at"].str.slice(0, 16),
    })
    table.index = range(1, len(table) + 1)
    return table.to_string()


def plot_cv_vs_board(ledger: pd.DataFrame, path: Path, metric: str = "score",
                     greater_is_better: bool = True) -> Path | None:
    """Write the PNG when at least one row has a public or private score; else return None.
    Points are labelled with their row number in ``format_ledger``'s table."""
    ledger = sort_ledger(ledger, greater_is_better).reset_index(drop=True)
    ledger["rank"] = [f"#{i}" for i in range(1, len(ledger) + 1)]
    scored = ledger[ledger["public_score"].notna() | ledger["private_score"].notna()]
    scored = scored[scored["cv_mean"].notna()].drop_duplicates("sha256")
    if scored.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    x = scored["cv_mean"].to_numpy(dtype=float)
    low = np.where(scored["cv_ci_low"].notna(), scored["cv_ci_low"], x - scored["cv_std"].fillna(0))
    high = np.where(scored["cv_ci_high"].notna(), scored["cv_ci_high"], x + scored["cv_std"].fillna(0))
    for col, marker, colour in (("public_score", "o", "tab:blue"), ("private_score", "s", "tab:red")):
        y = scored[col].to_numpy(dtype=float)
        ok = np.isfinite(y)
        ax.errorbar(x[ok], y[ok], xerr=[x[ok] - low[ok], high[ok] - x[ok]], fmt=marker, color=colour,
                    capsize=3, label=col.replace("_score", ""))
    both = scored["public_score"].notna() & scored["private_score"].notna()
    for _, row in scored[both].iterrows():
        ax.plot([row["cv_mean"]] * 2, [row["public_score"], row["private_score"]], color="grey", lw=0.8, zorder=0)
    for xi, yi, label in zip(x, scored[["public_score", "private_score"]].max(axis=1), scored["rank"]):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    values = np.concatenate([low, high, scored["public_score"].dropna(), scored["private_score"].dropna()])
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max(0.01, 0.05 * (hi - lo))
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="black", lw=0.8, label="board = CV")
    ax.set_xlabel(f"CV {metric} (bootstrap 95% interval)")
    ax.set_ylabel(f"leaderboard {metric}")
    ax.set_title("CV against public and private scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def publish_ledger(study: Study, extra_text: str = "") -> Path:
    """Publish the ledger table (and the CV-vs-board plot when scores exist) to the study report."""
    ledger = read_ledger(ledger_path(study.submissions_dir))
    metric = study.metric
    text = format_ledger(ledger, metric.greater_is_better)
    if extra_text:
        text += "\n\n" + extra_text
    png = plot_cv_vs_board(ledger, report_dir(study.dir) / "submissions_cv_vs_board.png", metric.name,
                           metric.greater_is_better)
    items = [("CV vs public/private score (points numbered as the table's rows)", png)] if png else []
    return publish(study.dir, "submissions", items, text=text)
