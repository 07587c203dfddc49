"""What we hand in, checked and logged.

Commands: ``python -m submissions.make``, ``python -m submissions.score``,
``python -m submissions.list``. The validator every one of them uses is importable from here;
the command modules are imported on their own (``from submissions.make import make_submission``)
so ``python -m`` runs them without importing them twice.
"""
from submissions.validate import SubmissionError, validate_submission

__all__ = ["SubmissionError", "validate_submission"]
