"""One op at a time (helpers.runtime): a training step repeats bit for bit, and train() says when it cannot.

Each check runs in a fresh Python process, because TensorFlow reads its thread settings once, when it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.runtime import INTER_OP_ENV

ROOT = Path(__file__).resolve().parents[1]

# helpers.train.determinism.differing_steps: gradients of the default network at batch 128 (64 px, dropout
# off), 30 times in one tf.function. With TensorFlow's default inter-op threads some differ from the first in
# their last bits (`benchmarks/inter_op.py --rounds 2`: 1 and 5 of 29, against 0 and 0 with one op at a time).
REPEATED_STEP = textwrap.dedent(
    """
    import json
    import helpers
    from helpers.train.determinism import differing_steps
    print(json.dumps({"differ": differing_steps(reps=30)}))
    """
)

TRAIN_WARNINGS = textwrap.dedent(
    """
    import json, sys, warnings
    if sys.argv[1] == "tensorflow-first":
        import tensorflow as tf
        tf.constant(1.0) + 1.0  # TensorFlow has started
    from helpers.train import train
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train(data_dir=sys.argv[2], run_dir=sys.argv[3], verbose=0)
        except Exception:
            pass  # the folder holds no data: only the warning before loading it matters here
    print(json.dumps([str(w.message) for w in caught if "bit for bit" in str(w.message)]))
    """
)


def run_python(script: str, *args: str, inter_op: str | None = None) -> object:
    """Run ``script`` in a fresh interpreter (``TF_NUM_INTEROP_THREADS`` unset, or ``inter_op``); its last
    stdout line, parsed as JSON."""
    env = {k: v for k, v in os.environ.items() if k != INTER_OP_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if inter_op is not None:
        env[INTER_OP_ENV] = inter_op
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_helpers_asks_tensorflow_for_one_op_at_a_time_unless_told_otherwise():
    script = f"import json, os, helpers; print(json.dumps(os.environ[{INTER_OP_ENV!r}]))"
    assert run_python(script) == "1"
    assert run_python(script, inter_op="2") == "2", "the user's own setting is kept"


@pytest.mark.slow
def test_a_training_step_at_batch_128_repeats_bit_for_bit():
    assert run_python(REPEATED_STEP) == {"differ": 0}


@pytest.mark.parametrize(
    ("order", "inter_op", "cause"),
    [
        ("helpers-first", None, None),
        ("tensorflow-first", None, "TensorFlow started before `import helpers`"),
        ("helpers-first", "2", f"{INTER_OP_ENV}='2'"),
    ],
)
def test_train_warns_when_its_run_may_not_repeat(tmp_path: Path, order, inter_op, cause):
    empty = tmp_path / "no-data"
    empty.mkdir()
    messages = run_python(TRAIN_WARNINGS, order, str(empty), str(tmp_path / "run"), inter_op=inter_op)
    if cause is None:
        assert messages == []
    else:
        assert len(messages) == 1 and cause in messages[0] and f"set {INTER_OP_ENV}=1" in messages[0]
