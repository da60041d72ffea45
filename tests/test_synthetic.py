"""The synthetic default dataset: layout, proportions, determinism, and that its classes are learnable."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold

from helpers.classes import CLASS_NAMES
from helpers.synthetic import class_counts, make_synthetic_dataset


def test_layout_and_columns(synthetic_dir):
    meta = pd.read_csv(synthetic_dir / "HAM10000_metadata.csv")
    columns = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
    assert list(meta.columns) == columns
    files = sorted(synthetic_dir.glob("HAM10000_images_part_*/*.jpg"))
    assert len(files) == len(meta) == 120
    assert {f.parent.name for f in files} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    with Image.open(files[0]) as img:
        assert img.size == (600, 450) and img.mode == "RGB"
    assert meta["lesion_id"].nunique() < len(meta)  # several images per lesion
    assert meta.groupby("lesion_id")["dx"].nunique().max() == 1
    assert meta.groupby("lesion_id")["dataset"].nunique().max() == 1  # a lesion comes from one clinic
    assert set(meta["dataset"]) <= {"vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias"}


def test_class_proportions_follow_real_set_with_floor():
    counts = class_counts(400)
    assert sum(counts.values()) == 400
    assert min(counts.values()) >= 20  # 5% floor: rare classes exist
    assert max(counts, key=counts.get) == "nv" and counts["nv"] > 0.5 * 400
    assert counts["mel"] == counts["bkl"] == 44


def test_deterministic_for_seed(tmp_path):
    def digest(path):
        files = sorted(path.rglob("*.jpg")) + [path / "HAM10000_metadata.csv"]
        return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()

    a = make_synthetic_dataset(tmp_path / "a", n_images=30, seed=3)
    b = make_synthetic_dataset(tmp_path / "b", n_images=30, seed=3)
    c = make_synthetic_dataset(tmp_path / "c", n_images=30, seed=4)
    assert digest(a) == digest(b) != digest(c)


def test_rejects_too_few_images(tmp_path):
    with pytest.raises(ValueError, match="at least 30|≥ 30"):
        make_synthetic_dataset(tmp_path, n_images=5)


def test_classes_are_learnable_well_above_majority(synthetic_dir):
    """A linear model on colour histograms of held-out lesions beats always predicting nv."""
    meta = pd.read_csv(synthetic_dir / "HAM10000_metadata.csv")
    paths = {p.stem: p for p in synthetic_dir.rglob("*.jpg")}
    feats = []
    for image_id in meta["image_id"]:
        arr = np.asarray(Image.open(paths[image_id]).resize((64, 48)), dtype=float)[12:36, 16:48]  # centre
        hist = [np.histogram(arr[..., ch], bins=8, range=(0, 255))[0] for ch in range(3)]
        feats.append(np.concatenate(hist) / arr[..., 0].size)
    x, y = np.array(feats), meta["dx"].map(CLASS_NAMES.index).to_numpy()
    folds = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)
    train, test = next(folds.split(x, y, meta["lesion_id"]))
    clf = LogisticRegression(max_iter=3000, C=10).fit(x[train], y[train])
    predicted = clf.predict(x[test])
    majority = (y[test] == CLASS_NAMES.index("nv")).mean()
    assert (predicted == y[test]).mean() > majority
    assert balanced_accuracy_score(y[test], predicted) > 0.6  # always-nv scores 1/7
