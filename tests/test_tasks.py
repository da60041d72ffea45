"""tasks.py: the main command refuses mistyped options and parameters before running any notebook, and
runs training notebooks headless with one line per epoch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--onyl", "01"], "unrecognized arguments: --onyl 01"),
        (  # a typo, and a parameter that only notebook 04 takes
            ["--only", "05", "-p", "dat_dir", "x", "-p", "recipe", "tuned"],
            "no notebook run here takes the parameter(s) dat_dir, recipe",
        ),
        (["--only", "09"], "no notebook matches --only 09"),
    ],
)
def test_main_refuses_typos_before_running_anything(arguments, message):
    run = subprocess.run(
        [sys.executable, str(ROOT / "tasks.py"), "main", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and message in run.stderr
    assert "=== " not in run.stdout, "no notebook was started"


def test_main_job_runs_training_notebooks_with_one_line_per_epoch(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import tasks

    train_nb, explore_nb = (
        ROOT / "notebooks/04_train_and_resume.ipynb",
        ROOT / "notebooks/01_explore_metadata.ipynb",
    )
    assert tasks.notebook_parameters(train_nb, {"epochs": 3}) == {"verbose": 2, "epochs": 3}
    assert tasks.notebook_parameters(train_nb, {"verbose": 1}) == {"verbose": 1}, "-p verbose wins"
    assert tasks.notebook_parameters(explore_nb, {}) == {}, "only notebooks that declare it get it"
