"""The seven HAM10000 diagnostic classes, in the one order every module uses."""

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
