"""Score a submission locally against known labels, beside its CV, so a shake-up is visible.

    python -m submissions.score FILE --labels LABELS.csv [--study NAME] [--workdir runs]

The labels file is the demo's ``test_labels.csv`` (``filename,label,split``) or a user's own
(an id column, a label column, optionally ``split``/``Usage`` with public/private). Labels may be
spelt as the contest spells them or as class names. The submission passes the same validator as
``make``. Public, private and all-rows scores are printed with bootstrap 95 % intervals beside the
CV recorded in the ledger; the ledger row (matched by sha256) gets the scores.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from competition.io import ArtefactError, read_probabilities, sha256_file
from competition.metrics import Metric
from submissions import ledger as ledger_mod
from submissions.cli import HelpFormatter, run_cli
from submissions.study import Study, load_study
from submissions.validate import SubmissionError, examples, label_key, read_submission, validate_submission

__all__ = ["SplitScore", "ScoreResult", "read_labels", "score_submission", "format_score", "main"]

SPLITS = ("public", "private", "all")
ID_NAMES = ("id", "image_id", "filename", "file", "image")
LABEL_NAMES = ("label", "class", "target", "y", "category")
SPLIT_NAMES = ("split", "usage", "set")


@dataclass(frozen=True)
class SplitScore:
    split: str
    n: int
    score: float
    low: float
    high: float


@dataclass
class ScoreResult:
    file: Path
    sha256: str
    metric: Metric
    splits: dict[str, SplitScore]
    cv: dict | None = None  # the ledger row of this file, when it is there
    diff_interval: tuple[float, float] | None = None  # bootstrap 95 % of public − private
    warnings: list[str] = field(default_factory=list)
    n_unlabelled: int = 0
    ledger_rows_updated: int = 0


def read_labels(path: str | os.PathLike, study: Study) -> pd.DataFrame:
    """Known test labels as ``id``, ``y`` (class index) and ``split`` ("public", "private" or "")."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labels file {path} does not exist")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    lower = {c.strip().lower(): c for c in raw.columns}
    split_col = next((lower[n] for n in SPLIT_NAMES if n in lower), None)
    id_col = _pick(lower, (study.id_column.lower(), *ID_NAMES))
    label_col = _pick(lower, (study.label_column.lower(), *LABEL_NAMES), exclude={id_col})
    rest = [c for c in raw.columns if c not in (split_col, id_col, label_col)]
    id_col = id_col or (rest.pop(0) if rest else None)
    label_col = label_col or (rest.pop(0) if rest else None)
    if id_col is None or label_col is None:
        raise ValueError(f"{path}: cannot tell the id and label columns apart in {list(raw.columns)}; "
                         f"name them id,label[,split]")

    index = {lab: i for i, lab in enumerate(study.submission_labels)}
    index.update({cls: i for i, cls in enumerate(study.classes)})
    by_key: dict[str, set[int]] = {}
    for name, i in index.items():
        by_key.setdefault(label_key(name), set()).add(i)

    def class_index(label: str) -> int:
        # Exact spelling (the contest's or the class name) first; then one unambiguous match
        # ignoring case and punctuation ("Spider-Man"); -1 when neither.
        if label in index:
            return index[label]
        near = by_key.get(label_key(label), set())
        return next(iter(near)) if len(near) == 1 else -1

    y = raw[label_col].map(class_index)
    unknown = raw.loc[y < 0, label_col]
    if len(unknown):
        raise ValueError(f"{path}: {len(unknown)} labels are neither submission labels nor class names, "
                         f"e.g. {examples(unknown.unique())}")
    ids = raw[id_col].str.strip()
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"{path}: {len(dup)} ids repeat, e.g. {examples(dup.unique())}")
    split = raw[split_col].str.strip().str.lower() if split_col else pd.Series("", index=raw.index)
    split = split.where(split.isin(["public", "private"]), "")
    return pd.DataFrame({"id": ids, "y": y.astype(int), "split": split})


