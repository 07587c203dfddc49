"""``python -m search.run --trials 100``: the Optuna search over the study's folds.

Wiring and argument parsing only: the space is in ``search.space``, the objective in
``search.objective``, storage and study handling in ``search.study``, the report in
``search.report``. With no ``--data`` it runs on the built-in demo competition, generated once
into the work folder. Running the same command again continues the same study.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

from competition.spec import SpecError
from folds.grouping import FoldsError
from folds.make import StudyMismatch, prepare_study
from search.objective import BudgetExhausted, Objective
from search.space import SpaceOptions, default_backbones, suggest_config
from search.study import ProgressCallback, open_study, read_exclusions, resolve_device, summary_table

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--trials", type=int, default=100, help="trials to run in this process (Optuna's n_trials)")
    p.add_argument("--data", default=None, help="competition data folder; omitted: the built-in demo")
    p.add_argument("--competition", default=None, help="preset name or .toml/.json spec (default: cax-superhero, or demo)")
    p.add_argument("--study", default=None, help="study name (default: demo, or the competition's name)")
    p.add_argument("--workdir", default="runs", help="where studies, caches and artefacts live")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in the study folder)")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds (within 10%%)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where models run")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--k", type=int, default=5, help="folds (fixed when the study is made)")
    p.add_argument("--fold-seed", type=int, default=0, help="fold shuffling seed (fixed when the study is made)")
    p.add_argument("--backbones", default=None, help="comma-separated backbones to search (default: all with weights here)")
    p.add_argument("--modes", default=None, help="comma-separated training modes: head,partial,full")
    p.add_argument("--allow-full", action="store_true", help="propose full fine-tuning on a CPU too (slow)")
    p.add_argument("--exclude", default=None, help="CSV with an image_id column: images left out of training folds")
    p.add_argument("--exclude-from-validation", action="store_true", help="also leave --exclude images out of CV scoring")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats (stale trials are retried)")
    p.add_argument("--no-report", action="store_true", help="skip the plots and HTML page at the end")
    return p


def _demo_data(workdir: Path, seed: int, log=print) -> Path:
    from competition.demo import make_demo

    out = workdir / "demo_data"
    if not (out / ".demo_complete.json").exists():
        log(f"generating the demo competition into {out} (once)")
    make_demo(out, seed=seed)
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir)
    if args.data is None:
        data, competition, study_name = _demo_data(workdir, 0), args.competition or "demo", args.study or "demo"
    else:
        data, competition = Path(args.data), args.competition or "cax-superhero"
        study_name = args.study or Path(str(competition)).stem
    device = resolve_device(args.device)
    try:
        study = prepare_study(data, competition, workdir, study_name, k=args.k, seed=args.fold_seed)
        exclude = read_exclusions(args.exclude, study) if args.exclude else frozenset()
        options = SpaceOptions(
            backbones=tuple(args.backbones.split(",")) if args.backbones else default_backbones(),
            device=device,
            allow_full=args.allow_full,
            modes=tuple(args.modes.split(",")) if args.modes else (),
        )
        ostudy = open_study(study, args.storage, seed=args.seed, heartbeat=args.heartbeat)
    except (SpecError, FoldsError, StudyMismatch, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    start = time.time()
    deadline = start + args.timeout if args.timeout else None
    objective = Objective(study=study, suggest=lambda t: suggest_config(t, options),
                          cache_root=workdir / "cache", device=device, deadline=deadline,
                          exclude_ids=exclude, exclude_from_validation=args.exclude_from_validation)
    progress = ProgressCallback(args.trials, ostudy, deadline=deadline)
    print(f"study {study.name!r}: {len(study.folds)} train images, {study.info['k']} folds, "
          f"{len(ostudy.trials)} trials so far; device {device}; backbones {', '.join(options.backbones)}")
    interrupted = False
    try:
        ostudy.optimize(objective, n_trials=args.trials, timeout=args.timeout, catch=(Exception,),
                        callbacks=[progress], gc_after_trial=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    elapsed = time.time() - start
    print(summary_table(ostudy, study))
    print(f"\n{elapsed:.0f} s; artefacts in {study.dir / 'trials'}")
    if not args.no_report:
        from search.report import write_report

        page = write_report(ostudy, study)
        if page:
            print(f"report: {page}")
    if interrupted:
        print("interrupted: run the same command again to continue the study", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
