"""Find, read and validate HAM10000-style data (metadata CSV, images) and report what could not be used.

Understands Kaggle's ``skin-cancer-mnist-ham10000`` layout, the Harvard Dataverse files, the ISIC 2018 Task 3
one-hot ground truth, and any folder holding a CSV with ``image_id`` and ``dx`` columns and images below it.
"""

from __future__ import annotations

import csv
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from helpers.classes import CLASS_NAMES
from helpers.clinical import unknown_values, valid_ages
from helpers.download import DownloadError, download_ham10000
from helpers.paths import DATA_DIR, WORK_DIR, kaggle_root, resolve_input
from helpers.splits import SPLITS

__all__ = [
    "DataError",
    "DownloadError",
    "ValidationReport",
    "download_ham10000",
    "find_metadata_csv",
    "load_metadata",
    "read_metadata_csv",
    "resolve_data_dir",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
REQUIRED_COLUMNS = ("image_id", "dx")
OPTIONAL_COLUMNS = ("lesion_id", "dx_type", "age", "sex", "localization", "split", "dataset")
COMPUTED_COLUMNS = ("path", "mask_path")
"""Columns :func:`load_metadata` fills itself; a metadata file's own columns of these names are ignored."""
MASK_SUFFIX = "_segmentation"
"""A lesion mask is ``<image_id>_segmentation.png`` (HAM10000's official masks, Tschandl et al. 2020)."""
MASK_FOLDER_WORD = "segmentation"
"""A PNG in a folder whose name holds this word (``HAM10000_segmentations_lesion_tschandl``) is a mask."""
KAGGLE_INPUT_DIR = kaggle_root() / "input" / "skin-cancer-mnist-ham10000"
HAM10000_DIR = DATA_DIR / "HAM10000"
SYNTHETIC_DIR = WORK_DIR / "data" / "synthetic"
_PREFERRED_CSV_NAMES = ("ham10000_metadata.csv", "ham10000_metadata.tab", "metadata.csv")
_MAX_LISTED = 10


class DataError(ValueError):
    """The dataset cannot be used as it is; the message says which file/row and what to do."""


@dataclass
class ValidationReport:
    """What `load_metadata` found: counts, and every image it could not use."""

    metadata_csv: str
    image_root: str
    rows_in_csv: int
    usable_images: int
    missing_images: list[str] = field(default_factory=list)
    corrupt_images: list[dict[str, str]] = field(default_factory=list)
    unreadable_folders: list[str] = field(default_factory=list)
    duplicate_image_files: int = 0
    unlisted_image_files: int = 0
    lesion_masks: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    age_values_not_numeric: int = 0
    unknown_metadata_values: dict[str, list[str]] = field(default_factory=dict)
    lesions_with_several_labels: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    classes_without_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as plain data (JSON-serialisable)."""
        return asdict(self)

    def summary(self) -> str:
        """A readable multi-line summary."""
        lines = [
            f"Metadata: {self.metadata_csv} ({self.rows_in_csv} rows)",
            f"Images:   {self.image_root}",
            f"Usable:   {self.usable_images} images",
        ]
        if self.missing_images:
            lines.append(
                f"Missing:  {len(self.missing_images)} listed images have no file "
                f"(e.g. {', '.join(self.missing_images[:3])}); working on the images present."
            )
        if self.corrupt_images:
            shown = "; ".join(f"{c['path']} ({c['reason']})" for c in self.corrupt_images[:3])
            lines.append(f"Excluded: {len(self.corrupt_images)} unreadable/corrupt image files: {shown}")
        if self.unreadable_folders:
            lines.append(
                f"Skipped:  {len(self.unreadable_folders)} folders that cannot be read: "
                f"{', '.join(self.unreadable_folders[:3])}"
            )
        if self.duplicate_image_files:
            lines.append(f"Ignored:  {self.duplicate_image_files} duplicate copies of the same image file")
        if self.unlisted_image_files:
            lines.append(f"Ignored:  {self.unlisted_image_files} image files not listed in the metadata")
        if self.ignored_columns:
            columns = ", ".join(self.ignored_columns)
            lines.append(f"Ignored:  metadata column(s) {columns} (the toolkit fills these itself)")
        if self.lesion_masks:
            lines.append(f"Masks:    {self.lesion_masks} usable images have a lesion mask (column mask_path)")
        if self.age_values_not_numeric:
            lines.append(f"Age:      {self.age_values_not_numeric} non-numeric age values read as missing")
        for column, values in self.unknown_metadata_values.items():
            shown = ", ".join(repr(v) for v in list(dict.fromkeys(values))[:3])
            what = "outside 0-120" if column == "age" else "not known"
            lines.append(f"Metadata: {len(values)} {column} value(s) {what}, read as missing (e.g. {shown})")
        if self.lesions_with_several_labels:
            lines.append(
                f"Warning:  {len(self.lesions_with_several_labels)} lesion_ids carry more than one dx "
                f"(e.g. {', '.join(self.lesions_with_several_labels[:3])})"
            )
        counts = ", ".join(f"{k} {v}" for k, v in self.class_counts.items())
        lines.append(f"Classes:  {counts}")
        if self.classes_without_images:
            lines.append(f"No images of: {', '.join(self.classes_without_images)} (cannot be learned)")
        return "\n".join(lines)


# ---------------------------------------------------------------- finding the data
def resolve_data_dir(data_dir: str | Path = "auto", verbose: bool = True) -> Path:
    """Turn the notebooks' ``data_dir`` parameter into a folder.

    A relative path is read from the working directory, else from the project root. ``"auto"`` tries
    ``data/HAM10000``, then the Kaggle input folder, else the synthetic default (generated on first use) and
    says which it chose.
    """
    if str(data_dir) != "auto":
        path = resolve_input(data_dir)
        if not path.is_dir():
            raise FileNotFoundError(
                f"data_dir {str(path)!r} does not exist or is not a folder. Point it at the folder holding "
                "HAM10000_metadata.csv and the image folders, or use data_dir='auto'."
            )
        return path.resolve()
    for candidate, label in ((HAM10000_DIR, "real HAM10000"), (KAGGLE_INPUT_DIR, "Kaggle input")):
        if candidate.is_dir() and _metadata_candidates(candidate):
            _say(verbose, f"data_dir='auto': using {label} data in {candidate}")
            return candidate
    from helpers.synthetic import ensure_synthetic_dataset

    path = ensure_synthetic_dataset(SYNTHETIC_DIR)
    _say(
        verbose,
        f"data_dir='auto': no real HAM10000 in {HAM10000_DIR} or {KAGGLE_INPUT_DIR}; "
        f"using the synthetic default dataset in {path}",
    )
    return path


def find_metadata_csv(data_dir: str | Path) -> Path:
    """The metadata file in ``data_dir``: ``HAM10000_metadata.csv`` if present, else the one CSV with
    ``image_id`` and ``dx`` (or ISIC 2018 one-hot) columns."""
    data_dir = Path(data_dir)
    candidates = _metadata_candidates(data_dir)
    if not candidates:
        raise DataError(
            f"No metadata CSV found in {data_dir}: expected HAM10000_metadata.csv (Kaggle / Dataverse) or a "
            "CSV with 'image_id' and 'dx' columns. Download the dataset (see README) or pass metadata_csv=."
        )
    for name in _PREFERRED_CSV_NAMES:
        preferred = [c for c in candidates if c.name.lower() == name]
        if preferred:
            return preferred[0]
    if len(candidates) > 1:
        listed = ", ".join(str(c) for c in candidates)
        raise DataError(
            f"Several metadata CSVs found in {data_dir} ({listed}); pass metadata_csv= to choose."
        )
    return candidates[0]


def walk(root: str | Path, onerror=None, max_depth: int | None = None):
    """``os.walk`` in sorted order that follows symbolic links to folders (a user may link their image folders
    below ``data_dir``) but enters each real folder once, so a link loop ends; hidden folders and the image
    cache are skipped. ``max_depth`` limits how many folder levels below ``root`` are entered."""
    seen: set[str] = set()
    for dirpath, dirs, files in os.walk(root, onerror=onerror, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # reached again through a link: already indexed (or a loop)
            dirs[:] = []
            continue
        seen.add(real)
        depth = len(Path(dirpath).relative_to(root).parts)
        keep = max_depth is None or depth < max_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "cache") if keep else []
        yield dirpath, dirs, sorted(files)


def _metadata_candidates(data_dir: Path, max_depth: int = 3) -> list[Path]:
    found = []
    for root, _dirs, files in walk(data_dir, max_depth=max_depth):
        for name in files:
            if Path(name).suffix.lower() in (".csv", ".tab") and _looks_like_metadata(Path(root) / name):
                found.append(Path(root) / name)
    return found


def _looks_like_metadata(path: Path) -> bool:
    try:
        header = _read_header(path)
    except (OSError, csv.Error):
        return False
    return {"image_id", "dx"} <= header or _is_isic_onehot(header)


def _read_header(path: Path) -> set[str]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:  # the full read names bad bytes
        first = f.readline()
    delimiter = max(",;\t", key=first.count)
    return {h.strip().strip('"') for h in first.strip().split(delimiter)}


def _is_isic_onehot(columns: set[str]) -> bool:
    return "image" in columns and {c.upper() for c in CLASS_NAMES} <= columns


@dataclass
class ImageIndex:
    """What :func:`index_images` found below a folder."""

    images: dict[str, Path]
    masks: dict[str, Path]
    duplicates: int
    unreadable_folders: list[str]


def index_images(root: str | Path) -> ImageIndex:
    """Map image id (file stem) to path for every image below ``root`` (links to folders followed), and image
    id to lesion mask (:func:`mask_image_id`) for every mask; also count duplicate copies and list the
    folders that could not be read (e.g. no permission). Masks are never images to classify.

    Kaggle's download holds each image twice (``HAM10000_images_part_1`` and ``ham10000_images_part_1``); the
    first path in sorted order wins.
    """
    found: dict[str, dict[str, Path]] = {"images": {}, "masks": {}}
    duplicates = 0
    unreadable: list[str] = []
    for dirpath, _dirs, files in walk(root, onerror=lambda err: unreadable.append(str(err.filename))):
        for name in files:
            path = Path(dirpath) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            image_id = mask_image_id(path)
            kind, key = ("masks", image_id) if image_id else ("images", path.stem)
            if key in found[kind]:
                duplicates += 1
            else:
                found[kind][key] = path
    return ImageIndex(found["images"], found["masks"], duplicates, unreadable)


def mask_image_id(path: str | Path) -> str | None:
    """The image id a lesion-mask file belongs to (``ISIC_0024306_segmentation.png`` -> ``ISIC_0024306``, or
    any PNG in a ``...segmentation...`` folder -> its stem), None when ``path`` is not a mask."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        return None
    if path.stem.endswith(MASK_SUFFIX):
        return path.stem[: -len(MASK_SUFFIX)]
    return path.stem if MASK_FOLDER_WORD in path.parent.name.lower() else None


# ---------------------------------------------------------------- reading and validating
def read_metadata_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate a metadata file (comma/semicolon/tab, BOM, CRLF all fine).

    Raises `DataError` naming the file and rows for missing columns, unknown ``dx`` values, duplicate
    ``image_id``s, an empty file, or an invalid ``split`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Metadata file {path} does not exist. Check metadata_csv / data_dir.")
    if path.stat().st_size == 0:
        raise DataError(f"Metadata file {path} is empty (0 bytes). Re-download it or point to another file.")
    try:
        df = pd.read_csv(
            path, sep=None, engine="python", encoding="utf-8-sig", dtype=str, keep_default_na=False
        )
    except (pd.errors.ParserError, csv.Error, UnicodeDecodeError) as err:
        raise DataError(
            f"Metadata file {path} could not be parsed as CSV: {err}. Save it as a UTF-8 CSV with a header "
            "row (comma-, semicolon- or tab-separated)."
        ) from err
    df.columns = [str(c).strip() for c in df.columns]
    if _is_isic_onehot(set(df.columns)):
        df = _from_isic_onehot(df, path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"Metadata file {path} lacks required column(s) {missing}; it has {list(df.columns)}. "
            "A HAM10000 metadata file needs at least 'image_id' and 'dx'."
        )
    if df.empty:
        raise DataError(f"Metadata file {path} has a header but no rows. Re-download it or fix the file.")
    known = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in df.columns]
    extra = [c for c in df.columns if c not in (*known, *COMPUTED_COLUMNS) and not c.startswith("Unnamed:")]
    df = df[known + extra].copy()
    for column in df.columns:
        df[column] = df[column].str.strip()
    _check_dx(df, path)
    _check_duplicates(df, path)
    if "split" in df.columns:
        _check_split(df, path)
    return df


def _row_list(df: pd.DataFrame, mask: pd.Series, column: str) -> str:
    rows = df.index[mask.to_numpy()][:_MAX_LISTED]
    return ", ".join(f"line {i + 2} ({df.at[i, column]!r})" for i in rows)


def _check_dx(df: pd.DataFrame, path: Path) -> None:
    bad = ~df["dx"].isin(CLASS_NAMES)
    if bad.any():
        raise DataError(
            f"{path}: {int(bad.sum())} row(s) have a dx that is not one of {list(CLASS_NAMES)}: "
            f"{_row_list(df, bad, 'dx')}. Fix these rows (codes are lower-case, e.g. 'mel') or remove them."
        )


def _check_duplicates(df: pd.DataFrame, path: Path) -> None:
    dup = df["image_id"].duplicated(keep=False)
    if not dup.any():
        return
    conflicting = df[dup].groupby("image_id")["dx"].nunique()
    conflicting = conflicting[conflicting > 1]
    if len(conflicting):
        raise DataError(
            f"{path}: image(s) listed under two different labels: {list(conflicting.index[:_MAX_LISTED])} "
            f"({_row_list(df, dup & df['image_id'].isin(conflicting.index), 'dx')}). "
            "Keep one label per image."
        )
    raise DataError(
        f"{path}: duplicate image_id(s): {_row_list(df, dup, 'image_id')}. Remove the repeated rows."
    )


def _check_split(df: pd.DataFrame, path: Path) -> None:
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        raise DataError(
            f"{path}: column 'split' must be one of {list(SPLITS)} on every row: "
            f"{_row_list(df, bad, 'split')}."
        )


def _from_isic_onehot(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """ISIC 2018 Task 3 ground truth (``image, MEL, NV, ...`` one-hot) to ``image_id, dx``."""
    codes = [c.upper() for c in CLASS_NAMES]
    try:
        onehot = df[codes].astype(float).to_numpy()
    except ValueError as err:
        raise DataError(f"{path}: one-hot class columns {codes} must be numbers ({err}).") from err
    bad = onehot.sum(axis=1) != 1
    if bad.any():
        rows = ", ".join(f"line {i + 2}" for i in np.flatnonzero(bad)[:_MAX_LISTED])
        raise DataError(f"{path}: each row must have exactly one class set to 1 ({rows}).")
    return pd.DataFrame({"image_id": df["image"], "dx": [CLASS_NAMES[i] for i in onehot.argmax(axis=1)]})


def check_image(path: str | Path) -> str | None:
    """Why the image file cannot be used (``None`` when it decodes). Fast: JPEGs decode at 1/8 scale."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except PermissionError:
        return "permission denied (make it readable: chmod a+r)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"cannot be decoded: {err}"
    return None


def load_metadata(
    data_dir: str | Path = "auto",
    metadata_csv: str | Path | None = None,
    check_images: bool = True,
    verbose: bool = True,
) -> pd.DataFrame:
    """One row per usable image: ``image_id, lesion_id, dx, path`` (+ ``age, sex, localization, dx_type,
    split, dataset`` and any other column of the metadata file when present, and ``mask_path`` when lesion
    masks are found below the data folder: the image's mask or None).

    Listed images without a file and corrupt files are excluded and counted (a warning says how many); the
    full `ValidationReport` is in ``df.attrs["validation"]`` (as a dict) and printed when ``verbose``.
    """
    root = resolve_data_dir(data_dir, verbose=verbose)
    csv_path = resolve_input(metadata_csv) if metadata_csv is not None else find_metadata_csv(root)
    df = read_metadata_csv(csv_path)
    ignored = [c for c in _read_header(csv_path) if c in COMPUTED_COLUMNS]
    listed = set(df["image_id"])
    index = index_images(root)
    images = index.images
    df["path"] = df["image_id"].map(lambda i: str(images[i]) if i in images else None)
    missing = df.loc[df["path"].isna(), "image_id"].tolist()
    df = df[df["path"].notna()].reset_index(drop=True)
    corrupt = _find_corrupt(df["path"].tolist()) if check_images else []
    df = df[~df["path"].isin({c["path"] for c in corrupt})].reset_index(drop=True)
    if "lesion_id" not in df.columns or (df["lesion_id"] == "").any():
        df = _fill_lesion_ids(df)
    unknown = unknown_values(df)
    bad_age = _coerce_age(df)
    if index.masks:
        df["mask_path"] = df["image_id"].map(lambda i: str(index.masks[i]) if i in index.masks else None)
    report = ValidationReport(
        metadata_csv=str(csv_path),
        image_root=str(root),
        rows_in_csv=len(df) + len(missing) + len(corrupt),
        usable_images=len(df),
        missing_images=missing,
        corrupt_images=corrupt,
        unreadable_folders=index.unreadable_folders,
        duplicate_image_files=index.duplicates,
        unlisted_image_files=len(set(images) - listed),
        lesion_masks=int(df["mask_path"].notna().sum()) if index.masks else 0,
        ignored_columns=sorted(ignored),
        age_values_not_numeric=bad_age,
        unknown_metadata_values=unknown,
        lesions_with_several_labels=_multi_label_lesions(df),
        class_counts={c: int((df["dx"] == c).sum()) for c in CLASS_NAMES},
        classes_without_images=[c for c in CLASS_NAMES if not (df["dx"] == c).any()],
    )
    _warn_exclusions(report)
    if df.empty:
        raise DataError(
            f"No usable images: {csv_path} lists {report.rows_in_csv} images but none were found (readable) "
            f"below {root}. Put the image folders next to the metadata file or pass data_dir=."
        )
    _say(verbose, report.summary())
    df.attrs["validation"] = report.to_dict()
    return df


def _find_corrupt(paths: list[str]) -> list[dict[str, str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        reasons = list(pool.map(check_image, paths))
    return [
        {"image_id": Path(p).stem, "path": p, "reason": r} for p, r in zip(paths, reasons, strict=True) if r
    ]


def _fill_lesion_ids(df: pd.DataFrame) -> pd.DataFrame:
    """No ``lesion_id`` (or a blank one) → each such image is its own lesion."""
    df = df.copy()
    if "lesion_id" not in df.columns:
        df.insert(0, "lesion_id", "")
    blank = df["lesion_id"] == ""
    df.loc[blank, "lesion_id"] = "img_" + df.loc[blank, "image_id"]
    return df


def _coerce_age(df: pd.DataFrame) -> int:
    if "age" not in df.columns:
        return 0
    text = df["age"].astype(str).str.strip()
    age = pd.to_numeric(text, errors="coerce")
    bad = int((age.isna() & ~text.isin(["", "nan", "None", "unknown"])).sum())
    df["age"] = valid_ages(age)  # negative or over 120: missing (counted by unknown_values)
    return bad


def _multi_label_lesions(df: pd.DataFrame) -> list[str]:
    labels = df.groupby("lesion_id")["dx"].nunique()
    return labels[labels > 1].index.tolist()


def _warn_exclusions(report: ValidationReport) -> None:
    if report.missing_images:
        warnings.warn(
            f"{len(report.missing_images)} of {report.rows_in_csv} images listed in {report.metadata_csv} "
            f"were not found below {report.image_root}; continuing with the {report.usable_images} present.",
            stacklevel=3,
        )
    if report.corrupt_images:
        listed = "; ".join(f"{c['path']} ({c['reason']})" for c in report.corrupt_images[:5])
        warnings.warn(
            f"Excluded {len(report.corrupt_images)} unreadable image file(s): {listed}. Re-download or "
            "replace them (all are listed in the validation report).",
            stacklevel=3,
        )
    if report.unreadable_folders:
        warnings.warn(
            f"Could not read {len(report.unreadable_folders)} folder(s) below {report.image_root} "
            f"({', '.join(report.unreadable_folders[:3])}): their images count as missing. Fix the folders' "
            "permissions (chmod a+rx) to use them.",
            stacklevel=3,
        )
    if report.classes_without_images and report.usable_images:
        warnings.warn(
            f"No usable images of class(es) {report.classes_without_images}: a model trained on this data "
            "cannot learn them and its metrics say nothing about them (training and evaluation go on with "
            "the other classes). Add images of these classes.",
            stacklevel=3,
        )
    if report.lesions_with_several_labels:
        warnings.warn(
            f"{len(report.lesions_with_several_labels)} lesion_id(s) carry more than one dx "
            f"(e.g. {report.lesions_with_several_labels[:3]}); splits keep each lesion whole.",
            stacklevel=3,
        )


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(message)
