"""Load a study's trials, refuse the ones that break the contract, pick candidates, join them.

Every trial's OOF and test tables are aligned to the study's ids by ``image_id`` (never by
position) as soon as they are read, so everything downstream works on arrays whose row ``i`` is
the same image for every trial. Meta-features are named ``<trial>_<class>``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from competition.io import ArtefactError, read_json, read_probabilities
from folds.make import StudyMismatch, load_folds
from competition.metrics import Metric, get_metric
from ensemble.stackers import features

__all__ = [
    "CandidateError",
    "Study",
    "Trial",
    "MetaFeatures",
    "load_study",
    "list_trials",
    "load_trial",
    "load_candidates",
    "select_candidates",
    "join_trials",
    "fold_scores",
]

log = logging.getLogger(__name__)


class CandidateError(ArtefactError):
    """A trial cannot join the ensemble: other folds, another class order, missing ids, ..."""


@dataclass(frozen=True)
class Study:
    """What the ensemble needs from ``runs/<study>/``: the spec, the folds and their hash."""

    dir: Path
    spec: dict
    classes: tuple[str, ...]
    metric: Metric
    ids: np.ndarray  # train image ids, in folds.csv order
    y: np.ndarray  # integer labels, index into ``classes``
    folds: np.ndarray  # fold of each train id
    folds_hash: str

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def k(self) -> int:
        return int(self.folds.max()) + 1


@dataclass
class Trial:
    """One trial's OOF and test probabilities, aligned to the study's train ids."""

    name: str
    meta: dict
    oof: np.ndarray  # (n_train, n_classes), row i is study.ids[i]
    test_ids: np.ndarray
    test: np.ndarray  # (n_test, n_classes), row i is test_ids[i]
    fold_scores: list[float] = field(default_factory=list)  # recomputed with the study's metric

    @property
    def score_mean(self) -> float:
        return float(np.mean(self.fold_scores))


def load_study(workdir: str | os.PathLike = "runs", study: str = "demo") -> Study:
    """Read ``competition.json``, ``folds.csv`` and ``folds.json`` of ``<workdir>/<study>``."""
    study_dir = Path(workdir) / study
    spec_path, folds_csv, folds_json = (study_dir / n for n in ("competition.json", "folds.csv", "folds.json"))
    for path in (spec_path, folds_csv, folds_json):
        if not path.exists():
            raise ArtefactError(f"study {study!r}: {path} is missing (run the folds step first)")
    spec = read_json(spec_path)
    classes = tuple(spec["classes"])
    try:
        folds, folds_hash = load_folds(study_dir)  # refuses a folds.csv edited after the fact
    except StudyMismatch as exc:
        raise ArtefactError(str(exc)) from exc
    unknown = sorted(set(folds["label"]) - set(classes))
    if unknown:
        raise ArtefactError(f"{folds_csv}: labels {unknown[:5]} are not among the spec's classes {list(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    return Study(
        dir=study_dir,
        spec=spec,
        classes=classes,
        metric=get_metric(spec["metric"]),
        ids=folds["image_id"].to_numpy(),
        y=folds["label"].map(index).to_numpy(dtype=int),
        folds=folds["fold"].to_numpy(dtype=int),
        folds_hash=folds_hash,
    )


def list_trials(study: Study) -> list[str]:
    """Names of the complete trial folders (those with ``meta.json``), in numeric order."""
    root = study.dir / "trials"
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_dir() and (p / "meta.json").exists()]
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def fold_scores(metric: Metric, y: np.ndarray, proba: np.ndarray, folds: np.ndarray) -> list[float]:
    """The metric on each fold's validation rows, folds in increasing order."""
    return [metric(y[folds == f], proba[folds == f]) for f in np.unique(folds)]


def load_trial(study: Study, name: str) -> Trial:
    """Read ``trials/<name>`` and align it to the study; raise :class:`CandidateError` naming the
    trial when its folds hash, class order, ids, folds or labels differ from the study's."""
    folder = study.dir / "trials" / str(name)
    if not (folder / "meta.json").exists():
        raise CandidateError(f"trial {name}: {folder / 'meta.json'} is missing (incomplete or unknown trial)")
    meta = read_json(folder / "meta.json")
    if meta.get("folds_hash") != study.folds_hash:
        raise CandidateError(
            f"trial {name}: folds hash {str(meta.get('folds_hash'))[:12]}… differs from the study's "
            f"{study.folds_hash[:12]}… (trained on other folds)"
        )
    if list(meta.get("classes", [])) != list(study.classes):
        raise CandidateError(
            f"trial {name}: class order {meta.get('classes')} differs from the study's {list(study.classes)}"
        )
    try:
        oof = read_probabilities(folder / "oof.csv", study.classes)
        test = read_probabilities(folder / "test.csv", study.classes)
    except ArtefactError as exc:
        raise CandidateError(f"trial {name}: {exc}") from exc

    oof = oof.set_index("image_id")
    missing = pd.Index(study.ids).difference(oof.index)
    if len(missing):
        raise CandidateError(
            f"trial {name}: {len(missing)} of {len(study.ids)} train ids missing from oof.csv, "
            f"e.g. {list(missing[:3])}"
        )
    oof = oof.reindex(study.ids)
    if "fold" in oof.columns and (oof["fold"].to_numpy(dtype=int) != study.folds).any():
        bad = int((oof["fold"].to_numpy(dtype=int) != study.folds).sum())
        raise CandidateError(f"trial {name}: {bad} ids carry another fold than folds.csv")
    if "label" in oof.columns:
        labels = np.asarray(study.classes, dtype=object)[study.y]
        bad = int((oof["label"].to_numpy(dtype=object) != labels).sum())
        if bad:
            raise CandidateError(f"trial {name}: {bad} ids carry another label than folds.csv")
    proba = oof[list(study.classes)].to_numpy(dtype=np.float64)
    return Trial(
        name=str(name),
        meta=meta,
        oof=proba,
        test_ids=test["image_id"].to_numpy(),
        test=test[list(study.classes)].to_numpy(dtype=np.float64),
        fold_scores=fold_scores(study.metric, study.y, proba, study.folds),
    )


