"""TensorFlow's process settings for bit-reproducible training on CPU.

Op determinism (:func:`helpers.train.train` turns it on) is not enough on CPU: when TensorFlow runs several
independent ops of a training step at once (its inter-op threads, one per core by default), some gradients of
batches of 64 images or more differ in their last bits from run to run, and a 30-epoch run with the same seed
ends at a different model. Running one op at a time (each op still uses every core) makes the same seed give
the same weights, at a cost within this 2-core machine's run-to-run spread
(``benchmarks/inter_op.py --rounds 2``: the tuned recipe's second epoch on HAM10000 took 31.8 and 33.2 s
against 31.4 and 33.8 s). :func:`serial_ops` (called on ``import helpers``) asks for that through
``TF_NUM_INTEROP_THREADS=1`` unless the variable is set; TensorFlow reads it when it starts, so it has no
effect if TensorFlow ran an op before ``import helpers``.
"""

from __future__ import annotations

import os
import sys

INTER_OP_ENV = "TF_NUM_INTEROP_THREADS"
_state: dict[str, bool] = {"started_before": False}


def serial_ops() -> None:
    """Call before TensorFlow starts: see the module's docstring."""
    os.environ.setdefault(INTER_OP_ENV, "1")
    tf = sys.modules.get("tensorflow")
    if tf is not None and os.environ[INTER_OP_ENV] == "1":
        try:  # imported but not started: the setting still applies; started: it raises
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            _state["started_before"] = True


def ops_run_serially() -> bool:
    """Whether TensorFlow runs one op at a time in this process (see the module's docstring)."""
    return os.environ.get(INTER_OP_ENV) == "1" and not _state["started_before"]


def reproducibility_warning() -> str | None:
    """Why training in this process may not repeat bit for bit with the same seed, or None."""
    if ops_run_serially():
        return None
    cause = (
        "TensorFlow started before `import helpers`"
        if _state["started_before"]
        else f"{INTER_OP_ENV}={os.environ.get(INTER_OP_ENV)!r}"
    )
    return (
        f"TensorFlow runs several ops at once in this process ({cause}), so training with batches of 64 or "
        "more may not repeat bit for bit with the same seed. For identical reruns, import helpers before "
        f"running anything in TensorFlow, or set {INTER_OP_ENV}=1 before starting Python."
    )
