"""Show the ledger and recommend the final submissions by CV, not by public score.

    python -m submissions.list [--study NAME] [--workdir runs] [--pick 2]

The first pick is the best CV. Each further pick comes from the submissions whose CV is within
one standard error of the best (the larger of the fold SE ``std / sqrt(k)`` and the bootstrap SE
over OOF rows): of those, the half whose
errors overlap least with the picks already made — low correlation of OOF errors when both
sources' ``oof.csv`` are there, else most test rows where the predicted labels disagree — and of
that half the best CV. Two finals that fail on different images hedge a shake-up; two copies of
one model do not.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.io import ArtefactError, read_probabilities
from submissions.cli import HelpFormatter, run_cli
from submissions.ledger import ledger_path, read_ledger
from submissions.make import resolve_file_ref
from submissions.plots import format_ledger, publish_ledger, sort_ledger
from submissions.study import Study, load_study
from submissions.validate import read_submission

__all__ = ["Pick", "pick_finals", "label_disagreement", "oof_error_correlation", "format_picks", "main"]


@dataclass(frozen=True)
class Pick:
    row: dict
    reason: str
    disagreement: float = float("nan")  # with the first pick, share of test rows
    error_correlation: float = float("nan")  # with the first pick, over shared OOF rows


class _Predictions:
    """Lazy, cached test labels and OOF errors of ledger rows."""

    def __init__(self, study: Study):
        self.study = study
        self._test: dict[str, pd.Series | None] = {}
        self._oof: dict[str, pd.Series | None] = {}

    def test_labels(self, row: dict) -> pd.Series | None:
        """Predicted class per test id: the saved probabilities' argmax, else the CSV's labels."""
        key = row["sha256"]
        if key not in self._test:
            self._test[key] = self._read_test(row)
        return self._test[key]

    def _read_test(self, row: dict) -> pd.Series | None:
        study = self.study
        if row.get("proba_file"):
            path = resolve_file_ref(row["proba_file"], study)
            try:
                table = read_probabilities(path, study.classes)
                return pd.Series(np.asarray(study.classes)[table[study.classes].to_numpy().argmax(1)],
                                 index=table["image_id"])
            except ArtefactError:
                pass  # fall back to the submission's own labels
        path = resolve_file_ref(row["file"], study)
        if not path.exists():
            return None
        sub = read_submission(path)
        to_class = {lab: cls for cls, lab in study.label_of.items()}
        return pd.Series(sub[study.label_column].map(to_class).to_numpy(), index=sub[study.id_column])

    def oof_errors(self, row: dict) -> pd.Series | None:
        """1.0 where the source's OOF argmax misses the label, per image id; None without oof.csv."""
        key = str(row.get("source_dir") or "")
        if not key:
            return None
        if key not in self._oof:
            path = self.study.dir / key / "oof.csv"
            try:
                oof = read_probabilities(path, self.study.classes)
            except ArtefactError:
                self._oof[key] = None
            else:
                pred = np.asarray(self.study.classes)[oof[self.study.classes].to_numpy().argmax(1)]
                self._oof[key] = pd.Series((pred != oof["label"].to_numpy()).astype(float), index=oof["image_id"])
        return self._oof[key]


def label_disagreement(a: pd.Series, b: pd.Series) -> float:
    """Share of shared test ids whose predicted labels differ."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    return float((joined["a"] != joined["b"]).mean()) if len(joined) else float("nan")


def oof_error_correlation(a: pd.Series, b: pd.Series) -> float:
    """Pearson correlation of two 0/1 error vectors over shared OOF ids (NaN if one is constant)."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    if len(joined) < 2 or joined["a"].std() == 0 or joined["b"].std() == 0:
        return float("nan")
    return float(np.corrcoef(joined["a"], joined["b"])[0, 1])


def pick_finals(study: Study, ledger: pd.DataFrame, k: int = 2) -> tuple[list[Pick], list[str]]:
    """Up to ``k`` picks with their reasons, and notes on rows left out."""
    metric = study.metric
    notes = []
    rows = ledger[ledger["cv_mean"].notna()]
    other_metric = rows[rows["metric"] != metric.name]
    if len(other_metric):
        notes.append(f"{len(other_metric)} rows scored with another metric than {metric.name} are left out")
        rows = rows[rows["metric"] == metric.name]
    rows = sort_ledger(rows.drop_duplicates("sha256", keep="first"), metric.greater_is_better)
    exists = rows["file"].map(lambda f: resolve_file_ref(f, study).exists())
    if (~exists).any():
        notes.append(f"{int((~exists).sum())} ledger files no longer exist and are left out, "
                     f"e.g. {rows.loc[~exists, 'file'].iloc[0]}")
        rows = rows[exists]
    candidates = [r for _, r in rows.iterrows()]
    if not candidates or k < 1:
        return [], notes

    preds = _Predictions(study)
    best = candidates[0].to_dict()
    picks = [Pick(best, f"best CV: {_cv_text(best)}")]
    se = _standard_error(best)
    remaining = [r.to_dict() for r in candidates[1:]]
    while len(picks) < k and remaining:
        picks.append(_next_pick(picks, remaining, se, preds, metric.greater_is_better))
        remaining = [r for r in remaining if r["sha256"] != picks[-1].row["sha256"]]

    public = rows["public_score"].dropna()
    if len(public):
        top = rows.loc[public.idxmax() if metric.greater_is_better else public.idxmin()]
        if top["sha256"] not in {p.row["sha256"] for p in picks}:
            notes.append(f"not picked: {Path(top['file']).name} has the best public score {top['public_score']:.4f} "
                         f"but CV {top['cv_mean']:.4f}; a public board of a few hundred rows is noise next to CV")
    return picks, notes


