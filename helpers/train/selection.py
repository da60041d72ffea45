"""Model selection: validation scores after each epoch, the best epoch by balanced accuracy (ties: lower
validation loss), early stopping on the same rule, and the one-line epoch summary."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import balanced_accuracy_score, f1_score

from helpers.train.recipes import averaged_weights

SELECTION_METRIC = "val_balanced_accuracy"
"""The logged value that selects ``best.keras`` and drives early stopping (higher is better; ties go to the
lower ``val_loss``)."""


_TIE = 1e-12


def validation_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``val_loss`` (mean cross-entropy), ``val_accuracy``, ``val_balanced_accuracy`` and ``val_macro_f1``."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected on small sets
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(labels, pred)
    return {
        "val_loss": float(-np.log(picked).mean()),
        "val_accuracy": float((pred == labels).mean()),
        "val_balanced_accuracy": float(balanced),
        "val_macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
    }


class ValidationMetrics(keras.callbacks.Callback):
    """Scores the whole validation set after each epoch and adds :func:`validation_scores` (and the current
    learning rate) to the logs. With a weight-averaging recipe it scores the averaged weights.

    Put it first in the callback list so that model selection, early stopping, the learning-rate schedule
    and the checkpoint all see ``val_balanced_accuracy``. (Keras' own validation is not used: it would
    predict the validation set a second time.)
    """

    def __init__(self, dataset: tf.data.Dataset, labels: np.ndarray):
        super().__init__()
        self.dataset = dataset
        self.labels = np.asarray(labels)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with averaged_weights(self.model):
            probs = self.model.predict(self.dataset, verbose=0)
        if logs is not None:
            logs.update(validation_scores(self.labels, probs))
            # the rate of the next step, logged for every schedule (ReduceLROnPlateau logs the same value)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class BalancedSelection(keras.callbacks.Callback):
    """Picks the best epoch and stops training early; its state is part of every backup.

    An epoch is a new best when its :data:`SELECTION_METRIC` is higher than the best so far, or equal with a
    lower ``val_loss``. After ``patience`` epochs without a new best, training stops (as Keras'
    ``EarlyStopping``, but with the same rule as the checkpoint). ``restored``: a backup's ``selection``.
    """

    def __init__(self, patience: int, restored: dict | None = None):
        super().__init__()
        saved = restored or {}
        self.patience = patience
        self.best_value: float | None = saved.get("value")
        self.best_loss: float | None = saved.get("val_loss")
        self.best_epoch: int | None = saved.get("epoch")
        self.wait: int = saved.get("wait", 0)
        self.stopped_early: bool = saved.get("stopped_early", False)
        self.improved = False

    def is_better(self, value: float, loss: float) -> bool:
        """Whether (``value``, ``loss``) beats the best epoch so far."""
        if self.best_value is None:
            return True
        tie = abs(value - self.best_value) <= _TIE
        return value > self.best_value + _TIE or (tie and loss < self.best_loss)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value, loss = float(logs[SELECTION_METRIC]), float(logs["val_loss"])
        self.improved = self.is_better(value, loss)
        if self.improved:
            self.best_value, self.best_loss, self.best_epoch, self.wait = value, loss, epoch + 1, 0
        else:
            self.wait += 1
        self.stopped_early = not self.improved and self.wait >= self.patience
        if self.stopped_early:
            self.model.stop_training = True

    def state(self) -> dict:
        """What a resume needs (JSON)."""
        return {
            "metric": SELECTION_METRIC,
            "value": self.best_value,
            "val_loss": self.best_loss,
            "epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_early": self.stopped_early,
        }


class EpochSummary(keras.callbacks.Callback):
    """Prints one line per epoch (after Keras' progress bar) with the selection metric and its best so far."""

    def __init__(self, epochs: int, selection: BalancedSelection):
        super().__init__()
        self.epochs = epochs
        self.selection = selection

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        best = self.selection
        stop = " - early stopping" if best.stopped_early else ""
        print(
            f"Epoch {epoch + 1}/{self.epochs}: {SELECTION_METRIC} {logs[SELECTION_METRIC]:.4f} "
            f"(best {best.best_value:.4f} at epoch {best.best_epoch}), "
            f"val_accuracy {logs['val_accuracy']:.4f}, val_loss {logs['val_loss']:.4f}, "
            f"lr {logs['learning_rate']:.2e} - backup saved{stop}",
            flush=True,
        )
