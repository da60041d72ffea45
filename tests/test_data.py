"""Data layer: supported layouts, the validation report, lesion-aware splits, class weights (bad input: the
test_robustness_* catalogue)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

from helpers import data, splits
from helpers.classes import CLASS_NAMES, CLASS_TO_INDEX
from helpers.data import load_metadata, read_metadata_csv
from helpers.paths import PROJECT_ROOT, resolve_input, resolve_output
from helpers.splits import class_weights, split_by_lesion


def _tiny_dataset(
    root: Path, rows: list[tuple[str, str]], header: str = "image_id,dx", ext: str = ".jpg"
) -> Path:
    """A CSV of (image_id, dx) rows and a small JPEG for each under ``root/images``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = [header] + [f"{i},{dx}" for i, dx in rows]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    for image_id, _ in rows:
        Image.new("RGB", (40, 30), (120, 80, 60)).save(root / "images" / f"{image_id}{ext}")
    return root


ROWS = [(f"img{i}", CLASS_NAMES[i % 7]) for i in range(14)]


# ---------------------------------------------------------------- layouts
def test_synthetic_default_layout_loads_with_all_columns(synthetic_dir):
    df = load_metadata(synthetic_dir, verbose=False)
    assert len(df) == 120
    assert {"image_id", "lesion_id", "dx", "path", "age", "sex", "localization", "dx_type"} <= set(df.columns)
    assert df["path"].map(lambda p: Path(p).is_file()).all()
    assert df.attrs["validation"]["missing_images"] == []


def test_kaggle_layout_with_lowercase_duplicate_folders(synthetic_dir, tmp_path):
    root = tmp_path / "skin-cancer-mnist-ham10000"
    shutil.copytree(synthetic_dir, root)
    shutil.copytree(root / "HAM10000_images_part_1", root / "ham10000_images_part_1")
    (root / "hmnist_28_28_RGB.csv").write_text("pixel0000,label\n1,2\n")  # Kaggle's extra CSVs are ignored
    df = load_metadata(root, verbose=False)
    assert len(df) == 120
    report = df.attrs["validation"]
    assert report["duplicate_image_files"] == len(list((root / "ham10000_images_part_1").iterdir()))
    assert report["metadata_csv"].endswith("HAM10000_metadata.csv")


def test_dataverse_tab_metadata(synthetic_dir, tmp_path):
    root = tmp_path / "dataverse"
    shutil.copytree(synthetic_dir, root)
    csv = root / "HAM10000_metadata.csv"
    pd.read_csv(csv).to_csv(root / "HAM10000_metadata.tab", sep="\t", index=False)
    csv.unlink()
    assert len(load_metadata(root, verbose=False)) == 120


def test_generic_folder_without_lesion_id_nested_uppercase_png(tmp_path):
    root = _tiny_dataset(tmp_path / "any", ROWS, ext=".PNG")
    nested = root / "deep" / "er"
    nested.mkdir(parents=True)
    shutil.move(root / "images" / "img0.PNG", nested / "img0.PNG")
    df = load_metadata(root, verbose=False)
    assert len(df) == 14
    assert (df["lesion_id"] == "img_" + df["image_id"]).all()  # each image is its own lesion


def test_isic2018_onehot_ground_truth(tmp_path):
    root = tmp_path / "isic"
    (root / "ISIC2018_Task3_Test_Images").mkdir(parents=True)
    codes = [c.upper() for c in CLASS_NAMES]
    lines = ["image," + ",".join(codes)]
    for i, dx in enumerate(CLASS_NAMES):
        lines.append(f"ISIC_{i:07d}," + ",".join("1.0" if c == dx else "0.0" for c in CLASS_NAMES))
        Image.new("RGB", (30, 30)).save(root / "ISIC2018_Task3_Test_Images" / f"ISIC_{i:07d}.jpg")
    (root / "ISIC2018_Task3_Test_GroundTruth.csv").write_text("\n".join(lines))
    df = load_metadata(root, verbose=False)
    assert df.sort_values("image_id")["dx"].tolist() == list(CLASS_NAMES)


def test_real_metadata_partial_download_uses_images_present(ham_dir):
    with pytest.warns(UserWarning, match="9840 of 10015 images"):
        df = load_metadata(ham_dir, verbose=False)
    assert len(df) == 175
    assert df["lesion_id"].nunique() == 175
    assert df.attrs["validation"]["rows_in_csv"] == 10015
    assert df["dx"].value_counts().to_dict() == {
        "nv": 63,
        "mel": 60,
        "bkl": 12,
        "akiec": 10,
        "bcc": 10,
        "df": 10,
        "vasc": 10,
    }


