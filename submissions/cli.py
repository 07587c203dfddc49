"""Shared command-line manners: a refused input prints one clear error and exits 2, no traceback."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from competition.io import ArtefactError
from submissions.validate import SubmissionError

__all__ = ["run_cli", "HelpFormatter"]

EXPECTED_ERRORS = (SubmissionError, ArtefactError, FileNotFoundError, ValueError)


def run_cli(run: Callable[[], int]) -> int:
    try:
        return run()
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default in --help, except where there is none."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)