def _next_pick(picks: list[Pick], remaining: list[dict], se: float, preds: _Predictions, greater: bool) -> Pick:
    best_cv = picks[0].row["cv_mean"]
    within = [r for r in remaining if abs(r["cv_mean"] - best_cv) <= se + 1e-12]
    if not within:
        r = remaining[0]
        dis, corr = _diversity(r, picks, preds)
        return Pick(r, f"no other submission is within one SE ({se:.4f}) of the best CV, so the next best CV: "
                       f"{_cv_text(r)}{_diversity_text(dis, corr)}", dis, corr)

    # (A file with the same labels as a pick has the same sha256 and was dropped already.)
    scored = [(r, *_diversity(r, picks, preds)) for r in within]
    use_corr = all(np.isfinite(s[2]) for s in scored)
    if use_corr:
        scored.sort(key=lambda s: (s[2], -_finite(s[1])))
        measure = "OOF errors correlate least"
    else:
        scored.sort(key=lambda s: -_finite(s[1]))
        measure = "test labels disagree most"
    diverse = scored[: math.ceil(len(scored) / 2)]
    sign = -1.0 if greater else 1.0
    r, dis, corr = min(diverse, key=lambda s: sign * s[0]["cv_mean"])
    gap = r["cv_mean"] - best_cv
    others = "the first pick" if len(picks) == 1 else "the picks so far"
    if len(within) == 1:
        lead = f"the only other submission within one SE ({se:.4f}) of the best CV"
    else:
        lead = (f"{len(within)} submissions within one SE ({se:.4f}) of the best CV; of the {len(diverse)} whose "
                f"{measure} with {others}, the best CV")
    reason = f"{lead}: {_cv_text(r)} ({gap:+.4f} from the best){_diversity_text(dis, corr)}"
    return Pick(r, reason, dis, corr)


def _diversity(row: dict, picks: list[Pick], preds: _Predictions) -> tuple[float, float]:
    """Least disagreement and highest error correlation with any pick so far (the worst case)."""
    dis, corr = [], []
    for p in picks:
        a, b = preds.test_labels(row), preds.test_labels(p.row)
        dis.append(label_disagreement(a, b) if a is not None and b is not None else np.nan)
        ea, eb = preds.oof_errors(row), preds.oof_errors(p.row)
        corr.append(oof_error_correlation(ea, eb) if ea is not None and eb is not None else np.nan)
    return float(np.min(dis)), float(np.max(corr))


def _standard_error(row: dict) -> float:
    """The larger of the fold SE (std / sqrt(k)) and the bootstrap SE over OOF rows: with five folds
    the fold spread can be small by luck, and claiming a difference CV cannot see is the costlier
    mistake."""
    ses = [float(row.get(c)) for c in ("cv_se", "cv_boot_se") if pd.notna(row.get(c))]
    return max(ses, default=0.0)


def _cv_text(row: dict) -> str:
    text = f"{row['source']} CV {row['cv_mean']:.4f} ± {row['cv_std']:.4f}"
    if pd.notna(row.get("cv_ci_low")):
        text += f" (OOF 95% [{row['cv_ci_low']:.4f}, {row['cv_ci_high']:.4f}])"
    return text


def _diversity_text(dis: float, corr: float) -> str:
    parts = []
    if np.isfinite(dis):
        parts.append(f"disagrees with the first pick on {dis:.1%} of test rows")
    if np.isfinite(corr):
        parts.append(f"OOF error correlation {corr:.2f}")
    return "; " + ", ".join(parts) if parts else ""


def _finite(x: float) -> float:
    return x if np.isfinite(x) else -1.0


def format_picks(picks: list[Pick], notes: list[str]) -> str:
    if not picks:
        return "no submission to recommend: the ledger has no row with a CV score"
    lines = ["Recommended finals (by CV, not public score):"]
    for i, p in enumerate(picks, 1):
        lines.append(f"  {i}. {p.row['file']}\n     {p.reason}")
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m submissions.list",
        description="Print the submission ledger (best CV first) and recommend final submissions.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--study", default="demo", help="study name")
    parser.add_argument("--workdir", default="runs", help="work folder holding the studies")
    parser.add_argument("--pick", type=int, default=0, help="how many final submissions to recommend")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.pick < 0:
            raise ValueError(f"--pick must be 0 or more, got {args.pick}")
        study = load_study(args.workdir, args.study)
        ledger = read_ledger(ledger_path(study.submissions_dir))
        print(f"ledger {ledger_path(study.submissions_dir)} ({len(ledger)} rows, {study.metric.name}, best CV first)")
        print(format_ledger(ledger, study.metric.greater_is_better))
        text = ""
        if args.pick and not ledger.empty:
            text = format_picks(*pick_finals(study, ledger, args.pick))
            print()
            print(text)
        print(f"\nreport {publish_ledger(study, text)}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
