"""Atomic file writes and the probability-artefact contract shared by every package.

Every writer goes through a temporary file in the same folder and ``os.replace``, so a killed
process never leaves half a file behind. Readers check ids, class order and finiteness.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "ArtefactError",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "read_json",
    "sha256_file",
    "sha256_bytes",
    "write_probabilities",
    "read_probabilities",
]


class ArtefactError(ValueError):
    """An artefact on disk does not satisfy its contract."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path: str | os.PathLike, df: pd.DataFrame, **kwargs) -> Path:
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


def read_json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtefactError(f"{path}: not valid JSON ({exc})") from exc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_probabilities(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    extra: dict[str, Sequence] | None = None,
) -> Path:
    """Write an OOF or test probability table: ``image_id``, extra columns, one column per class.

    ``extra`` holds the OOF artefact's ``fold`` and ``label`` columns, in that order.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(image_ids), len(classes)):
        raise ArtefactError(
            f"{path}: probabilities have shape {proba.shape}, expected "
            f"({len(image_ids)} ids, {len(classes)} classes)"
        )
    if not np.isfinite(proba).all():
        raise ArtefactError(f"{path}: {int((~np.isfinite(proba)).sum())} probabilities are not finite")
    df = pd.DataFrame({"image_id": list(image_ids)})
    for key, values in (extra or {}).items():
        df[key] = list(values)
    for j, cls in enumerate(classes):
        df[cls] = proba[:, j]
    return atomic_write_csv(path, df, float_format="%.8g")


def read_probabilities(
    path: str | os.PathLike, classes: Sequence[str], *, atol: float = 1e-4
) -> pd.DataFrame:
    """Read a probability table and check it: unique ids, the class columns in ``classes`` order,
    finite values in [0, 1] whose rows sum to one."""
    path = Path(path)
    if not path.exists():
        raise ArtefactError(f"{path}: missing")
    df = pd.read_csv(path, dtype={"image_id": str, "label": str})
    if "image_id" not in df.columns:
        raise ArtefactError(f"{path}: no image_id column (columns: {list(df.columns)})")
    class_cols = [c for c in df.columns if c not in ("image_id", "fold", "label")]
    if class_cols != list(classes):
        raise ArtefactError(
            f"{path}: class columns {class_cols} do not match the study's class order {list(classes)}"
        )
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ArtefactError(f"{path}: {len(dup)} duplicate image ids, e.g. {list(dup[:3])}")
    values = df[list(classes)].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ArtefactError(f"{path}: {int((~np.isfinite(values)).sum())} probabilities are not finite")
    if (values < -atol).any() or (values > 1 + atol).any():
        raise ArtefactError(f"{path}: probabilities outside [0, 1]")
    bad = np.abs(values.sum(axis=1) - 1.0) > atol * len(classes)
    if bad.any():
        raise ArtefactError(
            f"{path}: {int(bad.sum())} rows do not sum to 1, e.g. image {df['image_id'][bad].iloc[0]!r}"
        )
    return df
