"""``python -m search.run --trials 100``: the Optuna search over the study's folds.

Wiring and argument parsing only: the space is in ``search.space``, the objective in
``search.objective``, storage and study handling in ``search.study``, the report in
``search.report``. With no ``--data`` it runs on the built-in demo competition, generated once
into the work folder. Running the same command again continues the same study.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import optuna

from competition.spec import SpecError
from folds.grouping import FoldsError
from folds.make import StudyMismatch, prepare_study
from search.objective import Objective
from search.space import SpaceOptions, check_space, default_backbones, suggest_config
from search.study import ProgressCallback, open_study, read_exclusions, resolve_device, summary_table
from search.workers import launch_workers, run_until_complete

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
    p.add_argument("--budget", default=None,
                   help="a preset for a stated compute budget, e.g. cpu-2h (see search/budget.py): its timeout, "
                        "space and first trials; explicit flags win")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where models run")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--k", type=int, default=5, help="folds (fixed when the study is made)")
    p.add_argument("--fold-seed", type=int, default=0, help="fold shuffling seed (fixed when the study is made)")
    p.add_argument("--backbones", default=None, help="comma-separated backbones to search (default: all with weights here)")
    p.add_argument("--modes", default=None, help="comma-separated training modes: head,partial,full")
    p.add_argument("--sizes", default=None,
                   help="comma-separated image sizes for every backbone (default: the competition's image_sizes, "
                        "else each backbone's native size)")
    p.add_argument("--pseudo-from", default=None,
                   help="a trial number (or 'best'): train every fold also on the test images that trial's "
                        "same-fold model predicted confidently (no validation label leaks; see docs/design.md)")
    p.add_argument("--pseudo-threshold", type=float, default=0.9,
                   help="smallest teacher probability for a pseudo-label (default 0.9)")
    p.add_argument("--allow-full", action="store_true", help="propose full fine-tuning on a CPU too (slow)")
    p.add_argument("--exclude", default=None, help="CSV with an image_id column: images left out of training folds")
    p.add_argument("--extra-train", default=None,
                   help="extra labelled images used only inside training folds (never validated or scored)")
    p.add_argument("--exclude-from-validation", action="store_true", help="also leave --exclude images out of CV scoring")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats (stale trials are retried)")
    p.add_argument("--no-report", action="store_true", help="skip the plots and HTML page at the end")
    p.add_argument("--pruner", default="median", choices=["median", "none"], help="stop poor trials after two folds")
    p.add_argument("--random-init", action="store_true", help="random backbone weights (tests and debugging only)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes sharing the study; --trials then counts complete trials in total")
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids: one worker per GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--target-complete", type=int, default=None, help=argparse.SUPPRESS)  # set for workers
    return p


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line a worker gets: this one without --workers/--gpus."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workers", "--gpus"):
            skip = True
            continue
        if a.startswith(("--workers=", "--gpus=")):
            continue
        out.append(a)
    return out


def _pseudo(args, study, ostudy):
    from search.objective import TEST_FOLDS, load_pseudo_labels, trial_dir

    if args.pseudo_from == "best":
        done = [t for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if (trial_dir(study.dir, t.number) / TEST_FOLDS).is_file()]
        if not done:
            raise ValueError("--pseudo-from best: no complete trial with per-fold test probabilities yet")
        pick = max if ostudy.direction == optuna.study.StudyDirection.MAXIMIZE else min
        teacher = pick(done, key=lambda t: t.value).number
    else:
        try:
            teacher = int(args.pseudo_from)
        except ValueError:
            raise ValueError(f"--pseudo-from takes a trial number or 'best', got {args.pseudo_from!r}") from None
    pseudo = load_pseudo_labels(study, teacher, args.pseudo_threshold)
    counts = [len(pseudo.rows(k)[0]) for k in range(len(pseudo.proba))]
    print(f"pseudo-labels from trial {teacher} at p >= {args.pseudo_threshold}: {min(counts)}-{max(counts)} of "
          f"{pseudo.proba.shape[1]} test images per fold")
    return pseudo


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if any(not 32 <= v <= 2048 for v in sizes):
        raise ValueError(f"--sizes must lie in 32..2048, got {text!r}")
    return sizes


def _demo_data(workdir: Path, seed: int, log=print) -> Path:
    from competition.demo import make_demo

    out = workdir / "demo_data"
    if not (out / ".demo_complete.json").exists():
        log(f"generating the demo competition into {out} (once)")
    make_demo(out, seed=seed)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir)
    if args.data is None:
        data, competition, study_name = _demo_data(workdir, 0), args.competition or "demo", args.study or "demo"
    else:
        data, competition = Path(args.data), args.competition or "cax-superhero"
        study_name = args.study or Path(str(competition)).stem
    device = resolve_device(args.device)
    try:
        budget = None
        if args.budget:
            from search.budget import get_budget

            budget = get_budget(args.budget)
            if budget.device == "cuda" and device != "cuda":
                raise ValueError(f"--budget {budget.name} is a GPU preset and torch sees no CUDA device here "
                                 f"(--device {args.device}); on a CPU use --budget cpu-2h")
            if args.timeout is None:
                args.timeout = budget.timeout_s
        study = prepare_study(data, competition, workdir, study_name, k=args.k, seed=args.fold_seed)
        exclude = read_exclusions(args.exclude, study) if args.exclude else frozenset()
        extra = None
        if args.extra_train:
            from folds.extra import prepare_extra

            extra = prepare_extra(study, args.extra_train)
        options = SpaceOptions(
            backbones=tuple(args.backbones.split(",")) if args.backbones else default_backbones(),
            device=device,
            allow_full=args.allow_full,
            modes=tuple(args.modes.split(",")) if args.modes else (budget.modes if budget else ()),
            partial_stages=budget.partial_stages if budget else (),
            sizes=_sizes(args.sizes) if args.sizes else study.spec.image_sizes,
            has_extra=extra is not None and extra.report["count"] > 0,
        )
        ostudy = open_study(study, args.storage, seed=args.seed, heartbeat=args.heartbeat,
                            prune=args.pruner != "none")
        check_space(ostudy, options)
        pseudo = _pseudo(args, study, ostudy) if args.pseudo_from else None
        if budget is not None and args.target_complete is None:
            from search.budget import enqueue_first_trials

            n_first = enqueue_first_trials(ostudy, budget, options.backbones)
            limit = f"timeout {args.timeout:.0f} s" if args.timeout else "no timeout"
            print(f"budget {budget.name}: {budget.description}; {limit}; "
                  f"{n_first} first trials from the preset")
    except (SpecError, FoldsError, StudyMismatch, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    start = time.time()
    deadline = start + args.timeout if args.timeout else None
    gpus = args.gpus.split(",") if args.gpus else None
    n_workers = len(gpus) if gpus else args.workers
    print(f"study {study.name!r}: {len(study.folds)} train images, {study.info['k']} folds, "
          f"{len(ostudy.trials)} trials so far; device {device}; backbones {', '.join(options.backbones)}")
    interrupted = False
    if n_workers > 1 and args.target_complete is None:
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in ostudy.get_trials(deepcopy=False))
        try:
            rc = launch_workers(_worker_argv(argv), n_workers, gpus=gpus, target=complete + args.trials)
        except KeyboardInterrupt:
            interrupted, rc = True, 130
        if rc not in (0, 130):
            print(f"a worker exited with status {rc}", file=sys.stderr)
    else:
        weights = "random" if args.random_init else "auto"
        objective = Objective(study=study, suggest=lambda t: suggest_config(t, options, weights=weights),
                              cache_root=workdir / "cache", device=device, deadline=deadline,
                              exclude_ids=exclude, exclude_from_validation=args.exclude_from_validation,
                              extra_train=extra.manifest if extra is not None else None,
                              extra_info=extra.info if extra is not None else None, pseudo=pseudo,
                              progress=not os.environ.get("HEROSTACK_NO_PROGRESS"))
        # a worker counts its own trials; how many the study needs depends on the others
        progress = ProgressCallback(args.trials if args.target_complete is None else None, ostudy, deadline=deadline)
        try:
            if args.target_complete is None:
                ostudy.optimize(objective, n_trials=args.trials, timeout=args.timeout, catch=(Exception,),
                                callbacks=[progress], gc_after_trial=True)
            else:
                run_until_complete(ostudy, objective, args.target_complete, callbacks=[progress],
                                   poll=max(1.0, args.heartbeat / 2), deadline=deadline)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.close()
    if args.target_complete is not None:  # a worker: the launcher prints the summary
        return 130 if interrupted else 0
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
