"""What the task is: a frozen competition spec, presets, and the loader for a user's file.

A spec says where the train and test images are, how test ids map to files, what the
submission looks like and which metric scores it. Presets live in ``PRESETS``; a user's spec is a
TOML or JSON file with the same fields (unknown keys and missing fields are errors naming them).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from competition.metrics import METRICS

__all__ = ["CompetitionSpec", "SpecError", "PRESETS", "load_spec", "CAX_CLASSES", "CAX_LABELS"]


class SpecError(ValueError):
    """A competition spec or the data it describes is not usable."""


TRAIN_LAYOUTS = ("folders", "csv")
ID_FORMATS = ("stem", "name")


@dataclass(frozen=True)
class CompetitionSpec:
    """A competition's definition. Paths are relative to the data folder given at run time.

    ``classes`` fixes the class order of every probability column; when empty, the classes are
    discovered from the train data (folder names, or the CSV's labels) by ``resolved``.
    ``submission_labels`` spells each class as the submission file wants it (same order);
    empty means the class names themselves.
    """

    name: str
    train_dir: str
    test_dir: str
    sample_submission: str
    id_column: str
    label_column: str
    train_layout: str = "folders"
    train_csv: str = ""
    train_csv_id_column: str = "id"
    train_csv_label_column: str = "label"
    id_format: str = "stem"
    metric: str = "accuracy"
    classes: tuple[str, ...] = ()
    submission_labels: tuple[str, ...] = ()
    image_sizes: tuple[int, ...] = ()  # sizes to search at (every backbone); empty: each one's native size

    def __post_init__(self):
        if self.train_layout not in TRAIN_LAYOUTS:
            raise SpecError(f"spec {self.name!r}: train_layout must be one of {TRAIN_LAYOUTS}, got {self.train_layout!r}")
        if self.train_layout == "csv" and not self.train_csv:
            raise SpecError(f"spec {self.name!r}: train_layout 'csv' needs train_csv (a CSV of id,label)")
        if self.id_format not in ID_FORMATS:
            raise SpecError(f"spec {self.name!r}: id_format must be one of {ID_FORMATS}, got {self.id_format!r}")
        if self.metric not in METRICS:
            raise SpecError(f"spec {self.name!r}: unknown metric {self.metric!r}; known: {sorted(METRICS)}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "submission_labels", tuple(self.submission_labels))
        sizes = tuple(self.image_sizes)
        bad = [v for v in sizes if isinstance(v, bool) or not isinstance(v, int) or not 32 <= v <= 2048]
        if bad:
            raise SpecError(f"spec {self.name!r}: image_sizes must be integers in 32..2048, got {bad}")
        object.__setattr__(self, "image_sizes", sizes)
        if self.submission_labels and len(self.submission_labels) != len(self.classes):
            raise SpecError(
                f"spec {self.name!r}: {len(self.submission_labels)} submission labels for "
                f"{len(self.classes)} classes"
            )
        for what, values in (("classes", self.classes), ("submission_labels", self.submission_labels)):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise SpecError(f"spec {self.name!r}: duplicate {what}: {dup}")

    # --- the class <-> submission label mapping -------------------------------------------
    @property
    def label_map(self) -> dict[str, str]:
        return dict(zip(self.classes, self.submission_labels or self.classes))

    def submission_label(self, cls: str) -> str:
        try:
            return self.label_map[cls]
        except KeyError:
            raise SpecError(f"class {cls!r} is not one of the spec's classes {list(self.classes)}") from None

    def class_of_submission_label(self, label: str) -> str:
        inverse = {v: k for k, v in self.label_map.items()}
        if label in inverse:
            return inverse[label]
        if label in self.label_map:
            return label
        raise SpecError(f"label {label!r} is neither a class nor a submission label of {self.name!r}")

    def file_id(self, filename: str) -> str:
        """The id a test file answers to (CAX: the file name without its extension)."""
        return Path(filename).stem if self.id_format == "stem" else Path(filename).name

    # --- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["submission_labels"] = list(self.submission_labels)
        d["image_sizes"] = list(self.image_sizes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "spec") -> "CompetitionSpec":
        data = dict(data)
        # A user's file may give the mapping as a table {class: submission label}.
        labels = data.pop("labels", None)
        if labels is not None:
            if not isinstance(labels, dict):
                raise SpecError(f"{source}: 'labels' must be a table of class = submission label")
            if data.get("classes") or data.get("submission_labels"):
                raise SpecError(f"{source}: give either 'labels' or 'classes'/'submission_labels', not both")
            data["classes"] = list(labels.keys())
            data["submission_labels"] = list(labels.values())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"{source}: unknown keys {unknown}; known keys: {sorted(known | {'labels'})}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise SpecError(f"{source}: missing required fields {missing}")
        for key in ("classes", "submission_labels", "image_sizes"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def resolved(self, data_dir: str | Path) -> "CompetitionSpec":
        """The spec with its classes filled in from the train data when it names none."""
        if self.classes:
            return self
        data_dir = Path(data_dir)
        if self.train_layout == "folders":
            root = data_dir / self.train_dir
            if not root.is_dir():
                raise SpecError(f"train folder {root} does not exist")
            classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        else:
            import pandas as pd

            csv = data_dir / self.train_csv
            if not csv.is_file():
                raise SpecError(f"train CSV {csv} does not exist")
            df = pd.read_csv(csv, dtype=str)
            if self.train_csv_label_column not in df.columns:
                raise SpecError(f"{csv}: no column {self.train_csv_label_column!r} (columns: {list(df.columns)})")
            classes = sorted(df[self.train_csv_label_column].dropna().unique())
        if len(classes) < 2:
            raise SpecError(f"{self.name}: fewer than 2 classes found in the train data ({classes})")
        return dataclasses.replace(self, classes=tuple(classes))


CAX_CLASSES = (
    "Ant-Man", "Aquaman", "Avengers", "Batman", "Black Panther", "Captain America",
    "Catwoman", "Ghost Rider", "Hulk", "Iron Man", "Spiderman", "Superman",
)
CAX_LABELS = (
    "ant_man", "aqua_man", "avengers", "bat_man", "black_panther", "captain_america",
    "cat_woman", "ghostrider", "hulk", "iron_man", "spider_man", "super_man",
)

_CAX = CompetitionSpec(
    name="cax-superhero",
    train_dir="CAX_Superhero_Train",
    test_dir="CAX_Superhero_Test",
    sample_submission="Superhero_Submission_Format.csv",
    id_column="filename",
    label_column="Superhero",
    id_format="stem",
    metric="accuracy",
    classes=CAX_CLASSES,
    submission_labels=CAX_LABELS,
)

# The demo competition is written in the exact CAX layout and spelling. Its pictures are 160-224 px,
# so it is searched at 192 px: larger sizes would only upsample, at 1.4-2.3x the cost per image.
PRESETS: dict[str, CompetitionSpec] = {
    "cax-superhero": _CAX,
    "demo": dataclasses.replace(_CAX, name="demo", image_sizes=(192,)),
}


def load_spec(name_or_path: str | Path) -> CompetitionSpec:
    """A preset by name, or a user's spec from a ``.toml`` or ``.json`` file."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if path.suffix.lower() in (".toml", ".json"):
        if not path.is_file():
            raise SpecError(f"competition spec file {path} does not exist")
        try:
            if path.suffix.lower() == ".toml":
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            else:
                data = json.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise SpecError(f"{path}: cannot parse ({exc})") from exc
        data.setdefault("name", path.stem)
        return CompetitionSpec.from_dict(data, source=str(path))
    raise SpecError(f"unknown competition {key!r}: not a preset {sorted(PRESETS)} nor a .toml/.json file")
