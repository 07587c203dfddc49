"""Scan a competition's data folder into a manifest (one row per usable image) and a report.

Junk files are skipped and counted; unreadable images are listed and left out (the run goes on);
layout errors that would make every later step wrong stop the scan with a message naming the
cause. Exact duplicates and label conflicts (one image filed under two classes) are reported.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import pandas as pd
from tqdm.auto import tqdm

from competition.images import IMAGE_EXTENSIONS, load_rgb
from competition.io import sha256_bytes
from competition.spec import CompetitionSpec, SpecError

__all__ = ["scan", "ScanResult", "load_manifest", "MANIFEST_COLUMNS", "JUNK_NAMES"]

MANIFEST_COLUMNS = ["image_id", "split", "path", "label", "sha256", "width", "height", "format", "phash", "dhash"]
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}
_EXAMPLES = 5


@dataclass
class ScanResult:
    manifest: pd.DataFrame
    report: dict = field(default_factory=dict)

    def summary(self) -> str:
        r = self.report
        lines = [
            f"train images: {r['n_train']} in {len(r['class_counts'])} classes; test images: {r['n_test']}",
            f"junk files skipped: {r['junk_skipped']}" + (f" (e.g. {r['junk_examples'][:3]})" if r["junk_skipped"] else ""),
            f"unreadable images left out: {len(r['unreadable'])}"
            + "".join(f"\n  {u['path']}: {u['error']}" for u in r["unreadable"][:_EXAMPLES]),
            f"exact duplicate groups in train: {r['duplicate_groups']} ({r['duplicate_images']} images)",
            f"label conflicts (same image under two classes): {len(r['label_conflicts'])}"
            + "".join(f"\n  {c['sha256'][:12]}: {c['labels']} {c['image_ids'][:3]}" for c in r["label_conflicts"][:_EXAMPLES]),
            f"test images identical to a train image: {r['test_in_train']}",
        ]
        return "\n".join(lines)


def _is_junk(path: Path) -> bool:
    name = path.name
    return (
        name.lower() in JUNK_NAMES
        or name.startswith(".")
        or name.startswith("._")
        or path.suffix.lower() not in IMAGE_EXTENSIONS
    )


def _safe_join(root: Path, rel: str, what: str) -> Path:
    """``root / rel``, refusing ids that would resolve outside ``root``."""
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or ".." in Path(rel).parts:
        raise SpecError(f"{what} {rel!r} would resolve outside the data folder {root}")
    path = (root / rel).resolve()
    if root.resolve() not in path.parents and path != root.resolve():
        raise SpecError(f"{what} {rel!r} would resolve outside the data folder {root}")
    return path


def _examples(values) -> str:
    values = sorted(values)
    more = f" … (+{len(values) - _EXAMPLES} more)" if len(values) > _EXAMPLES else ""
    return ", ".join(repr(v) for v in values[:_EXAMPLES]) + more


def _list_images(folder: Path, junk: list[str]) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            (junk.append(str(p)) if _is_junk(p) else files.append(p))
    return files


def _train_entries(spec: CompetitionSpec, data_dir: Path, junk: list[str], *,
                   require_all_classes: bool = True) -> list[tuple[str, Path, str]]:
    root = data_dir / spec.train_dir
    if not root.is_dir():
        raise SpecError(f"train folder {root} does not exist")
    entries: list[tuple[str, Path, str]] = []
    if spec.train_layout == "folders":
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for p in root.iterdir():
            if p.is_file():
                junk.append(str(p))
        unknown = [p.name for p in folders if p.name not in spec.classes]
        if unknown:
            raise SpecError(f"{root}: class folders {unknown} are not in the class list {list(spec.classes)}")
        missing = [c for c in spec.classes if not (root / c).is_dir()]
        if missing and require_all_classes:
            raise SpecError(f"{root}: no folder for classes {missing}")
        for folder in folders:
            files = _list_images(folder, junk)
            if not files:
                raise SpecError(f"class folder {folder} is empty (no images)")
            for f in files:
                image_id = f.relative_to(root).with_suffix("").as_posix()
                entries.append((image_id, f, folder.name))
    else:
        csv = data_dir / spec.train_csv
        if not csv.is_file():
            raise SpecError(f"train CSV {csv} does not exist")
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        for col in (spec.train_csv_id_column, spec.train_csv_label_column):
            if col not in df.columns:
                raise SpecError(f"{csv}: no column {col!r} (columns: {list(df.columns)})")
        bad = sorted(set(df[spec.train_csv_label_column]) - set(spec.classes))
        if bad:
            n = int(df[spec.train_csv_label_column].isin(bad).sum())
            raise SpecError(f"{csv}: {n} rows have labels not in the class list: {_examples(bad)}; classes: {list(spec.classes)}")
        dup = df[spec.train_csv_id_column][df[spec.train_csv_id_column].duplicated()]
        if len(dup):
            raise SpecError(f"{csv}: {len(dup)} duplicate ids: {_examples(set(dup))}")
        # An id names a file under the train folder, with or without its extension.
        index: dict[str, Path] = {}
        for f in _list_images(root, junk):
            rel = f.relative_to(root).as_posix()
            index[rel] = f
            index.setdefault(rel.rsplit(".", 1)[0], f)
        missing = []
        for image_id, label in zip(df[spec.train_csv_id_column], df[spec.train_csv_label_column]):
            _safe_join(root, image_id, "train id")
            if image_id not in index:
                missing.append(image_id)
                continue
            entries.append((image_id, index[image_id], label))
        if missing:
            raise SpecError(f"{csv}: {len(missing)} ids have no image in {root}: {_examples(missing)}")
        empty = [c for c in spec.classes if c not in set(df[spec.train_csv_label_column])]
        if empty and require_all_classes:
            raise SpecError(f"{csv}: classes with no images: {empty}")
    return entries


def _test_entries(spec: CompetitionSpec, data_dir: Path, junk: list[str]) -> tuple[list[tuple[str, Path, str]], list[str]]:
    root = data_dir / spec.test_dir
    if not root.is_dir():
        raise SpecError(f"test folder {root} does not exist")
    sample_path = data_dir / spec.sample_submission
    if not sample_path.is_file():
        raise SpecError(f"sample submission {sample_path} does not exist")
    sample = pd.read_csv(sample_path, dtype=str, keep_default_na=False)
    if spec.id_column not in sample.columns:
        raise SpecError(f"{sample_path}: no id column {spec.id_column!r} (columns: {list(sample.columns)})")
    ids = list(sample[spec.id_column])
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise SpecError(f"{sample_path}: {len(dup)} ids appear more than once: {_examples(dup)}")
    for i in ids:
        _safe_join(root, i, f"{sample_path.name} id")
    files: dict[str, Path] = {}
    for f in _list_images(root, junk):
        fid = spec.file_id(f.relative_to(root).as_posix())
        if fid in files:
            raise SpecError(f"{root}: two test files answer to id {fid!r}: {files[fid].name}, {f.name}")
        files[fid] = f
    missing = sorted(set(ids) - set(files))
    extra = sorted(set(files) - set(ids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} sample ids have no test file ({_examples(missing)})")
        if extra:
            parts.append(f"{len(extra)} test files are not in the sample submission ({_examples(extra)})")
        raise SpecError(f"test folder {root} does not match {sample_path.name}: " + "; ".join(parts))
    return [(i, files[i], "") for i in ids], ids


def _probe(path: Path) -> dict:
    data = path.read_bytes()
    from PIL import Image
    import io

    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format or path.suffix.lstrip(".").upper()
    rgb = load_rgb(path)  # decodes fully: a truncated file raises here
    return {
        "sha256": sha256_bytes(data),
        "width": rgb.width,
        "height": rgb.height,
        "format": fmt,
        "phash": str(imagehash.phash(rgb)),
        "dhash": str(imagehash.dhash(rgb)),
    }


def probe_images(rows_in, *, progress: bool = True, num_workers: int = 4, desc: str = "scan"):
    """Hash and decode each (image_id, split, path, label) once, streaming: one image in memory
    per worker. Returns the manifest rows that decoded and the list of those that did not."""

    def work(item):
        image_id, split, path, label = item
        try:
            return {"image_id": image_id, "split": split, "path": str(path), "label": label, **_probe(path)}, None
        except Exception as exc:  # any decoding failure: report the file, leave it out
            return None, {"path": str(path), "split": split, "error": f"{type(exc).__name__}: {exc}"}

    rows, unreadable = [], []
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        for row, err in tqdm(pool.map(work, rows_in), total=len(rows_in), desc=desc, unit="img",
                             disable=not progress or bool(os.environ.get("HEROSTACK_NO_PROGRESS"))):
            (rows.append(row) if row else unreadable.append(err))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), unreadable


def scan(data_dir: str | os.PathLike, spec: CompetitionSpec, *, progress: bool = True, num_workers: int = 4) -> ScanResult:
    """Scan ``data_dir`` as ``spec`` describes it. Raises ``SpecError`` on layout errors."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise SpecError(f"data folder {data_dir} does not exist")
    spec = spec.resolved(data_dir)
    if len(spec.classes) < 2:
        raise SpecError(f"{spec.name}: fewer than 2 classes ({list(spec.classes)})")
    junk: list[str] = []
    train = _train_entries(spec, data_dir, junk)
    test, _ = _test_entries(spec, data_dir, junk)
    rows_in = [(i, "train", p, lab) for i, p, lab in train] + [(i, "test", p, lab) for i, p, lab in test]
    manifest, unreadable = probe_images(rows_in, progress=progress, num_workers=num_workers)
    tr = manifest[manifest.split == "train"]
    counts = tr.label.value_counts()
    gone = [c for c in spec.classes if counts.get(c, 0) == 0]
    if gone:
        raise SpecError(f"classes {gone} have no readable train images (unreadable: {len(unreadable)})")
    dup_groups = tr.groupby("sha256").filter(lambda g: len(g) > 1).groupby("sha256")
    conflicts = [
        {"sha256": sha, "labels": sorted(g.label.unique()), "image_ids": list(g.image_id)}
        for sha, g in dup_groups if g.label.nunique() > 1
    ]
    te = manifest[manifest.split == "test"]
    report = {
        "data_dir": str(data_dir),
        "competition": spec.name,
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
        "class_counts": {c: int(counts.get(c, 0)) for c in spec.classes},
        "junk_skipped": len(junk),
        "junk_examples": [os.path.relpath(j, data_dir) for j in junk[:20]],
        "unreadable": unreadable,
        "duplicate_groups": int(dup_groups.ngroups),
        "duplicate_images": int(sum(len(g) for _, g in dup_groups)),
        "duplicates": [list(g.image_id) for _, g in dup_groups],
        "label_conflicts": conflicts,
        "test_in_train": int(te.sha256.isin(set(tr.sha256)).sum()),
    }
    return ScanResult(manifest=manifest, report=report)


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={c: str for c in MANIFEST_COLUMNS if c not in ("width", "height")},
                     keep_default_na=False)
    missing = [c for c in ("image_id", "split", "path", "label", "sha256") if c not in df.columns]
    if missing:
        raise SpecError(f"{path}: manifest lacks columns {missing}")
    return df
