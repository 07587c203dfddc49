"""Several workers on one study: local processes, one per GPU, or one per machine.

Optuna's storage is the coordinator (no home-made scheduler). A worker started with a target
keeps taking trials until the study holds that many complete trials; a trial whose worker died
stops sending heartbeats, is failed by a surviving worker and retried (Optuna's
``RetryHeartbeatStaleTrialCallback``), so the study still ends with the target count.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import optuna
from optuna.trial import TrialState

__all__ = ["run_until_complete", "launch_workers", "SurplusTrial"]


class SurplusTrial(optuna.TrialPruned):
    """Two workers asked for the last trial at once: the later one gives way."""


def _counts(study: optuna.Study) -> dict[TrialState, int]:
    out: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state] = out.get(t.state, 0) + 1
    return out


def guard_surplus(objective, target: int):
    """Wrap ``objective`` so a trial started when the target is already covered yields at once."""

    def wrapped(trial: optuna.Trial):
        ahead = sum(
            1 for t in trial.study.get_trials(deepcopy=False)
            if t.number != trial.number and (
                t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and t.number < trial.number))
        )
        if ahead >= target:
            raise SurplusTrial(f"the study already has {ahead} trials complete or under way for a target of {target}")
        return objective(trial)

    return wrapped


def run_until_complete(study: optuna.Study, objective, target: int, *, callbacks=(), poll: float = 2.0,
                       deadline: float | None = None) -> None:
    """Run trials in this process until ``study`` has ``target`` complete trials."""
    guarded = guard_surplus(objective, target)
    while True:
        if deadline is not None and time.time() >= deadline:
            return
        counts = _counts(study)
        complete, running = counts.get(TrialState.COMPLETE, 0), counts.get(TrialState.RUNNING, 0)
        waiting = counts.get(TrialState.WAITING, 0)
        if complete >= target:
            return
        if complete + running >= target and not waiting:
            # Others are finishing the last trials; if one of them died, its heartbeat goes stale,
            # fail_stale_trials fails it and enqueues a retry that this loop then picks up.
            time.sleep(poll)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
            continue
        study.optimize(guarded, n_trials=1, catch=(Exception,), callbacks=list(callbacks), gc_after_trial=True)


def launch_workers(argv: list[str], n: int, *, gpus: list[str] | None = None, target: int,
                   log=print) -> int:
    """Start ``n`` ``python -m search.run`` workers with ``argv`` and wait for them all."""
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        env["HEROSTACK_WORKER"] = str(i)
        cmd = [sys.executable, "-m", "search.run", *argv, "--target-complete", str(target), "--no-report"]
        procs.append(subprocess.Popen(cmd, env=env))
        log(f"worker {i}: pid {procs[-1].pid}" + (f", CUDA_VISIBLE_DEVICES={gpus[i]}" if gpus else ""))
    rc = 0
    try:
        for p in procs:
            rc = max(rc, p.wait())
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    return rc
