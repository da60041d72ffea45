"""The seven HAM10000 diagnostic classes, in the one order every module uses, and the values of the patient
metadata a model may take as input (sex, body site)."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
"""Class codes in label order: label id ``i`` is ``CLASS_NAMES[i]``."""

CLASS_FULL_NAMES: dict[str, str] = {
    "akiec": "Actinic keratoses / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesions",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevi",
    "vasc": "Vascular lesions",
}

NUM_CLASSES: int = len(CLASS_NAMES)
CLASS_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
MELANOMA: str = "mel"

SEXES: tuple[str, ...] = ("male", "female", "unknown")
"""Values of the metadata's ``sex`` column, in encoding order (:mod:`helpers.clinical`)."""

BODY_SITES: tuple[str, ...] = (
    "abdomen",
    "acral",
    "back",
    "chest",
    "ear",
    "face",
    "foot",
    "genital",
    "hand",
    "lower extremity",
    "neck",
    "scalp",
    "trunk",
    "upper extremity",
)
"""HAM10000's body sites (the metadata's ``localization``; ``unknown`` is encoded as missing)."""
