"""Label-noise audit from out-of-fold probabilities (confident learning, via cleanlab).

``python -m ensemble.audit [--study NAME] [--workdir runs] [--source auto|ensemble:<name>|trial:<n>] [--top N]``

Writes ``runs/<study>/audit/label_issues.csv`` — the likely mislabelled training images, worst
first, with the suggested class and the evidence — and a contact sheet of the worst ones, and
publishes both under the report's "audit" section. The CSV's ``image_id`` column is what
``search.run --exclude FILE`` reads.

OOF probabilities are what makes this honest: every image is judged by a model that never saw
its label.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.io import ArtefactError, atomic_write_csv, read_json, read_probabilities
from competition.report import publish
from ensemble.candidates import Study, load_study

__all__ = ["AuditResult", "find_label_issues", "resolve_source", "run_audit", "main"]

log = logging.getLogger(__name__)

ISSUE_COLUMNS = ["rank", "image_id", "given_label", "suggested_label", "given_prob", "suggested_prob", "fold"]


@dataclass
class AuditResult:
    source: str
    issues: pd.DataFrame
    csv: Path
    sheet: Path | None


def find_label_issues(ids, y, proba, classes) -> pd.DataFrame:
    """Confident learning (cleanlab ``find_label_issues``, pruned by noise rate, ranked by
    self-confidence): one row per likely label issue, worst (lowest probability of the given
    label) first. ``suggested_label`` is the most probable class other than the given one."""
    from cleanlab.filter import find_label_issues as cl_find

    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(y), len(classes)):
        raise ValueError(f"probabilities of shape {proba.shape} for {len(y)} labels and {len(classes)} classes")
    order = cl_find(labels=y, pred_probs=proba, return_indices_ranked_by="self_confidence", n_jobs=1)
    others = proba.copy()
    others[np.arange(len(y)), y] = -1.0
    suggested = others.argmax(axis=1)
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame({
        "rank": np.arange(1, len(order) + 1),
        "image_id": np.asarray(ids, dtype=object)[order],
        "given_label": names[y[order]],
        "suggested_label": names[suggested[order]],
        "given_prob": proba[order, y[order]].round(6),
        "suggested_prob": proba[order, suggested[order]].round(6),
    })


def _best_folder(root: Path, study: Study) -> Path | None:
    """The complete artefact folder under ``root`` with the best CV score on the study's folds."""
    sign = 1.0 if study.metric.greater_is_better else -1.0
    best, best_score = None, -np.inf
    if not root.is_dir():
        return None
    for folder in sorted(root.iterdir()):
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            continue
        meta = read_json(meta_path)
        if meta.get("folds_hash") != study.folds_hash or meta.get("metric") != study.metric.name:
            continue
        score = sign * float(meta["score_mean"])
        if score > best_score:
            best, best_score = folder, score
    return best


def resolve_source(study: Study, source: str = "auto") -> tuple[str, Path]:
    """``(label, folder)`` of the OOF predictions to audit. ``auto``: the best-scoring ensemble on
    the study's folds, else the best trial."""
    if source == "auto":
        for kind, root in (("ensemble", study.dir / "ensemble"), ("trial", study.dir / "trials")):
            folder = _best_folder(root, study)
            if folder is not None:
                return f"{kind}:{folder.name}", folder
        raise ArtefactError(f"study {study.name!r}: no complete ensemble or trial to audit")
    kind, _, name = source.partition(":")
    if kind not in ("ensemble", "trial") or not name:
        raise ValueError(f"source must be 'auto', 'ensemble:<name>' or 'trial:<n>' but got {source!r}")
    folder = study.dir / ("ensemble" if kind == "ensemble" else "trials") / name
    if not (folder / "meta.json").exists():
        raise ArtefactError(f"{source}: {folder / 'meta.json'} is missing (incomplete or unknown)")
    meta = read_json(folder / "meta.json")
    if meta.get("folds_hash") != study.folds_hash:
        raise ArtefactError(f"{source}: folds hash differs from the study's (made on other folds)")
    return source, folder


