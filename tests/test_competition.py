"""competition/: specs, presets, the scanner's errors and reports, metrics."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from competition.metrics import METRICS, get_metric
from competition.scan import scan
from competition.spec import CAX_CLASSES, PRESETS, CompetitionSpec, SpecError, load_spec
from tests.conftest import spec_for, write_competition

# --- specs ---------------------------------------------------------------------------------


def test_cax_preset_label_mapping():
    spec = load_spec("cax-superhero")
    expected = {
        "Ant-Man": "ant_man", "Aquaman": "aqua_man", "Avengers": "avengers", "Batman": "bat_man",
        "Black Panther": "black_panther", "Captain America": "captain_america", "Catwoman": "cat_woman",
        "Ghost Rider": "ghostrider", "Hulk": "hulk", "Iron Man": "iron_man", "Spiderman": "spider_man",
        "Superman": "super_man",
    }
    assert spec.label_map == expected
    assert spec.classes == CAX_CLASSES
    assert (spec.id_column, spec.label_column, spec.metric) == ("filename", "Superhero", "accuracy")
    assert spec.file_id("superhero_test_12.jpg") == "superhero_test_12"
    assert spec.class_of_submission_label("ghostrider") == "Ghost Rider"
    assert load_spec("demo").label_map == expected


def test_spec_roundtrip_and_user_toml(tmp_path):
    spec = PRESETS["cax-superhero"]
    assert CompetitionSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    toml = tmp_path / "mine.toml"
    toml.write_text(
        'train_dir = "train"\ntest_dir = "test"\nsample_submission = "sample.csv"\n'
        'id_column = "id"\nlabel_column = "label"\nmetric = "macro_f1"\n'
        '[labels]\n"Cat" = "cat"\n"Dog" = "dog"\n'
    )
    user = load_spec(toml)
    assert user.name == "mine" and user.classes == ("Cat", "Dog") and user.metric == "macro_f1"


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"train_dir": "t", "test_dir": "x", "sample_submission": "s.csv", "id_column": "id", '
         '"label_column": "l", "colour": "red"}', r"unknown keys \['colour'\]"),
        ('{"train_dir": "t", "test_dir": "x"}', r"missing required fields \['sample_submission', 'id_column', 'label_column'\]"),
        ('{"train_dir": "t", "test_dir": "x", "sample_submission": "s.csv", "id_column": "id", '
         '"label_column": "l", "metric": "auc"}', r"unknown metric 'auc'"),
        ('{"train_dir": "t", "test_dir": "x", "sample_submission": "s.csv", "id_column": "id", '
         '"label_column": "l", "train_layout": "csv"}', r"needs train_csv"),
    ],
)
def test_bad_spec_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SpecError, match=match):
        load_spec(path)


def test_unknown_preset():
    with pytest.raises(SpecError, match="unknown competition 'kaggle-cats'"):
        load_spec("kaggle-cats")


# --- scanning: bad inputs, one table ---------------------------------------------------------


def _empty_class(root):
    for f in (root / "CAX_Superhero_Train" / "Hulk").iterdir():
        f.unlink()


def _one_class(root):
    for c in ("Batman", "Hulk"):
        shutil.rmtree(root / "CAX_Superhero_Train" / c)


def _missing_test_file(root):
    (root / "CAX_Superhero_Test" / "superhero_test_2.jpg").unlink()


def _extra_test_file(root):
    shutil.copy(root / "CAX_Superhero_Test" / "superhero_test_1.jpg", root / "CAX_Superhero_Test" / "superhero_test_99.jpg")


def _escaping_id(root):
    df = pd.read_csv(root / "Superhero_Submission_Format.csv", dtype=str, keep_default_na=False)
    df.loc[0, "filename"] = "../secrets"
    df.to_csv(root / "Superhero_Submission_Format.csv", index=False)


def _absolute_id(root):
    df = pd.read_csv(root / "Superhero_Submission_Format.csv", dtype=str, keep_default_na=False)
    df.loc[0, "filename"] = "/etc/passwd"
    df.to_csv(root / "Superhero_Submission_Format.csv", index=False)


def _unknown_class_folder(root):
    (root / "CAX_Superhero_Train" / "Thor").mkdir()
    shutil.copy(next((root / "CAX_Superhero_Train" / "Hulk").iterdir()), root / "CAX_Superhero_Train" / "Thor" / "a.jpg")


@pytest.mark.parametrize(
    "breaker, classes, match",
    [
        (_empty_class, None, r"class folder .*Hulk is empty"),
        (_one_class, ("Ant-Man",), r"fewer than 2 classes"),
        (_missing_test_file, None, r"1 sample ids have no test file \('superhero_test_2'\)"),
        (_extra_test_file, None, r"1 test files are not in the sample submission \('superhero_test_99'\)"),
        (_escaping_id, None, r"'\.\./secrets' would resolve outside the data folder"),
        (_absolute_id, None, r"'/etc/passwd' would resolve outside the data folder"),
        (_unknown_class_folder, None, r"class folders \['Thor'\] are not in the class list"),
    ],
)
def test_scan_errors(tmp_path, breaker, classes, match):
    root = write_competition(tmp_path / "data")
    breaker(root)
    spec = spec_for(classes) if classes else spec_for()
    with pytest.raises(SpecError, match=match):
        scan(root, spec, progress=False)


def _csv_competition(tmp_path, bad_label=None, bad_id=None):
    root = write_competition(tmp_path / "data")
    rows = []
    flat = root / "images"
    flat.mkdir()
    for cls_dir in (root / "CAX_Superhero_Train").iterdir():
        for f in cls_dir.iterdir():
            shutil.copy(f, flat / f.name)
            rows.append((f.stem, cls_dir.name))
    if bad_label:
        rows[0] = (rows[0][0], bad_label)
    if bad_id:
        rows[1] = (bad_id, rows[1][1])
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    import dataclasses

    return root, dataclasses.replace(spec_for(), train_layout="csv", train_dir="images", train_csv="train.csv")


def test_csv_layout_scans(tmp_path):
    root, spec = _csv_competition(tmp_path)
    result = scan(root, spec, progress=False)
    assert result.report["n_train"] == 19


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bad_label": "Thor"}, r"1 rows have labels not in the class list: 'Thor'"),
        ({"bad_id": "../../etc/passwd"}, r"would resolve outside the data folder"),
        ({"bad_id": "nope"}, r"1 ids have no image .*'nope'"),
    ],
)
def test_csv_layout_errors(tmp_path, kwargs, match):
    root, spec = _csv_competition(tmp_path, **kwargs)
    with pytest.raises(SpecError, match=match):
        scan(root, spec, progress=False)


# --- scanning: what is skipped, reported and converted ----------------------------------------


def test_scan_report_junk_unreadable_duplicates_conflicts(tmp_path):
    root = write_competition(tmp_path / "data")
    train = root / "CAX_Superhero_Train"
    (train / "Hulk" / ".DS_Store").write_bytes(b"\0\0junk")
    (train / "Hulk" / "Thumbs.db").write_bytes(b"junk")
    (train / "Hulk" / "notes.txt").write_text("not an image")
    (train / "Batman" / "._Bat_0.jpg").write_bytes(b"mac resource fork")
    good = (train / "Batman" / "Bat_0.jpg").read_bytes()
    (train / "Batman" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (train / "Batman" / "garbage.png").write_bytes(b"\x89PNG not really")
    shutil.copy(train / "Batman" / "Bat_1.jpg", train / "Batman" / "Bat_1_copy.jpg")  # duplicate, same class
    shutil.copy(train / "Hulk" / "Hul_0.jpg", train / "Ant-Man" / "Hul_0_misfiled.jpg")  # label conflict
    result = scan(root, spec_for(), progress=False)
    r = result.report
    assert r["junk_skipped"] == 4
    assert sorted(Path(u["path"]).name for u in r["unreadable"]) == ["garbage.png", "truncated.jpg"]
    assert r["n_train"] == 19 + 2
    assert r["duplicate_groups"] == 2
    assert len(r["label_conflicts"]) == 1
    assert r["label_conflicts"][0]["labels"] == ["Ant-Man", "Hulk"]
    assert "truncated.jpg" not in " ".join(result.manifest.path)
    assert set(result.manifest.columns) >= {"image_id", "split", "path", "label", "sha256", "width", "height", "format"}
    assert "Batman/Bat_0" in set(result.manifest.image_id)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_odd_modes_load_as_rgb(tmp_path, mode):
    from competition.images import load_rgb

    base = Image.new("RGB", (16, 8), (200, 30, 30))
    im = base.convert(mode) if mode != "I;16" else Image.new("I;16", (16, 8), 30000)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    im.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (16, 8)


def test_exif_rotation_applied(tmp_path):
    from competition.images import load_rgb

    im = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (10, 30)


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_registry():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert get_metric("accuracy")(y, p) == pytest.approx(0.75)
    assert get_metric("log_loss")(y, p) == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.7, 0.1])))
    assert get_metric("macro_f1")(y, p) == pytest.approx(np.mean([2 / 3, 1.0, 2 / 3]))
    assert not METRICS["log_loss"].greater_is_better and METRICS["accuracy"].direction == "maximize"
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        get_metric("auc")


def test_spec_image_sizes_are_checked_and_kept():
    import dataclasses

    from competition.spec import CompetitionSpec, SpecError, load_spec

    cax = load_spec("cax-superhero")
    with pytest.raises(SpecError, match=r"image_sizes must be integers in 32..2048, got \[16\]"):
        dataclasses.replace(cax, image_sizes=(224, 16))
    spec = dataclasses.replace(cax, image_sizes=(192, 256))
    assert CompetitionSpec.from_dict(spec.to_dict()).image_sizes == (192, 256)