def test_resolve_auto_falls_back_to_synthetic_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "HAM10000_DIR", tmp_path / "none")
    monkeypatch.setattr(data, "KAGGLE_INPUT_DIR", tmp_path / "none2")
    monkeypatch.setattr(data, "SYNTHETIC_DIR", tmp_path / "synthetic")
    monkeypatch.setattr("helpers.synthetic.DEFAULT_N_IMAGES", 40)
    from helpers import synthetic

    monkeypatch.setattr(synthetic.ensure_synthetic_dataset, "__defaults__", (40, 0))
    path = data.resolve_data_dir("auto")
    assert path == tmp_path / "synthetic"
    assert "synthetic default" in capsys.readouterr().out
    assert (path / "HAM10000_metadata.csv").is_file()


def test_resolve_auto_prefers_real_ham10000(tmp_path, monkeypatch, synthetic_dir):
    real = tmp_path / "HAM10000"
    shutil.copytree(synthetic_dir, real)
    monkeypatch.setattr(data, "HAM10000_DIR", real)
    assert data.resolve_data_dir("auto", verbose=False) == real


# ------------------------------------------------ validation report (bad input: tests/test_robustness_*.py)
def test_validation_summary_is_readable(ham_dir):
    with pytest.warns(UserWarning):
        df = load_metadata(ham_dir, verbose=False)
    report = data.ValidationReport(**df.attrs["validation"])
    text = report.summary()
    assert "Usable:   175 images" in text and "9840 listed images have no file" in text


# ---------------------------------------------------------------- splits
@pytest.fixture(scope="module")
def real_metadata(ham_dir) -> pd.DataFrame:
    return read_metadata_csv(ham_dir / "HAM10000_metadata.csv")


