"""What the clinician knows besides the image: the patient's age and sex and the lesion's body site, encoded
as one numeric vector per image for models with a metadata input.

Layout of the vector (:data:`METADATA_WIDTH` values, :data:`FIELD_SLICES`):

- ``age``: age / 100 (0 when missing) and a missing flag (1 when missing);
- ``sex``: one-hot over ``male, female, unknown``;
- ``localization``: one-hot over HAM10000's body sites (:data:`helpers.classes.BODY_SITES`) and ``unknown``.

A value outside what is known (a site spelled differently, an age that is negative, over 120 or not a number,
a sex other than male/female/unknown) is encoded as missing; :func:`helpers.data.load_metadata` counts and
names such values in its validation report (:func:`unknown_values`), so nothing is silently coerced to a
wrong value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.classes import BODY_SITES, SEXES

METADATA_COLUMNS: tuple[str, ...] = ("age", "sex", "localization")
"""The metadata-file columns a metadata model reads."""

MAX_AGE = 120.0
"""Ages above this (or below 0) are not plausible: they are read as missing."""

FIELD_SLICES: dict[str, slice] = {
    "age": slice(0, 2),
    "sex": slice(2, 2 + len(SEXES)),
    "localization": slice(2 + len(SEXES), 2 + len(SEXES) + len(BODY_SITES) + 1),
}
"""Where each field lives in the encoded vector."""

METADATA_WIDTH: int = FIELD_SLICES["localization"].stop
"""Length of the encoded vector."""


def valid_ages(values: pd.Series) -> pd.Series:
    """Ages as floats, NaN where missing, not a number, negative or over :data:`MAX_AGE`."""
    age = pd.to_numeric(values, errors="coerce").astype(float)
    return age.where((age >= 0) & (age <= MAX_AGE))


def _known(values: pd.Series, known: tuple[str, ...]) -> pd.Series:
    """``values`` lower-cased and stripped where they are one of ``known``; "unknown" otherwise."""
    text = values.astype("string").str.strip().str.lower()
    return text.where(text.isin(known), "unknown").fillna("unknown").astype(str)


def encode_metadata(df: pd.DataFrame, missing_columns: bool = False) -> np.ndarray:
    """The ``(len(df), METADATA_WIDTH)`` float32 encoding of ``df``'s ``age``, ``sex`` and ``localization``.

    Unknown or implausible values are encoded as missing. A column absent from ``df`` raises ValueError
    naming it, unless ``missing_columns`` (then every value of it is encoded as missing, e.g. for an
    external test set without metadata)."""
    absent = [c for c in METADATA_COLUMNS if c not in df.columns]
    if absent and not missing_columns:
        raise ValueError(
            f"The data has no {', '.join(absent)} column(s), which this model takes as input. Evaluate on "
            "data with them (HAM10000's metadata file has age, sex and localization), or pass "
            "missing_metadata=True to treat every such value as missing."
        )
    n = len(df)
    age = valid_ages(df["age"]) if "age" in df.columns else pd.Series(np.nan, index=df.index)
    sex = _known(df["sex"], SEXES) if "sex" in df.columns else pd.Series("unknown", index=df.index)
    if "localization" in df.columns:
        site = _known(df["localization"], BODY_SITES)
    else:
        site = pd.Series("unknown", index=df.index)
    out = np.zeros((n, METADATA_WIDTH), dtype=np.float32)
    missing_age = age.isna().to_numpy()
    out[:, 0] = np.where(missing_age, 0.0, age.fillna(0).to_numpy() / 100.0)
    out[:, 1] = missing_age
    out[np.arange(n), FIELD_SLICES["sex"].start + sex.map(SEXES.index).to_numpy()] = 1.0
    sites = (*BODY_SITES, "unknown")
    site_index = site.map(sites.index).to_numpy()
    out[np.arange(n), FIELD_SLICES["localization"].start + site_index] = 1.0
    return out


def missing_vector(n: int = 1) -> np.ndarray:
    """``n`` encodings with every field missing (unknown age, sex and body site)."""
    return encode_metadata(pd.DataFrame(index=range(n)), missing_columns=True)


def drop_fields(vectors: np.ndarray, field_rate: float, all_rate: float, seed: int) -> np.ndarray:
    """A copy of encoded ``vectors`` ``(n, METADATA_WIDTH)`` with each field of each row set to missing with
    probability ``field_rate`` and every field of a row with probability ``all_rate`` (seeded): the NumPy
    twin of :class:`helpers.models.MetadataDropout`, for training a classifier on fixed features."""
    rng = np.random.default_rng(seed)
    slices = list(FIELD_SLICES.values())
    drop = (rng.random((len(vectors), len(slices))) < field_rate) | (rng.random((len(vectors), 1)) < all_rate)
    out, missing = np.array(vectors, dtype=np.float32, copy=True), missing_vector(1)[0]
    for j, columns in enumerate(slices):
        out[drop[:, j], columns] = missing[columns]
    return out


def encode_one(
    age: float | None = None, sex: str | None = None, localization: str | None = None
) -> np.ndarray:
    """The ``(1, METADATA_WIDTH)`` encoding of one patient's values (None: missing)."""
    frame = pd.DataFrame({"age": [age], "sex": [sex], "localization": [localization]})
    return encode_metadata(frame)


def unknown_values(df: pd.DataFrame) -> dict[str, list[str]]:
    """The values of ``sex`` and ``localization`` that are neither known nor blank/``unknown``, and the ages
    that are numbers outside 0..:data:`MAX_AGE`, per column (for the validation report)."""
    found: dict[str, list[str]] = {}
    for column, known in (("sex", SEXES), ("localization", BODY_SITES)):
        if column in df.columns:
            text = df[column].astype("string").str.strip().str.lower().fillna("")
            odd = df.loc[~text.isin((*known, "unknown", "")), column].astype(str)
            if len(odd):
                found[column] = odd.tolist()
    if "age" in df.columns:
        age = pd.to_numeric(df["age"], errors="coerce")
        odd = df.loc[age.notna() & ((age < 0) | (age > MAX_AGE)), "age"].astype(str)
        if len(odd):
            found["age"] = odd.tolist()
    return found
