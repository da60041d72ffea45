"""Quiet TensorFlow's start-up and converter chatter, keep every real warning.

TensorFlow and TFLite print notices straight to the process's stderr from C++ (the oneDNN notice, absl's
"before InitializeLog" line, the converter's ``fully_quantize: 0, ...``, the XNNPACK delegate line), and the
converter logs a deprecation through Python's ``absl`` logger. In a notebook each becomes a red stderr block
that says nothing about the user's data or model. :func:`quiet_tensorflow` (called on ``import helpers``)
sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless already set, drops those absl records, and, inside a Jupyter kernel,
filters the process's stderr line by line: only lines matching :data:`NOISE` are dropped.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ port\.cc:\d+\] oneDNN custom operations are on"
    r"|fully_quantize: \d+, inference_type: "
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU"
    r"|INFO: Initialized TensorFlow Lite runtime)"
)
"""Lines of TensorFlow's own start-up/converter chatter (everything else on stderr is kept)."""

_ABSL_NOISE = re.compile(r"deprecated", re.IGNORECASE)
_state: dict[str, object] = {}


class _AbslDeprecations(logging.Filter):
    """Drops absl's deprecation notices (e.g. the TFLite converter's ``trackable_obj`` one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _ABSL_NOISE.search(record.getMessage())


def is_noise(line: str) -> bool:
    """True for a line of TensorFlow's start-up/converter chatter (see :data:`NOISE`)."""
    return NOISE.match(line.strip()) is not None


def filter_stderr() -> None:
    """Route file descriptor 2 through a thread that drops :data:`NOISE` lines (once per process)."""
    if "thread" in _state:
        return
    sys.stderr.flush()
    downstream = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not is_noise(line.decode(errors="replace")):
                    os.write(downstream, line)

    _state["thread"] = threading.Thread(target=pump, name="helpers.logs", daemon=True)
    _state["thread"].start()


def _in_jupyter_kernel() -> bool:
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and "ipykernel" in type(shell).__module__


def quiet_tensorflow() -> None:
    """Call before TensorFlow is imported: see the module's docstring."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").addFilter(_AbslDeprecations())
    if _in_jupyter_kernel():
        filter_stderr()