def _manifest_paths(study: Study) -> pd.Series | None:
    path = study.dir / "manifest.csv"
    if not path.exists():
        return None
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"image_id", "path"} <= set(manifest.columns):
        return None
    if "split" in manifest.columns:
        manifest = manifest[manifest["split"] == "train"]
    return manifest.drop_duplicates("image_id").set_index("image_id")["path"]


def _short_id(image_id: str, width: int = 22) -> str:
    """The file part of an id, cut to fit under a thumbnail (the CSV has the whole id)."""
    name = str(image_id).rsplit("/", 1)[-1]
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _load_image(path: str):
    try:
        from competition.images import load_rgb
    except ImportError:  # competition.images is the contract's loader; plain PIL until it lands
        from PIL import Image

        with Image.open(path) as img:
            return img.convert("RGB")
    return load_rgb(path)


def run_audit(study: Study, source: str = "auto", top: int | None = None, sheet: int = 36,
              publish_report: bool = True) -> AuditResult:
    """Audit ``source``'s OOF probabilities; write the CSV (the ``top`` worst, default all) and a
    contact sheet of the ``sheet`` worst when image paths are known."""
    if top is not None and top < 1:
        raise ValueError(f"top must be at least 1 but got {top}")
    label, folder = resolve_source(study, source)
    oof = read_probabilities(folder / "oof.csv", study.classes).set_index("image_id")
    missing = pd.Index(study.ids).difference(oof.index)
    if len(missing):
        raise ArtefactError(f"{label}: {len(missing)} train ids missing from {folder / 'oof.csv'}")
    proba = oof.reindex(study.ids)[list(study.classes)].to_numpy(dtype=np.float64)
    issues = find_label_issues(study.ids, study.y, proba, study.classes)
    fold_of = pd.Series(study.folds, index=study.ids)
    issues["fold"] = fold_of.reindex(issues["image_id"]).to_numpy()
    paths = _manifest_paths(study)
    if paths is not None:
        issues["path"] = paths.reindex(issues["image_id"]).fillna("").to_numpy()
    if top is not None:
        issues = issues.head(top)

    out = study.dir / "audit"
    csv = atomic_write_csv(out / "label_issues.csv", issues)
    sheet_path = None
    if "path" in issues.columns and sheet > 0:
        shown = issues[issues["path"].map(lambda p: bool(p) and os.path.exists(p))].head(sheet)
        if len(shown):
            items = [(r.path, f"#{r.rank} {_short_id(r.image_id)}\n{r.given_label} →\n{r.suggested_label} "
                              f"({r.given_prob:.2f}→{r.suggested_prob:.2f})")
                     for r in shown.itertuples()]
            from ensemble.plots import contact_sheet_png

            sheet_path = contact_sheet_png(items, out / "label_issues.png", _load_image,
                                           title=f"likely label issues ({label}): given → suggested")
    if sheet_path is None:
        log.info("audit: no image paths available, contact sheet skipped")
    summary = (f"source {label}: {len(issues)} likely label issues among {len(study.ids)} training "
               f"images ({100 * len(issues) / max(len(study.ids), 1):.1f}%), worst first in {csv.name}\n\n"
               + issues.head(20).to_string(index=False))
    if publish_report:
        items = [] if sheet_path is None else [("worst label issues: given → suggested", sheet_path)]
        publish(study.dir, "audit", items, text=summary)
    print(summary)
    return AuditResult(source=label, issues=issues, csv=csv, sheet=sheet_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="demo", help="study name: the folder under --workdir (default: %(default)s)")
    parser.add_argument("--workdir", default="runs", help="work folder holding the studies (default: %(default)s)")
    parser.add_argument("--source", default="auto", help="auto (default: the best ensemble, else the best trial) | ensemble:<name> | trial:<n>")
    parser.add_argument("--top", type=int, default=None, help="keep only the N worst issues (default: all)")
    parser.add_argument("--sheet", type=int, default=36, help="thumbnails on the contact sheet (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = run_audit(load_study(args.workdir, args.study), args.source, args.top, args.sheet)
    except (ArtefactError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result.csv}" + (f" and {result.sheet}" if result.sheet else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
