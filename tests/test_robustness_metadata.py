"""Catalogue of bad and unusual metadata files, each through load_metadata (and training where it matters).

A file that cannot be used is a `DataError` naming the file, the line(s) and what to do; a file that can be
used despite a problem is used, and the problem is counted in the validation report and stated in a warning.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.classes import CLASS_NAMES
from helpers.data import DataError, ValidationReport, load_metadata
from helpers.splits import split_by_lesion
from helpers.train import train

IDS = ("a", "b", "c", "d")


def _folder(root: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    """``root/metadata.csv`` holding ``text`` and a small JPEG for each of the image ids a, b, c, d."""
    (root / "images").mkdir(parents=True)
    for image_id in IDS:
        Image.new("RGB", (40, 30), (120, 80, 60)).save(root / "images" / f"{image_id}.jpg")
    data = text if isinstance(text, bytes) else text.encode(encoding)
    (root / "metadata.csv").write_bytes(data)
    return root / "metadata.csv"


# case -> (metadata text, message after the file's path)
REFUSED = {
    "missing_required_column": (
        "image_id,diagnosis\na,mel\n",
        r" lacks required column\(s\) \['dx'\].*needs at least 'image_id' and 'dx'",
    ),
    "unknown_dx_upper_case": (
        "image_id,dx\na,mel\nb,MEL\n",
        r": 1 row\(s\) have a dx that is not one of .*line 3 \('MEL'\)\. Fix these rows \(codes are lower",
    ),
    "unknown_dx_full_name": (
        "image_id,dx\na,mel\nb,nv\nc,melanoma\n",
        r": 1 row\(s\) have a dx .*line 4 \('melanoma'\)\. Fix these rows",
    ),
    "unknown_dx_blank": (
        "image_id,dx\na,mel\nb,\n",
        r": 1 row\(s\) have a dx .*line 3 \(''\)\. Fix these rows",
    ),
    "duplicate_image_id": (
        "image_id,dx\na,mel\nb,nv\na,mel\n",
        r": duplicate image_id\(s\): line 2 \('a'\), line 4 \('a'\)\. Remove the repeated rows",
    ),
    "same_image_under_two_labels": (
        "image_id,dx\na,mel\nb,nv\na,nv\n",
        r": image\(s\) listed under two different labels: \['a'\] \(line 2 \('mel'\), line 4 \('nv'\)\)\. "
        "Keep one label per image",
    ),
    "empty_file": ("", r" is empty \(0 bytes\)\. Re-download it or point to another file"),
    "header_only": ("image_id,dx\r\n", r" has a header but no rows\. Re-download it or fix the file"),
    "invalid_split_value": (
        "image_id,dx,split\na,mel,train\nb,nv,holdout\n",
        r": column 'split' must be one of \['train', 'val', 'test'\] on every row: line 3 \('holdout'\)",
    ),
    "not_utf8_encoded": (
        "image_id,dx,localization\na,mel,épaule\n".encode("latin-1"),
        r" could not be parsed as CSV: .*utf-8.*Save it as a UTF-8 CSV",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unusable_metadata_is_refused_naming_file_line_and_fix(case, tmp_path):
    text, message = REFUSED[case]
    csv = _folder(tmp_path, text)
    with pytest.raises(DataError, match=re.escape(str(csv)) + message):
        load_metadata(tmp_path, metadata_csv=csv, verbose=False)


def test_non_utf8_metadata_found_in_the_folder_gets_the_same_advice(tmp_path):
    text, message = REFUSED["not_utf8_encoded"]
    csv = _folder(tmp_path, text)
    with pytest.raises(DataError, match=re.escape(str(csv)) + message):
        load_metadata(tmp_path, verbose=False)  # found by its header, not passed as metadata_csv


def test_folder_without_metadata_says_what_is_expected(tmp_path):
    with pytest.raises(
        DataError, match=f"No metadata CSV found in {tmp_path}.*HAM10000_metadata.csv.*README"
    ):
        load_metadata(tmp_path, verbose=False)


def test_nonexistent_metadata_csv_is_named(tmp_path):
    _folder(tmp_path, "image_id,dx\na,mel\n")
    with pytest.raises(FileNotFoundError, match=f"Metadata file {tmp_path / 'no.csv'} does not exist"):
        load_metadata(tmp_path, metadata_csv=tmp_path / "no.csv", verbose=False)


def test_metadata_without_any_image_present_is_refused(tmp_path):
    csv = _folder(tmp_path, "image_id,dx\nx,mel\ny,nv\n")
    refused = f"No usable images: {csv} lists 2 images.*pass data_dir="
    with pytest.warns(UserWarning, match="2 of 2 images listed"), pytest.raises(DataError, match=refused):
        load_metadata(tmp_path, verbose=False)


# case -> metadata bytes that must load as a: mel (age 50), b: nv (age missing)
ACCEPTED = {
    "utf8_bom": "\ufeffimage_id,dx,age\na,mel,50\nb,nv,\n".encode(),
    "crlf_line_endings": b"image_id,dx,age\r\na,mel,50\r\nb,nv,\r\n",
    "semicolon_delimited": b"image_id;dx;age\na;mel;50\nb;nv;\n",
    "tab_delimited": b"image_id\tdx\tage\na\tmel\t50\nb\tnv\t\n",
    "extra_columns_kept": b"image_id,dx,age,notes,dataset\na,mel,50,x,rosendahl\nb,nv,,y,vidir_modern\n",
    "quoted_fields_and_spaces": b'"image_id","dx","age"\n"a","mel","50"\n" b "," nv ",""\n',
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_csv_dialect_is_read(case, tmp_path):
    _folder(tmp_path, ACCEPTED[case])
    df = load_metadata(tmp_path, verbose=False)
    assert df["image_id"].tolist() == ["a", "b"] and df["dx"].tolist() == ["mel", "nv"]
    assert df["age"].tolist()[0] == 50.0 and pd.isna(df["age"].tolist()[1])
    if case == "extra_columns_kept":  # e.g. the Dataverse file's `dataset` (the source clinic)
        assert df["notes"].tolist() == ["x", "y"] and df["dataset"].tolist() == ["rosendahl", "vidir_modern"]
    assert df.attrs["validation"]["unlisted_image_files"] == 2  # c and d: counted, not silently dropped


def test_non_numeric_age_is_read_as_missing_and_counted(tmp_path):
    _folder(tmp_path, "image_id,dx,age\na,mel,fifty\nb,nv,40\nc,bkl,\nd,df,unknown\n")
    df = load_metadata(tmp_path, verbose=False)
    assert df["age"].isna().tolist() == [True, False, True, True]
    assert df.attrs["validation"]["age_values_not_numeric"] == 1  # "fifty"; blank and "unknown" are missing
    assert "Age:      1 non-numeric age values read as missing" in _summary(df)


def test_lesion_id_shared_across_classes_is_warned_counted_and_kept_whole(tmp_path):
    _folder(tmp_path, "lesion_id,image_id,dx\nL1,a,mel\nL1,b,nv\nL2,c,bkl\nL3,d,df\n")
    with pytest.warns(UserWarning, match=r"1 lesion_id\(s\) carry more than one dx \(e\.g\. \['L1'\]\)"):
        df = load_metadata(tmp_path, verbose=False)
    assert df.attrs["validation"]["lesions_with_several_labels"] == ["L1"]
    assert "1 lesion_ids carry more than one dx (e.g. L1)" in _summary(df)
    split = split_by_lesion(df, seed=0).set_index("image_id")["split"]
    assert split["a"] == split["b"], "both images of the lesion land in the same split"


def _summary(df: pd.DataFrame) -> str:
    return ValidationReport(**df.attrs["validation"]).summary()


def _dataset_missing_a_class(root: Path, missing: str) -> Path:
    """6 images per class; every image of class ``missing`` is corrupt."""
    (root / "images").mkdir(parents=True)
    rows = []
    for dx in CLASS_NAMES:
        for i in range(6):
            path = root / "images" / f"{dx}_{i}.jpg"
            Image.new("RGB", (40, 30), (20 * i, 30, 200 - 20 * i)).save(path)
            path.write_bytes(b"corrupt") if dx == missing else None
            rows.append((f"{dx}_{i}", dx))
    pd.DataFrame(rows, columns=["image_id", "dx"]).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.mark.slow
def test_class_with_zero_images_after_filtering_is_stated_and_training_continues(tmp_path):
    root = _dataset_missing_a_class(tmp_path / "data", "vasc")
    with pytest.warns(UserWarning, match=r"No usable images of class\(es\) \['vasc'\].*cannot learn them"):
        df = load_metadata(root, verbose=False)
    assert df.attrs["validation"]["classes_without_images"] == ["vasc"]
    assert "No images of: vasc (cannot be learned)" in _summary(df)
    with pytest.warns(UserWarning) as caught:
        result = train(
            root, img_size=16, batch_size=8, epochs=1, run_dir=tmp_path / "run", figures_dir=tmp_path / "fig",
            cache=False, verbose=0, model_name="cpu_light_efficient_cnn",
        )  # fmt: skip
    said = "\n".join(str(w.message) for w in caught)
    assert "Excluded 6 unreadable image file(s)" in said and "No usable images of class(es) ['vasc']" in said
    assert "No training images of class(es) ['vasc']: the model cannot learn them (training goes on" in said
    manifest = pd.read_json(result.run_dir / "manifest.json", typ="series")
    assert result.epochs_completed == 1 and manifest["class_weights"]["vasc"] == 1.0
    assert manifest["data"]["class_counts"]["train"]["vasc"] == 0


def test_a_path_column_in_the_metadata_is_ignored_and_said(tmp_path):
    _folder(tmp_path, "image_id,dx,path\na,mel,/elsewhere/a.jpg\nb,nv,/elsewhere/b.jpg\n")
    df = load_metadata(tmp_path, verbose=False)
    assert df["path"].tolist() == [str(tmp_path / "images" / "a.jpg"), str(tmp_path / "images" / "b.jpg")]
    assert df.attrs["validation"]["ignored_columns"] == ["path"]
    assert "Ignored:  metadata column(s) path (the toolkit fills these itself)" in _summary(df)


def _mask(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (40, 30), 255).save(path)


def test_lesion_masks_are_attached_never_counted_as_images(tmp_path):
    """Dataverse's masks folder, and a mask named <id>_segmentation.png among the images."""
    _folder(tmp_path, "image_id,dx\na,mel\nb,nv\nc,bkl\n")
    _mask(tmp_path / "HAM10000_segmentations_lesion_tschandl" / "a_segmentation.png")
    _mask(tmp_path / "images" / "b_segmentation.png")
    df = load_metadata(tmp_path, verbose=False)
    report = df.attrs["validation"]
    assert df["image_id"].tolist() == ["a", "b", "c"]
    assert df["path"].tolist() == [str(tmp_path / "images" / f"{i}.jpg") for i in "abc"]
    masks = tmp_path / "HAM10000_segmentations_lesion_tschandl" / "a_segmentation.png"
    assert df["mask_path"].tolist()[:2] == [str(masks), str(tmp_path / "images" / "b_segmentation.png")]
    assert pd.isna(df.loc[2, "mask_path"])  # c has no mask
    assert report["unlisted_image_files"] == 1  # d.jpg only: masks are not images
    assert report["lesion_masks"] == 2
    assert "Masks:    2 usable images have a lesion mask" in _summary(df)