def test_split_real_metadata_has_no_leak_and_balanced_shares(real_metadata):
    df = split_by_lesion(real_metadata, seed=42)
    assert splits.lesions_in_several_splits(df) == []
    overall = df["dx"].value_counts(normalize=True)
    for split, part in df.groupby("split"):
        share = part["dx"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (abs(share - overall) * 100).max() <= 2.0, split
    fractions = df["split"].value_counts(normalize=True)
    assert abs(fractions["train"] - 0.70) < 0.01 and abs(fractions["test"] - 0.15) < 0.01


def test_split_is_deterministic_for_a_seed(real_metadata):
    a = split_by_lesion(real_metadata, seed=7)["split"]
    b = split_by_lesion(real_metadata, seed=7)["split"]
    c = split_by_lesion(real_metadata, seed=8)["split"]
    assert a.equals(b)
    assert not a.equals(c)


def test_existing_split_column_is_honoured(tmp_path):
    df = pd.DataFrame(
        {"image_id": ["a", "b"], "lesion_id": ["l1", "l1"], "dx": ["nv", "nv"], "split": ["train", "test"]}
    )
    assert split_by_lesion(df)["split"].tolist() == ["train", "test"]


def test_split_without_test_share_puts_nothing_in_test(real_metadata):
    df = split_by_lesion(real_metadata, val_size=0.15, test_size=0.0, seed=3)
    assert set(df["split"]) == {"train", "val"}
    assert abs((df["split"] == "val").mean() - 0.15) < 0.01
    assert df.attrs["split"] == {"method": "lesion", "val_size": 0.15, "test_size": 0.0, "seed": 3}


def _sources_frame() -> pd.DataFrame:
    """12 lesions over three sources; lesion L0 was photographed at clinic a and at clinic b."""
    rows = [
        {"lesion_id": f"L{i}", "image_id": f"i{i}_{k}", "dx": CLASS_NAMES[i % 7], "dataset": "abc"[i % 3]}
        for i in range(12)
        for k in range(2)
    ]
    rows[1]["dataset"] = "b"  # the second image of L0 (else from clinic a)
    return pd.DataFrame(rows)


def test_split_by_source_holds_out_a_clinic_and_its_lesions():
    df = splits.split_by_source(_sources_frame(), "b", val_size=0.25, seed=0)
    test = df[df["split"] == "test"]
    assert set(test["lesion_id"]) == {"L0", "L1", "L4", "L7", "L10"}  # b's lesions, L0 whole
    assert (df.loc[df["dataset"] == "b", "split"] == "test").all()
    assert set(df.loc[df["split"] != "test", "dataset"]) == {"a", "c"}
    assert set(df["split"]) == {"train", "val", "test"}
    assert splits.lesions_in_several_splits(df) == []
    assert df.attrs["split"] == {
        "method": "source",
        "held_out": "b",
        "column": "dataset",
        "val_size": 0.25,
        "seed": 0,
    }
    assert splits.make_split(_sources_frame(), df.attrs["split"])["split"].equals(df["split"])


@pytest.mark.parametrize(
    ("frame", "held_out", "message"),
    [
        (_sources_frame().drop(columns="dataset"), "b", "no 'dataset' column to hold a source out by"),
        (
            _sources_frame(),
            "rosendahl",
            r"'rosendahl' is not a value of column 'dataset'; choose one of \['a', 'b', 'c'\]",
        ),
        (_sources_frame().assign(dataset="a"), "a", "has only the source 'a': nothing is left to train on"),
    ],
)
def test_split_by_source_refuses_what_it_cannot_do(frame, held_out, message):
    with pytest.raises(ValueError, match=message):
        splits.split_by_source(frame, held_out)


def test_held_out_clinic_on_real_metadata(ham200_dir):
    df = read_metadata_csv(ham200_dir / "HAM10000_metadata.csv")
    split = splits.split_by_source(df, "rosendahl")
    test = split[split["split"] == "test"]
    assert (test["dataset"] == "rosendahl").sum() == 2259
    assert len(test) - 2259 < 20  # the few other-source images of lesions also seen at rosendahl
    assert test["dx"].value_counts()["akiec"] >= 295
    assert splits.lesions_in_several_splits(split) == []


def test_split_rejects_bad_sizes(real_metadata):
    with pytest.raises(ValueError, match="sum < 1"):
        split_by_lesion(real_metadata, val_size=0.6, test_size=0.5)


def test_split_summary_table(real_metadata):
    table = splits.split_summary(split_by_lesion(real_metadata))
    assert table.loc["total", "train"] + table.loc["total", "val"] + table.loc["total", "test"] == 10015
    assert list(table.index[:7]) == list(CLASS_NAMES)


# ---------------------------------------------------------------- class weights
def test_class_weights_match_sklearn_balanced():
    labels = np.array(["nv"] * 60 + ["mel"] * 30 + ["df"] * 10)
    weights = class_weights(labels)
    ids = np.array([CLASS_TO_INDEX[x] for x in labels])
    expected = compute_class_weight("balanced", classes=np.unique(ids), y=ids)
    assert weights[CLASS_TO_INDEX["df"]] == pytest.approx(100 / (3 * 10))
    assert [weights[i] for i in np.unique(ids)] == pytest.approx(expected)
    assert weights[CLASS_TO_INDEX["vasc"]] == 1.0  # absent class
    assert class_weights(ids) == weights


def test_subsample_keeps_every_class_and_size(real_metadata):
    small = splits.subsample(real_metadata, 200, seed=1)
    assert len(small) == 200
    assert set(small["dx"]) == set(CLASS_NAMES)
    assert small["dx"].value_counts()["nv"] > 100  # shares roughly kept
    assert small.equals(splits.subsample(real_metadata, 200, seed=1))
    assert splits.subsample(real_metadata, None) is real_metadata
    with pytest.raises(ValueError, match="positive int"):
        splits.subsample(real_metadata, 0)


def test_relative_inputs_fall_back_to_the_project_root_outputs_go_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # e.g. a notebook running in notebooks/
    assert resolve_input("README.md") == PROJECT_ROOT / "README.md"
    (tmp_path / "README.md").write_text("a local file wins")
    assert resolve_input("README.md") == Path("README.md")
    assert resolve_input("missing.csv") == Path("missing.csv"), "kept as given, so the error names it"
    assert resolve_input(tmp_path / "x") == tmp_path / "x"
    assert resolve_output("models/run") == PROJECT_ROOT / "models" / "run"
    assert resolve_output(tmp_path / "out") == tmp_path / "out"
    assert resolve_output(None) is None


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "got none: the train split is empty"),
        (["nv", "melanoma", "mel"], r"Unknown class label\(s\) \['melanoma'\]"),
    ],
)
def test_class_weights_refuse_empty_or_unknown_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        class_weights(pd.Series(labels, dtype=object))


def test_image_split_leakage_is_the_chance_a_sibling_lands_in_train():
    df = pd.DataFrame(
        {"lesion_id": ["L1", "L1", "L1", "L2", "L3", "L3"], "dx": ["nv", "nv", "nv", "mel", "bcc", "bcc"]}
    )
    leak = splits.image_split_leakage(df, train_fraction=0.5)
    # L1: 2 siblings, 1 - 0.5**2 = 0.75 each; L2: none, 0; L3: 1 sibling, 0.5 each
    assert leak["nv"] == pytest.approx(0.75) and leak["mel"] == 0 and leak["bcc"] == pytest.approx(0.5)
    assert leak["all"] == pytest.approx((3 * 0.75 + 0 + 2 * 0.5) / 6)
    assert np.isnan(leak["df"]), "a class without images has no share"


@pytest.mark.parametrize("fraction", [0, 1.0, True, "0.7"])
def test_image_split_leakage_refuses_a_bad_train_fraction(fraction):
    with pytest.raises(ValueError, match=r"train_fraction must be a number in \(0, 1\)"):
        splits.image_split_leakage(pd.DataFrame({"lesion_id": ["L1"], "dx": ["nv"]}), fraction)


def test_image_split_leakage_needs_lesion_ids():
    with pytest.raises(ValueError, match="no 'lesion_id' column"):
        splits.image_split_leakage(pd.DataFrame({"dx": ["nv"]}))
