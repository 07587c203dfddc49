"""Extra training data: scanned like train, de-duplicated, used only inside training folds."""
from __future__ import annotations

import json
import shutil

import numpy as np
import optuna
import pandas as pd
import pytest

from competition.spec import SpecError
from folds.extra import prepare_extra, scan_extra
from folds.make import main as folds_main
from folds.make import prepare_study
from search.objective import Objective
from search.run import main as search_main
from PIL import Image

from tests.conftest import write_competition, write_tiny_spec
from tests.test_search_objective import fake_fit



@pytest.fixture
def setup(tmp_path):
    data = write_competition(tmp_path / "data", per_class=(8, 8, 8), n_test=4, size=32)
    spec = write_tiny_spec(tmp_path / "tiny.json")
    study = prepare_study(data, spec, tmp_path / "runs", "x", k=2, log=lambda *a: None, progress=False)
    extra = tmp_path / "extra"
    for i, cls in enumerate(("Ant-Man", "Batman", "Hulk")):
        (extra / cls).mkdir(parents=True)
        for j in range(3):
            rng = np.random.default_rng(100 + 10 * i + j)  # blocky noise: no near-duplicate of anything
            block = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(block).resize((32, 32), Image.Resampling.NEAREST).save(extra / cls / f"x{j}.png")
    # planted: a test image, a train image, and a second copy of an extra image
    shutil.copy(data / "CAX_Superhero_Test" / "superhero_test_2.jpg", extra / "Batman" / "from_test.jpg")
    shutil.copy(data / "CAX_Superhero_Train" / "Hulk" / "Hul_3.jpg", extra / "Hulk" / "from_train.jpg")
    shutil.copy(extra / "Ant-Man" / "x0.png", extra / "Ant-Man" / "x0_again.png")
    return data, spec, study, extra


def test_duplicates_of_test_train_and_extras_are_dropped_and_named(setup):
    _, _, study, extra = setup
    result = scan_extra(extra, study.spec, study.manifest, progress=False)
    r = result.report
    assert r["scanned"] == 12 and r["count"] == 9
    assert [d["path"].endswith("from_test.jpg") for d in r["dropped_test"]] == [True]
    assert r["dropped_test"][0]["twin"].endswith("superhero_test_2.jpg")
    assert [d["path"].endswith("from_train.jpg") for d in r["dropped_train"]] == [True]
    assert len(r["dropped_extra"]) == 1
    assert "from_test" not in " ".join(result.manifest.path)
    assert "dropped as near-duplicates of test images: 1" in result.summary()


def test_unknown_class_folder_in_extras_is_an_error(setup):
    _, _, study, extra = setup
    (extra / "Thor").mkdir()
    shutil.copy(extra / "Hulk" / "x0.png", extra / "Thor" / "t.png")
    with pytest.raises(SpecError, match=r"class folders \['Thor'\] are not in the class list"):
        scan_extra(extra, study.spec, study.manifest, progress=False)


def test_csv_layout_extras(setup, tmp_path):
    _, _, study, extra = setup
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for cls_dir in extra.iterdir():
        for f in cls_dir.iterdir():
            shutil.copy(f, flat / f"{cls_dir.name}_{f.name}")
            rows.append((f"{cls_dir.name}_{f.stem}", cls_dir.name))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(flat / "labels.csv", index=False)
    assert scan_extra(flat, study.spec, study.manifest, progress=False).report["count"] == 9
    rows[0] = (rows[0][0], "Thor")
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(flat / "labels.csv", index=False)
    with pytest.raises(SpecError, match="labels not in the class list: 'Thor'"):
        scan_extra(flat, study.spec, study.manifest, progress=False)


def test_extras_never_validated_nor_in_oof(setup, tmp_path):
    _, _, study, extra = setup
    result = prepare_extra(study, extra, progress=False, log=lambda *a: None)
    calls = []

    def spy(config, manifest, train_idx, val_idx, test_idx, *, extra_train_idx, **kw):
        calls.append((manifest, train_idx, val_idx, extra_train_idx))
        return fake_fit(config, manifest, train_idx, val_idx, test_idx, extra_train_idx=extra_train_idx, **kw)

    obj = Objective(study=study, suggest=lambda t: {"skill": 1.0}, cache_root=tmp_path / "c", fit_fn=spy,
                    extra_train=result.manifest, extra_info=result.info)
    obj(optuna.create_study().ask())
    for manifest, train_idx, val_idx, extra_idx in calls:
        splits = manifest.split.to_numpy()
        assert (splits[val_idx] == "train").all() and (splits[train_idx] == "train").all()
        assert len(extra_idx) == 9 and (splits[extra_idx] == "extra").all()
    oof = pd.read_csv(study.dir / "trials" / "0" / "oof.csv")
    assert not oof.image_id.str.startswith("extra:").any() and len(oof) == len(study.folds)
    meta = json.loads((study.dir / "trials" / "0" / "meta.json").read_text())
    assert meta["extra_train"]["count"] == 9 and meta["extra_train"]["folder"] == str(extra.resolve())


def test_cli_flags(setup, tmp_path, capsys):
    data, spec, study, extra = setup
    assert folds_main(["--data", str(data), "--competition", str(spec), "--workdir", str(tmp_path / "runs"),
                       "--study", "x", "--k", "2", "--extra-train", str(extra)]) == 0
    assert "dropped as near-duplicates of test images: 1" in capsys.readouterr().out
    args = ["--data", str(data), "--competition", str(spec), "--study", "x", "--workdir", str(tmp_path / "runs"),
            "--k", "2", "--backbones", "test_efficientnet", "--modes", "head", "--random-init",
            "--extra-train", str(extra), "--trials", "2", "--no-report"]
    assert search_main(args) == 0
    metas = [json.loads((study.dir / "trials" / n / "meta.json").read_text()) for n in ("0", "1")]
    ostudy = optuna.load_study(study_name="x", storage=f"sqlite:///{study.dir / 'study.db'}")
    for meta, trial in zip(metas, ostudy.trials):
        used = trial.params["use_extra"]  # the study itself answers whether the extras help
        assert (meta["extra_train"] is not None) == used
