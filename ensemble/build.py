"""Build the study's ensemble: pick candidate trials, compare stackers over the study's folds,
keep the best (the simplest within one standard error), write it as an artefact, audit labels.

``python -m ensemble.build [--study NAME] [--workdir runs] [--top-k K] [--trials 3,5]
[--method auto|best|mean|hill|logreg|lgbm] [--log-odds] [--temperature] [--name NAME] [--seed S]``

Writes ``runs/<study>/ensemble/<method>/`` for every compared method (the trial artefact
contract plus ``"kind": "ensemble"``), the chosen one also under ``--name`` when given,
``ensemble/comparison.csv`` and ``comparison.txt``, and publishes the comparison, the chosen
ensemble's confusion matrix and reliability diagram to the study's report page.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from competition.io import ArtefactError, atomic_write_csv, atomic_write_json, atomic_write_text, write_probabilities
from competition.report import publish
from ensemble.calibration import TemperatureScaled
from ensemble.candidates import MetaFeatures, Study, join_trials, load_candidates, load_study, select_candidates
from ensemble.cv import StackResult, choose_method, comparison_table, cross_validate, format_table
from ensemble.stackers import STACKERS, Stacker, make_stacker

__all__ = ["BuildConfig", "BuildResult", "build", "main"]

log = logging.getLogger(__name__)

METHODS = ("auto", *STACKERS)


@dataclass(frozen=True)
class BuildConfig:
    study: str = "demo"
    workdir: str = "runs"
    top_k: int = 10
    trials: tuple[str, ...] | None = None  # explicit candidates: strict, no selection
    method: str = "auto"
    log_odds: bool = False
    temperature: bool = False
    name: str | None = None
    seed: int = 0
    hill_iterations: int = 50
    n_jobs: int = 1
    audit: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)} but got {self.method!r}")
        if self.top_k < 1:
            raise ValueError(f"top-k must be at least 1 but got {self.top_k}")
        if self.trials is not None and not self.trials:
            raise ValueError("--trials was given but names no trial")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ValueError(f"name must be a plain folder name but got {self.name!r}")
        if self.name in STACKERS and self.method != "auto" and self.name != self.method:
            raise ValueError(f"name {self.name!r} is the folder of the {self.name} stacker; pick another name")


@dataclass
class BuildResult:
    chosen: str
    out_dir: Path
    table: pd.DataFrame
    results: dict[str, StackResult]
    components: list[str]
    skipped: dict[str, str]


def stacker_factory(method: str, cfg: BuildConfig, metric_name: str) -> Callable[[], Stacker]:
    """A function making fresh, identically configured stackers (one per fold)."""

    def make() -> Stacker:
        stacker = make_stacker(method, metric=metric_name, n_iter=cfg.hill_iterations,
                               log_odds=cfg.log_odds, seed=cfg.seed, n_jobs=cfg.n_jobs)
        return TemperatureScaled(stacker) if cfg.temperature else stacker

    return make


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("numpy", "pandas", "scikit-learn", "lightgbm", "cleanlab", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def _write_artefacts(folder: Path, meta: MetaFeatures, result: StackResult, meta_json: dict,
                     plots: bool) -> list[tuple[str, Path]]:
    """oof.csv, test.csv, the plots, then meta.json last (the folder is complete once it exists)."""
    from ensemble.plots import confusion_png, reliability_png

    meta_path = folder / "meta.json"
    if meta_path.exists():  # the folder is being rewritten: mark it incomplete first
        meta_path.unlink()
    labels = np.asarray(meta.classes, dtype=object)[meta.y]
    write_probabilities(folder / "oof.csv", meta.ids, result.oof, meta.classes,
                        extra={"fold": meta.folds, "label": labels})
    write_probabilities(folder / "test.csv", meta.test_ids, result.test, meta.classes)
    figures = []
    for stale in ("confusion.png", "reliability.png"):  # plots belong to the chosen folder only
        (folder / stale).unlink(missing_ok=True)
    if plots:
        name = folder.name
        figures = [
            (f"confusion matrix, ensemble {name} (OOF)",
             confusion_png(meta.y, result.oof, meta.classes, folder / "confusion.png",
                           title=f"ensemble {name}: confusion (OOF)")),
            (f"reliability, ensemble {name} (OOF)", reliability_png(meta.y, result.oof, folder / "reliability.png")),
        ]
    atomic_write_json(meta_path, meta_json)
    return figures


def build(cfg: BuildConfig) -> BuildResult:
    start = time.perf_counter()
    study: Study = load_study(cfg.workdir, cfg.study)
    metric = study.metric
    if cfg.trials is not None:
        candidates, skipped = load_candidates(study, cfg.trials)
    else:
        trials, skipped = load_candidates(study)
        candidates = select_candidates(trials, cfg.top_k, metric)
    meta = join_trials(study, candidates)
    print(f"{len(candidates)} candidates ({metric.name}, CV mean over {study.k} folds): "
          + ", ".join(f"{t.name}={t.score_mean:.4f}" for t in candidates))
    if skipped:
        print(f"skipped {len(skipped)} trials: {', '.join(skipped)} (see warnings)")

    results = {}
    for method in STACKERS:
        results[method] = cross_validate(stacker_factory(method, cfg, metric.name), meta, metric, cfg.progress)
    table = comparison_table(results)
    chosen = choose_method(table, metric) if cfg.method == "auto" else cfg.method
    out_name = cfg.name or chosen
    if out_name in STACKERS and out_name != chosen:
        raise ValueError(f"name {out_name!r} is the folder of the {out_name} stacker, but {chosen} was chosen")
    table["chosen"] = table["method"] == chosen
    note = "auto: the simplest within one SE of the best" if cfg.method == "auto" else f"--method {cfg.method}"
    text = format_table(table, metric, chosen, note=note)
    print(text, end="")

    ens_dir = study.dir / "ensemble"
    atomic_write_csv(ens_dir / "comparison.csv", table, float_format="%.6g")
    atomic_write_text(ens_dir / "comparison.txt", text)
    common = {
        "kind": "ensemble",
        "components": [t.name for t in candidates],
        "candidate_scores": {t.name: t.score_mean for t in candidates},
        "skipped_trials": skipped,
        "folds_hash": study.folds_hash,
        "classes": list(study.classes),
        "metric": metric.name,
        "comparison": table.to_dict(orient="records"),
        "versions": versions(),
        "git_commit": git_commit(),
    }
    figures = []
    folders = [(m, ens_dir / m) for m in STACKERS] + ([(chosen, ens_dir / out_name)] if out_name != chosen else [])
    for method, folder in folders:
        r = results[method]
        meta_json = {
            **common,
            "name": folder.name,
            "method": method,
            "chosen": method == chosen,
            "config": {"build": dataclasses.asdict(cfg), "stacker": r.params},
            "fold_scores": r.fold_scores,
            "score_mean": r.score_mean,
            "score_std": r.score_std,
            "score_se": r.score_se,
            "details": r.details,
            "timings": {"fit_seconds": round(r.fit_seconds, 3), "build_seconds": round(time.perf_counter() - start, 3)},
        }
        figures += _write_artefacts(folder, meta, r, meta_json, plots=folder.name == out_name)
    publish(study.dir, "ensemble", figures, text=text)
    print(f"ensemble {out_name} ({chosen}): {metric.name} {results[chosen].score_mean:.5f} "
          f"± {results[chosen].score_std:.5f} -> {ens_dir / out_name}")
    if cfg.audit:
        from ensemble.audit import run_audit

        run_audit(study, f"ensemble:{out_name}")
    return BuildResult(chosen, ens_dir / out_name, table, results, [t.name for t in candidates], skipped)


def _parse_args(argv) -> BuildConfig:
    d = BuildConfig()
    p = argparse.ArgumentParser(prog="python -m ensemble.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=d.study, help="study name: the folder under --workdir (default: %(default)s)")
    p.add_argument("--workdir", default=d.workdir, help="work folder holding the studies (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="candidates: the best trial plus the least correlated good ones (default: %(default)s)")
    p.add_argument("--trials", default=None,
                   help="explicit comma-separated trial names instead of automatic selection; any that does not match the study is an error")
    p.add_argument("--method", choices=METHODS, default=d.method, help="stacker to keep; auto (default): the simplest within one SE of the best")
    p.add_argument("--log-odds", action="store_true", help="meta-features as log-odds instead of probabilities (logreg, lgbm)")
    p.add_argument("--temperature", action="store_true", help="temperature-scale each trial before stacking (fit on each fold's training part)")
    p.add_argument("--name", default=None, help="output folder name under ensemble/ (default: the chosen method)")
    p.add_argument("--seed", type=int, default=d.seed, help="LightGBM seed and inner split (default: %(default)s)")
    p.add_argument("--hill-iterations", type=int, default=d.hill_iterations, help="Caruana selection rounds (default: %(default)s)")
    p.add_argument("--n-jobs", type=int, default=d.n_jobs, help="LightGBM threads; -1: every core (default: %(default)s, fastest on small data or busy cores)")
    p.add_argument("--no-audit", dest="audit", action="store_false", help="skip the label-noise audit")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a = p.parse_args(argv)
    trials = tuple(t.strip() for t in a.trials.split(",") if t.strip()) if a.trials is not None else None
    return BuildConfig(study=a.study, workdir=a.workdir, top_k=a.top_k, trials=trials, method=a.method,
                       log_odds=a.log_odds, temperature=a.temperature, name=a.name, seed=a.seed,
                       hill_iterations=a.hill_iterations, n_jobs=a.n_jobs, audit=a.audit, progress=a.progress)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = _parse_args(argv)
        build(cfg)
    except (ArtefactError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
