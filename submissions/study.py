"""What a submission is made from: the study folder, its competition spec and its sources.

A *source* is a finished trial (``trials/<n>/``) or ensemble (``ensemble/<name>/``): a folder
with ``oof.csv``, ``test.csv`` and ``meta.json``. A folder without ``meta.json`` is still being
written and is ignored. Sources are named ``trial:<n>`` and ``ensemble:<name>``.

The spec is read as plain JSON (``competition.json``) so this package depends only on the
artefact contract in docs/contracts.md, not on the spec class.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from competition.io import ArtefactError, read_json, read_probabilities
from competition.metrics import Metric, get_metric
from submissions.validate import SubmissionError, read_sample

__all__ = ["Study", "Source", "SourceError", "load_study", "list_sources", "resolve_source"]

KINDS = {"trial": "trials", "ensemble": "ensemble"}


class SourceError(SubmissionError):
    """A trial or ensemble cannot be turned into a submission."""

    def __init__(self, problems, heading: str = "cannot make a submission from this source"):
        super().__init__(problems, heading)


@dataclass(frozen=True)
class Study:
    """A study folder with its spec (``competition.json``) and folds record (``folds.json``)."""

    dir: Path
    spec: dict
    folds: dict

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def classes(self) -> list[str]:
        return list(self.spec["classes"])

    def unreadable_test_ids(self) -> list[str]:
        """Ids of the test images the scan could not decode (``scan_report.json``): no model saw them."""
        path = self.dir / "scan_report.json"
        if not path.is_file():
            return []
        report = read_json(path)
        stem = self.spec.get("id_format", "stem") == "stem"
        return [Path(u["path"]).stem if stem else Path(u["path"]).name
                for u in report.get("unreadable", []) if u.get("split") == "test"]

    def class_prior(self) -> np.ndarray:
        """Training label frequencies in class order (``folds.csv``), the best guess without a picture."""
        path = self.dir / "folds.csv"
        if not path.is_file():
            return np.full(len(self.classes), 1 / len(self.classes))
        labels = pd.read_csv(path, usecols=["label"], dtype=str).label
        counts = labels.value_counts().reindex(self.classes).fillna(0).to_numpy(dtype=float)
        return counts / counts.sum() if counts.sum() else np.full(len(self.classes), 1 / len(self.classes))

    @property
    def submission_labels(self) -> list[str]:
        """The contest's spelling of each class; an empty list in the spec means the class names."""
        return list(self.spec.get("submission_labels") or self.spec["classes"])

    @property
    def label_of(self) -> dict[str, str]:
        """Class name → the contest's spelling of it."""
        return dict(zip(self.classes, self.submission_labels))

    @property
    def id_column(self) -> str:
        return self.spec["id_column"]

    @property
    def label_column(self) -> str:
        return self.spec["label_column"]

    @property
    def metric(self) -> Metric:
        return get_metric(self.spec["metric"])

    @property
    def folds_hash(self) -> str:
        return self.folds["hash"]

    @property
    def submissions_dir(self) -> Path:
        return self.dir / "submissions"

    @property
    def sample_path(self) -> Path:
        return Path(self.folds["data_dir"]) / self.spec["sample_submission"]

    @cached_property
    def sample(self) -> pd.DataFrame:
        return read_sample(self.sample_path, self.id_column)


@dataclass(frozen=True)
class Source:
    """A finished trial or ensemble folder."""

    kind: str
    name: str
    dir: Path
    meta: dict = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def score(self) -> float:
        return float(self.meta["score_mean"])

    @property
    def components(self) -> list[str]:
        return [str(c) for c in self.meta.get("components") or []]

    def read_test(self, classes) -> pd.DataFrame:
        return read_probabilities(self.dir / "test.csv", classes)

    def read_oof(self, classes) -> pd.DataFrame:
        return read_probabilities(self.dir / "oof.csv", classes)


def load_study(workdir: str | os.PathLike = "runs", study: str = "demo") -> Study:
    study_dir = Path(workdir) / study
    if not study_dir.is_dir():
        raise FileNotFoundError(f"study folder {study_dir} does not exist (workdir {workdir!r}, study {study!r})")
    for name in ("competition.json", "folds.json"):
        if not (study_dir / name).exists():
            raise FileNotFoundError(f"{study_dir / name} is missing: run the earlier steps of the study first")
    spec = read_json(study_dir / "competition.json")
    folds = read_json(study_dir / "folds.json")
    missing = [k for k in ("classes", "sample_submission", "id_column", "label_column", "metric") if not spec.get(k)]
    if missing:
        raise ArtefactError(f"{study_dir / 'competition.json'} lacks {missing}")
    if spec.get("submission_labels") and len(spec["classes"]) != len(spec["submission_labels"]):
        raise ArtefactError(
            f"{study_dir / 'competition.json'}: {len(spec['classes'])} classes but "
            f"{len(spec['submission_labels'])} submission labels"
        )
    for key in ("hash", "data_dir"):
        if key not in folds:
            raise ArtefactError(f"{study_dir / 'folds.json'} lacks {key!r}")
    return Study(dir=study_dir, spec=spec, folds=folds)