def score_submission(study: Study, file: str | os.PathLike, labels_path: str | os.PathLike,
                     *, update_ledger: bool = True) -> ScoreResult:
    file = Path(file)
    sub = read_submission(file)
    validate_submission(sub, study.sample, study.submission_labels, study.id_column, study.label_column)
    labels = read_labels(labels_path, study)
    metric = study.metric

    sample_ids = set(study.sample[study.id_column])
    strangers = labels.loc[~labels["id"].isin(sample_ids), "id"]
    if len(strangers):
        raise ValueError(f"{labels_path}: {len(strangers)} of {len(labels)} labelled ids are not in the sample "
                         f"submission, e.g. {examples(strangers)}: labels of another competition or another "
                         f"id spelling?")
    proba = _proba_for(file, sub, study, metric)
    row_of = pd.Series(np.arange(len(sub)), index=sub[study.id_column])
    rows = row_of.loc[labels["id"]].to_numpy()  # join on ids
    p, y = proba[rows], labels["y"].to_numpy()

    result = ScoreResult(file=file, sha256=sha256_file(file), metric=metric, splits={},
                         n_unlabelled=len(sample_ids) - len(labels))
    masks = {"public": labels["split"].eq("public").to_numpy(), "private": labels["split"].eq("private").to_numpy(),
             "all": np.ones(len(labels), dtype=bool)}
    for split, mask in masks.items():
        if mask.any():
            point, low, high, _ = ledger_mod.bootstrap_interval(y[mask], p[mask], metric)
            result.splits[split] = SplitScore(split, int(mask.sum()), point, low, high)

    result.cv = _ledger_row(study, result.sha256)
    _add_warnings(result, y, p, masks)
    if update_ledger:
        scores = {f"{s}_score": result.splits[s].score if s in result.splits else None for s in SPLITS}
        result.ledger_rows_updated = ledger_mod.update_scores(
            ledger_mod.ledger_path(study.submissions_dir), result.sha256, scores)
    return result


def _proba_for(file: Path, sub: pd.DataFrame, study: Study, metric: Metric) -> np.ndarray:
    """One-hot rows of the submitted labels; for log loss, the saved probabilities beside the file."""
    if metric.name != "log_loss":
        idx = sub[study.label_column].map({lab: i for i, lab in enumerate(study.submission_labels)}).to_numpy(int)
        return np.eye(len(study.classes))[idx]
    proba_file = file.with_name(f"{file.stem}.proba.csv")
    if not proba_file.exists():
        raise SubmissionError(f"{study.spec['metric']} needs probabilities, and {proba_file} is missing")
    try:
        table = read_probabilities(proba_file, study.classes).set_index("image_id")
    except ArtefactError as exc:
        raise SubmissionError(str(exc)) from exc
    return table.loc[sub[study.id_column], study.classes].to_numpy()


def _ledger_row(study: Study, sha256: str) -> dict | None:
    ledger = ledger_mod.read_ledger(ledger_mod.ledger_path(study.submissions_dir))
    hit = ledger[ledger["sha256"].eq(sha256)]
    return hit.iloc[0].to_dict() if len(hit) else None


def _add_warnings(result: ScoreResult, y: np.ndarray, p: np.ndarray, masks: dict) -> None:
    pub, priv = result.splits.get("public"), result.splits.get("private")
    if pub and priv:
        result.diff_interval = _diff_interval(y, p, masks["public"], masks["private"], result.metric)
        lo, hi = result.diff_interval
        if not lo <= 0.0 <= hi:
            result.warnings.append(
                f"public and private differ by {pub.score - priv.score:+.4f}, more than the bootstrap 95% interval "
                f"of their difference allows ([{lo:+.4f}, {hi:+.4f}] excludes 0): the public board is a poor "
                f"guide here; choose finals by CV")
    cv = result.cv
    if cv and pd.notna(cv.get("cv_ci_low")):
        for s in (pub, priv):
            if s and not cv["cv_ci_low"] <= s.score <= cv["cv_ci_high"]:
                side = "above" if s.score > cv["cv_ci_high"] else "below"
                result.warnings.append(
                    f"{s.split} {s.score:.4f} is {side} the CV's bootstrap 95% interval "
                    f"[{cv['cv_ci_low']:.4f}, {cv['cv_ci_high']:.4f}] ({s.n} rows)")
    if result.n_unlabelled:
        result.warnings.append(f"{result.n_unlabelled} sample ids have no label and are not scored")


