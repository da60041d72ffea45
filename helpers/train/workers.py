"""Several machines: TensorFlow's ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``, chief-only writes.

Every worker runs the same :func:`helpers.train.train` call with its own ``TF_CONFIG`` (the cluster and its
own index). The chief (task ``chief``, or worker 0 when the cluster has none) writes the run folder; the other
workers write their checkpoints into a temporary folder that they remove at the end. On a restart every
worker resumes from the chief's newest snapshot, so the run folder must be on storage all workers can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

from helpers.train.checkpoint import BACKUP_DIR, latest_snapshot


class ClusterStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3's ``fit`` gives it (Keras issue
    20585): a whole ``(x, y, weights)`` batch at once, and scalar metrics with ``axis=0``."""

    def reduce(self, reduce_op, value, axis=None):
        def one(v):
            if v is None:
                return v
            scalar = self.experimental_local_results(v)[0].shape.rank == 0
            return super(ClusterStrategy, self).reduce(reduce_op, v, None if scalar else axis)

        return tf.nest.map_structure(one, value)


def cluster_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """The multi-worker strategy of the cluster in ``TF_CONFIG`` (ValueError with an example when unset)."""
    text = os.environ.get("TF_CONFIG", "")
    try:
        config = json.loads(text)
        config["cluster"], config["task"]["type"], config["task"]["index"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"multi-worker training reads the cluster from TF_CONFIG, which is {text[:200]!r}; set it on "
            'each worker, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": '
            '{"type": "worker", "index": 0}}\' (index 1 on the second machine).'
        ) from err
    return ClusterStrategy()


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """True unless ``strategy`` is a multi-worker strategy and this process is not its chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().jobs
    )


def synchronize_batch_norm(model: keras.Model, strategy: tf.distribute.Strategy | None) -> int:
    """Make every BatchNormalization layer of ``model`` compute its batch statistics over the global batch
    of all replicas (``synchronized=True``) when ``strategy`` trains on more than one; returns how many.

    Otherwise each worker would update its moving mean and variance from its own share of the batch, and
    the workers would end with different models. Single-process models are left exactly as they are."""
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return 0
    norm = keras.layers.BatchNormalization
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, norm)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


@contextlib.contextmanager
def writing_dir(run_dir: Path, strategy: tf.distribute.Strategy | None) -> Iterator[Path]:
    """The folder this process writes the run to: ``run_dir`` on the chief (or without a cluster), else a
    temporary folder seeded with the chief's newest snapshot (to resume from its epoch), removed on exit."""
    if is_chief(strategy):
        yield run_dir
        return
    folder = Path(tempfile.mkdtemp(prefix="dermsep-worker-"))
    try:
        snapshot = latest_snapshot(run_dir)
        if snapshot is not None:
            shutil.copytree(snapshot, folder / BACKUP_DIR / snapshot.name)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