def test_no_mask_column_without_masks(tmp_path):
    _folder(tmp_path, "image_id,dx\na,mel\n")
    assert "mask_path" not in load_metadata(tmp_path, verbose=False).columns


def test_image_folders_linked_below_data_dir_are_searched(tmp_path):
    """A user links their image folders into data/HAM10000/; a link back up (a loop) must not hang."""
    store = tmp_path / "store"
    _folder(store, "image_id,dx\na,mel\nb,nv\n")
    data_dir = tmp_path / "HAM10000"
    data_dir.mkdir()
    (data_dir / "HAM10000_metadata.csv").write_bytes((store / "metadata.csv").read_bytes())
    (data_dir / "HAM10000_images_part_1").symlink_to(store / "images", target_is_directory=True)
    (store / "images" / "loop").symlink_to(data_dir, target_is_directory=True)
    df = load_metadata(data_dir, verbose=False)
    assert df["image_id"].tolist() == ["a", "b"]
    assert df["path"].tolist() == [str(data_dir / "HAM10000_images_part_1" / f"{i}.jpg") for i in "ab"]
    assert df.attrs["validation"]["duplicate_image_files"] == 0  # the loop does not index them twice


def test_real_200px_folder_with_masks_and_sources(ham200_dir):
    df = load_metadata(ham200_dir, verbose=False)
    report = df.attrs["validation"]
    assert len(df) == 10015 and report["unlisted_image_files"] == 0 and report["lesion_masks"] == 10015
    assert df["mask_path"].str.endswith("_segmentation.png").all()
    assert df["dataset"].value_counts().to_dict() == {
        "vidir_molemax": 3954,
        "vidir_modern": 3363,
        "rosendahl": 2259,
        "vienna_dias": 439,
    }


