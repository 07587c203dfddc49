"""Shared fixtures: tiny competitions in the CAX layout, generated in a temp folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HEROSTACK_NO_PROGRESS", "1")


def _picture(cls_idx: int, n_classes: int, seed: int, size: int = 40) -> Image.Image:
    """A small image whose class is visible (a shape per class) with random colours."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(150, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 110, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    c, r = size // 2 + int(rng.integers(-4, 5)), size // 3
    k = 3 + cls_idx % 5
    angles = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 0.3) + cls_idx
    pts = [(c + r * np.cos(a), c + r * np.sin(a)) for a in angles]
    d.polygon(pts, fill=fg)
    d.line([(0, (cls_idx * 7) % size), (size, (cls_idx * 13) % size)], fill=fg, width=2 + cls_idx % 3)
    return im


def write_competition(root: Path, classes=("Ant-Man", "Batman", "Hulk"), per_class=(8, 6, 5), n_test=6,
                      seed: int = 0, size: int = 40) -> Path:
    """A CAX-layout competition: train folders, test folder, sample submission."""
    root = Path(root)
    train = root / "CAX_Superhero_Train"
    for i, (cls, n) in enumerate(zip(classes, per_class)):
        (train / cls).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            _picture(i, len(classes), seed * 1000 + i * 100 + j, size).save(train / cls / f"{cls[:3]}_{j}.jpg", quality=90)
    test = root / "CAX_Superhero_Test"
    test.mkdir(parents=True, exist_ok=True)
    ids = []
    for t in range(n_test):
        _picture(t % len(classes), len(classes), seed * 1000 + 9000 + t, size).save(test / f"superhero_test_{t + 1}.jpg")
        ids.append(f"superhero_test_{t + 1}")
    pd.DataFrame({"filename": ids, "Superhero": ""}).to_csv(root / "Superhero_Submission_Format.csv", index=False)
    return root


def spec_for(classes=("Ant-Man", "Batman", "Hulk")):
    """A CAX-layout spec restricted to ``classes``."""
    import dataclasses

    from competition.spec import CAX_CLASSES, CAX_LABELS, PRESETS

    labels = dict(zip(CAX_CLASSES, CAX_LABELS))
    return dataclasses.replace(PRESETS["cax-superhero"], name="tiny", classes=tuple(classes),
                               submission_labels=tuple(labels.get(c, c.lower()) for c in classes))


TINY_SPEC = {
    "train_dir": "CAX_Superhero_Train", "test_dir": "CAX_Superhero_Test",
    "sample_submission": "Superhero_Submission_Format.csv", "id_column": "filename",
    "label_column": "Superhero", "labels": {"Ant-Man": "ant_man", "Batman": "bat_man", "Hulk": "hulk"},
}


def write_tiny_spec(path: Path) -> Path:
    """A user's spec file (JSON) for the three-class competitions ``write_competition`` makes."""
    import json

    Path(path).write_text(json.dumps(TINY_SPEC))
    return Path(path)


@pytest.fixture
def tiny_competition(tmp_path) -> Path:
    return write_competition(tmp_path / "data")