def _diff_interval(y, p, pub, priv, metric: Metric, n: int = ledger_mod.BOOTSTRAP_RESAMPLES,
                   seed: int = ledger_mod.BOOTSTRAP_SEED) -> tuple[float, float]:
    """Bootstrap 95 % interval of public − private, resampling each split's rows independently."""
    rng = np.random.default_rng(seed)
    yp, pp, yq, pq = y[pub], p[pub], y[priv], p[priv]
    ip = rng.integers(0, len(yp), size=(n, len(yp)))
    iq = rng.integers(0, len(yq), size=(n, len(yq)))
    diffs = ledger_mod.resample_scores(metric, yp, pp, ip) - ledger_mod.resample_scores(metric, yq, pq, iq)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return float(lo), float(hi)


def format_score(result: ScoreResult) -> str:
    cv = result.cv
    cv_mean = cv["cv_mean"] if cv and pd.notna(cv.get("cv_mean")) else None
    lines = [
        f"submission {result.file}  (sha256 {result.sha256[:12]}…)",
        f"metric     {result.metric.name} ({'higher' if result.metric.greater_is_better else 'lower'} is better)",
        "",
        f"{'':8} {'rows':>6} {'score':>8}   {'bootstrap 95%':<19} {'vs CV':>8}",
    ]
    if cv_mean is not None:
        ci = (f"[{cv['cv_ci_low']:.4f}, {cv['cv_ci_high']:.4f}]" if pd.notna(cv.get("cv_ci_low")) else "")
        n_oof = f"{int(cv['n_oof']):>6}" if pd.notna(cv.get("n_oof")) else f"{'':>6}"
        lines.append(f"{'CV':8} {n_oof} {cv_mean:8.4f}   {ci:<19} {'':>8}   {cv['source']} ± {cv['cv_std']:.4f}")
    for split in SPLITS:
        s = result.splits.get(split)
        if s is None:
            continue
        gap = f"{s.score - cv_mean:+8.4f}" if cv_mean is not None else f"{'—':>8}"
        lines.append(f"{split:8} {s.n:6d} {s.score:8.4f}   [{s.low:.4f}, {s.high:.4f}]   {gap}")
    if cv_mean is None:
        lines.append("(no CV: this file is not in the study's ledger)")
    pub, priv = result.splits.get("public"), result.splits.get("private")
    if pub and priv:
        lo, hi = result.diff_interval
        lines.append(f"\npublic − private {pub.score - priv.score:+.4f} (bootstrap 95% [{lo:+.4f}, {hi:+.4f}])")
    for w in result.warnings:
        lines.append(f"WARNING: {w}")
    if result.ledger_rows_updated:
        lines.append(f"ledger: scores recorded on {result.ledger_rows_updated} row(s)")
    return "\n".join(lines)


def _pick(lower: dict[str, str], names, exclude=frozenset()) -> str | None:
    return next((lower[n] for n in names if n in lower and lower[n] not in exclude), None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m submissions.score",
        description="Score a submission against known labels (public, private, all) beside its CV.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("file", help="submission CSV")
    parser.add_argument("--labels", required=True, help="CSV with id, label[, split] (e.g. the demo's test_labels.csv)")
    parser.add_argument("--study", default="demo", help="study name")
    parser.add_argument("--workdir", default="runs", help="work folder holding the studies")
    args = parser.parse_args(argv)

    def run() -> int:
        study = load_study(args.workdir, args.study)
        result = score_submission(study, args.file, args.labels)
        print(format_score(result))
        if result.ledger_rows_updated:
            from submissions.plots import publish_ledger

            print(f"report     {publish_ledger(study)}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