def list_sources(study: Study) -> list[Source]:
    """Every finished trial and ensemble of the study (folders with ``meta.json``)."""
    sources = []
    for kind, sub in KINDS.items():
        root = study.dir / sub
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir(), key=_natural):
            if folder.is_dir() and (folder / "meta.json").exists():
                sources.append(Source(kind, folder.name, folder, read_json(folder / "meta.json")))
    return sources


def resolve_source(study: Study, choice: str = "auto") -> tuple[Source, str]:
    """Pick the source named by ``--from`` and say why.

    ``auto``: the best CV among all sources; ``trial``: the best trial; ``ensemble``: the ensemble
    that ``ensemble.build`` marked ``chosen`` in its meta, else the best ensemble;
    ``ensemble:<name>`` / ``trial:<n>``: that one. Only sources on the study's folds, classes
    and metric compete on CV; a named source must be on the study's folds and classes.
    """
    sources = list_sources(study)
    kind, _, name = choice.partition(":")
    if kind not in ("auto", *KINDS):
        raise ValueError(f"--from must be auto, ensemble, trial, ensemble:<name> or trial:<n>, got {choice!r}")
    if name:
        found = [s for s in sources if s.kind == kind and _same_name(s.name, name)]
        if not found:
            known = [s.ref for s in sources if s.kind == kind]
            raise SourceError(f"no finished {kind} {name!r} in {study.dir} (finished: {known or 'none'})")
        check_source(study, found[0])
        return found[0], f"{found[0].ref} as asked"

    pool = [s for s in sources if kind == "auto" or s.kind == kind]
    if kind == "ensemble" and any(s.meta.get("chosen") for s in pool):
        # ensemble.build marks the stacker it chose (the simplest within one SE of the best):
        # `--from ensemble` follows that choice; `--from auto` still takes the best CV.
        pool = [s for s in pool if s.meta.get("chosen")]
    comparable, skipped = [], []
    for s in pool:
        why = _incomparable(study, s)
        (skipped.append(f"{s.ref}: {why}") if why else comparable.append(s))
    if not comparable:
        detail = f"; skipped {skipped}" if skipped else ""
        raise SourceError(f"no finished {'source' if kind == 'auto' else kind} to choose from in {study.dir}{detail}")
    metric = study.metric
    # Best CV first; ties go to the smaller fold spread, then ensembles, then the earlier name.
    sign = -1.0 if metric.greater_is_better else 1.0
    ranked = sorted(
        comparable,
        key=lambda s: (sign * s.score, float(s.meta.get("score_std", np.inf)), s.kind != "ensemble", _natural(s.dir)),
    )
    best = ranked[0]
    runner = f", next {ranked[1].ref} {ranked[1].score:.4f}" if len(ranked) > 1 else ""
    what = {"auto": "sources", "trial": "trials"}.get(kind, "ensembles")
    if kind == "ensemble" and any(s.meta.get("chosen") for s in comparable):
        what = "ensembles marked chosen by ensemble.build"
    why = (f"best CV {metric.name} {best.score:.4f} ± {best.meta.get('score_std', float('nan')):.4f} "
           f"of {len(comparable)} {what}{runner}")
    if skipped:
        why += f"; skipped {len(skipped)} not comparable ({'; '.join(skipped[:5])})"
    return best, why


def check_source(study: Study, source: Source) -> None:
    """Refuse a source built on other folds or another class order."""
    problems = []
    if source.meta.get("folds_hash") != study.folds_hash:
        problems.append(
            f"{source.ref} was cross-validated on folds {str(source.meta.get('folds_hash'))[:12]}… but the study's "
            f"folds.json has {study.folds_hash[:12]}…: its CV is not comparable and its OOF may leak"
        )
    if list(source.meta.get("classes", [])) != study.classes:
        problems.append(f"{source.ref} has classes {source.meta.get('classes')}, the study has {study.classes}")
    if problems:
        raise SourceError(problems)


def _incomparable(study: Study, source: Source) -> str:
    try:
        check_source(study, source)
    except SourceError as exc:
        return "; ".join(exc.problems)
    if source.meta.get("metric") != study.spec["metric"]:
        return f"scored with {source.meta.get('metric')!r}, the competition uses {study.spec['metric']!r}"
    if not np.isfinite(float(source.meta.get("score_mean", np.nan))):
        return "no finite score_mean"
    return ""


def _same_name(folder: str, asked: str) -> bool:
    if folder == asked:
        return True
    return folder.isdigit() and asked.isdigit() and int(folder) == int(asked)


def _natural(path: Path | str):
    name = Path(path).name
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
