"""Extra training images (external or scraped): scanned like a train set, de-duplicated against
the competition's train and test images and against each other, used only inside training folds.

Layouts, as for a train set: one folder per class (``DIR/<Class>/…``), or images plus a CSV of
``id,label`` in ``DIR`` (the CSV's name: ``labels.csv``, or the only ``*.csv`` there).

An extra image that is a near-duplicate of a **test** image is dropped and reported: training on
it would put the test answer into the model. One that duplicates a **train** image is dropped
too: it would sit in the training folds while its twin is validated, and CV would stop meaning
anything. Duplicates among the extras keep their first copy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pandas as pd

from competition.scan import _train_entries, probe_images
from competition.spec import CompetitionSpec, SpecError
from folds.grouping import GroupRule, near_duplicate_groups

__all__ = ["scan_extra", "ExtraResult", "prepare_extra", "load_extra"]


@dataclasses.dataclass
class ExtraResult:
    manifest: pd.DataFrame  # kept extra images, split == "extra"
    report: dict

    @property
    def info(self) -> dict:
        """What a trial records about the extras it trained on."""
        return {k: self.report[k] for k in ("folder", "count", "content_hash")}

    def summary(self) -> str:
        r = self.report
        lines = [f"extra images in {r['folder']}: {r['scanned']} readable, {r['count']} kept",
                 f"  dropped as near-duplicates of test images: {len(r['dropped_test'])}",
                 f"  dropped as near-duplicates of train images: {len(r['dropped_train'])}",
                 f"  dropped as duplicates of other extras: {len(r['dropped_extra'])}",
                 f"  unreadable: {len(r['unreadable'])}, junk skipped: {r['junk_skipped']}"]
        for d in r["dropped_test"][:5]:
            lines.append(f"  test twin: {d['path']} ~ {d['twin']}")
        return "\n".join(lines)


def _layout(extra_dir: Path, spec: CompetitionSpec) -> CompetitionSpec:
    folders = [p.name for p in extra_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    csvs = sorted(extra_dir.glob("*.csv"))
    if folders:
        return dataclasses.replace(spec, train_dir=".", train_layout="folders")
    if csvs:
        csv = extra_dir / "labels.csv" if (extra_dir / "labels.csv").exists() else csvs[0]
        if len(csvs) > 1 and csv.name != "labels.csv":
            raise SpecError(f"{extra_dir}: several CSV files {[c.name for c in csvs]}; name the labels file labels.csv")
        return dataclasses.replace(spec, train_dir=".", train_layout="csv", train_csv=csv.name,
                                   train_csv_id_column="id", train_csv_label_column="label")
    raise SpecError(f"{extra_dir}: no class folders and no CSV of id,label: not a train-set layout")


def scan_extra(extra_dir: str | os.PathLike, spec: CompetitionSpec, reference: pd.DataFrame, *,
               rule=None, progress: bool = True) -> ExtraResult:
    """Scan ``extra_dir`` and drop what duplicates ``reference`` (the study's manifest) or itself."""
    extra_dir = Path(extra_dir).resolve()
    if not extra_dir.is_dir():
        raise SpecError(f"extra-train folder {extra_dir} does not exist")
    layout = _layout(extra_dir, spec)
    junk: list[str] = []
    entries = _train_entries(layout, extra_dir, junk, require_all_classes=False)
    rows_in = [(f"extra:{i}", "extra", p, lab) for i, p, lab in entries]
    manifest, unreadable = probe_images(rows_in, progress=progress, desc="scan extras")

    both = pd.concat([reference.reset_index(drop=True), manifest], ignore_index=True)
    groups = near_duplicate_groups(both, rule or GroupRule())
    n_ref = len(reference)
    owner: dict[int, tuple[str, str]] = {}  # group -> (split, path) of a reference image, test first
    for i in range(n_ref):
        split = reference.split.iloc[i]
        if groups[i] not in owner or (split == "test" and owner[groups[i]][0] != "test"):
            owner[groups[i]] = (split, reference.path.iloc[i])
    keep, dropped = [], {"test": [], "train": [], "extra": []}
    first_extra: dict[int, str] = {}
    for j in range(len(manifest)):
        g, path = groups[n_ref + j], manifest.path.iloc[j]
        if g in owner:
            split, twin = owner[g]
            dropped["test" if split == "test" else "train"].append({"path": path, "twin": twin})
        elif g in first_extra:
            dropped["extra"].append({"path": path, "twin": first_extra[g]})
        else:
            first_extra[g] = path
            keep.append(j)
    kept = manifest.iloc[keep].reset_index(drop=True)
    content = hashlib.sha256("\n".join(sorted(kept.sha256 + ":" + kept.label)).encode()).hexdigest()
    report = {
        "folder": str(extra_dir),
        "scanned": int(len(manifest)),
        "count": int(len(kept)),
        "content_hash": content,
        "class_counts": {c: int((kept.label == c).sum()) for c in spec.classes},
        "dropped_test": dropped["test"],
        "dropped_train": dropped["train"],
        "dropped_extra": dropped["extra"],
        "unreadable": unreadable,
        "junk_skipped": len(junk),
    }
    return ExtraResult(kept, report)


def prepare_extra(study, extra_dir: str | os.PathLike, *, progress: bool = True, log=print) -> ExtraResult:
    """Scan the extras for ``study`` once and keep them in ``<study>/extra/``; reuse them while the
    folder is unchanged."""
    from competition.io import atomic_write_csv, atomic_write_json, read_json
    from folds.make import data_fingerprint

    extra_dir = Path(extra_dir).resolve()
    out = Path(study.dir) / "extra"
    fingerprint = data_fingerprint(extra_dir) if extra_dir.is_dir() else None
    if (out / "report.json").exists():
        report = read_json(out / "report.json")
        if report.get("folder") == str(extra_dir) and report.get("fingerprint") == fingerprint:
            return load_extra(study.dir)
    rule = GroupRule(**study.info.get("group_rule", {}))
    result = scan_extra(extra_dir, study.spec, study.manifest, rule=rule, progress=progress)
    result.report["fingerprint"] = fingerprint
    atomic_write_csv(out / "manifest.csv", result.manifest)
    atomic_write_json(out / "report.json", result.report)  # last: marks the extras complete
    log(result.summary())
    return result


def load_extra(study_dir: str | os.PathLike) -> ExtraResult:
    from competition.io import read_json
    from competition.scan import load_manifest

    out = Path(study_dir) / "extra"
    return ExtraResult(load_manifest(out / "manifest.csv"), read_json(out / "report.json"))
