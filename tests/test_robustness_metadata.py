"""Catalogue of bad and unusual metadata files, each through load_metadata (and training where it matters).

A file that cannot be used is a `DataError` naming the file, the line(s) and what to do; a file that can be
used despite a problem is used, and the problem is counted in the validation report and stated in a warning.
"""

from __future__ import annotations

import re
from pathlib import Path

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
    "extra_columns_ignored": b"image_id,dx,age,notes,extra\na,mel,50,x,1\nb,nv,,y,2\n",
    "quoted_fields_and_spaces": b'"image_id","dx","age"\n"a","mel","50"\n" b "," nv ",""\n',
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_csv_dialect_is_read(case, tmp_path):
    _folder(tmp_path, ACCEPTED[case])
    df = load_metadata(tmp_path, verbose=False)
    assert df["image_id"].tolist() == ["a", "b"] and df["dx"].tolist() == ["mel", "nv"]
    assert df["age"].tolist()[0] == 50.0 and pd.isna(df["age"].tolist()[1])
    assert {"notes", "extra"}.isdisjoint(df.columns)
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
