"""Turn a trial's or ensemble's test probabilities into the competition's submission CSV.

    python -m submissions.make [--study NAME] [--workdir runs] \
        [--from auto|ensemble|trial|ensemble:<name>|trial:N] [--out FILE]

The file is validated in memory and again as written, before it is renamed into place: an
invalid submission is never written. Beside it go its probabilities (``<stem>.proba.csv``, for
later blends), and a row in the study's ledger with the source's CV and a bootstrap interval.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from competition.io import ArtefactError, atomic_path, sha256_file, write_probabilities
from competition.metrics import get_metric
from submissions import ledger as ledger_mod
from submissions.cli import HelpFormatter, run_cli
from submissions.study import Source, SourceError, Study, check_source, load_study, resolve_source
from submissions.validate import MAX_EXAMPLES, examples, id_hint, validate_submission

__all__ = ["MadeSubmission", "build_submission", "make_submission", "cv_summary", "default_out", "main"]


@dataclass(frozen=True)
class MadeSubmission:
    path: Path
    proba_path: Path
    source: Source
    reason: str
    row: dict
    submission: pd.DataFrame


def build_submission(study: Study, source: Source) -> tuple[pd.DataFrame, np.ndarray]:
    """The submission frame (sample order, contest spelling) and its probabilities, validated."""
    check_source(study, source)
    sample = study.sample
    extra_cols = [c for c in sample.columns if c not in (study.id_column, study.label_column)]
    if extra_cols:
        raise SourceError(f"the sample submission has columns {extra_cols} this tool cannot fill")
    try:
        test = source.read_test(study.classes)
    except ArtefactError as exc:
        raise SourceError(str(exc)) from exc

    sample_ids = sample[study.id_column].tolist()
    test_ids = test["image_id"].tolist()
    test_set, sample_set = set(test_ids), set(sample_ids)
    missing = [i for i in sample_ids if i not in test_set]
    # A test image the scan could not decode has no prediction; it gets the training class prior
    # (said out loud), so one broken file does not cost the whole submission.
    unreadable = set(study.unreadable_test_ids())
    filled = [i for i in missing if i in unreadable]
    missing = [i for i in missing if i not in unreadable]
    extra = [i for i in test_ids if i not in sample_set]
    problems = []
    if missing:
        problems.append(
            f"{source.dir / 'test.csv'} lacks {len(missing)} of {len(sample_ids)} sample ids, e.g. {examples(missing)}"
        )
    if extra:
        problems.append(
            f"{source.dir / 'test.csv'} has {len(extra)} ids not in the sample, e.g. {examples(extra)}"
            + id_hint(extra, missing)
        )
    if problems:
        raise SourceError(problems)

    if filled:
        print(f"warning: {len(filled)} test images could not be decoded (scan_report.json) and get the training "
              f"class prior: {examples(filled)}", file=sys.stderr)
        prior = pd.DataFrame([study.class_prior()] * len(filled), columns=study.classes).assign(image_id=filled)
        test = pd.concat([test, prior], ignore_index=True)
    # Join on ids, never on position: the sample's order is the submission's order.
    proba = test.set_index("image_id").loc[sample_ids, study.classes].to_numpy(dtype=np.float64)
    label_of = study.label_of
    labels = [label_of[study.classes[j]] for j in proba.argmax(axis=1)]
    submission = pd.DataFrame({study.id_column: sample_ids, study.label_column: labels})[list(sample.columns)]
    validate_submission(submission, sample, study.submission_labels, study.id_column, study.label_column)
    return submission, proba


def cv_summary(study: Study, source: Source) -> dict:
    """The ledger's CV fields: fold mean ± std and its SE (std / sqrt(k)) from meta; the pooled OOF
    score with a bootstrap 95 % interval and SE over OOF rows."""
    meta = source.meta
    fold_scores = [float(s) for s in meta.get("fold_scores") or []]
    std = float(meta.get("score_std", np.std(fold_scores) if fold_scores else np.nan))
    out = {
        "metric": meta.get("metric", study.spec["metric"]),
        "cv_mean": float(meta.get("score_mean", np.nan)),
        "cv_std": std,
        "cv_se": std / np.sqrt(len(fold_scores)) if len(fold_scores) > 1 else np.nan,
    }
    metric = get_metric(out["metric"])
    try:
        oof = source.read_oof(study.classes)
    except ArtefactError as exc:
        print(f"warning: no bootstrap interval for {source.ref}: {exc}", file=sys.stderr)
        return out
    y = oof["label"].map({c: i for i, c in enumerate(study.classes)})
    known = y.notna().to_numpy()
    if not known.all():
        print(f"warning: {source.ref} oof.csv has {int((~known).sum())} rows with unknown labels; left out",
              file=sys.stderr)
    point, low, high, se = ledger_mod.bootstrap_interval(
        y[known].to_numpy(dtype=int), oof.loc[known, study.classes].to_numpy(), metric
    )
    out.update(cv_oof=point, cv_ci_low=low, cv_ci_high=high, cv_boot_se=se, n_oof=int(known.sum()))
    return out


def default_out(study: Study, source: Source, when: datetime | None = None) -> Path:
    """``<study>_<source>_<timestamp>.csv``, reserved by creating it empty (so two makes in one
    second keep both files); the caller replaces it, or removes it when the make fails."""
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source.kind}-{source.name}")
    study.submissions_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = study.submissions_dir / f"{study.name}_{tag}_{stamp}{'' if n == 1 else f'-{n}'}.csv"
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free file name for {study.name}_{tag}_{stamp}*.csv")


def proba_path_for(out: Path) -> Path:
    return out.with_name(f"{out.stem}.proba.csv")


def file_ref(path: Path, study: Study) -> str:
    """How the ledger names a file: relative to the submissions folder when inside it."""
    path, root = Path(path).resolve(), study.submissions_dir.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def resolve_file_ref(ref: str, study: Study) -> Path:
    path = Path(ref)
    return path if path.is_absolute() else study.submissions_dir / path


def make_submission(study: Study, choice: str = "auto", out: str | os.PathLike | None = None) -> MadeSubmission:
    source, reason = resolve_source(study, choice)
    submission, proba = build_submission(study, source)
    cv = cv_summary(study, source)
    reserved = out is None
    out = default_out(study, source) if reserved else Path(out)
    try:
        with atomic_path(out) as tmp:
            submission.to_csv(tmp, index=False)
            # Check the bytes that will be handed in, not only the frame they came from.
            validate_submission(tmp, study.sample, study.submission_labels, study.id_column, study.label_column)
    except BaseException:
        if reserved and out.exists() and out.stat().st_size == 0:
            out.unlink()
        raise
    proba_path = proba_path_for(out)
    write_probabilities(proba_path, submission[study.id_column].tolist(), proba, study.classes)

    row = {
        "file": file_ref(out, study),
        "sha256": sha256_file(out),
        "source": source.ref,
        "kind": source.kind,
        **cv,
        "components": ";".join(source.components),
        "n_rows": len(submission),
        "proba_file": file_ref(proba_path, study),
        "source_dir": os.path.relpath(source.dir, study.dir),
        "created_at": ledger_mod.utc_now(),
        "git_commit": ledger_mod.git_commit(),
    }
    ledger_mod.append_row(ledger_mod.ledger_path(study.submissions_dir), row)
    return MadeSubmission(out, proba_path, source, reason, row, submission)


def describe(made: MadeSubmission, study: Study) -> str:
    row = made.row
    counts = made.submission[study.label_column].value_counts()
    shown = ", ".join(f"{k} {v}" for k, v in counts.head(MAX_EXAMPLES + 1).items())
    lines = [
        f"source   {made.source.ref}: {made.reason}",
        f"wrote    {made.path} ({row['n_rows']} rows, valid against {study.sample_path.name})",
        f"proba    {made.proba_path}",
        f"CV       {row['metric']} {row['cv_mean']:.4f} ± {row['cv_std']:.4f} over folds",
    ]
    if "cv_ci_low" in row:
        lines.append(
            f"         OOF {row['cv_oof']:.4f} on {row['n_oof']} rows, bootstrap 95% "
            f"[{row['cv_ci_low']:.4f}, {row['cv_ci_high']:.4f}]"
        )
    lines.append(f"labels   {len(counts)} of {len(study.submission_labels)} used: {shown}"
                 f"{', …' if len(counts) > MAX_EXAMPLES + 1 else ''}")
    lines.append(f"ledger   {ledger_mod.ledger_path(study.submissions_dir)}  sha256 {row['sha256'][:12]}…")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m submissions.make",
        description="Write the competition's submission CSV from the best (or a named) source.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--study", default="demo", help="study name")
    parser.add_argument("--workdir", default="runs", help="work folder holding the studies")
    parser.add_argument("--from", dest="source", default="auto",
                        help="auto | ensemble | trial | ensemble:<name> | trial:<n>")
    parser.add_argument("--out", default=None,
                        help="output CSV; by default <workdir>/<study>/submissions/<study>_<source>_<timestamp>.csv")
    args = parser.parse_args(argv)

    def run() -> int:
        study = load_study(args.workdir, args.study)
        made = make_submission(study, args.source, args.out)
        print(describe(made, study))
        from submissions.plots import publish_ledger

        print(f"report   {publish_ledger(study)}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
