"""Dermoscopy toolkit: data, pipeline, models, training, evaluation and export for HAM10000."""

from helpers.classes import CLASS_NAMES, NUM_CLASSES

__all__ = ["CLASS_NAMES", "NUM_CLASSES"]
