"""The one validator: every kind of invalid submission is refused with a message that says why."""
import re

import pandas as pd
import pytest

from submissions.testing import CAX_CLASSES, CAX_LABELS
from submissions.validate import SubmissionError, closest_label, validate_submission

ID, LABEL = "filename", "Superhero"
ALLOWED = list(CAX_LABELS)
SAMPLE = pd.DataFrame({ID: [f"superhero_test_{i}" for i in (3, 1, 2, 5, 4, 6, 7)], LABEL: ""})


def good() -> pd.DataFrame:
    labels = ["ant_man", "spider_man", "hulk", "bat_man", "ghostrider", "super_man", "aqua_man"]
    return pd.DataFrame({ID: SAMPLE[ID].tolist(), LABEL: labels})


def missing_id(df):
    return df.drop(index=2)


def extra_id(df):
    return pd.concat([df, pd.DataFrame({ID: ["superhero_test_99"], LABEL: ["hulk"]})], ignore_index=True)


def duplicate_id(df):
    df.loc[1, ID] = df.loc[0, ID]
    return df


def wrong_spelling(df):
    df.loc[[0, 3], LABEL] = "Spiderman"
    return df


def wrong_columns(df):
    return df.rename(columns={LABEL: "label"})


def swapped_columns(df):
    return df[[LABEL, ID]]


def extra_column(df):
    return df.assign(confidence=0.5)


def empty_cell(df):
    df.loc[4, LABEL] = ""
    return df


def nan_cell(df):
    df.loc[4, LABEL] = None
    return df


def wrong_order(df):
    return df.iloc[[1, 0, 2, 3, 4, 5, 6]].reset_index(drop=True)


def with_extension(df):
    df[ID] = df[ID] + ".jpg"
    return df


CASES = [
    (missing_id, r"1 of 7 sample ids are missing, e\.g\. \['superhero_test_2'\]"),
    (extra_id, r"1 ids are not in the sample, e\.g\. \['superhero_test_99'\]"),
    (duplicate_id, r"1 ids appear more than once \(2 rows\), e\.g\. 'superhero_test_3' ×2 \(lines 2, 3\)"),
    (wrong_spelling, r"2 rows have labels that are not allowed \(1 distinct\): Spiderman ×2 → did you mean spider_man\?"),
    (wrong_columns, r"columns are \['filename', 'label'\] \(2\) but the sample has \['filename', 'Superhero'\] \(2\): "
                    r"missing \['Superhero'\]; unexpected \['label'\]"),
    (swapped_columns, r"same names in a different order"),
    (extra_column, r"\(3\) but the sample has .* \(2\): unexpected \['confidence'\]"),
    (empty_cell, r"1 empty cells \(1 in 'Superhero'\), e\.g\. line 6 'Superhero'"),
    (nan_cell, r"1 empty cells \(1 in 'Superhero'\)"),
    (wrong_order, r"not in the sample's order: 2 of 7 rows out of place, first at line 2: "
                  r"'superhero_test_1' where the sample has 'superhero_test_3'"),
    (with_extension, r"7 ids are not in the sample.*look like sample ids with a file extension"),
]


@pytest.mark.parametrize("corrupt, message", CASES, ids=[c[0].__name__ for c in CASES])
def test_invalid_submission_is_refused_with_its_reason(corrupt, message):
    with pytest.raises(SubmissionError, match=message):
        validate_submission(corrupt(good()), SAMPLE, ALLOWED, ID, LABEL)


def test_repeated_column_names_are_refused():
    df = pd.concat([good(), good()[[LABEL]]], axis=1)
    with pytest.raises(SubmissionError, match=r"\(3\) but the sample has .*repeated names"):
        validate_submission(df, SAMPLE, ALLOWED, ID, LABEL)


def test_valid_submission_passes_from_frame_and_file(tmp_path):
    validate_submission(good(), SAMPLE, ALLOWED, ID, LABEL)
    path = tmp_path / "sub.csv"
    good().to_csv(path, index=False)
    validate_submission(path, SAMPLE, ALLOWED, ID, LABEL)


def test_every_problem_is_listed_at_once():
    df = wrong_spelling(extra_id(missing_id(good())))
    with pytest.raises(SubmissionError, match=r"3 problems") as err:
        validate_submission(df, SAMPLE, ALLOWED, ID, LABEL)
    assert len(err.value.problems) == 3


def test_examples_stop_at_five_with_the_full_count():
    sample = pd.DataFrame({ID: [f"t{i}" for i in range(20)], LABEL: ""})
    df = pd.DataFrame({ID: [f"t{i}" for i in range(3)], LABEL: "hulk"})
    with pytest.raises(SubmissionError) as err:
        validate_submission(df, sample, ALLOWED, ID, LABEL)
    assert "17 of 20 sample ids are missing, e.g. ['t3', 't4', 't5', 't6', 't7', …]" in str(err.value)


def test_text_ids_are_not_parsed_as_numbers_or_nan(tmp_path):
    sample = pd.DataFrame({ID: ["007", "NA"], LABEL: ""})
    path = tmp_path / "sub.csv"
    path.write_text(f"{ID},{LABEL}\n007,hulk\nNA,hulk\n")
    validate_submission(path, sample, ALLOWED, ID, LABEL)


CAX_MAPPING = {
    "Ant-Man": "ant_man", "Aquaman": "aqua_man", "Avengers": "avengers", "Batman": "bat_man",
    "Black Panther": "black_panther", "Captain America": "captain_america", "Catwoman": "cat_woman",
    "Ghost Rider": "ghostrider", "Hulk": "hulk", "Iron Man": "iron_man", "Spiderman": "spider_man",
    "Superman": "super_man",
}


def test_cax_class_to_label_mapping():
    assert dict(zip(CAX_CLASSES, CAX_LABELS)) == CAX_MAPPING


@pytest.mark.parametrize("class_name, label", sorted(CAX_MAPPING.items()))
def test_folder_name_suggests_the_contest_spelling(class_name, label):
    assert closest_label(class_name, CAX_LABELS) == label
    with pytest.raises(SubmissionError, match=re.escape(f"{class_name} ×1 → did you mean {label}?")):
        df = good()
        df.loc[0, LABEL] = class_name
        validate_submission(df, SAMPLE, ALLOWED, ID, LABEL)


@pytest.mark.parametrize("typo, label", [("Spider-Man", "spider_man"), ("ironman", "iron_man"),
                                         ("captain_amerca", "captain_america"), ("HULK", "hulk")])
def test_closest_label_for_typos(typo, label):
    assert closest_label(typo, CAX_LABELS) == label


def test_closest_label_gives_up_on_nonsense():
    assert closest_label("zzzzzz", CAX_LABELS) is None
