"""The built-in demo competition: layout, spelling, determinism, planted faults, difficulty."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from competition import demo
from competition.demo import CLASSES, SUBMISSION_LABELS, DemoError, make_demo

TINY = dict(n_train=60, n_test=24)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    return out, make_demo(out, seed=3, **TINY)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tiny, tmp_path):
    out, _ = tiny
    again = make_demo(tmp_path / "again", seed=3, **TINY)
    assert again["generated"] is True
    assert _hashes(tmp_path / "again") == _hashes(out)
    make_demo(tmp_path / "other", seed=4, **TINY)
    images = [{h for rel, h in hashes.items() if rel.endswith((".jpg", ".jpeg", ".png"))}
              for hashes in (_hashes(out), _hashes(tmp_path / "other"))]
    assert not images[0] & images[1]


def test_layout_and_spelling(tiny):
    out, summary = tiny
    assert CLASSES == ("Ant-Man", "Aquaman", "Avengers", "Batman", "Black Panther",
                       "Captain America", "Catwoman", "Ghost Rider", "Hulk", "Iron Man",
                       "Spiderman", "Superman")
    assert SUBMISSION_LABELS == ("ant_man", "aqua_man", "avengers", "bat_man", "black_panther",
                                 "captain_america", "cat_woman", "ghostrider", "hulk", "iron_man",
                                 "spider_man", "super_man")
    train = out / "CAX_Superhero_Train"
    assert sorted(p.name for p in train.iterdir()) == sorted(CLASSES)
    files = [p for p in train.rglob("*") if p.is_file()]
    assert len(files) == TINY["n_train"] == sum(summary["class_counts"].values())
    assert {p.suffix for p in files} == {".jpg"}
    test = sorted((out / "CAX_Superhero_Test").iterdir())
    assert len(test) == TINY["n_test"]
    numbers = sorted(int(re.fullmatch(r"superhero_test_(\d+)", p.stem).group(1)) for p in test)
    assert numbers == list(range(1, TINY["n_test"] + 1))
    suffixes = [p.suffix for p in test]
    assert suffixes.count(".jpeg") == 1 and 1 <= suffixes.count(".png") <= 2
    assert {Image.open(p).mode for p in test if p.suffix == ".png"} == {"RGB", "RGBA"}
    assert (out / ".demo_complete.json").exists() and not (out / ".demo_started.json").exists()


def test_default_image_sizes_vary_within_range():
    sizes = {demo.render_image(k % 12, np.random.default_rng(k))[0].size for k in range(6)}
    assert len(sizes) > 1
    assert all(160 <= s <= 224 for size in sizes for s in size)
    img, quality = demo.render_image(0, np.random.default_rng(0), image_size=48)
    assert img.size == (48, 48) and img.mode == "RGB" and 50 <= quality <= 95


def test_submission_format_matches_test_files(tiny):
    out, _ = tiny
    sub = pd.read_csv(out / "Superhero_Submission_Format.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["filename", "Superhero"]
    stems = {p.stem for p in (out / "CAX_Superhero_Test").iterdir()}
    assert set(sub["filename"]) == stems and sub["filename"].is_unique
    assert (sub["Superhero"] == "").all()
    assert list(sub["filename"]) != sorted(sub["filename"])
    assert list(sub["filename"]) != sorted(sub["filename"], key=lambda s: int(s.rsplit("_", 1)[1]))


def test_test_labels_use_contest_spelling_and_split(tiny):
    out, _ = tiny
    labels = pd.read_csv(out / "test_labels.csv", dtype=str)
    assert list(labels.columns) == ["filename", "label", "split"]
    assert set(labels["filename"]) == {p.stem for p in (out / "CAX_Superhero_Test").iterdir()}
    assert set(labels["label"]) <= set(SUBMISSION_LABELS)
    assert set(labels["split"]) == {"public", "private"}
    assert (labels["split"] == "public").sum() == round(0.4 * TINY["n_test"])


def test_planted_duplicates_and_copies_are_byte_identical(tiny):
    out, _ = tiny
    planted = json.loads((out / "planted.json").read_text())
    pairs = [(d["a"], d["b"]) for d in planted["exact_duplicates"]]
    pairs += [(d["train"], d["test"]) for d in planted["test_copies_of_train"]]
    assert len(planted["test_copies_of_train"]) == 2
    for a, b in pairs:
        assert a != b and (out / a).read_bytes() == (out / b).read_bytes()
    cross = planted["cross_class_duplicates"]
    assert len(cross) >= 2
    for d in cross:
        assert Path(d["a"]).parent.name != Path(d["b"]).parent.name
        assert d["classes"] == [Path(d["a"]).parent.name, Path(d["b"]).parent.name]
    assert any(Path(d["a"]).parent == Path(d["b"]).parent for d in planted["exact_duplicates"])


def test_planted_mislabels_are_filed_under_another_class(tiny):
    out, _ = tiny
    planted = json.loads((out / "planted.json").read_text())
    assert planted["mislabelled"]
    for d in planted["mislabelled"]:
        assert (out / d["path"]).is_file()
        assert Path(d["path"]).parent.name == d["filed_class"] != d["true_class"]
        assert d["true_class"] in CLASSES


def test_train_and_test_hold_no_unplanted_duplicates(tiny):
    out, _ = tiny
    planted = json.loads((out / "planted.json").read_text())
    by_hash: dict[str, list[str]] = {}
    for rel, digest in _hashes(out).items():
        if rel.startswith(("CAX_Superhero_Train/", "CAX_Superhero_Test/")):
            by_hash.setdefault(digest, []).append(rel)
    groups = sorted(sorted(g) for g in by_hash.values() if len(g) > 1)
    expected = [sorted((d["a"], d["b"])) for d in planted["exact_duplicates"]]
    expected += [sorted((d["train"], d["test"])) for d in planted["test_copies_of_train"]]
    assert groups == sorted(expected)


def test_classes_are_imbalanced_like_the_contest(tiny):
    counts = demo._class_counts(1000)
    assert sum(counts) == 1000 and min(counts) >= 30
    assert max(counts) / min(counts) > 3.5
    _, summary = tiny
    assert max(summary["class_counts"].values()) > min(summary["class_counts"].values())


def test_raw_pixel_logistic_regression_is_weak(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    out = tmp_path / "lr"
    make_demo(out, seed=11, n_train=180, n_test=60, image_size=48)

    def pixels(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB").resize((16, 16)), np.float32).ravel() / 255

    train = sorted((out / "CAX_Superhero_Train").rglob("*.jpg"))
    x_train = np.stack([pixels(p) for p in train])
    y_train = [p.parent.name for p in train]
    labels = pd.read_csv(out / "test_labels.csv", dtype=str)
    test_files = {p.stem: p for p in (out / "CAX_Superhero_Test").iterdir()}
    x_test = np.stack([pixels(test_files[f]) for f in labels["filename"]])
    y_test = [CLASSES[SUBMISSION_LABELS.index(s)] for s in labels["label"]]
    with threadpool_limits(1):  # BLAS threads fighting over a small, busy CPU cost seconds
        model = LogisticRegression(C=0.01, max_iter=500).fit(x_train, y_train)
    assert np.mean(model.predict(x_test) == np.array(y_test)) <= 0.35


def test_complete_demo_with_same_seed_is_left_alone(tmp_path):
    out = tmp_path / "d"
    make_demo(out, seed=1, **TINY)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = make_demo(out, seed=1, **TINY)
    assert again["generated"] is False and again["class_counts"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_interrupted_or_other_seed_demo_is_regenerated(tmp_path):
    out = tmp_path / "d"
    make_demo(out, seed=1, **TINY)
    reference = _hashes(out)
    # an interrupted run: started marker, no completion marker, a stray temp file
    (out / ".demo_complete.json").unlink()
    (out / ".demo_started.json").write_text("{}")
    next((out / "CAX_Superhero_Test").iterdir()).unlink()
    (out / ".planted.json.abc.tmp").write_text("")
    assert make_demo(out, seed=1, **TINY)["generated"] is True
    assert _hashes(out) == reference
    assert make_demo(out, seed=2, **TINY)["generated"] is True
    assert json.loads((out / "planted.json").read_text())["seed"] == 2


def test_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match=re.escape(str(tmp_path))):
        make_demo(tmp_path, **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=-1), "seed must be a non-negative integer"),
    (dict(n_train=30), "n_train must be at least 60"),
    (dict(n_test=3), "n_test must be at least 10"),
    (dict(image_size=8), "image_size must be None or between 32 and 1024"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(DemoError, match=message):
        make_demo(tmp_path / "d", **{**TINY, **kwargs})
    assert not (tmp_path / "d").exists()


def test_cli_writes_then_reports_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [str(out), "--seed", "5", "--n-train", "60", "--n-test", "12", "--image-size", "48"]
    assert demo.main(args) == 0
    assert "Ant-Man" in capsys.readouterr().out
    assert demo.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.csv").write_text("a")
    assert demo.main([str(tmp_path / "foreign")]) == 2
    assert "refusing" in capsys.readouterr().err
