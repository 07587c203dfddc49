"""One validator for every submission file: ``make`` runs it before writing, ``score`` before scoring.

A leaderboard rejects (or, worse, silently mis-scores) a file with a missing id, an extra id, a
label in the wrong spelling or rows out of order. ``validate_submission`` checks all of that
against the sample submission and raises one ``SubmissionError`` that lists every problem with
its count and up to five examples. Line numbers count the header as line 1, as an editor does.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "SubmissionError",
    "validate_submission",
    "read_submission",
    "read_sample",
    "closest_label",
    "label_key",
    "examples",
    "id_hint",
]

MAX_EXAMPLES = 5


class SubmissionError(ValueError):
    """A submission (or a source for one) breaks the competition's format.

    ``problems`` holds one line per problem; ``str(err)`` joins them under a heading.
    """

    def __init__(self, problems: str | Sequence[str], heading: str = "submission is invalid"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = f"{heading}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{heading} ({len(self.problems)} problems):\n{lines}"
        super().__init__(message)


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission CSV with every cell as text: no "NA" → NaN, no "007" → 7."""
    path = Path(path)
    if not path.exists():
        raise SubmissionError(f"{path} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path} is not a readable CSV ({exc})") from exc


def read_sample(path: str | os.PathLike, id_column: str) -> pd.DataFrame:
    """Read the competition's sample submission; its ids and their order are the reference."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sample submission {path} does not exist")
    sample = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    if id_column not in sample.columns:
        raise ValueError(f"sample submission {path} has no id column {id_column!r} (columns: {list(sample.columns)})")
    dup = sample[id_column][sample[id_column].duplicated()]
    if len(dup):
        raise ValueError(f"sample submission {path} repeats {len(dup)} ids, e.g. {examples(dup)}")
    return sample


def closest_label(label: str, allowed: Iterable[str]) -> str | None:
    """The allowed label a misspelt one most likely meant: same letters and digits ignoring case
    and punctuation first ("Spiderman" → "spider_man"), then the nearest by edit similarity."""
    allowed = list(allowed)
    by_key = {label_key(a): a for a in allowed}
    key = label_key(label)
    if key in by_key:
        return by_key[key]
    near = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    return by_key[near[0]] if near else None


def validate_submission(
    df_or_path: pd.DataFrame | str | os.PathLike,
    sample_df: pd.DataFrame,
    allowed_labels: Sequence[str],
    id_column: str,
    label_column: str,
) -> None:
    """Raise ``SubmissionError`` unless the submission matches the sample exactly.

    Checks: the columns (names, count and order of the sample's), no empty cells, every sample
    id exactly once, no ids outside the sample, every label in ``allowed_labels``, rows in the
    sample's order.
    """
    df = read_submission(df_or_path) if not isinstance(df_or_path, pd.DataFrame) else df_or_path
    if id_column not in sample_df.columns or label_column not in sample_df.columns:
        raise ValueError(
            f"the sample has columns {list(sample_df.columns)}, expected to find the id column "
            f"{id_column!r} and the label column {label_column!r}"
        )
    if not allowed_labels:
        raise ValueError("allowed_labels is empty")

    problems: list[str] = []
    columns = [str(c) for c in df.columns]
    problems += _check_columns(columns, [str(c) for c in sample_df.columns])
    if id_column not in columns or len(set(columns)) != len(columns):
        raise SubmissionError(problems)  # without one id column nothing else can be checked

    cells = {c: df[c].map(_text) for c in (id_column, label_column) if c in columns}
    problems += _check_empty(cells)
    ids = cells[id_column]
    sample_ids = sample_df[id_column].map(_text)
    problems += _check_ids(ids, sample_ids)
    if label_column in cells:
        problems += _check_labels(cells[label_column], allowed_labels)
    if not problems:
        problems += _check_order(ids, sample_ids)
    if problems:
        raise SubmissionError(problems)


# --- the checks, each returning a list of problem lines ------------------------------------


def _check_columns(got: list[str], expected: list[str]) -> list[str]:
    if got == expected:
        return []
    detail = []
    missing = [c for c in expected if c not in got]
    unexpected = [c for c in got if c not in expected]
    if missing:
        detail.append(f"missing {missing}")
    if unexpected:
        detail.append(f"unexpected {unexpected}")
    if not missing and not unexpected:
        detail.append("same names in a different order" if len(got) == len(expected) else "repeated names")
    return [
        f"columns are {got} ({len(got)}) but the sample has {expected} ({len(expected)}): " + "; ".join(detail)
    ]


def _check_empty(cells: dict[str, pd.Series]) -> list[str]:
    empty = {c: s.str.strip().eq("") for c, s in cells.items()}
    total = sum(int(m.sum()) for m in empty.values())
    if not total:
        return []
    per_column = ", ".join(f"{int(m.sum())} in {c!r}" for c, m in empty.items() if m.any())
    where = [f"line {i + 2} {c!r}" for c, m in empty.items() for i in m.to_numpy().nonzero()[0][:MAX_EXAMPLES]]
    return [f"{total} empty cells ({per_column}), e.g. {', '.join(where[:MAX_EXAMPLES])}"]


def _check_ids(ids: pd.Series, sample_ids: pd.Series) -> list[str]:
    problems = []
    present = ids[ids.str.strip().ne("")]
    counts = present.value_counts()
    dups = counts[counts > 1]
    if len(dups):
        shown = []
        for id_, n in dups.head(MAX_EXAMPLES).items():
            lines = (np.flatnonzero(ids.eq(id_).to_numpy()) + 2)[:3]
            shown.append(f"{id_!r} ×{n} (lines {', '.join(map(str, lines))})")
        problems.append(
            f"{len(dups)} ids appear more than once ({int(dups.sum())} rows), e.g. {', '.join(shown)}"
        )
    sample_set, got_set = set(sample_ids), set(present)
    missing = [i for i in sample_ids if i not in got_set]
    extra = list(dict.fromkeys(i for i in present if i not in sample_set))
    if missing:
        problems.append(f"{len(missing)} of {len(sample_set)} sample ids are missing, e.g. {examples(missing)}")
    if extra:
        problems.append(
            f"{len(extra)} ids are not in the sample, e.g. {examples(extra)}" + id_hint(extra, missing)
        )
    return problems


def _check_labels(labels: pd.Series, allowed: Sequence[str]) -> list[str]:
    allowed_set = set(allowed)
    filled = labels[labels.str.strip().ne("")]
    bad = filled[~filled.isin(allowed_set)]
    if bad.empty:
        return []
    counts = bad.value_counts()
    shown = []
    for label, n in counts.head(MAX_EXAMPLES).items():
        guess = closest_label(label, allowed)
        hint = f"did you mean {guess}?" if guess else "no close allowed label"
        shown.append(f"{label} ×{n} → {hint}")
    return [
        f"{len(bad)} rows have labels that are not allowed ({len(counts)} distinct): "
        + "; ".join(shown)
        + f". Allowed: {sorted(allowed_set)}"
    ]


def _check_order(ids: pd.Series, sample_ids: pd.Series) -> list[str]:
    got, want = ids.to_numpy(), sample_ids.to_numpy()
    differs = got != want
    if not differs.any():
        return []
    first = int(differs.nonzero()[0][0])
    return [
        f"rows are not in the sample's order: {int(differs.sum())} of {len(want)} rows out of place, first "
        f"at line {first + 2}: {got[first]!r} where the sample has {want[first]!r}"
    ]


# --- helpers -------------------------------------------------------------------------------


def _text(value) -> str:
    """A cell as text; NaN/None (an empty cell in a DataFrame built in memory) becomes ""."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def label_key(label: str) -> str:
    """A label's letters and digits, lower case: the key under which spellings are compared."""
    return re.sub(r"[^0-9a-z]", "", str(label).lower())


def examples(values: Iterable, n: int = MAX_EXAMPLES) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:n])
    return f"[{shown}{', …' if len(values) > n else ''}]"


def id_hint(extra: list[str], missing: list[str]) -> str:
    """Name the usual reason extra ids exist: a file extension, case or spaces around the id."""
    if not missing:
        return ""
    missing_set = set(missing)
    for label, fix in (
        ("surrounding spaces", str.strip),
        ("a file extension", lambda s: os.path.splitext(s)[0]),
        ("a different case", str.lower),
    ):
        lowered = {m.lower() for m in missing_set} if label == "a different case" else missing_set
        if sum(fix(e) in lowered for e in extra) >= max(1, len(extra) // 2):
            return f" (they look like sample ids with {label})"
    return ""