def load_candidates(study: Study, names: Sequence[str] | None = None) -> tuple[list[Trial], dict[str, str]]:
    """Load trials. Explicit ``names`` are strict: the first refused trial raises. Without names,
    every complete trial is tried and a refused one is skipped, with a warning naming it; the
    second value maps each skipped trial to the reason."""
    if names is not None:
        return [load_trial(study, n) for n in names], {}
    trials, skipped = [], {}
    for name in list_trials(study):
        try:
            trials.append(load_trial(study, name))
        except CandidateError as exc:
            skipped[name] = str(exc)
            log.warning("skipping %s", exc)
    return trials, skipped


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 1.0


def select_candidates(trials: Sequence[Trial], k: int, metric: Metric, pool: int | None = None) -> list[Trial]:
    """The best trial by CV, then greedily the trial of the ``pool`` best (default ``3k``) whose
    OOF probabilities are least correlated with those already chosen (the largest correlation
    with any chosen trial counts, so near-duplicates of a chosen trial are skipped first)."""
    if k < 1:
        raise ValueError(f"top-k must be at least 1 but got {k}")
    if not trials:
        raise CandidateError("no usable trials to ensemble")
    sign = -1.0 if metric.greater_is_better else 1.0
    ranked = sorted(trials, key=lambda t: (sign * t.score_mean, t.name))[: pool or 3 * k]
    chosen = [ranked[0]]
    max_corr = {t.name: _corr(t.oof, chosen[0].oof) for t in ranked[1:]}
    rest = ranked[1:]
    while rest and len(chosen) < k:
        nxt = min(rest, key=lambda t: max_corr[t.name])  # ties: the better-ranked trial
        chosen.append(nxt)
        rest = [t for t in rest if t is not nxt]
        for t in rest:
            max_corr[t.name] = max(max_corr[t.name], _corr(t.oof, nxt.oof))
    return chosen


@dataclass
class MetaFeatures:
    """Candidates' probabilities as tensors: ``oof`` is (n_train, K, C), ``test`` (n_test, K, C)."""

    ids: np.ndarray
    y: np.ndarray
    folds: np.ndarray
    trials: list[str]
    classes: tuple[str, ...]
    oof: np.ndarray
    test_ids: np.ndarray
    test: np.ndarray

    @property
    def feature_names(self) -> list[str]:
        return [f"{t}_{c}" for t in self.trials for c in self.classes]

    def frame(self, part: str = "oof", log_odds: bool = False) -> pd.DataFrame:
        """The meta-features as a table indexed by ``image_id``, columns ``<trial>_<class>``."""
        tensor, ids = (self.oof, self.ids) if part == "oof" else (self.test, self.test_ids)
        return pd.DataFrame(features(tensor, log_odds), index=pd.Index(ids, name="image_id"),
                            columns=self.feature_names)


def join_trials(study: Study, trials: Sequence[Trial]) -> MetaFeatures:
    """Stack the aligned trials; test tables are joined on ``image_id`` to the first trial's ids."""
    if not trials:
        raise CandidateError("no trials to join")
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise CandidateError(f"trials requested more than once: {names}")
    ref = pd.Index(trials[0].test_ids)
    tests = []
    for t in trials:
        idx = pd.Index(t.test_ids)
        missing, extra = ref.difference(idx), idx.difference(ref)
        if len(missing) or len(extra):
            raise CandidateError(
                f"trial {t.name}: test ids differ from trial {trials[0].name}'s "
                f"({len(missing)} missing, {len(extra)} extra)"
            )
        tests.append(pd.DataFrame(t.test, index=idx).reindex(ref).to_numpy())
    return MetaFeatures(
        ids=study.ids,
        y=study.y,
        folds=study.folds,
        trials=names,
        classes=study.classes,
        oof=np.stack([t.oof for t in trials], axis=1),
        test_ids=ref.to_numpy(),
        test=np.stack(tests, axis=1),
    )