# case -> (metadata text, the column, the values counted, the summary's words)
ODD_PATIENT_VALUES = {
    "site_spelled_differently": (
        "image_id,dx,localization\na,mel,back\nb,nv,leg\nc,bkl,Lower_Extremity\n",
        "localization",
        ["leg", "Lower_Extremity"],
        "2 localization value(s) not known, read as missing (e.g. 'leg', 'Lower_Extremity')",
    ),
    "negative_age": ("image_id,dx,age\na,mel,-4\nb,nv,40\n", "age", ["-4.0"], "outside 0-120"),
    "age_over_120": ("image_id,dx,age\na,mel,130\nb,nv,40\n", "age", ["130.0"], "outside 0-120"),
    "sex_not_male_female_unknown": (
        "image_id,dx,sex\na,mel,M\nb,nv,female\nc,bkl,unknown\n",
        "sex",
        ["M"],
        "1 sex value(s) not known, read as missing (e.g. 'M')",
    ),
}


@pytest.mark.parametrize("case", list(ODD_PATIENT_VALUES))
def test_odd_patient_values_are_read_as_missing_counted_and_named(case, tmp_path):
    """What a metadata model cannot read is treated as missing, never crashes and never becomes another
    value: counted in the validation report and named in its summary."""
    from helpers.clinical import encode_metadata, missing_vector

    text, column, values, said = ODD_PATIENT_VALUES[case]
    _folder(tmp_path, text)
    df = load_metadata(tmp_path, verbose=False)
    counted = df.attrs["validation"]["unknown_metadata_values"][column]
    assert [str(float(v)) if column == "age" else v for v in counted] == values
    assert said in _summary(df)
    encoded = encode_metadata(df, missing_columns=True)
    assert np.array_equal(encoded[0 if case != "site_spelled_differently" else 1], missing_vector(1)[0])
    if column == "age":
        assert pd.isna(df.loc[0, "age"])
