"""Splits and what is derived from them: lesion-aware train/val/test splits, stratified subsets, split
tables and leakage, class weights, and the fingerprint of the rows a training run uses."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight

from helpers.classes import CLASS_NAMES, CLASS_TO_INDEX

SPLITS = ("train", "val", "test")


def split_by_lesion(
    df: pd.DataFrame, val_size: float = 0.15, test_size: float = 0.15, seed: int = 42
) -> pd.DataFrame:
    """Add a ``split`` column (train/val/test): stratified by ``dx``, grouped by ``lesion_id``.

    No lesion lands in two splits; each class's images are shared out so that every split gets its fraction
    of that class's images (lesions are assigned, in a seeded order, to the split furthest below its target).
    A ``split`` column already present is honoured and returned unchanged. The split made is recorded in
    ``attrs["split"]`` (a training run's manifest keeps it, so evaluation can rebuild the same split).
    """
    if "split" in df.columns and df["split"].notna().all():
        return df.copy()
    if not (0 <= val_size < 1 and 0 <= test_size < 1 and val_size + test_size < 1):
        raise ValueError(f"val_size={val_size} and test_size={test_size} must be in [0, 1) with a sum < 1.")
    fractions = np.array([1 - val_size - test_size, val_size, test_size])
    lesions = df.groupby("lesion_id").agg(dx=("dx", _mode), n=("dx", "size"))
    rng = np.random.default_rng(seed)
    lesions = lesions.iloc[rng.permutation(len(lesions))]
    assignment: dict[str, str] = {}
    for _, group in lesions.groupby("dx", sort=True):
        targets = fractions * group["n"].sum()
        filled = np.zeros(3)
        for lesion_id, n in group["n"].items():
            below = (targets - filled) / np.maximum(targets, 1e-9)
            choice = int(np.argmax(np.where(fractions > 0, below, -np.inf)))  # a 0 fraction gets nothing
            filled[choice] += n
            assignment[lesion_id] = SPLITS[choice]
    out = df.copy()
    out["split"] = out["lesion_id"].map(assignment)
    out.attrs["split"] = {"method": "lesion", "val_size": val_size, "test_size": test_size, "seed": seed}
    return out


def split_by_source(
    df: pd.DataFrame, held_out: str, column: str = "dataset", val_size: float = 0.15, seed: int = 42
) -> pd.DataFrame:
    """Hold out one source (clinic, device) as the test split: every image whose ``column`` is ``held_out``,
    and every other image of a lesion seen there (a lesion photographed under two sources goes with the
    held-out one), is ``test``; the rest is split lesion-aware into train and val (``val_size`` of it).

    Scores on such a test split say how a model carries over to a clinic it has never seen. An existing
    ``split`` column is replaced. ValueError when ``column`` is missing or ``held_out`` is not one of its
    values (the message lists them).
    """
    if column not in df.columns:
        raise ValueError(
            f"The data has no {column!r} column to hold a source out by; its columns are {list(df.columns)}. "
            "HAM10000's Dataverse metadata has 'dataset' (the source clinic of each image)."
        )
    sources = sorted(df[column].dropna().astype(str).unique())
    if held_out not in sources:
        raise ValueError(f"{held_out!r} is not a value of column {column!r}; choose one of {sources}.")
    if len(sources) < 2:
        raise ValueError(f"Column {column!r} has only the source {held_out!r}: nothing is left to train on.")
    held_lesions = set(df.loc[df[column] == held_out, "lesion_id"])
    test = df["lesion_id"].isin(held_lesions)
    rest = split_by_lesion(df.loc[~test].drop(columns="split", errors="ignore"), val_size, 0.0, seed)
    out = df.copy()
    out["split"] = "test"
    out.loc[rest.index, "split"] = rest["split"]
    out.attrs["split"] = {
        "method": "source",
        "held_out": held_out,
        "column": column,
        "val_size": val_size,
        "seed": seed,
    }
    return out


def make_split(df: pd.DataFrame, record: dict | None, seed: int = 42) -> pd.DataFrame:
    """``df`` split as ``record`` says (the ``attrs["split"]`` of :func:`split_by_lesion` or
    :func:`split_by_source`, as a run's manifest keeps it); lesion-aware 70/15/15 with ``seed`` without one.
    A ``split`` column already in the data is honoured, as by :func:`split_by_lesion`."""
    record = record or {}
    if record.get("method") == "source" and not ("split" in df.columns and df["split"].notna().all()):
        return split_by_source(df, record["held_out"], record["column"], record["val_size"], record["seed"])
    sizes = {k: record[k] for k in ("val_size", "test_size") if k in record}
    return split_by_lesion(df, seed=record.get("seed", seed), **sizes)


def _mode(values: pd.Series) -> str:
    return values.value_counts().index[0]


def subsample(df: pd.DataFrame, max_images: int | None, seed: int = 42) -> pd.DataFrame:
    """At most ``max_images`` rows, sampled (seeded) in proportion within each split x class group.

    Every non-empty group keeps at least one image when ``max_images`` allows, so small smoke runs still see
    every class in every split. Row order is preserved. ``None`` or a large enough ``max_images`` returns
    ``df`` unchanged.
    """
    if max_images is None:
        return df
    if not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}.")
    if len(df) <= max_images:
        return df
    keys = ["split", "dx"] if "split" in df.columns else "dx"
    sizes = df.groupby(keys, sort=True).size()
    quota = sizes * max_images / len(df)
    n = np.floor(quota).astype(int)
    if max_images >= len(sizes):
        n = n.clip(lower=1)
    for key in (quota - n).sort_values(ascending=False, kind="stable").index:
        if n.sum() >= max_images:
            break
        n[key] += int(n[key] < sizes[key])
    while n.sum() > max_images:
        n[n.idxmax()] -= 1
    parts = [group.sample(int(n[key]), random_state=seed) for key, group in df.groupby(keys, sort=True)]
    return df.loc[sorted(pd.concat(parts).index)]


def split_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split, with each class's share (%) and the lesions shared between splits."""
    counts = pd.crosstab(df["dx"], df["split"]).reindex(index=list(CLASS_NAMES), fill_value=0)
    counts = counts[[s for s in SPLITS if s in counts.columns]]
    shares = (100 * counts / counts.sum()).round(1).add_suffix(" %")
    table = pd.concat([counts, shares], axis=1)
    table.loc["total"] = [*counts.sum(), *[100.0] * len(shares.columns)]
    return table


def lesions_in_several_splits(df: pd.DataFrame) -> list[str]:
    """The lesion ids that appear in more than one split (empty for a leak-free split)."""
    per_lesion = df.groupby("lesion_id")["split"].nunique()
    return per_lesion[per_lesion > 1].index.tolist()


def image_split_leakage(df: pd.DataFrame, train_fraction: float = 0.7) -> pd.Series:
    """Expected share of held-out images that a random image-level split (``train_fraction`` of the images
    in train) leaves with another image of the same lesion in train, per class and ``"all"``. An image whose
    lesion has ``k`` images keeps all ``k - 1`` others out of train with probability about
    ``(1 - train_fraction) ** (k - 1)``. A lesion-aware split (:func:`split_by_lesion`) leaks none."""
    if "lesion_id" not in df.columns:
        raise ValueError("df has no 'lesion_id' column: read it with helpers.data.load_metadata(...).")
    fraction_ok = isinstance(train_fraction, int | float) and not isinstance(train_fraction, bool)
    if not (fraction_ok and 0 < train_fraction < 1):
        raise ValueError(f"train_fraction must be a number in (0, 1), got {train_fraction!r}.")
    others = df.groupby("lesion_id")["lesion_id"].transform("size") - 1
    leaked = 1 - (1 - train_fraction) ** others
    per_class = leaked.groupby(df["dx"]).mean().reindex(list(CLASS_NAMES))
    return pd.concat([per_class, pd.Series({"all": leaked.mean()})]).rename("leaked share")


def class_weights(labels: pd.Series | np.ndarray) -> dict[int, float]:
    """Balanced class weights keyed by class id (``n_samples / (n_present_classes * count)``).

    ``labels`` are class codes (``dx``) or ids; classes absent from ``labels`` get weight 1.0.
    """
    labels = pd.Series(labels)
    if labels.empty:
        raise ValueError("class_weights needs the training labels, got none: the train split is empty.")
    ids = labels.map(CLASS_TO_INDEX) if labels.dtype == object or isinstance(labels.iloc[0], str) else labels
    unknown = sorted(
        {str(v) for v, i in zip(labels, ids, strict=True) if pd.isna(i) or i not in range(len(CLASS_NAMES))}
    )
    if unknown:
        raise ValueError(
            f"Unknown class label(s) {unknown}; expected codes {list(CLASS_NAMES)} "
            f"or ids 0..{len(CLASS_NAMES) - 1}."
        )
    ids = ids.astype(int).to_numpy()
    present = np.unique(ids)
    absent = [CLASS_NAMES[i] for i in range(len(CLASS_NAMES)) if i not in present]
    if absent:
        warnings.warn(
            f"No training images of class(es) {absent}: the model cannot learn them (training goes on with "
            "the other classes; their weight is 1.0). Add images of these classes or fix the split.",
            stacklevel=2,
        )
    weights = compute_class_weight("balanced", classes=present, y=ids)
    result = {i: 1.0 for i in range(len(CLASS_NAMES))}
    result.update({int(c): float(w) for c, w in zip(present, weights, strict=True)})
    return result


def data_fingerprint(df: pd.DataFrame) -> str:
    """SHA-256 of the sorted (image_id, dx, split) rows of the train and val images: identifies exactly what
    training fitted and selected on. Test rows do not enter it, so adding a held-out test split to the data
    (as for DermaMNIST's withheld one) neither starts a new run nor makes evaluation doubt that split."""
    used = df[df["split"].isin(("train", "val"))]
    rows = sorted(
        zip(used["image_id"].astype(str), used["dx"].astype(str), used["split"].astype(str), strict=True)
    )
    return hashlib.sha256("\n".join(",".join(r) for r in rows).encode()).hexdigest()
