"""``python -m folds.make``: scan a competition once and split it into K folds for a study.

Writes ``runs/<study>/``: ``competition.json`` (the resolved spec), ``manifest.csv``,
``scan_report.json``/``scan_report.txt``, ``folds.csv`` (image_id, label, fold, group) and
``folds.json`` (its hash and what made it). Folds are made once per study: a later call that
would change them (other k, seed, competition or data) is refused.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from competition.io import atomic_write_csv, atomic_write_json, atomic_write_text, read_json, sha256_file
from competition.scan import load_manifest, scan
from competition.spec import CompetitionSpec, SpecError, load_spec
from folds.grouping import FoldsError, GroupRule, make_folds, near_duplicate_groups

__all__ = ["Study", "prepare_study", "load_folds", "load_study", "StudyMismatch", "main", "data_fingerprint"]


class StudyMismatch(ValueError):
    """The study already exists with other folds, data or competition."""


@dataclass(frozen=True)
class Study:
    """Everything later steps read about a prepared study."""

    dir: Path
    spec: CompetitionSpec
    manifest: pd.DataFrame
    folds: pd.DataFrame
    folds_hash: str
    info: dict

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def data_dir(self) -> Path:
        return Path(self.info["data_dir"])


def data_fingerprint(data_dir: Path) -> str:
    """A cheap fingerprint of a data folder: every file's relative path, size and mtime."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(data_dir):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            st = p.stat()
            h.update(f"{p.relative_to(data_dir).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_folds(study_dir: str | os.PathLike) -> tuple[pd.DataFrame, str]:
    """``folds.csv`` and its hash; refuses a file whose bytes no longer match ``folds.json``."""
    study_dir = Path(study_dir)
    path, info_path = study_dir / "folds.csv", study_dir / "folds.json"
    if not path.exists() or not info_path.exists():
        raise FileNotFoundError(f"{study_dir}: no folds yet; run `python -m folds.make` or `python -m search.run`")
    info = read_json(info_path)
    actual = sha256_file(path)
    if actual != info["hash"]:
        raise StudyMismatch(f"{path}: content hash {actual[:12]} differs from folds.json's {info['hash'][:12]}; the folds were edited")
    df = pd.read_csv(path, dtype={"image_id": str, "label": str, "group": str}, keep_default_na=False)
    return df, info["hash"]


def load_study(study_dir: str | os.PathLike) -> Study:
    study_dir = Path(study_dir)
    folds, folds_hash = load_folds(study_dir)
    spec = CompetitionSpec.from_dict(read_json(study_dir / "competition.json"), source=str(study_dir / "competition.json"))
    return Study(
        dir=study_dir,
        spec=spec,
        manifest=load_manifest(study_dir / "manifest.csv"),
        folds=folds,
        folds_hash=folds_hash,
        info=read_json(study_dir / "folds.json"),
    )


def _fold_table(folds: pd.DataFrame, spec: CompetitionSpec) -> str:
    table = pd.crosstab(folds["label"], folds["fold"]).reindex(list(spec.classes)).fillna(0).astype(int)
    table.columns = [f"fold {c}" for c in table.columns]
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table.to_string()


def prepare_study(
    data_dir: str | os.PathLike,
    competition: str | os.PathLike,
    workdir: str | os.PathLike,
    study: str,
    *,
    k: int = 5,
    seed: int = 0,
    rule: GroupRule = GroupRule(),
    progress: bool = True,
    log=print,
) -> Study:
    """Scan and split once; on later calls, reuse the study if nothing that defines it changed."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise SpecError(f"data folder {data_dir} does not exist")
    spec = load_spec(competition)
    study_dir = Path(workdir) / study
    wanted = {"data_dir": str(data_dir), "competition": spec.name, "k": k, "seed": seed,
              "group_rule": {"phash_max": rule.phash_max, "dhash_max": rule.dhash_max}}
    info_path = study_dir / "folds.json"
    fingerprint = data_fingerprint(data_dir)
    if info_path.exists():
        info = read_json(info_path)
        diff = {key: (info.get(key), value) for key, value in wanted.items() if info.get(key) != value}
        if diff:
            raise StudyMismatch(
                f"study {study!r} in {study_dir} was made with other settings: "
                + "; ".join(f"{key} was {old!r}, now {new!r}" for key, (old, new) in diff.items())
                + ". Use another --study name to start a new study."
            )
        if info.get("fingerprint") == fingerprint:
            return load_study(study_dir)
        log(f"data folder {data_dir} changed since the study was made; rescanning to check the images")

    t0 = time.time()
    result = scan(data_dir, spec, progress=progress)
    spec = spec.resolved(data_dir)
    manifest = result.manifest
    train = manifest[manifest.split == "train"].reset_index(drop=True)
    groups = near_duplicate_groups(train, rule)
    group_ids = np.array([train.image_id[g] for g in groups])  # group named by its first image
    fold = make_folds(train.label, groups, k, seed)
    folds = pd.DataFrame({"image_id": train.image_id, "label": train.label, "fold": fold, "group": group_ids})

    sizes = pd.Series(groups).value_counts()
    report = dict(result.report)
    report["groups"] = {
        "rule": wanted["group_rule"],
        "n_groups": int(len(sizes)),
        "size_distribution": {str(s): int(n) for s, n in sizes.value_counts().sort_index().items()},
        "largest": int(sizes.max()),
        "mixed_label_groups": int(folds.groupby("group").label.nunique().gt(1).sum()),
    }

    if info_path.exists():  # a rescan after a data change: the images must be the same
        old = load_manifest(study_dir / "manifest.csv")
        old_set = set(zip(old.image_id, old.sha256))
        new_set = set(zip(manifest.image_id, manifest.sha256))
        if old_set != new_set:
            raise StudyMismatch(
                f"data in {data_dir} differs from study {study!r}: {len(new_set - old_set)} images new or changed, "
                f"{len(old_set - new_set)} gone. Use another --study name to start a new study."
            )
        info = read_json(info_path)
        info["fingerprint"] = fingerprint
        atomic_write_json(info_path, info)
        return load_study(study_dir)

    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study_dir / "competition.json", spec.to_dict())
    atomic_write_csv(study_dir / "manifest.csv", manifest)
    atomic_write_json(study_dir / "scan_report.json", report)
    atomic_write_csv(study_dir / "folds.csv", folds)
    text = result.summary() + "\n" + _groups_text(report["groups"]) + "\n\nper-fold class counts:\n" + _fold_table(folds, spec)
    atomic_write_text(study_dir / "scan_report.txt", text + "\n")
    info = {
        **wanted,
        "hash": sha256_file(study_dir / "folds.csv"),
        "n_train": int(len(train)),
        "n_test": int((manifest.split == "test").sum()),
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scan_seconds": round(time.time() - t0, 2),
    }
    atomic_write_json(info_path, info)  # written last: its presence marks a complete study
    log(text)
    log(f"\nwrote {study_dir}/: competition.json manifest.csv scan_report.json folds.csv folds.json")
    return load_study(study_dir)


def _groups_text(g: dict) -> str:
    dist = ", ".join(f"{n}×{s}" for s, n in g["size_distribution"].items())
    return (f"near-duplicate groups (pHash ≤ {g['rule']['phash_max']} and dHash ≤ {g['rule']['dhash_max']}, "
            f"or identical bytes): {g['n_groups']} groups; sizes (count×size): {dist}; largest {g['largest']}; "
            f"groups with mixed labels: {g['mixed_label_groups']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m folds.make", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="the competition's data folder")
    p.add_argument("--competition", default="cax-superhero", help="a preset name or a .toml/.json spec file")
    p.add_argument("--workdir", default="runs", help="where studies live")
    p.add_argument("--study", default="demo", help="study name (a folder under --workdir)")
    p.add_argument("--k", type=int, default=5, help="number of folds")
    p.add_argument("--seed", type=int, default=0, help="fold shuffling seed")
    p.add_argument("--phash-max", type=int, default=GroupRule.phash_max, help="near-duplicate pHash distance")
    p.add_argument("--dhash-max", type=int, default=GroupRule.dhash_max, help="near-duplicate dHash distance")
    p.add_argument("--extra-train", default=None,
                   help="extra labelled images (class folders, or images + CSV id,label) used only in training folds")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    existed = (Path(args.workdir) / args.study / "folds.json").exists()
    try:
        study = prepare_study(args.data, args.competition, args.workdir, args.study, k=args.k, seed=args.seed,
                              rule=GroupRule(args.phash_max, args.dhash_max))
        if args.extra_train:
            from folds.extra import prepare_extra

            extra = prepare_extra(study, args.extra_train)
            print(extra.summary())
    except (SpecError, FoldsError, StudyMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if existed:  # nothing new was printed: show the study's report again
        print((study.dir / "scan_report.txt").read_text())
    print(f"study {study.name!r}: {len(study.folds)} train images in {study.info['k']} folds, folds hash {study.folds_hash[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
